/**
 * The VM application bench in smoke mode, so it cannot rot: a VM borrower (Debian's kernel, TCG
 * where there is no KVM) runs Redis in a memory cgroup over its own virtio disk, zram, and an
 * rswap lease with the kernel initiator (each finishes with every GET checked against the value
 * written); the outputs are written and the VM, its disk, the lease and the testbed are gone after.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { access, readFile, readdir, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { fromCsv } from '../../bench/app/report.js';
import { freePort } from '../helpers/nats.js';

const BENCH = resolve(fileURLToPath(import.meta.url), '../../../bench/vm-app.js');
const DIR = '/run/rswap/bench-vm-app-smoke';

test('bench - vm app smoke: Redis in a VM finished and verified on its own disk, zram and a kernel-initiator lease, nothing left behind', async () => {
  const out = `/tmp/rswap-vm-app-smoke-${process.pid}`;
  try {
    // Past its timeout the bench gets SIGTERM, then 3 min to take down what it set up before SIGKILL.
    const result = await execa(process.execPath, [BENCH, '--smoke', '--dir', DIR, '--out', out, '--nats-port', String(await freePort())], { reject: false, timeout: 2_400_000, forceKillAfterDelay: 180_000 });
    assert.equal(result.exitCode, 0, `${result.stdout}\n${result.stderr}`);
    const rows = fromCsv(await readFile(`${out}/app.csv`, 'utf8'));
    for (const device of ['vm-disk', 'vm-zram', 'vm-rswap']) {
      // (An OOM kill near the limit is retried and kept in the CSV: the last try counts.)
      const row = rows.filter((r) => r.device === device).at(-1);
      assert.equal(row?.outcome, 'ok', `${device}: ${JSON.stringify(row)}`);
      assert.ok(row!.getOps! > 0 && row!.getP999Us! >= row!.getP50Us!, JSON.stringify(row));
      assert.ok(row!.getFaultsPerOp! > 0, `${device}: the GETs faulted pages in (data 1.5x the limit): ${JSON.stringify(row)}`);
    }
    assert.match(result.stdout, /lease \S+: kernel initiator/, 'the lease used the kernel initiator');
    assert.match(await readFile(`${out}/app.md`, 'utf8'), /In a VM \(Debian /);
    const meta = JSON.parse(await readFile(`${out}/meta.json`, 'utf8')) as { vm: { accel: string } };
    assert.ok(['kvm', 'tcg'].includes(meta.vm.accel), JSON.stringify(meta.vm));
  } finally {
    await rm(out, { recursive: true, force: true });
  }
  await assert.rejects(access(DIR), 'the testbed folder is gone');
  assert.deepEqual((await readdir('/var/tmp')).filter((f) => f.startsWith('rswap-bench-vm-app-smoke-')), [], "the VM's disk file is gone");
  const { stdout } = await execa('pgrep', ['-f', `qemu-system-x86_64 -name rswap-vm-.*${DIR}/`], { reject: false });
  assert.equal(stdout.trim(), '', 'no VM left');
});
