/**
 * Control-plane bench: a real nats-server with JetStream and a real broker process (`rswap broker`),
 * driven by N simulated hosts from this process. For each host count:
 *
 *   announce   every host announces an exporter and an attacher (2N requests, 64 in flight)
 *   offers     lenders (half the hosts) send surplus offers as fast as the broker answers them
 *              (128 in flight) for --seconds: the broker's saturated rate for its most frequent event
 *   pressure   borrowers send pressure at --pressure-rate per second for --seconds while every lender
 *              also offers once per 10 s and every host sends telemetry once per 10 s (the monitor's
 *              defaults), as in a fleet at steady state;
 *              each pressure leads to a lease that a scripted exporter/attacher answers at once.
 *              match = lease createdAt - pressure at (placement and the KV writes);
 *              active = the broker's reply, after export and attach
 *   memory     the broker's peak resident set (VmHWM) and its resident set at the end
 *
 * --layouts 1x1,3x2 runs each fleet on one NATS node with one broker, then on three clustered
 * nodes (JetStream KV at three replicas) with two brokers sharing the events (a queue group), the
 * bench's connection and each broker given every node's URL. All layouts run without TLS and
 * identities, as the first figures did, so they compare.
 *
 * usage: node dist/bench/control.js [--hosts 1000,10000] [--seconds 20] [--pressure-rate 5]
 *                                   [--layouts 1x1,3x2] [--out bench/results/control/control.json] [--smoke]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { subjects } from '../shared/subjects.js';
import { startNatsCluster, startNatsServer } from '../shared/nats.js';
import { TelemetryEvent } from '../shared/schemas.js';
import { GiB, MiB } from '../shared/units.js';
import { waitFor } from '../shared/wait.js';
import { listLeases } from '../cli/operator.js';
import { percentile } from './rescue.js';

const CLI = resolve(fileURLToPath(import.meta.url), '../../cli/rswap.js');

interface Latencies {
  count: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
}

export interface ControlResult {
  hosts: number;
  /** NATS nodes (KV replicas) and brokers. */
  natsNodes: number;
  brokers: number;
  announce: Latencies;
  offers: Latencies;
  pressure: Latencies & { offeredPerSecond: number; matchP50Ms: number; matchP99Ms: number; leases: number; telemetrySent: number };
  /** The largest of the brokers' peak and end resident sets. */
  brokerPeakRssBytes: number;
  brokerRssBytes: number;
}

/** A layout "NxM": N NATS nodes, M brokers. */
export function parseLayout(text: string): { natsNodes: number; brokers: number } {
  const m = /^(\d+)x(\d+)$/.exec(text);
  const natsNodes = Number(m?.[1]);
  const brokers = Number(m?.[2]);
  if (!m || ![1, 3, 5].includes(natsNodes) || brokers < 1 || brokers > 4) throw new Error(`--layouts: '${text}' is not NODESxBROKERS with 1, 3 or 5 nodes and 1-4 brokers`);
  return { natsNodes, brokers };
}

function summarize(latencies: number[], errors: number, seconds: number): Latencies {
  const sorted = [...latencies].sort((a, b) => a - b);
  const round = (n: number) => Math.round(n * 10) / 10;
  return { count: sorted.length, perSecond: Math.round(sorted.length / seconds), p50Ms: round(percentile(sorted, 50)), p99Ms: round(percentile(sorted, 99)), errors };
}

/** Runs `make(i)` requests, `inFlight` at a time, until `count` are done or `untilMs` passes. */
async function closedLoop(inFlight: number, count: number, untilMs: number, make: (i: number) => Promise<unknown>): Promise<{ latencies: number[]; errors: number; seconds: number }> {
  const latencies: number[] = [];
  let errors = 0;
  let next = 0;
  const started = performance.now();
  const worker = async () => {
    while (next < count && Date.now() < untilMs) {
      const i = next;
      next += 1;
      const t = performance.now();
      try {
        const reply = (await make(i)) as { ok?: boolean };
        if (reply?.ok === false) errors += 1;
        else latencies.push(performance.now() - t);
      } catch {
        errors += 1;
      }
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return { latencies, errors, seconds: (performance.now() - started) / 1000 };
}

const hostName = (i: number) => `sim-${String(i).padStart(5, '0')}`;
const addressOf = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;

/** Answers the broker's export/attach/detach/unexport for every simulated host, at once. */
function scriptedFleet(nc: NatsConnection): void {
  nc.subscribe('rswap.v1.cmd.*.*', {
    callback: (_e, msg) => {
      const [, , , host, verb] = msg.subject.split('.');
      const { leaseId } = msg.json<{ leaseId: string }>();
      const index = Number(host!.slice(4));
      if (verb === 'export') {
        msg.respond(JSON.stringify({ ok: true, target: { portal: `${addressOf(index)}:3260`, iqn: `iqn.2026-11.io.rswap:${host}.${leaseId}`, lun: 1 }, chap: { user: leaseId, secret: 'abcdefghijkl' } }));
      } else if (verb === 'attach') {
        msg.respond(JSON.stringify({ ok: true, device: '/dev/loop7', priority: 105, initiator: 'userspace' }));
      } else {
        msg.respond(JSON.stringify({ ok: true }));
      }
    },
  });
}

async function rssOf(pid: number): Promise<{ rss: number; hwm: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
}

/** Stops the servers of the fleet running now: on SIGINT/SIGTERM, from `main` (its `finally` does it otherwise). */
let stopFleet: (() => Promise<void>) | undefined;

async function benchFleet(hosts: number, layout: { natsNodes: number; brokers: number }, seconds: number, pressureRate: number, log: (line: string) => void): Promise<ControlResult> {
  let nats: { url: string; stop(): Promise<void> } | undefined;
  const brokers: ChildProcess[] = [];
  let nc: NatsConnection | undefined;
  const stopServers = async () => {
    for (const broker of brokers) {
      if (broker.exitCode === null && broker.signalCode === null) {
        const exited = new Promise((r) => broker.once('exit', r));
        broker.kill('SIGKILL');
        await exited;
      }
    }
    await nats?.stop();
  };
  stopFleet = stopServers;
  try {
    nats = layout.natsNodes === 1 ? await startNatsServer() : await startNatsCluster({ nodes: layout.natsNodes, hosts: [], insecure: true });
    const url = nats.url;
    let brokerOutput = '';
    const keep = (c: Buffer) => void (brokerOutput = (brokerOutput + c.toString()).slice(-20_000));
    for (let b = 0; b < layout.brokers; b += 1) {
      const broker = spawn(process.execPath, [CLI, 'broker', '--nats', url, '--insecure', '--kv-replicas', String(layout.natsNodes), '--host', `broker-${b + 1}`], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RSWAP_LOG_LEVEL: 'warn' } });
      broker.stdout!.on('data', keep);
      broker.stderr!.on('data', keep);
      brokers.push(broker);
    }
    nc = await connect({ servers: url.split(',') });
    const conn = nc;
    scriptedFleet(conn);
    const ask = async (subject: string, body: unknown, timeout = 60_000) => (await conn.request(subject, JSON.stringify(body), { timeout })).json<{ ok: boolean }>();
    // The brokers are up once one answers an announce. On a new cluster that waits for JetStream's
    // meta leader (the broker retries until its buckets exist); a broker that exits ends the wait
    // at once with its output; the deadline only guards against a hang.
    await waitFor('the broker', async () => {
      const exited = brokers.find((b) => b.exitCode !== null || b.signalCode !== null);
      if (exited) throw new Error(`a broker exited (${exited.exitCode ?? exited.signalCode}) before answering`);
      return (await ask(subjects.announce(hostName(0)), { host: hostName(0), role: 'exporter', portal: `${addressOf(0)}:3260`, at: Date.now() }, 1_000).catch(() => undefined))?.ok;
    }, { timeoutMs: 180_000 }).catch((error: unknown) => {
      throw new Error(`${String(error)}\nbroker output: ${brokerOutput}`);
    });

    const announce = await closedLoop(64, 2 * hosts, Number.POSITIVE_INFINITY, (i) => {
      const h = i >> 1;
      const host = hostName(h);
      const at = Date.now();
      return ask(subjects.announce(host), i % 2 === 0
        ? { host, role: 'exporter', portal: `${addressOf(h)}:3260`, at }
        : { host, role: 'attacher', iqn: `iqn.2026-11.io.rswap:${host}`, address: addressOf(h), initiator: 'userspace', at });
    });
    log(`  announce: ${2 * hosts} in ${announce.seconds.toFixed(1)} s`);

    const lenders = Math.max(1, Math.floor(hosts / 2));
    const offer = (h: number) => ask(subjects.surplus(hostName(h)), { host: hostName(h), lendableBytes: 64 * GiB, lentBytes: 0, deficitBytes: 0, at: Date.now() });
    const offers = await closedLoop(128, Number.MAX_SAFE_INTEGER, Date.now() + seconds * 1000, (i) => offer(i % lenders));
    log(`  offers: ${offers.latencies.length} in ${offers.seconds.toFixed(1)} s`);

    // Steady state: every lender offers once per 10 s and every host sends telemetry once per 10 s
    // (the monitor's defaults), spread evenly, while borrowers ask for memory.
    let stop = false;
    let telemetrySent = 0;
    const telemetry = (h: number) => {
      const at = Date.now();
      const event = { host: hostName(h), at, scope: 'machine', state: 'clear', limitBytes: 64 * GiB, usedBytes: 8 * GiB, signals: { swapPagesPerS: 0, refaultsPerS: 0, availableBytes: 56 * GiB, swapUsedBytes: 0 } };
      if (telemetrySent === 0) TelemetryEvent.parse(event); // what a real monitor sends
      conn.publish(subjects.telemetry(hostName(h)), JSON.stringify(event));
      telemetrySent += 1;
    };
    const background = (async () => {
      const offersPerTick = Math.max(1, Math.round(lenders / 100)); // 100 ticks of 100 ms = 10 s
      const telemetryPerTick = Math.max(1, Math.round(hosts / 100));
      for (let tick = 0; !stop; tick += 1) {
        for (let k = 0; k < offersPerTick; k += 1) void offer((tick * offersPerTick + k) % lenders).catch(() => {});
        for (let k = 0; k < telemetryPerTick; k += 1) telemetry((tick * telemetryPerTick + k) % hosts);
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    const borrowers = hosts - lenders;
    const pressureCount = Math.min(borrowers, Math.max(1, Math.round(pressureRate * seconds)));
    const pressureAt = new Map<string, number>();
    const pressureLatencies: number[] = [];
    let pressureErrors = 0;
    const pressureStarted = performance.now();
    const sends: Array<Promise<void>> = [];
    for (let k = 0; k < pressureCount; k += 1) {
      const due = pressureStarted + (k * 1000) / pressureRate;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const host = hostName(lenders + k);
      const at = Date.now();
      pressureAt.set(host, at);
      const t = performance.now();
      sends.push(
        ask(subjects.pressure(host), { host, neededBytes: 256 * MiB, at, source: 'inject' }).then(
          (reply) => (reply.ok ? void pressureLatencies.push(performance.now() - t) : void (pressureErrors += 1)),
          () => void (pressureErrors += 1),
        ),
      );
    }
    await Promise.all(sends);
    const pressureSeconds = (performance.now() - pressureStarted) / 1000;
    stop = true;
    await background;
    const leases = await listLeases({ url, insecure: true });
    const matches = leases.filter((l) => pressureAt.has(l.borrower)).map((l) => l.createdAt - pressureAt.get(l.borrower)!).sort((a, b) => a - b);
    const memory = await Promise.all(brokers.map((b) => rssOf(b.pid!)));
    if (brokers.some((b) => b.exitCode !== null)) throw new Error(`a broker exited: ${brokerOutput}`);
    const pressure = summarize(pressureLatencies, pressureErrors, pressureSeconds);
    return {
      hosts,
      ...layout,
      announce: summarize(announce.latencies, announce.errors, announce.seconds),
      offers: summarize(offers.latencies, offers.errors, offers.seconds),
      pressure: { ...pressure, offeredPerSecond: pressureRate, telemetrySent, leases: leases.length, matchP50Ms: percentile(matches, 50), matchP99Ms: percentile(matches, 99) },
      brokerPeakRssBytes: Math.max(...memory.map((m) => m.hwm)),
      brokerRssBytes: Math.max(...memory.map((m) => m.rss)),
    };
  } finally {
    stopFleet = undefined;
    await nc?.close().catch(() => {});
    await stopServers();
  }
}

export function controlTable(results: ControlResult[]): string {
  const mb = (b: number) => `${Math.round(b / MiB)} MiB`;
  const lines = [
    '| hosts | NATS nodes, brokers | announce/s (p50, p99 ms) | offers/s saturated (p50, p99 ms) | pressure: leases, reply p50/p99 ms | match p50/p99 ms | errors | broker RSS peak / end |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const r of results) {
    lines.push(
      `| ${r.hosts.toLocaleString('en')} | ${r.natsNodes}, ${r.brokers} | ${r.announce.perSecond} (${r.announce.p50Ms}, ${r.announce.p99Ms}) | ${r.offers.perSecond} (${r.offers.p50Ms}, ${r.offers.p99Ms}) | ${r.pressure.count} at ${r.pressure.offeredPerSecond}/s, ${r.pressure.p50Ms} / ${r.pressure.p99Ms} | ${r.pressure.matchP50Ms} / ${r.pressure.matchP99Ms} | ${r.announce.errors + r.offers.errors + r.pressure.errors} | ${mb(r.brokerPeakRssBytes)} / ${mb(r.brokerRssBytes)} |`,
    );
  }
  return lines.join('\n') + '\n';
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const value = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const smoke = argv.includes('--smoke');
  const fleets = (value('hosts') ?? (smoke ? '40' : '1000,10000')).split(',').map(Number);
  const seconds = Number(value('seconds') ?? (smoke ? 2 : 20));
  const pressureRate = Number(value('pressure-rate') ?? 5);
  const layouts = (value('layouts') ?? '1x1').split(',').map(parseLayout);
  const out = value('out') ?? 'bench/results/control/control.json';
  // Interrupted (a test's timeout sends SIGTERM): the brokers and nats-servers go too.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => void (stopFleet ?? (async () => {}))().finally(() => process.exit(130)));
  }
  const results: ControlResult[] = [];
  for (const hosts of fleets) {
    for (const layout of layouts) {
      console.log(`${hosts} hosts, ${layout.natsNodes} NATS node(s), ${layout.brokers} broker(s):`);
      results.push(await benchFleet(hosts, layout, seconds, pressureRate, console.log));
    }
  }
  const table = controlTable(results);
  console.log(`\n${table}`);
  await mkdir(dirname(out), { recursive: true });
  const machine = { cpus: cpus().length, cpu: cpus()[0]?.model, memoryBytes: totalmem() };
  await writeFile(out, JSON.stringify({ at: new Date().toISOString(), command: `node ${process.argv.slice(1).join(' ')}`, machine, seconds, pressureRate, layouts, results }, null, 2) + '\n');
  await writeFile(out.replace(/\.json$/, '.md'), table);
}

if (process.argv[1]?.endsWith('bench/control.js')) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
