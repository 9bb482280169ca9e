/**
 * The remote path's tuning knobs, measured one at a time on one point of the swap bench.
 *
 *   node dist/bench/swap/knobs.js [--variants a,b] [--runs 5] [--data 256MiB] [--limit 128MiB]
 *     [--block 4KiB] [--modes seq-read,random-read,random-write] [--phase-bytes 32MiB]
 *     [--phase-cap-seconds 900] [--out bench/results/knobs] [--nats-port 14226] [--smoke]
 *   node dist/bench/swap/knobs.js --report bench/results/knobs    (knobs.md again from knobs.csv and meta.json)
 *
 * Each variant changes one knob (VARIANTS below; baseline changes none). Method, the swap bench's
 * (bench/swap/run.ts):
 *   - leases: the variants that change the exporter (its flags) get a lease of their own; the
 *     others share one. A group's lease is set up fresh in every round and torn down at the end of
 *     the group's turn;
 *   - `--runs` rounds; in each, every group has one turn, the groups in an order rotated from round
 *     to round, and within a turn its variants in a rotated order too, so drift on the machine
 *     spreads over every variant;
 *   - a variant's knob is set, its modes run, and every machine-wide setting the variants touch
 *     (vm.page-cluster, swap readahead, FUSE readahead, guest halt polling, the unbound-workqueue CPU
 *     mask, the testbed daemons' CPU affinity) is put back, also on failure. A knob this machine
 *     lacks skips its variant (named with the error in meta.json and knobs.md);
 *   - one process per phase: for each variant and mode, bench/swap/workload.js fills --data in a
 *     fresh memory cgroup limited to --limit, then does only that mode; its fill is a 'fill' row;
 *   - a fixed amount of work: each phase accesses --phase-bytes in --block blocks, the same for every
 *     variant; --phase-cap-seconds is only a safety: a phase that reaches it is flagged (timeCapped)
 *     and counted in knobs.md and meta.json;
 *   - the random offsets are seeded with the round's number: the same accesses for every variant of a round;
 *   - a process the cgroup's OOM killer ends is run again, up to 3 attempts; every kill is recorded;
 *   - after each process the page cache of the lease's FUSE export file is read (fincore), and each
 *     phase counts the requests the lease's block device completed.
 * Writes knobs.csv (two rows per process: its fill and its phase), knobs.md (per variant and mode:
 * median (min-max) MB/s over the rounds and the ratio of medians to baseline) and meta.json to
 * --out, after every group's turn, so an interrupted run keeps what it measured. --smoke is a small
 * run for the test suite (one round, 128 MiB of data in 64 MiB, 4 MiB per phase).
 */
import { access, mkdir, readdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { execa } from 'execa';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { readMounts } from '../../shared/procfs.js';
import { formatBytes, MiB, parseBytes } from '../../shared/units.js';
import { cleanupDevices, setUpDevice, TESTBED } from './devices.js';
import {
  ATTEMPTS, FILL_ALLOWANCE_MS, ioColumns, killWorkload, mustBeTopSwap, pageCacheCheck, retryOomKills, runWorkloadIn, statPathOf, workloadArgs,
} from './run.js';
import { BASELINE, knobsCsv, knobsMarkdown, knobsPageCacheMax, knobsTimeCapped, parseKnobsCsv, type KnobRow, type KnobsReportInfo, type OomKill, type SkippedVariant } from './knobs-report.js';
import { MODES, type Mode, type SwapWorkloadReport } from './workload.js';
import { roundOrder } from '../app/run.js';
import { runMeta } from '../args.js';

const SETTINGS = {
  pageCluster: '/proc/sys/vm/page-cluster',
  vmaReadahead: '/sys/kernel/mm/swap/vma_ra_enabled',
  haltPoll: '/sys/module/haltpoll/parameters/guest_halt_poll_ns',
  workqueueMask: '/sys/devices/virtual/workqueue/cpumask',
} as const;

export interface Variant {
  name: string;
  knob: string;
  /** Extra exporter flags: variants with the same ones share a lease. */
  exporterArgs?: string[];
  /** Sets the knob; throws where this machine lacks it (the variant is then skipped). */
  apply?: () => Promise<void>;
  /** The workload runs on CPU 0 too. */
  pinWorkload?: boolean;
}

/** The FUSE exports of the bench testbed's leases: their bdi ("0:N") carries the readahead setting. */
async function fuseBdis(): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').filter((l) => l.includes(' - fuse') && l.includes(`${TESTBED}/`)).map((l) => l.split(' ')[2]!);
}

/** The bench testbed's daemons: its exporters' tgtd (by their pid files) and its leases' qemu-storage-daemon (by their folder). */
async function testbedDaemons(): Promise<{ tgtd: number[]; qemu: number[] }> {
  const tgtd: number[] = [];
  for (const host of await readdir(TESTBED).catch(() => [] as string[])) {
    const pid = Number((await readFile(join(TESTBED, host, 'exporter', 'tgtd.pid'), 'utf8').catch(() => '')).trim());
    if (pid > 0 && (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim() === 'tgtd') tgtd.push(pid);
  }
  const qemu: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (basename(argv[0] ?? '') === 'qemu-storage-daemon' && argv.some((a) => a.includes(`${TESTBED}/`))) qemu.push(Number(entry));
  }
  return { tgtd, qemu };
}

/** Every thread of `pids` on `cpus` (a taskset list). */
async function pin(pids: number[], cpus: string): Promise<void> {
  for (const pid of pids) await execa('taskset', ['-a', '-p', '-c', cpus, String(pid)], { reject: false });
}

export const VARIANTS: Variant[] = [
  { name: BASELINE, knob: 'the defaults' },
  ...[0, 1, 4, 5].map((n) => ({ name: `page-cluster-${n}`, knob: `vm.page-cluster ${n} (default 3)`, apply: () => writeFile(SETTINGS.pageCluster, String(n)) })),
  {
    name: 'fuse-readahead-0',
    knob: 'FUSE export readahead 0 (default 128 KiB)',
    apply: async () => {
      const bdis = await fuseBdis();
      if (bdis.length === 0) throw new Error(`no FUSE export under ${TESTBED}`);
      for (const bdi of bdis) await writeFile(`/sys/class/bdi/${bdi}/read_ahead_kb`, '0');
    },
  },
  { name: 'vma-readahead-off', knob: 'swap readahead by slot, not by address', apply: () => writeFile(SETTINGS.vmaReadahead, 'false') },
  { name: 'halt-poll', knob: 'guest halt polling 200 µs (the kernel default)', apply: () => writeFile(SETTINGS.haltPoll, '200000') },
  {
    name: 'one-cpu',
    knob: 'tgtd, qemu-storage-daemon, workload and unbound workqueues on CPU 0',
    pinWorkload: true,
    apply: async () => {
      const { tgtd, qemu } = await testbedDaemons();
      if (tgtd.length === 0 || qemu.length === 0) throw new Error(`the bench testbed's daemons to pin were not all found (tgtd: ${tgtd.length}, qemu-storage-daemon: ${qemu.length})`);
      await pin([...tgtd, ...qemu], '0');
      await writeFile(SETTINGS.workqueueMask, '1');
    },
  },
  { name: 'tgt-iscsi-defaults', knob: "tgt's own iSCSI parameters (--iscsi-params '')", exporterArgs: ['--iscsi-params', ''] },
  { name: 'tgt-iothreads-1', knob: 'tgtd with 1 I/O thread (default 16)', exporterArgs: ['--tgt-iothreads', '1'] },
];

export interface KnobsOptions {
  /** Variant names, from VARIANTS. */
  variants: string[];
  /** Rounds: every variant measured once per round. */
  runs: number;
  dataBytes: number;
  limitBytes: number;
  blockBytes: number;
  modes: Mode[];
  /** Bytes each phase accesses. */
  phaseBytes: number;
  /** The safety cap on one phase. */
  phaseCapSeconds: number;
  out: string;
  natsPort: number;
}

export function parseKnobsArgs(argv: string[]): KnobsOptions {
  const value = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  if (argv.includes('--reps')) throw new Error('--reps is gone: --runs N runs N rounds (default 5), each measuring every variant once, in a rotated order');
  if (argv.includes('--phase-seconds')) throw new Error('--phase-seconds is gone: a phase does --phase-bytes of work (default 32MiB); --phase-cap-seconds is its safety cap');
  const smoke = argv.includes('--smoke');
  const list = (name: string, fallback: string) => (value(name) ?? fallback).split(',').filter(Boolean);
  const names = VARIANTS.map((v) => v.name);
  const variants = list('variants', names.join(','));
  for (const v of variants) if (!names.includes(v)) throw new Error(`unknown variant '${v}'; variants are ${names.join(', ')}`);
  if (variants.length === 0) throw new Error('--variants names no variant');
  const modes = list('modes', MODES.join(','));
  for (const m of modes) if (!(MODES as readonly string[]).includes(m)) throw new Error(`unknown mode '${m}'; modes are ${MODES.join(', ')}`);
  const runs = Number(value('runs') ?? (smoke ? 1 : 5));
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs is a whole number of rounds, 1 or more, not '${value('runs')}'`);
  const dataBytes = parseBytes(value('data') ?? (smoke ? '128MiB' : '256MiB'));
  const limitBytes = parseBytes(value('limit') ?? (smoke ? '64MiB' : '128MiB'));
  const blockBytes = parseBytes(value('block') ?? '4KiB');
  if (blockBytes <= 0 || dataBytes < blockBytes || dataBytes % blockBytes !== 0) throw new Error(`--data (${formatBytes(dataBytes)}) must be a positive multiple of --block (${formatBytes(blockBytes)})`);
  const phaseBytes = parseBytes(value('phase-bytes') ?? (smoke ? '4MiB' : '32MiB'));
  if (phaseBytes < blockBytes) throw new Error(`--phase-bytes (${formatBytes(phaseBytes)}) must be at least one --block`);
  const phaseCapSeconds = Number(value('phase-cap-seconds') ?? (smoke ? 60 : 900));
  if (!(phaseCapSeconds > 0)) throw new Error(`--phase-cap-seconds must be a positive number of seconds, not '${value('phase-cap-seconds')}'`);
  const out = value('out') ?? 'bench/results/knobs';
  if (out.endsWith('.csv')) throw new Error(`--out is a folder now (knobs.csv, knobs.md and meta.json go in it), not '${out}'`);
  return { variants, runs, dataBytes, limitBytes, blockBytes, modes: modes as Mode[], phaseBytes, phaseCapSeconds, out, natsPort: Number(value('nats-port') ?? 14226) };
}

/** One group's turn in a round: a fresh lease (with the group's exporter flags) and its variants, in this order. */
export interface KnobTurn {
  round: number;
  exporterArgs: string[];
  variants: string[];
}

/**
 * Everything the bench does, in order: in each round, every lease group (the variants with the
 * same exporter flags, in order of first appearance) once, the groups rotated one further each
 * round, and within a group its variants rotated the same way.
 */
export function planKnobs(variants: Array<Pick<Variant, 'name' | 'exporterArgs'>>, runs: number): KnobTurn[] {
  const groups = new Map<string, { exporterArgs: string[]; variants: string[] }>();
  for (const v of variants) {
    const key = JSON.stringify(v.exporterArgs ?? []);
    const group = groups.get(key) ?? { exporterArgs: v.exporterArgs ?? [], variants: [] };
    group.variants.push(v.name);
    groups.set(key, group);
  }
  const turns: KnobTurn[] = [];
  for (let round = 1; round <= runs; round += 1) {
    for (const group of roundOrder([...groups.values()], round)) turns.push({ round, exporterArgs: group.exporterArgs, variants: roundOrder(group.variants, round) });
  }
  return turns;
}

/** A process's rows: its fill and its one phase, both with the page cache read after it. */
export function knobRowsOf(round: number, variant: string, mode: Mode, report: SwapWorkloadReport, pageCacheBytes?: number): KnobRow[] {
  const phase = report.phases[mode];
  if (!phase) throw new Error(`the workload reported no ${mode} phase`);
  const row = (rowMode: KnobRow['mode'], r: typeof phase): KnobRow => ({
    round, variant, process: mode, mode: rowMode,
    mbps: r.mbps, ms: r.ms, ops: r.ops, pswpin: r.pswpin, pswpout: r.pswpout, timeCapped: r.timeCapped,
    ...(pageCacheBytes === undefined ? {} : { pageCacheBytes }),
    ...ioColumns(r),
  });
  return [row('fill', report.fill), row(mode, phase)];
}

/** What knobs.md says besides the rows, from the options. */
function reportInfo(options: KnobsOptions, skipped: SkippedVariant[], oomKilled: OomKill[]): KnobsReportInfo {
  const { runs, dataBytes, limitBytes, blockBytes, phaseBytes, phaseCapSeconds, modes } = options;
  const variants = options.variants.map((name) => ({ name, knob: VARIANTS.find((v) => v.name === name)?.knob ?? name }));
  return { variants, modes, runs, dataBytes, limitBytes, blockBytes, phaseBytes, phaseCapSeconds, skipped, oomKilled };
}

export async function runKnobsBench(options: KnobsOptions, progress: (line: string) => void = console.log): Promise<KnobRow[]> {
  const log = pino({ level: 'warn' }, pino.destination(2));
  const run = createRunner(log);
  const variants = options.variants.map((name) => VARIANTS.find((v) => v.name === name)!);
  const sizeBytes = Math.max(64 * MiB, 2 * options.dataBytes);
  const rows: KnobRow[] = [];
  const oomKilled: OomKill[] = [];
  const skipped: SkippedVariant[] = [];
  const saved = new Map<string, string>();
  for (const path of Object.values(SETTINGS)) saved.set(path, (await readFile(path, 'utf8').catch(() => '')).trim());
  const restoreSettings = async () => {
    for (const [path, old] of saved) if (old) await writeFile(path, old).catch((error: Error) => progress(`  could not put back ${path}: ${error.message}`));
  };
  const info = () => reportInfo(options, skipped, oomKilled);
  let stopped = false;
  const stop = () => {
    stopped = true;
    killWorkload();
  };
  // `on`, not `once`: execa's exit hook re-raises a signal that finds no other listener left.
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const interrupted = () => {
    if (stopped) throw new Error('interrupted');
  };
  const runParentExisted = await access('/run/rswap').then(() => true, () => false);
  await cleanupDevices(run, log); // an interrupted earlier run
  try {
    for (const turn of planKnobs(variants, options.runs)) {
      interrupted();
      const started = Date.now();
      const lease = turn.exporterArgs.length > 0 ? `exporter ${turn.exporterArgs.map((a) => (a === '' ? "''" : a)).join(' ')}` : 'default exporter';
      const device = await setUpDevice('remote', run, log, { sizeBytes, natsPort: options.natsPort, exporterArgs: turn.exporterArgs });
      try {
        progress(`round ${turn.round} of ${options.runs}, lease ${device.path} (${formatBytes(sizeBytes)}, ${lease}): ${turn.variants.join(', ')}`);
        const pageCache = await pageCacheCheck('remote', device, run, progress);
        const deviceStat = await statPathOf(device.path);
        progress(`  requests counted from ${deviceStat ?? '(no block device: not counted)'}`);
        const bdiReadahead = new Map<string, string>();
        for (const bdi of await fuseBdis()) bdiReadahead.set(bdi, (await readFile(`/sys/class/bdi/${bdi}/read_ahead_kb`, 'utf8')).trim());
        for (const name of turn.variants) {
          const v = variants.find((x) => x.name === name)!;
          try {
            // A knob this machine lacks skips its variant; the finally puts back whatever it did set.
            const reason = await Promise.resolve(v.apply?.()).then(() => undefined, (error: Error) => error.message);
            if (reason !== undefined) {
              progress(`  ${v.name}: skipped: ${reason}`);
              const entry = skipped.find((s) => s.variant === v.name);
              if (entry) entry.rounds.push(turn.round);
              else skipped.push({ variant: v.name, knob: v.knob, reason, rounds: [turn.round] });
              continue;
            }
            for (const mode of options.modes) {
              interrupted();
              const what = `workload (round ${turn.round}, ${v.name}, ${mode})`;
              const args = workloadArgs({ run: turn.round, mode, point: { dataBytes: options.dataBytes, blockBytes: options.blockBytes } }, options, deviceStat);
              const report = await retryOomKills(
                async () => {
                  await mustBeTopSwap(device.path);
                  return runWorkloadIn(options.limitBytes, args, what, v.pinWorkload ? ['taskset', '-c', '0'] : [], options.phaseCapSeconds * 1000 + FILL_ALLOWANCE_MS);
                },
                (error, attempt) => {
                  progress(`  ${error.message} (attempt ${attempt} of ${ATTEMPTS})`);
                  oomKilled.push({ round: turn.round, variant: v.name, mode, attempt });
                },
              );
              if (!report) continue; // every attempt killed: recorded in meta.json and knobs.md
              const got = knobRowsOf(turn.round, v.name, mode, report, await pageCache?.());
              rows.push(...got);
              progress(describe(got));
            }
          } finally {
            await restoreSettings();
            for (const [bdi, old] of bdiReadahead) await writeFile(`/sys/class/bdi/${bdi}/read_ahead_kb`, old).catch(() => {});
            const { tgtd, qemu } = await testbedDaemons();
            await pin([...tgtd, ...qemu], (await readFile('/sys/devices/system/cpu/online', 'utf8')).trim());
          }
        }
      } finally {
        try {
          await device.teardown();
        } finally {
          // After every turn, also a failed one: an interrupted run keeps what it measured.
          await writeOutputs(rows, options, info(), saved.get(SETTINGS.haltPoll)).catch((error: Error) => progress(`  could not write the outputs: ${error.message}`));
        }
      }
      progress(`  round ${turn.round}, ${lease} done in ${Math.round((Date.now() - started) / 1000)} s`);
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    await restoreSettings();
    await cleanupDevices(run, log);
    if (!runParentExisted) await rmdir('/run/rswap').catch(() => {});
  }
  await writeOutputs(rows, options, info(), saved.get(SETTINGS.haltPoll));
  const leftover = (await readMounts()).filter((m) => m.target.startsWith('/run/rswap/bench-swap'));
  if (leftover.length > 0) throw new Error(`mounts left: ${leftover.map((m) => m.target).join(', ')}`);
  return rows;
}

function describe([fill, phase]: KnobRow[]): string {
  const cache = phase!.pageCacheBytes === undefined ? '' : `, FUSE page cache ${formatBytes(phase!.pageCacheBytes)}`;
  const io = phase!.ioReads === undefined ? '' : `, ${phase!.ioReads} reads ${phase!.ioWrites} writes`;
  return `  ${phase!.variant} ${phase!.mode}: fill ${fill!.mbps} | ${phase!.mode} ${phase!.mbps}${phase!.timeCapped ? '* (time cap)' : ''} MB/s${cache}${io}`;
}

async function writeOutputs(rows: KnobRow[], options: KnobsOptions, info: KnobsReportInfo, guestHaltPollNs: string | undefined): Promise<void> {
  await mkdir(options.out, { recursive: true });
  await writeFile(join(options.out, 'knobs.csv'), knobsCsv(rows));
  await writeFile(join(options.out, 'knobs.md'), knobsMarkdown(rows, info));
  const meta = {
    ...(await runMeta()),
    // Before the bench (the halt-poll variant changes it): 0 on this VM, so every cross-CPU wake-up pays a VM exit (docs/benchmarks.md).
    guestHaltPollNs: guestHaltPollNs || 'n/a',
    options,
    variants: options.variants.map((name) => {
      const v = VARIANTS.find((x) => x.name === name)!;
      return { name, knob: v.knob, ...(v.exporterArgs ? { exporterArgs: v.exporterArgs } : {}), ...(v.pinWorkload ? { pinWorkload: true } : {}) };
    }),
    skipped: info.skipped,
    oomKilled: info.oomKilled,
    // Phases (fills not counted) that reached --phase-cap-seconds before doing their --phase-bytes.
    timeCapped: knobsTimeCapped(rows),
    // The most page cache the lease's FUSE export file held after a process.
    pageCacheMax: knobsPageCacheMax(rows) ?? null,
  };
  await writeFile(join(options.out, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
}

/** Rewrites a results folder's knobs.md from its knobs.csv and meta.json (no measuring). */
export async function rewriteKnobsReport(dir: string): Promise<void> {
  const meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as {
    options: KnobsOptions;
    variants: Array<{ name: string; knob: string }>;
    skipped: SkippedVariant[];
    oomKilled: OomKill[];
  };
  const { runs, dataBytes, limitBytes, blockBytes, phaseBytes, phaseCapSeconds, modes } = meta.options;
  const info: KnobsReportInfo = { variants: meta.variants, modes, runs, dataBytes, limitBytes, blockBytes, phaseBytes, phaseCapSeconds, skipped: meta.skipped, oomKilled: meta.oomKilled };
  await writeFile(join(dir, 'knobs.md'), knobsMarkdown(parseKnobsCsv(await readFile(join(dir, 'knobs.csv'), 'utf8')), info));
}

if (process.argv[1]?.endsWith('swap/knobs.js')) {
  const started = Date.now();
  const report = process.argv.indexOf('--report');
  const work = report > 0 ? rewriteKnobsReport(process.argv[report + 1] ?? 'bench/results/knobs') : runKnobsBench(parseKnobsArgs(process.argv.slice(2))).then(() => undefined);
  work.then(
    () => console.log(`done in ${Math.round((Date.now() - started) / 1000)} s`),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
}
