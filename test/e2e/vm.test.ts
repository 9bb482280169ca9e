/**
 * The production path on a real kernel: a VM borrower (Debian's 6.1 kernel under qemu, TCG where
 * there is no KVM) with the kernel iSCSI initiator (open-iscsi, iscsi_tcp) against a tgt lender in
 * a namespace. Login with CHAP and mutual CHAP, the session's own disk (no udev in the VM: found
 * through sysfs), the self-test, mkswap, swapon, a workload larger than the VM's free memory with
 * every byte verified, then release: swap-off, logout, no session left on the lender.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { subjects } from '../../shared/subjects.js';
import { testbedBus, testbedDown, testbedUp, type Testbed } from '../../cli/testbed/testbed.js';
import { vmExec } from '../../cli/testbed/vm.js';
import { listLeases } from '../../cli/operator.js';
import { TestBus } from '../helpers/bus.js';
import { ask as askOn, freePort } from '../helpers/nats.js';

const MiB = 1024 ** 2;
const DIR = '/run/rswap/test-vm';
const WORKLOAD = resolve(fileURLToPath(import.meta.url), '../../../bench/workload.js');
const log = pino({ level: 'silent' });
const run = createRunner(log);
let tb: Testbed;
let nc: TestBus;

before(async () => {
  tb = await testbedUp(run, log, {
    dir: DIR,
    hosts: 1, // host-a: the lender, in a namespace
    vmHosts: 1, // host-b: the borrower, a VM
    vmMemoryMiB: 512, // about 300 MiB free once its agents run
    natsPort: await freePort(),
    monitors: false, // events come from the test
    memoryBytes: [1024 * MiB],
    reserveBytes: [256 * MiB],
  });
  nc = await TestBus.open(tb);
});

after(async () => {
  await nc?.drain();
  const problems = await testbedDown(run, log, DIR);
  assert.deepEqual(problems, []);
});

const ask = (subject: string, body: unknown) => askOn(nc, subject, body, 240_000);

/** The lender's sessions for the lease's target, as tgtd lists them. */
async function sessionsOf(iqn: string): Promise<string[]> {
  const { stdout } = await run('tgtadm', ['-C', String(tb.hosts[0]!.tgtControlPort), '--lld', 'iscsi', '--mode', 'target', '--op', 'show']);
  const block = stdout.split(/^Target \d+: /m).find((b) => b.startsWith(iqn + '\n'));
  return [...(block ?? '').matchAll(/IP Address: (\S+)/g)].map((m) => m[1]!);
}

test('vm - the kernel initiator end to end: CHAP login from a VM, its own disk, swap under a verifying workload, release with logout', async () => {
  const vm = tb.vms![0]!;
  console.log(`VM host ${vm.name} ready ${((vm.readyMs ?? 0) / 1000).toFixed(1)} s after it started`);
  assert.equal((await ask(subjects.surplus('host-a'), { host: 'host-a', lendableBytes: 512 * MiB, at: Date.now() })).ok, true);
  const reply = (await ask(subjects.pressure(vm.name), { host: vm.name, neededBytes: 256 * MiB, at: Date.now() })) as { ok: boolean; leaseId?: string; state?: string };
  assert.equal(reply.state, 'active', JSON.stringify(reply));
  const lease = (await listLeases(testbedBus(tb))).find((l) => l.id === reply.leaseId)!;
  assert.equal(lease.initiator, 'kernel');
  assert.deepEqual(await sessionsOf(lease.target!.iqn), [vm.address], 'the VM is logged in to its target, and only it');

  // Inside the VM: a real iscsi_tcp session, its disk, and swap on it above everything else.
  const session = await vmExec(vm.dir, 'iscsiadm -m session; cat /proc/swaps; lsmod | grep -c iscsi_tcp');
  assert.equal(session.code, 0, session.output);
  assert.match(session.output, new RegExp(`^tcp: \\[\\d+\\] ${lease.target!.portal.replace(/\./g, '\\.')},1 ${lease.target!.iqn.replace(/\./g, '\\.')} \\(non-flash\\)$`, 'm'));
  const device = lease.device!;
  assert.match(device, /^\/dev\/(sd[a-z]+|disk\/by-path\/.+)$/);
  assert.match(session.output, new RegExp(`^${device.startsWith('/dev/sd') ? device : '/dev/sd[a-z]+'}\\s+partition\\s+\\d+\\s+\\d+\\s+\\d+`, 'm'), 'swap on the session\'s disk');

  // A workload larger than what the VM has free (no local swap in the VM): it must swap to the lease.
  const workload = await vmExec(vm.dir, `free -m; node ${WORKLOAD} --bytes 384MiB --passes 2; echo rc=$?; grep -E '^(pswpin|pswpout) ' /proc/vmstat; cat /proc/swaps`);
  assert.match(workload.output, /rc=0/, workload.output);
  const report = JSON.parse(workload.output.split('\n').find((l) => l.startsWith('{"bytes"'))!) as { corruptedChunks: number; chunks: number };
  assert.equal(report.corruptedChunks, 0, 'every byte read back intact');
  assert.equal(report.chunks, 384);
  const swappedOut = Number(/^pswpout (\d+)$/m.exec(workload.output)?.[1] ?? 0);
  assert.ok(swappedOut > 0, `the VM swapped out (${swappedOut} pages)`);
  console.log(`kernel initiator in a VM: 384 MiB verified twice in 512 MiB of RAM, ${swappedOut} pages swapped out to the lease`);

  // Release: swap-off and logout in the VM, then the lender removes the target.
  const released = (await ask(subjects.release, { leaseId: lease.id })) as { ok: boolean; lease?: { state: string } };
  assert.equal(released.lease?.state, 'released', JSON.stringify(released));
  assert.deepEqual(await sessionsOf(lease.target!.iqn), [], 'no session left on the lender');
  const after = await vmExec(vm.dir, 'iscsiadm -m session; echo rc=$?; cat /proc/swaps');
  assert.match(after.output, /No active sessions|rc=21/, after.output);
  assert.doesNotMatch(after.output, /^\/dev\/sd/m, 'no swap area left in the VM');
});
