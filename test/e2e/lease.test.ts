/**
 * One lease end to end on the testbed: real nats-server, tgtd on ramfs in host-a's namespace,
 * qemu-storage-daemon + FUSE + loop + swapon for host-b, a workload in a memory cgroup that must
 * read back every byte, CHAP and address checks with libiscsi's iscsi-inq, forged commands, and a
 * release that leaves nothing behind.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { access, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { TestBus } from '../helpers/bus.js';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { createMemoryCgroup } from '../../shared/cgroup.js';
import { readMounts, readSwaps } from '../../shared/procfs.js';
import { subjects } from '../../shared/subjects.js';
import { localSwapPath, loopDevicesUnder, testbedDown, testbedUp, type Testbed, testbedBus, tgtadmOn } from '../../cli/testbed/testbed.js';
import { injectPressure, injectSurplus, listLeases, releaseLease } from '../../cli/operator.js';
import { ask as askOn, freePort } from '../helpers/nats.js';
import { waitFor } from '../../shared/wait.js';
import type { LeaseRecord } from '../../shared/schemas.js';
import { LUKS_MAGIC, writtenPages } from '../helpers/sealed.js';

const MiB = 1024 ** 2;
const DIR = '/run/rswap/test-e2e';
const WORKLOAD = resolve(fileURLToPath(import.meta.url), '../../../bench/workload.js');
const log = pino({ level: 'silent' });
const run = createRunner(log);
const LOCAL_SWAP = localSwapPath(DIR);
/** What the workload writes at the start of every page (bench/workload.ts --mark). */
const MARK = 'RSWAP-E2E-SEALED-PAGE:';

let tb: Testbed;
let nc: TestBus;
let parentExisted = true;

before(async () => {
  parentExisted = await access('/run/rswap').then(() => true, () => false);
  // A local swap file, so "above local swap" is measured against a real area.
  tb = await testbedUp(run, log, { dir: DIR, hosts: 3, natsPort: await freePort(), monitors: false, localSwapBytes: 32 * MiB, exporterArgs: ['--reserve-bytes', '256MiB'] });
  nc = await TestBus.open(tb);
});

after(async () => {
  await nc?.drain();
  const problems = await testbedDown(run, log, DIR);
  assert.deepEqual(problems, [], 'testbed down removed everything');
  assert.equal((await readSwaps()).find((a) => a.path === LOCAL_SWAP), undefined, 'the local swap file is off');
  await assert.rejects(access(LOCAL_SWAP), 'and removed');
  if (!parentExisted) await assert.rejects(access('/run/rswap'), 'the /run/rswap folder the test created is gone');
});

async function waitForLease(predicate: (l: LeaseRecord) => boolean, timeoutMs = 30_000): Promise<LeaseRecord> {
  return waitFor('a matching lease', async () => (await listLeases(testbedBus(tb))).find(predicate), { timeoutMs }).catch(async (error: Error) => {
    throw new Error(`${error.message}: ${JSON.stringify(await listLeases(testbedBus(tb)))}`);
  });
}

const ask = (subject: string, body: unknown) => askOn(nc, subject, body);

async function iscsiInq(netns: string, url: string): Promise<string> {
  const result = await execa('ip', ['netns', 'exec', netns, 'iscsi-inq', '-i', 'iqn.2026-11.io.test:probe', url], { reject: false, timeout: 20_000 });
  return `${result.stdout}\n${result.stderr}`;
}

test('lease - inject, active above local swap, data intact under swapping, sealed from the lender, CHAP and address enforced, forged commands refused, released clean', async () => {
  await injectSurplus(testbedBus(tb, 'host-a'), 'host-a', '512MiB', '0');
  await injectPressure(testbedBus(tb, 'host-b'), 'host-b', '256MiB');
  const lease = await waitForLease((l) => l.borrower === 'host-b' && l.state === 'active');
  assert.equal(lease.lender, 'host-a');
  assert.equal(lease.sizeBytes, 256 * MiB);
  assert.deepEqual(lease.history.map((h) => h.state), ['requested', 'exporting', 'exported', 'attaching', 'active']);

  const swaps = await readSwaps();
  const remote = swaps.find((a) => a.path === lease.device);
  assert.ok(remote, `${lease.device} is in /proc/swaps`);
  assert.ok(swaps.some((a) => a.path === LOCAL_SWAP && a.priority === 5), 'the local swap file is on');
  assert.ok(swaps.every((a) => a === remote || a.priority < remote.priority), 'remote swap is above every other area');
  assert.equal(remote.priority, 105, 'highest local priority + 100');
  // The exporter's tuned iSCSI parameters (docs/benchmarks.md) are set on the lease's target.
  const tgtadm = (args: string[]) => tgtadmOn(run, tb, tb.hosts[0]!, ['--mode', 'target', '--op', 'show', ...args]);
  const tid = new RegExp(`^Target (\\d+): ${lease.target!.iqn}$`, 'm').exec((await tgtadm([])).stdout)?.[1];
  assert.ok(tid, `the lease's target is listed on host-a`);
  const target = (await tgtadm(['--tid', tid])).stdout;
  for (const param of ['MaxRecvDataSegmentLength=262144', 'MaxXmitDataSegmentLength=262144', 'InitialR2T=No', 'ImmediateData=Yes', 'FirstBurstLength=262144', 'MaxBurstLength=1048576']) {
    assert.ok(target.split('\n').some((line) => line.trim() === param), `${param} on the target`);
  }

  // A workload twice its cgroup's limit: every byte must come back, and pages must be swapped in.
  // Every page it writes starts with MARK; once it is filled (and mostly swapped out), the lender's
  // ramfs image must hold a LUKS header and not one marked page: it stores ciphertext only.
  const cgroup = await createMemoryCgroup(`rswap-e2e-${process.pid}`, 96 * MiB);
  const pauseFile = join(DIR, 'lease-test.resume');
  let workload: ReturnType<typeof execa> | undefined;
  try {
    const command = cgroup.wrap([process.execPath, WORKLOAD, '--bytes', '192MiB', '--mark', MARK, '--pause-file', pauseFile]);
    workload = execa(command[0]!, command.slice(1), { reject: false, timeout: 300_000 });
    const running = workload;
    await new Promise<void>((resolve, reject) => {
      let seen = '';
      running.stderr!.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.includes('"phase":"paused"')) resolve();
      });
      running.then((r) => reject(new Error(`the workload ended before its pause: ${String(r.stderr)}`)), reject);
    });
    // Pages reached the lender: 32 MiB or more written between the header and the self-test's last
    // MiB (what mkswap and the self-test write lies outside that), read from the lender's ramfs.
    const imagePath = join(DIR, 'host-a', 'exporter', 'leases', lease.id, 'image');
    const image = await waitFor('32 MiB of swapped pages on the lender', async () => {
      const bytes = await readFile(imagePath);
      return writtenPages(bytes, 3 * MiB, bytes.length - MiB) * 4096 >= 32 * MiB ? bytes : undefined;
    }, { timeoutMs: 120_000, intervalMs: 1_000 });
    assert.ok(image.subarray(0, LUKS_MAGIC.length).equals(LUKS_MAGIC), 'the lease starts with a LUKS header');
    assert.equal(image.indexOf(Buffer.from(MARK)), -1, `no page swapped to the lease is readable by the lender (${writtenPages(image, 0, image.length)} pages written there)`);
    await writeFile(pauseFile, '');
    const result = await running;
    assert.equal(result.exitCode, 0, String(result.stderr));
    const report = JSON.parse(String(result.stdout)) as { corruptedChunks: number; chunks: number; pswpinDelta: number };
    assert.equal(report.chunks, 192);
    assert.equal(report.corruptedChunks, 0);
    assert.ok(report.pswpinDelta > 0, 'pages were swapped in');
    assert.ok((await readSwaps()).find((a) => a.path === lease.device), 'still swapping on the lease');
  } finally {
    if (workload && workload.exitCode === null) {
      workload.kill('SIGKILL');
      await workload.catch(() => undefined);
    }
    await rm(pauseFile, { force: true });
    await cgroup.remove();
  }

  // The target admits only the lease's CHAP secret from the borrower's address (client: libiscsi).
  const chap = JSON.parse(await readFile(join(DIR, 'host-a', 'exporter', 'leases', lease.id, 'chap.json'), 'utf8')) as { user: string; secret: string };
  const lun = `${lease.target!.portal}/${lease.target!.iqn}/1`;
  assert.match(await iscsiInq('rswap-host-b', `iscsi://${lun}`), /Authentication failure|Login Failed/);
  assert.match(await iscsiInq('rswap-host-b', `iscsi://${chap.user}%wrongwrongwrong@${lun}`), /Authentication failure/);
  assert.match(await iscsiInq('rswap-host-c', `iscsi://${chap.user}%${chap.secret}@${lun}`), /Target not found|Login Failed/);
  const allowed = await iscsiInq('rswap-host-b', `iscsi://${chap.user}%${chap.secret}@${lun}`);
  assert.doesNotMatch(allowed, /Failed|failure/);
  assert.match(allowed, /Peripheral|Vendor|Product/i);

  // Forged and malformed commands to the agents are refused and change nothing.
  assert.equal((await ask(subjects.unexportCmd('host-a'), { leaseId: lease.id, lender: 'host-a' })).error?.code, 'RSWAP_E_ILLEGAL_STATE');
  assert.equal((await ask(subjects.detachCmd('host-b'), { leaseId: lease.id, borrower: 'host-b' })).error?.code, 'RSWAP_E_ILLEGAL_STATE');
  assert.equal((await ask(subjects.unexportCmd('host-a'), { leaseId: 'l-ffffffffffff', lender: 'host-a' })).error?.code, 'RSWAP_E_UNKNOWN_LEASE');
  assert.equal((await ask(subjects.detachCmd('host-c'), { leaseId: lease.id, borrower: 'host-c' })).error?.code, 'RSWAP_E_WRONG_HOST');
  assert.equal((await ask(subjects.exportCmd('host-a'), 'not json')).error?.code, 'RSWAP_E_BAD_MESSAGE');
  assert.equal((await ask(subjects.exportCmd('host-a'), { leaseId: lease.id, lender: 'host-a', sizeBytes: -5, borrower: {} })).error?.code, 'RSWAP_E_BAD_MESSAGE');
  assert.equal((await ask(subjects.attachCmd('host-b'), { leaseId: lease.id, borrower: 'host-b', lender: 'host-a', sizeBytes: lease.sizeBytes, target: lease.target, chap })).error?.code, 'RSWAP_E_ILLEGAL_STATE');
  assert.ok((await readSwaps()).find((a) => a.path === lease.device), 'swap still on after forged commands');
  assert.match(await iscsiInq('rswap-host-b', `iscsi://${chap.user}%${chap.secret}@${lun}`), /Peripheral|Vendor|Product/i);

  // Release: swap-off on host-b, then the target, file and mount on host-a; nothing is left.
  const released = await releaseLease(testbedBus(tb), lease.id);
  assert.equal(released.state, 'released');
  assert.equal((await listLeases(testbedBus(tb))).find((l) => l.id === lease.id)?.state, 'released');
  assert.equal((await readSwaps()).find((a) => a.path === lease.device), undefined, 'no swap area');
  assert.deepEqual(await loopDevicesUnder(run, DIR), [], 'no loop device');
  const mounts = (await readMounts()).filter((m) => m.target.startsWith(DIR));
  assert.deepEqual(mounts, [], 'no ramfs or FUSE mount');
  const targets = await tgtadmOn(run, tb, tb.hosts[0]!, ['--mode', 'target', '--op', 'show']);
  assert.equal(targets.stdout.trim(), '', 'no target');
  // Releasing again is answered with the state and does nothing.
  assert.equal((await releaseLease(testbedBus(tb), lease.id)).state, 'released');
});

test('lease - a demand no lender can serve creates no lease and leaks nothing', async () => {
  const before = (await listLeases(testbedBus(tb))).length;
  let solicited = 0;
  const sub = nc.subscribe(subjects.brokerSolicit, { callback: () => void (solicited += 1) });
  // As requests: once the broker has answered each, it has decided (no waiting for a time).
  assert.equal((await ask(subjects.surplus('host-a'), { host: 'host-a', lendableBytes: 0, lentBytes: 0, at: Date.now() })).ok, true);
  const answer = await ask(subjects.pressure('host-c'), { host: 'host-c', neededBytes: 256 * MiB, at: Date.now() });
  assert.deepEqual(answer, { ok: true }, 'answered, with no lease');
  assert.equal((await listLeases(testbedBus(tb))).length, before, 'no lease without an offer');
  await waitFor('the broker asking for fresh offers', async () => solicited >= 1, { timeoutMs: 10_000 });
  sub.unsubscribe();
  // The pressure is over: the broker stops waiting for a lender for it.
  assert.equal((await ask(subjects.relief('host-c'), { host: 'host-c', at: Date.now() })).ok, true);
  assert.deepEqual(await loopDevicesUnder(run, DIR), []);
});

test('lease - rswap top in an 80x24 tmux: the lease appears, goes active with its hosts, and goes away on release; q gives the terminal back', async () => {
  const server = `rswap-top-${process.pid}`; // a tmux server of the test's own: another user's sessions are never touched
  const tmux = (...args: string[]) => execa('tmux', ['-L', server, ...args], { reject: false, timeout: 10_000 });
  const bus = testbedBus(tb);
  const cli = resolve(fileURLToPath(import.meta.url), '../../../cli/rswap.js');
  const screen = async () => (await tmux('capture-pane', '-p', '-t', 'top')).stdout;
  const until = async (what: string, check: (text: string) => boolean, timeoutMs = 30_000) => {
    let last = '';
    return waitFor(what, async () => (check((last = await screen())) ? last : undefined), { timeoutMs, intervalMs: 200 }).catch((error: Error) => {
      throw new Error(`${error.message}; the screen:\n${last}`);
    });
  };
  try {
    const started = await tmux('new-session', '-d', '-s', 'top', '-x', '80', '-y', '24', [process.execPath, cli, 'top', '--nats', bus.url, '--creds', bus.creds!, '--interval-ms', '500'].join(' '));
    assert.equal(started.exitCode, 0, started.stderr);
    await until('the view with every host', (t) => /^rswap top .* 3 hosts {2}0 live leases/m.test(t) && /^host-c/m.test(t));
    await injectSurplus(testbedBus(tb, 'host-a'), 'host-a', '512MiB', '0');
    await injectPressure(testbedBus(tb, 'host-b'), 'host-b', '128MiB');
    const active = await until('the lease active on screen', (t) => /^l-[0-9a-f]{12} +active +\S+ +128MiB +host-b<host-a/m.test(t));
    const id = /^(l-[0-9a-f]{12}) +active/m.exec(active)![1]!;
    assert.match(active, /^rswap top .* 1 live leases {2}128MiB lent$/m);
    assert.match(active, /^host-b +\S+ +\S+ +- +128MiB/m, 'host-b borrows it');
    assert.match(active, /^EVENTS$/m);
    assert.match(active, new RegExp(`${id} active {2}host-b<host-a 128MiB`), 'the state change is among the events');
    assert.ok(active.split('\n').every((line) => line.length <= 80));
    await releaseLease(bus, id);
    await until('the lease gone from the live ones', (t) => new RegExp(`^${id} +released`, 'm').test(t) && /0 live leases/.test(t));
    await tmux('send-keys', '-t', 'top', 'q');
    await waitFor('top to quit on q', async () => (await tmux('has-session', '-t', 'top')).exitCode !== 0, { timeoutMs: 10_000, intervalMs: 100 });
  } finally {
    await tmux('kill-server');
  }
});
