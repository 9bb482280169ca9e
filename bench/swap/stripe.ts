/**
 * The striping bench: does spreading the same remote swap over several leases help a parallel
 * workload?
 *
 *   node dist/bench/swap/stripe.js [--layouts 1,2] [--readers 1,2,4] [--modes random-read,seq-read]
 *     [--runs 5] [--limit 128MiB] [--data 256MiB] [--swap SIZE] [--phase-bytes 32MiB] [--block 4KiB]
 *     [--phase-cap-seconds 900] [--out bench/results/stripe] [--nats-port 14227] [--smoke]
 *     [--exporter-args '...'] [--attacher-args '...']
 *
 * Why it might: on this machine a borrower reaches a lease through the userspace initiator
 * (qemu-storage-daemon, its FUSE export, a loop device), and qemu 7.2's FUSE export serves one
 * request at a time, so with one lease the faults of parallel readers queue behind each other.
 * The attacher gives every remote swap area the same priority, so with N leases (N daemons, N FUSE
 * files, N loop devices, N iSCSI sessions) the kernel stripes pages over them and the faults might
 * overlap. A single reader cannot gain: each of its faults waits for its own read.
 *
 * Layouts: `--swap` (default: twice --data) of remote swap as 1 lease, or as N leases of swap/N each
 * (--layouts, up to 8), all from host-a on a testbed like the swap bench's remote device
 * (devices.ts setUpLeases): the leases are obtained one after another, and the set-up fails
 * unless all N swap areas share one priority above every other swap area on the machine.
 *
 * The workload, per cell (a layout, a reader count P, a mode): P processes of bench/swap/workload.js
 * in ONE memory cgroup of --limit; each fills its share of --data with random bytes (2x the limit
 * by default, so about half goes to swap), says `ready` and waits; when all P are ready the bench
 * says `go` to each, and each does its share of --phase-bytes in --block reads (random-read:
 * reader i of round r seeded r*100 + i; seq-read: through its data from the start). The aggregate
 * is the bytes all readers read / the time from go to the last reader's report, in MB/s (10^6
 * bytes/s); each reader's own MB/s (its bytes / its own phase time) is kept too.
 *
 * Method, as the swap bench's (run.ts):
 *   - `--runs` rounds; in each, every layout in rotated order (round r starts one layout further
 *     along), set up fresh, measured at every reader count (also rotated) and mode, torn down
 *     (each lease released through rswap, swap-off first);
 *   - a fresh cgroup and fresh processes per cell, so every phase starts right after a fill;
 *   - fixed work: every cell reads --phase-bytes in all, split evenly over its readers;
 *     --phase-cap-seconds is only a safety, a phase that reaches it is flagged;
 *   - per phase, the read and write requests each lease's block device completed (its sysfs stat)
 *     and the machine's pswpin/pswpout, between go and the last report: whether the reads really
 *     went to every lease;
 *   - after each phase, the page cache of every lease's FUSE export file (fincore): reads served
 *     from it would not have gone to the lender;
 *   - a cell whose processes the cgroup's OOM killer ends is run again, up to 3 times; each kill
 *     is recorded.
 * Compare layouts at the same reader count: the P node processes' own memory shares the cgroup,
 * so across reader counts the data resident in RAM differs a little.
 *
 * Writes stripe.csv (a row per round, layout, readers and mode), stripe.md (median (min-max) of the
 * aggregate per layout x readers x mode, each layout's ratio to 1 lease, each reader's MB/s, the
 * share of the reads on each lease's device) and meta.json to --out, after every layout's turn.
 * --smoke: 1 round, layouts 1,2, readers 1,2, 64 MiB limit, 128 MiB data, 4 MiB of reads.
 */
import { access, mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { join } from 'node:path';
import pino from 'pino';
import { createRunner, type Runner } from '../../shared/runner.js';
import { createMemoryCgroup } from '../../shared/cgroup.js';
import { readSwaps } from '../../shared/procfs.js';
import { formatBytes, MiB, parseBytes } from '../../shared/units.js';
import { cleanupDevices, MAX_LAYOUT_LEASES, setUpLeases, stripeProblem, type LeaseArea, type LeaseLayout } from './devices.js';
import { ATTEMPTS, FILL_ALLOWANCE_MS, OomKilled, oomKills, statPathOf, WORKLOAD } from './run.js';
import { parseBlockStat, vmstat, type DeviceIo, type SwapWorkloadReport } from './workload.js';
import { ioDelta, leases, markdown, pageCacheMax, rowOf, timeCapCount, toCsv, type StripeRow } from './stripe-report.js';
import { backingFile, cachedBytes, roundOrder } from '../app/run.js';
import { runMeta } from '../args.js';

export const READ_MODES = ['random-read', 'seq-read'] as const;
export type ReadMode = (typeof READ_MODES)[number];

export interface StripeOptions {
  /** Lease counts to compare: the same total swap split over this many leases. */
  layouts: number[];
  /** Reader counts: parallel processes in one cgroup. */
  readers: number[];
  modes: ReadMode[];
  runs: number;
  limitBytes: number;
  /** All readers' data together. */
  dataBytes: number;
  /** Total remote swap, the same in every layout. */
  swapBytes: number;
  /** All readers' reads together, per phase. */
  phaseBytes: number;
  blockBytes: number;
  phaseCapSeconds: number;
  out: string;
  natsPort: number;
  exporterArgs?: string[];
  attacherArgs?: string[];
}

/**
 * `totalBytes` split over `parts` in whole blocks, as evenly as whole blocks allow (the first
 * shares one block more when they do not divide): the shares always add up to the total.
 */
export function splitWork(totalBytes: number, parts: number, blockBytes: number): number[] {
  if (!Number.isInteger(parts) || parts < 1) throw new Error(`cannot split over ${parts} readers`);
  if (totalBytes % blockBytes !== 0) throw new Error(`${formatBytes(totalBytes)} is not a whole number of ${formatBytes(blockBytes)} blocks`);
  const blocks = totalBytes / blockBytes;
  if (blocks < parts) throw new Error(`${formatBytes(totalBytes)} is fewer than one ${formatBytes(blockBytes)} block for each of ${parts} readers`);
  const base = Math.floor(blocks / parts);
  const extra = blocks % parts;
  return Array.from({ length: parts }, (_, i) => (base + (i < extra ? 1 : 0)) * blockBytes);
}

/** Reader i's seed in round r: its own accesses, the same in every layout of the round. */
export const seedOf = (run: number, reader: number) => run * 100 + reader;

export interface Cell {
  readers: number;
  mode: ReadMode;
}

/** One layout's turn in a round: set up, every cell measured, torn down. */
export interface LayoutTurn {
  run: number;
  layout: number;
  cells: Cell[];
}

/** Every round: its layouts in rotated order, in each the reader counts rotated too, each mode. */
export function planRounds(options: Pick<StripeOptions, 'runs' | 'layouts' | 'readers' | 'modes'>): LayoutTurn[] {
  const turns: LayoutTurn[] = [];
  for (let run = 1; run <= options.runs; run += 1) {
    for (const layout of roundOrder(options.layouts, run)) {
      turns.push({ run, layout, cells: roundOrder(options.readers, run).flatMap((readers) => options.modes.map((mode) => ({ readers, mode }))) });
    }
  }
  return turns;
}

/** Each reader's workload arguments for a cell: its share of the data and of the reads, its seed, the barrier. */
export function readerArgs(run: number, cell: Cell, options: Pick<StripeOptions, 'dataBytes' | 'phaseBytes' | 'blockBytes' | 'phaseCapSeconds'>): string[][] {
  const data = splitWork(options.dataBytes, cell.readers, options.blockBytes);
  const reads = splitWork(options.phaseBytes, cell.readers, options.blockBytes);
  return data.map((share, i) => [
    '--data', String(share), '--block', String(options.blockBytes), '--modes', cell.mode,
    '--phase-bytes', String(reads[i]), '--phase-cap-seconds', String(options.phaseCapSeconds), '--seed', String(seedOf(run, i)), '--wait-go',
  ]);
}

// ---- the readers ----

function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void; reject: (error: Error) => void } {
  let resolve!: (value: T) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // awaited where it matters; one nobody awaits must not end the bench
  return { promise, resolve, reject };
}

type Exit = { code: number | null; signal: NodeJS.Signals | null };

/** One workload process with the --wait-go barrier: `ready` once filled, `report` when its phase is done. */
class Reader {
  readonly child: ChildProcessWithoutNullStreams;
  private readonly readyLine = deferred<void>();
  /** Its JSON report line, and when it arrived (performance.now()): the reader's end. */
  private readonly reportLine = deferred<{ text: string; at: number }>();
  readonly exit: Promise<Exit>;
  private stderr = '';

  constructor(command: string[]) {
    const [file, ...args] = command;
    this.child = spawn(file!, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let pending = '';
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (chunk: string) => {
      pending += chunk;
      for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line === 'ready') this.readyLine.resolve();
        else if (line.startsWith('{')) this.reportLine.resolve({ text: line, at: performance.now() });
      }
    });
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (chunk: string) => (this.stderr += chunk));
    this.child.stdin.on('error', () => {}); // a reader that died: its exit tells
    this.exit = new Promise((resolve) => {
      this.child.on('error', (error) => {
        this.stderr += error.message;
        resolve({ code: null, signal: null });
      });
      this.child.on('close', (code, signal) => resolve({ code, signal }));
    });
    // Settled ones stay as they are: this fails only a line that never came.
    void this.exit.then((exit) => {
      const ended = new Error(`a reader ended (${this.describe(exit)}) before its line`);
      this.readyLine.reject(ended);
      this.reportLine.reject(ended);
    });
  }

  get ready(): Promise<void> {
    return this.readyLine.promise;
  }

  get report(): Promise<{ text: string; at: number }> {
    return this.reportLine.promise;
  }

  go(): void {
    this.child.stdin.write('go\n');
  }

  describe(exit: Exit): string {
    return `exit ${exit.signal ?? exit.code}${this.stderr.trim() ? `: ${this.stderr.trim()}` : ''}`;
  }
}

/** Counters read right before go and right after the last report. */
interface Snapshot {
  io: DeviceIo[];
  pswpin: number;
  pswpout: number;
}

async function snapshot(statPaths: string[]): Promise<Snapshot> {
  const io = await Promise.all(statPaths.map(async (p) => parseBlockStat(await readFile(p, 'utf8'))));
  return { io, ...vmstat() };
}

const running = new Set<Reader>();
let cgroupSerial = 0;
/** The prefix of the bench's cgroups (a leftover check looks for it). */
export const CGROUP_PREFIX = 'rswap-bench-stripe';

/**
 * Starts one reader per argument list in ONE fresh memory cgroup of `limitBytes`, waits until all
 * have filled, says go to each, and returns their reports, the window from go to the last report
 * and the counters around it. OomKilled if the cgroup's OOM killer ended any of them (the others
 * are killed then too); SIGINT/SIGTERM of the bench kill them all.
 */
async function runReaders(limitBytes: number, argLists: string[][], what: string, statPaths: string[], timeoutMs: number): Promise<{ reports: SwapWorkloadReport[]; ms: number; before: Snapshot; after: Snapshot }> {
  const cgroup = await createMemoryCgroup(`${CGROUP_PREFIX}-${process.pid}-${(cgroupSerial += 1)}`, limitBytes);
  const readers = argLists.map((args) => new Reader(cgroup.wrap([process.execPath, WORKLOAD, ...args])));
  for (const r of readers) running.add(r);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    readers.forEach((r) => r.child.kill('SIGKILL'));
  }, timeoutMs);
  try {
    await Promise.all(readers.map((r) => r.ready));
    const before = await snapshot(statPaths);
    const go = performance.now();
    for (const r of readers) r.go();
    const ends = await Promise.all(readers.map((r) => r.report));
    const last = Math.max(...ends.map((e) => e.at));
    const after = await snapshot(statPaths);
    const exits = await Promise.all(readers.map((r) => r.exit));
    const failed = exits.findIndex((e) => e.code !== 0);
    if (failed >= 0) throw new Error(`reader ${failed} failed after its report (${readers[failed]!.describe(exits[failed]!)})`);
    return { reports: ends.map((e) => JSON.parse(e.text) as SwapWorkloadReport), ms: last - go, before, after };
  } catch (error) {
    for (const r of readers) r.child.kill('SIGKILL');
    await Promise.all(readers.map((r) => r.exit));
    if ((await oomKills(cgroup.path)) > 0) throw new OomKilled(what);
    if (timedOut) throw new Error(`${what}: not done within ${Math.round(timeoutMs / 1000)} s (its fill allowance and --phase-cap-seconds): killed`);
    throw new Error(`${what}: ${(error as Error).message}`);
  } finally {
    clearTimeout(timer);
    for (const r of readers) running.delete(r);
    await cgroup.remove();
  }
}

// ---- a layout's turn ----

/** What the bench watches on each lease of a layout. */
interface Watched {
  area: LeaseArea;
  statPath: string;
  /** The lease's FUSE export file, for the page cache check; undefined if the area is not a loop on a file. */
  fuseFile?: string;
}

async function watch(run: Runner, areas: LeaseArea[], progress: (line: string) => void): Promise<Watched[]> {
  return Promise.all(areas.map(async (area) => {
    const statPath = await statPathOf(area.path);
    if (!statPath) throw new Error(`${area.path} has no block device stat: its requests cannot be counted`);
    const fuseFile = await backingFile(run, area.path);
    if (!fuseFile) progress(`  ${area.path} is not a loop device on a file: no page cache check`);
    return { area, statPath, ...(fuseFile ? { fuseFile } : {}) };
  }));
}

async function pageCaches(run: Runner, watched: Watched[], progress: (line: string) => void): Promise<Array<number | undefined>> {
  return Promise.all(watched.map((w) =>
    w.fuseFile
      ? cachedBytes(run, w.fuseFile).catch((error: Error) => {
        progress(`  could not read the page cache of ${w.fuseFile}: ${error.message}`);
        return undefined;
      })
      : Promise.resolve(undefined),
  ));
}

/** One cell on a layout: the readers in one cgroup, while the layout's areas are still the striped top. */
async function measureCell(turn: LayoutTurn, cell: Cell, watched: Watched[], options: StripeOptions, run: Runner, progress: (line: string) => void): Promise<StripeRow> {
  const devices = watched.map((w) => w.area.path);
  const problem = stripeProblem(await readSwaps(), devices);
  if (problem) throw new Error(`the layout's swap areas are no longer striped at the top (${problem}): results would mix devices`);
  const what = `${cell.readers} reader${cell.readers === 1 ? '' : 's'} on ${leases(turn.layout)} (run ${turn.run}, ${cell.mode})`;
  const timeoutMs = options.phaseCapSeconds * 1000 + FILL_ALLOWANCE_MS;
  const { reports, ms, before, after } = await runReaders(options.limitBytes, readerArgs(turn.run, cell, options), what, watched.map((w) => w.statPath), timeoutMs);
  const phases = reports.map((r) => {
    const phase = r.phases[cell.mode];
    if (!phase) throw new Error(`${what}: a reader reported no ${cell.mode} phase`);
    return phase;
  });
  return rowOf(
    { run: turn.run, layout: turn.layout, leaseBytes: options.swapBytes / turn.layout, readers: cell.readers, mode: cell.mode, limitBytes: options.limitBytes, dataBytes: options.dataBytes, phaseBytes: options.phaseBytes, blockBytes: options.blockBytes, devices },
    { phases, ms, io: before.io.map((b, i) => ioDelta(b, after.io[i]!)), pswpin: after.pswpin - before.pswpin, pswpout: after.pswpout - before.pswpout },
    await pageCaches(run, watched, progress),
  );
}

function describe(row: StripeRow): string {
  const cache = row.pageCacheBytes.map((b) => (b === undefined ? '?' : formatBytes(b))).join('/');
  return `  ${row.readers} reader${row.readers === 1 ? '' : 's'}, ${row.mode}: ${row.mbps}${row.timeCapped ? '* (time cap)' : ''} MB/s aggregate (each ${row.readerMbps.join(', ')}), reads per lease ${row.deviceReads.join('/')}, pswpin ${row.pswpin}, FUSE page cache ${cache}`;
}

/** The layouts each round got, with their areas and priorities (meta.json). */
interface LayoutSeen {
  run: number;
  layout: number;
  areas: LeaseArea[];
}

export async function runStripeBench(options: StripeOptions, progress: (line: string) => void = console.log): Promise<StripeRow[]> {
  const log = pino({ level: 'warn' }, pino.destination(2));
  const run = createRunner(log);
  const rows: StripeRow[] = [];
  const oomKilled: string[] = [];
  const seen: LayoutSeen[] = [];
  const stop = () => running.forEach((r) => r.child.kill('SIGKILL'));
  // `on`, not `once`: as in run.ts, a signal must find a listener while the bench runs.
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const runParentExisted = await access('/run/rswap').then(() => true, () => false);
  await cleanupDevices(run, log); // an interrupted earlier run
  try {
    for (const turn of planRounds(options)) {
      const started = Date.now();
      const eachBytes = options.swapBytes / turn.layout;
      const layout: LeaseLayout = await setUpLeases(run, log, { count: turn.layout, eachBytes, natsPort: options.natsPort, ...(options.exporterArgs ? { exporterArgs: options.exporterArgs } : {}), ...(options.attacherArgs ? { attacherArgs: options.attacherArgs } : {}) });
      try {
        seen.push({ run: turn.run, layout: turn.layout, areas: layout.areas });
        progress(`run ${turn.run} of ${options.runs}, ${leases(turn.layout)} of ${formatBytes(eachBytes)}: ${layout.areas.map((a) => `${a.path} (priority ${a.priority})`).join(', ')}`);
        const watched = await watch(run, layout.areas, progress);
        for (const cell of turn.cells) {
          let row: StripeRow | undefined;
          for (let attempt = 1; !row && attempt <= ATTEMPTS; attempt += 1) {
            try {
              row = await measureCell(turn, cell, watched, options, run, progress);
            } catch (error) {
              if (!(error instanceof OomKilled)) throw error;
              progress(`  ${error.message} (attempt ${attempt} of ${ATTEMPTS})`);
              oomKilled.push(`run ${turn.run} ${leases(turn.layout)} ${cell.readers} readers ${cell.mode}`);
            }
          }
          if (!row) continue; // recorded in meta.json and stripe.md as not measured
          rows.push(row);
          progress(describe(row));
        }
      } finally {
        await layout.teardown();
      }
      progress(`  ${leases(turn.layout)} run ${turn.run} done in ${Math.round((Date.now() - started) / 1000)} s`);
      await writeOutputs(rows, options, oomKilled, seen); // after every turn: an interrupted run keeps what it measured
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    await cleanupDevices(run, log);
    if (!runParentExisted) await rmdir('/run/rswap').catch(() => {});
  }
  await writeOutputs(rows, options, oomKilled, seen);
  return rows;
}

async function writeOutputs(rows: StripeRow[], options: StripeOptions, oomKilled: string[], seen: LayoutSeen[]): Promise<void> {
  await mkdir(options.out, { recursive: true });
  await writeFile(join(options.out, 'stripe.csv'), toCsv(rows));
  await writeFile(join(options.out, 'stripe.md'), markdown(rows, { ...options, oomKilled }));
  const meta = {
    ...(await runMeta()),
    // 0 on this VM: an idle vCPU halts at once, so every cross-CPU wake-up pays a VM exit (docs/benchmarks.md).
    guestHaltPollNs: (await readFile('/sys/module/haltpoll/parameters/guest_halt_poll_ns', 'utf8').catch(() => 'n/a')).trim(),
    oomKilled,
    // Phases where a reader reached --phase-cap-seconds before doing its share.
    timeCapped: timeCapCount(rows),
    // The most page cache any lease's FUSE export file held after a phase, per layout.
    pageCacheMaxBytes: pageCacheMax(rows),
    // Every layout set up: its leases, swap areas and their priorities (all the same, checked).
    layouts: seen,
    options,
  };
  await writeFile(join(options.out, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
}

export function parseStripeArgs(argv: string[]): StripeOptions {
  const value = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const smoke = argv.includes('--smoke');
  const list = (name: string, fallback: string) => (value(name) ?? fallback).split(',').filter(Boolean);
  const counts = (name: string, fallback: string) =>
    list(name, fallback).map((text) => {
      const n = Number(text);
      if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} takes whole numbers, 1 or more, not '${text}'`);
      return n;
    });
  const layouts = [...new Set(counts('layouts', '1,2'))];
  const readers = [...new Set(counts('readers', smoke ? '1,2' : '1,2,4'))];
  const modes = list('modes', 'random-read');
  for (const m of modes) if (!(READ_MODES as readonly string[]).includes(m)) throw new Error(`unknown mode '${m}'; modes are ${READ_MODES.join(', ')}`);
  const runs = Number(value('runs') ?? (smoke ? 1 : 5));
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs is a whole number of rounds, 1 or more, not '${value('runs')}'`);
  const dataBytes = parseBytes(value('data') ?? (smoke ? '128MiB' : '256MiB'));
  // Room to spare: the readers' data less what stays in RAM, their own runtime memory, and swap
  // cache keeping slots of pages already read back. Only what is written takes the lender's RAM.
  const swapBytes = value('swap') === undefined ? 2 * dataBytes : parseBytes(value('swap')!);
  for (const n of layouts) {
    if (n > MAX_LAYOUT_LEASES) throw new Error(`a layout has at most ${MAX_LAYOUT_LEASES} leases (the broker's --max-leases-per-borrower), not ${n}`);
    const each = swapBytes / n;
    if (!Number.isInteger(each) || each % MiB !== 0 || each < 16 * MiB) throw new Error(`--swap ${formatBytes(swapBytes)} does not split into ${n} leases of whole MiB, 16MiB or more each`);
  }
  const phaseBytes = parseBytes(value('phase-bytes') ?? (smoke ? '4MiB' : '32MiB'));
  const blockBytes = parseBytes(value('block') ?? '4KiB');
  // Every reader count must split the data and the reads into whole blocks: fail now, not mid-run.
  for (const p of readers) {
    splitWork(dataBytes, p, blockBytes);
    splitWork(phaseBytes, p, blockBytes);
  }
  const phaseCapSeconds = Number(value('phase-cap-seconds') ?? (smoke ? 60 : 900));
  if (!(phaseCapSeconds > 0)) throw new Error(`--phase-cap-seconds must be a positive number of seconds, not '${value('phase-cap-seconds')}'`);
  const words = (name: string) => value(name)?.split(' ').filter(Boolean);
  return {
    layouts,
    readers,
    modes: modes as ReadMode[],
    runs,
    limitBytes: parseBytes(value('limit') ?? (smoke ? '64MiB' : '128MiB')),
    dataBytes,
    swapBytes,
    phaseBytes,
    blockBytes,
    phaseCapSeconds,
    out: value('out') ?? 'bench/results/stripe',
    natsPort: Number(value('nats-port') ?? 14227),
    ...(words('exporter-args') ? { exporterArgs: words('exporter-args') } : {}),
    ...(words('attacher-args') ? { attacherArgs: words('attacher-args') } : {}),
  };
}

if (process.argv[1]?.endsWith('swap/stripe.js')) {
  const started = Date.now();
  runStripeBench(parseStripeArgs(process.argv.slice(2))).then(
    () => console.log(`done in ${Math.round((Date.now() - started) / 1000)} s`),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
}
