/**
 * The broker's automatic decisions on a real nats-server: growth of a lease set, the cool-down
 * (flapping causes no churn), and make-before-break reclaim. The hosts here are scripted agents
 * that answer the broker's commands on NATS and record them (test/helpers/agents.ts), so the order of the commands can be
 * asserted; the real agents doing the same on the testbed are in test/e2e/automatic.test.ts.
 */
import { after, before, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startNatsServer, type NatsServer } from '../helpers/nats.js';
import { startBroker } from '../../services/broker/index.js';
import { openStores } from '../../shared/nats.js';
import { listParsed } from '../../shared/kv.js';
import { HostRecord, LeaseRecord } from '../../shared/schemas.js';
import { subjects } from '../../shared/subjects.js';
import { waitFor } from '../../shared/wait.js';
import { allAnnounced, scriptedAgents, type ScriptedAgents } from '../helpers/agents.js';

const MiB = 1024 ** 2;
// Flapping every 300 ms against 4 s: a stall of more than 3 s on a loaded machine would be needed
// to look like steady relief.
const COOLDOWN_MS = 4_000;
let server: NatsServer;
let broker: Awaited<ReturnType<typeof startBroker>>;
let nc: NatsConnection;
let agents: ScriptedAgents;

const offer = (host: string, lendableBytes: number, deficitBytes = 0, at = Date.now()) =>
  nc.request(subjects.surplus(host), JSON.stringify({ host, lendableBytes, lentBytes: 0, deficitBytes, at, source: 'inject' }), { timeout: 120_000 });
const pressure = (host: string, neededBytes: number) =>
  nc.request(subjects.pressure(host), JSON.stringify({ host, neededBytes, at: Date.now(), source: 'inject' }), { timeout: 10_000 });
const relief = (host: string) => nc.request(subjects.relief(host), JSON.stringify({ host, at: Date.now(), source: 'inject' }), { timeout: 10_000 });

async function leases(borrower?: string): Promise<LeaseRecord[]> {
  const all = (await listParsed((await openStores(nc)).leases, LeaseRecord)).map((e) => e.value);
  return all.filter((l) => !borrower || l.borrower === borrower).sort((a, b) => a.createdAt - b.createdAt);
}

before(async () => {
  process.env.RSWAP_LOG_LEVEL = 'silent';
  server = await startNatsServer();
  broker = await startBroker({ nats: server.url, insecure: true, host: 'broker-auto', releaseCooldownMs: COOLDOWN_MS, sweepIntervalMs: 500 });
  nc = await connect({ servers: server.url });
  agents = scriptedAgents(nc, ['lender-a', 'lender-c', 'borrow-b', 'borrow-d', 'borrow-e', 'borrow-f']);
  await nc.flush();
  await allAnnounced(nc, ['lender-a', 'lender-c', 'borrow-b', 'borrow-d', 'borrow-e', 'borrow-f']);
});

beforeEach(() => {
  agents.commands.length = 0;
});

after(async () => {
  await nc.drain();
  await broker.stop();
  await server.stop();
});

test('automatic - persistent pressure grows the lease set; pressure already covered creates nothing', async () => {
  await offer('lender-a', 1024 * MiB);
  await offer('lender-c', 512 * MiB);
  await pressure('borrow-b', 100 * MiB);
  await pressure('borrow-b', 250 * MiB); // the need grew: a second lease for the rest
  await pressure('borrow-b', 200 * MiB); // covered
  const mine = await leases('borrow-b');
  assert.deepEqual(mine.map((l) => [l.state, l.sizeBytes / MiB]), [['active', 100], ['active', 150]]);
});

test('automatic - flapping faster than the cool-down causes no churn; steady relief releases after it', async () => {
  await offer('lender-a', 1024 * MiB);
  await pressure('borrow-d', 64 * MiB);
  // Pressure on and off every 300 ms for 4.5 s: relief never lasts the 4 s cool-down.
  for (let i = 0; i < 15; i += 1) {
    await (i % 2 === 0 ? relief('borrow-d') : pressure('borrow-d', 64 * MiB));
    await new Promise((r) => setTimeout(r, 300));
  }
  const [lease] = await leases('borrow-d');
  assert.equal((await leases('borrow-d')).length, 1, 'exactly one lease for all that flapping');
  assert.deepEqual(lease!.history.map((h) => h.state), ['requested', 'exporting', 'exported', 'attaching', 'active'], 'never drained');
  assert.deepEqual(agents.commands.filter((c) => c.includes('borrow-d') && c.startsWith('detach')), []);

  await pressure('borrow-d', 64 * MiB);
  await relief('borrow-d');
  const released = await waitFor('released after the cool-down', async () => (await leases('borrow-d')).find((l) => l.state === 'released'), { timeoutMs: 30_000 });
  assert.match(released.history.find((h) => h.state === 'draining')!.reason!, /pressure clear for \ds/);
  assert.deepEqual(
    agents.commands.filter((c) => c.includes(released.id)),
    [`export lender-a ${released.id}`, `attach borrow-d ${released.id}`, `detach borrow-d ${released.id}`, `unexport lender-a ${released.id}`],
    'one bring-up, and swap-off before teardown',
  );
});

test('automatic - a lender under its reserve is reclaimed make-before-break; a stale deficit is ignored', async () => {
  await offer('lender-a', 1024 * MiB);
  await offer('lender-c', 256 * MiB);
  await pressure('borrow-e', 200 * MiB);
  const [old] = await leases('borrow-e');
  assert.equal(old!.lender, 'lender-a');
  agents.commands.length = 0;

  await offer('lender-a', 0, 50 * MiB); // lender-a's own workload grew into its reserve
  const now = await leases('borrow-e');
  const replacement = now.find((l) => l.replaces === old!.id)!;
  assert.equal(now.find((l) => l.id === old!.id)!.state, 'released');
  assert.match(now.find((l) => l.id === old!.id)!.history.find((h) => h.state === 'draining')!.reason!, new RegExp(`reclaimed by lender-a, replaced by ${replacement.id}`));
  assert.equal(replacement.state, 'active');
  assert.equal(replacement.lender, 'lender-c');
  assert.deepEqual(agents.commands, [
    `export lender-c ${replacement.id}`,
    `attach borrow-e ${replacement.id}`,
    `detach borrow-e ${old!.id}`, // only once the replacement is attached
    `unexport lender-a ${old!.id}`,
  ]);

  // lender-a still serves borrow-b; a deficit it measured before that reclaim finished is stale.
  agents.commands.length = 0;
  await offer('lender-a', 0, 50 * MiB, old!.updatedAt - 1);
  assert.deepEqual((await leases('borrow-b')).map((l) => [l.lender, l.state]), [['lender-a', 'active'], ['lender-a', 'active']]);
  assert.deepEqual(agents.commands, []);
});

test('automatic - with no replacement and a swap-off that would not fit, the lease stays active', async () => {
  await offer('lender-a', 0);
  const [lease] = (await leases('borrow-e')).filter((l) => l.state === 'active');
  agents.refuseDetach.add(lease!.id);
  agents.commands.length = 0;
  await offer(lease!.lender, 0, 64 * MiB);
  const after = (await leases('borrow-e')).find((l) => l.id === lease!.id)!;
  assert.equal(after.state, 'active', 'no page is dropped to protect the lender');
  assert.match(after.reason!, /would not fit/);
  assert.deepEqual(agents.commands, [`detach borrow-e ${lease!.id}`]);
});

test('automatic - a pressure repeated during a slow bring-up ends the clear spell a relief began: the cool-down drains nothing', async () => {
  await offer('lender-a', 1024 * MiB);
  await pressure('borrow-f', 64 * MiB);
  let openGate = () => {};
  agents.exportGate = new Promise((resolve) => (openGate = resolve)); // a slow lender: exports wait
  let reliefAt: number;
  try {
    const second = pressure('borrow-f', 192 * MiB);
    await waitFor('the second bring-up under way', async () => (await leases('borrow-f')).some((l) => l.state === 'exporting'), { timeoutMs: 10_000, intervalMs: 20 });
    // A moment of relief, then pressure again while the first pressure is still being handled
    // (as a VM thrashing through a bring-up reports): answered at once, without a lease of its own.
    reliefAt = Date.now();
    await relief('borrow-f');
    assert.deepEqual((await pressure('borrow-f', 192 * MiB)).json(), { ok: true });
    openGate();
    assert.equal((await second).json<{ state?: string }>().state, 'active');
  } finally {
    agents.exportGate = undefined;
    openGate();
  }
  // Past the cool-down the relief would have started, by the broker's own sweeps (each also
  // releases the leases of a host clear for that long).
  const sweeps = broker.sweeps();
  await waitFor('sweeps past the cool-down', async () => Date.now() - reliefAt > COOLDOWN_MS + 1_000 && broker.sweeps() >= sweeps + 2, { timeoutMs: 60_000 });
  const mine = await leases('borrow-f');
  assert.deepEqual(mine.map((l) => l.state), ['active', 'active'], 'the leases of a host under pressure are not drained');
  assert.deepEqual(agents.commands.filter((c) => c.startsWith('detach borrow-f')), []);
});
