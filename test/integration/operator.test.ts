/** The operator's reads against a real nats-server: before any broker made the buckets, and after. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { startNatsServer, type NatsServer } from '../helpers/nats.js';
import { getLease, listHosts, listLeases } from '../../cli/operator.js';
import { openStores } from '../../shared/nats.js';

let server: NatsServer;
before(async () => {
  server = await startNatsServer();
});
after(async () => {
  await server.stop();
});

test('operator - reads answer "nothing" before the buckets exist, and find a lease by id after', async () => {
  assert.deepEqual(await listLeases(server.access), []);
  assert.deepEqual(await listHosts(server.access), []);
  await assert.rejects(getLease(server.access, 'l-0123456789ab'), /unknown lease 'l-0123456789ab'/);
  await assert.rejects(getLease(server.access, 'nope'), /not a lease id/);
  const nc = await connect({ servers: server.url });
  try {
    const stores = await openStores(nc);
    const now = Date.now();
    const lease = { id: 'l-0123456789ab', borrower: 'b', lender: 'a', sizeBytes: 64 * 1024 ** 2, state: 'requested', createdAt: now, updatedAt: now, history: [{ state: 'requested', at: now }], borrowerIqn: 'iqn.2026-11.io.rswap:b', borrowerAddress: '10.0.0.2' };
    await stores.leases.create(lease.id, JSON.stringify(lease));
  } finally {
    await nc.drain();
  }
  assert.equal((await getLease(server.access, 'l-0123456789ab')).borrower, 'b');
  await assert.rejects(getLease(server.access, 'l-ffffffffffff'), /unknown lease 'l-ffffffffffff'/);
  assert.equal((await listLeases(server.access)).length, 1);
});
