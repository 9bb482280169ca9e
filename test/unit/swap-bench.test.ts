/** The swap bench's pure parts: its points, the workload's access loop, ratios, tables and figures. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pointsFor } from '../../bench/swap/run.js';
import { runSwapWorkload, xorshift32 } from '../../bench/swap/workload.js';
import { fromCsv, markdownTables, ratio, svgFigure, toCsv, type Row } from '../../bench/swap/report.js';

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

test('swap bench - the workload covers the data once per phase and counts bytes in blocks', () => {
  const report = runSwapWorkload(2 * MiB, 4 * KiB, ['seq-read', 'random-read', 'random-write'], 60, 1);
  assert.equal(report.fill.bytes, 2 * MiB);
  for (const mode of ['seq-read', 'random-read', 'random-write'] as const) {
    const phase = report.phases[mode]!;
    assert.equal(phase.ops, 512, `${mode}: data / block accesses`);
    assert.equal(phase.bytes, 2 * MiB);
    assert.equal(phase.timeCapped, false);
    assert.ok(phase.mbps > 0);
  }
  assert.throws(() => runSwapWorkload(MiB + 1, 4 * KiB, ['seq-read'], 1, 1), /multiple of --block/);
});

test('swap bench - a phase stops at its time cap and says so', () => {
  const report = runSwapWorkload(64 * MiB, KiB, ['random-read'], 0.001, 1);
  const phase = report.phases['random-read']!;
  assert.equal(phase.timeCapped, true);
  assert.ok(phase.ops < 64 * KiB && phase.ops % 64 === 0, `stopped at a check (every 64 ops): ${phase.ops}`);
});

const row = (device: string, mode: Row['mode'], mbps: number, over: Partial<Row> = {}): Row => ({
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

test('swap bench - ratios, CSV round trip, tables with the paper beside ours', () => {
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
  assert.match(md, /\| 2x \(256MiB\) \| 20\.00 \| 40\.00 \| 0\.50\* \| 80\.00 \| 0\.50 \| 40\.00 \| 0\.25 \| 22-27x \|/);
  assert.match(md, /\| 64KiB \| 30\.00 \| 25\.00 \| – \| – \| 1\.20 \| – \| – \| 1\.1-1\.2x \|/);
});

test('swap bench - the figure draws a line per device, the paper band, on a log scale', () => {
  const rows = [row('remote', 'random-read', 20), row('local', 'random-read', 40), row('remote', 'random-read', 10, { dataRatio: 4, dataBytes: 512 * MiB }), row('local', 'random-read', 40, { dataRatio: 4, dataBytes: 512 * MiB })];
  const svg = svgFigure(rows, 'data', ['remote', 'local'], ['random-read'], 'test');
  assert.equal((svg.match(/<polyline /g) ?? []).length, 2);
  assert.match(svg, /paper remote\/local 22-27x/);
  assert.match(svg, />0\.1x</);
  assert.match(svg, />100x</);
});
