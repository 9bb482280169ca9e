/**
 * Observability end to end on the testbed: all four services export OTLP/HTTP to a real receiver;
 * a lease that a thrashing workload brings about is one trace from the monitor's pressure event to
 * swapon (and, later, swapoff), with a span per system command; log lines carry its trace id; a
 * lease made to fail marks its spans as errors; every service answers /metrics in Prometheus text.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TestBus } from '../helpers/bus.js';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { BRIDGE_ADDRESS, testbedDown, testbedUp, type Testbed, testbedBus } from '../../cli/testbed/testbed.js';
import { injectPressure, injectSurplus, leaseTimeline, listLeases } from '../../cli/operator.js';
import { freePort } from '../helpers/nats.js';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlp.js';
import { waitFor } from '../../shared/wait.js';
import { traceIdOf } from '../../shared/tracing.js';
import { version } from '../../shared/version.js';
import { thrashUntil } from '../helpers/thrash.js';
import { subjects } from '../../shared/subjects.js';
import type { LeaseRecord } from '../../shared/schemas.js';

const MiB = 1024 ** 2;
const DIR = '/run/rswap/test-observability';
const log = pino({ level: 'silent' });
const run = createRunner(log);
const PORTS = { monitor: 9464, exporter: 9465, attacher: 9466 };
let tb: Testbed;
let receiver: OtlpReceiver;
let brokerMetricsPort: number;
let nc: TestBus;

before(async () => {
  const otlpPort = await freePort();
  receiver = await startOtlpReceiver('0.0.0.0', otlpPort, BRIDGE_ADDRESS);
  brokerMetricsPort = await freePort();
  tb = await testbedUp(run, log, {
    dir: DIR,
    hosts: 3,
    natsPort: await freePort(),
    memoryBytes: [1024 * MiB, 128 * MiB, 128 * MiB],
    reserveBytes: [256 * MiB, 32 * MiB, 32 * MiB],
    localSwapBytes: 512 * MiB,
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url },
    brokerArgs: ['--release-cooldown-ms', '2000', '--metrics-port', String(brokerMetricsPort)],
    // The agents' /metrics is on 127.0.0.1 unless told otherwise: here it must answer on the hosts' own addresses.
    monitorArgs: ['--exit-hold-ms', '2000', '--metrics-port', String(PORTS.monitor), '--metrics-address', '0.0.0.0'],
    exporterArgs: ['--metrics-port', String(PORTS.exporter), '--metrics-address', '0.0.0.0'],
    attacherArgs: ['--metrics-port', String(PORTS.attacher), '--metrics-address', '0.0.0.0'],
  });
  nc = await TestBus.open(tb);
});

after(async () => {
  await nc?.drain();
  const problems = await testbedDown(run, log, DIR);
  await receiver?.close();
  assert.deepEqual(problems, []);
});

const spansOf = (traceId: string) => receiver.spans.filter((s) => s.traceId === traceId);

/** The chain from a span up to its root, by parentSpanId, within one trace. */
function ancestry(spans: ReceivedSpan[], span: ReceivedSpan): ReceivedSpan[] {
  const chain = [span];
  let current = span;
  while (current.parentSpanId) {
    const parent = spans.find((s) => s.spanId === current.parentSpanId);
    if (!parent) break;
    chain.push(parent);
    current = parent;
  }
  return chain;
}

let lease: LeaseRecord;

test('tracing - a lease is one trace from the pressure event to swapon, across monitor, broker, exporter and attacher', async () => {
  const { report, answer } = await thrashUntil(tb.hosts[1]!.cgroup, '256MiB', join(DIR, 'thrash.stop'), 'a lease of host-b active', async () => {
    return (await listLeases(testbedBus(tb))).find((l) => l.borrower === 'host-b' && l.state === 'active');
  });
  assert.equal(report.corruptedChunks, 0);
  lease = answer;
  const traceId = traceIdOf(lease.traceparent);
  assert.ok(traceId, `the lease records its trace: ${lease.traceparent}`);

  const services = ['rswap-monitor', 'rswap-broker', 'rswap-exporter', 'rswap-attacher'];
  await waitFor('spans of all four services in the lease trace', async () => services.every((s) => spansOf(traceId).some((x) => x.service === s)), { timeoutMs: 20_000, intervalMs: 250 }).catch(() => {
    throw new Error(`services in trace ${traceId}: ${[...new Set(spansOf(traceId).map((s) => s.service))]}; receiver got ${receiver.requests} requests`);
  });
  await waitFor('the swapon span', async () => spansOf(traceId).some((s) => s.name === 'exec swapon'), { timeoutMs: 10_000 });
  const spans = spansOf(traceId);

  const swapon = spans.find((s) => s.name === 'exec swapon')!;
  const chain = ancestry(spans, swapon);
  const root = chain.at(-1)!;
  // Span names are subject templates; the concrete subject is an attribute.
  const destination = (s: ReceivedSpan) => s.attributes['messaging.destination.name'];
  assert.equal(root.name, 'publish rswap.v1.host.{host}.pressure', `the chain ends at the pressure event: ${chain.map((s) => `${s.service}:${s.name}`).join(' <- ')}`);
  assert.equal(destination(root), 'rswap.v1.host.host-b.pressure');
  assert.equal(root.attributes['messaging.operation.type'], 'send');
  assert.equal(root.service, 'rswap-monitor');
  assert.equal(root.resource['service.version'], version);
  assert.match(String(root.resource['service.instance.id']), /^host-b-\d+$/);
  assert.equal(root.parentSpanId, undefined, 'and that is the root');
  assert.deepEqual([...new Set(chain.map((s) => s.service))], ['rswap-attacher', 'rswap-broker', 'rswap-monitor']);
  assert.ok(chain.some((s) => s.name === 'process rswap.v1.cmd.{host}.attach' && destination(s) === 'rswap.v1.cmd.host-b.attach' && s.kind === 5), 'consumer span of the attach command');
  assert.ok(chain.some((s) => s.name === 'publish rswap.v1.cmd.{host}.attach' && destination(s) === 'rswap.v1.cmd.host-b.attach' && s.kind === 4), 'producer span of the attach command');
  const process = chain.find((s) => s.name === 'process rswap.v1.host.{host}.pressure')!;
  assert.equal(process.attributes['messaging.system'], 'nats');
  assert.equal(destination(process), 'rswap.v1.host.host-b.pressure');
  assert.equal(process.attributes['messaging.destination.template'], 'rswap.v1.host.{host}.pressure');
  assert.equal(process.attributes['messaging.operation.type'], 'process');

  // A span for every system command of the bring-up, each with its outcome.
  for (const command of ['exec tgtadm', 'exec mount', 'exec qemu-storage-daemon', 'exec losetup', 'exec mkswap', 'exec swapon']) {
    const span = spans.find((s) => s.name === command);
    assert.ok(span, `${command} in the trace`);
    assert.equal(span.attributes['process.exit.code'], 0);
  }
  assert.ok(spans.filter((s) => s.name === 'exec tgtadm').every((s) => s.service === 'rswap-exporter'));
  assert.ok(!JSON.stringify(spans).includes(JSON.parse(await readFile(join(DIR, 'host-a', 'exporter', 'leases', lease.id, 'chap.json'), 'utf8').catch(() => '{"secret":"-none-"}')).secret), 'no CHAP secret in any span');

  // Log lines of this lease carry its trace id, in the broker, exporter and attacher.
  // Each service writes its log asynchronously: wait for the line, do not read once.
  for (const file of ['broker.log', 'host-a/exporter.log', 'host-b/attacher.log']) {
    // Only whole lines: the last one may still be half written.
    const linesOfLease = async () => (await readFile(join(DIR, file), 'utf8')).split('\n').slice(0, -1).filter((l) => l.includes(lease.id));
    await waitFor(`${file} mentions the lease with trace_id ${traceId}`, async () =>
      (await linesOfLease()).some((l) => (JSON.parse(l) as { trace_id?: string }).trace_id === traceId), { timeoutMs: 20_000, intervalMs: 100 }).catch(async (error: Error) => {
      throw new Error(`${error.message}; its lines of the lease: ${(await linesOfLease()).slice(0, 5).join('\n')}`);
    });
  }
});

test('tracing - the release after the cool-down joins the same trace; rswap trace prints the timeline and the link', async () => {
  const traceId = traceIdOf(lease.traceparent)!;
  await waitFor('the lease released', async () => (await listLeases(testbedBus(tb))).find((l) => l.id === lease.id)?.state === 'released', { timeoutMs: 60_000, intervalMs: 250 });
  await waitFor('swapoff in the lease trace', async () => spansOf(traceId).some((s) => s.name === 'exec swapoff'), { timeoutMs: 10_000 });
  const released = (await listLeases(testbedBus(tb))).find((l) => l.id === lease.id)!;
  const text = leaseTimeline(released, 'http://jaeger.example:16686');
  assert.match(text, new RegExp(`trace ${traceId}: http://jaeger.example:16686/trace/${traceId}`));
  for (const state of ['requested', 'exporting', 'exported', 'attaching', 'active', 'draining', 'released']) assert.match(text, new RegExp(`\\s${state}\\b`));
});

test('tracing - a lease made to fail marks its spans as errors with the reason', async () => {
  // host-c's attacher is gone: the attach command finds no responder.
  const { stdout } = await run('pgrep', ['-f', 'rswap.js attacher .*--host host-c']);
  for (const pid of stdout.split('\n').filter(Boolean)) process.kill(Number(pid), 'SIGKILL');
  await injectSurplus(testbedBus(tb, 'host-a'), 'host-a', '512MiB', '0');
  await injectPressure(testbedBus(tb, 'host-c'), 'host-c', '64MiB');
  const failed = await waitFor('a failed lease for host-c', async () => (await listLeases(testbedBus(tb))).find((l) => l.borrower === 'host-c' && l.state === 'failed'), { timeoutMs: 30_000, intervalMs: 250 });
  assert.match(failed.reason!, /attach failed: no responders/);
  const traceId = traceIdOf(failed.traceparent)!;
  await waitFor('error spans', async () => spansOf(traceId).some((s) => s.status.code === 2 && s.name === 'publish rswap.v1.cmd.{host}.attach' && s.attributes['messaging.destination.name'] === 'rswap.v1.cmd.host-c.attach'), { timeoutMs: 10_000, intervalMs: 250 });
  const errors = spansOf(traceId).filter((s) => s.status.code === 2);
  assert.ok(errors.some((s) => s.service === 'rswap-broker' && /no responders/.test(s.status.message ?? '')), JSON.stringify(errors.map((s) => [s.name, s.status])));
  // The span that failed the lease ends once the cleanup is done: its detach, too, waits up to 10 s
  // for host-c's attacher to come back (NO_RESPONDERS_GRACE_MS), then the export batch follows.
  await waitFor('the span that failed the lease, saying why', async () => spansOf(traceId).some((s) => s.status.code === 2 && /lease l-[0-9a-f]{12} failed: attach failed/.test(s.status.message ?? '')), { timeoutMs: 30_000, intervalMs: 250 });
});

test('metrics - every service answers /metrics in Prometheus text format with its series', async () => {
  // A malformed command, so the exporter has a rejection to count.
  await nc.request(subjects.exportCmd('host-a'), 'not json', { timeout: 5_000 });
  const scrape = async (url: string) => {
    const res = await fetch(url);
    assert.equal(res.status, 200, url);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    return res.text();
  };
  const broker = await scrape(`http://127.0.0.1:${brokerMetricsPort}/metrics`);
  assert.match(broker, /^rswap_leases\{state="released",service="broker",host="broker"\} [1-9]/m);
  assert.match(broker, /^rswap_leases\{state="failed",[^}]*\} 1$/m);
  assert.match(broker, /^# TYPE rswap_lent_bytes gauge$/m);
  assert.match(broker, /^# TYPE rswap_borrowed_bytes gauge$/m);
  // The lender or borrower is a label of its own: host stays the broker's.
  for (const line of broker.split('\n').filter((l) => /^rswap_(lent|borrowed)_bytes\{/.test(l))) assert.match(line, /^rswap_(lent_bytes\{lender|borrowed_bytes\{borrower)="[^"]+",service="broker",host="broker"\} \d+$/);
  assert.match(broker, /^rswap_process_cpu_seconds_total\{service="broker",host="broker"\} /m, 'one rswap_ prefix on Node.js metrics');
  assert.doesNotMatch(broker, /rswap_process_process_|rswap_process_nodejs_/);
  assert.match(broker, /^rswap_time_to_match_seconds_count\{[^}]*\} [1-9]/m);
  assert.match(broker, /^rswap_time_to_attach_seconds_bucket\{le="\+Inf",[^}]*\} [1-9]/m);
  assert.match(broker, /^# TYPE rswap_rejected_messages_total counter$/m);

  const exporter = await scrape(`http://198.18.0.11:${PORTS.exporter}/metrics`);
  assert.match(exporter, /^rswap_rejected_messages_total\{reason="RSWAP_E_BAD_MESSAGE",service="exporter",host="host-a"\} [1-9]/m);
  assert.match(exporter, /^rswap_commands_total\{command="tgtadm",[^}]*\} [1-9]/m);
  assert.match(exporter, /^# TYPE rswap_command_failures_total counter$/m);
  const attacher = await scrape(`http://198.18.0.12:${PORTS.attacher}/metrics`);
  assert.match(attacher, /^rswap_commands_total\{command="swapon",service="attacher",host="host-b"\} [1-9]/m);
  const monitor = await scrape(`http://198.18.0.12:${PORTS.monitor}/metrics`);
  assert.match(monitor, /^rswap_monitor_pressure\{service="monitor",host="host-b"\} [01]$/m);
  assert.match(monitor, /^rswap_monitor_available_bytes\{[^}]*\} \d+/m);
  assert.match(monitor, /^# TYPE rswap_monitor_swap_pages_total counter$/m);
  // What the dashboards may query (shared/series.ts, checked by rswap check) is what runs: every
  // series a live service serves is on the list.
  const { exportedSeries } = await import('../../cli/dashboard.js');
  const known = await exportedSeries();
  for (const [service, text] of [['broker', broker], ['exporter', exporter], ['attacher', attacher], ['monitor', monitor]] as const) {
    const served = [...new Set([...text.matchAll(/^(rswap_[a-z0-9_]+)[{ ]/gm)].map((m) => m[1]!))];
    assert.deepEqual(served.filter((name) => !known.has(name)), [], `${service} serves only listed series`);
  }
});
