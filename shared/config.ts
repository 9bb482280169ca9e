import { z } from 'zod';
import { ErrorCodes, RswapError } from './errors.js';
import { parseBytes } from './units.js';

/** A size setting: accepts "512MiB", "1GiB" or a byte count. */
export const SizeSetting = z.union([z.string(), z.number()]).transform((value, ctx) => {
  try {
    return parseBytes(value);
  } catch (error) {
    ctx.addIssue({ code: 'custom', message: (error as Error).message });
    return z.NEVER;
  }
});

/** A yes/no setting: a flag without a value, or true/false/1/0 from the environment. */
export const BoolSetting = z.union([z.boolean(), z.enum(['true', 'false', '1', '0', ''])], { error: 'must be true, false, 1 or 0' }).transform((v) => v === true || v === 'true' || v === '1');

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

/**
 * How every service reaches NATS: the URL, its credentials file (`rswap auth`), or an explicit
 * --insecure (no identity, no TLS; warned about on every start).
 */
export const natsSettings = {
  nats: z.string().min(1).default(DEFAULT_NATS_URL),
  creds: z.string().min(1).optional(),
  insecure: BoolSetting.default(false),
};

/**
 * Parses a service's settings once at start-up (the CLI passes flags, else RSWAP_* environment
 * variables, as given); the error names every bad field and its flag, on one line.
 */
export function parseConfig<S extends z.ZodType>(schema: S, values: Record<string, unknown>): z.infer<S> {
  const parsed = schema.safeParse(values);
  if (parsed.success) return parsed.data;
  const problems = parsed.error.issues.map((issue) => {
    const field = String(issue.path[0] ?? '');
    return `--${flagName(field)} (${field}): ${issue.message}`;
  });
  throw new RswapError(ErrorCodes.CONFIG, `invalid settings: ${problems.join('; ')}`);
}

/** A setting's flag, without the dashes: minLeaseBytes -> min-lease-bytes. */
export const flagName = (key: string) => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** A setting's environment variable: minLeaseBytes -> RSWAP_MIN_LEASE_BYTES (nats: RSWAP_NATS_URL). */
export const envName = (key: string) => (key === 'nats' ? 'RSWAP_NATS_URL' : `RSWAP_${flagName(key).replace(/-/g, '_').toUpperCase()}`);
