/**
 * The broker under faults, on a real nats-server with scripted agents (test/helpers/agents.ts):
 * two brokers at once, replayed and out-of-order events, leases left mid-step by a broker that died
 * (taken over by exactly one other), a borrower that disappeared, one whose clock is far off, and
 * timestamps far in the past or the future.
 */
import { after, before, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { ask as askOn, startNatsServer, type NatsServer } from '../helpers/nats.js';
import { allAnnounced, scriptedAgents, addressOf, type ScriptedAgents } from '../helpers/agents.js';
import { startBroker } from '../../services/broker/index.js';
import { openStores } from '../../shared/nats.js';
import { casUpdate, getParsed, listParsed } from '../../shared/kv.js';
import { HostRecord, LeaseRecord } from '../../shared/schemas.js';
import { subjects } from '../../shared/subjects.js';
import { waitFor } from '../../shared/wait.js';
import { reservedBytes } from '../../services/broker/policy.js';

const MiB = 1024 ** 2;
const ask = (subject: string, body: string) => askOn(nc, subject, body);
const HOSTS = ['lender-a', 'lender-c', 'lender-o', 'borrow-b', 'borrow-x', 'borrow-r', 'borrow-g', 'borrow-k', 'lender-p', 'borrow-p', 'lender-s', 'borrow-s', 'borrow-m', 'borrow-t'];
let server: NatsServer;
let brokers: Array<Awaited<ReturnType<typeof startBroker>>>;
let nc: NatsConnection;
let agents: ScriptedAgents;

before(async () => {
  process.env.RSWAP_LOG_LEVEL = 'silent';
  server = await startNatsServer();
  // Agents announce every 500 ms here (10 s in real life); a borrower silent for 3 s is gone.
  const settings = { nats: server.url, insecure: true, releaseCooldownMs: 60_000, sweepIntervalMs: 300, borrowerTimeoutMs: 3_000 };
  // Two brokers sharing the work, as two processes would.
  brokers = [await startBroker({ ...settings, host: 'broker-1' }), await startBroker({ ...settings, host: 'broker-2' })];
  nc = await connect({ servers: server.url });
  agents = scriptedAgents(nc, HOSTS, { announceEveryMs: 500 });
  await nc.flush();
  await allAnnounced(nc, HOSTS);
});

beforeEach(() => {
  agents.commands.length = 0;
});

after(async () => {
  agents.stop();
  await nc.drain();
  for (const broker of brokers) await broker.stop();
  await server.stop();
});

async function hostRecords(): Promise<HostRecord[]> {
  return (await listParsed((await openStores(nc)).hosts, HostRecord)).map((e) => e.value);
}
async function leases(borrower?: string): Promise<LeaseRecord[]> {
  const all = (await listParsed((await openStores(nc)).leases, LeaseRecord)).map((e) => e.value);
  return all.filter((l) => !borrower || l.borrower === borrower).sort((a, b) => a.createdAt - b.createdAt);
}
/** An offer as a request: once a broker has answered, it has recorded it (no waiting for a time). */
const offer = (host: string, lendableBytes: number, at = Date.now()) =>
  nc.request(subjects.surplus(host), JSON.stringify({ host, lendableBytes, lentBytes: 0, at, source: 'inject' }), { timeout: 10_000 });

/** Capacity promised on each lender equals the sizes of its live leases: nothing counted twice. */
async function assertCapacityConsistent(): Promise<void> {
  const all = await leases();
  for (const host of await hostRecords()) {
    const live = all.filter((l) => l.lender === host.host && l.state !== 'released' && l.state !== 'failed').reduce((s, l) => s + l.sizeBytes, 0);
    assert.equal(reservedBytes(host), live, `reservations on ${host.host} match its live leases`);
  }
}

test('faults - two brokers, the same pressure many times at once: one lease, capacity counted once', async () => {
  await offer('lender-a', 1024 * MiB);
  await offer('lender-c', 1024 * MiB);
  // 12 copies of the event, spread by the queue group over both brokers.
  const at = Date.now();
  await Promise.all(Array.from({ length: 12 }, () => nc.request(subjects.pressure('borrow-x'), JSON.stringify({ host: 'borrow-x', neededBytes: 200 * MiB, at, source: 'inject' }), { timeout: 10_000 })));
  await waitFor('the lease active', async () => (await leases('borrow-x')).some((l) => l.state === 'active'), { timeoutMs: 5_000 });
  const mine = await leases('borrow-x');
  assert.deepEqual(mine.map((l) => [l.state, l.sizeBytes / MiB]), [['active', 200]], 'exactly one lease');
  assert.equal(agents.commands.filter((c) => c.startsWith('export')).length, 1);
  await assertCapacityConsistent();
});

test('faults - replayed and out-of-order events change nothing twice', async () => {
  await offer('lender-a', 1024 * MiB);
  const t0 = Date.now();
  const pressure = { host: 'borrow-r', neededBytes: 100 * MiB, at: t0, source: 'inject' };
  const answers = [];
  for (let i = 0; i < 3; i += 1) answers.push((await nc.request(subjects.pressure('borrow-r'), JSON.stringify(pressure), { timeout: 10_000 })).json());
  assert.equal((await leases('borrow-r')).length, 1, `a replayed pressure event lends once: ${JSON.stringify(answers)}`);

  // Relief, then the old pressure event arrives again late: the host stays clear.
  await nc.request(subjects.relief('borrow-r'), JSON.stringify({ host: 'borrow-r', at: t0 + 1_000, source: 'inject' }), { timeout: 5_000 });
  await nc.request(subjects.pressure('borrow-r'), JSON.stringify(pressure), { timeout: 10_000 });
  const record = (await getParsed((await openStores(nc)).hosts, 'borrow-r', HostRecord))!.value;
  assert.equal(record.clearSince, t0 + 1_000, 'a late copy of an older pressure does not undo the relief');

  // An old offer arriving after a newer one is ignored.
  await offer('lender-o', 64 * MiB, t0 - 2_000);
  await offer('lender-o', 900 * MiB, t0 - 3_000);
  assert.equal((await getParsed((await openStores(nc)).hosts, 'lender-o', HostRecord))!.value.offer?.lendableBytes, 64 * MiB);

  // Releasing twice answers twice with the same result and tears down once.
  const [lease] = await leases('borrow-r');
  const replies = await Promise.all([0, 1].map(() => nc.request(subjects.release, JSON.stringify({ leaseId: lease!.id }), { timeout: 10_000 })));
  for (const reply of replies) assert.equal((reply.json() as { lease?: { state: string } }).lease?.state, 'released');
  assert.equal(agents.commands.filter((c) => c === `unexport ${lease!.lender} ${lease!.id}`).length, 1);
  await assertCapacityConsistent();
});

/** A lease record as a broker that died mid-step leaves it, ten minutes old. */
async function orphan(state: LeaseRecord['state'], borrower: string, lender: string): Promise<LeaseRecord> {
  const stores = await openStores(nc);
  const at = Date.now() - 600_000;
  const id = `l-${Math.random().toString(16).slice(2, 14).padEnd(12, '0')}`;
  const path = ['requested', 'exporting', 'exported', 'attaching', 'active', 'draining'];
  const lease: LeaseRecord = {
    id,
    borrower,
    lender,
    sizeBytes: 64 * MiB,
    state,
    createdAt: at,
    updatedAt: at,
    history: path.slice(0, path.indexOf(state) + 1).map((s) => ({ state: s as LeaseRecord['state'], at })),
    borrowerIqn: `iqn.2026-11.io.rswap:${borrower}`,
    borrowerAddress: addressOf(HOSTS.indexOf(borrower)),
    ...(state !== 'requested' && state !== 'exporting' ? { target: { portal: `${addressOf(HOSTS.indexOf(lender))}:3260`, iqn: `iqn.2026-11.io.rswap:${lender}.${id}`, lun: 1 } } : {}),
  };
  await stores.leases.create(id, JSON.stringify(lease));
  if (state !== 'requested') {
    // By CAS, as the broker does: the agents' announces write the same record meanwhile.
    await casUpdate(stores.hosts, lender, HostRecord, (host) => ({ ...host!, reservations: { ...host!.reservations, [id]: 64 * MiB } }));
  }
  return lease;
}

test('faults - leases a dead broker left mid-step are taken over by exactly one broker and finished', async () => {
  await offer('lender-a', 1024 * MiB);
  await offer('lender-c', 1024 * MiB);
  const cases = [
    ['requested', 'active'],
    ['exporting', 'active'],
    ['exported', 'active'],
    ['attaching', 'active'],
    ['draining', 'released'],
  ] as const;
  const left: LeaseRecord[] = [];
  for (const [state] of cases) left.push(await orphan(state, 'borrow-b', 'lender-c'));
  const done = await waitFor('every orphan finished', async () => {
    const now = await leases('borrow-b');
    const mine = left.map((l) => now.find((n) => n.id === l.id)!);
    return mine.every((l) => l.state === 'active' || l.state === 'released') ? mine : undefined;
  }, { timeoutMs: 15_000, intervalMs: 200 }).catch(async (error: Error) => {
    const now = await leases('borrow-b');
    throw new Error(`${error.message}: ${JSON.stringify(left.map((l) => now.find((n) => n.id === l.id)).map((l) => [l?.state, l?.history.at(-1)]))}`);
  });
  for (const [i, [from, to]] of cases.entries()) {
    const lease = done[i]!;
    assert.equal(lease.state, to, `a lease left ${from} ends ${to}`);
    const takeovers = lease.history.filter((h) => /taken over by broker/.test(h.reason ?? ''));
    assert.equal(takeovers.length, 1, `${from}: taken over once, by one of the two brokers`);
    const sent = agents.commands.filter((c) => c.endsWith(lease.id));
    if (to === 'active') {
      assert.deepEqual(sent, [`export lender-c ${lease.id}`, `attach borrow-b ${lease.id}`], `${from}: export (again) and attach, once`);
    } else {
      assert.deepEqual(sent, [`detach borrow-b ${lease.id}`, `unexport lender-c ${lease.id}`], 'the release finishes: swap-off first');
    }
  }
  await assertCapacityConsistent();
});

test('faults - a borrower a dead broker was lending to is served at once after the takeover, not only once its mark goes stale', async () => {
  await offer('lender-a', 1024 * MiB);
  const lease = await orphan('exporting', 'borrow-m', 'lender-a');
  // The dead broker's mark on the borrower, as lendFor leaves it: fresh (stale only after the
  // attach timeout and more), naming the lease it was lending.
  await casUpdate((await openStores(nc)).hosts, 'borrow-m', HostRecord, (host) => ({ ...host!, lending: { leaseId: lease.id, by: 'broker-dead', at: Date.now() } }));
  await waitFor('the orphan taken over and active', async () => (await leases('borrow-m')).some((l) => l.id === lease.id && l.state === 'active'), { timeoutMs: 15_000, intervalMs: 100 });
  assert.equal((await hostRecords()).find((h) => h.host === 'borrow-m')!.lending, undefined, 'the mark went with the takeover');
  // More than the lease covers: a second lease, now.
  const reply = await nc.request(subjects.pressure('borrow-m'), JSON.stringify({ host: 'borrow-m', neededBytes: 128 * MiB, at: Date.now(), source: 'inject' }), { timeout: 10_000 });
  assert.ok(reply.json<{ leaseId?: string }>().leaseId, `served: ${reply.string()}`);
  assert.equal((await leases('borrow-m')).filter((l) => l.state === 'active').length, 2);
  await assertCapacityConsistent();
});

test('faults - a borrower that disappears: its leases end and the lender gets its memory back', async () => {
  await offer('lender-a', 1024 * MiB);
  await nc.request(subjects.pressure('borrow-g'), JSON.stringify({ host: 'borrow-g', neededBytes: 64 * MiB, at: Date.now(), source: 'inject' }), { timeout: 10_000 });
  const [lease] = await leases('borrow-g');
  assert.equal(lease!.state, 'active');
  agents.commands.length = 0;
  // The host is gone: its attacher stops announcing.
  agents.silenced.add('borrow-g');
  const failed = await waitFor('the lease ended', async () => (await leases('borrow-g')).find((l) => l.state === 'failed'), { timeoutMs: 30_000, intervalMs: 200 });
  assert.match(failed.reason!, /borrower borrow-g silent for \d+s/);
  // Nothing is asked of either host: a swap-off cannot reach a dead host, and the target is not
  // asked for without the borrower's word that it let go (its session may be down for a while
  // only). The lender removes it by itself once it has seen no session for its grace, which the
  // e2e tests show with a real tgtd. Sweeps after the failed mark send nothing either.
  const sweepsAfter = Math.max(...brokers.map((b) => b.sweeps())) + 1;
  await waitFor('sweeps after the lease failed', async () => brokers.every((b) => b.sweeps() > sweepsAfter), { timeoutMs: 30_000 });
  assert.deepEqual(agents.commands, []);
  await assertCapacityConsistent();
});

test('faults - agents that answer a command with a timeout of their own are asked again: the lease comes up and is released, not failed', async () => {
  await offer('lender-a', 1024 * MiB);
  // As on a NATS failover: the lender's KV read times out once on the export, the borrower's on the attach and twice on the detach.
  agents.timeouts.set('export lender-a', 1).set('attach borrow-t', 1).set('detach borrow-t', 2);
  await nc.request(subjects.pressure('borrow-t'), JSON.stringify({ host: 'borrow-t', neededBytes: 64 * MiB, at: Date.now(), source: 'inject' }), { timeout: 30_000 });
  const lease = await waitFor('the lease active', async () => (await leases('borrow-t')).find((l) => l.state === 'active' || l.state === 'failed'), { timeoutMs: 30_000, intervalMs: 100 });
  assert.equal(lease.state, 'active', JSON.stringify(lease));
  const reply = (await nc.request(subjects.release, JSON.stringify({ leaseId: lease.id }), { timeout: 60_000 })).json<{ ok: boolean; lease?: LeaseRecord }>();
  assert.equal(reply.lease?.state, 'released', JSON.stringify(reply));
  assert.deepEqual([...agents.timeouts.values()], [0, 0, 0], 'every timeout was answered');
  // Each command sent again after its timeout; the target removed only after the detach that worked.
  assert.deepEqual(agents.commands.filter((c) => c.endsWith(lease.id)), [
    `export lender-a ${lease.id}`, `export lender-a ${lease.id}`, `attach borrow-t ${lease.id}`, `attach borrow-t ${lease.id}`,
    `detach borrow-t ${lease.id}`, `detach borrow-t ${lease.id}`, `detach borrow-t ${lease.id}`, `unexport lender-a ${lease.id}`,
  ]);
  await assertCapacityConsistent();
});

test('faults - a borrower whose clock runs 10 minutes behind keeps its lease: liveness is the broker\'s clock', async () => {
  // Fails on the main before this change: the broker judged liveness by the announce's own `at`.
  await offer('lender-a', 1024 * MiB);
  agents.clockOffsetMs.set('borrow-k', -600_000);
  agents.announce('borrow-k');
  // Its pressure carries its clock too: served all the same (its `at` replaced by the arrival time).
  const reply = await nc.request(subjects.pressure('borrow-k'), JSON.stringify({ host: 'borrow-k', neededBytes: 64 * MiB, at: Date.now() - 600_000, source: 'inject' }), { timeout: 10_000 });
  const leaseId = reply.json<{ leaseId: string }>().leaseId;
  assert.ok(leaseId, `a lease for the skewed borrower: ${reply.string()}`);
  agents.commands.length = 0;
  // Long enough for the broker to call a silent borrower gone (3 s), with a sweep after that.
  const sweepsAfter = Math.max(...brokers.map((b) => b.sweeps())) + 1;
  const goneBy = Date.now() + 3_500;
  await waitFor('sweeps past the borrower timeout', async () => Date.now() > goneBy && brokers.every((b) => b.sweeps() > sweepsAfter), { timeoutMs: 30_000 });
  const [lease] = (await leases('borrow-k')).filter((l) => l.id === leaseId);
  assert.equal(lease!.state, 'active', `the lease stays: ${lease!.reason ?? ''}`);
  assert.deepEqual(agents.commands, [], 'no command to either host');
  await assertCapacityConsistent();
});

test('faults - timestamps far off are replaced by the arrival time: a far-future offer goes stale by the broker\'s clock', async () => {
  const sentAt = Date.now();
  assert.equal((await ask(subjects.surplus('lender-o'), JSON.stringify({ host: 'lender-o', lendableBytes: 512 * MiB, at: sentAt - 600_000 }))).ok, true);
  const recordedOld = (await hostRecords()).find((h) => h.host === 'lender-o')!.offer!.at;
  assert.ok(recordedOld >= sentAt, `a 10-minute-old offer is recorded at its arrival (${sentAt - recordedOld} ms before it was sent)`);
  const future = Date.now() + 3_600_000;
  assert.equal((await ask(subjects.surplus('lender-o'), JSON.stringify({ host: 'lender-o', lendableBytes: 512 * MiB, at: future }))).ok, true);
  const recorded = (await hostRecords()).find((h) => h.host === 'lender-o')!.offer!.at;
  assert.ok(recorded <= Date.now(), `the offer is recorded at the broker's time, not an hour ahead (${recorded})`);
});

test('faults - a forged or real lost event fails the lease, but its bytes stay promised while the lender still serves the target', async () => {
  // Fails on the main before this change: the capacity went back at once while the pages were held.
  await offer('lender-p', 2048 * MiB);
  const reply = await nc.request(subjects.pressure('borrow-p'), JSON.stringify({ host: 'borrow-p', neededBytes: 128 * MiB, source: 'inject' }), { timeout: 10_000 });
  const { leaseId } = reply.json<{ leaseId: string }>();
  const lease = (await leases('borrow-p')).find((l) => l.id === leaseId)!;
  assert.equal(lease.lender, 'lender-p');
  // The lender reports the target (a borrower is logged in to it) and refuses to remove it.
  agents.serving.set('lender-p', [leaseId]);
  agents.refuseUnexport.add(leaseId);
  agents.announce('lender-p');
  await waitFor('the lender reporting what it serves', async () => (await hostRecords()).find((h) => h.host === 'lender-p')?.exporter?.serving?.includes(leaseId), { timeoutMs: 10_000 });
  const lost = await ask(subjects.lost('borrow-p'), JSON.stringify({ host: 'borrow-p', leaseId, reason: 'forged', at: Date.now() }));
  assert.equal(lost.ok, true);
  assert.equal((await leases('borrow-p'))[0]!.state, 'failed');
  const reserved = () => hostRecords().then((hs) => hs.find((h) => h.host === 'lender-p')!.reservations[leaseId]);
  assert.equal(await reserved(), 128 * MiB, 'the bytes stay promised while the target is served');
  // Still serving, said as a request: once the broker answered, it has decided; nothing changes.
  const again = await ask(subjects.announce('lender-p'), JSON.stringify({ host: 'lender-p', role: 'exporter', portal: `${addressOf(HOSTS.indexOf('lender-p'))}:3260`, at: Date.now(), serving: [leaseId] }));
  assert.equal(again.ok, true);
  assert.equal(await reserved(), 128 * MiB);
  // The session ends; the lender removes the target and says so: the bytes go back.
  agents.serving.set('lender-p', []);
  agents.announce('lender-p');
  await waitFor('the bytes back once the lender no longer serves the lease', async () => (await reserved()) === undefined, { timeoutMs: 10_000 });
  agents.serving.delete('lender-p');
  await assertCapacityConsistent();
});

test('faults - a silent borrower still logged in at its lender keeps its lease; once its session is gone, the lease ends', async () => {
  // Fails on the main before this change: a borrower thrashing on its leases stalled its agents
  // for two minutes in a VM, its leases were failed, and their targets taken while it swapped there.
  await offer('lender-s', 4096 * MiB); // the most free: chosen
  await nc.request(subjects.pressure('borrow-s'), JSON.stringify({ host: 'borrow-s', neededBytes: 64 * MiB, at: Date.now(), source: 'inject' }), { timeout: 10_000 });
  const [lease] = await leases('borrow-s');
  assert.equal(lease!.state, 'active');
  assert.equal(lease!.lender, 'lender-s');
  agents.sessions.set('lender-s', [lease!.id]);
  agents.announce('lender-s');
  await waitFor('the lender reporting the session', async () => (await hostRecords()).find((h) => h.host === 'lender-s')?.exporter?.sessions?.includes(lease!.id), { timeoutMs: 10_000 });
  agents.commands.length = 0;
  agents.silenced.add('borrow-s');
  // Past the borrower timeout (3 s) by a few sweeps: the lease stays, and nothing is asked.
  const goneBy = Date.now() + 3_500;
  const sweepsAfter = Math.max(...brokers.map((b) => b.sweeps())) + 2;
  await waitFor('sweeps past the borrower timeout', async () => Date.now() > goneBy && brokers.every((b) => b.sweeps() > sweepsAfter), { timeoutMs: 30_000 });
  const kept = (await leases('borrow-s')).find((l) => l.id === lease!.id)!;
  assert.equal(kept.state, 'active', `kept while logged in: ${kept.reason ?? ''}`);
  assert.deepEqual(agents.commands, []);
  // Its session ends (tgtd's NOP-In dropped a dead host): now it is gone.
  agents.sessions.set('lender-s', []);
  agents.announce('lender-s');
  const failed = await waitFor('the lease ended', async () => (await leases('borrow-s')).find((l) => l.id === lease!.id && l.state === 'failed'), { timeoutMs: 30_000, intervalMs: 200 });
  assert.match(failed.reason!, /borrower borrow-s silent for \d+s/);
  await assertCapacityConsistent();
});
