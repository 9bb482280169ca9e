/**
 * Is the lender still there? One timed read per attached lease, one at a time: a random 4 KiB
 * block read with O_DIRECT from the path the initiator names (the kernel's block device, or the
 * FUSE file qemu-storage-daemon serves), so it crosses the network instead of a cache.
 *
 * - The read fails (I/O error): the lease is lost now.
 * - The read has not come back after the replacement timeout: the lease is lost; the initiator
 *   is told to fail its I/O (the userspace one would otherwise wait for the lender forever; the
 *   kernel's does this by itself after replacement_timeout). So with the kernel initiator, while
 *   it holds a session, an overdue read is only slow (it waits behind the lease's own swap
 *   traffic on a thrashing host or a slow VM): the kernel fails it if the lender is gone.
 * A read in flight is never started twice: with a dead lender it blocks (D state) until then.
 */
import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';

export interface Probe {
  startedAt: number;
  done: boolean;
  error?: string;
  /** An overdue read over a session still up was logged once. */
  slowLogged?: boolean;
}

export interface HealthVerdict {
  leaseId: string;
  reason: string;
}

/** Starts `dd` reading one random block of `sizeBytes` at `path`, and tracks how it ends. */
export function startProbe(path: string, sizeBytes: number, now: number): Probe {
  const probe: Probe = { startedAt: now, done: false };
  const blocks = Math.max(1, Math.floor(sizeBytes / 4096));
  const child = spawn('dd', [`if=${path}`, 'of=/dev/null', 'bs=4096', 'count=1', `skip=${randomInt(blocks)}`, 'iflag=direct', 'status=none'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.on('error', (error) => Object.assign(probe, { done: true, error: error.message }));
  child.on('exit', (code) => Object.assign(probe, { done: true, ...(code === 0 ? {} : { error: stderr.trim() || `dd exited ${code}` }) }));
  return probe;
}

/** What one probe says at `now`: lost (with why), or undefined while fine or not yet decided. */
export function judge(probe: Probe, now: number, replacementTimeoutMs: number): string | undefined {
  if (probe.done) return probe.error ? `read from the lender failed: ${probe.error}` : undefined;
  const waited = now - probe.startedAt;
  return waited >= replacementTimeoutMs ? `no answer from the lender for ${Math.round(waited / 1000)}s (replacement timeout)` : undefined;
}
