/**
 * Stable, searchable error codes (RSWAP_E_*). Every error that crosses a process boundary, in a
 * reply or a log line, carries one of these codes so operators can grep for it.
 */
export const ErrorCodes = {
  BAD_MESSAGE: 'RSWAP_E_BAD_MESSAGE', // not JSON, or fails its schema
  SPOOFED_HOST: 'RSWAP_E_SPOOFED_HOST', // payload host differs from the subject's host
  UNKNOWN_LEASE: 'RSWAP_E_UNKNOWN_LEASE',
  UNKNOWN_HOST: 'RSWAP_E_UNKNOWN_HOST',
  WRONG_HOST: 'RSWAP_E_WRONG_HOST', // a command for a lease that is not this host's
  ILLEGAL_STATE: 'RSWAP_E_ILLEGAL_STATE', // a lease transition the state machine forbids
  NO_CAPACITY: 'RSWAP_E_NO_CAPACITY',
  SWAPOFF_UNSAFE: 'RSWAP_E_SWAPOFF_UNSAFE', // the pages would not fit back into RAM + other swap
  IN_USE: 'RSWAP_E_IN_USE', // a target with a logged-in session: never removed by a message
  SELF_TEST_FAILED: 'RSWAP_E_SELF_TEST_FAILED',
  COMMAND_FAILED: 'RSWAP_E_COMMAND_FAILED',
  CONFIG: 'RSWAP_E_CONFIG', // a bad setting, flag value or credentials file
  USAGE: 'RSWAP_E_USAGE', // the CLI: an unknown command or flag, a missing or bad argument
  UNREACHABLE: 'RSWAP_E_UNREACHABLE', // the CLI: NATS refused the connection or did not answer it
  TIMEOUT: 'RSWAP_E_TIMEOUT',
  INTERNAL: 'RSWAP_E_INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class RswapError extends Error {
  readonly code: ErrorCode;
  /** The error came back in another service's reply (it answered), not from asking. */
  readonly remote: boolean;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; remote?: boolean }) {
    super(message, options);
    this.name = 'RswapError';
    this.code = code;
    this.remote = options?.remote ?? false;
  }
}

/** The code of any error: ours, or INTERNAL for anything unexpected. */
export function errorCode(error: unknown): ErrorCode {
  if (error instanceof RswapError) return error.code;
  // A NATS request or JetStream call that got no answer in time (a loaded host, a server failing
  // over): transient, and told apart from a real failure by whoever asked.
  if (error instanceof Error && error.name === 'TimeoutError') return ErrorCodes.TIMEOUT;
  return ErrorCodes.INTERNAL;
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
