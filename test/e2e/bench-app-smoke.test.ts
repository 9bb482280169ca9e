/**
 * The application bench in smoke mode, so it cannot rot: Redis, the page reads and the sort without swap (the OOM
 * killer ends both, and that is recorded), with zswap and with zram (both finish, every GET checked
 * against the value written); the outputs are written and the machine is left as it was found.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { access, readFile, readdir, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { readSwaps } from '../../shared/procfs.js';
import { memoryCgroupRoot } from '../../shared/cgroup.js';
import { fromCsv } from '../../bench/app/report.js';
import { RUN, WORK } from '../../bench/swap/devices.js';

const APP_BENCH = resolve(fileURLToPath(import.meta.url), '../../../bench/app/run.js');
const ZSWAP = '/sys/module/zswap/parameters/enabled';
const zramDevices = async () => (await readdir('/sys/block')).filter((d) => d.startsWith('zram')).sort();

test('bench - app smoke: Redis, page reads and a sort OOM-killed without swap, finished and verified on zswap and zram, nothing left behind', async () => {
  const out = `/tmp/rswap-app-smoke-${process.pid}`;
  const swapsBefore = (await readSwaps()).map((a) => a.path);
  const zramBefore = await zramDevices();
  const zswapBefore = (await readFile(ZSWAP, 'utf8')).trim();
  try {
    // Past its timeout the bench gets SIGTERM, then 3 min to take down what it set up before SIGKILL.
    const result = await execa(process.execPath, [APP_BENCH, '--smoke', '--devices', 'none,zswap,zram', '--out', out], { reject: false, timeout: 900_000, forceKillAfterDelay: 180_000 });
    assert.equal(result.exitCode, 0, `${result.stdout}\n${result.stderr}`);
    const rows = fromCsv(await readFile(`${out}/app.csv`, 'utf8'));
    for (const app of ['redis', 'touch', 'sort'] as const) {
      assert.deepEqual(rows.filter((r) => r.app === app && r.device === 'none').map((r) => r.outcome), ['oom'], `${app} without swap: 1.5x its limit cannot fit, and is not retried`);
      for (const device of ['zswap', 'zram']) {
        // (An OOM kill near the limit is retried by the bench and kept in the CSV: the last try counts.)
        const tries = rows.filter((r) => r.app === app && r.device === device);
        const row = tries.at(-1);
        if (app === 'sort' && row?.outcome === 'oom') {
          // The sort is the job cgroup v1 OOM-kills with swap free, on zswap most (all 15 tries at
          // 3x in docs/benchmarks.md) and on zram too (7 kills there; all three tries of this test
          // in one CI run): what the bench must do then is try three times and record every
          // kill, not hide it. Redis and the page reads must finish.
          assert.deepEqual(tries.map((r) => r.outcome), ['oom', 'oom', 'oom'], `sort on ${device}: ${JSON.stringify(tries)}`);
          continue;
        }
        assert.equal(row?.outcome, 'ok', `${app} on ${device}: ${JSON.stringify(row)}`);
        if (app === 'sort') assert.ok(row!.sortS! > 0);
        else if (app === 'touch') {
          assert.ok(row!.touchP999Us! >= row!.touchP50Us!, JSON.stringify(row));
          assert.ok(row!.touchFaultsPerOp! > 0, `${device}: the page reads faulted (data 1.5x the limit): ${JSON.stringify(row)}`);
        } else {
          assert.ok(row!.getOps! > 0 && row!.getP999Us! >= row!.getP99Us! && row!.getP99Us! >= row!.getP50Us!, JSON.stringify(row));
          assert.ok(row!.getFaultsPerOp! > 0, `${device}: the GETs faulted pages in (data 1.5x the limit): ${JSON.stringify(row)}`);
        }
      }
    }
    assert.match(await readFile(`${out}/app.md`, 'utf8'), /0 of 1; 1 OOM kill/);
    assert.match(await readFile(`${out}/redis-get.svg`, 'utf8'), /^<svg /);
  } finally {
    await rm(out, { recursive: true, force: true });
  }
  assert.equal((await readFile(ZSWAP, 'utf8')).trim(), zswapBefore, 'zswap put back as it was');
  assert.deepEqual((await readSwaps()).map((a) => a.path).filter((p) => !swapsBefore.includes(p)), [], 'no swap area left');
  assert.deepEqual(await zramDevices(), zramBefore, 'the zram device it added is removed, the others untouched');
  await assert.rejects(access(RUN), 'its run folder is gone');
  await assert.rejects(access(WORK), 'its disk folder is gone');
  assert.deepEqual((await readdir(await memoryCgroupRoot())).filter((n) => n.startsWith('rswap-bench-app')), [], 'no cgroup left');
  const { stdout } = await execa('pgrep', ['-f', `redis-server.*${RUN}`], { reject: false });
  assert.equal(stdout.trim(), '', 'no redis-server of its own left');
});
