/**
 * The one way rswap runs a system command: with a timeout, a span and a log line. A failure throws
 * CommandError carrying the command line, exit code and stderr. Secrets passed in `secrets` are
 * replaced by *** in everything that is logged or thrown.
 */
import { execa } from 'execa';
import { SpanStatusCode, trace } from '@opentelemetry/api';
import type { Logger } from './log.js';
import { ErrorCodes, RswapError } from './errors.js';
import { metrics } from './metrics.js';

export interface RunOptions {
  timeoutMs?: number;
  /** Strings to redact from logs and errors (CHAP secrets on an iscsiadm command line). */
  secrets?: string[];
  /** Standard input; a Buffer lets a caller zero a secret (a dm-crypt table) once it is handed over. */
  input?: string | Uint8Array;
  /** Exit codes that count as success besides 0 (e.g. a query that exits 1 for "none"). */
  okExitCodes?: number[];
  /** Environment added to this process's (TGT_IPC_SOCKET for tgtadm). */
  env?: Record<string, string>;
  /**
   * Runs the command line through this prefix (a shell that moves itself into cgroups, then execs
   * it: shared/datapath.ts); spans, logs and metrics still name the command.
   */
  wrap?: (command: string[]) => string[];
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export class CommandError extends RswapError {
  readonly command: string;
  readonly exitCode: number | undefined;
  readonly stderr: string;
  constructor(command: string, exitCode: number | undefined, stderr: string, reason: string) {
    super(ErrorCodes.COMMAND_FAILED, `command failed (${reason}): ${command}${stderr ? `: ${stderr.trim()}` : ''}`);
    this.name = 'CommandError';
    this.command = command;
    this.exitCode = exitCode;
    this.stderr = stderr;
  }
}

/** The interface services depend on, so pure logic can be unit-tested with a recording runner. */
export type Runner = (file: string, args: string[], options?: RunOptions) => Promise<RunResult>;

const DEFAULT_TIMEOUT_MS = 30_000; // 30 s: tgtadm, mount and swapon answer in milliseconds

export function redact(text: string, secrets: string[] = []): string {
  return secrets.filter((s) => s.length > 0).reduce((acc, secret) => acc.split(secret).join('***'), text);
}

const tracer = trace.getTracer('rswap.runner');

/** `defaultTimeoutMs`: how long a command may take when its call names no timeout (30 s). */
export function createRunner(log: Logger, { defaultTimeoutMs = DEFAULT_TIMEOUT_MS }: { defaultTimeoutMs?: number } = {}): Runner {
  return async function run(file, args, options = {}) {
    const secrets = options.secrets ?? [];
    const shown = redact([file, ...args].join(' '), secrets);
    const command = file.split('/').pop()!;
    metrics.commands.inc({ command });
    return tracer.startActiveSpan(`exec ${command}`, async (span) => {
      span.setAttribute('process.command_line', shown);
      const started = performance.now();
      try {
        const [exe, ...argv] = options.wrap ? options.wrap([file, ...args]) : [file, ...args];
        const result = await execa(exe!, argv, {
          timeout: options.timeoutMs ?? defaultTimeoutMs,
          ...(options.env ? { env: options.env } : {}),
          reject: false,
          input: options.input,
          stripFinalNewline: false,
        });
        const durationMs = Math.round(performance.now() - started);
        const exitCode = result.exitCode;
        const stderr = redact(String(result.stderr ?? ''), secrets);
        span.setAttribute('process.exit.code', exitCode ?? -1);
        const ok = exitCode === 0 || (exitCode !== undefined && (options.okExitCodes ?? []).includes(exitCode));
        if (!ok) {
          const reason = result.timedOut ? `timed out after ${options.timeoutMs ?? defaultTimeoutMs}ms` : result.failed && exitCode === undefined ? String(result.shortMessage) : `exit ${exitCode}`;
          log.warn({ cmd: shown, exitCode, durationMs, stderr: stderr.trim() }, 'command failed');
          throw new CommandError(shown, exitCode, stderr, redact(reason, secrets));
        }
        log.debug({ cmd: shown, exitCode, durationMs }, 'command ok');
        return { stdout: String(result.stdout ?? ''), stderr, exitCode: exitCode ?? 0 };
      } catch (error) {
        metrics.commandFailures.inc({ command });
        span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
        span.setAttribute('error.type', error instanceof CommandError ? 'command_failed' : 'spawn_failed');
        throw error;
      } finally {
        span.end();
      }
    });
  };
}
