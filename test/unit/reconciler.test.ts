import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decide, loggedInAtLender, stuckAfterMs, type ReconcilerOptions } from '../../services/broker/reconciler.js';
import { transition } from '../../services/broker/states.js';
import { LEASE_STATES } from '../../shared/lease-states.js';
import type { LeaseRecord, LeaseState } from '../../shared/schemas.js';

const o: ReconcilerOptions = {
  exportTimeoutMs: 30_000, attachTimeoutMs: 90_000, detachTimeoutMs: 300_000, unexportTimeoutMs: 30_000,
  borrowerTimeoutMs: 120_000, offerTtlMs: 30_000, announceTtlMs: 60_000, minLeaseBytes: 64 * 1024 ** 2, maxLeaseBytes: 4 * 1024 ** 3,
};
const now = 1_000_000;
const lease = (state: LeaseState, extra: Partial<LeaseRecord> = {}): LeaseRecord => ({
  id: 'l-0123456789ab', borrower: 'b', lender: 'a', sizeBytes: 64 * 1024 ** 2, state, createdAt: now - 10, updatedAt: now - 10,
  history: [{ state: 'requested', at: now - 10 }], borrowerIqn: 'iqn.2026-11.io.rswap:b', borrowerAddress: '198.18.0.12', driver: 'me', ...extra,
});
const facts = { me: 'me', now, borrowerSeenAt: now - 1_000 };

test('reconciler - each state takes its step from the table, up and down', () => {
  assert.deepEqual(decide(lease('requested'), facts, o), { do: 'reserve' });
  assert.deepEqual(decide(lease('exporting'), facts, o), { do: 'export' });
  assert.deepEqual(decide(lease('exported'), facts, o), { do: 'move', to: 'attaching' });
  assert.deepEqual(decide(lease('attaching'), facts, o), { do: 'attach' });
  assert.deepEqual(decide(lease('active'), facts, o), { do: 'rest', why: 'active' });
  assert.deepEqual(decide(lease('draining'), facts, o), { do: 'release' });
  for (const state of ['released', 'failed'] as const) assert.equal(decide(lease(state), facts, o).do, 'rest');
  // Every state's step is one the reconciler knows, and every state that is mid-step is bounded.
  for (const [state, row] of Object.entries(LEASE_STATES)) {
    const midStep = !['active', 'released', 'failed'].includes(state);
    assert.equal(row.boundBy.length > 0, midStep, `${state}: bounded iff mid-step`);
    assert.equal(Number.isFinite(stuckAfterMs(state as LeaseState, o)), midStep);
  }
});

test('reconciler - an end asked for drains an active or just-exported lease; one not asked for rests', () => {
  const end = { reason: 'pressure clear for 60s', at: now - 5 };
  assert.deepEqual(decide(lease('active', { end }), facts, o), { do: 'move', to: 'draining', reason: 'pressure clear for 60s' });
  assert.deepEqual(decide(lease('exported', { end }), facts, o), { do: 'move', to: 'draining', reason: 'pressure clear for 60s' });
  // Draining acts on it: the end goes, and a refused swap-off back to active leaves none to redo.
  const draining = transition(lease('active', { end }), 'draining', now, { reason: end.reason });
  assert.equal(draining.end, undefined);
  assert.equal(decide(transition(draining, 'active', now), facts, o).do, 'rest');
  // Asked while coming up: kept through the bring-up, acted on once active.
  const up = transition(transition(lease('exported', { end }), 'attaching', now), 'active', now);
  assert.deepEqual(up.end, end);
});

test('reconciler - a mid-step lease belongs to its driver until overdue, then exactly to whoever claims it', () => {
  const theirs = lease('attaching', { driver: 'other', updatedAt: now - 1_000 });
  assert.equal(decide(theirs, facts, o).do, 'rest', 'another broker is on it');
  assert.equal(decide({ ...theirs, updatedAt: now - stuckAfterMs('attaching', o) - 1 }, facts, o).do, 'claim', 'overdue: take it over');
  assert.equal(decide({ ...theirs, driver: undefined }, facts, o).do, 'rest', 'a record with no driver is not ours either');
  // Resting states belong to no broker: any broker acts on an end asked for, its CAS decides.
  assert.equal(decide(lease('active', { driver: 'other', end: { reason: 'x', at: now } }), facts, o).do, 'move');
  // This broker's own lease continues at once (a step that threw mid-way is redone by the sweep).
  assert.equal(decide(lease('exporting', { updatedAt: now - 1 }), facts, o).do, 'export');
});

test("reconciler - a borrower silent past the timeout by the broker's clock is gone; unknown is not gone", () => {
  const silent = decide(lease('active'), { ...facts, borrowerSeenAt: now - o.borrowerTimeoutMs }, o);
  assert.deepEqual(silent, { do: 'fail', reason: 'borrower b silent for 120s', borrowerGone: true });
  assert.equal(decide(lease('active'), { me: 'me', now }, o).do, 'rest', 'no announce on record: no judgement');
  assert.equal(decide(lease('active'), { ...facts, borrowerSeenAt: now - o.borrowerTimeoutMs + 1 }, o).do, 'rest');
});

test('reconciler - a silent borrower still logged in at its lender is not gone: the lease rests, even with an end asked for', () => {
  const silent = { ...facts, borrowerSeenAt: now - o.borrowerTimeoutMs, loggedInAtLender: true };
  const kept = decide(lease('active'), silent, o);
  assert.equal(kept.do, 'rest');
  assert.match(kept.do === 'rest' ? kept.why : '', /borrower b silent for 120s but logged in at /);
  assert.equal(kept.do === 'rest' && kept.warn, true, 'worth a warning');
  assert.equal(decide(lease('active', { end: { reason: 'clear', at: now } }), silent, o).do, 'rest', 'a swap-off cannot be asked of it');
  assert.equal(decide(lease('active'), { ...silent, loggedInAtLender: false }, o).do, 'fail', 'once its session is gone, it is');
});

test("reconciler - logged in at the lender: the lease listed in the lender's own announce, while that announce is fresh", () => {
  const l = lease('active');
  const lender = (at: number, sessions?: string[]) => ({ host: l.lender, reservations: {}, exporter: { portal: '198.18.0.11:3260', at, ...(sessions ? { sessions } : {}) } });
  assert.equal(loggedInAtLender(l, lender(now, [l.id]), now, o.announceTtlMs), true);
  assert.equal(loggedInAtLender(l, lender(now - o.announceTtlMs - 1, [l.id]), now, o.announceTtlMs), false, 'a silent lender vouches for nothing');
  assert.equal(loggedInAtLender(l, lender(now, ['l-000000000000']), now, o.announceTtlMs), false, 'another lease listed');
  assert.equal(loggedInAtLender(l, lender(now), now, o.announceTtlMs), false, 'an exporter that sends no sessions');
  assert.equal(loggedInAtLender(l, undefined, now, o.announceTtlMs), false, 'no record');
});
