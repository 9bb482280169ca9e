import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ROOT_CONTEXT } from '@opentelemetry/api';
import { UnservedDemand, type Unserved } from '../../services/broker/demand.js';

const MiB = 1024 ** 2;
const pressure = (host: string, receivedAt: number, neededBytes = 64 * MiB): Unserved => ({
  event: { host, neededBytes, at: receivedAt, source: 'inject' },
  at: receivedAt,
  receivedAt,
  context: ROOT_CONTEXT,
});

test('demand - an unserved pressure solicits offers at once, then at most once per interval', () => {
  let solicits = 0;
  const demand = new UnservedDemand({ ttlMs: 10_000, solicitEveryMs: 2_000 }, () => (solicits += 1));
  demand.add(pressure('b', 1_000), 1_000);
  assert.equal(solicits, 1, 'the first one asks at once');
  demand.add(pressure('c', 1_500), 1_500);
  demand.add(pressure('b', 2_900), 2_900);
  assert.equal(solicits, 1, 'not again within the interval');
  demand.add(pressure('b', 3_000), 3_000);
  assert.equal(solicits, 2);
});

test('demand - one pressure per borrower, the newest; taken oldest first and then forgotten', () => {
  const demand = new UnservedDemand({ ttlMs: 10_000, solicitEveryMs: 2_000 }, () => {});
  demand.add(pressure('b', 1_000, 64 * MiB), 1_000);
  demand.add(pressure('c', 1_100), 1_100);
  demand.add(pressure('b', 1_200, 128 * MiB), 1_200);
  const taken = demand.take(1_300);
  assert.deepEqual(taken.map((p) => [p.event.host, p.event.neededBytes / MiB]), [['c', 64], ['b', 128]]);
  assert.equal(demand.size, 0);
  assert.deepEqual(demand.take(1_400), []);
});

test('demand - relief drops a waiting pressure; one past its time is dropped, retries included', () => {
  const demand = new UnservedDemand({ ttlMs: 10_000, solicitEveryMs: 2_000 }, () => {});
  demand.add(pressure('b', 1_000), 1_000);
  demand.add(pressure('c', 1_000), 1_000);
  demand.drop('b');
  assert.deepEqual(demand.take(2_000).map((p) => p.event.host), ['c']);
  // A retry that still finds no lender comes back with its first arrival time: it cannot live forever.
  demand.add(pressure('c', 1_000), 9_000);
  assert.equal(demand.size, 1);
  demand.add(pressure('c', 1_000), 11_001);
  assert.deepEqual(demand.take(11_001), []);
  demand.add(pressure('d', 1_000), 1_000);
  assert.deepEqual(demand.take(11_001), [], 'expired while waiting');
});
