import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AnnounceEvent, ExportRequest, HostId, PressureEvent, SurplusEvent } from '../../shared/schemas.js';
import * as schemas from '../../shared/schemas.js';
import { hostOfSubject, subjects } from '../../shared/subjects.js';

test('schemas - host ids are safe subject tokens', () => {
  assert.ok(HostId.safeParse('host-a').success);
  for (const bad of ['', 'host.a', 'host*', '>', 'Host-A', '-a', 'a-', 'a b', 'x'.repeat(64)]) {
    assert.equal(HostId.safeParse(bad).success, false, bad);
  }
});

test('schemas - pressure rejects negative, zero, absurd and mistyped sizes and unknown fields', () => {
  assert.ok(PressureEvent.safeParse({ host: 'b', neededBytes: 268435456 }).success);
  for (const neededBytes of [-1, 0, 2 ** 49, 1.5, '256MiB', null]) {
    assert.equal(PressureEvent.safeParse({ host: 'b', neededBytes }).success, false, String(neededBytes));
  }
  assert.equal(PressureEvent.safeParse({ host: 'b', neededBytes: 1, extra: true }).success, false);
});

test('schemas - a host with more than 1 TiB reports and lends; past 256 TiB a size is refused', () => {
  assert.ok(SurplusEvent.safeParse({ host: 'a', lendableBytes: 6 * 2 ** 40 }).success, '6 TiB to lend');
  assert.ok(PressureEvent.safeParse({ host: 'b', neededBytes: 3 * 2 ** 40 }).success);
  assert.match(JSON.stringify(SurplusEvent.safeParse({ host: 'a', lendableBytes: 2 ** 49 }).error?.issues), /more than 256TiB/);
});

test('schemas - portals and addresses are IPv4, checked as addresses; IPv6 is refused saying so', () => {
  const { Portal, Ipv4 } = schemas;
  for (const ok of ['198.18.0.11:3260', '10.0.0.1:1', '10.0.0.1:65535']) assert.ok(Portal.safeParse(ok).success, ok);
  for (const bad of ['999.1.1.1:3260', '10.0.0.1:0', '10.0.0.1:70000', '10.0.0.1', 'nowhere:3260', '10.0.0.1:32a0']) {
    assert.match(Portal.safeParse(bad).error!.issues[0]!.message, /portal must be 'IPV4:PORT' with a port of 1-65535/, bad);
  }
  for (const v6 of ['[fd00::1]:3260', 'fd00::1:3260']) assert.match(Portal.safeParse(v6).error!.issues[0]!.message, /is IPv6: rswap takes IPv4/, v6);
  assert.ok(Ipv4.safeParse('198.18.0.12').success);
  assert.match(Ipv4.safeParse('fd00::12').error!.issues[0]!.message, /'fd00::12' is IPv6/);
  assert.match(Ipv4.safeParse('198.18.0.256').error!.issues[0]!.message, /is not an IPv4 address/);
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
