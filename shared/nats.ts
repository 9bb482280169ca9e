import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import type { Logger } from './log.js';
import { buckets } from './subjects.js';
import { stopTracing } from './tracing.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type { NatsConnection, KV };

/**
 * Connects with endless reconnects (a service outlives a nats-server restart) and logs every
 * status change. The first connect fails fast so a wrong URL is reported, not retried forever.
 */
export async function connectNats(url: string, name: string, log: Logger): Promise<NatsConnection> {
  const nc = await connect({
    servers: url.split(','),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500, // ms between attempts
    timeout: 5_000, // ms for the first connect
  });
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === 'reconnecting' || status.type === 'ping') continue;
      log.info({ nats: status.type }, 'nats status');
    }
  })();
  return nc;
}

export interface Stores {
  leases: KV;
  hosts: KV;
}

/**
 * Opens (creating if needed) the two KV buckets. File storage so lease state survives a
 * nats-server restart; a little history for debugging.
 */
export async function openStores(nc: NatsConnection): Promise<Stores> {
  const kvm = new Kvm(nc);
  const [leases, hosts] = await Promise.all([
    kvm.create(buckets.leases, { history: 5, storage: 'file' }),
    kvm.create(buckets.hosts, { history: 3, storage: 'file' }),
  ]);
  return { leases, hosts };
}

/** Drains the connection on SIGINT/SIGTERM, then runs `onStop`, then exits. */
export function stopOnSignals(nc: NatsConnection, log: Logger, onStop: () => Promise<void> = async () => {}): void {
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    try {
      await onStop();
      await nc.drain();
    } catch (error) {
      log.warn({ err: error }, 'error while stopping');
    }
    await stopTracing();
    process.exit(0);
  };
  process.once('SIGINT', () => void stop('SIGINT'));
  process.once('SIGTERM', () => void stop('SIGTERM'));
}

/** A TCP port free on loopback right now (for a nats-server of a test or bench). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

export interface NatsServer {
  url: string;
  stop(): Promise<void>;
}

/** A real nats-server with JetStream on a free loopback port and a fresh store, for a test or bench. */
export async function startNatsServer(): Promise<NatsServer> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'rswap-nats-'));
  const child: ChildProcess = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdio: ['ignore', 'ignore', 'pipe'] });
  await new Promise<void>((resolve, reject) => {
    let output = '';
    const timer = setTimeout(() => reject(new Error(`nats-server did not start: ${output}`)), 10_000);
    child.stderr!.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('Server is ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('error', reject);
  });
  return {
    url: `nats://127.0.0.1:${port}`,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await new Promise((r) => child.once('exit', r));
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
