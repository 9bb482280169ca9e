/**
 * The control plane on a three-node NATS cluster (real nats-servers, mutual-TLS routes, the
 * identities and TLS of `rswap auth`): the KV buckets at three replicas outlive the loss of any
 * node, the KV stream's leader included, and a node that comes back catches up.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pino from 'pino';
import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { connectNats, openStores, startNatsCluster, type NatsCluster, type Stores } from '../../shared/nats.js';
import { buckets } from '../../shared/subjects.js';
import { waitFor } from '../../shared/wait.js';

const log = pino({ level: 'silent' });
let cluster: NatsCluster;
let broker: NatsConnection;
let host: NatsConnection;
let stores: Stores;

before(async () => {
  cluster = await startNatsCluster({ nodes: 3, hosts: ['host-a'] });
  broker = await connectNats(cluster.as('broker'), 'test-broker', log, { role: 'broker', name: 'broker' });
  // The cluster elects a JetStream meta leader a moment after the nodes are up; until it has, a
  // create gets no answer. The broker's openStores waits for it rather than failing (a broker that
  // starts with its cluster must not exit): asked the moment the nodes are up, it resolves.
  stores = await openStores(broker, { create: true, replicas: 3 });
  host = await connectNats(cluster.as('host-a'), 'test-host-a', log, { role: 'host', name: 'host-a' });
});

after(async () => {
  await host?.close();
  await broker?.close();
  await cluster?.stop();
});

/**
 * A request that was on its way through a dead node times out; the caller asks again, as rswap's
 * services do (a KV read is retried on the next event or reconcile round).
 */
const retried = <T>(what: string, op: () => Promise<T>) => waitFor(what, async () => op().catch(() => undefined), { timeoutMs: 60_000, intervalMs: 250 });

async function leaseStream() {
  const jsm = await jetstreamManager(broker);
  return jsm.streams.info(`KV_${buckets.leases}`);
}

test('cluster - nats.conf has mutual-TLS routes to every node, and the buckets run at three replicas', async () => {
  const conf = await readFile(join(cluster.authDir, 'nats.conf'), 'utf8');
  assert.match(conf, /cluster \{\n {2}name: "rswap"\n {2}tls \{ [^}]*ca_file: [^}]*verify: true/);
  assert.equal((conf.match(/nats-route:\/\/127\.0\.0\.1:\d+/g) ?? []).length, 3);
  const info = await leaseStream();
  assert.equal(info.config.num_replicas, 3);
  await waitFor('a leader and two current replicas', async () => {
    const c = (await leaseStream()).cluster;
    return c?.leader && (c.replicas ?? []).filter((r) => r.current).length === 2 ? c : undefined;
  }, { timeoutMs: 30_000, intervalMs: 250 });
});

test('cluster - kill -9 of the KV stream\'s leader: writes go on through another node, readers see them, and the node catches up when it is back', async () => {
  await stores.leases.put('before', JSON.stringify({ n: 1 }));
  const leader = (await leaseStream()).cluster!.leader!;
  const index = cluster.names.indexOf(leader);
  assert.ok(index >= 0, `the leader ${leader} is one of ${cluster.names.join(', ')}`);
  await cluster.kill(index);
  // A new leader is elected among the two left; the broker's connection moves to a live node.
  const revision = await waitFor('a write after the leader died', async () => stores.leases.put('after', JSON.stringify({ n: 2 })).catch(() => undefined), { timeoutMs: 60_000, intervalMs: 250 });
  assert.ok(revision > 0);
  const newLeader = await retried('a new leader', async () => (await leaseStream()).cluster?.leader);
  assert.notEqual(newLeader, leader, 'another node leads');
  const hostStores = await retried('the host opens the buckets', () => openStores(host, { create: false, log }));
  const seen = await retried('the host reads the write', async () => (await hostStores.leases.get('after'))?.string());
  assert.equal(seen, JSON.stringify({ n: 2 }));
  assert.equal(await retried('the host reads the older record', async () => (await hostStores.leases.get('before'))?.string()), JSON.stringify({ n: 1 }), 'nothing written before the loss is lost');
  await cluster.start(index);
  const caughtUp = await retried(`${leader} back and current`, async () => {
    const replica = (await leaseStream()).cluster?.replicas?.find((r) => r.name === leader);
    return replica?.current ? replica : undefined;
  });
  assert.equal(caughtUp!.lag ?? 0, 0);
});

test('cluster - one node down, a client given every URL connects and works; the broker still creates nothing twice', async () => {
  await cluster.kill(0);
  try {
    const late = await connectNats(cluster.as('host-a'), 'test-late', log, { role: 'host', name: 'host-a' });
    try {
      const lateStores = await openStores(late, { create: false, log });
      assert.equal(await retried('a late client reads', async () => (await lateStores.leases.get('after'))?.string()), JSON.stringify({ n: 2 }));
    } finally {
      await late.close();
    }
    // Creating the buckets again (a second broker starting) keeps what they hold.
    const again = await retried('the buckets opened again for writing', () => openStores(broker, { create: true, replicas: 3 }));
    assert.equal(await retried('the old record read', async () => (await again.leases.get('before'))?.string()), JSON.stringify({ n: 1 }));
  } finally {
    await cluster.start(0);
  }
});
