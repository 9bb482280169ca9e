/**
 * The swap bench: the paper's two sweeps on every swap device, in rounds.
 *
 *   node dist/bench/swap/run.js [--devices remote,local,hdd-model,zram,ramfs-loop] [--runs 5]
 *     [--limit 128MiB] [--data-ratios 0.5,1,2,3,4] [--blocks 1KiB,4KiB,16KiB,64KiB,256KiB,1MiB]
 *     [--modes seq-read,random-read,random-write] [--phase-bytes SIZE] [--phase-cap-seconds 900]
 *     [--page-cluster N] [--out bench/results/swap] [--smoke]
 *     [--exporter-args '...'] [--attacher-args '...'] [--nats-port 14225]
 *
 * The points: the data-size sweep at the smallest of --blocks, and the block-size sweep at a data
 * size of 1x the limit (the point both share runs once). Method, the same for every point:
 *   - `--runs` rounds; in each, every device is set up fresh (swap-on above every other area),
 *     measured at every point and torn down, and the device order rotates from round to round
 *     (round r starts one device further along), so drift on the machine spreads over every device;
 *   - one process per phase: for each point and mode, bench/swap/workload.js runs with only that
 *     mode in a fresh memory cgroup limited to --limit, so every phase starts right after a fill of
 *     the data, in the same state on every device, and nothing is left warm by another phase; each
 *     process's fill is recorded as a 'fill' row too;
 *   - a fixed amount of work: a phase accesses --phase-bytes in blocks (default: the point's data
 *     size, the data once over), the same on every device. --phase-cap-seconds is only a safety: a
 *     phase that reaches it is flagged (timeCapped), counted in meta.json and noted in swap.md;
 *   - the random offsets are seeded with the round's number: the same accesses on every device of a round;
 *   - on a remote device, the page cache its lease's FUSE export file holds is read (fincore) after
 *     every phase: reads served from it would not have gone to the lender.
 * Writes swap.csv (a row per run, device, point and phase), swap.md (tables of median (min-max)
 * over the runs, remote's ratios of medians, the paper's beside), data-size.svg and block-size.svg
 * (medians) and meta.json to --out, after every device's turn. --smoke is a small run for the test
 * suite (one round, 64 MiB limit, one point per sweep, phases capped at 1 s). --page-cluster sets
 * vm.page-cluster for the run and puts the old value back after.
 */
import { access, mkdir, readFile, realpath, rmdir, stat, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import pino from 'pino';
import { createRunner, type Runner } from '../../shared/runner.js';
import { createMemoryCgroup } from '../../shared/cgroup.js';
import { readSwaps } from '../../shared/procfs.js';
import { formatBytes, MiB, parseBytes } from '../../shared/units.js';
import { cleanupDevices, DEFAULT_DEVICES, DEVICE_LABELS, DEVICES, setUpDevice, type DeviceName, type SwapDevice } from './devices.js';
import { hddModelTables, markdownTables, pageCacheMax, svgFigure, timeCapCount, toCsv, type Row, type Sweep } from './report.js';
import { MODES, type Mode, type PhaseResult, type SwapWorkloadReport } from './workload.js';
import { backingFile, cachedBytes, roundOrder } from '../app/run.js';
import { runMeta } from '../args.js';

export const WORKLOAD = resolve(fileURLToPath(import.meta.url), '../workload.js');

export interface SwapBenchOptions {
  devices: DeviceName[];
  /** Rounds: every device measured at every point once per round. */
  runs: number;
  limitBytes: number;
  dataRatios: number[];
  blocks: number[];
  modes: Mode[];
  /** Bytes each phase accesses; undefined: the point's data size (the data once over). */
  phaseBytes?: number;
  /** The safety cap on one phase. */
  phaseCapSeconds: number;
  out: string;
  pageCluster?: number;
  exporterArgs?: string[];
  attacherArgs?: string[];
  natsPort: number;
}

export interface Point {
  sweeps: Sweep[];
  dataRatio: number;
  dataBytes: number;
  blockBytes: number;
}

/** The points of both sweeps; the one they share (1x limit at the smallest block) runs once. */
export function pointsFor(options: Pick<SwapBenchOptions, 'limitBytes' | 'dataRatios' | 'blocks'>): Point[] {
  const round = (bytes: number) => Math.max(MiB, Math.round(bytes / MiB) * MiB);
  const smallest = Math.min(...options.blocks);
  const points: Point[] = options.dataRatios.map((r) => ({ sweeps: ['data'], dataRatio: r, dataBytes: round(r * options.limitBytes), blockBytes: smallest }));
  for (const block of options.blocks) {
    const same = points.find((p) => p.dataRatio === 1 && p.blockBytes === block);
    if (same) same.sweeps.push('block');
    else points.push({ sweeps: ['block'], dataRatio: 1, dataBytes: round(options.limitBytes), blockBytes: block });
  }
  return points;
}

/** One measurement: a workload process doing one mode at one point, on one device, in one round. */
export interface Step {
  run: number;
  device: DeviceName;
  point: Point;
  mode: Mode;
}

/** Everything the bench measures, in order: each round, its devices in the round's order, each point, each mode. */
export function planRuns(options: Pick<SwapBenchOptions, 'runs' | 'devices' | 'modes' | 'limitBytes' | 'dataRatios' | 'blocks'>): Step[] {
  const points = pointsFor(options);
  const steps: Step[] = [];
  for (let run = 1; run <= options.runs; run += 1) {
    for (const device of roundOrder(options.devices, run)) {
      for (const point of points) for (const mode of options.modes) steps.push({ run, device, point, mode });
    }
  }
  return steps;
}

/** A device's steps in one round, between its set-up and its teardown. */
export interface Turn {
  run: number;
  device: DeviceName;
  steps: Step[];
}

/** The plan cut into turns: consecutive steps of the same round and device. */
export function turnsOf(steps: Step[]): Turn[] {
  const turns: Turn[] = [];
  for (const step of steps) {
    const last = turns.at(-1);
    if (last?.run === step.run && last.device === step.device) last.steps.push(step);
    else turns.push({ run: step.run, device: step.device, steps: [step] });
  }
  return turns;
}

/** The workload's arguments for a step: its point, only its mode, the fixed work, the cap, the round as seed. */
export function workloadArgs(step: Pick<Step, 'run' | 'mode'> & { point: Pick<Point, 'dataBytes' | 'blockBytes'> }, options: Pick<SwapBenchOptions, 'phaseBytes' | 'phaseCapSeconds'>, deviceStat?: string): string[] {
  const { dataBytes, blockBytes } = step.point;
  return [
    '--data', String(dataBytes), '--block', String(blockBytes), '--modes', step.mode,
    '--phase-bytes', String(options.phaseBytes ?? dataBytes), '--phase-cap-seconds', String(options.phaseCapSeconds), '--seed', String(step.run),
    ...(deviceStat ? ['--device-stat', deviceStat] : []),
  ];
}

/**
 * The sysfs stat file of the block device that serves a swap area: the device itself (a symlink
 * such as /dev/mapper/x resolved), or for a swap file the device its file system is on. Undefined
 * where there is none (a file on tmpfs or overlayfs).
 */
export async function statPathOf(swapPath: string, sysfs = '/sys'): Promise<string | undefined> {
  const candidates: string[] = [];
  if (swapPath.startsWith('/dev/')) candidates.push(`${sysfs}/class/block/${basename(await realpath(swapPath).catch(() => swapPath))}/stat`);
  else {
    const { dev } = await stat(swapPath);
    const major = Math.floor(dev / 256) & 0xfff;
    const minor = (dev & 0xff) | ((Math.floor(dev / 4096) & 0xfff00));
    candidates.push(`${sysfs}/dev/block/${major}:${minor}/stat`);
  }
  for (const path of candidates) if (await access(path).then(() => true, () => false)) return path;
  return undefined;
}

/** A phase's device request counts as row columns (none where the phase has no counts). */
export function ioColumns(phase: PhaseResult): Pick<Row, 'ioReads' | 'ioWrites' | 'ioReadBytes' | 'ioWriteBytes'> {
  return phase.io ? { ioReads: phase.io.reads, ioWrites: phase.io.writes, ioReadBytes: phase.io.readBytes, ioWriteBytes: phase.io.writeBytes } : {};
}

/** A step's rows: the process's fill and its phase, for each sweep the point belongs to. */
export function rowsOf(step: Step, report: SwapWorkloadReport, limitBytes: number, pageCacheBytes?: number): Row[] {
  const phase = report.phases[step.mode];
  if (!phase) throw new Error(`the workload reported no ${step.mode} phase`);
  const cache = pageCacheBytes === undefined ? {} : { pageCacheBytes };
  return step.point.sweeps.flatMap((sweep) => {
    const { dataRatio, dataBytes, blockBytes } = step.point;
    const base = { run: step.run, device: step.device, sweep, dataRatio, dataBytes, blockBytes, limitBytes };
    const { io: _fillIo, ...fill } = report.fill;
    const { io: _phaseIo, ...measured } = phase;
    return [{ ...base, mode: 'fill' as const, ...fill, ...ioColumns(report.fill), ...cache }, { ...base, mode: step.mode, ...measured, ...ioColumns(phase), ...cache }];
  });
}

let running: ResultPromise | undefined;
let cgroupSerial = 0;

/**
 * cgroup v1 sometimes OOM-kills a workload that is only a little over its limit (the 1x point):
 * charging a swap-in fails after reclaim's retries, on every device, local disk included. Such a
 * step (a point and mode) is run again, up to ATTEMPTS times; each kill is recorded, and a step
 * killed every time is left out of that run's results (and named in meta.json and swap.md).
 */
export class OomKilled extends Error {
  constructor(what: string) {
    super(`${what} was OOM-killed in its cgroup`);
  }
}

export async function oomKills(cgroupPath: string): Promise<number> {
  const text = await readFile(join(cgroupPath, 'memory.oom_control'), 'utf8').catch(() => readFile(join(cgroupPath, 'memory.events'), 'utf8').catch(() => ''));
  return Number(/^oom_kill (\d+)$/m.exec(text)?.[1] ?? 0);
}

export const ATTEMPTS = 3;
/** How long a workload process may take beyond its phase's cap: its fill. */
export const FILL_ALLOWANCE_MS = 900_000;

/**
 * Runs `measure` until it ends in something other than an OOM kill, at most ATTEMPTS times; each
 * kill is passed to `killed` (with its attempt, 1-based). Undefined when every attempt was killed;
 * any other failure is thrown.
 */
export async function retryOomKills<T>(measure: () => Promise<T>, killed: (error: OomKilled, attempt: number) => void): Promise<T | undefined> {
  for (let attempt = 1; attempt <= ATTEMPTS; attempt += 1) {
    try {
      return await measure();
    } catch (error) {
      if (!(error instanceof OomKilled)) throw error;
      killed(error, attempt);
    }
  }
  return undefined;
}

/** Kills the workload process running now, if any (a bench's SIGINT/SIGTERM handler). */
export function killWorkload(): void {
  running?.kill('SIGKILL');
}

/**
 * Runs bench/swap/workload.js once with `args` in a fresh memory cgroup limited to `limitBytes`
 * (behind `prefix`, e.g. taskset), and returns its report; OomKilled if the cgroup's OOM killer
 * ended it. SIGINT/SIGTERM of the bench kill it.
 */
export async function runWorkloadIn(limitBytes: number, args: string[], what: string, prefix: string[] = [], timeoutMs = 900_000): Promise<SwapWorkloadReport> {
  const cgroup = await createMemoryCgroup(`rswap-bench-swap-${process.pid}-${(cgroupSerial += 1)}`, limitBytes);
  try {
    const [command, ...rest] = cgroup.wrap([...prefix, process.execPath, WORKLOAD, ...args]);
    running = execa(command!, rest, { reject: false, timeout: timeoutMs });
    const result = await running;
    running = undefined;
    if (result.signal === 'SIGKILL' && (await oomKills(cgroup.path)) > 0) throw new OomKilled(what);
    if (result.exitCode !== 0) throw new Error(`${what} failed (${result.signal ?? result.exitCode}): ${String(result.stderr).trim()}`);
    return JSON.parse(String(result.stdout)) as SwapWorkloadReport;
  } finally {
    await cgroup.remove();
  }
}

/** Reads the page cache (bytes) a remote device's FUSE export file holds; undefined if fincore failed. */
export type PageCacheCheck = () => Promise<number | undefined>;

/** The page cache check of a remote device (its loop device's FUSE export file); undefined for other devices. */
export async function pageCacheCheck(name: DeviceName, device: SwapDevice, run: Runner, progress: (line: string) => void): Promise<PageCacheCheck | undefined> {
  if (!name.startsWith('remote')) return undefined;
  // The userspace initiator's loop device sits on <attacher state>/leases/<lease>/export, a FUSE file.
  const file = await backingFile(run, device.path);
  if (!file) {
    progress(`  ${device.path} is not a loop device on a file: no page cache check`);
    return undefined;
  }
  progress(`  page cache check on ${file}`);
  return () =>
    cachedBytes(run, file).catch((error: Error) => {
      progress(`  could not read the page cache of ${file}: ${error.message}`);
      return undefined;
    });
}

/** Fails unless `devicePath` is still the highest-priority swap area (where the pages go). */
export async function mustBeTopSwap(devicePath: string): Promise<void> {
  const top = (await readSwaps()).sort((a, b) => b.priority - a.priority)[0];
  if (top?.path !== devicePath) throw new Error(`${devicePath} is no longer the highest-priority swap area (${top?.path} is): results would mix devices`);
}

/** One step: the workload in a fresh cgroup on the device, which must still be the top swap area. */
async function measure(step: Step, options: SwapBenchOptions, devicePath: string, pageCache?: PageCacheCheck, deviceStat?: string): Promise<Row[]> {
  await mustBeTopSwap(devicePath);
  const what = `workload on ${step.device} (run ${step.run}, data ${formatBytes(step.point.dataBytes)}, block ${formatBytes(step.point.blockBytes)}, ${step.mode})`;
  const report = await runWorkloadIn(options.limitBytes, workloadArgs(step, options, deviceStat), what, [], options.phaseCapSeconds * 1000 + FILL_ALLOWANCE_MS);
  return rowsOf(step, report, options.limitBytes, await pageCache?.());
}

function describe(step: Step, rows: Row[]): string {
  const fill = rows.find((r) => r.mode === 'fill')!;
  const phase = rows.find((r) => r.mode === step.mode)!;
  const cache = phase.pageCacheBytes === undefined ? '' : `, FUSE page cache ${formatBytes(phase.pageCacheBytes)}`;
  return `  data ${formatBytes(step.point.dataBytes)} block ${formatBytes(step.point.blockBytes)}: fill ${fill.mbps} | ${step.mode} ${phase.mbps}${phase.timeCapped ? '* (time cap)' : ''} MB/s${cache}`;
}

export async function runSwapBench(options: SwapBenchOptions, progress: (line: string) => void = console.log): Promise<Row[]> {
  const log = pino({ level: 'warn' }, pino.destination(2));
  const run = createRunner(log);
  const points = pointsFor(options);
  const sizeBytes = Math.max(64 * MiB, ...points.map((p) => p.dataBytes)); // data sizes are whole MiB
  const rows: Row[] = [];
  const oomKilled: string[] = [];
  const pageClusterBefore = (await readFile('/proc/sys/vm/page-cluster', 'utf8')).trim();
  const stop = killWorkload;
  // `on`, not `once`: execa's exit hook re-raises a signal that finds no other listener left.
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const runParentExisted = await access('/run/rswap').then(() => true, () => false);
  await cleanupDevices(run, log); // an interrupted earlier run
  try {
    if (options.pageCluster !== undefined) await writeFile('/proc/sys/vm/page-cluster', String(options.pageCluster));
    for (const turn of turnsOf(planRuns(options))) {
      const started = Date.now();
      const device = await setUpDevice(turn.device, run, log, { sizeBytes, natsPort: options.natsPort, exporterArgs: options.exporterArgs, attacherArgs: options.attacherArgs });
      try {
        progress(`run ${turn.run} of ${options.runs}, ${turn.device}: ${device.path} (${formatBytes(sizeBytes)}, priority ${device.priority})`);
        const pageCache = await pageCacheCheck(turn.device, device, run, progress);
        // The requests the device completes per phase, for the calibrated HDD model.
        const deviceStat = await statPathOf(device.path);
        progress(`  requests counted from ${deviceStat ?? '(no block device: not counted)'}`);
        for (const step of turn.steps) {
          const got = await retryOomKills(() => measure(step, options, device.path, pageCache, deviceStat), (error, attempt) => {
            progress(`  ${error.message} (attempt ${attempt} of ${ATTEMPTS})`);
            oomKilled.push(`run ${step.run} ${step.device} data ${formatBytes(step.point.dataBytes)} block ${formatBytes(step.point.blockBytes)} ${step.mode}`);
          });
          if (!got) continue; // recorded in meta.json and swap.md as not measured
          rows.push(...got);
          progress(describe(step, got));
        }
      } finally {
        await device.teardown();
      }
      progress(`  ${turn.device} run ${turn.run} done in ${Math.round((Date.now() - started) / 1000)} s`);
      await writeOutputs(rows, options, oomKilled); // after every turn: an interrupted run keeps what it measured
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    await cleanupDevices(run, log);
    if (options.pageCluster !== undefined) await writeFile('/proc/sys/vm/page-cluster', pageClusterBefore);
    if (!runParentExisted) await rmdir('/run/rswap').catch(() => {});
  }
  await writeOutputs(rows, options, oomKilled);
  return rows;
}

async function writeOutputs(rows: Row[], options: SwapBenchOptions, oomKilled: string[]): Promise<void> {
  await mkdir(options.out, { recursive: true });
  const devices = options.devices;
  const scale = `limit ${formatBytes(options.limitBytes)}, median of ${options.runs} run${options.runs === 1 ? '' : 's'}`;
  const block = formatBytes(Math.min(...options.blocks));
  await writeFile(join(options.out, 'swap.csv'), toCsv(rows));
  const killed = oomKilled.length === 0 ? '' : `\nOOM-killed attempts (the cgroup v1 OOM killer, see docs/benchmarks.md): ${oomKilled.join('; ')}.\n`;
  await writeFile(join(options.out, 'swap.md'), markdownTables(rows, devices, ['fill', ...options.modes]) + hddModelTables(rows, options.modes) + killed);
  await writeFile(join(options.out, 'data-size.svg'), svgFigure(rows, 'data', devices, options.modes, `Swap throughput vs data size, ratio to local-disk swap (${block} blocks, ${scale})`));
  await writeFile(join(options.out, 'block-size.svg'), svgFigure(rows, 'block', devices, options.modes, `Swap throughput vs block size, ratio to local-disk swap (data = 1x, ${scale})`));
  const meta = {
    ...(await runMeta()),
    // 0 on this VM: an idle vCPU halts at once, so every cross-CPU wake-up pays a VM exit (docs/benchmarks.md).
    guestHaltPollNs: (await readFile('/sys/module/haltpoll/parameters/guest_halt_poll_ns', 'utf8').catch(() => 'n/a')).trim(),
    oomKilled,
    // Phases (fills not counted) that reached --phase-cap-seconds before doing their --phase-bytes.
    timeCapped: timeCapCount(rows),
    // The most page cache a remote device's FUSE export file held after a phase, per device.
    pageCacheMaxBytes: pageCacheMax(rows),
    options: { ...options, phaseBytes: options.phaseBytes ?? 'the point\'s data size', devices: devices.map((d) => `${d}: ${DEVICE_LABELS[d]}`) },
  };
  await writeFile(join(options.out, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
}

export function parseSwapArgs(argv: string[]): SwapBenchOptions {
  const value = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  if (argv.includes('--phase-seconds')) {
    throw new Error("--phase-seconds is gone: a phase does --phase-bytes of work (default: the point's data size); --phase-cap-seconds is its safety cap");
  }
  const smoke = argv.includes('--smoke');
  const list = (name: string, fallback: string) => (value(name) ?? fallback).split(',').filter(Boolean);
  const devices = list('devices', DEFAULT_DEVICES.join(','));
  for (const d of devices) if (!(DEVICES as readonly string[]).includes(d)) throw new Error(`unknown device '${d}'; devices are ${DEVICES.join(', ')}`);
  const modes = list('modes', MODES.join(','));
  for (const m of modes) if (!(MODES as readonly string[]).includes(m)) throw new Error(`unknown mode '${m}'; modes are ${MODES.join(', ')}`);
  const runs = Number(value('runs') ?? (smoke ? 1 : 5));
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs is a whole number of rounds, 1 or more, not '${value('runs')}'`);
  const blocks = list('blocks', smoke ? '4KiB' : '1KiB,4KiB,16KiB,64KiB,256KiB,1MiB').map(parseBytes);
  const phaseBytes = value('phase-bytes') === undefined ? undefined : parseBytes(value('phase-bytes')!);
  if (phaseBytes !== undefined && phaseBytes < Math.max(...blocks)) throw new Error(`--phase-bytes (${formatBytes(phaseBytes)}) must be at least the largest block`);
  const phaseCapSeconds = Number(value('phase-cap-seconds') ?? (smoke ? 1 : 900));
  if (!(phaseCapSeconds > 0)) throw new Error(`--phase-cap-seconds must be a positive number of seconds, not '${value('phase-cap-seconds')}'`);
  const words = (name: string) => value(name)?.split(' ').filter(Boolean);
  const pageCluster = value('page-cluster');
  return {
    devices: devices as DeviceName[],
    modes: modes as Mode[],
    runs,
    limitBytes: parseBytes(value('limit') ?? (smoke ? '64MiB' : '128MiB')),
    dataRatios: list('data-ratios', smoke ? '2' : '0.5,1,2,3,4').map(Number),
    blocks,
    ...(phaseBytes !== undefined ? { phaseBytes } : {}),
    phaseCapSeconds,
    out: value('out') ?? 'bench/results/swap',
    natsPort: Number(value('nats-port') ?? 14225),
    ...(pageCluster !== undefined ? { pageCluster: Number(pageCluster) } : {}),
    ...(words('exporter-args') ? { exporterArgs: words('exporter-args') } : {}),
    ...(words('attacher-args') ? { attacherArgs: words('attacher-args') } : {}),
  };
}

if (process.argv[1]?.endsWith('swap/run.js')) {
  const started = Date.now();
  runSwapBench(parseSwapArgs(process.argv.slice(2))).then(
    () => console.log(`done in ${Math.round((Date.now() - started) / 1000)} s`),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
}
