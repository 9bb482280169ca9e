/** The operator's commands: inject events, list leases and hosts, release a lease. */
import type { NatsConnection } from '@nats-io/transport-node';
import { connectAs, type NatsAccess } from '../shared/nats.js';
import { readCreds } from '../shared/auth.js';
import { z } from 'zod';
import { Kvm, type KV } from '@nats-io/kv';
import { getParsed, listParsed } from '../shared/kv.js';
import { publishJson, requestJson } from '../shared/messaging.js';
import { buckets, subjects } from '../shared/subjects.js';
import { HostRecord, LeaseId, LeaseRecord, PressureEvent, ReliefEvent, SurplusEvent, replySchema } from '../shared/schemas.js';
import { formatBytes, parseBytes } from '../shared/units.js';
import { reservedBytes } from '../services/broker/policy.js';
import { RswapError, ErrorCodes } from '../shared/errors.js';
import { traceIdOf } from '../shared/tracing.js';

/** A request to the broker: with none running, say so within seconds (a broker restarting under systemd is back in about 2 s). */
const TO_BROKER = { noRespondersGraceMs: 3_000 };

/** A connect that reached no NATS server: refused, timed out, no such host, no route. */
const UNREACHABLE = /connection refused|timeout|ENOTFOUND|EAI_AGAIN|ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT/i;

export async function withNats<T>(bus: NatsAccess, task: (nc: NatsConnection) => Promise<T>): Promise<T> {
  let nc: NatsConnection;
  try {
    nc = await connectAs(bus, 'rswap-cli');
  } catch (error) {
    if (error instanceof RswapError) throw error;
    const { name, message, code } = error as Error & { code?: string };
    if (UNREACHABLE.test(`${name} ${message} ${code ?? ''}`)) throw new RswapError(ErrorCodes.UNREACHABLE, `cannot reach NATS at ${bus.url} (${message}); pass --nats URL or set RSWAP_NATS_URL`);
    throw new RswapError(ErrorCodes.CONFIG, `cannot sign in to NATS at ${bus.url} (${message}); pass --creds FILE (or set RSWAP_CREDS) made by this server's rswap auth`);
  }
  try {
    return await task(nc);
  } finally {
    await nc.drain();
  }
}

export async function injectPressure(bus: NatsAccess, host: string, bytes: string): Promise<PressureEvent> {
  const event = PressureEvent.parse({ host, neededBytes: parseBytes(bytes), at: Date.now(), source: 'inject' });
  await withNats(bus, async (nc) => {
    publishJson(nc, subjects.pressure(host), event);
    await nc.flush();
  });
  return event;
}

export async function injectSurplus(bus: NatsAccess, host: string, bytes: string, lent: string, deficit = '0'): Promise<SurplusEvent> {
  const event = SurplusEvent.parse({ host, lendableBytes: parseBytes(bytes), lentBytes: parseBytes(lent), deficitBytes: parseBytes(deficit), at: Date.now(), source: 'inject' });
  await withNats(bus, async (nc) => {
    publishJson(nc, subjects.surplus(host), event);
    await nc.flush();
  });
  return event;
}

export async function injectRelief(bus: NatsAccess, host: string): Promise<ReliefEvent> {
  const event = ReliefEvent.parse({ host, at: Date.now(), source: 'inject' });
  await withNats(bus, async (nc) => {
    publishJson(nc, subjects.relief(host), event);
    await nc.flush();
  });
  return event;
}

/** Runs `task` on a KV bucket; undefined while no broker has created the bucket yet. */
async function withBucket<T>(nc: NatsConnection, bucket: string, task: (kv: KV) => Promise<T>): Promise<T | undefined> {
  try {
    return await task(await new Kvm(nc).open(bucket));
  } catch (error) {
    if (/stream not found|no responders|bucket not found/i.test(String(error))) return undefined;
    throw error;
  }
}

/** How often a read is asked again after a JetStream request timed out. */
const READ_ATTEMPTS = 5;

/**
 * A bucket's records. A read that times out is asked again, up to READ_ATTEMPTS: a cluster that
 * just lost a node answers no JetStream request until it has elected new leaders, seconds later.
 */
async function readBucket<T>(nc: NatsConnection, bucket: string, schema: Parameters<typeof listParsed<T>>[1]): Promise<T[]> {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return (await withBucket(nc, bucket, async (kv) => (await listParsed(kv, schema)).map((e) => e.value))) ?? [];
    } catch (error) {
      if (attempt >= READ_ATTEMPTS || !/timeout/i.test(`${(error as Error).name} ${(error as Error).message}`)) throw error;
    }
  }
}

const readLeases = async (nc: NatsConnection) => (await readBucket(nc, buckets.leases, LeaseRecord)).sort((a, b) => a.createdAt - b.createdAt);
const readHosts = async (nc: NatsConnection) => (await readBucket(nc, buckets.hosts, HostRecord)).sort((a, b) => a.host.localeCompare(b.host));

export async function listLeases(bus: NatsAccess): Promise<LeaseRecord[]> {
  return withNats(bus, readLeases);
}

export async function listHosts(bus: NatsAccess): Promise<HostRecord[]> {
  return withNats(bus, readHosts);
}

/** Leases and hosts on one connection (`rswap top` reads them so at every refresh). */
export async function readFleet(nc: NatsConnection): Promise<{ leases: LeaseRecord[]; hosts: HostRecord[] }> {
  const [leases, hosts] = await Promise.all([readLeases(nc), readHosts(nc)]);
  return { leases, hosts };
}

/** Leases and hosts over one connection (one --insecure warning, one TLS handshake). */
export async function listFleet(bus: NatsAccess): Promise<{ leases: LeaseRecord[]; hosts: HostRecord[] }> {
  return withNats(bus, readFleet);
}

export async function releaseLease(bus: NatsAccess, leaseId: string, timeoutMs = 330_000): Promise<LeaseRecord> {
  const reply = await withNats(bus, (nc) => requestJson(nc, subjects.release, { leaseId }, replySchema({ lease: LeaseRecord }), timeoutMs, TO_BROKER));
  return reply.lease;
}

export async function revokeLease(bus: NatsAccess, leaseId: string, timeoutMs = 420_000): Promise<{ released: LeaseRecord; replacement?: LeaseRecord }> {
  return withNats(bus, (nc) => requestJson(nc, subjects.revoke, { leaseId }, replySchema({ released: LeaseRecord, replacement: LeaseRecord.optional() }), timeoutMs, TO_BROKER));
}

/** Cordons (no new leases), uncordons, or drains (cordon, then move every lease off, make-before-break) a lender. */
/**
 * The subject for a request about `host`: a host asks for itself on its own subject (its identity
 * may publish nothing else), anyone else on the operator's.
 */
async function aboutHost(bus: NatsAccess, host: string, operatorSubject: string, selfSubject: (host: string) => string): Promise<string> {
  const creds = bus.creds ? await readCreds(bus.creds) : undefined;
  return creds?.role === 'host' && creds.name === host ? selfSubject(host) : operatorSubject;
}

export async function cordonHost(bus: NatsAccess, host: string, cordoned: boolean): Promise<HostRecord> {
  const subject = cordoned ? await aboutHost(bus, host, subjects.cordon, subjects.selfCordon) : await aboutHost(bus, host, subjects.uncordon, subjects.selfUncordon);
  const reply = await withNats(bus, (nc) => requestJson(nc, subject, { host }, replySchema({ host: HostRecord }), 30_000, TO_BROKER));
  return reply.host;
}

export async function drainHost(bus: NatsAccess, host: string, timeoutMs = 3_600_000): Promise<{ moved: Array<{ from: string; to?: string }>; stayed: Array<{ leaseId: string; reason: string }> }> {
  const Moved = z.array(z.object({ from: z.string(), to: z.string().optional() }));
  const Stayed = z.array(z.object({ leaseId: z.string(), reason: z.string() }));
  const subject = await aboutHost(bus, host, subjects.drain, subjects.selfDrain);
  return withNats(bus, (nc) => requestJson(nc, subject, { host }, replySchema({ moved: Moved, stayed: Stayed }), timeoutMs, TO_BROKER));
}

export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

const ago = (at: number | undefined, now: number) => (at ? `${Math.round((now - at) / 1000)}s ago` : '-');

export function leasesTable(leases: LeaseRecord[], hosts: HostRecord[] = []): string {
  const rows = [['LEASE', 'STATE', 'BORROWER', 'LENDER', 'SIZE', 'DEVICE', 'AGE', 'TRACE', 'REASON']];
  const now = Date.now();
  for (const l of leases) {
    rows.push([l.id, l.state, l.borrower, l.lender, formatBytes(l.sizeBytes), l.device ?? '-', ago(l.createdAt, now), traceIdOf(l.traceparent) ?? '-', l.reason ?? '']);
  }
  // Targets a lender keeps without a lease record, because a borrower is logged in to them.
  for (const h of hosts) {
    for (const id of h.exporter?.orphans ?? []) rows.push([id, 'orphan', '?', h.host, '?', '-', '-', '-', 'no lease record; a borrower is logged in: see docs/operations.md, orphan targets']);
  }
  return table(rows);
}

export const DEFAULT_JAEGER_URL = 'http://localhost:16686';

/** A lease's timeline: each state with its time and the step's duration, then the trace link. */
export function leaseTimeline(lease: LeaseRecord, jaegerUrl = process.env.RSWAP_JAEGER_URL ?? DEFAULT_JAEGER_URL): string {
  const lines = [
    `lease ${lease.id}: ${formatBytes(lease.sizeBytes)} of ${lease.lender}'s RAM for ${lease.borrower}, now ${lease.state}${lease.replaces ? ` (replaces ${lease.replaces})` : ''}`,
  ];
  const start = lease.history[0]?.at ?? lease.createdAt;
  let previous = start;
  for (const [i, step] of lease.history.entries()) {
    if (i === 1 && lease.historyDropped) lines.push(`  ... ${lease.historyDropped} steps not kept (a record keeps its first step and the latest ones)`);
    const offset = `+${((step.at - start) / 1000).toFixed(3)}s`.padStart(10);
    const took = step.at === start ? '' : ` (${step.at - previous} ms)`;
    lines.push(`  ${new Date(step.at).toISOString()} ${offset}  ${step.state.padEnd(9)}${took}${step.reason ? `  ${step.reason}` : ''}`);
    previous = step.at;
  }
  const traceId = traceIdOf(lease.traceparent);
  lines.push(traceId ? `trace ${traceId}: ${jaegerUrl.replace(/\/$/, '')}/trace/${traceId}` : 'no trace recorded for this lease');
  return lines.join('\n');
}

export async function getLease(bus: NatsAccess, leaseId: string): Promise<LeaseRecord> {
  const parsed = LeaseId.safeParse(leaseId);
  if (!parsed.success) throw new RswapError(ErrorCodes.BAD_MESSAGE, `'${leaseId}' is not a lease id (like l-0123456789ab)`);
  const lease = await withNats(bus, (nc) => withBucket(nc, buckets.leases, async (kv) => (await getParsed(kv, leaseId, LeaseRecord))?.value));
  if (!lease) throw new RswapError(ErrorCodes.UNKNOWN_LEASE, `unknown lease '${leaseId}'`);
  return lease;
}

export function hostsTable(hosts: HostRecord[]): string {
  const rows = [['HOST', 'PORTAL', 'INITIATOR', 'OFFER', 'OFFERED', 'RESERVED', 'PRESSURE']];
  const now = Date.now();
  for (const h of hosts) {
    rows.push([
      h.cordoned ? `${h.host} (cordoned)` : h.host,
      h.exporter?.portal ?? '-',
      h.attacher ? `${h.attacher.initiator}${h.attacher.sealed === false ? ' UNSEALED' : ''} ${h.attacher.address}` : '-',
      h.offer ? formatBytes(h.offer.lendableBytes) : '-',
      ago(h.offer?.at, now),
      formatBytes(reservedBytes(h)),
      h.pressure ? `${formatBytes(h.pressure.neededBytes)} ${ago(h.pressure.at, now)}` : '-',
    ]);
  }
  return table(rows);
}
