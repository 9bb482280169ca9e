/** The knobs bench's pure parts: its plan, arguments, rows, CSV, medians and ratios, and knobs.md. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { knobRowsOf, parseKnobsArgs, planKnobs, rewriteKnobsReport, VARIANTS } from '../../bench/swap/knobs.js';
import { knobsCsv, knobsMarkdown, knobsPageCacheMax, knobsTimeCapped, knobSummary, parseKnobsCsv, ratioToBaseline, roundList, type KnobRow, type KnobsReportInfo } from '../../bench/swap/knobs-report.js';
import { workloadArgs } from '../../bench/swap/run.js';
import type { PhaseResult } from '../../bench/swap/workload.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const MODES = ['seq-read', 'random-read', 'random-write'] as const;

test('knobs bench - the plan: each round every lease group once, groups and their variants rotated round to round', () => {
  const variants = [
    { name: 'baseline' },
    { name: 'a' },
    { name: 'iscsi', exporterArgs: ['--iscsi-params', ''] },
    { name: 'b' },
    { name: 'threads', exporterArgs: ['--tgt-iothreads', '1'] },
  ];
  const turns = planKnobs(variants, 4);
  assert.deepEqual(
    turns.map((t) => `${t.round}:${t.variants.join('+')}`),
    [
      '1:baseline+a+b', '1:iscsi', '1:threads',
      '2:iscsi', '2:threads', '2:a+b+baseline',
      '3:threads', '3:b+baseline+a', '3:iscsi',
      '4:baseline+a+b', '4:iscsi', '4:threads',
    ],
  );
  assert.deepEqual(turns.slice(0, 3).map((t) => t.exporterArgs), [[], ['--iscsi-params', ''], ['--tgt-iothreads', '1']], 'a group\'s lease gets its exporter flags');
});

test('knobs bench - the plan of the real variants: three leases a round, every variant exactly once per round', () => {
  const turns = planKnobs(VARIANTS, 5);
  assert.equal(turns.length, 15);
  for (let round = 1; round <= 5; round += 1) {
    const mine = turns.filter((t) => t.round === round);
    assert.equal(mine.length, 3);
    assert.deepEqual(mine.flatMap((t) => t.variants).sort(), VARIANTS.map((v) => v.name).sort());
  }
  const shared = turns.filter((t) => t.exporterArgs.length === 0);
  assert.deepEqual(shared.map((t) => t.variants[0]), ['baseline', 'page-cluster-0', 'page-cluster-1', 'page-cluster-4', 'page-cluster-5'], 'a different variant first each round');
  assert.deepEqual(turns.filter((t) => t.round <= 3).map((t) => t.exporterArgs.length === 0 ? 'shared' : t.exporterArgs[0]), [
    'shared', '--iscsi-params', '--tgt-iothreads', '--iscsi-params', '--tgt-iothreads', 'shared', '--tgt-iothreads', 'shared', '--iscsi-params',
  ]);
});

test('knobs bench - arguments: fixed work by default, --smoke small, the old method\'s flags refused with a reason', () => {
  const full = parseKnobsArgs([]);
  assert.deepEqual(full, {
    variants: VARIANTS.map((v) => v.name), runs: 5, dataBytes: 256 * MiB, limitBytes: 128 * MiB, blockBytes: 4 * KiB, modes: [...MODES],
    phaseBytes: 32 * MiB, phaseCapSeconds: 900, out: 'bench/results/knobs', natsPort: 14226,
  });
  const smoke = parseKnobsArgs(['--smoke', '--variants', 'page-cluster-0', '--out', '/tmp/x']);
  assert.deepEqual([smoke.runs, smoke.dataBytes, smoke.limitBytes, smoke.phaseBytes, smoke.variants, smoke.out], [1, 128 * MiB, 64 * MiB, 4 * MiB, ['page-cluster-0'], '/tmp/x']);
  const given = parseKnobsArgs(['--runs', '3', '--data', '512MiB', '--limit', '256MiB', '--phase-bytes', '64MiB', '--phase-cap-seconds', '60', '--modes', 'random-read', '--nats-port', '15000']);
  assert.deepEqual([given.runs, given.dataBytes, given.limitBytes, given.phaseBytes, given.phaseCapSeconds, given.modes, given.natsPort], [3, 512 * MiB, 256 * MiB, 64 * MiB, 60, ['random-read'], 15000]);
  assert.throws(() => parseKnobsArgs(['--reps', '2']), /--reps is gone: --runs/);
  assert.throws(() => parseKnobsArgs(['--phase-seconds', '6']), /--phase-cap-seconds/);
  assert.throws(() => parseKnobsArgs(['--variants', 'baseline,turbo']), /unknown variant 'turbo'/);
  assert.throws(() => parseKnobsArgs(['--modes', 'seq-write']), /unknown mode/);
  assert.throws(() => parseKnobsArgs(['--out', 'bench/results/knobs.csv']), /--out is a folder/);
  assert.throws(() => parseKnobsArgs(['--runs', '0']), /--runs/);
  assert.throws(() => parseKnobsArgs(['--data', '1000']), /multiple of --block/);
  assert.throws(() => parseKnobsArgs(['--phase-bytes', '1KiB']), /at least one --block/);
});

test('knobs bench - a process: only its mode, the fixed work, the round as seed; its rows are its fill and its phase', () => {
  const options = parseKnobsArgs([]);
  assert.deepEqual(workloadArgs({ run: 3, mode: 'random-read', point: options }, options, '/sys/class/block/loop3/stat'), [
    '--data', String(256 * MiB), '--block', '4096', '--modes', 'random-read', '--phase-bytes', String(32 * MiB), '--phase-cap-seconds', '900', '--seed', '3',
    '--device-stat', '/sys/class/block/loop3/stat',
  ]);
  const phase = (mbps: number, io?: PhaseResult['io']): PhaseResult => ({ bytes: 32 * MiB, ops: 8192, ms: 4000, mbps, pswpin: 7000, pswpout: 10, timeCapped: false, ...(io ? { io } : {}) });
  const report = { dataBytes: 256 * MiB, blockBytes: 4 * KiB, fill: phase(250), phases: { 'random-read': phase(8.4, { reads: 6000, writes: 3, readBytes: 6000 * 4096, writeBytes: 12288 }) } };
  const rows = knobRowsOf(3, 'page-cluster-0', 'random-read', report, 8192);
  assert.deepEqual(rows, [
    { round: 3, variant: 'page-cluster-0', process: 'random-read', mode: 'fill', mbps: 250, ms: 4000, ops: 8192, pswpin: 7000, pswpout: 10, timeCapped: false, pageCacheBytes: 8192 },
    { round: 3, variant: 'page-cluster-0', process: 'random-read', mode: 'random-read', mbps: 8.4, ms: 4000, ops: 8192, pswpin: 7000, pswpout: 10, timeCapped: false, pageCacheBytes: 8192, ioReads: 6000, ioWrites: 3, ioReadBytes: 6000 * 4096, ioWriteBytes: 12288 },
  ]);
  assert.ok(knobRowsOf(1, 'baseline', 'random-read', report).every((r) => !('pageCacheBytes' in r)), 'no page cache read, no column');
  assert.throws(() => knobRowsOf(1, 'baseline', 'seq-read', report), /no seq-read phase/);
});

const row = (variant: string, mode: KnobRow['mode'], mbps: number, over: Partial<KnobRow> = {}): KnobRow => ({
  round: 1,
  variant,
  process: mode === 'fill' ? 'seq-read' : mode,
  mode,
  mbps,
  ms: 1000,
  ops: 10,
  pswpin: 5,
  pswpout: 5,
  timeCapped: false,
  ...over,
});

test('knobs bench - CSV: a row per process and phase, round trip, empty cells where not measured, the old format refused', () => {
  const rows = [
    row('baseline', 'fill', 250.5, { round: 2, process: 'random-read', pageCacheBytes: 0 }),
    row('baseline', 'random-read', 8.4, { round: 2, process: 'random-read', pageCacheBytes: 0, ioReads: 6000, ioWrites: 3, ioReadBytes: 24576000, ioWriteBytes: 12288, timeCapped: true }),
    row('page-cluster-0', 'seq-read', 20),
  ];
  const csv = knobsCsv(rows);
  assert.equal(csv.split('\n')[0], 'round,variant,process,mode,mbps,ms,ops,pswpin,pswpout,timeCapped,pageCacheBytes,ioReads,ioWrites,ioReadBytes,ioWriteBytes');
  assert.equal(csv.split('\n')[3], '1,page-cluster-0,seq-read,seq-read,20,1000,10,5,5,false,,,,,');
  assert.deepEqual(parseKnobsCsv(csv), rows);
  assert.deepEqual(parseKnobsCsv(knobsCsv([])), []);
  assert.throws(() => parseKnobsCsv('variant,rep,fill,seqRead,randomRead,randomWrite\nbaseline,1,262,73,16,12\n'), /not a knobs\.csv of this bench: no round, process, mode/);
});

/** Rounds 1-3 of baseline and page-cluster-0: three fills a round (one per process) and one phase per mode. */
function rounds(): KnobRow[] {
  const rows: KnobRow[] = [];
  const of = { baseline: { 'seq-read': [70, 80, 75], 'random-read': [16, 18, 17] }, 'page-cluster-0': { 'seq-read': [20, 22, 21], 'random-read': [12, 10, 30] } } as const;
  for (const [variant, modes] of Object.entries(of)) {
    for (let round = 1; round <= 3; round += 1) {
      for (const [mode, values] of Object.entries(modes)) {
        rows.push(row(variant, 'fill', 250 + round, { round, process: mode as 'seq-read' }), row(variant, mode as 'seq-read', values[round - 1]!, { round, pageCacheBytes: 0 }));
      }
    }
  }
  return rows;
}

test('knobs bench - the summary: median (min-max) over the rounds, fills pooled, ratios are ratios of medians to baseline', () => {
  const rows = rounds();
  const s = knobSummary(rows, 'page-cluster-0', 'random-read')!;
  assert.deepEqual([s.median, s.min, s.max, s.n, s.rounds, s.timeCapped], [12, 10, 30, 3, 3, false]);
  const fill = knobSummary(rows, 'baseline', 'fill')!;
  assert.deepEqual([fill.median, fill.min, fill.max, fill.n, fill.rounds], [252, 251, 253, 6, 3]);
  // Per-round ratios 12/16, 10/18, 30/17 have the median 0.75; the ratio of medians is 12/17.
  assert.equal(ratioToBaseline(rows, 'page-cluster-0', 'random-read'), 12 / 17);
  assert.equal(ratioToBaseline(rows, 'baseline', 'seq-read'), 1);
  assert.equal(ratioToBaseline(rows, 'page-cluster-0', 'random-write'), undefined, 'not measured');
  assert.equal(ratioToBaseline(rows.filter((r) => r.variant !== 'baseline'), 'page-cluster-0', 'seq-read'), undefined, 'no baseline');
  assert.equal(knobSummary(rows, 'one-cpu', 'seq-read'), undefined);
});

const info = (over: Partial<KnobsReportInfo> = {}): KnobsReportInfo => ({
  variants: [{ name: 'baseline', knob: 'the defaults' }, { name: 'page-cluster-0', knob: 'vm.page-cluster 0 (default 3)' }, { name: 'halt-poll', knob: 'guest halt polling 200 µs' }],
  modes: ['seq-read', 'random-read'],
  runs: 3,
  dataBytes: 256 * MiB,
  limitBytes: 128 * MiB,
  blockBytes: 4 * KiB,
  phaseBytes: 32 * MiB,
  phaseCapSeconds: 900,
  skipped: [],
  oomKilled: [],
  ...over,
});

test('knobs bench - knobs.md: a row per variant, median (min-max) and the ratio to baseline per mode, one line of method and checks', () => {
  const md = knobsMarkdown(rounds(), info());
  assert.match(md, /256MiB of data in a 128MiB memory cgroup, 4KiB blocks/);
  assert.match(md, /\| variant \| knob \| fill \| \/baseline \| seq-read \| \/baseline \| random-read \| \/baseline \|/);
  assert.match(md, /\| baseline \| the defaults \| 252 \(251-253\) \| 1\.00x \| 75\.0 \(70\.0-80\.0\) \| 1\.00x \| 17\.0 \(16\.0-18\.0\) \| 1\.00x \|/);
  assert.match(md, /\| page-cluster-0 \| vm\.page-cluster 0 \(default 3\) \| 252 \(251-253\) \| 1\.00x \| 21\.0 \(20\.0-22\.0\) \| 0\.28x \| 12\.0 \(10\.0-30\.0\) \| 0\.71x \|/);
  assert.doesNotMatch(md, /\| halt-poll \|/, 'a variant with no rows has no table row');
  assert.match(md, /3 of 3 rounds; 32MiB of accesses per phase, .*; 0 of 12 phases reached the cap \(--phase-cap-seconds 900\); 0 OOM kills; FUSE page cache after a process: at most 0B \(every swap-in went to the lender\)\./);
  assert.doesNotMatch(md, /`\*`|n=k|Skipped|OOM-killed attempts/, 'no legend for what did not happen');
});

test('knobs bench - knobs.md: capped phases starred, missing rounds n=k, every OOM kill and skipped variant named, page cache found', () => {
  const rows = rounds()
    .filter((r) => !(r.variant === 'page-cluster-0' && r.mode === 'random-read' && r.round === 2))
    .map((r) => (r.variant === 'baseline' && r.mode === 'seq-read' && r.round === 1 ? { ...r, timeCapped: true } : r))
    .map((r) => (r.variant === 'page-cluster-0' && r.round === 3 ? { ...r, pageCacheBytes: 2 * MiB } : r));
  const md = knobsMarkdown(rows, info({
    runs: 5,
    oomKilled: [1, 2, 3].map((attempt) => ({ round: 2, variant: 'page-cluster-0', mode: 'random-read' as const, attempt })),
    skipped: [{ variant: 'halt-poll', knob: 'guest halt polling 200 µs', reason: "ENOENT: no such file or directory, open '/sys/module/haltpoll/parameters/guest_halt_poll_ns'", rounds: [1, 2, 3] }],
  }));
  assert.match(md, /\| baseline \| the defaults \| [^|]+ \| 1\.00x \| 75\.0 \(70\.0-80\.0\)\* \| 1\.00x \|/);
  assert.match(md, /\| 21\.0 \(20\.0-22\.0\) \| 0\.28x \| 21\.0 \(12\.0-30\.0\) n=2 \| 1\.24x \|/);
  assert.match(md, /^3 of 5 rounds; .*; 1 of 11 phases reached the cap .*; 3 OOM kills; FUSE page cache after a process: at most 2MiB \(after page-cluster-0; up to that much/m);
  assert.match(md, /`\*` at least one round of the phase reached its time cap/);
  assert.match(md, /`n=k`: only k of the 3 rounds/);
  assert.match(md, /OOM-killed attempts \(each run again, up to 3 attempts\): round 2 page-cluster-0 random-read \(attempt 1\); round 2 page-cluster-0 random-read \(attempt 2\); round 2 page-cluster-0 random-read \(attempt 3\)\./);
  assert.match(md, /Skipped: halt-poll \(guest halt polling 200 µs\) in rounds 1-3: ENOENT: no such file/);
  assert.deepEqual(knobsTimeCapped(rows), { capped: 1, phases: 11 });
  assert.deepEqual(knobsPageCacheMax(rows), { bytes: 2 * MiB, variant: 'page-cluster-0' });
  assert.equal(knobsPageCacheMax([row('baseline', 'seq-read', 1)]), undefined, 'never read');
  assert.match(knobsMarkdown([row('baseline', 'seq-read', 1)], info({ runs: 1 })), /1 of 1 round; .*FUSE page cache not read\./);
});

test('knobs bench - round lists are ranges', () => {
  assert.equal(roundList([1, 2, 3, 5]), '1-3, 5');
  assert.equal(roundList([4]), '4');
  assert.equal(roundList([3, 1, 2, 2]), '1-3');
});

test('knobs bench - --report writes knobs.md again from knobs.csv and meta.json', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rswap-knobs-'));
  try {
    const rows = rounds();
    const { variants, skipped, oomKilled, ...options } = info({ skipped: [{ variant: 'halt-poll', knob: 'guest halt polling 200 µs', reason: 'no haltpoll', rounds: [1] }] });
    await writeFile(join(dir, 'knobs.csv'), knobsCsv(rows));
    await writeFile(join(dir, 'meta.json'), JSON.stringify({ options: { ...options, variants: variants.map((v) => v.name), out: dir, natsPort: 1 }, variants, skipped, oomKilled }));
    await rewriteKnobsReport(dir);
    assert.equal(await readFile(join(dir, 'knobs.md'), 'utf8'), knobsMarkdown(rows, { variants, skipped, oomKilled, ...options }));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
