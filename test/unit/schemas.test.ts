import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AnnounceEvent, ExportRequest, HostId, PressureEvent, SurplusEvent } from '../../shared/schemas.js';
import { hostOfSubject, subjects } from '../../shared/subjects.js';

test('schemas - host ids are safe subject tokens', () => {
  assert.ok(HostId.safeParse('host-a').success);
  for (const bad of ['', 'host.a', 'host*', '>', 'Host-A', '-a', 'a-', 'a b', 'x'.repeat(64)]) {
    assert.equal(HostId.safeParse(bad).success, false, bad);
  }
});

test('schemas - pressure rejects negative, zero, absurd and mistyped sizes and unknown fields', () => {
  assert.ok(PressureEvent.safeParse({ host: 'b', neededBytes: 268435456 }).success);
  for (const neededBytes of [-1, 0, 2 ** 41, 1.5, '256MiB', null]) {
    assert.equal(PressureEvent.safeParse({ host: 'b', neededBytes }).success, false, String(neededBytes));
  }
  assert.equal(PressureEvent.safeParse({ host: 'b', neededBytes: 1, extra: true }).success, false);
});

test('schemas - surplus defaults lentBytes and source', () => {
  const event = SurplusEvent.parse({ host: 'a', lendableBytes: 1024 });
  assert.equal(event.lentBytes, 0);
  assert.equal(event.source, 'inject');
});

test('schemas - export requests need a whole-MiB lease size of at least 16MiB', () => {
  const base = { leaseId: 'l-0123456789ab', lender: 'a', borrower: { host: 'b', iqn: 'iqn.2026-11.io.rswap:b', address: '198.18.0.12' } };
  assert.ok(ExportRequest.safeParse({ ...base, sizeBytes: 64 * 1024 ** 2 }).success);
  assert.equal(ExportRequest.safeParse({ ...base, sizeBytes: 1024 ** 2 }).success, false);
  assert.equal(ExportRequest.safeParse({ ...base, sizeBytes: 64 * 1024 ** 2 + 1 }).success, false);
  assert.equal(ExportRequest.safeParse({ ...base, sizeBytes: 64 * 1024 ** 2, leaseId: '../etc' }).success, false);
});

test('schemas - announce is a union by role', () => {
  assert.ok(AnnounceEvent.safeParse({ host: 'a', role: 'exporter', portal: '198.18.0.11:3260', at: 1 }).success);
  assert.equal(AnnounceEvent.safeParse({ host: 'a', role: 'exporter', iqn: 'iqn.2026-11.io.rswap:a', at: 1 }).success, false);
  assert.equal(AnnounceEvent.safeParse({ host: 'a', role: 'attacher', iqn: 'x', address: '198.18.0.11', initiator: 'userspace', at: 1 }).success, false);
});

test('subjects - the host token is read back from event subjects only', () => {
  assert.equal(hostOfSubject(subjects.pressure('host-b')), 'host-b');
  assert.equal(hostOfSubject(subjects.exportCmd('host-b')), undefined);
  assert.equal(hostOfSubject('other.v1.host.b.pressure'), undefined);
});
