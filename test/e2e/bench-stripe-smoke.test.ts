/**
 * The striping bench in smoke mode, so it cannot rot: the same swap as 1 lease and as 2 leases at
 * one priority, 1 and 2 parallel readers in one cgroup, every cell measured with its requests per
 * lease's device, the outputs written, and the machine left as it was found.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { access, readFile, readdir, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { readMounts, readSwaps } from '../../shared/procfs.js';
import { memoryCgroupRoot } from '../../shared/cgroup.js';
import { MiB } from '../../shared/units.js';
import { freePort } from '../helpers/nats.js';
import { attachedLoops } from '../helpers/leftovers.js';
import { fromCsv } from '../../bench/swap/stripe-report.js';
import { CGROUP_PREFIX } from '../../bench/swap/stripe.js';
import { RUN, WORK, type LeaseArea } from '../../bench/swap/devices.js';

const STRIPE_BENCH = resolve(fileURLToPath(import.meta.url), '../../../bench/swap/stripe.js');
const run = createRunner(pino({ level: 'silent' }));

test('bench - stripe smoke: 1 and 2 leases, 1 and 2 readers, reads on both leases, outputs written, nothing left behind', async () => {
  const out = `/tmp/rswap-stripe-smoke-${process.pid}`;
  const loopsBefore = await attachedLoops(run);
  const swapsBefore = (await readSwaps()).map((a) => a.path);
  try {
    // Past its timeout the bench gets SIGTERM, then 3 min to take down what it set up before SIGKILL.
    const result = await execa(process.execPath, [STRIPE_BENCH, '--smoke', '--out', out, '--nats-port', String(await freePort())], { reject: false, timeout: 900_000, forceKillAfterDelay: 180_000 });
    assert.equal(result.exitCode, 0, `${result.stdout}\n${result.stderr}`);
    const rows = fromCsv(await readFile(`${out}/stripe.csv`, 'utf8'));
    assert.equal(rows.length, 4, `a row per layout and reader count: ${JSON.stringify(rows)}`);
    for (const layout of [1, 2]) {
      for (const readers of [1, 2]) {
        const row = rows.find((r) => r.layout === layout && r.readers === readers && r.mode === 'random-read');
        assert.ok(row, `${layout} leases, ${readers} readers measured`);
        const what = `${layout} leases, ${readers} readers: ${JSON.stringify(row)}`;
        assert.equal(row.run, 1, 'smoke mode is one round');
        assert.ok(row.mbps > 0 && row.ms > 0, what);
        assert.equal(row.bytes, 4 * MiB, `the same work in every cell: ${what}`);
        assert.equal(row.leaseBytes, (256 * MiB) / layout, `the same swap in all (twice the data), split: ${what}`);
        assert.equal(row.readerMbps.length, readers, what);
        assert.ok(row.readerMbps.every((m) => m > 0), what);
        assert.equal(row.devices.length, layout, what);
        assert.equal(row.deviceReads.length, layout, what);
        assert.ok(row.pageCacheBytes.length === layout && row.pageCacheBytes.every((b) => b !== undefined && b >= 0), `every lease's FUSE file checked: ${what}`);
        // Twice the cgroup's limit: the reads came back through the leases.
        assert.ok(row.pswpin > 0, `pages swapped in: ${what}`);
        assert.ok(row.deviceReads.reduce((a, b) => a + b, 0) > 0, `requests counted: ${what}`);
        // Striped: with 2 leases, both devices served reads.
        if (layout === 2) assert.ok(row.deviceReads.every((n) => n > 0), `both leases served reads: ${what}`);
      }
    }
    const meta = JSON.parse(await readFile(`${out}/meta.json`, 'utf8')) as { layouts: Array<{ layout: number; areas: LeaseArea[] }>; timeCapped: { capped: number; phases: number }; oomKilled: string[] };
    assert.deepEqual(meta.layouts.map((l) => l.layout).sort(), [1, 2]);
    const two = meta.layouts.find((l) => l.layout === 2)!;
    assert.equal(two.areas.length, 2);
    assert.equal(new Set(two.areas.map((a) => a.priority)).size, 1, 'both areas at one priority');
    assert.equal(new Set(two.areas.map((a) => a.path)).size, 2, 'two devices');
    assert.equal(meta.timeCapped.phases, 4);
    const markdown = await readFile(`${out}/stripe.md`, 'utf8');
    assert.match(markdown, /\| readers \| 1 lease \| 2 leases \| 2 \/ 1 \|/);
    assert.match(markdown, /Reads per lease/);
    assert.match(markdown, /2 leases: a lease's FUSE file held at most /);
  } finally {
    await rm(out, { recursive: true, force: true });
  }
  assert.deepEqual((await attachedLoops(run)).filter((d) => !loopsBefore.includes(d)), [], 'no loop device left');
  assert.deepEqual((await readSwaps()).map((a) => a.path).filter((p) => !swapsBefore.includes(p)), [], 'no swap area left');
  assert.deepEqual((await readMounts()).filter((m) => m.target.startsWith('/run/rswap/bench-swap')), [], 'no ramfs or FUSE mount left');
  await assert.rejects(access(RUN), 'its run folder is gone');
  await assert.rejects(access(WORK), 'its disk folder is gone');
  assert.deepEqual((await readdir(await memoryCgroupRoot())).filter((n) => n.startsWith(CGROUP_PREFIX)), [], 'no cgroup left');
  const { stdout } = await execa('pgrep', ['-f', 'qemu-storage-daemon'], { reject: false });
  assert.equal(stdout.trim(), '', 'no qemu-storage-daemon left');
});
