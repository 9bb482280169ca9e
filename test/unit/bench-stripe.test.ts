/** The striping bench's pure parts: the plan, the split of the work, the barrier, the rows, the tables. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { parseStripeArgs, planRounds, readerArgs, seedOf, splitWork } from '../../bench/swap/stripe.js';
import { aggregate, fromCsv, ioDelta, markdown, pageCacheMax, perReader, readShares, rowOf, speedup, timeCapCount, toCsv, type StripeRow } from '../../bench/swap/stripe-report.js';
import { stripeProblem } from '../../bench/swap/devices.js';
import { runSwapWorkload } from '../../bench/swap/workload.js';
import type { SwapArea } from '../../shared/procfs.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const WORKLOAD = resolve(fileURLToPath(import.meta.url), '../../../bench/swap/workload.js');

test('stripe bench - the work splits into whole blocks that add up to the total', () => {
  assert.deepEqual(splitWork(256 * MiB, 4, 4 * KiB), [64 * MiB, 64 * MiB, 64 * MiB, 64 * MiB]);
  assert.deepEqual(splitWork(5 * 4 * KiB, 2, 4 * KiB), [12 * KiB, 8 * KiB], 'the first share gets the block left over');
  const uneven = splitWork(32 * MiB, 3, 4 * KiB);
  assert.equal(uneven.reduce((a, b) => a + b, 0), 32 * MiB);
  assert.ok(uneven.every((b) => b % (4 * KiB) === 0) && Math.max(...uneven) - Math.min(...uneven) === 4 * KiB);
  assert.throws(() => splitWork(MiB + 1, 2, 4 * KiB), /not a whole number of 4KiB blocks/);
  assert.throws(() => splitWork(4 * KiB, 2, 4 * KiB), /fewer than one 4KiB block for each of 2 readers/);
  assert.throws(() => splitWork(MiB, 0, 4 * KiB), /cannot split over 0 readers/);
});

test('stripe bench - each reader gets its share, its own seed (round*100 + index) and the barrier', () => {
  const options = { dataBytes: 256 * MiB, phaseBytes: 32 * MiB, blockBytes: 4 * KiB, phaseCapSeconds: 900 };
  const args = readerArgs(3, { readers: 2, mode: 'random-read' }, options);
  assert.equal(args.length, 2);
  const value = (list: string[], name: string) => list[list.indexOf(`--${name}`) + 1];
  for (const [i, a] of args.entries()) {
    assert.equal(value(a, 'data'), String(128 * MiB));
    assert.equal(value(a, 'phase-bytes'), String(16 * MiB));
    assert.equal(value(a, 'block'), String(4 * KiB));
    assert.equal(value(a, 'modes'), 'random-read');
    assert.equal(value(a, 'phase-cap-seconds'), '900');
    assert.equal(value(a, 'seed'), String(300 + i));
    assert.ok(a.includes('--wait-go'));
  }
  assert.equal(seedOf(1, 3), 103);
  // Every reader count does the same total work.
  for (const readers of [1, 2, 4]) {
    const total = readerArgs(1, { readers, mode: 'seq-read' }, options).reduce((sum, a) => sum + Number(value(a, 'phase-bytes')), 0);
    assert.equal(total, 32 * MiB, `${readers} readers`);
  }
});

test('stripe bench - the plan: layouts rotate from round to round, reader counts too, every cell once per turn', () => {
  const turns = planRounds({ runs: 3, layouts: [1, 2, 4], readers: [1, 2, 4], modes: ['random-read', 'seq-read'] });
  assert.deepEqual(turns.map((t) => [t.run, t.layout]), [[1, 1], [1, 2], [1, 4], [2, 2], [2, 4], [2, 1], [3, 4], [3, 1], [3, 2]]);
  assert.deepEqual(turns[0]!.cells.map((c) => `${c.readers}/${c.mode}`), ['1/random-read', '1/seq-read', '2/random-read', '2/seq-read', '4/random-read', '4/seq-read']);
  assert.deepEqual(turns[3]!.cells.map((c) => c.readers), [2, 2, 4, 4, 1, 1], 'round 2 starts one reader count along');
  for (const t of turns) assert.equal(new Set(t.cells.map((c) => `${c.readers}/${c.mode}`)).size, 6);
});

test('stripe bench - arguments: defaults, --smoke, and refusals before anything is set up', () => {
  const d = parseStripeArgs([]);
  assert.deepEqual([d.layouts, d.readers, d.modes, d.runs], [[1, 2], [1, 2, 4], ['random-read'], 5]);
  assert.deepEqual([d.limitBytes, d.dataBytes, d.swapBytes, d.phaseBytes, d.blockBytes, d.phaseCapSeconds], [128 * MiB, 256 * MiB, 512 * MiB, 32 * MiB, 4 * KiB, 900]);
  assert.equal(d.out, 'bench/results/stripe');
  const s = parseStripeArgs(['--smoke']);
  assert.deepEqual([s.runs, s.layouts, s.readers, s.limitBytes, s.dataBytes, s.swapBytes, s.phaseBytes], [1, [1, 2], [1, 2], 64 * MiB, 128 * MiB, 256 * MiB, 4 * MiB]);
  const o = parseStripeArgs(['--layouts', '1,2,4', '--modes', 'random-read,seq-read', '--runs', '2', '--swap', '512MiB', '--attacher-args', '--foo 1']);
  assert.deepEqual([o.layouts, o.modes, o.runs, o.swapBytes, o.attacherArgs], [[1, 2, 4], ['random-read', 'seq-read'], 2, 512 * MiB, ['--foo', '1']]);
  assert.throws(() => parseStripeArgs(['--layouts', '3']), /--swap 512MiB does not split into 3 leases of whole MiB/);
  assert.throws(() => parseStripeArgs(['--layouts', '8', '--swap', '64MiB']), /into 8 leases of whole MiB, 16MiB or more/);
  assert.throws(() => parseStripeArgs(['--layouts', '16', '--swap', '1GiB']), /at most 8 leases/);
  assert.throws(() => parseStripeArgs(['--smoke', '--layouts', '1,16']), /at most 8 leases/);
  assert.throws(() => parseStripeArgs(['--smoke', '--layouts', '16']), /at most 8/);
  assert.throws(() => parseStripeArgs(['--layouts', '0']), /whole numbers, 1 or more/);
  assert.throws(() => parseStripeArgs(['--modes', 'random-write']), /unknown mode 'random-write'/);
  assert.throws(() => parseStripeArgs(['--readers', '3', '--phase-bytes', '8KiB']), /fewer than one 4KiB block for each of 3 readers/);
  assert.throws(() => parseStripeArgs(['--runs', '0']), /--runs/);
});

const area = (path: string, priority: number): SwapArea => ({ path, type: 'partition', sizeBytes: 64 * MiB, usedBytes: 0, priority });

test('stripe bench - a layout is striped only if all its areas share one priority above every other area', () => {
  assert.equal(stripeProblem([area('/dev/loop1', 100), area('/dev/loop2', 100), area('/swapfile', 5)], ['/dev/loop1', '/dev/loop2']), undefined);
  assert.equal(stripeProblem([area('/dev/loop1', 100)], ['/dev/loop1']), undefined, 'one lease alone');
  assert.match(stripeProblem([area('/dev/loop1', 100)], ['/dev/loop1', '/dev/loop2'])!, /not in \/proc\/swaps: \/dev\/loop2/);
  assert.match(stripeProblem([area('/dev/loop1', 100), area('/dev/loop2', 200)], ['/dev/loop1', '/dev/loop2'])!, /different priorities \(\/dev\/loop1 100, \/dev\/loop2 200\)/);
  assert.match(stripeProblem([area('/dev/loop1', 100), area('/dev/loop2', 100), area('/dev/zram0', 100)], ['/dev/loop1', '/dev/loop2'])!, /at or above the leases' priority 100: \/dev\/zram0 100/);
});

test('stripe bench - the barrier: beforePhases runs after the fill and before the phases, outside their time', () => {
  const order: string[] = [];
  const report = runSwapWorkload({
    dataBytes: 2 * MiB, blockBytes: 4 * KiB, modes: ['random-read'], capSeconds: 60, seed: 1,
    beforePhases: () => {
      order.push('barrier');
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2_000);
    },
  });
  assert.deepEqual(order, ['barrier']);
  // The phase (2 MiB read) takes milliseconds: under the barrier's 2 s, whatever the machine's load.
  assert.ok(report.phases['random-read']!.ms < 2_000, `the wait is not in the phase: ${report.phases['random-read']!.ms} ms`);
});

test('stripe bench - workload.js --wait-go says ready, waits for a line, then reports; without it, one JSON line as before', async () => {
  const args = ['--data', String(MiB), '--block', '4096', '--modes', 'seq-read', '--seed', '1'];
  const plain = await execa(process.execPath, [WORKLOAD, ...args]);
  assert.equal(plain.stdout.split('\n').length, 1, 'no flag: stdout is one JSON report');
  assert.ok(JSON.parse(plain.stdout).phases['seq-read'].ops > 0);

  const child = spawn(process.execPath, [WORKLOAD, ...args, '--wait-go'], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => (out += chunk));
  const closed = new Promise<number | null>((done) => child.on('close', done));
  const deadline = Date.now() + 30_000;
  while (!out.includes('ready\n') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.equal(out, 'ready\n', 'ready after the fill, then nothing');
  await new Promise((r) => setTimeout(r, 2_000));
  assert.equal(out, 'ready\n', 'it waits for its go');
  child.stdin.write('go\n');
  assert.equal(await closed, 0);
  const lines = out.trim().split('\n');
  assert.equal(lines.length, 2);
  assert.equal(lines[0], 'ready');
  const report = JSON.parse(lines.at(-1)!);
  assert.ok(report.phases['seq-read'].ms < 2_000, `its phase starts at go, not at ready 2 s before: ${report.phases['seq-read'].ms} ms`);

  const early = spawn(process.execPath, [WORKLOAD, ...args, '--wait-go'], { stdio: ['pipe', 'pipe', 'pipe'] });
  early.stdin.end(); // no go line: it fails rather than run unsynchronized
  const code = await new Promise<number | null>((done) => early.on('close', done));
  assert.notEqual(code, 0);
});

const row = (over: Partial<StripeRow> = {}): StripeRow => ({
  run: 1,
  layout: 1,
  leaseBytes: 256 * MiB,
  readers: 1,
  mode: 'random-read',
  limitBytes: 128 * MiB,
  dataBytes: 256 * MiB,
  phaseBytes: 32 * MiB,
  blockBytes: 4 * KiB,
  bytes: 32 * MiB,
  ms: 2000,
  mbps: 10,
  readerMbps: [10],
  readerMs: [2000],
  pswpin: 9000,
  pswpout: 100,
  timeCapped: false,
  devices: ['/dev/loop1'],
  deviceReads: [1000],
  deviceReadBytes: [1000 * 32 * KiB],
  deviceWrites: [10],
  pageCacheBytes: [0],
  ...over,
});

test('stripe bench - a row: the aggregate is all readers\' bytes over go to the last report; per lease counters in order', () => {
  const r = rowOf(
    { run: 2, layout: 2, leaseBytes: 128 * MiB, readers: 2, mode: 'random-read', limitBytes: 128 * MiB, dataBytes: 256 * MiB, phaseBytes: 32 * MiB, blockBytes: 4 * KiB, devices: ['/dev/loop1', '/dev/loop2'] },
    {
      phases: [{ bytes: 16 * MiB, ms: 1500, mbps: 11.18, timeCapped: false }, { bytes: 16 * MiB, ms: 2000, mbps: 8.39, timeCapped: false }],
      ms: 2000.04,
      io: [ioDelta({ reads: 10, writes: 1, readBytes: 100, writeBytes: 10 }, { reads: 610, writes: 1, readBytes: 700, writeBytes: 10 }), { reads: 400, writes: 0, readBytes: 400, writeBytes: 0 }],
      pswpin: 8000,
      pswpout: 20,
    },
    [0, undefined],
  );
  assert.equal(r.bytes, 32 * MiB);
  assert.equal(r.ms, 2000);
  assert.equal(r.mbps, 16.78, '33554432 bytes in 2.00004 s');
  assert.deepEqual(r.readerMbps, [11.18, 8.39]);
  assert.deepEqual(r.deviceReads, [600, 400]);
  assert.deepEqual(r.deviceReadBytes, [600, 400]);
  assert.deepEqual(r.deviceWrites, [0, 0]);
  assert.equal(r.timeCapped, false);
  assert.deepEqual(r.pageCacheBytes, [0, undefined]);
  assert.equal(rowOf(r, { phases: [{ bytes: 4096, ms: 1, mbps: 1, timeCapped: true }], ms: 1, io: [], pswpin: 0, pswpout: 0 }, []).timeCapped, true);
});

test('stripe bench - CSV round trip, lists per reader and per lease, a failed page cache check kept empty', () => {
  const rows = [row(), row({ layout: 2, readers: 2, devices: ['/dev/loop1', '/dev/loop2'], deviceReads: [600, 400], deviceReadBytes: [1, 2], deviceWrites: [0, 3], readerMbps: [5.5, 6], readerMs: [1000, 900], pageCacheBytes: [4096, undefined], timeCapped: true })];
  const csv = toCsv(rows);
  assert.match(csv.split('\n')[2]!, /,\/dev\/loop1;\/dev\/loop2,600;400,1;2,0;3,4096;$/);
  assert.deepEqual(fromCsv(csv), rows);
});

test('stripe bench - summaries: medians over rounds, the ratio of medians to 1 lease, the share of reads per lease', () => {
  const rows = [
    ...[10, 12, 11].map((mbps, i) => row({ run: i + 1, mbps, readerMbps: [mbps] })),
    ...[20, 18, 30].map((mbps, i) => row({ run: i + 1, layout: 2, mbps, readerMbps: [mbps] })),
    // 2 readers: two rounds only (one OOM-killed on every attempt), reads 60/40 and 50/50.
    row({ run: 1, layout: 2, readers: 2, mbps: 24, readerMbps: [12, 13], deviceReads: [600, 400] }),
    row({ run: 2, layout: 2, readers: 2, mbps: 26, readerMbps: [14, 12], deviceReads: [500, 500], timeCapped: true }),
    row({ run: 1, readers: 2, mbps: 12, readerMbps: [6, 6] }),
  ];
  const at = { layout: 2, readers: 1, mode: 'random-read' as const };
  assert.deepEqual(aggregate(rows, at), { median: 20, min: 18, max: 30, n: 3, timeCapped: false });
  assert.equal(speedup(rows, at, 1), 20 / 11);
  assert.equal(speedup(rows, { ...at, mode: 'seq-read' }, 1), undefined, 'not measured');
  assert.deepEqual(readShares(rows, { layout: 2, readers: 2, mode: 'random-read' }), [0.55, 0.45]);
  assert.deepEqual(readShares(rows, { layout: 1, readers: 1, mode: 'random-read' }), [1]);
  assert.equal(readShares([row({ deviceReads: [0] })], { layout: 1, readers: 1, mode: 'random-read' }), undefined, 'no reads counted');
  assert.deepEqual(perReader(rows, { layout: 2, readers: 2, mode: 'random-read' }), { median: 12.5, min: 12, max: 14, n: 4 });
  assert.deepEqual(timeCapCount(rows), { capped: 1, phases: 9 });
  assert.deepEqual(pageCacheMax([row({ pageCacheBytes: [4096] }), row({ layout: 2, pageCacheBytes: [undefined, 8192] }), row({ layout: 2, pageCacheBytes: [0, 0] })]), { '1 lease': 4096, '2 leases': 8192 });

  const md = markdown(rows, { layouts: [1, 2], readers: [1, 2], modes: ['random-read'], runs: 3, limitBytes: 128 * MiB, dataBytes: 256 * MiB, phaseBytes: 32 * MiB, blockBytes: 4 * KiB, swapBytes: 256 * MiB, oomKilled: ['run 3 2 leases 2 readers random-read'] });
  assert.match(md, /\| readers \| 1 lease \| 2 leases \| 2 \/ 1 \|/);
  assert.match(md, /\| 1 \| 11\.00 \(10\.00-12\.00\) \| 20\.00 \(18\.00-30\.00\) \| 1\.82x \|/);
  assert.match(md, /\| 2 \| 12\.00 n=1 \| 25\.00 \(24\.00-26\.00\)\* n=2 \| 2\.08x \|/);
  assert.match(md, /\| 2 \| 6\.00 \(6\.00-6\.00\) \| 12\.50 \(12\.00-14\.00\) \|/, 'each reader\'s own MB/s');
  assert.match(md, /\| 2 \| 100% \(1,000 reads, pswpin 9,000\) \| 55% \/ 45% \(1,000 reads, pswpin 9,000\) \|/);
  assert.match(md, /1 of 9 phases reached the cap/);
  assert.match(md, /OOM-killed attempts \(retried up to 3 times\): run 3 2 leases 2 readers random-read\./);
  assert.match(md, /1 lease: a lease's FUSE file held at most 0B of page cache after a phase: the reads went to the lender\./);
});

test('stripe bench - without 1 lease in the layouts, ratios are to the fewest leases measured', () => {
  const rows = [row({ layout: 2, mbps: 10 }), row({ layout: 4, mbps: 15 })];
  const md = markdown(rows, { layouts: [4, 2], readers: [1], modes: ['random-read'], runs: 1, limitBytes: 128 * MiB, dataBytes: 256 * MiB, phaseBytes: 32 * MiB, blockBytes: 4 * KiB, swapBytes: 256 * MiB, oomKilled: [] });
  assert.match(md, /\| readers \| 2 leases \| 4 leases \| 4 \/ 2 \|/);
  assert.match(md, /\| 1 \| 10\.00 \| 15\.00 \| 1\.50x \|/);
  assert.doesNotMatch(md, /OOM-killed/);
});
