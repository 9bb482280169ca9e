/** The monitor: watches one scope's memory and publishes pressure, relief, surplus and telemetry. */
import { z } from 'zod';
import { createLogger } from '../../shared/log.js';
import { connectNats, stopOnSignals } from '../../shared/nats.js';
import { SizeSetting, parseConfig, natsSettings } from '../../shared/config.js';
import { HostId, Ipv4 } from '../../shared/schemas.js';
import { MiB } from '../../shared/units.js';
import { DEFAULT_DETECTOR as D } from './detector.js';
import { Monitor } from './monitor.js';
import { openSource } from './sources.js';
import { openWaker } from './notify.js';
import { serveMetrics } from '../../shared/metrics.js';

const ms = () => z.coerce.number().int().positive();
const pct = () => z.coerce.number().min(0).max(100);

export const MonitorConfig = z
  .strictObject({
    ...natsSettings,
    host: HostId,
    /** 'machine' or 'cgroup:<absolute path of a memory cgroup folder>' */
    scope: z.string().regex(/^(machine|cgroup:\/.*)$/, "scope must be 'machine' or 'cgroup:/path/of/the/cgroup'").default('machine'),
    intervalMs: ms().default(500),
    enterStallPct: pct().default(D.enterStallPct),
    exitStallPct: pct().default(D.exitStallPct),
    enterSwapPagesPerS: z.coerce.number().nonnegative().default(D.enterSwapPagesPerS),
    exitSwapPagesPerS: z.coerce.number().nonnegative().default(D.exitSwapPagesPerS),
    enterHoldMs: z.coerce.number().int().nonnegative().default(D.enterHoldMs),
    exitHoldMs: z.coerce.number().int().nonnegative().default(D.exitHoldMs),
    minNeededBytes: SizeSetting.default(D.minNeededBytes),
    horizonS: z.coerce.number().nonnegative().default(D.horizonS),
    headroomLeadS: z.coerce.number().nonnegative().default(D.headroomLeadS), // pressure when memory would run out within this at the fill rate (0: off)
    pressureRepeatMs: ms().default(2_000),
    heartbeatMs: ms().default(5_000),
    reserveBytes: SizeSetting.default(1024 * MiB),
    surplusStepBytes: SizeSetting.default(16 * MiB),
    surplusRefreshMs: ms().default(10_000),
    exporterStateDir: z.string().startsWith('/').default('/var/lib/rswap/exporter'),
    attacherStateDir: z.string().startsWith('/').default('/var/lib/rswap/attacher'),
    /** PSI trigger: wake when tasks stalled this long within 2 s. */
    triggerStallMs: z.coerce.number().int().min(1).max(2_000).default(100),
    metricsPort: z.coerce.number().int().min(1).max(65535).optional(), // Prometheus /metrics; off when unset
    metricsAddress: Ipv4.default('127.0.0.1'), // where /metrics listens: this host only unless set
  })
  .refine((c) => c.exitStallPct <= c.enterStallPct, { message: 'exitStallPct must not exceed enterStallPct', path: ['exitStallPct'] })
  .refine((c) => c.exitSwapPagesPerS <= c.enterSwapPagesPerS, { message: 'exitSwapPagesPerS must not exceed enterSwapPagesPerS', path: ['exitSwapPagesPerS'] });
export type MonitorConfig = z.infer<typeof MonitorConfig>;

export async function startMonitor(raw: Record<string, unknown>) {
  const config = parseConfig(MonitorConfig, raw);
  const log = createLogger('monitor', config.host);
  const source = await openSource(config.scope);
  const { waker, reason } = await openWaker(source, config.triggerStallMs);
  if (waker) log.info({ waker: waker.kind }, 'kernel pressure notifications on');
  else log.warn({ reason }, `no kernel pressure notifications: sampling every ${config.intervalMs}ms only`);
  const nc = await connectNats({ url: config.nats, creds: config.creds, insecure: config.insecure }, `rswap-monitor-${config.host}`, log, { role: 'host', name: config.host });
  const monitor = new Monitor(nc, source, waker, config, log);
  monitor.start();
  const metricsServer = await serveMetrics(config.metricsPort, { service: 'monitor', host: config.host }, log, config.metricsAddress);
  stopOnSignals(nc, log, async () => {
    metricsServer?.close();
    await monitor.stop();
  });
  log.info({ scope: config.scope, reserveBytes: config.reserveBytes }, 'monitor started');
  return { nc, monitor, config, stop: async () => { metricsServer?.close(); await monitor.stop(); await nc.drain(); } };
}
