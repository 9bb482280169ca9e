/**
 * The swap bench: the paper's two sweeps on every swap device, one device at a time.
 *
 *   node dist/bench/swap/run.js [--devices remote,local,hdd-model,zram,ramfs-loop]
 *     [--limit 128MiB] [--data-ratios 0.5,1,2,3,4] [--blocks 1KiB,4KiB,16KiB,64KiB,256KiB,1MiB]
 *     [--phase-seconds 6] [--page-cluster N] [--out bench/results/swap] [--smoke]
 *     [--exporter-args '...'] [--attacher-args '...'] [--nats-port 14225]
 *
 * For each device: set it up (swap-on above every other area), then for each point run
 * bench/swap/workload.js in a fresh memory cgroup limited to --limit: the data-size sweep at 1 KiB
 * blocks, and the block-size sweep at a data size of 1x the limit. Then tear the device down.
 * Writes swap.csv, swap.md (tables with the paper's ratios), data-size.svg, block-size.svg and
 * meta.json to --out. --smoke is a small run for the test suite (64 MiB limit, one point, 1 s phases).
 * --page-cluster sets vm.page-cluster for the run and puts the old value back after.
 */
import { access, mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { createMemoryCgroup } from '../../shared/cgroup.js';
import { readSwaps } from '../../shared/procfs.js';
import { formatBytes, MiB, parseBytes } from '../../shared/units.js';
import { cleanupDevices, DEFAULT_DEVICES, DEVICE_LABELS, DEVICES, setUpDevice, type DeviceName } from './devices.js';
import { markdownTables, svgFigure, toCsv, type Row, type Sweep } from './report.js';
import { MODES, type Mode, type SwapWorkloadReport } from './workload.js';
import { runMeta } from '../args.js';

const WORKLOAD = resolve(fileURLToPath(import.meta.url), '../workload.js');

export interface SwapBenchOptions {
  devices: DeviceName[];
  limitBytes: number;
  dataRatios: number[];
  blocks: number[];
  modes: Mode[];
  phaseSeconds: number;
  out: string;
  pageCluster?: number;
  exporterArgs?: string[];
  attacherArgs?: string[];
  natsPort: number;
}

interface Point {
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

let running: ResultPromise | undefined;
let cgroupSerial = 0;

/**
 * cgroup v1 sometimes OOM-kills a workload that is only a little over its limit (the 1x point):
 * charging a swap-in fails after reclaim's retries, on every device, local disk included. Such a
 * point is run again, up to ATTEMPTS times; each kill is recorded, and a point killed every time
 * is left out of the results (and named in meta.json and swap.md).
 */
class OomKilled extends Error {
  constructor(what: string) {
    super(`${what} was OOM-killed in its cgroup`);
  }
}

async function oomKills(cgroupPath: string): Promise<number> {
  const text = await readFile(join(cgroupPath, 'memory.oom_control'), 'utf8').catch(() => readFile(join(cgroupPath, 'memory.events'), 'utf8').catch(() => ''));
  return Number(/^oom_kill (\d+)$/m.exec(text)?.[1] ?? 0);
}

const ATTEMPTS = 3;

/**
 * Runs bench/swap/workload.js once with `args` in a fresh memory cgroup limited to `limitBytes`
 * (behind `prefix`, e.g. taskset), and returns its report; OomKilled if the cgroup's OOM killer
 * ended it. SIGINT/SIGTERM of the bench kill it.
 */
export async function runWorkloadIn(limitBytes: number, args: string[], what: string, prefix: string[] = []): Promise<SwapWorkloadReport> {
  const cgroup = await createMemoryCgroup(`rswap-bench-swap-${process.pid}-${(cgroupSerial += 1)}`, limitBytes);
  try {
    const [command, ...rest] = cgroup.wrap([...prefix, process.execPath, WORKLOAD, ...args]);
    running = execa(command!, rest, { reject: false, timeout: 900_000 });
    const result = await running;
    running = undefined;
    if (result.signal === 'SIGKILL' && (await oomKills(cgroup.path)) > 0) throw new OomKilled(what);
    if (result.exitCode !== 0) throw new Error(`${what} failed (${result.signal ?? result.exitCode}): ${String(result.stderr).trim()}`);
    return JSON.parse(String(result.stdout)) as SwapWorkloadReport;
  } finally {
    await cgroup.remove();
  }
}

async function runPoint(device: DeviceName, point: Point, options: SwapBenchOptions, devicePath: string): Promise<Row[]> {
  const top = (await readSwaps()).sort((a, b) => b.priority - a.priority)[0];
  if (top?.path !== devicePath) throw new Error(`${devicePath} is no longer the highest-priority swap area (${top?.path} is): results would mix devices`);
  const args = ['--data', String(point.dataBytes), '--block', String(point.blockBytes), '--modes', options.modes.join(','), '--phase-seconds', String(options.phaseSeconds)];
  const report = await runWorkloadIn(options.limitBytes, args, `workload on ${device} (data ${formatBytes(point.dataBytes)})`);
  const rows: Row[] = [];
  for (const sweep of point.sweeps) {
    const base = { device, sweep, dataRatio: point.dataRatio, dataBytes: point.dataBytes, blockBytes: point.blockBytes, limitBytes: options.limitBytes };
    rows.push({ ...base, mode: 'fill', ...report.fill });
    for (const mode of options.modes) rows.push({ ...base, mode, ...report.phases[mode]! });
  }
  return rows;
}

export async function runSwapBench(options: SwapBenchOptions, progress: (line: string) => void = console.log): Promise<Row[]> {
  const log = pino({ level: 'warn' }, pino.destination(2));
  const run = createRunner(log);
  const points = pointsFor(options);
  const sizeBytes = Math.max(64 * MiB, ...points.map((p) => p.dataBytes)); // data sizes are whole MiB
  const rows: Row[] = [];
  const oomKilled: string[] = [];
  const pageClusterBefore = (await readFile('/proc/sys/vm/page-cluster', 'utf8')).trim();
  const stop = () => running?.kill('SIGKILL');
  // `on`, not `once`: execa's exit hook re-raises a signal that finds no other listener left.
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const runParentExisted = await access('/run/rswap').then(() => true, () => false);
  await cleanupDevices(run, log); // an interrupted earlier run
  try {
    if (options.pageCluster !== undefined) await writeFile('/proc/sys/vm/page-cluster', String(options.pageCluster));
    for (const name of options.devices) {
      const started = Date.now();
      const device = await setUpDevice(name, run, log, { sizeBytes, natsPort: options.natsPort, exporterArgs: options.exporterArgs, attacherArgs: options.attacherArgs });
      try {
        progress(`${name}: ${device.path} (${formatBytes(sizeBytes)}, priority ${device.priority})`);
        for (const point of points) {
          let got: Row[] | undefined;
          for (let attempt = 1; !got && attempt <= ATTEMPTS; attempt += 1) {
            try {
              got = await runPoint(name, point, options, device.path);
            } catch (error) {
              if (!(error instanceof OomKilled)) throw error;
              progress(`  ${error.message} (attempt ${attempt} of ${ATTEMPTS})`);
              oomKilled.push(`${name} data ${formatBytes(point.dataBytes)} block ${formatBytes(point.blockBytes)}`);
            }
          }
          if (!got) continue; // recorded in meta.json and swap.md as not measured
          rows.push(...got);
          const by = (mode: string) => got.find((r) => r.mode === mode);
          progress(
            `  data ${formatBytes(point.dataBytes)} block ${formatBytes(point.blockBytes)}: fill ${by('fill')?.mbps} | ${options.modes.map((m) => `${m} ${by(m)?.mbps}${by(m)?.timeCapped ? '*' : ''}`).join(' | ')} MB/s`,
          );
        }
      } finally {
        await device.teardown();
      }
      progress(`  ${name} done in ${Math.round((Date.now() - started) / 1000)} s`);
      await writeOutputs(rows, options, oomKilled); // after every device: an interrupted run keeps what it measured
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
  const scale = `limit ${formatBytes(options.limitBytes)}`;
  await writeFile(join(options.out, 'swap.csv'), toCsv(rows));
  const killed = oomKilled.length === 0 ? '' : `\nOOM-killed attempts (the cgroup v1 OOM killer, see docs/benchmarks.md): ${oomKilled.join('; ')}.\n`;
  await writeFile(join(options.out, 'swap.md'), markdownTables(rows, devices, ['fill', ...options.modes]) + killed);
  await writeFile(join(options.out, 'data-size.svg'), svgFigure(rows, 'data', devices, options.modes, `Swap throughput vs data size, ratio to local-disk swap (1 KiB blocks, ${scale})`));
  await writeFile(join(options.out, 'block-size.svg'), svgFigure(rows, 'block', devices, options.modes, `Swap throughput vs block size, ratio to local-disk swap (data = 1x, ${scale})`));
  const meta = {
    ...(await runMeta()),
    // 0 on this VM: an idle vCPU halts at once, so every cross-CPU wake-up pays a VM exit (docs/benchmarks.md).
    guestHaltPollNs: (await readFile('/sys/module/haltpoll/parameters/guest_halt_poll_ns', 'utf8').catch(() => 'n/a')).trim(),
    oomKilled,
    options: { ...options, devices: devices.map((d) => `${d}: ${DEVICE_LABELS[d]}`) },
  };
  await writeFile(join(options.out, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
}

function parseArgs(argv: string[]): SwapBenchOptions {
  const value = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const smoke = argv.includes('--smoke');
  const list = (name: string, fallback: string) => (value(name) ?? fallback).split(',').filter(Boolean);
  const devices = list('devices', DEFAULT_DEVICES.join(','));
  for (const d of devices) if (!(DEVICES as readonly string[]).includes(d)) throw new Error(`unknown device '${d}'; devices are ${DEVICES.join(', ')}`);
  const modes = list('modes', MODES.join(','));
  for (const m of modes) if (!(MODES as readonly string[]).includes(m)) throw new Error(`unknown mode '${m}'; modes are ${MODES.join(', ')}`);
  const words = (name: string) => value(name)?.split(' ').filter(Boolean);
  const pageCluster = value('page-cluster');
  return {
    devices: devices as DeviceName[],
    modes: modes as Mode[],
    limitBytes: parseBytes(value('limit') ?? (smoke ? '64MiB' : '128MiB')),
    dataRatios: list('data-ratios', smoke ? '2' : '0.5,1,2,3,4').map(Number),
    blocks: list('blocks', smoke ? '4KiB' : '1KiB,4KiB,16KiB,64KiB,256KiB,1MiB').map(parseBytes),
    phaseSeconds: Number(value('phase-seconds') ?? (smoke ? 1 : 6)),
    out: value('out') ?? 'bench/results/swap',
    natsPort: Number(value('nats-port') ?? 14225),
    ...(pageCluster !== undefined ? { pageCluster: Number(pageCluster) } : {}),
    ...(words('exporter-args') ? { exporterArgs: words('exporter-args') } : {}),
    ...(words('attacher-args') ? { attacherArgs: words('attacher-args') } : {}),
  };
}

if (process.argv[1]?.endsWith('swap/run.js')) {
  const started = Date.now();
  runSwapBench(parseArgs(process.argv.slice(2))).then(
    () => console.log(`done in ${Math.round((Date.now() - started) / 1000)} s`),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
}
