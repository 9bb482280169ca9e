/**
 * rswap's first promise, shown with every real part (tgtd on ramfs, the userspace initiator, swapon,
 * a verifying workload in a memory cgroup): a target with a logged-in session is never removed by
 * a message or a missing record, and a lender is never promised more than its RAM. Each test fails
 * on the main before this change: its exporter accepted an unexport in `draining` without looking
 * for a session, checked capacity against available memory (which sparse images do not reduce),
 * and its reconcile removed every target whose lease record was missing.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TestBus } from '../helpers/bus.js';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { readSwaps } from '../../shared/procfs.js';
import { openStores } from '../../shared/nats.js';
import { casUpdate } from '../../shared/kv.js';
import { subjects } from '../../shared/subjects.js';
import { waitFor } from '../../shared/wait.js';
import { LeaseRecord } from '../../shared/schemas.js';
import { killTestbedProcess, startTestbedProcess, testbedDown, testbedUp, type Testbed, testbedBus, tgtadmOn } from '../../cli/testbed/testbed.js';
import { listHosts, listLeases } from '../../cli/operator.js';
import { startWorkload, type Progress } from '../../bench/run-workload.js';
import { execa } from 'execa';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';
import { ask as askOn, freePort } from '../helpers/nats.js';

const MiB = 1024 ** 2;
const DIR = '/run/rswap/test-invariants';
const CLI = resolve(fileURLToPath(import.meta.url), '../../../cli/rswap.js');
const log = pino({ level: 'silent' });
const run = createRunner(log);
let tb: Testbed;
let nc: TestBus;

before(async () => {
  tb = await testbedUp(run, log, {
    dir: DIR,
    hosts: 3,
    natsPort: await freePort(),
    monitors: false, // events come from the test; no relief gives the lease back under it
    memoryBytes: [1024 * MiB, 128 * MiB, 128 * MiB],
    localSwapBytes: 64 * MiB,
    // Reconcile every second; a failed lease's target outlives its last session by 3 s (150 s by default).
    exporterArgs: ['--reserve-bytes', '256MiB', '--reconcile-interval-ms', '1000', '--session-grace-ms', '3000'],
    // The borrower's own reconciler would swap off a lease whose record is gone (safely, when the
    // pages fit); held off here to show what the lender does.
    attacherArgs: ['--reconcile-interval-ms', '600000', '--announce-interval-ms', '1000'],
    // A borrower silent for 5 s is gone (120 s in production), checked every second; agents
    // announce every second here (10 s in production).
    // Offers stale after 5 s (30 s in production), so a far-future one can be seen going stale.
    brokerArgs: ['--borrower-timeout-ms', '5000', '--sweep-interval-ms', '1000', '--offer-ttl-ms', '5000'],
    // host-b's clock runs 10 minutes behind (libfaketime): every borrower here is a skewed one.
    processEnv: { 'host-b/attacher': { LD_PRELOAD: await libfaketime(), FAKETIME: '-10m', DONT_FAKE_MONOTONIC: '1' } },
    // host-c's attacher refuses every swap-off (it would keep 64 TiB free), until a test restarts it.
    processArgs: { 'host-c/attacher': ['--swapoff-margin-bytes', '64TiB'] },
  });
  nc = await TestBus.open(tb);
});

after(async () => {
  await nc?.drain();
  const problems = await testbedDown(run, log, DIR);
  assert.deepEqual(problems, []);
});

const ask = (subject: string, body: unknown) => askOn(nc, subject, body);

/** Debian's libfaketime (package faketime), under this machine's multiarch folder. */
async function libfaketime(): Promise<string> {
  const { stdout } = await execa('dpkg', ['-L', 'libfaketime']);
  const lib = stdout.split('\n').find((f) => f.endsWith('/faketime/libfaketime.so.1'));
  assert.ok(lib, 'libfaketime is installed (scripts/install-deps.sh)');
  return lib;
}

/** The lease's target on host-a as tgtd lists it, with the addresses logged in to it. */
async function targetOf(lease: LeaseRecord): Promise<{ present: boolean; sessions: string[] }> {
  const { stdout } = await tgtadmOn(run, tb, tb.hosts[0]!, ['--mode', 'target', '--op', 'show']);
  const block = stdout.split(/^Target \d+: /m).find((b) => b.startsWith(lease.target!.iqn + '\n'));
  return { present: block !== undefined, sessions: [...(block ?? '').matchAll(/IP Address: (\S+)/g)].map((m) => m[1]!) };
}

/** A lease for host-b, active, with a workload swapping on it and reading its data back until stopped. */
async function leaseUnderLoad(stopFile: string) {
  assert.equal((await ask(subjects.surplus('host-a'), { host: 'host-a', lendableBytes: 512 * MiB, at: Date.now() })).ok, true);
  const reply = (await ask(subjects.pressure('host-b'), { host: 'host-b', neededBytes: 256 * MiB, at: Date.now() })) as { ok: boolean; leaseId?: string; state?: string };
  assert.equal(reply.state, 'active', JSON.stringify(reply));
  const lease = (await listLeases(testbedBus(tb))).find((l) => l.id === reply.leaseId)!;
  await rm(stopFile, { force: true });
  const progress: Progress[] = [];
  const workload = startWorkload(tb.hosts[1]!.cgroup, ['--bytes', '256MiB', '--until-file', stopFile], (p) => progress.push(p));
  workload.result.catch(() => undefined); // awaited by the caller
  /** Full read-back passes the workload has finished so far. */
  const passesDone = () => progress.filter((p) => p.phase.startsWith('verify') && p.done === p.total).length;
  await waitFor('the workload reading back through remote swap', async () => progress.some((p) => p.phase.startsWith('verify')), { timeoutMs: 120_000, intervalMs: 100 });
  const swap = (await readSwaps()).find((a) => a.path === lease.device);
  assert.ok(swap && swap.usedBytes > 0, `host-b swaps on the lease: ${JSON.stringify(swap)}`);
  return { lease, workload, passesDone };
}

test('invariants - a borrower whose clock runs 10 minutes behind keeps its lease and its data', async () => {
  // Fails on main before commit 145066f: the broker judged liveness by the announce's own `at`
  // and, 5 s of "silence" later, expired the lease and forced its target away.
  const seen: number[] = [];
  const sub = nc.subscribe(subjects.announce('host-b'), { callback: (_e, m) => {
    const a = m.json<{ role: string; at: number }>();
    if (a.role === 'attacher') seen.push(a.at);
  } });
  const announced = await waitFor('an announce from host-b\'s attacher', async () => seen[0], { timeoutMs: 30_000 }).finally(() => sub.unsubscribe());
  assert.ok(Date.now() - announced > 590_000, `host-b's announces carry a clock 10 minutes behind (${Date.now() - announced} ms)`);
  const stop = join(DIR, 'skewed.stop');
  const { lease, workload, passesDone } = await leaseUnderLoad(stop);
  try {
    // Past the 5 s borrower timeout several times over, with a sweep every second.
    const passes = passesDone();
    await waitFor('two more full read-back passes', async () => passesDone() >= passes + 2, { timeoutMs: 300_000, intervalMs: 200 });
    const now = (await listLeases(testbedBus(tb))).find((l) => l.id === lease.id)!;
    assert.equal(now.state, 'active', `still active: ${now.reason ?? ''}`);
    assert.equal((await targetOf(lease)).present, true);
  } finally {
    await writeFile(stop, '');
  }
  assert.equal((await workload.result).corruptedChunks, 0, 'every byte read back intact');
  const released = (await ask(subjects.release, { leaseId: lease.id })) as { lease?: { state: string } };
  assert.equal(released.lease?.state, 'released');
});

test('invariants - an unexport while the borrower is logged in is refused in draining too, and the data stays intact', async () => {
  const stop = join(DIR, 'draining.stop');
  const { lease, workload } = await leaseUnderLoad(stop);
  try {
    assert.deepEqual((await targetOf(lease)).sessions, ['198.18.0.12'], 'host-b is logged in');
    // As a release racing a second unexport would: the record says draining, the borrower still swaps.
    const stores = await openStores(nc.as('broker'));
    // Driven by another broker that is not overdue, so this broker's reconciler stands back (it
    // would carry the release out properly: swap-off first).
    await casUpdate(stores.leases, lease.id, LeaseRecord, (l) => ({ ...l!, state: 'draining' as const, driver: 'another-broker', updatedAt: Date.now() }));
    const reply = await ask(subjects.unexportCmd('host-a'), { leaseId: lease.id, lender: 'host-a' });
    assert.equal(reply.ok, false);
    assert.equal(reply.error?.code, 'RSWAP_E_IN_USE', JSON.stringify(reply));
    const forced = await ask(subjects.unexportCmd('host-a'), { leaseId: lease.id, lender: 'host-a', force: true });
    assert.equal(forced.error?.code, 'RSWAP_E_BAD_MESSAGE', 'force is refused over the bus');
    assert.equal((await targetOf(lease)).present, true, 'the target is still there');
    await casUpdate(stores.leases, lease.id, LeaseRecord, (l) => ({ ...l!, state: 'active' as const }));
  } finally {
    await writeFile(stop, '');
  }
  const report = await workload.result;
  assert.equal(report.corruptedChunks, 0, 'every byte read back intact');
  const released = (await ask(subjects.release, { leaseId: lease.id })) as { ok: boolean; lease?: { state: string } };
  assert.equal(released.lease?.state, 'released', JSON.stringify(released));
  assert.equal((await targetOf(lease)).present, false, 'a normal release still removes the target');
});

test('invariants - promised bytes count: an export that would take the lender under its reserve once written is refused', async () => {
  // A monitor that lies (or a stale offer): host-a "can lend" 4 GiB, but its cgroup has 1 GiB and
  // keeps 256 MiB. The exporter counts what its sparse images will take once written.
  assert.equal((await ask(subjects.surplus('host-a'), { host: 'host-a', lendableBytes: 4096 * MiB, at: Date.now() })).ok, true);
  const first = (await ask(subjects.pressure('host-b'), { host: 'host-b', neededBytes: 512 * MiB, at: Date.now() })) as { leaseId?: string; state?: string };
  assert.equal(first.state, 'active', 'the first 512 MiB fit');
  const second = (await ask(subjects.pressure('host-c'), { host: 'host-c', neededBytes: 512 * MiB, at: Date.now() })) as { leaseId?: string; state?: string };
  assert.equal(second.state, 'failed', 'the second would overcommit host-a');
  const failed = (await listLeases(testbedBus(tb))).find((l) => l.id === second.leaseId)!;
  assert.match(failed.reason!, /export failed: .*once every lease is written.*under the reserve/);
  const released = (await ask(subjects.release, { leaseId: first.leaseId })) as { lease?: { state: string } };
  assert.equal(released.lease?.state, 'released');
});

test('invariants - a deleted lease record leaves the target serving and reported as an orphan; the workload loses nothing', async () => {
  const stop = join(DIR, 'orphan.stop');
  const { lease, workload, passesDone } = await leaseUnderLoad(stop);
  const exporterLog = join(DIR, 'host-a', 'exporter.log');
  const orphanLines = async () => (await readFile(exporterLog, 'utf8')).split('\n').filter((l) => l.includes('orphan target') && l.includes(lease.id)).length;
  try {
    await (await openStores(nc.as('broker'))).leases.delete(lease.id);
    // The exporter reconciles every second here: wait until it has looked at the target twice.
    await waitFor('the exporter reporting the orphan twice', async () => (await orphanLines()) >= 2, { timeoutMs: 60_000, intervalMs: 200 });
    const target = await targetOf(lease);
    assert.equal(target.present, true, 'the target is kept');
    assert.deepEqual(target.sessions, ['198.18.0.12']);
    // The operator sees it: host-a reports it, and `rswap leases` lists it.
    await waitFor('host-a reporting the orphan to the broker', async () => (await listHosts(testbedBus(tb))).find((h) => h.host === 'host-a')?.exporter?.orphans?.includes(lease.id), { timeoutMs: 30_000 });
    const { stdout } = await execa(process.execPath, [CLI, 'leases', '--nats', tb.natsUrl, '--creds', tb.creds!.operator!]);
    assert.match(stdout, new RegExp(`${lease.id}\\s+orphan\\s+\\?\\s+host-a`), stdout);
    // Every page read back once more after the record went: a pass begun after this point.
    const passes = passesDone();
    await waitFor('another full read-back pass', async () => passesDone() >= passes + 2, { timeoutMs: 300_000, intervalMs: 200 });
  } finally {
    await writeFile(stop, '');
  }
  const report = await workload.result;
  assert.equal(report.corruptedChunks, 0, 'every byte read back intact');
});

test('invariants - a forged lost fails the lease but frees no capacity while the borrower still swaps on the target', async () => {
  // Fails on main before commit 145066f: a lost event gave the lease's bytes back at once.
  assert.equal((await ask(subjects.surplus('host-a'), { host: 'host-a', lendableBytes: 512 * MiB, at: Date.now() })).ok, true);
  const reply = (await ask(subjects.pressure('host-c'), { host: 'host-c', neededBytes: 64 * MiB, at: Date.now() })) as { leaseId?: string; state?: string };
  assert.equal(reply.state, 'active', JSON.stringify(reply));
  const lease = (await listLeases(testbedBus(tb))).find((l) => l.id === reply.leaseId)!;
  // host-c says it lost host-a; it did not (and its attacher refuses every swap-off here).
  const lost = (await ask(subjects.lost('host-c'), { host: 'host-c', leaseId: lease.id, reason: 'forged', at: Date.now() })) as { ok: boolean; state?: string };
  assert.equal(lost.state, 'failed', JSON.stringify(lost));
  const failed = (await listLeases(testbedBus(tb))).find((l) => l.id === lease.id)!;
  assert.match(failed.reason!, /lender host-a lost: forged/);
  assert.deepEqual((await targetOf(lease)).sessions, ['198.18.0.13'], 'host-c is still logged in');
  assert.ok((await readSwaps()).some((a) => a.path === lease.device), 'and still swaps on it');
  // host-a re-announces (every 10 s), still listing the lease it serves: the bytes stay promised.
  await waitFor('host-a announcing again', async () => (await listHosts(testbedBus(tb))).find((h) => h.host === 'host-a')?.exporter?.lostAt === undefined, { timeoutMs: 30_000, intervalMs: 250 });
  const hostA = (await listHosts(testbedBus(tb))).find((h) => h.host === 'host-a')!;
  assert.ok(hostA.exporter?.serving?.includes(lease.id));
  assert.equal(hostA.reservations[lease.id], lease.sizeBytes, 'the bytes stay promised while host-a serves the target');
});

test("invariants - a far-future offer is recorded at its arrival and goes stale by the broker's clock", async () => {
  // Fails on main before commit 145066f: an offer an hour ahead stayed fresh for an hour.
  const sentAt = Date.now();
  assert.equal((await ask(subjects.surplus('host-a'), { host: 'host-a', lendableBytes: 512 * MiB, at: sentAt + 3_600_000 })).ok, true);
  const offer = (await listHosts(testbedBus(tb))).find((h) => h.host === 'host-a')!.offer!;
  assert.ok(offer.at >= sentAt && offer.at <= Date.now(), `recorded at its arrival: ${offer.at - sentAt} ms after sending`);
  // Past the 5 s offer TTL by the broker's clock, with no other offer, no lender is found.
  await waitFor('the offer past its TTL', async () => Date.now() > offer.at + 5_500, { timeoutMs: 30_000, intervalMs: 100 });
  const reply = (await ask(subjects.pressure('host-b'), { host: 'host-b', neededBytes: 64 * MiB, at: Date.now() })) as { ok: boolean; leaseId?: string };
  assert.equal(reply.ok, true);
  assert.equal(reply.leaseId, undefined, `no lease from a stale offer: ${JSON.stringify(reply)}`);
  // host-b's pressure waits for a lender (10 s) and must not be served by the next test's offer:
  // its relief drops it.
  assert.equal((await ask(subjects.relief('host-b'), { host: 'host-b', at: Date.now() })).ok, true);
});

test('invariants - a swap-off the borrower refuses, asked again 240 times, leaves the lease active and its record under 64 KiB', async () => {
  // Fails on main before commit 145066f: every refused drain appended two steps with the refusal's
  // long reason, unbounded, until the record passed the payload limit and CAS writes failed. 240
  // refusals are more than ten minutes of the old retry on every 5 s heartbeat would make.
  assert.equal((await ask(subjects.surplus('host-a'), { host: 'host-a', lendableBytes: 512 * MiB, at: Date.now() })).ok, true);
  const reply = (await ask(subjects.pressure('host-c'), { host: 'host-c', neededBytes: 64 * MiB, at: Date.now() })) as { leaseId?: string; state?: string };
  assert.equal(reply.state, 'active', JSON.stringify(reply));
  const leaseId = reply.leaseId!;
  for (let i = 0; i < 240; i += 1) {
    const refused = await ask(subjects.release, { leaseId });
    assert.equal(refused.error?.code, 'RSWAP_E_SWAPOFF_UNSAFE', `refusal ${i}: ${JSON.stringify(refused)}`);
  }
  const lease = (await listLeases(testbedBus(tb))).find((l) => l.id === leaseId)!;
  assert.equal(lease.state, 'active');
  assert.match(lease.reason!, /swap-off would not fit/);
  assert.ok(lease.history.length <= 32 && (lease.historyDropped ?? 0) >= 2 * 240 - 32, `bounded history: ${lease.history.length} steps, ${lease.historyDropped} dropped`);
  const bytes = Buffer.byteLength(JSON.stringify(lease));
  assert.ok(bytes < 64 * 1024, `the record is ${bytes} bytes`);
  assert.deepEqual((await targetOf(lease)).sessions, ['198.18.0.13'], 'host-c still swaps on its target');
  assert.ok((await readSwaps()).some((a) => a.path === lease.device), 'its swap area is still on');
  // host-c's attacher again with the usual margin: now the same release goes through.
  const name = 'host-c/attacher';
  await killTestbedProcess(tb, name);
  const p = tb.processes.find((x) => x.name === name)!;
  p.command = p.command.slice(0, p.command.indexOf('--swapoff-margin-bytes'));
  let announced = false;
  const sub = nc.subscribe(subjects.announce('host-c'), { callback: (_e, m) => {
    if (m.json<{ role: string }>().role === 'attacher') announced = true;
  } });
  startTestbedProcess(tb, name);
  await waitFor('host-c\'s attacher announcing again', async () => announced, { timeoutMs: 120_000 }).finally(() => sub.unsubscribe());
  const released = (await ask(subjects.release, { leaseId })) as { lease?: { state: string } };
  assert.equal(released.lease?.state, 'released', JSON.stringify(released));
});

test('invariants - a borrower that dies hard (no logout, its network gone) keeps its lease while its session lasts, then gives its lender the memory back, decided by the lender', async () => {
  assert.equal((await ask(subjects.surplus('host-a'), { host: 'host-a', lendableBytes: 512 * MiB, at: Date.now() })).ok, true);
  const reply = (await ask(subjects.pressure('host-c'), { host: 'host-c', neededBytes: 64 * MiB, at: Date.now() })) as { leaseId?: string; state?: string };
  assert.equal(reply.state, 'active', JSON.stringify(reply));
  const lease = (await listLeases(testbedBus(tb))).find((l) => l.id === reply.leaseId)!;
  assert.deepEqual((await targetOf(lease)).sessions, ['198.18.0.13'], 'host-c is logged in');
  // The broker knows it from host-a's announce (every 10 s here, against a 5 s borrower timeout):
  // waited for, or a lease younger than one announce would fail before host-a could vouch for it.
  await waitFor('host-a reporting the session', async () => (await listHosts(testbedBus(tb))).find((h) => h.host === 'host-a')?.exporter?.sessions?.includes(lease.id), { timeoutMs: 60_000, intervalMs: 250 });
  // host-c dies: its link goes first (no FIN, no logout ever reaches host-a), then every process in it.
  const cutAt = Date.now();
  await run('ip', ['link', 'set', 'rsw-host-c', 'down']);
  const { stdout } = await run('ip', ['netns', 'pids', 'rswap-host-c']);
  for (const pid of stdout.split('\n').filter(Boolean)) process.kill(Number(pid), 'SIGKILL');
  // Silent for 5 s, but host-a still lists its session (tgtd's pings drop it after about 30 s): the
  // broker keeps the lease and says so once. Only then does it call host-c gone.
  const brokerLog = async () => (await readFile(join(DIR, 'broker.log'), 'utf8').catch(() => '')).split('\n').filter((l) => l.includes(lease.id));
  const keptLine = await waitFor('the broker keeping the lease of a silent borrower still logged in', async () => (await brokerLog()).find((l) => /silent for \d+s but logged in at host-a/.test(l)), { timeoutMs: 60_000, intervalMs: 250 });
  const failed = await waitFor('the broker ending the lease', async () => (await listLeases(testbedBus(tb))).find((l) => l.id === lease.id && l.state === 'failed'), { timeoutMs: 120_000, intervalMs: 250 });
  assert.match(failed.reason!, /borrower host-c silent/);
  const keptAt = (JSON.parse(keptLine) as { time: number }).time;
  assert.ok(failed.updatedAt > keptAt, 'failed only after the session was gone');
  // Nobody asks host-a for the target: it removes it by itself, its grace after the last session.
  await waitFor('the target and its ramfs gone from host-a', async () => {
    const mounted = (await readFile('/proc/mounts', 'utf8')).includes(`/host-a/exporter/leases/${lease.id} `);
    return !(await targetOf(lease)).present && !mounted;
  }, { timeoutMs: 180_000, intervalMs: 250 });
  const backAfterS = (Date.now() - cutAt) / 1000;
  console.log(`hard death: host-a had the memory back ${backAfterS.toFixed(1)} s after host-c died (borrower timeout 5 s, NOP-In 5 s x 6, grace 3 s, reconcile 1 s)`);
  // And the broker gives the bytes back once host-a no longer lists the lease.
  await waitFor('the lease\'s bytes back on host-a', async () => (await listHosts(testbedBus(tb))).find((h) => h.host === 'host-a')?.reservations[lease.id] === undefined, { timeoutMs: 30_000, intervalMs: 250 });
  // The reconcile logs the removal once its pass is done (after the target is gone): awaited.
  await waitFor('host-a\'s exporter log saying its own reconcile removed the export', async () =>
    (await readFile(join(DIR, 'host-a', 'exporter.log'), 'utf8')).split('\n').some((l) => l.includes('reconcile removed ended exports') && l.includes(lease.id)), { timeoutMs: 60_000, intervalMs: 250 });
});
