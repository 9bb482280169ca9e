import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ENDED_SHOWN_MS, eventText, renderTop, type TopState } from '../../cli/top.js';
import type { HostRecord, LeaseRecord } from '../../shared/schemas.js';

const MiB = 1024 ** 2;
const now = Date.UTC(2026, 10, 30, 12, 0, 0);

const host = (name: string, extra: Partial<HostRecord> = {}): HostRecord => ({ host: name, reservations: {}, ...extra });
const lease = (id: string, state: LeaseRecord['state'], extra: Partial<LeaseRecord> = {}): LeaseRecord => ({
  id, borrower: 'host-c', lender: 'host-a', sizeBytes: 256 * MiB, state, createdAt: now - 42_000, updatedAt: now - 1_000, history: [{ state: 'requested', at: now - 42_000 }],
  borrowerIqn: 'iqn.2026-11.io.rswap:host-c', borrowerAddress: '198.18.0.13', ...extra,
}) as LeaseRecord;

const fleet = (): TopState => ({
  hosts: [
    host('host-a', { offer: { lendableBytes: 1024 * MiB, lentBytes: 256 * MiB, deficitBytes: 0, at: now }, reservations: { 'l-aaaaaaaaaaaa': 256 * MiB } }),
    host('host-b', { cordoned: { at: now, by: 'operator' } }),
    host('host-c', { pressure: { neededBytes: 300 * MiB, at: now - 5_000 } }),
  ],
  leases: [
    lease('l-aaaaaaaaaaaa', 'active', { device: '/dev/mapper/rswap-l-aaaaaaaaaaaa' }),
    lease('l-bbbbbbbbbbbb', 'released', { updatedAt: now - ENDED_SHOWN_MS - 1 }),
    lease('l-cccccccccccc', 'released', { updatedAt: now - 10_000, sizeBytes: 64 * MiB, device: '/dev/sdb' }),
  ],
  events: [{ at: now - 2_000, text: 'host-c pressure: needs 300MiB (monitor)' }],
});

test('top - hosts with pressure, offer, lent, borrowed and reserved; live leases first, ended ones for a minute; the latest events; 80 columns', () => {
  const lines = renderTop(fleet(), now);
  assert.ok(lines.every((l) => l.length <= 80), lines.join('\n'));
  assert.ok(lines.length <= 24);
  assert.match(lines[0]!, /^rswap top  12:00:00  3 hosts  1 live leases  256MiB lent$/);
  const row = (start: string) => lines.find((l) => l.startsWith(start))?.split(/\s{2,}/);
  assert.deepEqual(row('host-a'), ['host-a', '-', '1GiB', '256MiB', '-', '256MiB']);
  assert.deepEqual(row('host-b'), ['host-b (c)', '-', '-', '-', '-', '-']);
  assert.deepEqual(row('host-c'), ['host-c', '300MiB', '-', '-', '256MiB', '-']);
  assert.deepEqual(row('l-aaaaaaaaaaaa'), ['l-aaaaaaaaaaaa', 'active', '42s', '256MiB', 'host-c<host-a', 'dm (sealed)']);
  assert.deepEqual(row('l-cccccccccccc'), ['l-cccccccccccc', 'released', '42s', '64MiB', 'host-c<host-a', '/dev/sdb']);
  assert.equal(row('l-bbbbbbbbbbbb'), undefined, 'ended over a minute ago: gone');
  assert.ok(lines.indexOf(lines.find((l) => l.startsWith('l-aaaa'))!) < lines.indexOf(lines.find((l) => l.startsWith('l-cccc'))!), 'live first');
  assert.deepEqual(lines.slice(-2), ['EVENTS', '11:59:58  host-c pressure: needs 300MiB (monitor)']);
});

test('top - relief clears a host\'s pressure; a short terminal keeps hosts and leases and says what it cut; long cells are cut to the width', () => {
  const state = fleet();
  state.hosts[2]!.clearSince = now - 1_000;
  assert.deepEqual(renderTop(state, now).find((l) => l.startsWith('host-c'))?.split(/\s{2,}/), ['host-c', '-', '-', '-', '256MiB', '-']);
  const short = renderTop(state, now, { height: 8 });
  assert.equal(short.length, 8);
  assert.match(short.at(-1)!, /^\.\.\. \d+ more lines: a taller terminal shows them$/);
  state.events = Array.from({ length: 50 }, (_, i) => ({ at: now, text: `event ${i} ${'x'.repeat(100)}` }));
  const lines = renderTop(state, now, { width: 60, height: 24 });
  assert.equal(lines.length, 24, 'events fill the lines left, no more');
  assert.ok(lines.every((l) => l.length <= 60));
  assert.match(lines.at(-1)!, /^12:00:00  event 49 x+$/, 'the newest event last');
});

test('top - event lines from pressure, relief, lost and lease state messages; anything else or malformed shows nothing', () => {
  assert.equal(eventText('rswap.v1.host.host-c.pressure', { host: 'host-c', neededBytes: 64 * MiB, source: 'inject' }), 'host-c pressure: needs 64MiB (inject)');
  assert.equal(eventText('rswap.v1.host.host-c.relief', { host: 'host-c', at: now }), 'host-c relief');
  assert.equal(eventText('rswap.v1.host.host-c.lost', { host: 'host-c', leaseId: 'l-aaaaaaaaaaaa', reason: 'read failed', at: now }), 'host-c lost l-aaaaaaaaaaaa: read failed');
  assert.equal(eventText('rswap.v1.lease.l-aaaaaaaaaaaa.state', { lease: lease('l-aaaaaaaaaaaa', 'failed', { reason: 'lender lost' }) }), 'l-aaaaaaaaaaaa failed  host-c<host-a 256MiB  lender lost');
  assert.equal(eventText('rswap.v1.host.host-c.surplus', { host: 'host-c', lendableBytes: 1 }), undefined);
  assert.equal(eventText('rswap.v1.host.host-c.pressure', { host: 'host-c', neededBytes: -1 }), undefined);
  assert.equal(eventText('rswap.v1.lease.l-x.state', { nope: true }), undefined);
});
