/**
 * The swap bench's workload, after the paper's: fill `--data` bytes of incompressible memory, then
 * access it in blocks of `--block` bytes, one timed phase per mode, and print one JSON report.
 * Run it in a memory cgroup smaller than the data, so the accesses go through swap. The swap
 * bench runs it with one mode at a time, so every phase starts right after a fill.
 *
 *   seq-read      copy block after block out of the data, from the start (wrapping around)
 *   random-read   copy blocks at random offsets (a seeded xorshift), block-aligned
 *   random-write  overwrite blocks at random offsets with random bytes
 *
 * Each phase does a fixed amount of work: floor(`--phase-bytes` / block) accesses (by default
 * data/block: the data once over, on average), the same on every device. `--phase-cap-seconds` is
 * only a safety: a phase that reaches it stops there and says so (timeCapped), and its MB/s is
 * over the part it did. Throughput is bytes accessed / time, in MB/s (10^6 bytes, as in the paper).
 *
 * usage: workload.js --data SIZE --block SIZE [--modes seq-read,random-read,random-write]
 *                    [--phase-bytes SIZE] [--phase-cap-seconds 900] [--seed 1] [--device-stat PATH]
 *                    [--wait-go]
 * With --device-stat (the swap device's /sys/block/<dev>/stat), each phase also reports the
 * requests the device completed and their bytes.
 * With --wait-go (a barrier for several workloads started together, bench/swap/stripe.ts): after
 * the fill the process prints a line `ready` and waits for one line (e.g. `go`) on stdin before its
 * phases; the JSON report is still the last line it prints. Without it, nothing changes.
 * (--phase-seconds is the old name of --phase-cap-seconds, still taken.)
 */
import { randomFillSync } from 'node:crypto';
import { readFileSync, readSync, writeSync } from 'node:fs';
import { parseBytes } from '../../shared/units.js';

export const MODES = ['seq-read', 'random-read', 'random-write'] as const;
export type Mode = (typeof MODES)[number];

export interface PhaseResult {
  bytes: number;
  ops: number;
  ms: number;
  /** 10^6 bytes per second. */
  mbps: number;
  /** Pages swapped in and out during the phase (whole machine, /proc/vmstat). */
  pswpin: number;
  pswpout: number;
  /** The phase stopped on --phase-cap-seconds before doing its --phase-bytes. */
  timeCapped: boolean;
  /**
   * With --device-stat: the requests the swap device completed during the phase, and their bytes
   * (its /sys/block/<dev>/stat): what a disk would have had to serve, one request at a time.
   */
  io?: DeviceIo;
}

export interface DeviceIo {
  reads: number;
  writes: number;
  readBytes: number;
  writeBytes: number;
}

/** A block device's completed reads and writes and their bytes, from its sysfs `stat` file. */
export function parseBlockStat(text: string): DeviceIo {
  const f = text.trim().split(/\s+/).map(Number);
  if (f.length < 8 || f.slice(0, 8).some((n) => !Number.isFinite(n))) throw new Error(`not a block device stat line: '${text.trim()}'`);
  // Fields: reads completed, reads merged, sectors read, ms reading, writes completed, writes merged, sectors written, ...
  return { reads: f[0]!, writes: f[4]!, readBytes: f[2]! * 512, writeBytes: f[6]! * 512 };
}

const deviceIo = (statPath: string | undefined): DeviceIo | undefined => (statPath ? parseBlockStat(readFileSync(statPath, 'utf8')) : undefined);

export interface SwapWorkloadReport {
  dataBytes: number;
  blockBytes: number;
  fill: PhaseResult;
  phases: Partial<Record<Mode, PhaseResult>>;
}

/** xorshift32: fast, seeded, good enough to scatter block indexes. */
export function xorshift32(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** The machine's pages swapped in and out so far (/proc/vmstat). */
export function vmstat(): { pswpin: number; pswpout: number } {
  const text = readFileSync('/proc/vmstat', 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
  return { pswpin: field('pswpin'), pswpout: field('pswpout') };
}

/** Runs `step(i)` for i = 0.. until `ops` or the deadline (checked every 64 steps), timed. */
function timed(ops: number, blockBytes: number, seconds: number, step: (i: number) => void, statPath?: string): PhaseResult {
  const before = vmstat();
  const ioBefore = deviceIo(statPath);
  const started = performance.now();
  const deadline = started + seconds * 1000;
  let done = 0;
  while (done < ops) {
    step(done);
    done += 1;
    if ((done & 63) === 0 && performance.now() > deadline) break;
  }
  const ms = performance.now() - started;
  const after = vmstat();
  const ioAfter = deviceIo(statPath);
  const bytes = done * blockBytes;
  const io = ioBefore && ioAfter
    ? { reads: ioAfter.reads - ioBefore.reads, writes: ioAfter.writes - ioBefore.writes, readBytes: ioAfter.readBytes - ioBefore.readBytes, writeBytes: ioAfter.writeBytes - ioBefore.writeBytes }
    : undefined;
  return {
    ...(io ? { io } : {}),
    bytes,
    ops: done,
    ms: Math.round(ms * 10) / 10,
    mbps: Math.round((bytes / 1e6 / (ms / 1000)) * 100) / 100,
    pswpin: after.pswpin - before.pswpin,
    pswpout: after.pswpout - before.pswpout,
    timeCapped: done < ops,
  };
}

export interface WorkloadOptions {
  dataBytes: number;
  blockBytes: number;
  modes: readonly Mode[];
  /** Bytes each phase accesses (default: dataBytes, the data once over). */
  phaseBytes?: number;
  /** The safety cap on one phase. */
  capSeconds: number;
  seed: number;
  /** The swap device's sysfs stat file: each phase reports the requests it completed. */
  deviceStat?: string;
  /** Called after the fill, right before the first phase (the --wait-go barrier). */
  beforePhases?: () => void;
}

export function runSwapWorkload(options: WorkloadOptions): SwapWorkloadReport {
  const { dataBytes, blockBytes, modes, capSeconds, seed, deviceStat } = options;
  const phaseBytes = options.phaseBytes ?? dataBytes;
  if (blockBytes <= 0 || dataBytes < blockBytes || dataBytes % blockBytes !== 0) {
    throw new Error(`--data (${dataBytes}) must be a positive multiple of --block (${blockBytes})`);
  }
  if (phaseBytes < blockBytes) throw new Error(`--phase-bytes (${phaseBytes}) must be at least one --block (${blockBytes})`);
  const blocks = dataBytes / blockBytes;
  const ops = Math.floor(phaseBytes / blockBytes);
  const data = Buffer.allocUnsafeSlow(dataBytes);
  const FILL_STEP = 1024 * 1024;
  const fill = timed(Math.ceil(dataBytes / FILL_STEP), FILL_STEP, Number.POSITIVE_INFINITY, (i) => {
    randomFillSync(data, i * FILL_STEP, Math.min(FILL_STEP, dataBytes - i * FILL_STEP));
  }, deviceStat);
  fill.bytes = dataBytes;
  const scratch = Buffer.allocUnsafeSlow(blockBytes);
  // Random bytes to write from: twice the block, read at a moving offset, so no two writes repeat.
  const pool = randomFillSync(Buffer.allocUnsafeSlow(Math.max(2 * blockBytes, 64 * 1024)));
  const random = xorshift32(seed);
  options.beforePhases?.();
  const phases: SwapWorkloadReport['phases'] = {};
  for (const mode of modes) {
    if (mode === 'seq-read') {
      phases[mode] = timed(ops, blockBytes, capSeconds, (i) => {
        const at = (i % blocks) * blockBytes;
        data.copy(scratch, 0, at, at + blockBytes);
      }, deviceStat);
    } else if (mode === 'random-read') {
      phases[mode] = timed(ops, blockBytes, capSeconds, () => {
        const at = (random() % blocks) * blockBytes;
        data.copy(scratch, 0, at, at + blockBytes);
      }, deviceStat);
    } else {
      phases[mode] = timed(ops, blockBytes, capSeconds, (i) => {
        const at = (random() % blocks) * blockBytes;
        const from = (i * 4099) % (pool.length - blockBytes);
        pool.copy(data, at, from, from + blockBytes);
      }, deviceStat);
    }
  }
  return { dataBytes, blockBytes, fill, phases };
}

/**
 * The --wait-go barrier: prints `ready` and blocks until one line arrives on `input` (stdin). The
 * workload is synchronous, so the wait is too; a non-blocking descriptor is polled every 1 ms.
 */
export function readyThenWait(input = 0, output = 1): string {
  writeSync(output, 'ready\n');
  const chunk = Buffer.alloc(64);
  const nap = new Int32Array(new SharedArrayBuffer(4));
  let text = '';
  while (!text.includes('\n')) {
    let n: number;
    try {
      n = readSync(input, chunk, 0, chunk.length, null);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') throw error;
      Atomics.wait(nap, 0, 0, 1);
      continue;
    }
    if (n === 0) throw new Error('stdin closed before the go line (--wait-go)');
    text += chunk.toString('utf8', 0, n);
  }
  return text.slice(0, text.indexOf('\n'));
}

function main(): void {
  const args = process.argv.slice(2);
  const value = (name: string) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const data = value('data');
  const block = value('block');
  if (!data || !block) {
    console.error('usage: workload.js --data SIZE --block SIZE [--modes seq-read,random-read,random-write] [--phase-bytes SIZE] [--phase-cap-seconds 900] [--seed 1] [--device-stat PATH] [--wait-go]');
    process.exit(2);
  }
  const modes = (value('modes') ?? MODES.join(',')).split(',');
  const unknown = modes.filter((m) => !(MODES as readonly string[]).includes(m));
  if (unknown.length > 0) {
    console.error(`unknown mode ${unknown.join(', ')}; modes are ${MODES.join(', ')}`);
    process.exit(2);
  }
  const phaseBytes = value('phase-bytes');
  const report = runSwapWorkload({
    dataBytes: parseBytes(data),
    blockBytes: parseBytes(block),
    modes: modes as Mode[],
    ...(phaseBytes !== undefined ? { phaseBytes: parseBytes(phaseBytes) } : {}),
    capSeconds: Number(value('phase-cap-seconds') ?? value('phase-seconds') ?? 900),
    seed: Number(value('seed') ?? 1),
    ...(value('device-stat') ? { deviceStat: value('device-stat')! } : {}),
    ...(args.includes('--wait-go') ? { beforePhases: () => void readyThenWait() } : {}),
  });
  console.log(JSON.stringify(report));
}

if (process.argv[1]?.endsWith('swap/workload.js')) main();
