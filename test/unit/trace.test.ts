import { test } from 'node:test';
import assert from 'node:assert/strict';
import { leaseTimeline, leasesTable } from '../../cli/operator.js';
import { contextOf, traceIdOf } from '../../shared/tracing.js';
import { trace } from '@opentelemetry/api';
import type { LeaseRecord } from '../../shared/schemas.js';

const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
const lease: LeaseRecord = {
  id: 'l-0123456789ab',
  borrower: 'host-b',
  lender: 'host-a',
  sizeBytes: 256 * 1024 ** 2,
  state: 'failed',
  reason: 'attach failed: no responders',
  createdAt: 1_000_000,
  updatedAt: 1_000_250,
  history: [
    { state: 'requested', at: 1_000_000 },
    { state: 'exporting', at: 1_000_010 },
    { state: 'exported', at: 1_000_090 },
    { state: 'attaching', at: 1_000_100 },
    { state: 'failed', at: 1_000_250, reason: 'attach failed: no responders' },
  ],
  borrowerIqn: 'iqn.2026-11.io.rswap:host-b',
  borrowerAddress: '198.18.0.12',
  traceparent,
};

test('trace - the trace id comes out of a W3C traceparent, and nothing out of garbage', () => {
  assert.equal(traceIdOf(traceparent), '0af7651916cd43dd8448eb211c80319c');
  assert.equal(traceIdOf('00-xyz-1-01'), undefined);
  assert.equal(traceIdOf(undefined), undefined);
  assert.equal(trace.getSpanContext(contextOf(traceparent))?.traceId, '0af7651916cd43dd8448eb211c80319c');
});

test('trace - rswap trace prints each state with its offset and step time, the reason, and the Jaeger link', () => {
  const lines = leaseTimeline(lease, 'http://jaeger:16686/').split('\n');
  assert.equal(lines[0], "lease l-0123456789ab: 256MiB of host-a's RAM for host-b, now failed");
  assert.match(lines[1]!, /\+0\.000s {2}requested$/);
  assert.match(lines[3]!, /\+0\.090s {2}exported {2}\(80 ms\)$/);
  assert.match(lines[5]!, /\+0\.250s {2}failed {4}\(150 ms\) {2}attach failed: no responders$/);
  assert.equal(lines.at(-1), 'trace 0af7651916cd43dd8448eb211c80319c: http://jaeger:16686/trace/0af7651916cd43dd8448eb211c80319c');
  assert.match(leaseTimeline({ ...lease, traceparent: undefined }), /no trace recorded for this lease$/);
});

test('trace - rswap leases shows each lease trace id', () => {
  const text = leasesTable([lease]);
  assert.match(text.split('\n')[0]!, /TRACE/);
  assert.match(text.split('\n')[1]!, /0af7651916cd43dd8448eb211c80319c/);
});
