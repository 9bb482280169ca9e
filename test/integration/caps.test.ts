/**
 * Bounds, on a real nats-server with scripted agents: a borrower never holds more leases than the
 * cap (each is a swap area, and the kernel takes 32 at most), and ended lease records are deleted
 * after their retention, so the leases bucket does not grow forever.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startNatsServer, type NatsServer } from '../helpers/nats.js';
import { scriptedAgents, type ScriptedAgents } from '../helpers/agents.js';
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
  broker = await startBroker({ nats: server.url, host: 'broker-caps', maxLeasesPerBorrower: 2, terminalRetentionMs: 1_000, sweepIntervalMs: 300 });
  nc = await connect({ servers: server.url });
  agents = scriptedAgents(nc, ['lender-a', 'borrow-b']);
  await waitFor('hosts announced', async () => (await listParsed((await openStores(nc)).hosts, HostRecord)).length === 2, { timeoutMs: 10_000 });
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
  assert.deepEqual((await leases()).map((l) => l.state), ['active', 'active']);
  assert.equal(agents.commands.filter((c) => c.startsWith('export')).length, 2, 'no export was even tried for the third');
});

test('caps - an ended lease record is deleted after its retention; live ones stay', async () => {
  const [first, second] = (await leases()).sort((a, b) => a.createdAt - b.createdAt);
  const released = (await nc.request(subjects.release, JSON.stringify({ leaseId: first!.id }), { timeout: 10_000 })).json<{ lease: { state: string } }>();
  assert.equal(released.lease.state, 'released');
  await waitFor('the released record gone after its retention (1 s)', async () => !(await leases()).some((l) => l.id === first!.id), { timeoutMs: 30_000 });
  assert.deepEqual((await leases()).map((l) => [l.id, l.state]), [[second!.id, 'active']]);
});
