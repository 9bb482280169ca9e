/**
 * The application bench: a real application (Redis) and a batch job (an in-memory sort) whose data
 * is 1.5x, 2x and 3x their memory cgroup's limit, on each kind of swap.
 *
 *   node dist/bench/app/run.js [--devices none,local,zswap,zram,remote] [--ratios 1.5,2,3]
 *     [--limit 128MiB] [--runs 5] [--ops 20000] [--value 4KiB] [--apps redis,touch,sort]
 *     [--out bench/results/app] [--nats-port 14226] [--vma-readahead on|off] [--smoke]
 *   node dist/bench/app/run.js --report bench/results/app     (tables and figure again from app.csv)
 *
 * Method, the same for every point:
 *   - a fixed amount of work, never a time cap: Redis loads `ratio x limit` of values, then serves
 *     `--ops` GETs of uniformly random keys, then `--ops` SETs of random keys; touch (per-fault
 *     latency) fills `ratio x limit` and reads one byte of `--ops` random pages, each timed; the
 *     sort sorts `ratio x limit` of doubles once;
 *   - one fresh process in a fresh memory cgroup per measurement, so nothing is warm from the last;
 *   - `--runs` rounds; each round sets every device up, measures it and tears it down, and the
 *     device order rotates from round to round (interleaved, so drift on the machine spreads
 *     over every device instead of landing on one);
 *   - values are random bytes (incompressible: zram and zswap get no help from compression), and
 *     every GET reply is checked against the value last written;
 *   - a run the OOM killer ends is recorded as such; with swap it is run again (up to 3 times),
 *     and every kill stays in the results.
 * The client runs outside the cgroup, one connection, one request at a time; each request is
 * timed from its write to its reply. Major faults are the cgroup's own count; swap-ins per fault
 * (readahead) come from /proc/vmstat, machine-wide. Writes app.csv (one row per run), app.md, redis-get.svg and
 * meta.json to --out. --smoke: a small, fast run for the test suite.
 */
import { access, mkdir, readdir, readFile, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import pino from 'pino';
import { createRunner, type Runner } from '../../shared/runner.js';
import { createMemoryCgroup, memoryCgroupRoot, removeCgroup, type MemoryCgroup } from '../../shared/cgroup.js';
import { readSwaps } from '../../shared/procfs.js';
import { formatBytes, MiB, parseBytes } from '../../shared/units.js';
import { waitFor, within } from '../../shared/wait.js';
import { errorMessage } from '../../shared/errors.js';
import type { Logger } from '../../shared/log.js';
import { cleanupDevices, RUN, setUpDevice } from '../swap/devices.js';
import { percentile } from '../rescue.js';
import { xorshift32 } from '../swap/workload.js';
import { RedisClient } from './resp.js';
import { fromCsv, hddModelTable, markdownTables, svgBars, toCsv, type AppRow } from './report.js';
import { runMeta } from '../args.js';

export const APP_DEVICES = ['none', 'local', 'zswap', 'zram', 'remote', 'remote-unsealed'] as const;
export type AppDevice = (typeof APP_DEVICES)[number];
export const APP_LABELS: Record<AppDevice, string> = {
  none: 'no swap',
  local: 'local disk swap file (virtio)',
  zswap: 'zswap in front of the local disk',
  zram: 'zram (RAM, the ceiling)',
  remote: 'rswap, userspace initiator (sealed)',
  'remote-unsealed': 'rswap, userspace initiator, unsealed',
};

export interface AppBenchOptions {
  devices: AppDevice[];
  ratios: number[];
  limitBytes: number;
  runs: number;
  ops: number;
  valueBytes: number;
  apps: AppRow['app'][];
  out: string;
  natsPort: number;
  /** Sets /sys/kernel/mm/swap/vma_ra_enabled for the run (and puts it back): the readahead check. */
  vmaReadahead?: boolean;
}

const SORT_JOB = resolve(fileURLToPath(import.meta.url), '../sort-job.js');
const TOUCH_JOB = resolve(fileURLToPath(import.meta.url), '../touch-job.js');
const ZSWAP = '/sys/module/zswap/parameters/enabled';
const VMA_RA = '/sys/kernel/mm/swap/vma_ra_enabled';

/** The rotational flag of the block device a swap area is on (its own, or its file's disk). */
async function rotational(path: string): Promise<string> {
  const st = await stat(path);
  const dev = st.isBlockDevice() ? st.rdev : st.dev;
  const sys = `/sys/dev/block/${Math.floor(dev / 256) & 0xfff}:${(dev & 0xff) | ((dev >> 12) & 0xfff00)}`;
  const flag = await readFile(`${sys}/queue/rotational`, 'utf8').catch(() => readFile(`${sys}/../queue/rotational`, 'utf8')).catch(() => '?');
  return flag.trim();
}
const ATTEMPTS = 3;
const CGROUP_PREFIX = 'rswap-bench-app-';
let running: ResultPromise | undefined;
let serial = 0;

/** The size of every swap device: the largest dataset with Redis's overhead per key, plus room. */
export function swapBytes(options: { ratios: number[]; limitBytes: number }): number {
  return Math.ceil((Math.max(...options.ratios) * options.limitBytes * 1.25) / MiB) * MiB + 64 * MiB;
}

/** The device order of round `round` (1-based): the list rotated by one more each round. */
export function roundOrder<T>(devices: readonly T[], round: number): T[] {
  const k = (round - 1) % Math.max(1, devices.length);
  return [...devices.slice(k), ...devices.slice(0, k)];
}

/** The value stored under key `index` at `version`: `bytes` of seeded random data. */
export function valueOf(index: number, version: number, bytes: number): Buffer {
  const next = xorshift32(Math.imul(index + 1, 0x9e3779b1) ^ Math.imul(version + 1, 0x85ebca6b));
  const words = new Uint32Array(Math.ceil(bytes / 4));
  for (let i = 0; i < words.length; i += 1) words[i] = next();
  return Buffer.from(words.buffer, 0, bytes);
}

const keyOf = (index: number) => `key:${index}`;

async function memoryStat(cgroup: MemoryCgroup, field: string): Promise<number> {
  const text = await readFile(join(cgroup.path, 'memory.stat'), 'utf8').catch(() => '');
  const name = cgroup.version === 1 ? `total_${field}` : field;
  return Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
}

async function pswpin(): Promise<number> {
  return Number(/^pswpin (\d+)$/m.exec(await readFile('/proc/vmstat', 'utf8'))?.[1] ?? 0);
}

/** The cgroup's OOM record (v1 memory.oom_control, v2 memory.events); '' when it is gone. */
async function oomRecord(cgroup: MemoryCgroup): Promise<string> {
  return readFile(join(cgroup.path, cgroup.version === 1 ? 'memory.oom_control' : 'memory.events'), 'utf8').catch(() => '');
}

const oomKillsIn = (record: string) => Number(/^oom_kill (\d+)$/m.exec(record)?.[1] ?? 0);

async function oomKills(cgroup: MemoryCgroup): Promise<number> {
  return oomKillsIn(await oomRecord(cgroup));
}

/** A cgroup for one measurement; with no swap (device none), swap is forbidden to it outright. */
async function cgroupFor(limitBytes: number, noSwap: boolean): Promise<MemoryCgroup> {
  const cgroup = await createMemoryCgroup(`${CGROUP_PREFIX}${process.pid}-${(serial += 1)}`, limitBytes);
  if (noSwap) {
    if (cgroup.version === 1) await writeFile(join(cgroup.path, 'memory.memsw.limit_in_bytes'), String(limitBytes));
    else await writeFile(join(cgroup.path, 'memory.swap.max'), '0');
  }
  return cgroup;
}

/** Bytes of the file's pages in the page cache (fincore). */
export async function cachedBytes(run: Runner, file: string): Promise<number> {
  const { stdout } = await run('fincore', ['--bytes', '--noheadings', '--output', 'RES', file]);
  return Number(stdout.trim()) || 0;
}

/** The file behind a loop device (the remote lease's FUSE export), if it is one. */
export async function backingFile(run: Runner, device: string): Promise<string | undefined> {
  const { stdout } = await run('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE']);
  return stdout.split('\n').map((l) => l.trim().split(/\s+/)).find(([name]) => name === device)?.[1];
}

interface Measure {
  round: number;
  device: AppDevice;
  ratio: number;
  options: AppBenchOptions;
  /** The remote lease's FUSE export file, watched for page cache. */
  fuseFile?: string;
  run: Runner;
}

/** Timed requests: ops/s over the whole phase, and latency percentiles in microseconds. */
function phaseStats(latenciesNs: Float64Array, elapsedNs: number) {
  const sorted = Array.from(latenciesNs).sort((a, b) => a - b);
  const us = (p: number) => Math.round(percentile(sorted, p) / 100) / 10;
  return { ops: Math.round(latenciesNs.length / (elapsedNs / 1e9)), p50: us(50), p99: us(99), p999: us(99.9) };
}

async function measureRedis(m: Measure): Promise<AppRow> {
  const { options } = m;
  const keys = Math.max(1, Math.round((m.ratio * options.limitBytes) / options.valueBytes));
  const base = { round: m.round, app: 'redis' as const, device: m.device, ratio: m.ratio, limitBytes: options.limitBytes, dataBytes: keys * options.valueBytes };
  const dir = join(RUN, `redis-${serial + 1}`);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const socket = join(dir, 'redis.sock');
  const cgroup = await cgroupFor(options.limitBytes, m.device === 'none');
  let client: RedisClient | undefined;
  let fuseCacheMaxBytes = 0;
  const sampleCache = async () => {
    if (m.fuseFile) fuseCacheMaxBytes = Math.max(fuseCacheMaxBytes, await cachedBytes(m.run, m.fuseFile));
  };
  try {
    // No persistence (no fork, no disk writes), one thread; all memory is the dataset's.
    const [command, ...rest] = cgroup.wrap(['redis-server', '--port', '0', '--unixsocket', socket, '--unixsocketperm', '700', '--save', '', '--appendonly', 'no', '--dir', dir, '--loglevel', 'warning', '--protected-mode', 'yes']);
    running = execa(command!, rest, { reject: false, timeout: 1_800_000 });
    const server = running;
    client = await waitFor('redis-server to listen', async () => {
      if (server.exitCode !== null) throw new Error(`redis-server exited: ${String((await server).stderr)}`);
      return RedisClient.connect(socket).catch(() => undefined);
    }, { timeoutMs: 30_000, intervalMs: 50 });
    const versions = new Uint8Array(keys);
    // Where the run is, for an error that says when the server went (load, GETs or SETs, and which).
    let at = 'load 0';
    const began = Date.now();
    try {
      // Load: pipelined SETs, 32 at a time.
      const loadStart = process.hrtime.bigint();
      for (let i = 0; i < keys; i += 32) {
        at = `load ${i} of ${keys}`;
        const batch: Buffer[][] = [];
        for (let j = i; j < Math.min(keys, i + 32); j += 1) batch.push([Buffer.from('SET'), Buffer.from(keyOf(j)), valueOf(j, 0, options.valueBytes)]);
        await client.pipeline(batch);
      }
      const loadS = Number(process.hrtime.bigint() - loadStart) / 1e9;
      await sampleCache();
      // GETs of random keys, one at a time, each checked.
      const pick = xorshift32(0x5eed + m.round);
      const get = new Float64Array(options.ops);
      const faults0 = await memoryStat(cgroup, 'pgmajfault');
      const swapins0 = await pswpin();
      const getStart = process.hrtime.bigint();
      for (let i = 0; i < options.ops; i += 1) {
        const index = pick() % keys;
        at = `GET ${i} of ${options.ops}`;
        const t0 = process.hrtime.bigint();
        const reply = await client.call([Buffer.from('GET'), Buffer.from(keyOf(index))]);
        get[i] = Number(process.hrtime.bigint() - t0);
        if (!(reply instanceof Buffer) || !reply.equals(valueOf(index, versions[index]!, options.valueBytes))) {
          throw new Error(`redis on ${m.device}: the value of ${keyOf(index)} read back wrong`);
        }
      }
      const getNs = Number(process.hrtime.bigint() - getStart);
      const faults = (await memoryStat(cgroup, 'pgmajfault')) - faults0;
      const swapins = (await pswpin()) - swapins0;
      await sampleCache();
      // SETs of random keys with new values.
      const set = new Float64Array(options.ops);
      const setStart = process.hrtime.bigint();
      for (let i = 0; i < options.ops; i += 1) {
        const index = pick() % keys;
        const version = (versions[index]! + 1) & 0xff;
        const value = valueOf(index, version, options.valueBytes);
        at = `SET ${i} of ${options.ops}`;
        const t0 = process.hrtime.bigint();
        await client.call([Buffer.from('SET'), Buffer.from(keyOf(index)), value]);
        set[i] = Number(process.hrtime.bigint() - t0);
        versions[index] = version;
      }
      const setNs = Number(process.hrtime.bigint() - setStart);
      await sampleCache();
      const g = phaseStats(get, getNs);
      const s = phaseStats(set, setNs);
      return {
        ...base, outcome: 'ok', loadS: Math.round(loadS * 100) / 100,
        getOps: g.ops, getP50Us: g.p50, getP99Us: g.p99, getP999Us: g.p999,
        setOps: s.ops, setP50Us: s.p50, setP99Us: s.p99, setP999Us: s.p999,
        getFaultsPerOp: Math.round((faults / options.ops) * 1000) / 1000,
        swapinsPerFault: faults > 0 ? Math.round((swapins / faults) * 100) / 100 : 0,
        ...(m.fuseFile ? { fuseCacheMaxBytes } : {}),
      };
    } catch (error) {
      // The connection closes when the OOM killer ends the server. A server still running a minute
      // on (a value read back wrong) is not waited for: the error is the value's.
      const exit = await within(server, 60_000);
      if (!exit.done) throw error;
      const ended = exit.value;
      const record = await oomRecord(cgroup);
      if (oomKillsIn(record) > 0) return { ...base, outcome: 'oom' };
      // Anything else says how and when the server ended (a SIGBUS is a page that could not be
      // read back in: a swap-in, or its own code re-read from the root file system). Redis writes
      // its crash report to stdout; its start says the signal, si_code (0: sent by a process, named
      // in "Killed by PID"; 2, BUS_ADRERR: the kernel's), the faulting address and the stack.
      const how = ended.signal ? `killed by ${ended.signal}` : `exited with ${ended.exitCode}`;
      const stdout = String(ended.stdout);
      const report = stdout.indexOf('=== REDIS BUG REPORT START');
      const said = report >= 0 ? stdout.slice(report, report + 2_000) : stdout.trim().slice(-1_500);
      throw new Error([
        `redis on ${m.device}: ${errorMessage(error)} at ${at}, ${((Date.now() - began) / 1000).toFixed(1)} s in; redis-server ${how}, not by the OOM killer (${record.trim().replace(/\n/g, ', ')})`,
        `--- redis-server's ${report >= 0 ? 'crash report' : 'output, last lines'}:\n${said}`,
        `--- its stderr:\n${String(ended.stderr).trim().slice(-400)}`,
      ].join('\n'));
    }
  } finally {
    client?.close();
    running?.kill('SIGKILL');
    await running?.catch(() => {});
    running = undefined;
    await cgroup.remove();
    await rm(dir, { recursive: true, force: true });
  }
}

/** A job's data size, its row's common fields, and a fresh cgroup for it. */
async function jobSetup(m: Measure, app: AppRow['app']) {
  const bytes = Math.round((m.ratio * m.options.limitBytes) / MiB) * MiB;
  const base = { round: m.round, app, device: m.device, ratio: m.ratio, limitBytes: m.options.limitBytes, dataBytes: bytes };
  return { bytes, base, cgroup: await cgroupFor(m.options.limitBytes, m.device === 'none') };
}

async function measureSort(m: Measure): Promise<AppRow> {
  const { bytes, base, cgroup } = await jobSetup(m, 'sort');
  try {
    const [command, ...rest] = cgroup.wrap([process.execPath, SORT_JOB, '--bytes', String(bytes), '--seed', String(m.round)]);
    running = execa(command!, rest, { reject: false, timeout: 1_800_000 });
    const result = await running;
    running = undefined;
    if (result.exitCode !== 0) {
      if ((await oomKills(cgroup)) > 0) return { ...base, outcome: 'oom' };
      throw new Error(`sort on ${m.device} failed (${result.signal ?? result.exitCode}): ${String(result.stderr).trim()}`);
    }
    const report = JSON.parse(String(result.stdout)) as { fillS: number; sortS: number };
    return { ...base, outcome: 'ok', loadS: Math.round(report.fillS * 100) / 100, sortS: Math.round(report.sortS * 100) / 100 };
  } finally {
    await cgroup.remove();
  }
}

async function measureTouch(m: Measure): Promise<AppRow> {
  const { options } = m;
  const { bytes, base, cgroup } = await jobSetup(m, 'touch');
  try {
    const [command, ...rest] = cgroup.wrap([process.execPath, TOUCH_JOB, '--bytes', String(bytes), '--touches', String(options.ops), '--seed', String(m.round)]);
    const job = execa(command!, rest, { reject: false, timeout: 1_800_000, stdin: 'pipe', maxBuffer: 64 * MiB });
    running = job;
    // The counters are read between the fill and the reads: the job waits for its go.
    const filled = await new Promise<boolean>((resolve) => {
      job.stdout!.on('data', (chunk: Buffer) => {
        if (chunk.toString().includes('filled')) resolve(true);
      });
      void job.then(() => resolve(false), () => resolve(false));
    });
    const faults0 = await memoryStat(cgroup, 'pgmajfault');
    const swapins0 = await pswpin();
    if (filled) job.stdin!.end('go\n');
    const result = await job;
    running = undefined;
    if (result.exitCode !== 0) {
      if ((await oomKills(cgroup)) > 0) return { ...base, outcome: 'oom' };
      throw new Error(`touch on ${m.device} failed (${result.signal ?? result.exitCode}): ${String(result.stderr).trim()}`);
    }
    const faults = (await memoryStat(cgroup, 'pgmajfault')) - faults0;
    const swapins = (await pswpin()) - swapins0;
    const report = JSON.parse(String(result.stdout).split('\n').find((l) => l.startsWith('{'))!) as { fillS: number; latenciesNs: number[] };
    const sorted = report.latenciesNs.sort((a, b) => a - b);
    const us = (p: number) => Math.round(percentile(sorted, p) / 100) / 10;
    return {
      ...base, outcome: 'ok', loadS: Math.round(report.fillS * 100) / 100,
      touchP50Us: us(50), touchP90Us: us(90), touchP99Us: us(99), touchP999Us: us(99.9),
      touchFaultsPerOp: Math.round((faults / sorted.length) * 1000) / 1000,
      swapinsPerFault: faults > 0 ? Math.round((swapins / faults) * 100) / 100 : 0,
    };
  } finally {
    await cgroup.remove();
  }
}

interface Device {
  path?: string;
  teardown(): Promise<void>;
}

async function setUp(name: AppDevice, run: Runner, log: Logger, sizeBytes: number, natsPort: number): Promise<Device> {
  if (name === 'none') return { teardown: async () => {} };
  if (name === 'zswap') {
    // zswap compresses pages on their way to the swap device below it (here the local file).
    const device = await setUpDevice('local', run, log, { sizeBytes, natsPort });
    const before = (await readFile(ZSWAP, 'utf8')).trim();
    await writeFile(ZSWAP, 'Y');
    return {
      path: device.path,
      teardown: async () => {
        try {
          await device.teardown(); // swap-off first: zswap's pool empties into RAM
        } finally {
          await writeFile(ZSWAP, before);
        }
      },
    };
  }
  return setUpDevice(name, run, log, { sizeBytes, natsPort });
}

/** The swap bench's devices and folders, and cgroups of ours an interrupted run left (by name). */
async function cleanup(run: Runner, log: Logger): Promise<void> {
  await cleanupDevices(run, log);
  const root = await memoryCgroupRoot();
  for (const name of await readdir(root).catch(() => [] as string[])) {
    if (name.startsWith(CGROUP_PREFIX)) await removeCgroup(join(root, name)).catch((error: Error) => log.warn({ err: error.message }, 'could not remove a cgroup of an earlier run'));
  }
}

export async function runAppBench(options: AppBenchOptions, progress: (line: string) => void = console.log): Promise<AppRow[]> {
  const log = pino({ level: 'warn' }, pino.destination(2));
  const run = createRunner(log);
  const sizeBytes = swapBytes(options);
  const rows: AppRow[] = [];
  const stop = () => running?.kill('SIGKILL');
  // `on`, not `once`: execa's exit hook re-raises a signal that finds no other listener left.
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const runParentExisted = await access('/run/rswap').then(() => true, () => false);
  const zswapBefore = (await readFile(ZSWAP, 'utf8').catch(() => 'N')).trim();
  const vmaBefore = (await readFile(VMA_RA, 'utf8').catch(() => '')).trim();
  await cleanup(run, log);
  try {
    if (options.vmaReadahead !== undefined) await writeFile(VMA_RA, options.vmaReadahead ? 'true' : 'false');
    for (let round = 1; round <= options.runs; round += 1) {
      for (const device of roundOrder(options.devices, round)) {
        const started = Date.now();
        const d = await setUp(device, run, log, sizeBytes, options.natsPort);
        try {
          if (d.path) {
            const top = (await readSwaps()).sort((a, b) => b.priority - a.priority)[0];
            if (top?.path !== d.path) throw new Error(`${d.path} is not the highest-priority swap area (${top?.path} is): results would mix devices`);
          } else if ((await readSwaps()).length > 0) {
            progress('  (swap areas exist on this machine; the no-swap cgroup is kept off them by its memsw limit)');
          }
          const fuseFile = (device === 'remote' || device === 'remote-unsealed') && d.path ? await backingFile(run, d.path) : undefined;
          // Which swap readahead the kernel uses (6.18): by address on an area it takes for
          // solid-state, by swap slot on a rotational one; the flag explains readahead differences.
          if (d.path) progress(`  ${device}: ${d.path}, rotational ${await rotational(d.path)}, vma_ra_enabled ${(await readFile(VMA_RA, 'utf8').catch(() => '?')).trim()}`);
          for (const ratio of options.ratios) {
            for (const app of options.apps) {
              const m: Measure = { round, device, ratio, options, run, ...(fuseFile ? { fuseFile } : {}) };
              // With swap, an OOM kill is the cgroup v1 hazard near the limit (a swap-in's charge
              // failing after reclaim's retries): run again, up to ATTEMPTS, every kill kept in the
              // results. Without swap it is the outcome: once.
              for (let attempt = 1; attempt <= (device === 'none' ? 1 : ATTEMPTS); attempt += 1) {
                const row = app === 'redis' ? await measureRedis(m) : app === 'sort' ? await measureSort(m) : await measureTouch(m);
                rows.push(row);
                progress(`round ${round} ${device} ${ratio}x ${app}: ${describeRow(row)}${row.outcome === 'oom' && device !== 'none' ? ` (attempt ${attempt} of ${ATTEMPTS})` : ''}`);
                if (row.outcome === 'ok') break;
              }
            }
          }
        } finally {
          await d.teardown();
        }
        progress(`  ${device} round ${round} done in ${Math.round((Date.now() - started) / 1000)} s`);
        await writeOutputs(rows, options);
      }
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    await writeFile(ZSWAP, zswapBefore).catch(() => {});
    if (vmaBefore) await writeFile(VMA_RA, vmaBefore).catch(() => {});
    await cleanup(run, log);
    if (!runParentExisted) await rmdir('/run/rswap').catch(() => {});
  }
  await writeOutputs(rows, options);
  return rows;
}

/** A run's result in one line, for the progress log. */
export function describeRow(row: AppRow): string {
  if (row.outcome === 'oom') return 'OOM-killed';
  if (row.app === 'sort') return `sort ${row.sortS} s (fill ${row.loadS} s)`;
  if (row.app === 'touch') return `page reads p50 ${row.touchP50Us} p90 ${row.touchP90Us} p99 ${row.touchP99Us} p99.9 ${row.touchP999Us} µs, ${row.touchFaultsPerOp} faults/read, ${row.swapinsPerFault} swap-ins/fault`;
  const cache = row.fuseCacheMaxBytes !== undefined ? `, FUSE file cache at most ${formatBytes(row.fuseCacheMaxBytes)}` : '';
  return `load ${row.loadS} s, GET ${row.getOps}/s p50 ${row.getP50Us} p99 ${row.getP99Us} p99.9 ${row.getP999Us} µs, SET ${row.setOps}/s, ${row.getFaultsPerOp} faults/GET, ${row.swapinsPerFault} swap-ins/fault${cache}`;
}

/** app.md and redis-get.svg from the rows: written by every run, and again by `--report DIR` from DIR/app.csv. */
async function writeReport(rows: AppRow[], options: AppBenchOptions): Promise<void> {
  const limit = formatBytes(options.limitBytes);
  const tables = markdownTables(rows, options.devices, APP_LABELS, options.ratios);
  const model = hddModelTable(rows, options.devices, APP_LABELS, options.ratios);
  await writeFile(join(options.out, 'app.md'), `Memory cgroup limit ${limit}, values ${formatBytes(options.valueBytes)}, ${options.ops} GETs and ${options.ops} SETs per run, ${options.runs} run(s) per point.\n\n${tables}${model ? `\n${model}` : ''}`);
  await writeFile(join(options.out, 'redis-get.svg'), svgBars(rows, options.devices, APP_LABELS, options.ratios, `Redis random GETs, ${limit} cgroup, median of runs (whiskers: min-max)`));
}

/** Rewrites a results folder's tables and figure from its app.csv and meta.json (no measuring). */
export async function rewriteReport(dir: string): Promise<void> {
  const meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as { options: AppBenchOptions };
  const devices = meta.options.devices.map((d) => d.split(':')[0]!) as AppDevice[];
  await writeReport(fromCsv(await readFile(join(dir, 'app.csv'), 'utf8')), { ...meta.options, devices, out: dir });
}

async function writeOutputs(rows: AppRow[], options: AppBenchOptions): Promise<void> {
  await mkdir(options.out, { recursive: true });
  await writeFile(join(options.out, 'app.csv'), toCsv(rows));
  await writeReport(rows, options);
  const meta = {
    ...(await runMeta()),
    zswapCompressor: (await readFile('/sys/module/zswap/parameters/compressor', 'utf8').catch(() => 'n/a')).trim(),
    redis: (await execa('redis-server', ['--version'], { reject: false })).stdout.trim(),
    options: { ...options, devices: options.devices.map((d) => `${d}: ${APP_LABELS[d]}`) },
  };
  await writeFile(join(options.out, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
}

export function parseAppArgs(argv: string[]): AppBenchOptions {
  const value = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const smoke = argv.includes('--smoke');
  const list = (name: string, fallback: string) => (value(name) ?? fallback).split(',').filter(Boolean);
  // remote-unsealed only when asked for (the cost of sealing): the default compares what users run.
  const devices = list('devices', smoke ? 'none,zram' : APP_DEVICES.filter((d) => d !== 'remote-unsealed').join(','));
  for (const d of devices) if (!(APP_DEVICES as readonly string[]).includes(d)) throw new Error(`unknown device '${d}'; devices are ${APP_DEVICES.join(', ')}`);
  const apps = list('apps', 'redis,touch,sort');
  for (const a of apps) if (!['redis', 'sort', 'touch'].includes(a)) throw new Error(`unknown app '${a}'; apps are redis, touch, sort`);
  const ratios = list('ratios', smoke ? '1.5' : '1.5,2,3').map(Number);
  const vma = value('vma-readahead');
  if (vma !== undefined && vma !== 'on' && vma !== 'off') throw new Error(`--vma-readahead is on or off, not '${vma}'`);
  if (ratios.some((r) => !(r > 0 && r <= 8))) throw new Error(`ratios must be in (0, 8]: ${ratios.join(',')}`);
  return {
    devices: devices as AppDevice[],
    apps: apps as AppRow['app'][],
    ratios,
    limitBytes: parseBytes(value('limit') ?? (smoke ? '64MiB' : '128MiB')),
    runs: Number(value('runs') ?? (smoke ? 1 : 5)),
    ops: Number(value('ops') ?? (smoke ? 500 : 20000)),
    valueBytes: parseBytes(value('value') ?? '4KiB'),
    out: value('out') ?? 'bench/results/app',
    natsPort: Number(value('nats-port') ?? 14226),
    ...(vma !== undefined ? { vmaReadahead: vma === 'on' } : {}),
  };
}

/**
 * One measurement with whatever swap the machine has at the moment, its row printed as JSON: how
 * the VM bench (bench/vm-app.ts) runs an app inside a VM, where it has set the swap up itself.
 *   node dist/bench/app/run.js --one --app redis --device NAME --ratio 2 --round 1 [--limit --ops --value]
 * `--device` only names the row. Returns the row (an OOM kill is a row with outcome oom).
 */
export async function measureOne(argv: string[]): Promise<AppRow> {
  const value = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const app = value('app');
  if (app !== 'redis' && app !== 'touch' && app !== 'sort') throw new Error(`--one needs --app redis, touch or sort, not '${app}'`);
  const device = value('device');
  if (!device) throw new Error('--one needs --device (the name its row carries)');
  const ratio = Number(value('ratio'));
  const round = Number(value('round') ?? 1);
  if (!(ratio > 0 && ratio <= 8) || !Number.isInteger(round) || round < 1) throw new Error(`--one needs --ratio in (0, 8] and --round 1 or more, not '${value('ratio')}' and '${value('round')}'`);
  const options = parseAppArgs(argv.filter((a, i) => a !== '--devices' && argv[i - 1] !== '--devices'));
  const m: Measure = { round, device: device as AppDevice, ratio, options, run: createRunner(pino({ level: 'silent' })) };
  try {
    return app === 'redis' ? await measureRedis(m) : app === 'sort' ? await measureSort(m) : await measureTouch(m);
  } finally {
    await rmdir(RUN).catch(() => {});
  }
}

if (process.argv[1]?.endsWith('app/run.js') && process.argv.includes('--one')) {
  measureOne(process.argv.slice(2)).then(
    (row) => console.log(JSON.stringify(row)),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
} else if (process.argv[1]?.endsWith('app/run.js')) {
  const started = Date.now();
  const report = process.argv.indexOf('--report');
  const work = report > 0 ? rewriteReport(process.argv[report + 1] ?? 'bench/results/app') : runAppBench(parseAppArgs(process.argv.slice(2)));
  work.then(
    () => console.log(`done in ${Math.round((Date.now() - started) / 1000)} s`),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
}
