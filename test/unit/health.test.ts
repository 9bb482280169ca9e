import { test } from 'node:test';
import assert from 'node:assert/strict';
import { judge, startProbe } from '../../services/attacher/health.js';
import { waitFor } from '../../shared/wait.js';

test('health - a probe that failed means lost at once; one in flight is lost only after the replacement timeout', () => {
  assert.equal(judge({ startedAt: 0, done: true }, 1_000, 5_000), undefined, 'a read that came back is fine');
  assert.match(judge({ startedAt: 0, done: true, error: 'Input/output error' }, 1_000, 5_000)!, /read from the lender failed: Input\/output error/);
  assert.equal(judge({ startedAt: 0, done: false }, 4_999, 5_000), undefined, 'still waiting within the timeout');
  assert.match(judge({ startedAt: 0, done: false }, 5_000, 5_000)!, /no answer from the lender for 5s \(replacement timeout\)/);
});

test('health - a real probe (dd with O_DIRECT) that cannot read reports the lease lost', async () => {
  const missing = startProbe('/nonexistent/rswap-probe', 4096 * 16, Date.now());
  assert.equal(judge(missing, Date.now(), 5_000), undefined, 'undecided while the read runs');
  await waitFor('the probe done', async () => missing.done, { timeoutMs: 5_000, intervalMs: 20 });
  assert.ok(missing.error, 'a missing path is a failed read');
  assert.match(judge(missing, Date.now(), 5_000)!, /read from the lender failed/);
});
