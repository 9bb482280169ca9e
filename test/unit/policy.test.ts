import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseLender, freeBytes, reservationEnded } from '../../services/broker/policy.js';
import type { HostRecord } from '../../shared/schemas.js';

const MiB = 1024 ** 2;
const now = 1_000_000;
const options = { offerTtlMs: 30_000, announceTtlMs: 60_000, minLeaseBytes: 64 * MiB, maxLeaseBytes: 1024 * MiB };

function lender(host: string, lendable: number, extra: Partial<HostRecord> = {}): HostRecord {
  return { host, exporter: { portal: '198.18.0.11:3260', at: now }, offer: { lendableBytes: lendable, lentBytes: 0, deficitBytes: 0, at: now }, reservations: {}, ...extra };
}

test('policy - most free capacity wins, ties by host id', () => {
  const hosts = [lender('a', 300 * MiB), lender('c', 500 * MiB), lender('b', 500 * MiB)];
  assert.deepEqual(chooseLender(hosts, 'x', 256 * MiB, now, options), { lender: 'b', sizeBytes: 256 * MiB });
});

test('policy - reservations count against the offer; stale offers and silent exporters are skipped', () => {
  const reserved = lender('a', 600 * MiB, { reservations: { 'l-000000000001': 500 * MiB } });
  const stale = lender('b', 900 * MiB, { offer: { lendableBytes: 900 * MiB, lentBytes: 0, deficitBytes: 0, at: now - 31_000 } });
  const silent = lender('c', 900 * MiB, { exporter: { portal: '198.18.0.13:3260', at: now - 61_000 } });
  assert.equal(freeBytes(reserved, now, options), 100 * MiB);
  assert.deepEqual(chooseLender([reserved, stale, silent], 'x', 256 * MiB, now, options), { lender: 'a', sizeBytes: 100 * MiB });
});

test('policy - never the borrower itself, never below the minimum lease', () => {
  assert.ok('reason' in chooseLender([lender('x', 900 * MiB)], 'x', 256 * MiB, now, options));
  assert.ok('reason' in chooseLender([lender('a', 63 * MiB)], 'x', 256 * MiB, now, options));
});

test('policy - demand is rounded up to a MiB and clamped to [min, max]', () => {
  const hosts = [lender('a', 4096 * MiB)];
  assert.equal((chooseLender(hosts, 'x', 1, now, options) as { sizeBytes: number }).sizeBytes, 64 * MiB);
  assert.equal((chooseLender(hosts, 'x', 100 * MiB + 1, now, options) as { sizeBytes: number }).sizeBytes, 101 * MiB);
  assert.equal((chooseLender(hosts, 'x', 3000 * MiB, now, options) as { sizeBytes: number }).sizeBytes, 1024 * MiB);
});

test('policy - already lent bytes reported by the lender are added back', () => {
  const h = lender('a', 100 * MiB, { offer: { lendableBytes: 100 * MiB, lentBytes: 256 * MiB, deficitBytes: 0, at: now }, reservations: { 'l-000000000001': 256 * MiB } });
  assert.equal(freeBytes(h, now, options), 100 * MiB);
});

test('policy - an excluded lender (the one reclaiming) is never chosen', () => {
  const hosts = [lender('a', 900 * MiB), lender('b', 200 * MiB)];
  assert.deepEqual(chooseLender(hosts, 'x', 256 * MiB, now, options, new Set(['a'])), { lender: 'b', sizeBytes: 200 * MiB });
  assert.ok('reason' in chooseLender(hosts, 'x', 256 * MiB, now, options, new Set(['a', 'b'])));
});

test('policy - a reservation goes back only once the lease ended and its lender no longer serves it', () => {
  const ended = { state: 'failed', updatedAt: now - 1_000 };
  const serving = (ids: string[], at = now) => lender('a', 0, { exporter: { portal: '198.18.0.11:3260', at, serving: ids } });
  assert.equal(reservationEnded(serving([]), 'l-000000000001', { state: 'active', updatedAt: now }), false, 'a live lease keeps its bytes');
  assert.equal(reservationEnded(serving(['l-000000000001']), 'l-000000000001', ended), false, 'the lender still holds its target');
  assert.equal(reservationEnded(serving([], now - 2_000), 'l-000000000001', ended), false, 'said before the lease ended: not yet evidence');
  assert.equal(reservationEnded(serving([]), 'l-000000000001', ended), true, 'said after it ended: the bytes go back');
  assert.equal(reservationEnded(serving(['l-000000000001']), 'l-000000000001', undefined), false, 'an orphan target keeps its bytes');
  assert.equal(reservationEnded(lender('a', 0), 'l-000000000001', ended), true, 'an exporter that does not report: back when the lease ends');
});

test('policy - a lender a borrower lost is not chosen until it announces again', () => {
  const lost = lender('a', 900 * MiB, { exporter: { portal: '198.18.0.11:3260', at: now, lostAt: now } });
  assert.ok('reason' in chooseLender([lost], 'x', 256 * MiB, now, options));
});
