/**
 * Event-driven wake-ups from the kernel, so a monitor hears about pressure when it starts and not
 * at its next sample:
 *
 * - PSI trigger (machine /proc/pressure/memory, cgroup v2 memory.pressure): write
 *   "some <stall us> <window us>" to the file, then poll() it for POLLPRI.
 * - cgroup v1: an eventfd registered in cgroup.event_control for memory.pressure_level "low"
 *   (the kernel reclaiming: every level from there up wakes it), then poll() the eventfd for
 *   POLLIN and read its counter.
 *
 * Node cannot poll() a file for POLLPRI or make an eventfd, so libc is called through koffi (a
 * prebuilt FFI, no compiler needed); poll() runs on koffi's worker thread with a timeout, never on
 * the event loop. Where any of this is unavailable the monitor says so and samples on its interval.
 */
import { closeSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Source } from './sources.js';

const POLLIN = 0x1;
const POLLPRI = 0x2;
const EFD_CLOEXEC = 0o2000000;

export interface Waker {
  kind: string;
  /** Resolves true when the kernel signalled, false after `timeoutMs` without a signal. */
  wait(timeoutMs: number): Promise<boolean>;
  close(): void;
}

interface Libc {
  poll: { async: (fds: unknown[], n: number, timeout: number, cb: (err: unknown, result: number) => void) => void };
  eventfd: (initval: number, flags: number) => number;
}

let libc: Libc | undefined;
async function loadLibc(): Promise<Libc> {
  if (libc) return libc;
  const koffi = (await import('koffi')).default;
  const lib = koffi.load('libc.so.6');
  koffi.struct('rswap_pollfd', { fd: 'int', events: 'short', revents: 'short' });
  libc = {
    poll: lib.func('int poll(_Inout_ rswap_pollfd *fds, unsigned long nfds, int timeout)') as unknown as Libc['poll'],
    eventfd: lib.func('int eventfd(unsigned int initval, int flags)') as unknown as Libc['eventfd'],
  };
  return libc;
}

function pollOnce(c: Libc, fd: number, events: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    // koffi writes the _Inout_ structs back into the array's elements, so read revents from there.
    const fds = [{ fd, events, revents: 0 }];
    c.poll.async(fds, 1, Math.max(0, Math.round(timeoutMs)), (err, n) => (err ? reject(err) : resolve(n > 0 && (fds[0]!.revents & events) !== 0)));
  });
}

/** A PSI trigger: wakes when tasks stalled `stallMs` within a `windowMs` window. */
export async function psiWaker(path: string, stallMs: number, windowMs: number): Promise<Waker> {
  const c = await loadLibc();
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, `some ${stallMs * 1000} ${windowMs * 1000}\0`);
  } catch (error) {
    closeSync(fd);
    throw error;
  }
  let closed = false;
  return {
    kind: `psi trigger on ${path} (some ${stallMs}ms per ${windowMs}ms)`,
    wait: async (timeoutMs) => (closed ? false : pollOnce(c, fd, POLLPRI, timeoutMs)),
    close: () => {
      if (!closed) closeSync(fd);
      closed = true;
    },
  };
}

/** cgroup v1 memory.pressure_level notifications at `level` (low, medium, critical). */
export async function v1PressureWaker(dir: string, level: 'low' | 'medium' | 'critical'): Promise<Waker> {
  const c = await loadLibc();
  const efd = c.eventfd(0, EFD_CLOEXEC);
  if (efd < 0) throw new Error('eventfd() failed');
  const levelFd = openSync(join(dir, 'memory.pressure_level'), 'r');
  try {
    writeFileSync(join(dir, 'cgroup.event_control'), `${efd} ${levelFd} ${level}`);
  } catch (error) {
    closeSync(efd);
    closeSync(levelFd);
    throw error;
  }
  let closed = false;
  const counter = Buffer.alloc(8);
  return {
    kind: `cgroup v1 memory.pressure_level ${level} in ${dir}`,
    wait: async (timeoutMs) => {
      if (closed || !(await pollOnce(c, efd, POLLIN, timeoutMs))) return false;
      readSync(efd, counter, 0, 8, null); // resets the eventfd counter
      return true;
    },
    close: () => {
      if (closed) return;
      closed = true;
      closeSync(efd);
      closeSync(levelFd);
    },
  };
}

/**
 * The best waker the source offers, or undefined (with the reason) where none works.
 * PSI windows are whole multiples of 2 s, as kernels require for unprivileged triggers.
 */
export async function openWaker(source: Source, stallMs: number): Promise<{ waker?: Waker; reason?: string }> {
  try {
    if (source.notify?.kind === 'psi') return { waker: await psiWaker(source.notify.path, stallMs, 2_000) };
    if (source.notify?.kind === 'v1-pressure-level') return { waker: await v1PressureWaker(source.notify.dir, 'low') };
    return { reason: `${source.scope} offers no pressure notification` };
  } catch (error) {
    return { reason: (error as Error).message };
  }
}
