/**
 * The production path on a real kernel: a VM borrower (Debian's 6.1 kernel under qemu, TCG where
 * there is no KVM) with the kernel iSCSI initiator (open-iscsi, iscsi_tcp) against a tgt lender in
 * a namespace. Login with CHAP and mutual CHAP, the session's own disk (no udev in the VM: found
 * through sysfs), the self-test, mkswap, swapon, a workload larger than the VM's free memory with
 * every byte verified, then release: swap-off, logout, no session left on the lender. Then the
 * faults: kill -9 of the VM's attacher under a swapping workload, and a lender cut off the network.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { subjects } from '../../shared/subjects.js';
import { testbedBus, testbedDown, testbedUp, type Testbed, tgtadmOn } from '../../cli/testbed/testbed.js';
import { vmExec } from '../../cli/testbed/vm.js';
import { listHosts, listLeases } from '../../cli/operator.js';
import { waitFor } from '../../shared/wait.js';
import type { LeaseRecord } from '../../shared/schemas.js';
import { TestBus } from '../helpers/bus.js';
import { ask as askOn, freePort } from '../helpers/nats.js';
import { writtenPages } from '../helpers/sealed.js';

const MiB = 1024 ** 2;
const DIR = '/run/rswap/test-vm';
const WORKLOAD = resolve(fileURLToPath(import.meta.url), '../../../bench/workload.js');
/** What the workload writes at the start of every page (bench/workload.ts --mark). */
const MARK = 'RSWAP-VM-SEALED-PAGE:';
const log = pino({ level: 'silent' });
const run = createRunner(log);
let tb: Testbed;
let nc: TestBus;

before(async () => {
  tb = await testbedUp(run, log, {
    dir: DIR,
    hosts: 2, // host-a and host-b: lenders, in namespaces
    vmHosts: 1, // host-c: the borrower, a VM
    vmMemoryMiB: 512, // about 300 MiB free once its agents run
    natsPort: await freePort(),
    monitors: false, // events come from the test
    memoryBytes: [1024 * MiB, 1024 * MiB],
    reserveBytes: [256 * MiB, 256 * MiB],
    // A lender gone for 30 s is lost (the default, 120 s, rides out a reboot: docs/reliability.md).
    // With 10 s a run beside stress-ng lost a live lease: the VM's own NOP-Out timed out under
    // TCG and the session's recovery took longer than that.
    attacherArgs: ['--replacement-timeout-s', '30'],
  });
  nc = await TestBus.open(tb);
});

after(async () => {
  await nc?.drain();
  const problems = await testbedDown(run, log, DIR);
  assert.deepEqual(problems, []);
});

// Longer than the broker's own budget for a VM's bring-up (export 30 s + attach 300 s on the testbed):
// a step that fails is answered with its reason.
const ask = (subject: string, body: unknown) => askOn(nc, subject, body, 400_000);

/** The lender's sessions for the lease's target, as tgtd lists them. */
async function sessionsOf(iqn: string, lender = 'host-a'): Promise<string[]> {
  const { stdout } = await tgtadmOn(run, tb, tb.hosts.find((h) => h.name === lender)!, ['--mode', 'target', '--op', 'show']);
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
  // The agents keep the OOM killer off themselves (root in a VM may lower a score; see oom.ts).
  const scores = await vmExec(vm.dir, "for role in attacher exporter; do echo \"$role $(cat /proc/$(pgrep -f \"rswap.js $role\" | head -1)/oom_score_adj)\"; done");
  assert.match(scores.output, /^attacher -1000$/m, scores.output);
  assert.match(scores.output, /^exporter -1000$/m, scores.output);
  // Sealed: swap goes on a dm-crypt mapping of the session's disk, keyed inside the VM only.
  // (Named as /proc/swaps names it: the node dmsetup made, or the dm-N it resolves to.)
  assert.match(lease.device!, new RegExp(`^/dev/(mapper/rswap-${lease.id}|dm-\\d+)$`));
  assert.equal(lease.sealed, true);
  const mapping = await vmExec(vm.dir, `dmsetup table rswap-${lease.id}; dmsetup deps -o devname rswap-${lease.id}`);
  assert.match(mapping.output, /^0 \d+ crypt aes-xts-plain64 0+ 0 \d+:\d+ 0$/m, `a dm-crypt mapping, its key not shown: ${mapping.output}`);
  assert.match(mapping.output, /\(sd[a-z]+\)/, 'over the session\'s disk');
  assert.match(session.output, new RegExp(`^${lease.device}\\s+partition\\s+\\d+\\s+\\d+\\s+\\d+`, 'm'), 'swap on the mapping');

  // A workload larger than what the VM has free (no local swap in the VM): it must swap to the lease.
  const workload = await vmExec(vm.dir, `free -m; node ${WORKLOAD} --bytes 384MiB --passes 2 --mark ${MARK}; echo rc=$?; grep -E '^(pswpin|pswpout) ' /proc/vmstat; cat /proc/swaps`, 1_800_000);
  assert.match(workload.output, /rc=0/, workload.output);
  const report = JSON.parse(workload.output.split('\n').find((l) => l.startsWith('{"bytes"'))!) as { corruptedChunks: number; chunks: number };
  assert.equal(report.corruptedChunks, 0, 'every byte read back intact');
  assert.equal(report.chunks, 384);
  const swappedOut = Number(/^pswpout (\d+)$/m.exec(workload.output)?.[1] ?? 0);
  assert.ok(swappedOut > 0, `the VM swapped out (${swappedOut} pages)`);
  console.log(`kernel initiator in a VM: 384 MiB verified twice in 512 MiB of RAM, ${swappedOut} pages swapped out to the lease`);
  // What the lender holds: ciphertext. The pages were written there (the image is not empty), and
  // not one of them starts with the workload's mark.
  const image = await readFile(join(DIR, 'host-a', 'exporter', 'leases', lease.id, 'image'));
  // Between the self-test's first and last MiB (and mkswap's first page), only swapped pages land.
  const written = writtenPages(image, MiB, image.length - MiB);
  assert.ok(written * 4096 >= 32 * MiB, `the VM's pages reached the lender (${written} pages)`);
  assert.equal(image.indexOf(Buffer.from(MARK)), -1, 'no page the VM swapped out is readable on the lender');

  // Release: swap-off and logout in the VM, then the lender removes the target.
  const released = (await ask(subjects.release, { leaseId: lease.id })) as { ok: boolean; lease?: { state: string } };
  assert.equal(released.lease?.state, 'released', JSON.stringify(released));
  assert.deepEqual(await sessionsOf(lease.target!.iqn), [], 'no session left on the lender');
  const after = await vmExec(vm.dir, 'iscsiadm -m session; echo rc=$?; cat /proc/swaps');
  assert.match(after.output, /No active sessions|rc=21/, after.output);
  assert.doesNotMatch(after.output, /^\/dev\/(sd|dm-|mapper\/)/m, 'no swap area left in the VM');
  const mappings = await vmExec(vm.dir, 'dmsetup ls');
  assert.doesNotMatch(mappings.output, /rswap-/, 'the mapping (and its key) is gone');
});

/** A lease for the VM from `lender` (the only one offering), active. */
async function leaseFrom(lender: string, bytes = 128 * MiB): Promise<LeaseRecord> {
  const vm = tb.vms![0]!;
  assert.equal((await ask(subjects.surplus(lender), { host: lender, lendableBytes: 512 * MiB, at: Date.now() })).ok, true);
  const reply = (await ask(subjects.pressure(vm.name), { host: vm.name, neededBytes: bytes, at: Date.now() })) as { ok: boolean; leaseId?: string; state?: string };
  assert.equal(reply.state, 'active', JSON.stringify(reply));
  const lease = (await listLeases(testbedBus(tb))).find((l) => l.id === reply.leaseId)!;
  assert.equal(lease.lender, lender);
  return lease;
}

test('vm - kill -9 of the attacher while a workload\'s pages are on the lease: the kernel session and the swap live on, the restarted attacher adopts them, every byte verified', async () => {
  const vm = tb.vms![0]!;
  const lease = await leaseFrom('host-a', 256 * MiB);
  try {
    // The workload fills 384 MiB (more than the VM has free: much of it goes to the lease) and waits.
    // (It waits, rather than reading on, because a VM under TCG thrashing on every page takes many
    // minutes to start node again: the agent's restart is what is tested here, not its speed.)
    // wl.exit appears once the workload's process is gone (and with it the memory it held).
    const started = await vmExec(vm.dir, `rm -f ${vm.dir}/stop ${vm.dir}/wl.out ${vm.dir}/wl.exit; (node ${WORKLOAD} --bytes 384MiB --pause-file ${vm.dir}/stop --progress > ${vm.dir}/wl.out 2>&1; echo $? > ${vm.dir}/wl.exit) & echo started`);
    assert.match(started.output, /started/);
    await waitFor('the workload filled, with pages on the lease', async () => {
      const { output } = await vmExec(vm.dir, 'cat /proc/swaps');
      const filled = (await readFile(join(vm.dir, 'wl.out'), 'utf8').catch(() => '')).includes('"phase":"paused"');
      return filled && new RegExp(`^/dev/(sd[a-z]+|dm-\\d+|mapper/rswap-l-[0-9a-f]+)\\s+partition\\s+\\d+\\s+[1-9]\\d{4,}`, 'm').test(output);
    }, { timeoutMs: 900_000, intervalMs: 2_000 });
    // kill -9; the VM starts it again 2 s later, as systemd's Restart=always does.
    const killed = await vmExec(vm.dir, "pid=$(pgrep -f 'rswap.js attacher') && kill -9 $pid && echo killed $pid");
    assert.match(killed.output, /^killed \d+$/m, killed.output);
    // The restarted attacher announces itself again (the killed one cannot); the lease never left
    // active; the session and the swap are still there.
    const killedAt = Date.now();
    await waitFor('the restarted attacher announcing itself', async () => ((await listHosts(testbedBus(tb))).find((h) => h.host === vm.name)?.attacher?.at ?? 0) > killedAt, { timeoutMs: 300_000, intervalMs: 1_000 });
    const after = (await listLeases(testbedBus(tb))).find((l) => l.id === lease.id)!;
    assert.equal(after.state, 'active', after.reason);
    assert.deepEqual(await sessionsOf(lease.target!.iqn), [vm.address], 'the session survived the attacher');
    // The workload reads everything back, from RAM and from the lease, with every byte intact.
    await vmExec(vm.dir, `touch ${vm.dir}/stop`);
    const report = await waitFor('the workload\'s report', async () => {
      const line = (await readFile(join(vm.dir, 'wl.out'), 'utf8').catch(() => '')).split('\n').find((l) => l.startsWith('{"bytes"'));
      return line ? (JSON.parse(line) as { corruptedChunks: number; passes: number; pswpinDelta: number }) : undefined;
    }, { timeoutMs: 900_000, intervalMs: 1_000 });
    assert.equal(report.corruptedChunks, 0, 'every byte read back intact across the kill');
    assert.ok(report.pswpinDelta > 0, 'pages came back from the lease\'s swap');
    console.log(`kill -9 of the VM's attacher: the session and swap lived on, ${report.passes} verified pass(es) of 384 MiB`);
    // The report comes before the process is gone; its memory (and its pages on the lease) go
    // with it. Until then a swap-off would not fit, and the attacher rightly refuses it.
    const exit = await waitFor('the workload\'s exit', async () => (await readFile(join(vm.dir, 'wl.exit'), 'utf8').catch(() => '')).trim() || undefined, { timeoutMs: 300_000, intervalMs: 1_000 });
    assert.equal(exit, '0', 'the workload exited cleanly');
    // The restarted attacher knows the lease: it swaps off and logs out on release.
    const released = (await ask(subjects.release, { leaseId: lease.id })) as { lease?: { state: string } };
    assert.equal(released.lease?.state, 'released', JSON.stringify(released));
    assert.deepEqual(await sessionsOf(lease.target!.iqn), []);
  } finally {
    // Whatever failed: the workload stops and the lease goes back, so the next test starts clean.
    await vmExec(vm.dir, `touch ${vm.dir}/stop`).catch(() => undefined);
    const now = (await listLeases(testbedBus(tb))).find((l) => l.id === lease.id);
    if (now?.state === 'active') await ask(subjects.release, { leaseId: lease.id }).catch(() => undefined);
  }
});

test('vm - a lender cut off the network: the kernel sees the connection die, the lease is reported lost within the replacement timeout, and the next one comes from the other lender', async () => {
  const vm = tb.vms![0]!;
  const lease = await leaseFrom('host-a');
  await run('ip', ['link', 'set', 'rsw-host-a', 'down']);
  try {
    const lost = await waitFor('the lease reported lost', async () => {
      const l = (await listLeases(testbedBus(tb))).find((x) => x.id === lease.id);
      return l?.state === 'failed' ? l : undefined;
    }, { timeoutMs: 180_000, intervalMs: 500 });
    assert.match(lost.reason!, /lender host-a lost: (no answer from the lender for \d+s|read from the lender failed)/);
    // The kernel saw the connection die (and, if the logout did not end it first, timed the
    // session's recovery out after the replacement timeout).
    const kernel = await waitFor('the kernel\'s own report of the dead connection', async () => {
      const { output } = await vmExec(vm.dir, 'dmesg | grep -E "detected conn error|session recovery timed out|I/O error"');
      return /detected conn error/.test(output) ? output : undefined;
    }, { timeoutMs: 120_000, intervalMs: 2_000 });
    console.log(`lender cut off: ${lost.reason}; the VM's kernel said:\n${kernel.trim().split('\n').slice(0, 6).join('\n')}`);
    await waitFor('its swap area gone from the VM', async () => !/^\/dev\/sd/m.test((await vmExec(vm.dir, 'cat /proc/swaps')).output), { timeoutMs: 120_000, intervalMs: 1_000 });
    // The same need again: host-b serves it.
    const next = await leaseFrom('host-b');
    assert.deepEqual(await sessionsOf(next.target!.iqn, 'host-b'), [vm.address]);
    const released = (await ask(subjects.release, { leaseId: next.id })) as { lease?: { state: string } };
    assert.equal(released.lease?.state, 'released', JSON.stringify(released));
  } finally {
    await run('ip', ['link', 'set', 'rsw-host-a', 'up']);
    for (const l of (await listLeases(testbedBus(tb))).filter((x) => x.borrower === vm.name && x.state === 'active')) await ask(subjects.release, { leaseId: l.id }).catch(() => undefined);
  }
  // Back on the network, host-a removes the target the lost lease left once no session is left.
  await waitFor('the lost lease\'s target gone from host-a', async () => (await sessionsOf(lease.target!.iqn)).length === 0 && !(await tgtadmOn(run, tb, tb.hosts[0]!, ['--mode', 'target', '--op', 'show'])).stdout.includes(lease.target!.iqn), { timeoutMs: 180_000, intervalMs: 1_000 });
});
