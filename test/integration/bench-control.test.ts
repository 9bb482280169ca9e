/** The control-plane bench in smoke mode: a real nats-server and broker, a small simulated fleet. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import type { ControlResult } from '../../bench/control.js';

const CONTROL = resolve(fileURLToPath(import.meta.url), '../../../bench/control.js');

test('bench - control smoke: on one node with one broker and on three nodes with two, every announce, offer and pressure answered, one lease per pressure, memory measured', async () => {
  const out = `/tmp/rswap-control-smoke-${process.pid}.json`;
  try {
    const result = await execa(process.execPath, [CONTROL, '--smoke', '--layouts', '1x1,3x2', '--out', out], { reject: false, timeout: 240_000, forceKillAfterDelay: 60_000 });
    assert.equal(result.exitCode, 0, `${result.stdout}\n${result.stderr}`);
    const { results } = JSON.parse(await readFile(out, 'utf8')) as { results: ControlResult[] };
    assert.deepEqual(results.map((r) => [r.natsNodes, r.brokers]), [[1, 1], [3, 2]]);
    for (const r of results) {
      assert.equal(r.announce.count, 2 * r.hosts, 'every host announced both roles');
      assert.equal(r.announce.errors + r.offers.errors + r.pressure.errors, 0);
      assert.ok(r.offers.count > 0 && r.offers.perSecond > 0);
      assert.equal(r.pressure.leases, r.pressure.count, 'one lease per pressure event');
      assert.ok(r.pressure.telemetrySent > 0, 'telemetry flowed during the pressure phase');
      assert.ok(r.pressure.matchP50Ms >= 0 && r.pressure.matchP99Ms >= r.pressure.matchP50Ms);
      assert.ok(r.brokerPeakRssBytes >= r.brokerRssBytes && r.brokerRssBytes > 0);
    }
    assert.match(await readFile(out.replace(/\.json$/, '.md'), 'utf8'), /\| hosts \|/);
  } finally {
    await rm(out, { force: true });
    await rm(out.replace(/\.json$/, '.md'), { force: true });
  }
});
