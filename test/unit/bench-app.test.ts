import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encode, parseReply, RedisError } from '../../bench/app/resp.js';
import { parseAppArgs, roundOrder, valueOf } from '../../bench/app/run.js';
import { fromCsv, hddModelTable, markdownTables, spread, svgBars, toCsv, type AppRow } from '../../bench/app/report.js';

test('app bench - RESP: commands as arrays of bulk strings; replies of every type, and none until complete', () => {
  assert.equal(encode(['SET', 'k', Buffer.from('v\r\n')]).toString('latin1'), '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n');
  const buf = Buffer.from('+OK\r\n:42\r\n$-1\r\n$5\r\nab\r\nc\r\n*2\r\n$1\r\nx\r\n:7\r\n-ERR bad\r\n');
  const values = [];
  for (let at = 0, r = parseReply(buf, 0); r; at = r.next, r = parseReply(buf, at)) values.push(r.value);
  assert.deepEqual(values.slice(0, 3), ['OK', 42, null]);
  assert.equal((values[3] as Buffer).toString('latin1'), 'ab\r\nc', 'a bulk string may hold CRLF: its length decides');
  assert.deepEqual(values[4], [Buffer.from('x'), 7]);
  assert.ok(values[5] instanceof RedisError && /ERR bad/.test(values[5].message));
  assert.equal(parseReply(Buffer.from('$5\r\nab'), 0), undefined, 'a bulk string cut short waits for more');
  assert.equal(parseReply(Buffer.from('*2\r\n:1\r\n'), 0), undefined, 'so does an array');
  assert.throws(() => parseReply(Buffer.from('?x\r\n'), 0), /not a RESP reply/);
});

test('app bench - device order rotates each round; values are seeded, sized, and differ by key and version', () => {
  assert.deepEqual(roundOrder(['a', 'b', 'c'], 1), ['a', 'b', 'c']);
  assert.deepEqual(roundOrder(['a', 'b', 'c'], 2), ['b', 'c', 'a']);
  assert.deepEqual(roundOrder(['a', 'b', 'c'], 4), ['a', 'b', 'c']);
  assert.equal(valueOf(1, 0, 4096).length, 4096);
  assert.equal(valueOf(1, 0, 100).length, 100);
  assert.ok(valueOf(1, 0, 64).equals(valueOf(1, 0, 64)));
  assert.ok(!valueOf(1, 0, 64).equals(valueOf(2, 0, 64)));
  assert.ok(!valueOf(1, 0, 64).equals(valueOf(1, 1, 64)));
});

test('app bench - options: defaults, smoke, and refused names', () => {
  const full = parseAppArgs([]);
  assert.deepEqual(full.devices, ['none', 'local', 'zswap', 'zram', 'remote']);
  assert.deepEqual(full.ratios, [1.5, 2, 3]);
  assert.equal(full.runs, 5);
  assert.equal(parseAppArgs(['--smoke']).runs, 1);
  assert.throws(() => parseAppArgs(['--devices', 'nvme']), /unknown device 'nvme'/);
  assert.deepEqual(full.apps, ['redis', 'touch', 'sort']);
  assert.throws(() => parseAppArgs(['--apps', 'mysql']), /unknown app 'mysql'/);
  assert.throws(() => parseAppArgs(['--ratios', '0']), /ratios/);
});

test('app bench - medians with their range over finished runs; OOM kills counted apart from runs, CSV round trip, figure', () => {
  assert.deepEqual(spread([3, 1, 2, undefined]), { median: 2, min: 1, max: 3, n: 3 });
  assert.equal(spread([4, 1, 3, 2])!.median, 2.5);
  assert.equal(spread([]), undefined);
  const row = (round: number, device: string, getOps: number | undefined): AppRow => ({
    round, app: 'redis', device, ratio: 2, limitBytes: 1, dataBytes: 2, outcome: getOps === undefined ? 'oom' : 'ok', ...(getOps === undefined ? {} : { getOps, getP50Us: 10, getP99Us: 100, getP999Us: 1000 }),
  });
  const rows = [row(1, 'zram', 1000), row(2, 'zram', undefined), row(2, 'zram', 3000), row(3, 'zram', 2000), row(1, 'none', undefined), row(2, 'none', undefined)];
  assert.deepEqual(fromCsv(toCsv(rows)), rows);
  const md = markdownTables(rows, ['none', 'zram'], { zram: 'zram' }, [2]);
  assert.match(md, /\| 2x \| none \| 0 of 2; 2 OOM kills \| - \|/);
  assert.match(md, /\| 2x \| zram \| 3 of 3; 1 OOM kill \| 2,000 \(1,000-3,000\) \|/, 'a retried kill is counted, not a run');
  const svg = svgBars(rows, ['none', 'zram'], {}, [2], 't');
  assert.equal((svg.match(/<rect [^>]*height=/g) ?? []).length, 1 + 2, 'one bar, two legend boxes');
  assert.match(svg, />OOM</);
});

test('app bench - the HDD model: 1/IOPS over the measured per-fault p50, only where the p50 is a fault (2x and more), labelled a model', () => {
  const touch = (device: string, ratio: number, p50: number): AppRow => ({ round: 1, app: 'touch', device, ratio, limitBytes: 1, dataBytes: 1, outcome: 'ok', touchP50Us: p50 });
  const table = hddModelTable([touch('remote', 1.5, 0.8), touch('remote', 2, 100), touch('zram', 2, 5)], ['zram', 'remote'], { remote: 'rswap' }, [1.5, 2]);
  assert.match(table, /^HDD MODEL \(no hard disk measured\)/);
  assert.match(table, /\| 2x \| rswap \| 100 \| 125x \| 100x \| 66\.7x \| 50\.0x \|/, '12.5, 10, 6.7 and 5 ms over 100 µs');
  assert.match(table, /\| 2x \| zram \| 5\.00 \| 2,500x \|/);
  assert.doesNotMatch(table, /\| 1\.5x \|/, 'a p50 that is RAM is no fault');
  assert.equal(hddModelTable([touch('remote', 1.5, 0.8)], ['remote'], {}, [1.5]), '');
});
