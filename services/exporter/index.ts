/** The exporter: lends this host's RAM as ramfs-backed tgt targets, on the broker's command. */
import { mkdir } from 'node:fs/promises';
import { z } from 'zod';
import { createLogger } from '../../shared/log.js';
import { connectNats, openStores, stopOnSignals } from '../../shared/nats.js';
import { handle, publishJson, RejectCounter } from '../../shared/messaging.js';
import { SizeSetting, parseConfig, natsSettings } from '../../shared/config.js';
import { createRunner } from '../../shared/runner.js';
import { getParsed } from '../../shared/kv.js';
import { requireLease } from '../../shared/lease-check.js';
import { statesAccepting } from '../../shared/lease-states.js';
import { announceLoop, every } from '../../shared/agent.js';
import { subjects } from '../../shared/subjects.js';
import { registry, serveMetrics } from '../../shared/metrics.js';
import { Gauge } from 'prom-client';
import { ExportRequest, HostId, Ipv4, LeaseRecord, UnexportRequest } from '../../shared/schemas.js';
import { ErrorCodes, RswapError } from '../../shared/errors.js';
import { Exporter } from './exporter.js';
import { openSource } from '../monitor/sources.js';
import { Tgt } from './tgt.js';

/** The iSCSI login parameters tgt lets a target set (RFC 7143 names), with their value shapes. */
const ISCSI_PARAMS: Record<string, RegExp> = {
  MaxRecvDataSegmentLength: /^\d{3,8}$/,
  MaxXmitDataSegmentLength: /^\d{3,8}$/,
  FirstBurstLength: /^\d{3,8}$/,
  MaxBurstLength: /^\d{3,8}$/,
  MaxOutstandingR2T: /^\d{1,5}$/,
  InitialR2T: /^(Yes|No)$/,
  ImmediateData: /^(Yes|No)$/,
  HeaderDigest: /^(None|CRC32C)$/,
  DataDigest: /^(None|CRC32C)$/,
};

export const DEFAULT_ISCSI_PARAMS = 'MaxRecvDataSegmentLength=262144,MaxXmitDataSegmentLength=262144,InitialR2T=No,ImmediateData=Yes,FirstBurstLength=262144,MaxBurstLength=1048576';

/** "InitialR2T=No,FirstBurstLength=262144" -> { InitialR2T: 'No', FirstBurstLength: '262144' }, each checked. */
export const IscsiParams = z.string().transform((text, ctx) => {
  const params: Record<string, string> = {};
  for (const pair of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const [name, value] = pair.split('=');
    const shape = name ? ISCSI_PARAMS[name] : undefined;
    if (!shape || value === undefined || !shape.test(value)) {
      ctx.addIssue({ code: 'custom', message: `'${pair}' is not a settable iSCSI parameter (${Object.keys(ISCSI_PARAMS).join(', ')})` });
      return z.NEVER;
    }
    params[name!] = value;
  }
  return params;
});

export const ExporterConfig = z.strictObject({
  ...natsSettings,
  host: HostId,
  address: Ipv4,
  portalPort: z.coerce.number().int().min(1).max(65535).default(3260),
  tgtControlPort: z.coerce.number().int().min(0).max(65535).default(3260), // tgtd's -C: its own control socket
  /** tgtd's -t: threads that read and write the backing files (tgtd's own default is 16). */
  tgtIothreads: z.coerce.number().int().min(1).max(128).optional(),
  /**
   * iSCSI session parameters for every target, "Name=Value,...". The default lifts tgt's 8 KiB data
   * segments and lets writes send their data without waiting for an R2T: tgt's own filled at 0.85x
   * of it, with reads no different (docs/benchmarks.md, tuning). "" keeps tgt's own defaults.
   */
  iscsiParams: IscsiParams.default(IscsiParams.parse(DEFAULT_ISCSI_PARAMS)),
  stateDir: z.string().startsWith('/').default('/var/lib/rswap/exporter'),
  reserveBytes: SizeSetting.default(1024 ** 3), // 1 GiB kept for the lender itself
  maxLendBytes: SizeSetting.default(64 * 1024 ** 3), // 64 GiB
  announceIntervalMs: z.coerce.number().int().positive().default(10_000),
  reconcileIntervalMs: z.coerce.number().int().positive().default(30_000),
  /**
   * A failed lease's (or an orphan's) target stays this long after its last session was seen: a
   * borrower cut off for a while (past tgtd's NOP-In) may log in again and still needs its pages.
   * Longer than the initiator's replacement timeout (120 s). A released lease's target goes at once.
   */
  sessionGraceMs: z.coerce.number().int().nonnegative().default(150_000),
  /**
   * tgtd's NOP-In probing of every session: a ping every `nopIntervalS`, and a session that misses
   * `nopCount` in a row is dropped. It is how the lender learns, by itself, that a borrower died
   * without logging out (about interval x count); only then does the target go.
   */
  nopIntervalS: z.coerce.number().int().min(1).max(3600).default(5),
  nopCount: z.coerce.number().int().min(1).max(100).default(6),
  metricsPort: z.coerce.number().int().min(1).max(65535).optional(), // Prometheus /metrics; off when unset
  metricsAddress: Ipv4.default('127.0.0.1'), // where /metrics listens: this host only unless set
  /** A memory cgroup for tgtd: lease pages it writes are charged there (the testbed's host cgroup). */
  memoryCgroup: z.string().regex(/^\/[^']*$/, 'an absolute path without quotes').optional(),
});
export type ExporterConfig = z.infer<typeof ExporterConfig>;

export async function startExporter(raw: Record<string, unknown>) {
  const config = parseConfig(ExporterConfig, raw);
  const log = createLogger('exporter', config.host);
  const run = createRunner(log);
  await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  const portal = `${config.address}:${config.portalPort}`;
  const targetParams = { ...config.iscsiParams, nop_interval: String(config.nopIntervalS), nop_count: String(config.nopCount) };
  const tgt = new Tgt(run, log, config.tgtControlPort, portal, config.stateDir, config.tgtIothreads, targetParams);
  const tgtd = await tgt.ensureDaemon(config.memoryCgroup);
  log.info({ tgtd, controlPort: config.tgtControlPort, portal, memoryCgroup: config.memoryCgroup }, 'tgtd ready');

  // Lent pages are charged where tgtd runs: its memory cgroup when it has one, within the
  // machine's (a cgroup without a limit would otherwise look as big as the machine's RAM).
  const machine = await openSource('machine');
  const cgroup = config.memoryCgroup ? await openSource(`cgroup:${config.memoryCgroup}`) : undefined;
  const memory = {
    read: async () => {
      const [m, c] = await Promise.all([machine.read(), cgroup?.read()]);
      return c && c.availableBytes < m.availableBytes ? c : m;
    },
  };
  const exporter = new Exporter(run, tgt, config, log, memory);
  // Targets made before this exporter (an adopted tgtd) get the same session probing.
  await tgt.applyParams(['nop_interval', 'nop_count']).catch((error: unknown) => log.warn({ err: (error as Error).message }, 'could not set NOP-In on existing targets'));
  const orphans = new Gauge({ name: 'rswap_exporter_orphan_targets', help: 'Targets with a session whose lease record is missing: kept, for an operator to look at', registers: [registry] });
  const nc = await connectNats({ url: config.nats, creds: config.creds, insecure: config.insecure }, `rswap-exporter-${config.host}`, log, { role: 'host', name: config.host });
  const stores = await openStores(nc, { create: false, log });
  const rejects = new RejectCounter();
  const me = config.host;

  handle(nc, subjects.exportCmd(me), { schema: ExportRequest, log, rejects }, async (request) => {
    // 'attaching' too: a broker that takes over a lease mid-attach asks again for the target and CHAP.
    const lease = await requireLease(stores.leases, request.leaseId, { role: 'lender', host: me, states: statesAccepting('export') });
    if (lease.sizeBytes !== request.sizeBytes || lease.borrowerAddress !== request.borrower.address) {
      throw new RswapError(ErrorCodes.BAD_MESSAGE, `export request for ${request.leaseId} does not match the lease record`);
    }
    return exporter.export(request);
  });
  handle(nc, subjects.unexportCmd(me), { schema: UnexportRequest, log, rejects }, async (request) => {
    // Only once the lease drains or ended; and whatever the state, never while a session is
    // logged in: exporter.unexport refuses that (RSWAP_E_IN_USE), the pages may still be in use.
    await requireLease(stores.leases, request.leaseId, { role: 'lender', host: me, states: statesAccepting('unexport') });
    await exporter.unexport(request.leaseId);
    void announce(); // the broker may give the bytes back now
    return {};
  });

  // Where it serves, and which leases it still holds a target or ramfs for: the broker keeps
  // those bytes promised until they are gone (see reservationEnded in services/broker/policy.ts).
  // And which have a borrower logged in: the broker does not call a borrower gone while it is.
  const announce = async () => {
    try {
      const { serving, sessions } = await exporter.report();
      const orphans = [...exporter.orphans].sort().slice(0, 4096);
      publishJson(nc, subjects.announce(me), { host: me, role: 'exporter', portal, at: Date.now(), serving, sessions, ...(orphans.length ? { orphans } : {}) });
    } catch (error) {
      log.warn({ err: (error as Error).message }, 'announce failed');
    }
  };
  const stopAnnounce = announceLoop(nc, config.announceIntervalMs, log, () => void announce());
  const stopReconcile = every(config.reconcileIntervalMs, 'reconcile', log, async () => {
    const orphansBefore = [...exporter.orphans].sort().join();
    const removed = await exporter.reconcile(async (leaseId) => (await getParsed(stores.leases, leaseId, LeaseRecord))?.value);
    orphans.set(exporter.orphans.size);
    // Tell the broker at once what changed: bytes it may give back, orphans for `rswap leases`.
    if (removed.length > 0 || [...exporter.orphans].sort().join() !== orphansBefore) void announce();
  });

  const stop = async () => {
    stopAnnounce();
    stopReconcile();
  };
  const metricsServer = await serveMetrics(config.metricsPort, { service: 'exporter', host: config.host }, log, config.metricsAddress);
  stopOnSignals(nc, log, async () => {
    metricsServer?.close();
    await stop();
  });
  log.info({ portal }, 'exporter started');
  return { nc, exporter, rejects, stop: async () => { metricsServer?.close(); await stop(); await nc.drain(); } };
}
