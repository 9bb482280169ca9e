/** The rescue bench in smoke mode (2 runs), so it cannot rot: it must run, measure and clean up. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { freePort } from '../helpers/nats.js';
import { readMounts } from '../../shared/procfs.js';

const RESCUE = resolve(fileURLToPath(import.meta.url), '../../../bench/rescue.js');

test('bench - rescue smoke: two runs measured phase by phase, testbed removed', async () => {
  const out = `/tmp/rswap-rescue-smoke-${process.pid}.json`;
  const dir = '/run/rswap/test-bench-rescue';
  try {
    // Past its timeout the bench gets SIGTERM, then 3 min to take down what it set up before SIGKILL.
    const result = await execa(process.execPath, [RESCUE, '--runs', '2', '--out', out, '--dir', dir, '--nats-port', String(await freePort())], { reject: false, timeout: 300_000, forceKillAfterDelay: 180_000 });
    assert.equal(result.exitCode, 0, `${result.stdout}\n${result.stderr}`);
    const report = JSON.parse(await readFile(out, 'utf8')) as { runs: number; rescued: number; missed: unknown[]; results: Array<Record<string, number>>; summary: Record<string, { p50: number }> };
    assert.equal(report.rescued, 2, `every run rescued: ${JSON.stringify(report.missed)}`);
    assert.equal(report.runs, 2);
    for (const run of report.results) {
      for (const phase of ['detect', 'match', 'export', 'attach']) assert.ok(run[phase]! >= 0, `${phase} measured: ${JSON.stringify(run)}`);
      assert.equal(run.total, run.detect! + run.match! + run.export! + run.attach!, 'the phases add up to the total');
    }
    assert.deepEqual((await readMounts()).filter((m) => m.target.startsWith(dir)), []);
  } finally {
    await rm(out, { force: true });
  }
});
