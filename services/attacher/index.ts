/** The attacher: swaps onto remote memory on the broker's command, and gives it back safely. */
import { access, mkdir } from 'node:fs/promises';
import { z } from 'zod';
import { createLogger, type Logger } from '../../shared/log.js';
import { connectNats, openStores, stopOnSignals } from '../../shared/nats.js';
import { handle, publishJson, RejectCounter } from '../../shared/messaging.js';
import { BoolSetting, SizeSetting, parseConfig, natsSettings } from '../../shared/config.js';
import { createRunner, type Runner } from '../../shared/runner.js';
import { getParsed } from '../../shared/kv.js';
import { requireLease } from '../../shared/lease-check.js';
import { statesAccepting } from '../../shared/lease-states.js';
import { announceLoop, every } from '../../shared/agent.js';
import { subjects } from '../../shared/subjects.js';
import { serveMetrics } from '../../shared/metrics.js';
import { AttachRequest, DetachRequest, HostId, Ipv4, Iqn, LeaseRecord } from '../../shared/schemas.js';
import { ErrorCodes, RswapError } from '../../shared/errors.js';
import { Attacher } from './attacher.js';
import type { Initiator } from './initiator.js';
import { KernelInitiator } from './kernel.js';
import { UserspaceInitiator } from './userspace.js';
import { IQN_PREFIX } from '../exporter/exporter.js';

export const AttacherConfig = z.strictObject({
  ...natsSettings,
  host: HostId,
  address: Ipv4,
  iqn: Iqn.optional(), // default iqn.2026-11.io.rswap:<host>
  initiator: z.enum(['auto', 'kernel', 'userspace']).default('auto'),
  stateDir: z.string().startsWith('/').default('/var/lib/rswap/attacher'),
  /** Swap to leases in the clear: the lender can read every page (warned about on start and attach). */
  unsealed: BoolSetting.default(false),
  swapPriority: z.coerce.number().int().min(0).max(32767).optional(), // default: local max + 100
  swapoffMarginBytes: SizeSetting.default(256 * 1024 * 1024), // 256 MiB
  /** Swap areas this host may have in all, local ones included: the kernel allows at most 32 (MAX_SWAPFILES, fewer with some options). */
  maxSwapAreas: z.coerce.number().int().min(1).max(29).default(24),
  swapoffTimeoutMs: z.coerce.number().int().positive().default(300_000),
  /** How long iscsiadm, mkswap, swapon and the like may take (a VM under emulation needs minutes). */
  commandTimeoutMs: z.coerce.number().int().positive().default(30_000),
  replacementTimeoutS: z.coerce.number().int().min(1).default(120), // how long I/O waits for a lender that went away
  healthIntervalMs: z.coerce.number().int().positive().default(5_000), // a probe read per lease this often
  announceIntervalMs: z.coerce.number().int().positive().default(10_000),
  reconcileIntervalMs: z.coerce.number().int().positive().default(30_000),
  metricsPort: z.coerce.number().int().min(1).max(65535).optional(), // Prometheus /metrics; off when unset
  metricsAddress: Ipv4.default('127.0.0.1'), // where /metrics listens: this host only unless set
});
export type AttacherConfig = z.infer<typeof AttacherConfig>;

export const UNSEALED_WARNING =
  'UNSEALED: swapping to leases without encryption (--unsealed). Every lender this host borrows from can read and change the pages it swaps there: process memory, keys and passwords included.';

const exists = (path: string) => access(path).then(() => true, () => false);

/** kernel where open-iscsi can work (iscsi_tcp loaded or loadable), else userspace. */
export async function pickInitiator(wanted: 'auto' | 'kernel' | 'userspace', run: Runner): Promise<'kernel' | 'userspace'> {
  if (wanted !== 'auto') return wanted;
  if (await exists('/sys/module/iscsi_tcp')) return 'kernel';
  const loadable = await run('modprobe', ['-n', 'iscsi_tcp']).then(() => true, () => false);
  return loadable ? 'kernel' : 'userspace';
}

export function makeInitiator(kind: 'kernel' | 'userspace', run: Runner, log: Logger, config: AttacherConfig, iqn: string): Initiator {
  const seal = !config.unsealed;
  if (kind === 'kernel') return new KernelInitiator(run, log, { initiatorIqn: iqn, replacementTimeoutS: config.replacementTimeoutS, deviceWaitMs: 15_000, seal });
  return new UserspaceInitiator(run, log, config.stateDir, iqn, seal);
}

export async function startAttacher(raw: Record<string, unknown>) {
  const config = parseConfig(AttacherConfig, raw);
  const log = createLogger('attacher', config.host);
  const run = createRunner(log, { defaultTimeoutMs: config.commandTimeoutMs });
  await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  const iqn = config.iqn ?? `${IQN_PREFIX}:${config.host}`;
  const kind = await pickInitiator(config.initiator, run);
  const attacher = new Attacher(run, makeInitiator(kind, run, log, config, iqn), config, log);
  const nc = await connectNats({ url: config.nats, creds: config.creds, insecure: config.insecure }, `rswap-attacher-${config.host}`, log, { role: 'host', name: config.host });
  const stores = await openStores(nc, { create: false, log });
  const rejects = new RejectCounter();
  const me = config.host;

  handle(nc, subjects.attachCmd(me), { schema: AttachRequest, log, rejects }, async (request) => {
    const lease = await requireLease(stores.leases, request.leaseId, { role: 'borrower', host: me, states: statesAccepting('attach') });
    if (lease.target?.iqn !== request.target.iqn || lease.target.portal !== request.target.portal || lease.sizeBytes !== request.sizeBytes) {
      throw new RswapError(ErrorCodes.BAD_MESSAGE, `attach request for ${request.leaseId} does not match the lease record`);
    }
    return attacher.attach(request);
  });
  handle(nc, subjects.detachCmd(me), { schema: DetachRequest, log, rejects }, async (request) => {
    await requireLease(stores.leases, request.leaseId, { role: 'borrower', host: me, states: statesAccepting('detach') });
    await attacher.detach(request.leaseId);
    return {};
  });

  const stopAnnounce = announceLoop(nc, config.announceIntervalMs, log, () => {
    publishJson(nc, subjects.announce(me), { host: me, role: 'attacher', iqn, address: config.address, initiator: kind, sealed: !config.unsealed, at: Date.now() });
  });
  const stopReconcile = every(config.reconcileIntervalMs, 'reconcile', log, async () => {
    await attacher.reconcile(async (leaseId) => (await getParsed(stores.leases, leaseId, LeaseRecord))?.value);
  });
  const stopHealth = every(config.healthIntervalMs, 'health', log, async () => {
    for (const { leaseId, reason } of await attacher.checkHealth(Date.now(), config.replacementTimeoutS * 1000)) {
      log.error({ leaseId, reason }, 'lender lost');
      publishJson(nc, subjects.lost(me), { host: me, leaseId, reason, at: Date.now() });
    }
  });
  const stop = async () => {
    stopAnnounce();
    stopReconcile();
    stopHealth();
  };
  const metricsServer = await serveMetrics(config.metricsPort, { service: 'attacher', host: config.host }, log, config.metricsAddress);
  stopOnSignals(nc, log, async () => {
    metricsServer?.close();
    await stop();
  });
  if (config.unsealed) log.warn(UNSEALED_WARNING);
  log.info({ initiator: kind, iqn, address: config.address, sealed: !config.unsealed }, 'attacher started');
  return { nc, attacher, rejects, stop: async () => { metricsServer?.close(); await stop(); await nc.drain(); } };
}
