import { test } from 'node:test';
import assert from 'node:assert/strict';
import { controlTable, parseLayout, type ControlResult } from '../../bench/control.js';

test('control bench - layouts are NODESxBROKERS with an odd node count for JetStream; anything else is refused by name', () => {
  assert.deepEqual(parseLayout('1x1'), { natsNodes: 1, brokers: 1 });
  assert.deepEqual(parseLayout('3x2'), { natsNodes: 3, brokers: 2 });
  for (const bad of ['2x1', '3x0', '3', 'x2', '3x2x1', '3x9']) assert.throws(() => parseLayout(bad), new RegExp(`--layouts: '${bad}'`));
});

test('control bench - the table has a row per fleet and layout, the layout in its own column', () => {
  const lat = { count: 10, perSecond: 5, p50Ms: 1, p99Ms: 2, errors: 0 };
  const row = (natsNodes: number, brokers: number): ControlResult => ({
    hosts: 1000, natsNodes, brokers, announce: lat, offers: lat,
    pressure: { ...lat, offeredPerSecond: 5, matchP50Ms: 3, matchP99Ms: 4, leases: 10, telemetrySent: 7 },
    brokerPeakRssBytes: 300 * 1024 ** 2, brokerRssBytes: 200 * 1024 ** 2,
  });
  const lines = controlTable([row(1, 1), row(3, 2)]).trim().split('\n');
  assert.equal(lines.length, 4);
  assert.match(lines[2]!, /^\| 1,000 \| 1, 1 \|/);
  assert.match(lines[3]!, /^\| 1,000 \| 3, 2 \|.*\| 300 MiB \/ 200 MiB \|$/);
});
