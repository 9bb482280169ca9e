/** Which errors opening the KV buckets waits out, and which it reports at once. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stillStarting } from '../../shared/nats.js';

test('nats - opening the buckets waits out JetStream starting (no answer, temporarily unavailable, no peers yet); an agent also waits for the broker to create them', () => {
  for (const create of [true, false]) {
    assert.ok(stillStarting(new Error('TimeoutError: timeout'), create), 'a new cluster answers nothing until it has a meta leader');
    assert.ok(stillStarting(new Error('JetStream system temporarily unavailable'), create));
    assert.ok(stillStarting(new Error('insufficient resources: no suitable peers for placement'), create));
    assert.ok(stillStarting(new Error('503 no responders'), create));
  }
  assert.ok(stillStarting(new Error('stream not found'), false), 'an agent: no broker has created the bucket yet');
  assert.ok(stillStarting(new Error('bucket not found'), false));
  assert.equal(stillStarting(new Error('stream not found'), true), undefined, 'the broker creates: not found is not something to wait for');
});

test('nats - errors that will not go away are not waited for: permissions, other settings, anything else', () => {
  for (const create of [true, false]) {
    assert.equal(stillStarting(new Error("Permissions Violation for Publish to \"$JS.API.STREAM.CREATE.KV_rswap-leases\""), create), undefined);
    assert.equal(stillStarting(new Error('stream name already in use with a different configuration'), create), undefined);
    assert.equal(stillStarting(new Error('replicas > 1 not supported in non-clustered mode'), create), undefined);
  }
});
