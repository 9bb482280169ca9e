/** The exporter: lends this host's RAM as ramfs-backed tgt targets, on the broker's command. */
import { mkdir } from 'node:fs/promises';
import { z } from 'zod';
import { createLogger } from '../../shared/log.js';
import { connectNats, openStores, stopOnSignals } from '../../shared/nats.js';
import { handle, publishJson, RejectCounter } from '../../shared/messaging.js';
import { SizeSetting, parseConfig } from '../../shared/config.js';
import { createRunner } from '../../shared/runner.js';
import { getParsed } from '../../shared/kv.js';
import { requireLease } from '../../shared/lease-check.js';
import { announceLoop, every } from '../../shared/agent.js';
import { subjects } from '../../shared/subjects.js';
import { serveMetrics } from '../../shared/metrics.js';
import { ExportRequest, HostId, Ipv4, LeaseRecord, UnexportRequest } from '../../shared/schemas.js';
import { ErrorCodes, RswapError } from '../../shared/errors.js';
import { Exporter } from './exporter.js';
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
  nats: z.string().min(1),
  host: HostId,
  address: Ipv4,
  portalPort: z.coerce.number().int().min(1).max(65535).default(3260),
  tgtControlPort: z.coerce.number().int().min(0).max(65535).default(3260), // tgtd's -C: its own control socket
  /** tgtd's -t: threads that read and write the backing files (tgtd's own default is 16). */
  tgtIothreads: z.coerce.number().int().min(1).max(128).optional(),
  /**
   * iSCSI session parameters for every target, "Name=Value,...". The default lifts tgt's 8 KiB data
   * segments and lets writes send their data without waiting for an R2T: measured +50% on swap-out,
   * +10% on sequential swap-in (docs/benchmarks.md, tuning). "" keeps tgt's own defaults.
   */
  iscsiParams: IscsiParams.default(IscsiParams.parse(DEFAULT_ISCSI_PARAMS)),
  stateDir: z.string().startsWith('/').default('/var/lib/rswap/exporter'),
  reserveBytes: SizeSetting.default(1024 ** 3), // 1 GiB kept for the lender itself
  maxLendBytes: SizeSetting.default(64 * 1024 ** 3), // 64 GiB
  announceIntervalMs: z.coerce.number().int().positive().default(10_000),
  reconcileIntervalMs: z.coerce.number().int().positive().default(30_000),
  metricsPort: z.coerce.number().int().min(1).max(65535).optional(), // Prometheus /metrics; off when unset
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
  const tgt = new Tgt(run, log, config.tgtControlPort, portal, config.stateDir, config.tgtIothreads, config.iscsiParams);
  const tgtd = await tgt.ensureDaemon(config.memoryCgroup);
  log.info({ tgtd, controlPort: config.tgtControlPort, portal, memoryCgroup: config.memoryCgroup }, 'tgtd ready');

  const exporter = new Exporter(run, tgt, config, log);
  const nc = await connectNats(config.nats, `rswap-exporter-${config.host}`, log);
  const stores = await openStores(nc);
  const rejects = new RejectCounter();
  const me = config.host;

  handle(nc, subjects.exportCmd(me), { schema: ExportRequest, log, rejects }, async (request) => {
    // 'attaching' too: a broker that takes over a lease mid-attach asks again for the target and CHAP.
    const lease = await requireLease(stores.leases, request.leaseId, { role: 'lender', host: me, states: ['exporting', 'exported', 'attaching'] });
    if (lease.sizeBytes !== request.sizeBytes || lease.borrowerAddress !== request.borrower.address) {
      throw new RswapError(ErrorCodes.BAD_MESSAGE, `export request for ${request.leaseId} does not match the lease record`);
    }
    return exporter.export(request);
  });
  handle(nc, subjects.unexportCmd(me), { schema: UnexportRequest, log, rejects }, async (request) => {
    // Never tear down while the borrower may still swap on it: only once it drains, or ended.
    const lease = await requireLease(stores.leases, request.leaseId, { role: 'lender', host: me, states: ['draining', 'released', 'failed'] });
    // A failed lease whose borrower still has a session may still hold its pages (it refused a
    // swap-off): keep serving them, unless the broker says the borrower is gone.
    if (lease.state === 'failed' && !request.force && (await exporter.inUseBy(lease.id, lease.borrowerAddress))) {
      throw new RswapError(ErrorCodes.ILLEGAL_STATE, `lease ${lease.id} failed but ${lease.borrower} still has a session on its target; it stays until the borrower lets go`);
    }
    await exporter.unexport(request.leaseId);
    return {};
  });

  const stopAnnounce = announceLoop(nc, config.announceIntervalMs, log, () => {
    publishJson(nc, subjects.announce(me), { host: me, role: 'exporter', portal, at: Date.now() });
  });
  const stopReconcile = every(config.reconcileIntervalMs, 'reconcile', log, async () => {
    await exporter.reconcile(async (leaseId) => (await getParsed(stores.leases, leaseId, LeaseRecord))?.value);
  });

  const stop = async () => {
    stopAnnounce();
    stopReconcile();
  };
  const metricsServer = await serveMetrics(config.metricsPort, { service: 'exporter', host: config.host }, log);
  stopOnSignals(nc, log, async () => {
    metricsServer?.close();
    await stop();
  });
  log.info({ portal }, 'exporter started');
  return { nc, exporter, rejects, stop: async () => { metricsServer?.close(); await stop(); await nc.drain(); } };
}
