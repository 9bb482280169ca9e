/** The swap bench's pure parts: its points and plan, the workload's access loop, ratios, tables and figures. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ATTEMPTS, OomKilled, parseSwapArgs, planRuns, pointsFor, retryOomKills, rowsOf, statPathOf, turnsOf, workloadArgs, type Step } from '../../bench/swap/run.js';
import { parseBlockStat, runSwapWorkload, xorshift32, type PhaseResult } from '../../bench/swap/workload.js';
import { ceiling, fromCsv, hddModelMs, hddModelRatios, hddModelTables, HDD_IOPS_SWEEP, markdownTables, pageCacheMax, ratio, summary, svgFigure, timeCapCount, toCsv, type Row } from '../../bench/swap/report.js';

const KiB = 1024;
const MiB = 1024 * KiB;

test('swap bench - the two sweeps share the 1x point at the smallest block, which runs once', () => {
  const points = pointsFor({ limitBytes: 128 * MiB, dataRatios: [0.5, 1, 2], blocks: [KiB, 64 * KiB] });
  assert.deepEqual(
    points.map((p) => [p.sweeps.join('+'), p.dataBytes / MiB, p.blockBytes / KiB]),
    [['data', 64, 1], ['data+block', 128, 1], ['data', 256, 1], ['block', 128, 64]],
  );
});

test('swap bench - xorshift32 is seeded and spreads over the range', () => {
  const a = xorshift32(7);
  const b = xorshift32(7);
  const seen = new Set<number>();
  for (let i = 0; i < 1000; i += 1) {
    const x = a();
    assert.equal(x, b());
    seen.add(x % 64);
  }
  assert.equal(seen.size, 64, 'every bucket of 64 is hit in 1000 draws');
  assert.notEqual(xorshift32(8)(), xorshift32(7)());
});

const MODES = ['seq-read', 'random-read', 'random-write'] as const;

test('swap bench - by default the workload covers the data once per phase and counts bytes in blocks', () => {
  const report = runSwapWorkload({ dataBytes: 2 * MiB, blockBytes: 4 * KiB, modes: MODES, capSeconds: 60, seed: 1 });
  assert.equal(report.fill.bytes, 2 * MiB);
  for (const mode of ['seq-read', 'random-read', 'random-write'] as const) {
    const phase = report.phases[mode]!;
    assert.equal(phase.ops, 512, `${mode}: data / block accesses`);
    assert.equal(phase.bytes, 2 * MiB);
    assert.equal(phase.timeCapped, false);
    assert.ok(phase.mbps > 0);
  }
  assert.throws(() => runSwapWorkload({ dataBytes: MiB + 1, blockBytes: 4 * KiB, modes: ['seq-read'], capSeconds: 1, seed: 1 }), /multiple of --block/);
});

test('swap bench - --phase-bytes fixes the work: phaseBytes / block accesses, whatever the data size', () => {
  const report = runSwapWorkload({ dataBytes: 2 * MiB, blockBytes: 4 * KiB, modes: MODES, phaseBytes: 3 * MiB + 100, capSeconds: 60, seed: 1 });
  for (const mode of MODES) {
    const phase = report.phases[mode]!;
    assert.equal(phase.ops, 768, `${mode}: floor(3 MiB + 100 / 4 KiB); a sequential read wraps around the data`);
    assert.equal(phase.bytes, 3 * MiB);
    assert.equal(phase.timeCapped, false);
  }
  assert.equal(runSwapWorkload({ dataBytes: 2 * MiB, blockBytes: 64 * KiB, modes: ['random-read'], phaseBytes: 256 * KiB, capSeconds: 60, seed: 1 }).phases['random-read']!.ops, 4);
  assert.throws(() => runSwapWorkload({ dataBytes: 2 * MiB, blockBytes: 64 * KiB, modes: ['seq-read'], phaseBytes: 4 * KiB, capSeconds: 1, seed: 1 }), /at least one --block/);
});

test('swap bench - a phase stops at its time cap and says so', () => {
  const report = runSwapWorkload({ dataBytes: 64 * MiB, blockBytes: KiB, modes: ['random-read'], capSeconds: 0.001, seed: 1 });
  const phase = report.phases['random-read']!;
  assert.equal(phase.timeCapped, true);
  assert.ok(phase.ops < 64 * KiB && phase.ops % 64 === 0, `stopped at a check (every 64 ops): ${phase.ops}`);
});

const row = (device: string, mode: Row['mode'], mbps: number, over: Partial<Row> = {}): Row => ({
  run: 1,
  device,
  sweep: 'data',
  dataRatio: 2,
  dataBytes: 256 * MiB,
  blockBytes: KiB,
  limitBytes: 128 * MiB,
  mode,
  mbps,
  ms: 1000,
  ops: 10,
  pswpin: 5,
  pswpout: 5,
  timeCapped: false,
  ...over,
});

test('swap bench - one run: ratios, CSV round trip, tables with the paper beside ours', () => {
  const rows = [
    row('remote', 'random-read', 20),
    row('local', 'random-read', 40),
    row('hdd-model', 'random-read', 0.5, { timeCapped: true }),
    row('ramfs-loop', 'random-read', 80),
    row('remote', 'random-read', 30, { sweep: 'block', blockBytes: 64 * KiB, dataRatio: 1, dataBytes: 128 * MiB }),
    row('local', 'random-read', 25, { sweep: 'block', blockBytes: 64 * KiB, dataRatio: 1, dataBytes: 128 * MiB }),
  ];
  const at = { sweep: 'data' as const, dataBytes: 256 * MiB, blockBytes: KiB, mode: 'random-read' as const };
  assert.equal(ratio(rows, 'remote', 'local', at), 0.5);
  assert.equal(ratio(rows, 'remote', 'hdd-model', at), 40);
  assert.equal(ratio(rows, 'zram', 'local', at), undefined, 'not measured');
  assert.deepEqual(fromCsv(toCsv(rows)), rows);
  const md = markdownTables(rows, ['remote', 'local', 'hdd-model', 'ramfs-loop'], ['random-read']);
  assert.match(md, /\| 2x \(256MiB\) \| 20\.00 \| 40\.00 \| 0\.50\* \| 80\.00 \| 0\.50 \| 40\.00 \| 0\.25 \(ramfs-loop\) \| 22-27x \|/);
  assert.match(md, /\| 64KiB \| 30\.00 \| 25\.00 \| – \| – \| 1\.20 \| – \| – \| 1\.1-1\.2x \|/);
  assert.match(md, /median \(min-max\) of 1 run,/);
  assert.match(md, /1 of 6 phases reached the cap/);
  assert.doesNotMatch(md, /n=k/, 'no missing-run legend for a single run');
});

test('swap bench - the ceiling is the fastest local RAM-backed swap at each point, zram or ramfs-loop, named', () => {
  const at = { sweep: 'data' as const, dataBytes: 256 * MiB, blockBytes: KiB, mode: 'random-read' as const };
  const rows = [row('remote', 'random-read', 20), row('ramfs-loop', 'random-read', 80), row('zram', 'random-read', 400)];
  assert.deepEqual(ceiling(rows, at), { device: 'zram', ratio: 0.05 });
  assert.deepEqual(ceiling(rows.filter((r) => r.device !== 'zram'), at), { device: 'ramfs-loop', ratio: 0.25 });
  assert.equal(ceiling([row('remote', 'random-read', 20)], at), undefined, 'no RAM device measured');
  assert.match(markdownTables(rows, ['remote', 'zram', 'ramfs-loop'], ['random-read']), /\| 0\.05 \(zram\) \|/);
});

test('swap bench - the figure draws a line per device, the paper band, on a log scale', () => {
  const rows = [row('remote', 'random-read', 20), row('local', 'random-read', 40), row('remote', 'random-read', 10, { dataRatio: 4, dataBytes: 512 * MiB }), row('local', 'random-read', 40, { dataRatio: 4, dataBytes: 512 * MiB })];
  const svg = svgFigure(rows, 'data', ['remote', 'local'], ['random-read'], 'test');
  assert.equal((svg.match(/<polyline /g) ?? []).length, 2);
  assert.match(svg, /paper remote\/local 22-27x/);
  assert.match(svg, />0\.1x</);
  assert.match(svg, />100x</);
});

const at = (mode: Row['mode']) => ({ sweep: 'data' as const, dataBytes: 256 * MiB, blockBytes: KiB, mode });

test('swap bench - runs: cells are median (min-max) of the runs, n where runs are missing, ratios are ratios of medians', () => {
  const rows = [
    // remote 10, 30, 20 and local 40, 35, 70: per-run ratios 0.25, 0.86, 0.29 (median 0.29); ratio of medians 20/40 = 0.5.
    ...[10, 30, 20].map((mbps, i) => row('remote', 'random-read', mbps, { run: i + 1 })),
    ...[40, 35, 70].map((mbps, i) => row('local', 'random-read', mbps, { run: i + 1 })),
    // hdd-model measured in runs 1 and 2 only, one of them time-capped.
    row('hdd-model', 'random-read', 0.5, { run: 1, timeCapped: true }),
    row('hdd-model', 'random-read', 0.7, { run: 2 }),
    // three fills per run (one per mode's process), summarized together.
    ...[1, 2, 3].flatMap((run) => [100, 200, 300].map((mbps) => row('remote', 'fill', mbps + run, { run }))),
  ];
  assert.equal(ratio(rows, 'remote', 'local', at('random-read')), 0.5);
  assert.ok(Math.abs(ratio(rows, 'remote', 'hdd-model', at('random-read'))! - 20 / 0.6) < 1e-9, 'median of two runs is their mean');
  const s = summary(rows, 'hdd-model', at('random-read'))!;
  assert.deepEqual([s.median, s.min, s.max, s.n, s.runs, s.timeCapped], [0.6, 0.5, 0.7, 2, 2, true]);
  const fill = summary(rows, 'remote', at('fill'))!;
  assert.deepEqual([fill.median, fill.min, fill.max, fill.n, fill.runs], [202, 101, 303, 9, 3]);
  const md = markdownTables(rows, ['remote', 'local', 'hdd-model'], ['fill', 'random-read']);
  assert.match(md, /median \(min-max\) of 3 runs/);
  assert.match(md, /\| 2x \(256MiB\) \| 20\.00 \(10\.00-30\.00\) \| 40\.00 \(35\.00-70\.00\) \| 0\.60 \(0\.50-0\.70\)\* n=2 \| 0\.50 \| 33\.33 \| – \| 22-27x \|/);
  assert.match(md, /\| 2x \(256MiB\) \| 202 \(101-303\) \| – \| – \|/, 'the fill cell: all fills of all runs');
  assert.match(md, /`n=k`: only k of the 3 runs/);
  assert.match(md, /1 of 8 phases reached the cap/, 'fills are not phases');
});

test('swap bench - the figure plots the ratio of medians', () => {
  const rows = [...[10, 30, 20].map((mbps, i) => row('remote', 'random-read', mbps, { run: i + 1 })), ...[40, 35, 70].map((mbps, i) => row('local', 'random-read', mbps, { run: i + 1 }))];
  const svg = svgFigure(rows, 'data', ['remote', 'local'], ['random-read'], 'test');
  // One point, a log scale from 0.1x to 100x over 240 px from y=50: 0.5x is at 290 - (log10(0.5) + 1) / 3 * 240.
  const y = (v: number) => (50 + 240 - ((Math.log10(v) + 1) / 3) * 240).toFixed(1);
  assert.match(svg, new RegExp(`<polyline points="[0-9.]+,${y(0.5)}" [^>]*stroke="#d62728"`));
  assert.doesNotMatch(svg, new RegExp(`,${y(20 / 70)}"`), 'not the median of the per-run ratios');
});

test('swap bench - headings, titles and axis labels name the run\'s smallest block, not 1 KiB', () => {
  const rows = [row('remote', 'seq-read', 20, { blockBytes: 4 * KiB }), row('local', 'seq-read', 40, { blockBytes: 4 * KiB })];
  const md = markdownTables(rows, ['remote', 'local'], ['seq-read']);
  assert.match(md, /\*\*Data size sweep \(4KiB blocks\), seq-read\*\*/);
  assert.doesNotMatch(md, /1 ?KiB/);
  const svg = svgFigure(rows, 'data', ['remote', 'local'], ['seq-read'], 'test');
  assert.match(svg, /data size \/ memory limit \(4KiB blocks\)/);
  assert.doesNotMatch(svg, /1 ?KiB/);
});

test('swap bench - CSV keeps run and page cache per row, and reads a CSV from before them as run 1', () => {
  const rows = [
    row('remote', 'fill', 300, { run: 2, pageCacheBytes: 0 }),
    row('remote', 'random-read', 20, { run: 2, pageCacheBytes: 8192 }),
    row('local', 'random-read', 40, { run: 3 }),
  ];
  const csv = toCsv(rows);
  assert.equal(csv.split('\n')[0], 'run,device,sweep,dataRatio,dataBytes,blockBytes,limitBytes,mode,mbps,ms,ops,pswpin,pswpout,timeCapped,pageCacheBytes,ioReads,ioWrites,ioReadBytes,ioWriteBytes');
  assert.ok(csv.split('\n')[3]!.startsWith('3,local,') && csv.split('\n')[3]!.endsWith(',false,,,,,'), 'no page cache or requests on a local row: empty cells');
  assert.deepEqual(fromCsv(csv), rows);
  const old = [
    'device,sweep,dataRatio,dataBytes,blockBytes,limitBytes,mode,mbps,ms,ops,pswpin,pswpout,timeCapped',
    'remote,data,2,268435456,1024,134217728,random-read,12.5,6000,73242,70000,1200,true',
  ].join('\n');
  const [read] = fromCsv(old);
  assert.deepEqual(read, row('remote', 'random-read', 12.5, { ms: 6000, ops: 73242, pswpin: 70000, pswpout: 1200, timeCapped: true }));
  assert.equal(read!.run, 1);
  assert.equal('pageCacheBytes' in read!, false);
});

test('swap bench - the page cache of the FUSE file: most per device, one line under the tables', () => {
  const rows = [
    row('remote', 'fill', 300, { pageCacheBytes: 0 }),
    row('remote', 'seq-read', 20, { pageCacheBytes: 0 }),
    row('remote-unsealed', 'seq-read', 20, { pageCacheBytes: 4096 }),
    row('remote-unsealed', 'seq-read', 20, { run: 2, pageCacheBytes: 2 * MiB }),
    row('local', 'seq-read', 40),
  ];
  assert.deepEqual(pageCacheMax(rows), { remote: 0, 'remote-unsealed': 2 * MiB });
  const md = markdownTables(rows, ['remote', 'remote-unsealed', 'local'], ['seq-read']);
  assert.match(md, /remote: the FUSE file held at most 0B of page cache during the remote runs: the reads went to the lender\./);
  assert.match(md, /remote-unsealed: the FUSE file held at most 2MiB of page cache during the remote-unsealed runs: up to that much .* may have come from this machine's page cache/);
  assert.doesNotMatch(md, /local: the FUSE file/);
});

test('swap bench - time-capped phases are counted once per measurement, fills left out', () => {
  const shared = { dataRatio: 1, dataBytes: 128 * MiB };
  const rows = [
    row('hdd-model', 'random-read', 1, { ...shared, timeCapped: true }),
    row('hdd-model', 'random-read', 1, { ...shared, sweep: 'block', timeCapped: true }), // the same process, the other sweep
    row('hdd-model', 'random-read', 1, { ...shared, run: 2 }),
    row('hdd-model', 'fill', 50, shared),
  ];
  assert.deepEqual(timeCapCount(rows), { capped: 1, phases: 2 });
});

const DEVICES = ['remote', 'local', 'zram'] as const;

test('swap bench - the plan: rounds with the device order rotated, each device one turn per round', () => {
  const plan = planRuns({ runs: 4, devices: [...DEVICES], modes: [...MODES], limitBytes: 128 * MiB, dataRatios: [1, 2], blocks: [4 * KiB, 64 * KiB] });
  const turns = turnsOf(plan);
  assert.deepEqual(
    turns.map((t) => `${t.run}:${t.device}`),
    ['1:remote', '1:local', '1:zram', '2:local', '2:zram', '2:remote', '3:zram', '3:remote', '3:local', '4:remote', '4:local', '4:zram'],
  );
  assert.equal(plan.length, 4 * 3 * 3 * 3, 'runs x devices x points x modes');
  assert.deepEqual(turns.map((t) => t.steps.length), Array(12).fill(9));
});

test('swap bench - the plan: in a turn, one process per mode per point, each exactly once', () => {
  const plan = planRuns({ runs: 2, devices: ['local', 'zram'], modes: [...MODES], limitBytes: 128 * MiB, dataRatios: [1, 2], blocks: [4 * KiB, 64 * KiB] });
  for (const turn of turnsOf(plan)) {
    const seen = turn.steps.map((s) => `${s.point.dataBytes / MiB}MiB/${s.point.blockBytes / KiB}KiB/${s.mode}`);
    assert.equal(new Set(seen).size, seen.length, 'no step twice');
    assert.deepEqual(seen.sort(), ['128MiB/4KiB', '128MiB/64KiB', '256MiB/4KiB'].flatMap((p) => MODES.map((m) => `${p}/${m}`)).sort());
  }
  const step = plan.find((s) => s.run === 2 && s.mode === 'random-read')!;
  assert.deepEqual(workloadArgs(step, { phaseCapSeconds: 900 }), [
    '--data', String(step.point.dataBytes), '--block', String(step.point.blockBytes), '--modes', 'random-read',
    '--phase-bytes', String(step.point.dataBytes), '--phase-cap-seconds', '900', '--seed', '2',
  ]);
  assert.deepEqual(workloadArgs(step, { phaseBytes: 64 * MiB, phaseCapSeconds: 5 }).slice(6, 10), ['--phase-bytes', String(64 * MiB), '--phase-cap-seconds', '5']);
});

test('swap bench - a process\'s rows: its fill and its one phase, per sweep of the point, with run and page cache', () => {
  const phase = (mbps: number): PhaseResult => ({ bytes: 128 * MiB, ops: 32768, ms: 1000, mbps, pswpin: 1, pswpout: 2, timeCapped: false });
  const step: Step = { run: 3, device: 'remote', point: { sweeps: ['data', 'block'], dataRatio: 1, dataBytes: 128 * MiB, blockBytes: 4 * KiB }, mode: 'seq-read' };
  const rows = rowsOf(step, { dataBytes: 128 * MiB, blockBytes: 4 * KiB, fill: phase(300), phases: { 'seq-read': phase(20) } }, 64 * MiB, 4096);
  assert.deepEqual(rows.map((r) => [r.run, r.sweep, r.mode, r.mbps, r.pageCacheBytes]), [
    [3, 'data', 'fill', 300, 4096], [3, 'data', 'seq-read', 20, 4096], [3, 'block', 'fill', 300, 4096], [3, 'block', 'seq-read', 20, 4096],
  ]);
  const local = rowsOf({ ...step, device: 'local' }, { dataBytes: 128 * MiB, blockBytes: 4 * KiB, fill: phase(300), phases: { 'seq-read': phase(20) } }, 64 * MiB);
  assert.ok(local.every((r) => !('pageCacheBytes' in r)));
  assert.throws(() => rowsOf({ ...step, mode: 'random-read' }, { dataBytes: 128 * MiB, blockBytes: 4 * KiB, fill: phase(300), phases: { 'seq-read': phase(20) } }, 64 * MiB), /no random-read phase/);
});

test('swap bench - arguments: 5 runs by default, 1 with --smoke, a cap not a duration', () => {
  const full = parseSwapArgs([]);
  assert.deepEqual([full.runs, full.phaseCapSeconds, full.phaseBytes, full.devices], [5, 900, undefined, ['remote', 'local', 'hdd-model', 'zram', 'ramfs-loop']]);
  const smoke = parseSwapArgs(['--smoke']);
  assert.deepEqual([smoke.runs, smoke.phaseCapSeconds], [1, 1]);
  const given = parseSwapArgs(['--runs', '3', '--phase-bytes', '64MiB', '--phase-cap-seconds', '60', '--devices', 'remote-unsealed,local']);
  assert.deepEqual([given.runs, given.phaseBytes, given.phaseCapSeconds, given.devices], [3, 64 * MiB, 60, ['remote-unsealed', 'local']]);
  assert.throws(() => parseSwapArgs(['--phase-seconds', '6']), /--phase-cap-seconds/);
  assert.throws(() => parseSwapArgs(['--runs', '0']), /--runs/);
  assert.throws(() => parseSwapArgs(['--phase-bytes', '4KiB']), /at least the largest block/);
});

test('swap bench - the device\'s requests: parsed from its sysfs stat, counted per phase, kept in the rows and the CSV', async () => {
  // A real stat line (vda): reads, merged, sectors read, ms, writes, merged, sectors written, ms, ...
  assert.deepEqual(parseBlockStat('  128   3  2048  40  64  0  1024  10  0  50  50 0 0 0 0\n'), { reads: 128, writes: 64, readBytes: 2048 * 512, writeBytes: 1024 * 512 });
  assert.throws(() => parseBlockStat('nope'), /not a block device stat line/);
  const { mkdtemp, mkdir, writeFile, rm, stat } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = await mkdtemp(join(tmpdir(), 'rswap-stat-'));
  try {
    // The workload reads the file before and after each phase: a phase over a fixed file counts nothing.
    await writeFile(join(dir, 'stat'), '10 0 80 0 5 0 40 0 0 0 0 0 0 0 0\n');
    const report = runSwapWorkload({ dataBytes: 4 * MiB, blockBytes: 4 * KiB, modes: ['random-read'], capSeconds: 60, seed: 1, deviceStat: join(dir, 'stat') });
    assert.deepEqual(report.phases['random-read']!.io, { reads: 0, writes: 0, readBytes: 0, writeBytes: 0 });
    const step: Step = { run: 1, device: 'remote', point: { sweeps: ['data'], dataRatio: 1, dataBytes: 4 * MiB, blockBytes: 4 * KiB }, mode: 'random-read' };
    const phase: PhaseResult = { bytes: 4 * MiB, ops: 1024, ms: 500, mbps: 8.4, pswpin: 100, pswpout: 0, timeCapped: false, io: { reads: 30, writes: 2, readBytes: 30 * 16 * KiB, writeBytes: 8 * KiB } };
    const rows = rowsOf(step, { dataBytes: 4 * MiB, blockBytes: 4 * KiB, fill: { ...phase, io: undefined }, phases: { 'random-read': phase } }, 2 * MiB);
    assert.deepEqual([rows[1]!.ioReads, rows[1]!.ioWrites, rows[1]!.ioReadBytes, rows[1]!.ioWriteBytes], [30, 2, 30 * 16 * KiB, 8 * KiB]);
    assert.ok(!('io' in rows[1]!), 'flattened into columns');
    assert.equal(rows[0]!.ioReads, undefined, 'a phase without counts has none');
    assert.deepEqual(fromCsv(toCsv(rows)).map((r) => [r.ioReads, r.ioWrites, r.ioReadBytes, r.ioWriteBytes]), rows.map((r) => [r.ioReads, r.ioWrites, r.ioReadBytes, r.ioWriteBytes]), 'the CSV keeps them');
    assert.equal(toCsv(fromCsv(toCsv(rows))), toCsv(rows));
    assert.deepEqual(workloadArgs(step, { phaseCapSeconds: 5 }, '/sys/class/block/loop3/stat').slice(-2), ['--device-stat', '/sys/class/block/loop3/stat']);
    // Which stat file: a device's own (by its real name), a file's file system's device, or none.
    await mkdir(join(dir, 'sys/class/block/null'), { recursive: true });
    await writeFile(join(dir, 'sys/class/block/null/stat'), '0 0 0 0 0 0 0 0\n');
    assert.equal(await statPathOf('/dev/null', join(dir, 'sys')), join(dir, 'sys/class/block/null/stat'));
    const { dev } = await stat(join(dir, 'stat'));
    const devName = `${Math.floor(dev / 256) & 0xfff}:${(dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00)}`;
    assert.equal(await statPathOf(join(dir, 'stat'), join(dir, 'sys')), undefined, 'no such device in this sysfs');
    await mkdir(join(dir, 'sys/dev/block', devName), { recursive: true });
    await writeFile(join(dir, 'sys/dev/block', devName, 'stat'), '0 0 0 0 0 0 0 0\n');
    assert.equal(await statPathOf(join(dir, 'stat'), join(dir, 'sys')), join(dir, 'sys/dev/block', devName, 'stat'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('swap bench - the HDD model: 1/IOPS per request plus streaming, remote\'s speed-up across 80-200 IOPS, labelled a model', () => {
  // 100 requests of 64 KiB at 100 IOPS: 1 s positioning + 6.5 MB at 120 MB/s.
  const io = { reads: 90, writes: 10, readBytes: 90 * 64 * KiB, writeBytes: 10 * 64 * KiB };
  assert.ok(Math.abs(hddModelMs(io, 100) - (1000 + (100 * 64 * KiB) / 120e6 * 1000)) < 1e-9);
  assert.ok(hddModelMs(io, 80) > hddModelMs(io, 200), 'a slower disk takes longer');
  const runs = [250, 200, 300].map((ms, i) => row('remote', 'random-read', 10, { run: i + 1, ms, ioReads: 90, ioWrites: 10, ioReadBytes: 90 * 64 * KiB, ioWriteBytes: 10 * 64 * KiB }));
  const at = { sweep: 'data' as const, dataBytes: 256 * MiB, blockBytes: KiB, mode: 'random-read' as const };
  const ratios = hddModelRatios([...runs, row('local', 'random-read', 5)], at)!;
  assert.deepEqual(ratios.map((r) => r.iops), HDD_IOPS_SWEEP);
  // The median over the runs of model time / measured time: the 250 ms run's.
  assert.ok(Math.abs(ratios.find((r) => r.iops === 100)!.ratio - hddModelMs(io, 100) / 250) < 1e-9);
  assert.equal(hddModelRatios([row('remote', 'random-read', 10)], at), undefined, 'no counts, no model');
  const table = hddModelTables(runs, ['random-read']);
  assert.match(table, /HDD model \(a model, not a disk\), data size sweep \(1KiB blocks\), random-read/);
  assert.match(table, /\| 2x \(256MiB\) \| 100 \| 64\.0 \| (\d+\.\d+x \| ){5}\d+\.\d+x \|/);
  assert.equal(hddModelTables([row('remote', 'random-read', 10)], ['random-read']), '', 'nothing to say without counts');
});

test('swap bench - an OOM-killed step runs again, up to 3 attempts, every kill reported; other failures are thrown at once', async () => {
  const kills: number[] = [];
  let calls = 0;
  const flaky = async () => {
    calls += 1;
    if (calls < 3) throw new OomKilled(`step ${calls}`);
    return 'measured';
  };
  assert.equal(await retryOomKills(flaky, (_error, attempt) => kills.push(attempt)), 'measured');
  assert.deepEqual(kills, [1, 2]);
  const always: string[] = [];
  assert.equal(await retryOomKills(async () => Promise.reject(new OomKilled('x')), (error) => always.push(error.message)), undefined, 'killed every time: no result');
  assert.deepEqual(always, Array(ATTEMPTS).fill('x was OOM-killed in its cgroup'));
  let tries = 0;
  await assert.rejects(retryOomKills(async () => {
    tries += 1;
    throw new Error('tgtd gone');
  }, () => assert.fail('not a kill')), /tgtd gone/);
  assert.equal(tries, 1);
});
