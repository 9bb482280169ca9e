/**
 * Bounds, on a real nats-server with scripted agents: a borrower never holds more leases than the
 * cap (each is a swap area, and the kernel takes 32 at most), and ended lease records are deleted
 * after their retention, so the leases bucket does not grow forever.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startNatsServer, type NatsServer } from '../helpers/nats.js';
import { allAnnounced, scriptedAgents, type ScriptedAgents } from '../helpers/agents.js';
import { startBroker } from '../../services/broker/index.js';
import { openStores } from '../../shared/nats.js';
import { listParsed } from '../../shared/kv.js';
import { HostRecord, LeaseRecord } from '../../shared/schemas.js';
import { subjects } from '../../shared/subjects.js';
import { waitFor } from '../../shared/wait.js';

const MiB = 1024 ** 2;
let server: NatsServer;
let broker: Awaited<ReturnType<typeof startBroker>>;
let nc: NatsConnection;
let agents: ScriptedAgents;

const leases = async () => (await listParsed((await openStores(nc)).leases, LeaseRecord)).map((e) => e.value);
const pressure = async (host: string, neededBytes: number) =>
  (await nc.request(subjects.pressure(host), JSON.stringify({ host, neededBytes, at: Date.now(), source: 'inject' }), { timeout: 10_000 })).json<{ ok: boolean; leaseId?: string; state?: string }>();

before(async () => {
  process.env.RSWAP_LOG_LEVEL = 'silent';
  server = await startNatsServer();
  broker = await startBroker({ nats: server.url, insecure: true, host: 'broker-caps', offerTtlMs: 3_600_000, maxLeasesPerBorrower: 2, maxInFlight: 1, terminalRetentionMs: 1_000, sweepIntervalMs: 300, releaseCooldownMs: 300 });
  nc = await connect({ servers: server.url });
  agents = scriptedAgents(nc, ['lender-a', 'borrow-b', 'borrow-c', 'borrow-d', 'borrow-e']);
  await allAnnounced(nc, ['lender-a', 'borrow-b', 'borrow-c', 'borrow-d', 'borrow-e']);
  await nc.request(subjects.surplus('lender-a'), JSON.stringify({ host: 'lender-a', lendableBytes: 4096 * MiB, lentBytes: 0, at: Date.now() }), { timeout: 10_000 });
});

after(async () => {
  agents.stop();
  await nc?.drain();
  await broker?.stop();
  await server?.stop();
});

test('caps - a growing need gets at most --max-leases-per-borrower leases', async () => {
  assert.equal((await pressure('borrow-b', 100 * MiB)).state, 'active');
  assert.equal((await pressure('borrow-b', 250 * MiB)).state, 'active', 'growth: a second lease');
  const third = await pressure('borrow-b', 400 * MiB);
  assert.deepEqual(third, { ok: true }, 'answered, with no third lease');
  assert.deepEqual((await leases()).filter((l) => l.borrower === 'borrow-b').map((l) => l.state), ['active', 'active']);
  assert.equal(agents.commands.filter((c) => c.startsWith('export')).length, 2, 'no export was even tried for the third');
});

test('caps - an ended lease record is deleted after its retention; live ones stay', async () => {
  const [first, second] = (await leases()).filter((l) => l.borrower === 'borrow-b').sort((a, b) => a.createdAt - b.createdAt);
  const released = (await nc.request(subjects.release, JSON.stringify({ leaseId: first!.id }), { timeout: 10_000 })).json<{ lease: { state: string } }>();
  assert.equal(released.lease.state, 'released');
  await waitFor('the released record gone after its retention (1 s)', async () => !(await leases()).some((l) => l.id === first!.id), { timeoutMs: 30_000 });
  assert.deepEqual((await leases()).filter((l) => l.borrower === 'borrow-b').map((l) => [l.id, l.state]), [[second!.id, 'active']]);
});

test('caps - a cool-down swap-off the borrower refuses is not asked again on every sweep: it backs off', async () => {
  const { leaseId } = await pressure('borrow-c', 64 * MiB);
  agents.refuseDetach.add(leaseId!);
  agents.commands.length = 0;
  await nc.request(subjects.relief('borrow-c'), JSON.stringify({ host: 'borrow-c', at: Date.now(), source: 'inject' }), { timeout: 10_000 });
  await waitFor('the first cool-down release, refused', async () => agents.commands.includes(`detach borrow-c ${leaseId}`), { timeoutMs: 10_000 });
  // Ten more sweeps (3 s here): before, each one asked again; now the next try is 30 s away.
  const after = broker.sweeps() + 10;
  await waitFor('ten more sweeps', async () => broker.sweeps() >= after, { timeoutMs: 30_000 });
  assert.equal(agents.commands.filter((c) => c === `detach borrow-c ${leaseId}`).length, 1, 'asked once');
  const lease = (await leases()).find((l) => l.id === leaseId)!;
  assert.equal(lease.state, 'active');
  assert.match(lease.reason!, /would not fit/);
});

test('caps - the broker handles at most --max-in-flight pressures at once and refuses the rest at once', async () => {
  let openGate = () => {};
  agents.exportGate = new Promise((resolve) => (openGate = resolve)); // a slow lender: exports wait
  try {
    const first = pressure('borrow-d', 64 * MiB);
    // Its lease record exists once the broker is waiting on the slow export.
    await waitFor('the first bring-up under way', async () => (await leases()).some((l) => l.borrower === 'borrow-d' && l.state === 'exporting'), { timeoutMs: 10_000, intervalMs: 20 });
    const second = await pressure('borrow-e', 64 * MiB);
    assert.equal(second.ok, false);
    assert.match(JSON.stringify(second), /broker busy: 1 pressures in flight/);
    openGate();
    assert.equal((await first).state, 'active');
    assert.equal((await pressure('borrow-e', 64 * MiB)).state, 'active', 'served once the first is done');
  } finally {
    agents.exportGate = undefined;
    openGate();
  }
});
