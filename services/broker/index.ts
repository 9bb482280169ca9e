/** The broker: matches demand to offers, records leases in KV and drives them through their states. */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { createLogger } from '../../shared/log.js';
import { connectNats, openStores, stopOnSignals } from '../../shared/nats.js';
import { handle, RejectCounter } from '../../shared/messaging.js';
import { SizeSetting, parseConfig, natsSettings } from '../../shared/config.js';
import { subjects } from '../../shared/subjects.js';
import { AnnounceEvent, HostId, Ipv4, HostRequest, LostEvent, PressureEvent, ReleaseRequest, ReliefEvent, SurplusEvent } from '../../shared/schemas.js';
import { HostStore } from './hosts.js';
import { LeaseStore } from './lease-store.js';
import { Lifecycle } from './lifecycle.js';
import { UnservedDemand } from './demand.js';
import { isTerminal } from './states.js';
import { serveMetrics } from '../../shared/metrics.js';
import { leaseGauges } from './gauges.js';
import { measuredAt, noteSkew } from '../../shared/clock.js';
import { BROKER_QUEUE } from '../../shared/auth.js';

export const BrokerConfig = z.strictObject({
  ...natsSettings,
  host: HostId.default('broker'), // this broker's name in lease records and logs, checked like every host id
  offerTtlMs: z.coerce.number().int().positive().default(30_000), // 30 s: monitors republish at least every 10 s
  announceTtlMs: z.coerce.number().int().positive().default(60_000), // 60 s: agents announce every 10 s
  minLeaseBytes: SizeSetting.default(64 * 1024 * 1024), // 64 MiB
  maxLeaseBytes: SizeSetting.default(4 * 1024 ** 3), // 4 GiB
  exportTimeoutMs: z.coerce.number().int().positive().default(30_000),
  attachTimeoutMs: z.coerce.number().int().positive().default(90_000), // login + self-test + mkswap
  detachTimeoutMs: z.coerce.number().int().positive().default(300_000), // swapoff of GiBs takes a while
  unexportTimeoutMs: z.coerce.number().int().positive().default(30_000),
  sweepIntervalMs: z.coerce.number().int().positive().default(15_000),
  releaseCooldownMs: z.coerce.number().int().nonnegative().default(60_000), // clear this long before leases go back
  borrowerTimeoutMs: z.coerce.number().int().positive().default(120_000), // a borrower silent this long is gone
  drainRetryMs: z.coerce.number().int().positive().default(30_000), // a refused cool-down swap-off is retried after this, doubling up to 10 min
  maxInFlight: z.coerce.number().int().positive().default(64), // pressures handled at once; more are refused until one is done
  maxLeasesPerBorrower: z.coerce.number().int().min(1).max(24).default(8), // open leases one borrower may hold (each is a swap area)
  terminalRetentionMs: z.coerce.number().int().positive().default(86_400_000), // released/failed lease records are deleted after this (24 h)
  maxClockSkewMs: z.coerce.number().int().positive().default(60_000), // hosts' timestamps believed within this of the broker's clock
  unservedTtlMs: z.coerce.number().int().positive().default(10_000), // a pressure no lender could serve is retried this long
  solicitIntervalMs: z.coerce.number().int().positive().default(2_000), // ask monitors for fresh offers at most this often
  kvReplicas: z.coerce.number().int().min(1).max(5).default(1), // copies of each KV bucket: 3 on a three-node NATS cluster
  metricsPort: z.coerce.number().int().min(1).max(65535).optional(), // Prometheus /metrics; off when unset
  metricsAddress: Ipv4.default('127.0.0.1'), // where /metrics listens: this host only unless set
});
export type BrokerConfig = z.infer<typeof BrokerConfig>;

export async function startBroker(raw: Record<string, unknown>) {
  const config = parseConfig(BrokerConfig, raw);
  const log = createLogger('broker', config.host);
  const nc = await connectNats({ url: config.nats, creds: config.creds, insecure: config.insecure }, `rswap-broker-${config.host}`, log, { role: 'broker' });
  const stores = await openStores(nc, { create: true, log, replicas: config.kvReplicas });
  const hosts = new HostStore(stores.hosts);
  // Unique per process: two brokers named alike must still tell their marks apart.
  const brokerId = `${config.host}-${process.pid}-${randomBytes(2).toString('hex')}`;
  const leases = new LeaseStore(stores.leases, nc, log, brokerId);
  // A pressure no lender can serve asks every monitor for a fresh offer, and waits for one.
  const unserved = new UnservedDemand({ ttlMs: config.unservedTtlMs, solicitEveryMs: config.solicitIntervalMs }, () => {
    log.info('no lender for a pressure: asking monitors for fresh offers');
    nc.publish(subjects.brokerSolicit, JSON.stringify({ at: Date.now() }));
  });
  const lifecycle = new Lifecycle(nc, hosts, leases, config, log, brokerId, unserved);
  const rejects = new RejectCounter();
  const queue = BROKER_QUEUE;
  const base = { log, rejects, queue };

  // Liveness and freshness by this broker's clock (shared/clock.ts): an agent is alive when its
  // announce arrives, whatever its own clock says; a measurement's `at` is believed within
  // --max-clock-skew-ms, replaced by the arrival time when further off either way.
  const skewWarnedAt = new Map<string, number>();
  handle(nc, subjects.allAnnounce, { ...base, schema: AnnounceEvent, checkHostToken: true }, async (event) => {
    const receivedAt = Date.now();
    const skew = noteSkew(event.at, receivedAt, config.maxClockSkewMs);
    if (Math.abs(skew) > config.maxClockSkewMs && receivedAt - (skewWarnedAt.get(event.host) ?? 0) > 600_000) {
      skewWarnedAt.set(event.host, receivedAt); // once per 10 minutes per host; rswap_clock_skew_total counts every one
      log.warn({ host: event.host, skewMs: skew }, "an agent's clock is off; its liveness counts by this broker's clock");
    }
    const record = await hosts.recordAnnounce(event, receivedAt);
    if (event.role === 'exporter') {
      // The lender says what it still serves: the bytes of an ended lease it let go of go back now.
      const serving = new Set(event.serving ?? []);
      for (const leaseId of Object.keys(record.reservations).filter((id) => event.serving && !serving.has(id))) {
        await hosts.unreserveIfEnded(event.host, leaseId, await leases.get(leaseId));
      }
      lifecycle.retryUnserved(Date.now());
    }
  });
  handle(nc, subjects.allSurplus, { ...base, schema: SurplusEvent, checkHostToken: true }, async (event) => {
    const at = measuredAt(event.at, Date.now(), config.maxClockSkewMs);
    const record = await hosts.recordOffer(event, at);
    log.debug({ lender: event.host, lendableBytes: event.lendableBytes, deficitBytes: event.deficitBytes, source: event.source }, 'offer recorded');
    if (event.deficitBytes > 0 && Object.keys(record.reservations).length > 0) {
      const reclaimed = await lifecycle.reclaim(event.host, event.deficitBytes, at);
      return { reclaimed: reclaimed.map((l) => l.id) };
    }
    if (event.lendableBytes > 0) lifecycle.retryUnserved(Date.now());
    return {};
  });

  // Cool-down: a timer per host that reported relief, re-armed while the clear spell is younger
  // than the cool-down; the sweep catches relief heard before a restart.
  const coolTimers = new Map<string, NodeJS.Timeout>();
  const checkCool = (host: string) =>
    lifecycle.releaseIfCool(host, Date.now()).catch((error: unknown) => log.warn({ host, err: (error as Error).message }, 'cool-down check failed'));
  const scheduleCool = (host: string, clearSince: number) => {
    if (coolTimers.has(host)) return;
    const timer = setTimeout(() => {
      coolTimers.delete(host);
      void hosts.get(host).then(async (record) => {
        if (record?.clearSince === undefined) return; // pressure came back
        if (Date.now() - record.clearSince < config.releaseCooldownMs) return scheduleCool(host, record.clearSince);
        await checkCool(host);
      }, (error: unknown) => log.warn({ host, err: (error as Error).message }, 'cool-down check failed'));
    }, Math.max(0, clearSince + config.releaseCooldownMs - Date.now()));
    timer.unref();
    coolTimers.set(host, timer);
  };
  handle(nc, subjects.allRelief, { ...base, schema: ReliefEvent, checkHostToken: true }, async (event) => {
    const record = await hosts.recordRelief(event.host, measuredAt(event.at, Date.now(), config.maxClockSkewMs));
    if (record.clearSince !== undefined) {
      lifecycle.onRelief(event.host);
      scheduleCool(event.host, record.clearSince);
    }
    return {};
  });
  handle(nc, subjects.allPressure, { ...base, schema: PressureEvent, checkHostToken: true }, async (event) => {
    log.info({ borrower: event.host, neededBytes: event.neededBytes, source: event.source }, 'pressure received');
    const receivedAt = Date.now();
    const lease = await lifecycle.onPressure(event, measuredAt(event.at, receivedAt, config.maxClockSkewMs), receivedAt);
    return lease ? { leaseId: lease.id, state: lease.state } : {};
  });
  handle(nc, subjects.allLost, { ...base, schema: LostEvent, checkHostToken: true }, async (event) => {
    log.error({ leaseId: event.leaseId, borrower: event.host, reason: event.reason }, 'a borrower lost its lender');
    const lease = await lifecycle.onLost(event);
    return lease ? { state: lease.state } : {};
  });
  handle(nc, subjects.revoke, { ...base, schema: ReleaseRequest }, async (request) => lifecycle.revoke(request.leaseId));
  // Cordon, uncordon and drain: from an operator for any host, or from a host for itself (the
  // rswap-drain unit on a lender, with only that lender's identity).
  type By = 'operator' | 'self';
  const cordon = (by: By) => async (request: HostRequest) => {
    log.warn({ host: request.host, by }, 'lender cordoned: no new leases on it');
    return { host: await hosts.setCordoned(request.host, true, Date.now(), by) };
  };
  const uncordon = (by: By) => async (request: HostRequest) => {
    log.info({ host: request.host, by }, 'lender uncordoned');
    return { host: await hosts.setCordoned(request.host, false, Date.now(), by) };
  };
  const drain = (by: By) => async (request: HostRequest) => {
    const result = await lifecycle.drainLender(request.host, by);
    log.warn({ host: request.host, by, ...result }, 'lender drained');
    return result;
  };
  for (const [operatorSubject, selfSubject, action] of [
    [subjects.cordon, subjects.allSelfCordon, cordon],
    [subjects.uncordon, subjects.allSelfUncordon, uncordon],
    [subjects.drain, subjects.allSelfDrain, drain],
  ] as const) {
    handle(nc, operatorSubject, { ...base, schema: HostRequest }, action('operator'));
    handle(nc, selfSubject, { ...base, schema: HostRequest, checkHostToken: true }, action('self'));
  }
  handle(nc, subjects.release, { ...base, schema: ReleaseRequest }, async (request) => {
    const lease = await lifecycle.release(request.leaseId);
    return { lease };
  });

  // The level-based pass, every --sweep-interval-ms: capacity promised to a lease that ended (or
  // never got recorded) goes back to its lender; cool-downs heard before a restart are acted on;
  // every lease with a step to take is reconciled; ended leases past their retention are deleted.
  const sweep = async () => {
    const all = new Map((await leases.list()).map((l) => [l.id, l]));
    const now = Date.now();
    const reserved = new Set<string>();
    const hostList = await hosts.list();
    for (const host of hostList) {
      for (const leaseId of Object.keys(host.reservations)) {
        reserved.add(leaseId);
        // A lease created after the bulk read is not an orphan: look it up again before acting.
        const lease = all.get(leaseId) ?? (await leases.get(leaseId));
        if (!lease || isTerminal(lease.state)) await hosts.unreserveIfEnded(host.host, leaseId, lease);
      }
      if (host.clearSince !== undefined && now - host.clearSince >= config.releaseCooldownMs && !coolTimers.has(host.host)) await checkCool(host.host);
    }
    await lifecycle.sweep(now, { leases: [...all.values()], hosts: hostList });
    // Ended leases are kept for `terminalRetentionMs` (for `rswap leases` and `rswap trace`), then
    // deleted once their lender holds no bytes for them (as read above, before any give-back this
    // pass: a lease freed now is deleted on the next): the bucket does not grow forever.
    for (const lease of all.values()) {
      if (isTerminal(lease.state) && now - lease.updatedAt > config.terminalRetentionMs && !reserved.has(lease.id)) await leases.remove(lease);
    }
    sweeps += 1;
  };
  let sweeps = 0;
  const timer = setInterval(() => void sweep().catch((error) => log.warn({ err: error }, 'sweep failed')), config.sweepIntervalMs);
  timer.unref();
  // At start: take over what a broker that died left mid-step (after a moment for agents to announce).
  setTimeout(() => void sweep().catch((error) => log.warn({ err: error }, 'sweep failed')), 1_000).unref();

  leaseGauges(() => leases.list());
  const metricsServer = await serveMetrics(config.metricsPort, { service: 'broker', host: config.host }, log, config.metricsAddress);

  // Hello: every agent re-announces and every monitor resends its offer (and its pressure), so a
  // broker that starts, restarts or comes back from a NATS outage knows the fleet at once.
  const hello = () => nc.publish(subjects.brokerHello, JSON.stringify({ at: Date.now() }));
  hello();
  void (async () => {
    for await (const status of nc.status()) if (status.type === 'reconnect') hello();
  })();
  const stopTimers = () => {
    metricsServer?.close();
    clearInterval(timer);
    for (const t of coolTimers.values()) clearTimeout(t);
  };
  stopOnSignals(nc, log, async () => stopTimers());
  log.info({ nats: config.nats }, 'broker started');
  return { nc, config, rejects, sweeps: () => sweeps, stop: async () => { stopTimers(); await nc.drain(); } };
}
