/**
 * Faults on the testbed, with a workload that verifies its data throughout: kill -9 of every rswap
 * service while a lease serves swap under load, a broker killed in the middle of a bring-up, and a
 * nats-server restart. Afterwards nothing is left behind and no capacity is counted twice.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import type { NatsConnection } from '@nats-io/transport-node';
import { connectAs } from '../../shared/nats.js';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { readMounts, readSwaps } from '../../shared/procfs.js';
import { subjects } from '../../shared/subjects.js';
import { killTestbedProcess, startTestbedProcess, testbedDown, testbedUp, type Testbed, testbedBus, tgtadmOn } from '../../cli/testbed/testbed.js';
import { cordonHost, drainHost, injectPressure, listHosts, listLeases, releaseLease, revokeLease, withNats } from '../../cli/operator.js';
import { freePort } from '../helpers/nats.js';
import { assertNothingLeft, attachedLoops } from '../helpers/leftovers.js';
import { waitFor } from '../../shared/wait.js';
import { startWorkload } from '../../bench/run-workload.js';
import { LeaseStateEvent, type LeaseRecord } from '../../shared/schemas.js';

const MiB = 1024 ** 2;
const DIR = '/run/rswap/test-faults';
const log = pino({ level: 'silent' });
const run = createRunner(log);
let tb: Testbed;
let loopsBefore: string[] = [];
const stopFile = `${DIR}/workload.stop`; // inside the testbed folder: removed with it

before(async () => {
  loopsBefore = await attachedLoops(run);
  tb = await testbedUp(run, log, {
    dir: DIR,
    hosts: 3,
    natsPort: await freePort(),
    // host-a and host-c lend; host-b is small and borrows.
    memoryBytes: [1024 * MiB, 128 * MiB, 1024 * MiB],
    reserveBytes: [256 * MiB, 32 * MiB, 256 * MiB],
    localSwapBytes: 512 * MiB,
    // Short step timeouts, so a lease whose broker died is taken over within half a minute (the
    // defaults are 30 s and 90 s). Not shorter: they hold for every bring-up in this file, and an
    // export took over 3 s here beside stress-ng (a fault test once failed on an 8 s attach).
    brokerArgs: ['--release-cooldown-ms', '3000', '--sweep-interval-ms', '1000', '--export-timeout-ms', '20000', '--attach-timeout-ms', '20000'],
    monitorArgs: ['--exit-hold-ms', '2000'],
    // A lender that stops answering is declared lost after 5 s (default 120 s).
    attacherArgs: ['--replacement-timeout-s', '5', '--health-interval-ms', '1000'],
    // A failed lease's target outlives its last session by 3 s (default 150 s), so the tests
    // see the lenders' reconcilers clean up within their waits.
    exporterArgs: ['--session-grace-ms', '3000'],
  });
});

after(async () => {
  await writeFile(stopFile, '').catch(() => undefined);
  const problems = await testbedDown(run, log, DIR);
  await rm(stopFile, { force: true });
  assert.deepEqual(problems, []);
});

const leasesOf = async (borrower: string) => (await listLeases(testbedBus(tb))).filter((l) => l.borrower === borrower);

async function allReleased(): Promise<LeaseRecord[]> {
  return waitFor('every lease ended', async () => {
    const all = await listLeases(testbedBus(tb));
    return all.every((l) => l.state === 'released' || l.state === 'failed') ? all : undefined;
  }, { timeoutMs: 90_000, intervalMs: 250 });
}

test('faults - kill -9 of every rswap service while a lease serves swap under load: no byte lost, all converges', async () => {
  await rm(stopFile, { force: true });
  const phases: string[] = [];
  const workload = startWorkload(tb.hosts[1]!.cgroup, ['--bytes', '256MiB', '--until-file', stopFile], (p) => phases.push(p.phase));
  workload.result.catch(() => undefined);
  let lease: LeaseRecord;
  try {
    lease = await waitFor('host-b reading back through remote swap', async () => {
      const active = (await leasesOf('host-b')).find((l) => l.state === 'active');
      return active && phases.some((p) => p.startsWith('verify')) ? active : undefined;
    }, { timeoutMs: 60_000, intervalMs: 250 });
    for (const name of ['broker', 'host-a/exporter', 'host-b/attacher', 'host-b/monitor', 'host-a/monitor']) {
      assert.equal(await killTestbedProcess(tb, name), 1, `${name} was running and is killed`);
      await new Promise((r) => setTimeout(r, 1_500)); // the workload keeps swapping meanwhile
      startTestbedProcess(tb, name);
      await new Promise((r) => setTimeout(r, 1_500));
    }
    // Every agent is back: the broker has fresh announcements from both hosts.
    await waitFor('agents announced again', async () => (await listHosts(testbedBus(tb))).every((h) => h.exporter && h.attacher && Date.now() - h.attacher.at < 15_000), { timeoutMs: 30_000 });
    const now = (await leasesOf('host-b')).find((l) => l.id === lease.id)!;
    assert.equal(now.state, 'active', 'the lease served throughout and is still active');
    assert.ok((await readSwaps()).some((a) => a.path === now.device), 'its swap area is still on');
    assert.deepEqual((await leasesOf('host-b')).filter((l) => l.state === 'failed'), [], 'no lease failed');
  } finally {
    await writeFile(stopFile, '');
  }
  const report = await workload.result;
  assert.equal(report.corruptedChunks, 0, 'every byte read back intact across the kills');
  assert.ok(report.passes >= 1);
  console.log(`kill -9 x5 under load: ${report.passes} verify passes of ${report.chunks} MiB, ${report.corruptedChunks} corrupted`);
  await allReleased();
  await assertNothingLeft(tb, run, loopsBefore, { reservations: true });
});

test('faults - a broker killed in the middle of a bring-up: another start takes the lease over and finishes it', async () => {
  const nc: NatsConnection = await connectAs(testbedBus(tb, 'observer'), 'rswap-test-observer');
  let killed: Promise<number> | undefined;
  let killedIn: string | undefined;
  nc.subscribe(subjects.allLeaseStates, {
    callback: (_e, msg) => {
      const { lease } = LeaseStateEvent.parse(msg.json());
      if (!killed && lease.state === 'attaching') {
        killedIn = lease.id;
        killed = killTestbedProcess(tb, 'broker');
      }
    },
  });
  await nc.flush();
  const workload = startWorkload(tb.hosts[1]!.cgroup, ['--bytes', '256MiB']);
  workload.result.catch(() => undefined);
  try {
    await waitFor('the broker killed mid-attach', async () => killed !== undefined, { timeoutMs: 60_000, intervalMs: 50 });
    assert.equal(await killed, 1);
    startTestbedProcess(tb, 'broker');
    // It may go on to be released at once (the workload can be done by then): judge by its history.
    const done = await waitFor('the lease taken over and finished', async () => {
      const l = (await leasesOf('host-b')).find((x) => x.id === killedIn);
      return l && l.state !== 'attaching' ? l : undefined;
    }, { timeoutMs: 120_000, intervalMs: 250 });
    const states = done.history.map((h) => h.state);
    assert.ok(done.history.some((h) => /taken over by broker/.test(h.reason ?? '')), `the restarted broker took it over: ${JSON.stringify(done.history)}`);
    assert.equal(states[states.lastIndexOf('attaching') + 1], 'active', `the takeover finished the bring-up: ${states}`);
    assert.ok((await readSwaps()).filter((a) => a.path === done.device).length <= 1, 'the repeated attach did not add a second swap area');
  } finally {
    await nc.drain();
  }
  const report = await workload.result;
  assert.equal(report.corruptedChunks, 0);
  console.log(`broker killed mid-attach: ${report.passes} verify pass of ${report.chunks} MiB, ${report.corruptedChunks} corrupted`);
  await allReleased();
  await assertNothingLeft(tb, run, loopsBefore, { reservations: true });
});

test('faults - nats-server restarts: services reconnect, lease state survives, no lease is made twice', async () => {
  // host-b's monitor is stopped for this test: its relief would give the injected lease back.
  assert.equal(await killTestbedProcess(tb, 'host-b/monitor'), 1);
  await injectPressure(testbedBus(tb, 'host-b'), 'host-b', '64MiB');
  const lease = await waitFor('an active lease', async () => (await leasesOf('host-b')).find((l) => l.state === 'active'), { timeoutMs: 30_000, intervalMs: 250 });
  assert.equal(await killTestbedProcess(tb, 'nats'), 1);
  await new Promise((r) => setTimeout(r, 1_000));
  startTestbedProcess(tb, 'nats');
  await waitFor('agents reconnected and announcing', async () => {
    const hosts = await listHosts(testbedBus(tb)).catch(() => []);
    return hosts.length === 3 && hosts.every((h) => h.attacher && Date.now() - h.attacher.at < 12_000);
  }, { timeoutMs: 60_000, intervalMs: 500 });
  const after = (await leasesOf('host-b')).find((l) => l.id === lease.id)!;
  assert.equal(after.state, 'active', 'the lease record survived the restart (file-backed JetStream)');
  // The same demand again, as a request: once the broker has answered, it has decided. Records
  // from before the restart may look fresh while the broker is still reconnecting: until it has
  // subscribed again, NATS says "no responders", and the request is sent again.
  const answer = await waitFor('the broker back and answering the same pressure', () =>
    withNats(testbedBus(tb, 'host-b'), async (c) =>
      c.request(subjects.pressure('host-b'), JSON.stringify({ host: 'host-b', neededBytes: 64 * 1024 ** 2, at: Date.now(), source: 'inject' }), { timeout: 60_000 }).then(
        (m) => m.json<{ ok: boolean; leaseId?: string }>(),
        (error: Error) => (/no responders/i.test(error.message) ? undefined : Promise.reject(error)),
      ),
    ), { timeoutMs: 60_000, intervalMs: 250 });
  assert.deepEqual(answer, { ok: true }, 'the broker answered: covered, nothing to do');
  assert.equal((await leasesOf('host-b')).filter((l) => l.state !== 'released' && l.state !== 'failed').length, 1, 'the same demand again makes no second lease');
  assert.equal((await releaseLease(testbedBus(tb), lease.id)).state, 'released');
  startTestbedProcess(tb, 'host-b/monitor');
  await allReleased();
  await assertNothingLeft(tb, run, loopsBefore, { reservations: true });
});

test('faults - 20 revoke/replace cycles while the workload runs: zero corrupted bytes, zero killed processes', async () => {
  await rm(stopFile, { force: true });
  const phases: string[] = [];
  const workload = startWorkload(tb.hosts[1]!.cgroup, ['--bytes', '256MiB', '--until-file', stopFile], (p) => phases.push(p.phase));
  workload.result.catch(() => undefined);
  const cycles: Array<{ from: string; to: string; ms: number }> = [];
  try {
    await waitFor('host-b reading back through remote swap', async () => phases.some((p) => p.startsWith('verify')) && (await leasesOf('host-b')).some((l) => l.state === 'active'), { timeoutMs: 60_000, intervalMs: 250 });
    for (let i = 0; i < 20; i += 1) {
      const current = (await leasesOf('host-b')).find((l) => l.state === 'active')!;
      const started = Date.now();
      const { released, replacement } = await revokeLease(testbedBus(tb), current.id);
      assert.equal(released.state, 'released', `cycle ${i + 1}`);
      assert.ok(replacement && replacement.state === 'active', `cycle ${i + 1}: a replacement came up first`);
      assert.notEqual(replacement.lender, current.lender);
      assert.equal(replacement.replaces, current.id);
      assert.match(released.history.find((h) => h.state === 'draining')!.reason!, new RegExp(`revoked, replaced by ${replacement.id}`));
      cycles.push({ from: current.lender, to: replacement.lender, ms: Date.now() - started });
    }
  } finally {
    await writeFile(stopFile, '');
  }
  const report = await workload.result; // rejects if the workload was killed
  assert.equal(report.corruptedChunks, 0, `zero corrupted chunks over ${report.passes} passes and ${cycles.length} cycles`);
  assert.equal(cycles.length, 20);
  console.log(`revocation: ${cycles.length} cycles, ${report.passes} verify passes of ${report.chunks} MiB, median cycle ${cycles.map((c) => c.ms).sort((a, b) => a - b)[10]} ms`);
  await allReleased();
  await assertNothingLeft(tb, run, loopsBefore, { reservations: true });
});

test('faults - a lender that disappears: the borrower reports the lease lost, and its next pressure is served elsewhere', async () => {
  assert.equal(await killTestbedProcess(tb, 'host-b/monitor'), 1); // pressure comes by hand here
  try {
    await waitFor('both lenders offering', async () => (await listHosts(testbedBus(tb))).filter((h) => (h.offer?.lendableBytes ?? 0) > 0).length >= 2, { timeoutMs: 30_000, intervalMs: 250 });
    await injectPressure(testbedBus(tb, 'host-b'), 'host-b', '64MiB');
    const lease = await waitFor('an active lease', async () => (await leasesOf('host-b')).find((l) => l.state === 'active'), { timeoutMs: 30_000, intervalMs: 250 });
    const lender = tb.hosts.find((h) => h.name === lease.lender)!;
    // The lender's agents and its tgtd vanish at once.
    for (const role of ['exporter', 'monitor']) await killTestbedProcess(tb, `${lender.name}/${role}`);
    const { stdout } = await run('ip', ['netns', 'pids', lender.netns]);
    for (const pid of stdout.split('\n').filter(Boolean)) process.kill(Number(pid), 'SIGKILL');
    const lost = await waitFor('the lease reported lost', async () => (await leasesOf('host-b')).find((l) => l.id === lease.id && l.state === 'failed'), { timeoutMs: 60_000, intervalMs: 250 });
    assert.match(lost.reason!, new RegExp(`lender ${lender.name} lost: (no answer from the lender for \\d+s|read from the lender failed)`));
    await waitFor('its swap area gone from the borrower', async () => !(await readSwaps()).some((a) => a.path === lease.device), { timeoutMs: 30_000, intervalMs: 250 });
    // The same need again: served by the other lender.
    await injectPressure(testbedBus(tb, 'host-b'), 'host-b', '64MiB');
    const next = await waitFor('a new lease', async () => (await leasesOf('host-b')).find((l) => l.state === 'active'), { timeoutMs: 30_000, intervalMs: 250 });
    assert.notEqual(next.lender, lender.name, 'not from the lender that vanished');
    assert.equal((await releaseLease(testbedBus(tb), next.id)).state, 'released');
    // The lender comes back: its exporter removes what the lost lease left there.
    startTestbedProcess(tb, `${lender.name}/exporter`);
    startTestbedProcess(tb, `${lender.name}/monitor`);
    await waitFor('the lost lease cleaned up on the lender', async () => !(await readMounts()).some((m) => m.target.includes(lease.id)), { timeoutMs: 30_000, intervalMs: 250 });
  } finally {
    startTestbedProcess(tb, 'host-b/monitor');
  }
  await allReleased();
  await assertNothingLeft(tb, run, loopsBefore, { reservations: true });
});

test('faults - an exporter or attacher killed in the middle of a bring-up: the lease ends one way or the other, nothing leaks', async () => {
  assert.equal(await killTestbedProcess(tb, 'host-b/monitor'), 1); // pressure comes by hand here
  const nc: NatsConnection = await connectAs(testbedBus(tb, 'observer'), 'rswap-test-observer');
  try {
    for (const [state, role] of [['exporting', 'exporter'], ['attaching', 'attacher']] as const) {
      await waitFor('lenders offering', async () => (await listHosts(testbedBus(tb))).filter((h) => h.exporter && h.exporter.lostAt === undefined && (h.offer?.lendableBytes ?? 0) > 0).length >= 2, { timeoutMs: 30_000, intervalMs: 250 });
      let victim: string | undefined;
      let leaseId: string | undefined;
      const sub = nc.subscribe(subjects.allLeaseStates, {
        callback: (_e, msg) => {
          const { lease } = LeaseStateEvent.parse(msg.json());
          if (!victim && lease.state === state) {
            leaseId = lease.id;
            victim = `${role === 'exporter' ? lease.lender : lease.borrower}/${role}`;
            void killTestbedProcess(tb, victim);
          }
        },
      });
      await nc.flush();
      await injectPressure(testbedBus(tb, 'host-b'), 'host-b', '64MiB');
      await waitFor(`the ${role} killed while ${state}`, async () => victim !== undefined, { timeoutMs: 30_000, intervalMs: 50 });
      sub.unsubscribe();
      await new Promise((r) => setTimeout(r, 1_000));
      startTestbedProcess(tb, victim!);
      const ended = await waitFor('the lease settled', async () => {
        const l = (await leasesOf('host-b')).find((x) => x.id === leaseId);
        return l && (l.state === 'active' || l.state === 'failed') ? l : undefined;
      }, { timeoutMs: 120_000, intervalMs: 250 });
      if (ended.state === 'active') await releaseLease(testbedBus(tb), ended.id);
      // Whatever the outcome, the restarted agents' reconcilers leave nothing of it behind.
      await waitFor(`nothing left of ${ended.id} (${ended.state}: ${ended.reason ?? ''})`, async () => {
        const mounts = (await readMounts()).filter((m) => m.target.includes(ended.id));
        return mounts.length === 0 && !(await readSwaps()).some((a) => a.path === ended.device);
      }, { timeoutMs: 60_000, intervalMs: 500 });
    }
  } finally {
    await nc.drain();
    startTestbedProcess(tb, 'host-b/monitor');
  }
  await allReleased();
  await assertNothingLeft(tb, run, loopsBefore, { reservations: true });
});

test('faults - rswap drain of a lender with two leases under a verifying workload: both move, no byte lost, the lender serves nothing', async () => {
  assert.equal(await killTestbedProcess(tb, 'host-b/monitor'), 1); // pressure comes by hand here
  const pressure = (bytes: number) =>
    withNats(testbedBus(tb, 'host-b'), async (c) => (await c.request(subjects.pressure('host-b'), JSON.stringify({ host: 'host-b', neededBytes: bytes, at: Date.now(), source: 'inject' }), { timeout: 120_000 })).json<{ leaseId?: string; state?: string }>());
  await rm(stopFile, { force: true });
  const phases: string[] = [];
  let workload: ReturnType<typeof startWorkload> | undefined;
  try {
    // Both leases on host-a: host-c is cordoned while they come up.
    await cordonHost(testbedBus(tb), 'host-c', true);
    assert.equal((await pressure(100 * MiB)).state, 'active');
    assert.equal((await pressure(250 * MiB)).state, 'active', 'the grown need gets a second lease');
    await cordonHost(testbedBus(tb), 'host-c', false);
    const onA = (await leasesOf('host-b')).filter((l) => l.state === 'active');
    assert.deepEqual(onA.map((l) => l.lender), ['host-a', 'host-a']);
    workload = startWorkload(tb.hosts[1]!.cgroup, ['--bytes', '256MiB', '--until-file', stopFile], (p) => phases.push(p.phase));
    workload.result.catch(() => undefined);
    await waitFor('host-b reading back through remote swap', async () => phases.some((p) => p.startsWith('verify')), { timeoutMs: 60_000, intervalMs: 250 });

    const { moved, stayed } = await drainHost(testbedBus(tb), 'host-a');
    assert.deepEqual(stayed, []);
    assert.deepEqual(moved.map((m) => m.from).sort(), onA.map((l) => l.id).sort(), 'both leases moved');
    const now = await leasesOf('host-b');
    for (const m of moved) {
      assert.equal(now.find((l) => l.id === m.from)!.state, 'released');
      const replacement = now.find((l) => l.id === m.to)!;
      assert.equal(replacement.lender, 'host-c');
      assert.equal(replacement.state, 'active');
    }
    const targets = await tgtadmOn(run, tb, tb.hosts[0]!, ['--mode', 'target', '--op', 'show']);
    assert.equal(targets.stdout.trim(), '', 'host-a serves nothing');
    assert.ok((await listHosts(testbedBus(tb))).find((h) => h.host === 'host-a')!.cordoned, 'and stays cordoned');
    // Cordoned: a new need goes elsewhere.
    const more = await pressure(600 * MiB);
    assert.equal(more.state, 'active', JSON.stringify(more));
    assert.equal((await leasesOf('host-b')).find((l) => l.id === more.leaseId)!.lender, 'host-c');
  } finally {
    await writeFile(stopFile, '');
    await cordonHost(testbedBus(tb), 'host-a', false).catch(() => undefined);
    await cordonHost(testbedBus(tb), 'host-c', false).catch(() => undefined);
    startTestbedProcess(tb, 'host-b/monitor');
  }
  const report = await workload!.result;
  assert.equal(report.corruptedChunks, 0, 'every byte read back intact');
  for (const l of (await leasesOf('host-b')).filter((x) => x.state === 'active')) await releaseLease(testbedBus(tb), l.id);
  await allReleased();
  await assertNothingLeft(tb, run, loopsBefore, { reservations: true });
});
