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
export const BoolSetting = z.union([z.boolean(), z.enum(['true', 'false', '1', '0', ''])]).transform((v) => v === true || v === 'true' || v === '1');

/**
 * How every service reaches NATS: the URL, its credentials file (`rswap auth`), or an explicit
 * --insecure (no identity, no TLS; warned about on every start).
 */
export const natsSettings = {
  nats: z.string().min(1),
  creds: z.string().min(1).optional(),
  insecure: BoolSetting.default(false),
};

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

/** The NATS URL from a flag, else RSWAP_NATS_URL, else localhost. */
export function natsUrl(flag?: string): string {
  return flag ?? process.env.RSWAP_NATS_URL ?? DEFAULT_NATS_URL;
}

/** The credentials file from a flag, else RSWAP_CREDS. */
export function credsFile(flag?: string): string | undefined {
  return flag ?? (process.env.RSWAP_CREDS || undefined);
}

/**
 * Parses a service's settings once at start-up. Flags win over environment variables (RSWAP_*);
 * the error names every bad field and its flag.
 */
export function parseConfig<S extends z.ZodType>(schema: S, values: Record<string, unknown>): z.infer<S> {
  const parsed = schema.safeParse(values);
  if (parsed.success) return parsed.data;
  const problems = parsed.error.issues.map((issue) => {
    const field = String(issue.path[0] ?? '');
    const flag = field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
    return `--${flag} (${field}): ${issue.message}`;
  });
  throw new RswapError(ErrorCodes.CONFIG, `invalid settings:\n  ${problems.join('\n  ')}`);
}

/** Reads RSWAP_<NAME> for each camelCase key; flags given explicitly override. */
export function fromEnv(keys: string[], flags: Record<string, unknown>): Record<string, unknown> {
  const values: Record<string, unknown> = {};
  for (const key of keys) {
    const envName = `RSWAP_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
    const fromFlag = flags[key];
    values[key] = fromFlag !== undefined ? fromFlag : process.env[envName];
  }
  return values;
}
