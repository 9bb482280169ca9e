/**
 * Telemetry by the conventions: Prometheus names with one `rswap_` prefix, `host` only for the
 * emitting host, rates as counters; span names from subject templates with the messaging
 * attributes of the current OpenTelemetry conventions; the resource from OTEL_* env.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Server } from 'node:http';
import pino from 'pino';
import { z } from 'zod';
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-node';
import { SpanKind } from '@opentelemetry/api';
import type { Msg, NatsConnection } from '@nats-io/transport-node';
import { subjects, subjectTemplate } from '../../shared/subjects.js';
import { handle, publishJson, RejectCounter, requestJson } from '../../shared/messaging.js';
import { registry, serveMetrics } from '../../shared/metrics.js';
import { serviceResource } from '../../shared/tracing.js';
import { leaseGauges } from '../../services/broker/gauges.js';
import { swapPagesBetween, signalsBetween } from '../../services/monitor/detector.js';
import type { Reading } from '../../services/monitor/sources.js';
import type { LeaseRecord } from '../../shared/schemas.js';
// Modules that register their series when loaded.
import '../../shared/clock.js';
import '../../services/monitor/monitor.js';
import '../../services/broker/lifecycle.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');
const log = pino({ level: 'silent' });

test('subjectTemplate - the host or lease id becomes {host} / {lease}; other subjects are their own template', () => {
  assert.equal(subjectTemplate('rswap.v1.host.host-b.pressure'), 'rswap.v1.host.{host}.pressure');
  assert.equal(subjectTemplate('rswap.v1.cmd.host-a.export'), 'rswap.v1.cmd.{host}.export');
  assert.equal(subjectTemplate('rswap.v1.lease.l-0123456789ab.state'), 'rswap.v1.lease.{lease}.state');
  assert.equal(subjectTemplate('rswap.v1.host.*.pressure'), 'rswap.v1.host.{host}.pressure', 'a wildcard too');
  for (const fixed of [subjects.release, subjects.revoke, subjects.cordon, subjects.brokerHello, 'test.restarting', 'rswap.v1.host.constructor', 'rswap.v2.host.h.pressure', '']) {
    assert.equal(subjectTemplate(fixed), fixed);
  }
  // Every subject of every host and lease has one template: span names do not grow with the fleet.
  for (const [key, subject] of Object.entries(subjects)) {
    if (typeof subject !== 'function') continue;
    const [a, b] = [subjectTemplate(subject('host-a')), subjectTemplate(subject('l-0123456789ab'))];
    assert.equal(a, b, key);
    assert.match(a, /^rswap\.v1\.[a-z]+\.\{(host|lease)\}\.[a-z]+$/, key);
  }
});

const exporter = new InMemorySpanExporter();
new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).register();

/** Just enough of a NATS connection: publishes are dropped, requests answered ok, subscribers kept. */
function fakeNats() {
  const subscribers: Array<(error: Error | null, msg: Msg) => void> = [];
  const nc = {
    publish: () => undefined,
    request: async () => ({ json: () => ({ ok: true }) }),
    subscribe: (_subject: string, options: { callback: (error: Error | null, msg: Msg) => void }) => subscribers.push(options.callback),
  } as unknown as NatsConnection;
  const deliver = (subject: string, body: unknown) =>
    subscribers.forEach((callback) => callback(null, { subject, headers: undefined, reply: undefined, string: () => JSON.stringify(body) } as unknown as Msg));
  return { nc, deliver };
}

test('spans - publish, request and process spans are named by the subject template; the subject is an attribute; operation types are send / process', async () => {
  exporter.reset();
  const { nc, deliver } = fakeNats();
  publishJson(nc, subjects.pressure('host-b'), { host: 'host-b' });
  await requestJson(nc, subjects.attachCmd('host-c'), {}, z.object({ ok: z.literal(true) }), 1_000);
  let handled = false;
  handle(nc, subjects.allRelief, { schema: z.object({ host: z.string() }), log, rejects: new RejectCounter() }, async () => {
    handled = true;
  });
  deliver(subjects.relief('host-d'), { host: 'host-d' });
  await new Promise((r) => setImmediate(r));
  assert.ok(handled);

  const spans = exporter.getFinishedSpans().map((s) => ({ name: s.name, kind: s.kind, attributes: s.attributes }));
  assert.deepEqual(spans, [
    {
      name: 'publish rswap.v1.host.{host}.pressure',
      kind: SpanKind.PRODUCER,
      attributes: {
        'messaging.system': 'nats',
        'messaging.operation.name': 'publish',
        'messaging.operation.type': 'send',
        'messaging.destination.name': 'rswap.v1.host.host-b.pressure',
        'messaging.destination.template': 'rswap.v1.host.{host}.pressure',
      },
    },
    {
      name: 'publish rswap.v1.cmd.{host}.attach',
      kind: SpanKind.PRODUCER,
      attributes: {
        'messaging.system': 'nats',
        'messaging.operation.name': 'publish',
        'messaging.operation.type': 'send',
        'messaging.destination.name': 'rswap.v1.cmd.host-c.attach',
        'messaging.destination.template': 'rswap.v1.cmd.{host}.attach',
      },
    },
    {
      name: 'process rswap.v1.host.{host}.relief',
      kind: SpanKind.CONSUMER,
      attributes: {
        'messaging.system': 'nats',
        'messaging.operation.name': 'process',
        'messaging.operation.type': 'process',
        'messaging.destination.name': 'rswap.v1.host.host-d.relief',
        'messaging.destination.template': 'rswap.v1.host.{host}.relief',
      },
    },
  ]);
});

/** Runs `body` with these OTEL_* variables set (undefined: unset), then puts them back. */
function withEnv(vars: Record<string, string | undefined>, body: () => void): void {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const set = (values: Record<string, string | undefined>) => {
    for (const [k, v] of Object.entries(values)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
  set(vars);
  try {
    body();
  } finally {
    set(saved);
  }
}

test('resource - service.name rswap-<service>, service.version of package.json, service.instance.id <host>-<pid>, rswap.host', async () => {
  const { version } = JSON.parse(await readFile(resolve(ROOT, 'package.json'), 'utf8')) as { version: string };
  withEnv({ OTEL_SERVICE_NAME: undefined, OTEL_RESOURCE_ATTRIBUTES: undefined }, () => {
    const attributes = serviceResource('broker', 'host-a').attributes;
    assert.equal(attributes['service.name'], 'rswap-broker');
    assert.equal(attributes['service.version'], version);
    assert.equal(attributes['service.instance.id'], `host-a-${process.pid}`);
    assert.equal(attributes['rswap.host'], 'host-a');
  });
});

test('resource - OTEL_RESOURCE_ATTRIBUTES adds and overrides; OTEL_SERVICE_NAME wins over its service.name', () => {
  withEnv({ OTEL_SERVICE_NAME: undefined, OTEL_RESOURCE_ATTRIBUTES: 'service.name=from-attributes,deployment.environment.name=lab%20one' }, () => {
    const attributes = serviceResource('monitor', 'host-b').attributes;
    assert.equal(attributes['service.name'], 'from-attributes');
    assert.equal(attributes['deployment.environment.name'], 'lab one');
    assert.equal(attributes['rswap.host'], 'host-b', 'what it does not name stays');
  });
  withEnv({ OTEL_SERVICE_NAME: 'from-service-name', OTEL_RESOURCE_ATTRIBUTES: 'service.name=from-attributes' }, () => {
    assert.equal(serviceResource('monitor', 'host-b').attributes['service.name'], 'from-service-name');
  });
  withEnv({ OTEL_SERVICE_NAME: 'from-service-name', OTEL_RESOURCE_ATTRIBUTES: undefined }, () => {
    assert.equal(serviceResource('monitor', 'host-b').attributes['service.name'], 'from-service-name');
  });
});

let server: Server | undefined;
after(() => server?.close());

const lease = (id: string, lender: string, borrower: string, state: LeaseRecord['state'], sizeBytes: number) =>
  ({ id, lender, borrower, state, sizeBytes }) as LeaseRecord;

test('metrics - one rswap_ prefix on every name, Node.js metrics included; rates are counters', async () => {
  server = await serveMetrics(0, { service: 'broker', host: 'broker-1' }, log);
  const all = await registry.getMetricsAsJSON();
  const names = all.map((m) => m.name);
  assert.ok(names.includes('rswap_process_cpu_seconds_total'), names.join(' '));
  assert.ok(names.includes('rswap_nodejs_eventloop_lag_seconds'));
  for (const name of names) {
    assert.match(name, /^rswap_/, name);
    assert.doesNotMatch(name, /^rswap_(process|nodejs)_(process|nodejs)_|rswap_.*rswap_/, name);
    assert.doesNotMatch(name, /per_s(econd)?$|_rate$/, `${name}: a rate is a counter that Prometheus takes the rate of`);
  }
  assert.equal(all.find((m) => m.name === 'rswap_monitor_swap_pages_total')?.type, 'counter');
});

test('metrics - a lease gauge names the lender or borrower as such; host stays the reporting host', async () => {
  leaseGauges(async () => [
    lease('l-1', 'host-a', 'host-b', 'active', 1024),
    lease('l-2', 'host-a', 'host-c', 'active', 2048),
    lease('l-3', 'host-c', 'host-b', 'released', 4096),
  ]);
  const text = await registry.metrics();
  assert.match(text, /^rswap_lent_bytes\{lender="host-a",service="broker",host="broker-1"\} 3072$/m);
  assert.match(text, /^rswap_borrowed_bytes\{borrower="host-b",service="broker",host="broker-1"\} 1024$/m);
  assert.match(text, /^rswap_leases\{state="released",service="broker",host="broker-1"\} 1$/m);
  assert.match(text, /^# HELP rswap_leases .*aggregate with max, not sum/m, 'the help says how to aggregate across brokers');
  for (const metric of await registry.getMetricsAsJSON()) {
    for (const value of metric.values) assert.equal(value.labels.host, 'broker-1', `${metric.name}: host is the emitting host`);
  }
});

const reading = (at: number, extra: Partial<Reading>): Reading => ({ at, limitBytes: 0, usedBytes: 0, availableBytes: 0, swapUsedBytes: 0, majorFaults: 0, refaults: 0, ...extra });

test('metrics - the swap traffic counter counts pages between readings; the rate signal is the same count over the time', () => {
  const [before, after] = [reading(0, { majorFaults: 100, swapOuts: 10, refaults: 5 }), reading(2_000, { majorFaults: 300, swapOuts: 50, refaults: 25 })];
  assert.deepEqual(swapPagesBetween(before, after), { swapPages: 240, refaults: 20 });
  const signals = signalsBetween(before, after);
  assert.equal(signals.swapPagesPerS, 120);
  assert.equal(signals.refaultsPerS, 10);
  assert.deepEqual(swapPagesBetween(after, before), { swapPages: 0, refaults: 0 }, 'counters that went backwards add nothing');
});

test('metrics - /metrics listens on 127.0.0.1 unless an address is given', async () => {
  const quiet = pino({ level: 'silent' });
  const local = (await serveMetrics(0, { service: 'monitor', host: 'host-a' }, quiet))!;
  const any = (await serveMetrics(0, { service: 'monitor', host: 'host-a' }, quiet, '0.0.0.0'))!;
  try {
    assert.equal((local.address() as { address: string }).address, '127.0.0.1');
    assert.equal((any.address() as { address: string }).address, '0.0.0.0');
    const res = await fetch(`http://127.0.0.1:${(local.address() as { port: number }).port}/metrics`);
    assert.equal(res.status, 200);
  } finally {
    local.close();
    any.close();
  }
});
