import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HISTORY_LIMIT, canTransition, transition } from '../../services/broker/states.js';
import { statesAccepting } from '../../shared/lease-states.js';
import type { LeaseRecord } from '../../shared/schemas.js';

const lease: LeaseRecord = {
  id: 'l-0123456789ab', borrower: 'b', lender: 'a', sizeBytes: 64 * 1024 ** 2, state: 'requested',
  createdAt: 1, updatedAt: 1, history: [{ state: 'requested', at: 1 }], borrowerIqn: 'iqn.2026-11.io.rswap:b', borrowerAddress: '198.18.0.12',
};

test('states - the happy path and the history it leaves', () => {
  let l = lease;
  for (const to of ['exporting', 'exported', 'attaching', 'active', 'draining', 'released'] as const) l = transition(l, to, 2);
  assert.equal(l.state, 'released');
  assert.deepEqual(l.history.map((h) => h.state), ['requested', 'exporting', 'exported', 'attaching', 'active', 'draining', 'released']);
});

test('states - illegal steps are refused with the current state in the message', () => {
  assert.throws(() => transition(lease, 'active', 2), /lease l-0123456789ab is requested; it cannot become active/);
  const released = { ...lease, state: 'released' as const };
  assert.throws(() => transition(released, 'failed', 2), /RSWAP_E_ILLEGAL_STATE|cannot become failed/);
  assert.equal(canTransition('failed', 'requested'), false);
});

test('states - failure is allowed from every live state and carries its reason', () => {
  for (const from of ['requested', 'exporting', 'exported', 'attaching', 'active', 'draining'] as const) {
    const failed = transition({ ...lease, state: from }, 'failed', 3, { reason: 'boom' });
    assert.equal(failed.reason, 'boom');
    assert.equal(failed.history.at(-1)?.reason, 'boom');
  }
  assert.equal(canTransition('draining', 'active'), true);
});

test('states - a lease that flaps for hours keeps a bounded record: the first step, the latest ones, and a count', () => {
  let l = transition(transition(transition(transition(lease, 'exporting', 2), 'exported', 3), 'attaching', 4), 'active', 5);
  const longReason = `swap-off would not fit: ${'x'.repeat(5_000)}`;
  // A refused swap-off retried every 5 s for 10 hours: 7,200 round trips active -> draining -> active.
  for (let i = 0; i < 7_200; i += 1) l = transition(transition(l, 'draining', 10 + i, { reason: 'pressure clear for 60s' }), 'active', 10 + i, { reason: longReason });
  assert.equal(l.history.length, HISTORY_LIMIT);
  assert.equal(l.history[0]!.state, 'requested', 'the first step stays');
  assert.equal(l.history.at(-1)!.state, 'active');
  assert.equal(l.historyDropped, 5 + 2 * 7_200 - HISTORY_LIMIT, 'every dropped step is counted');
  assert.ok(l.reason!.length <= 500 && l.history.every((h) => (h.reason ?? '').length <= 500), 'reasons are cut');
  assert.ok(JSON.stringify(l).length < 64 * 1024, `the record stays under 64 KiB: ${JSON.stringify(l).length} bytes`);
});

test('states - one table: the agents accept each command only in the states the broker sends it in', () => {
  assert.deepEqual(statesAccepting('export'), ['exporting', 'exported', 'attaching']);
  assert.deepEqual(statesAccepting('attach'), ['attaching']);
  assert.deepEqual(statesAccepting('detach'), ['draining', 'released', 'failed']);
  assert.deepEqual(statesAccepting('unexport'), ['draining', 'released', 'failed']);
  assert.equal(statesAccepting('unexport').includes('active'), false, 'no unexport of an active lease');
});
