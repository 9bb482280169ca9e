import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import pino from 'pino';
import { ask as askOn, startNatsServer, type NatsServer } from '../helpers/nats.js';
import { startBroker } from '../../services/broker/index.js';
import { HostStore } from '../../services/broker/hosts.js';
import { openStores } from '../../shared/nats.js';
import { getParsed, listParsed } from '../../shared/kv.js';
import { HostRecord, LeaseRecord } from '../../shared/schemas.js';
import { subjects } from '../../shared/subjects.js';
import { waitFor } from '../../shared/wait.js';

const MiB = 1024 ** 2;
let server: NatsServer;
let broker: Awaited<ReturnType<typeof startBroker>>;
let nc: NatsConnection;

before(async () => {
  process.env.RSWAP_LOG_LEVEL = 'silent';
  server = await startNatsServer();
  broker = await startBroker({ nats: server.url, insecure: true, host: 'broker-test' });
  nc = await connect({ servers: server.url });
});

after(async () => {
  await nc.drain();
  await broker.stop();
  await server.stop();
});

const ask = (subject: string, payload: string) => askOn(nc, subject, payload, 5_000);

async function hostRecords(): Promise<HostRecord[]> {
  return (await listParsed((await openStores(nc)).hosts, HostRecord)).map((e) => e.value);
}

test('broker - malformed input on every subject is refused with a reason and changes nothing', async () => {
  const cases: Array<[string, string, string, RegExp]> = [
    [subjects.surplus('host-a'), 'not json', 'RSWAP_E_BAD_MESSAGE', /not JSON/],
    [subjects.surplus('host-a'), JSON.stringify({ host: 'host-a', lendableBytes: '1GiB' }), 'RSWAP_E_BAD_MESSAGE', /lendableBytes/],
    [subjects.surplus('host-a'), JSON.stringify({ host: 'host-a', lendableBytes: -1 }), 'RSWAP_E_BAD_MESSAGE', /lendableBytes/],
    [subjects.surplus('host-a'), JSON.stringify({ host: 'host-a', lendableBytes: 2 ** 50 }), 'RSWAP_E_BAD_MESSAGE', /256TiB/],
    [subjects.pressure('host-b'), JSON.stringify({ host: 'host-b', neededBytes: 0 }), 'RSWAP_E_BAD_MESSAGE', /neededBytes/],
    [subjects.pressure('host-b'), JSON.stringify([1, 2]), 'RSWAP_E_BAD_MESSAGE', /invalid message/],
    [subjects.pressure('host-b'), JSON.stringify({ host: 'host-a', neededBytes: 64 * MiB }), 'RSWAP_E_SPOOFED_HOST', /host 'host-a' may not publish on 'rswap\.v1\.host\.host-b\.pressure'/],
    [subjects.announce('host-a'), JSON.stringify({ host: 'host-a', role: 'exporter', portal: 'nowhere', at: 1 }), 'RSWAP_E_BAD_MESSAGE', /portal/],
    [subjects.release, JSON.stringify({ leaseId: 'l-0123456789ab' }), 'RSWAP_E_UNKNOWN_LEASE', /unknown lease 'l-0123456789ab'/],
    [subjects.release, JSON.stringify({ leaseId: 'x; rm -rf /' }), 'RSWAP_E_BAD_MESSAGE', /lease id/],
  ];
  const rejectedBefore = broker.rejects.total();
  for (const [subject, payload, code, message] of cases) {
    const reply = await ask(subject, payload);
    assert.equal(reply.ok, false, `${subject} ${payload}`);
    assert.equal(reply.error?.code, code, `${subject} ${payload}`);
    assert.match(reply.error!.message, message);
  }
  assert.equal(broker.rejects.total() - rejectedBefore, cases.length);
  assert.deepEqual(await hostRecords(), [], 'no host record was written');
  // and the broker is still up: a valid offer is answered and recorded
  assert.equal((await ask(subjects.surplus('host-z'), JSON.stringify({ host: 'host-z', lendableBytes: 1024 }))).ok, true);
  assert.equal((await hostRecords()).find((h) => h.host === 'host-z')?.offer?.lendableBytes, 1024);
});

test('broker - an event from a plain NATS client, as docs/protocol.md shows it, is handled', async () => {
  // Exactly the protocol doc's example: no headers, no rswap code.
  nc.publish('rswap.v1.host.host-p.surplus', '{"host":"host-p","lendableBytes":1073741824,"lentBytes":0}');
  await nc.flush();
  const record = await waitFor('the offer recorded', async () => (await hostRecords()).find((h) => h.host === 'host-p' && h.offer), { timeoutMs: 10_000, intervalMs: 50 });
  assert.equal(record.offer?.lendableBytes, 1024 ** 3);
});

test('broker - pressure from a host without an attacher creates no lease', async () => {
  const reply = await ask(subjects.pressure('host-q'), JSON.stringify({ host: 'host-q', neededBytes: 64 * MiB }));
  assert.equal(reply.ok, false);
  assert.match(reply.error!.message, /no attacher announced/);
  assert.deepEqual(await listParsed((await openStores(nc)).leases, LeaseRecord), []);
});

test('kv - two brokers cannot promise the same bytes twice (CAS on the lender record)', async () => {
  const now = Date.now();
  const options = { offerTtlMs: 30_000, announceTtlMs: 60_000, minLeaseBytes: 64 * MiB, maxLeaseBytes: 1024 * MiB };
  const second = await connect({ servers: server.url });
  try {
    const [a, b] = [new HostStore((await openStores(nc)).hosts), new HostStore((await openStores(second)).hosts)];
    await a.recordOffer({ host: 'host-l', lendableBytes: 300 * MiB, lentBytes: 0, deficitBytes: 0, source: 'inject' }, now);
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b).reserve('host-l', `l-00000000000${i}`, 256 * MiB, now, options)),
    );
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1, 'exactly one reservation fits');
    assert.ok(results.filter((r) => r.status === 'rejected').every((r) => /has 44MiB free, lease needs 256MiB/.test(String((r as PromiseRejectedResult).reason))));
    const record = await getParsed((await openStores(nc)).hosts, 'host-l', HostRecord);
    assert.equal(Object.values(record!.value.reservations).reduce((s, v) => s + v, 0), 256 * MiB);
  } finally {
    await second.drain();
  }
});
