import { test } from 'node:test';
import assert from 'node:assert/strict';
import { waitFor } from '../../shared/wait.js';

test('wait - returns the first value the probe gives, polling until then', async () => {
  let calls = 0;
  const value = await waitFor('three calls', async () => (++calls >= 3 ? { calls } : undefined), { timeoutMs: 1_000, intervalMs: 5 });
  assert.deepEqual(value, { calls: 3 });
});

test('wait - names what never became ready, and a failing probe ends the wait at once', async () => {
  await assert.rejects(waitFor('the moon', async () => false, { timeoutMs: 30, intervalMs: 5 }), /^Error: the moon not ready within 30ms$/);
  let calls = 0;
  await assert.rejects(waitFor('x', async () => { calls += 1; throw new Error('probe broke'); }, { timeoutMs: 1_000 }), /probe broke/);
  assert.equal(calls, 1);
});

test('wait - a probe that never answers ends the wait at its deadline, saying so', async () => {
  const started = Date.now();
  await assert.rejects(waitFor('a hung read', () => new Promise<boolean>(() => undefined), { timeoutMs: 50 }), /^Error: a hung read not ready within 50ms \(a check hung: no answer 50ms past the deadline\)$/);
  assert.ok(Date.now() - started < 5_000, 'it did not wait for the probe');
});
