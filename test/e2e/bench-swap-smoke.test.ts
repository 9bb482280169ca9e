/**
 * The swap bench in smoke mode, so it cannot rot: every device is set up, measured in every mode
 * (one workload process per mode and point), torn down, the outputs are written, the remote
 * device's FUSE file is checked for page cache, and the machine is left as it was found.
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
import { freePort } from '../helpers/nats.js';
import { attachedLoops } from '../helpers/leftovers.js';
import { fromCsv } from '../../bench/swap/report.js';
import { parseKnobsCsv } from '../../bench/swap/knobs-report.js';
import { DEFAULT_DEVICES, RUN, WORK } from '../../bench/swap/devices.js';
import { MODES } from '../../bench/swap/workload.js';

const SWAP_BENCH = resolve(fileURLToPath(import.meta.url), '../../../bench/swap/run.js');
const KNOBS = resolve(fileURLToPath(import.meta.url), '../../../bench/swap/knobs.js');
const run = createRunner(pino({ level: 'silent' }));

const zramDevices = async () => (await readdir('/sys/block')).filter((d) => d.startsWith('zram')).sort();

test('bench - swap smoke: five devices, three modes, CSV/Markdown/SVG written, nothing left behind', async () => {
  const out = `/tmp/rswap-swap-smoke-${process.pid}`;
  const loopsBefore = await attachedLoops(run);
  const swapsBefore = (await readSwaps()).map((a) => a.path);
  const zramBefore = await zramDevices();
  try {
    // A process per mode and point: three times the workload processes of one with all modes in one.
    // Past its timeout the bench gets SIGTERM, then 3 min to take down what it set up before SIGKILL.
    const result = await execa(process.execPath, [SWAP_BENCH, '--smoke', '--out', out, '--nats-port', String(await freePort())], { reject: false, timeout: 900_000, forceKillAfterDelay: 180_000 });
    assert.equal(result.exitCode, 0, `${result.stdout}\n${result.stderr}`);
    const rows = fromCsv(await readFile(`${out}/swap.csv`, 'utf8'));
    assert.ok(rows.every((r) => r.run === 1), 'smoke mode is one run');
    assert.ok(rows.filter((r) => r.device === 'remote').every((r) => r.pageCacheBytes !== undefined && r.pageCacheBytes >= 0), 'the remote rows carry the FUSE file\'s page cache');
    assert.ok(rows.filter((r) => r.device !== 'remote').every((r) => r.pageCacheBytes === undefined), 'no page cache check elsewhere');
    const meta = JSON.parse(await readFile(`${out}/meta.json`, 'utf8')) as { timeCapped: { capped: number; phases: number }; pageCacheMaxBytes: Record<string, number> };
    assert.ok(meta.timeCapped.phases > 0 && meta.timeCapped.capped <= meta.timeCapped.phases, JSON.stringify(meta.timeCapped));
    assert.equal(typeof meta.pageCacheMaxBytes.remote, 'number');
    for (const device of DEFAULT_DEVICES) {
      for (const mode of ['fill', ...MODES]) {
        const row = rows.find((r) => r.device === device && r.mode === mode);
        assert.ok(row, `${device} ${mode} measured`);
        assert.ok(row.mbps > 0 && row.ops > 0, `${device} ${mode}: ${JSON.stringify(row)}`);
      }
      // Twice the cgroup's limit: the reads must have come back through the device.
      const seq = rows.find((r) => r.device === device && r.mode === 'seq-read')!;
      assert.ok(seq.pswpin > 0, `${device}: pages swapped in during the sequential read`);
      // Every device here is a block device: the requests it completed are counted (the HDD model's input).
      assert.ok(seq.ioReads !== undefined && seq.ioReads > 0 && seq.ioReadBytes! >= seq.ioReads * 4096, `${device}: requests counted: ${JSON.stringify(seq)}`);
    }
    const markdown = await readFile(`${out}/swap.md`, 'utf8');
    assert.match(markdown, /remote\/local/);
    assert.match(markdown, /Data size sweep \(4KiB blocks\)/, 'the block the smoke run used');
    assert.match(markdown, /remote: the FUSE file held at most /);
    assert.match(markdown, /HDD model \(a model, not a disk\), data size sweep \(4KiB blocks\), random-read/);
    for (const figure of ['data-size.svg', 'block-size.svg']) {
      const svg = await readFile(`${out}/${figure}`, 'utf8');
      assert.match(svg, /^<svg /);
      assert.ok((svg.match(/<polyline /g) ?? []).length >= 3 * DEFAULT_DEVICES.length - 3, `${figure} has a line per device and mode`);
    }
  } finally {
    await rm(out, { recursive: true, force: true });
  }
  assert.deepEqual((await attachedLoops(run)).filter((d) => !loopsBefore.includes(d)), [], 'no loop device left');
  assert.deepEqual((await readSwaps()).map((a) => a.path).filter((p) => !swapsBefore.includes(p)), [], 'no swap area left');
  assert.deepEqual(await zramDevices(), zramBefore, 'the zram device it added is removed, the others untouched');
  assert.deepEqual((await readMounts()).filter((m) => m.target.startsWith('/run/rswap/bench-swap')), [], 'no ramfs or FUSE mount left');
  await assert.rejects(access(RUN), 'its run folder is gone');
  await assert.rejects(access(WORK), 'its disk folder is gone');
  assert.deepEqual((await readdir(await memoryCgroupRoot())).filter((n) => n.startsWith('rswap-bench-swap')), [], 'no cgroup left');
  const { stdout } = await execa('pgrep', ['-f', 'qemu-storage-daemon'], { reject: false });
  assert.equal(stdout.trim(), '', 'no qemu-storage-daemon left');
});

test('bench - knobs smoke: a variant that changes a machine-wide setting runs in every mode and puts it back', async () => {
  const out = `/tmp/rswap-knobs-smoke-${process.pid}`;
  const pageCluster = (await readFile('/proc/sys/vm/page-cluster', 'utf8')).trim();
  const loopsBefore = await attachedLoops(run);
  try {
    // One round, one lease, a process per mode (128 MiB of data in 64 MiB, 4 MiB per phase).
    // Past its timeout the bench gets SIGTERM, then 3 min to take down what it set up before SIGKILL.
    const result = await execa(process.execPath, [KNOBS, '--smoke', '--variants', 'page-cluster-0', '--out', out, '--nats-port', String(await freePort())], { reject: false, timeout: 300_000, forceKillAfterDelay: 180_000 });
    assert.equal(result.exitCode, 0, `${result.stdout}\n${result.stderr}`);
    const rows = parseKnobsCsv(await readFile(`${out}/knobs.csv`, 'utf8'));
    assert.ok(rows.length > 0 && rows.every((r) => r.round === 1 && r.variant === 'page-cluster-0'), 'one round of the one variant');
    for (const mode of MODES) {
      const mine = rows.filter((r) => r.process === mode);
      assert.deepEqual(mine.map((r) => r.mode), ['fill', mode], `${mode}: a process, its fill and its phase`);
      assert.ok(mine.every((r) => r.mbps > 0 && r.ops > 0), `${mode}: ${JSON.stringify(mine)}`);
      assert.ok(mine.every((r) => r.pageCacheBytes !== undefined && r.pageCacheBytes >= 0), `${mode}: the FUSE file's page cache is read`);
    }
    assert.ok(rows.some((r) => r.mode !== 'fill' && (r.ioReads ?? 0) > 0), 'the lease\'s requests are counted');
    assert.match(await readFile(`${out}/knobs.md`, 'utf8'), /\| page-cluster-0 \| vm\.page-cluster 0 \(default 3\) \|/);
    const meta = JSON.parse(await readFile(`${out}/meta.json`, 'utf8')) as { variants: Array<{ name: string }>; skipped: unknown[]; oomKilled: unknown[]; guestHaltPollNs: string };
    assert.deepEqual(meta.variants.map((v) => v.name), ['page-cluster-0']);
    assert.deepEqual(meta.skipped, [], 'vm.page-cluster is on every machine');
    assert.ok(Array.isArray(meta.oomKilled) && typeof meta.guestHaltPollNs === 'string');
  } finally {
    await rm(out, { recursive: true, force: true });
  }
  assert.equal((await readFile('/proc/sys/vm/page-cluster', 'utf8')).trim(), pageCluster, 'vm.page-cluster is back');
  assert.deepEqual((await attachedLoops(run)).filter((d) => !loopsBefore.includes(d)), [], 'no loop device left');
  assert.deepEqual((await readMounts()).filter((m) => m.target.startsWith('/run/rswap/bench-swap')), [], 'no mount left');
  assert.deepEqual((await readdir(await memoryCgroupRoot())).filter((n) => n.startsWith('rswap-bench-swap')), [], 'no cgroup left');
});
