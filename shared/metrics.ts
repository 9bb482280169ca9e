/**
 * Prometheus metrics of one rswap process, served as text on `--metrics-port` (off when unset).
 * Every series is prefixed `rswap_` once (Node.js's own are `rswap_process_*` and `rswap_nodejs_*`);
 * each process labels its series with its service and its host (`host` is always the emitting host:
 * a series about other hosts names them `lender` or `borrower`). Rates are counters: Prometheus
 * takes the rate.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from './log.js';

export const registry = new Registry();

/** Seconds, for steps that take from milliseconds (match) to a minute (a slow attach). */
const STEP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export const metrics = {
  rejectedMessages: new Counter({ name: 'rswap_rejected_messages_total', help: 'Messages refused, by error code', labelNames: ['reason'], registers: [registry] }),
  commandFailures: new Counter({ name: 'rswap_command_failures_total', help: 'System commands that failed, by command', labelNames: ['command'], registers: [registry] }),
  commands: new Counter({ name: 'rswap_commands_total', help: 'System commands run, by command', labelNames: ['command'], registers: [registry] }),
  timeToMatch: new Histogram({ name: 'rswap_time_to_match_seconds', help: 'Pressure event to lease requested', buckets: STEP_BUCKETS, registers: [registry] }),
  timeToAttach: new Histogram({ name: 'rswap_time_to_attach_seconds', help: 'Lease requested to active (export + attach)', buckets: STEP_BUCKETS, registers: [registry] }),
};

/** A gauge whose values are computed at scrape time (e.g. from KV). */
export function scrapeGauge(name: string, help: string, labelNames: string[], read: () => Promise<Array<{ labels: Record<string, string>; value: number }>>): Gauge {
  registry.removeSingleMetric(name); // a second broker in the same process (tests) replaces the first
  return new Gauge({
    name,
    help,
    labelNames,
    registers: [registry],
    async collect() {
      this.reset();
      for (const { labels, value } of await read()) this.set(labels, value);
    },
  });
}

/**
 * Serves GET /metrics on `address`:`port` (127.0.0.1 unless the operator names an address a remote
 * Prometheus reaches); returns the server, or undefined when port is unset.
 */
export async function serveMetrics(port: number | undefined, labels: Record<string, string>, log: Logger, address = '127.0.0.1'): Promise<Server | undefined> {
  if (port === undefined) return undefined;
  registry.setDefaultLabels(labels);
  if (!registry.getSingleMetric('rswap_process_cpu_seconds_total')) collectDefaultMetrics({ register: registry, prefix: 'rswap_' }); // its names start process_ or nodejs_
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url !== '/metrics' && req.url !== '/')) {
      res.writeHead(404).end('try /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (error: unknown) => res.writeHead(500).end(`${(error as Error).message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, address, () => resolve());
  });
  server.unref();
  log.info({ address, port }, 'metrics on /metrics');
  return server;
}
