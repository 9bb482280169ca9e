/**
 * A broker knows the fleet's offers whatever the start order: on a real nats-server, a real
 * monitor watching a real memory cgroup (it lends), a broker that starts after it, restarts, and
 * finds every offer stale. The exporter and attacher are scripted (test/helpers/agents.ts); the
 * same with every real agent on the testbed is test/e2e/start-order.test.ts. Run as root (cgroups).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startNatsServer, type NatsServer } from '../helpers/nats.js';
import { scriptedAgents } from '../helpers/agents.js';
import { startBroker } from '../../services/broker/index.js';
import { startMonitor } from '../../services/monitor/index.js';
import { createMemoryCgroup, type MemoryCgroup } from '../../shared/cgroup.js';
import { openStores } from '../../shared/nats.js';
import { getParsed, listParsed } from '../../shared/kv.js';
import { HostRecord, LeaseRecord } from '../../shared/schemas.js';
import { subjects } from '../../shared/subjects.js';
import { waitFor } from '../../shared/wait.js';

const MiB = 1024 ** 2;
const OFFER_TTL_MS = 3_000;
let server: NatsServer;
let nc: NatsConnection;
let cgroup: MemoryCgroup;
let monitor: Awaited<ReturnType<typeof startMonitor>> | undefined;
let broker: Awaited<ReturnType<typeof startBroker>> | undefined;
/** lender-m's offers as published: when this test heard each, and its own `at` (its reading's time). */
const offers: Array<{ heardAt: number; at: number }> = [];
let solicits = 0;

const startTheBroker = () => startBroker({ nats: server.url, insecure: true, host: 'broker-offers', offerTtlMs: OFFER_TTL_MS, sweepIntervalMs: 60_000 });
const pressure = async (host: string) =>
  (await nc.request(subjects.pressure(host), JSON.stringify({ host, neededBytes: 64 * MiB, at: Date.now(), source: 'inject' }), { timeout: 30_000 })).json<{ ok: boolean; leaseId?: string; state?: string }>();
const leaseOf = async (borrower: string) =>
  (await listParsed((await openStores(nc)).leases, LeaseRecord)).map((e) => e.value).find((l) => l.borrower === borrower);
/**
 * The broker has recorded lender-m's exporter announce and an offer, both sent at or after `since`
 * (an offer resent to a hello carries its reading's time, which may be older): what a pressure needs
 * to be served at once. Awaited, not assumed to take under 1 s.
 */
const lenderRecordedSince = async (since: number) => {
  const sent = offers.find((o) => o.heardAt >= since);
  if (!sent) return false;
  const host = (await getParsed((await openStores(nc)).hosts, 'lender-m', HostRecord))?.value;
  return (host?.exporter?.at ?? 0) >= since && (host?.offer?.at ?? 0) >= sent.at;
};

before(async () => {
  process.env.RSWAP_LOG_LEVEL = 'silent';
  server = await startNatsServer();
  nc = await connect({ servers: server.url });
  nc.subscribe(subjects.surplus('lender-m'), { callback: (_e, msg) => void offers.push({ heardAt: Date.now(), at: msg.json<{ at: number }>().at }) });
  nc.subscribe(subjects.brokerSolicit, { callback: () => void (solicits += 1) });
  cgroup = await createMemoryCgroup(`rswap-test-offers-${process.pid}`, 1024 * MiB);
  // The monitor sends an offer on its first sample and then only when asked: no step is big
  // enough and the refresh is 10 minutes away, so whatever the broker learns later, it asked for.
  monitor = await startMonitor({
    nats: server.url, insecure: true,
    host: 'lender-m',
    scope: `cgroup:${cgroup.path}`,
    reserveBytes: 64 * MiB,
    surplusStepBytes: 1024 ** 4,
    surplusRefreshMs: 600_000,
    exporterStateDir: `/tmp/rswap-test-offers-${process.pid}`,
  });
  scriptedAgents(nc, ['lender-m', 'borrow-m', 'borrow-n', 'borrow-o']);
  await waitFor('the monitor\'s first offer, with no broker listening', async () => offers.length > 0, { timeoutMs: 30_000 });
});

after(async () => {
  await broker?.stop();
  await monitor?.stop();
  await nc?.drain();
  await server?.stop();
  await cgroup?.remove();
});

test('offers - a broker that starts after the monitors lends at once: the monitor answers its hello', async () => {
  const before = offers.length;
  const startedAt = Date.now();
  broker = await startTheBroker();
  await waitFor('the monitor resending its offer to the broker\'s hello', async () => offers.length > before, { timeoutMs: 30_000 });
  await waitFor('the broker recording the answers to its hello', () => lenderRecordedSince(startedAt), { timeoutMs: 30_000 });
  // The scenario: the pressure comes 1 s after the broker started (later only if the machine is so
  // loaded that recording the answers took longer).
  await new Promise((r) => setTimeout(r, Math.max(0, startedAt + 1_000 - Date.now())));
  const reply = await pressure('borrow-m');
  assert.equal(reply.ok, true);
  assert.equal(reply.state, 'active', `a lease came up for the pressure: ${JSON.stringify(reply)}`);
  assert.equal((await leaseOf('borrow-m'))?.lender, 'lender-m');
});

test('offers - a pressure that finds every offer stale solicits fresh ones and is served while it lasts', async () => {
  const stores = await openStores(nc);
  await waitFor('the offer stale by the broker\'s rule', async () => {
    const at = (await getParsed(stores.hosts, 'lender-m', HostRecord))?.value.offer?.at ?? 0;
    return Date.now() - at > OFFER_TTL_MS;
  }, { timeoutMs: 30_000 });
  const solicitsBefore = solicits;
  const reply = await pressure('borrow-n');
  assert.equal(reply.ok, true);
  assert.equal(reply.leaseId, undefined, 'no lender right then: the broker cannot serve it at once');
  const lease = await waitFor('a lease for the waiting pressure', async () => {
    const l = await leaseOf('borrow-n');
    return l?.state === 'active' ? l : undefined;
  }, { timeoutMs: 30_000 });
  assert.equal(lease.lender, 'lender-m');
  assert.ok(solicits > solicitsBefore, 'the broker solicited offers');
});

test('offers - a broker restarted mid-run lends 1 s after it is back', async () => {
  await broker!.stop();
  const startedAt = Date.now();
  broker = await startTheBroker();
  await waitFor('the broker recording the answers to its hello', () => lenderRecordedSince(startedAt), { timeoutMs: 30_000 });
  await new Promise((r) => setTimeout(r, Math.max(0, startedAt + 1_000 - Date.now())));
  const reply = await pressure('borrow-o');
  assert.equal(reply.state, 'active', `a lease came up: ${JSON.stringify(reply)}`);
});
