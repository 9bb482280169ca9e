/** KvMirror on a real nats-server: the broker's one-round-trip list of a whole bucket. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import { z } from 'zod';
import { KvMirror, listParsed } from '../../shared/kv.js';
import { startNatsServer, type NatsServer } from '../helpers/nats.js';

const Item = z.object({ n: z.number() });
let server: NatsServer;
let nc: NatsConnection;
let other: NatsConnection;
let kv: KV;
let kvOther: KV;

before(async () => {
  server = await startNatsServer();
  nc = await connect({ servers: server.url });
  other = await connect({ servers: server.url });
  kv = await new Kvm(nc).create('mirror-test', { history: 3 });
  kvOther = await new Kvm(other).open('mirror-test');
});

after(async () => {
  await nc?.close();
  await other?.close();
  await server?.stop();
});

const sorted = (items: Array<{ key: string; value: { n: number } }>) => items.map((i) => `${i.key}=${i.value.n}`).sort();

test('kv mirror - an empty bucket, then every write, update and delete, seen by the very next list', async () => {
  const mirror = new KvMirror(kv, Item);
  assert.deepEqual(await mirror.list(), []);
  for (let i = 0; i < 50; i += 1) await kvOther.put(`k${i}`, JSON.stringify({ n: i }));
  assert.equal((await mirror.list()).length, 50, 'writes from another connection, listed at once');
  await kvOther.put('k7', JSON.stringify({ n: 700 }));
  await kvOther.delete('k8');
  await kvOther.purge('k9');
  await kvOther.put('bad', 'not json');
  await kvOther.put('wrong', JSON.stringify({ n: 'text' }));
  const listed = await mirror.list();
  assert.deepEqual(sorted(listed), sorted(await listParsed(kv, Item)), 'the same answer as reading every key');
  assert.equal(listed.find((i) => i.key === 'k7')?.value.n, 700);
  assert.ok(!listed.some((i) => ['k8', 'k9', 'bad', 'wrong'].includes(i.key)), 'deleted, purged and unparsable keys are left out');
  await kvOther.put('wrong', JSON.stringify({ n: 1 }));
  assert.equal((await mirror.list()).find((i) => i.key === 'wrong')?.value.n, 1, 'a key that parses again comes back');
});

test('kv mirror - a mirror opened on a full bucket lists it all, with revisions', async () => {
  const mirror = new KvMirror(kv, Item);
  const listed = await mirror.list();
  const direct = await listParsed(kv, Item);
  assert.deepEqual(
    listed.map((i) => `${i.key}@${i.revision}`).sort(),
    direct.map((i) => `${i.key}@${i.revision}`).sort(),
  );
});

test('kv mirror - when the watch cannot catch up, list reads key by key', async () => {
  const closed = await connect({ servers: server.url });
  const kvClosed = await new Kvm(closed).open('mirror-test');
  const mirror = new KvMirror(kvClosed, Item, 200);
  assert.ok((await mirror.list()).length > 0);
  // A stalled watch is modelled by a status that reports a revision the bucket never reaches.
  const status = kvClosed.status.bind(kvClosed);
  kvClosed.status = async () => {
    const s = await status();
    s.streamInfo.state.last_seq += 1_000;
    return s;
  };
  assert.deepEqual(sorted(await mirror.list()), sorted(await listParsed(kv, Item)), 'the fallback gives the same answer');
  await closed.close();
});

test('kv mirror - a bucket deleted and made again (revisions go backwards) is listed as it is now, not as it was', async () => {
  const kvm = new Kvm(nc);
  const first = await kvm.create('mirror-reborn', { history: 1 });
  const mirror = new KvMirror(first, Item);
  for (let i = 0; i < 20; i += 1) await first.put(`old${i}`, JSON.stringify({ n: i }));
  assert.equal((await mirror.list()).length, 20);
  await first.destroy();
  const again = await new Kvm(other).create('mirror-reborn', { history: 1 });
  await again.put('new0', JSON.stringify({ n: 1 }));
  assert.deepEqual(sorted(await mirror.list()), ['new0=1'], 'nothing of the old bucket');
  assert.equal(mirror.resyncs, 1);
  await again.put('new1', JSON.stringify({ n: 2 }));
  assert.deepEqual(sorted(await mirror.list()), ['new0=1', 'new1=2'], 'a new watch follows the new bucket');
});
