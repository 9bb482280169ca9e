import type { KV } from '@nats-io/kv';
import type { z } from 'zod';
import { ErrorCodes, RswapError } from './errors.js';

export interface Versioned<T> {
  value: T;
  revision: number;
}

/** Reads and parses one key; undefined when it is absent or deleted. */
export async function getParsed<T>(kv: KV, key: string, schema: z.ZodType<T>): Promise<Versioned<T> | undefined> {
  const entry = await kv.get(key);
  if (!entry || entry.operation !== 'PUT') return undefined;
  return { value: schema.parse(entry.json()), revision: entry.revision };
}

/** Reads every key's current value (skipping records that no longer parse). */
export async function listParsed<T>(kv: KV, schema: z.ZodType<T>): Promise<Array<Versioned<T> & { key: string }>> {
  const keys: string[] = [];
  for await (const key of await kv.keys()) keys.push(key);
  const out: Array<Versioned<T> & { key: string }> = [];
  for (const key of keys) {
    const entry = await getParsed(kv, key, schema).catch(() => undefined);
    if (entry) out.push({ key, ...entry });
  }
  return out;
}

function isConflict(error: unknown): boolean {
  const text = error instanceof Error ? `${error.message} ${String((error as { cause?: unknown }).cause ?? '')}` : String(error);
  return /wrong last sequence|key exists|10071/i.test(text);
}

/**
 * Compare-and-set: reads the key, applies `mutate` to the value and writes it back only if the
 * revision did not change meanwhile; retries on a conflict. `mutate` may throw to abort (nothing is
 * written) or receive undefined when the key is absent (returning a value creates it).
 */
export async function casUpdate<T>(
  kv: KV,
  key: string,
  schema: z.ZodType<T>,
  mutate: (current: T | undefined) => T,
  attempts = 20,
): Promise<Versioned<T>> {
  for (let attempt = 0; attempt < attempts; attempt += 1) {
    const current = await getParsed(kv, key, schema);
    const next = mutate(current?.value);
    const payload = JSON.stringify(next);
    try {
      const revision = current ? await kv.update(key, payload, current.revision) : await kv.create(key, payload);
      return { value: next, revision };
    } catch (error) {
      if (!isConflict(error)) throw error;
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 10 * (attempt + 1)));
    }
  }
  throw new RswapError(ErrorCodes.INTERNAL, `compare-and-set on '${key}' kept conflicting after ${attempts} attempts`);
}
