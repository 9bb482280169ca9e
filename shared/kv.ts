import type { KV } from '@nats-io/kv';
import type { z } from 'zod';
import { ErrorCodes, RswapError } from './errors.js';
import { within } from './wait.js';

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

/** How long one listing of a bucket's keys may take before it is started over. */
const KEYS_TIMEOUT_MS = 10_000;

/**
 * A bucket's keys. The listing runs on an ordered consumer, which was seen to hang for good on a
 * loaded machine (an operator read that never returned): each try is bounded, and tried 3 times.
 */
export async function listKeys(kv: KV, timeoutMs = KEYS_TIMEOUT_MS): Promise<string[]> {
  for (let attempt = 1; ; attempt += 1) {
    const iterator = await kv.keys();
    const keys: string[] = [];
    const listed = await within((async () => {
      for await (const key of iterator) keys.push(key);
    })(), timeoutMs);
    if (listed.done) return keys;
    iterator.stop();
    if (attempt >= 3) throw new RswapError(ErrorCodes.TIMEOUT, `listing a bucket's keys did not finish within ${timeoutMs}ms, ${attempt} times`);
  }
}

/** Reads every key's current value (skipping records that no longer parse). */
export async function listParsed<T>(kv: KV, schema: z.ZodType<T>): Promise<Array<Versioned<T> & { key: string }>> {
  const keys = await listKeys(kv);
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
    if (current && next === current.value) return current; // unchanged: no write, no new revision
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

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * Every key's current value, kept in memory by one KV watch. `list()` first waits until the watch
 * has applied everything the bucket held when `list()` was called (one stream-info request), so its
 * answer is never older than the call: the same as reading every key, for one round trip instead
 * of one per key (10,000 hosts: milliseconds instead of seconds). Writes still go to KV by CAS;
 * this is only for reading. Should the watch stop or fall behind, `list()` reads key by key.
 */
export class KvMirror<T> {
  private readonly values = new Map<string, Versioned<T>>();
  /** The newest revision applied per key, deletions included. */
  private readonly seen = new Map<string, number>();
  private applied = 0;
  private waiters: Array<{ revision: number; resolve: () => void }> = [];
  private following = false;

  constructor(
    private readonly kv: KV,
    private readonly schema: z.ZodType<T>,
    private readonly catchUpMs = 2_000,
  ) {}

  private async follow(): Promise<void> {
    this.following = true;
    try {
      const watch = await this.kv.watch({ include: '' });
      this.watch = watch;
      for await (const entry of watch) {
        // Once caught up, every write comes next in the stream: a revision that skips one means the
        // watch lost an entry (seen under load). Such a copy cannot be trusted: start it over.
        if (this.caughtUpOnce && entry.revision > this.lastRevision + 1) {
          this.resync();
          break;
        }
        this.lastRevision = Math.max(this.lastRevision, entry.revision);
        // The watch's consumer may deliver an entry again (it restarts after a gap, e.g. under
        // load): never let an older revision of a key undo a newer one, a deletion included.
        if (entry.revision <= (this.seen.get(entry.key) ?? 0)) continue;
        this.seen.set(entry.key, entry.revision);
        // A deleted key, or a record that no longer parses (skipped, as listParsed does), is dropped.
        const parsed = entry.operation === 'PUT' ? this.schema.safeParse(parseJson(entry.string())) : undefined;
        if (parsed?.success) this.values.set(entry.key, { value: parsed.data, revision: entry.revision });
        else this.values.delete(entry.key);
        this.applied = Math.max(this.applied, entry.revision);
        this.waiters = this.waiters.filter((w) => (w.revision <= this.applied ? (w.resolve(), false) : true));
      }
    } catch {
      // The watch failed (connection closed): list() reads key by key, and starts a new watch.
    } finally {
      this.following = false;
    }
  }

  /** Waits until the watch has applied revision `revision`; false if it did not within catchUpMs. */
  private caughtUp(revision: number): Promise<boolean> {
    if (this.applied >= revision) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter = { revision, resolve: () => (clearTimeout(timer), resolve(true)) };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(false);
      }, this.catchUpMs);
      this.waiters.push(waiter);
    });
  }

  async list(): Promise<Array<Versioned<T> & { key: string }>> {
    if (!this.following) void this.follow();
    const last = (await this.kv.status()).streamInfo.state.last_seq;
    // The bucket's revisions went backwards: it was deleted and made again (or restored). Nothing
    // in the copy can be trusted: start over, reading key by key meanwhile.
    if (last < this.applied) {
      this.resync();
      return listParsed(this.kv, this.schema);
    }
    if (!(await this.caughtUp(last))) return listParsed(this.kv, this.schema);
    this.caughtUpOnce = true;
    return [...this.values].map(([key, entry]) => ({ key, ...entry }));
  }

  /** Forgets the copy; the next list() starts a new watch (and reads key by key until it caught up). */
  private resync(): void {
    this.watch?.stop();
    this.watch = undefined;
    this.resyncs += 1;
    this.values.clear();
    this.seen.clear();
    this.applied = 0;
    this.lastRevision = 0;
    this.caughtUpOnce = false;
  }

  /** How often the copy was found incomplete and rebuilt (for tests and logs). */
  resyncs = 0;
  private caughtUpOnce = false;
  private lastRevision = 0;
  private watch?: { stop(): void };
}
