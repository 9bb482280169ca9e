import { connect, type ConnectionOptions, type NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import type { Logger } from './log.js';
import { buckets } from './subjects.js';
import { stopTracing } from './tracing.js';
import { authInit, connectionOptions, INSECURE_WARNING, type NatsAccess, type Role } from './auth.js';
import { ErrorCodes, RswapError } from './errors.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type { NatsConnection, KV, NatsAccess };

/**
 * Connects with endless reconnects (a service outlives a nats-server restart) and logs every
 * status change. The first connect fails fast so a wrong URL is reported, not retried forever.
 * With credentials it signs in with the identity's NKey over TLS (rswap's CA) and refuses to start
 * as another identity than `expect` says; without them it connects only if `insecure` was asked
 * for, and warns on every start.
 */
export async function connectNats(access: NatsAccess, name: string, log: Logger, expect?: { role: Role; name?: string }): Promise<NatsConnection> {
  const { options, creds } = await connectionOptions(access);
  if (creds && expect && (creds.role !== expect.role || (expect.name !== undefined && creds.name !== expect.name))) {
    throw new RswapError(ErrorCodes.CONFIG, `${access.creds} is ${creds.role} '${creds.name}'; this process needs ${expect.role}${expect.name ? ` '${expect.name}'` : ''} credentials`);
  }
  if (!creds) log.warn(INSECURE_WARNING);
  log.info({ nats: access.url }, 'connecting to NATS');
  const nc = await connect({
    ...options,
    servers: access.url.split(','),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500, // ms between attempts
    timeout: 5_000, // ms for each attempt of the first connect
    // A service does not give up because NATS is down or slow when it starts (a slow TLS handshake
    // on a loaded machine): it keeps trying, like after any later disconnect.
    waitOnFirstConnect: true,
  });
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === 'reconnecting' || status.type === 'ping') continue;
      log.info({ nats: status.type, ...(status.type === 'error' ? { err: String((status as { error?: unknown }).error ?? '') } : {}) }, 'nats status');
    }
  })();
  return nc;
}

/**
 * A connection as one identity for a short task (the CLI, a test, a bench): TLS and NKey from the
 * credentials, or plaintext only when `insecure` was asked for (with a warning on stderr).
 */
export async function connectAs(access: NatsAccess, name: string, extra: Partial<ConnectionOptions> = {}): Promise<NatsConnection> {
  const { options, creds } = await connectionOptions(access);
  if (!creds) process.stderr.write(`${INSECURE_WARNING}\n`);
  return connect({ ...options, servers: access.url.split(','), name, timeout: 5_000, ...extra });
}

export interface Stores {
  leases: KV;
  hosts: KV;
}

/**
 * Opens the two KV buckets. A broker creates them if needed (file storage, so lease state
 * survives a nats-server restart; a little history for debugging); an agent, which may only read
 * them, waits until a broker has.
 */
export async function openStores(nc: NatsConnection, options: { create: boolean; log?: Logger; replicas?: number } = { create: true }): Promise<Stores> {
  const kvm = new Kvm(nc);
  // replicas: 3 on a three-node cluster, so the records outlive any one node (docs/operations.md).
  const replicas = options.replicas ?? 1;
  // Replicated, gets go to the stream's leader: a "direct get" may be answered by a follower that
  // has not applied the latest write yet, and the broker reads each lease back right after it
  // writes it (a release read its own end request as not there, in the cluster test).
  const consistent = replicas > 1 ? { allow_direct: false } : {};
  const attempt = async (): Promise<Stores> => {
    const [leases, hosts] = options.create
      ? await Promise.all([
          kvm.create(buckets.leases, { history: 5, storage: 'file', replicas, ...consistent }),
          kvm.create(buckets.hosts, { history: 3, storage: 'file', replicas, ...consistent }),
        ])
      : await Promise.all([kvm.open(buckets.leases), kvm.open(buckets.hosts)]);
    return { leases, hosts };
  };
  const startedAt = Date.now();
  let reportedAt = 0;
  for (;;) {
    try {
      return await attempt();
    } catch (error) {
      const reason = stillStarting(error, options.create);
      if (!reason) throw error;
      // Once at first, then every 30 s: the wait is visible, not a log flood.
      if (reportedAt === 0 || Date.now() - reportedAt >= 30_000) {
        const waitedS = Math.round((Date.now() - startedAt) / 1000);
        if (reportedAt === 0) options.log?.info({ reason }, options.create ? 'waiting for JetStream to create the KV buckets' : 'waiting for a broker to create the KV buckets');
        else options.log?.warn({ reason, waitedS }, 'still waiting for the KV buckets');
        reportedAt = Date.now();
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
}

/**
 * Why opening the buckets may succeed if tried again, or undefined for an error that will not go
 * away (a permission, a bucket made with other settings): JetStream still starting or slow to
 * answer (no answer at all while a new cluster elects its meta leader, or "temporarily
 * unavailable"; a loaded machine, a VM under TCG), a cluster not yet formed ("no suitable peers"),
 * or, for an agent, a bucket no broker has created yet.
 */
export function stillStarting(error: unknown, create: boolean): string | undefined {
  const text = String(error);
  if (/timeout|no responders|temporarily unavailable|no suitable peers/i.test(text)) return text;
  if (!create && /stream not found|bucket not found/i.test(text)) return text;
  return undefined;
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
  /** How to reach it: insecurely for a server without auth, else as the broker. */
  access: NatsAccess;
  /** With auth: how to reach it as one identity (broker, operator, observer, each host). */
  as(identity: string): NatsAccess;
  /** The auth folder (with auth). */
  authDir?: string;
  /** Makes nats-server read its config again (SIGHUP), as after `rswap auth add-host|rotate`. */
  reload(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * A real nats-server with JetStream on a free loopback port and a fresh store, for a test or bench.
 * Without `auth` it has no identities and no TLS (for tests of the broker's logic, which script
 * many hosts on one connection); with it, an auth folder as `rswap auth init` makes one, with an
 * identity for each of `auth.hosts`, and TLS required.
 */
export async function startNatsServer(options: { auth?: { hosts: string[] } } = {}): Promise<NatsServer> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'rswap-nats-'));
  const authDir = join(dir, 'auth');
  if (options.auth) await authInit(authDir, { serverNames: ['localhost'], serverIps: ['127.0.0.1'], hosts: options.auth.hosts });
  const args = [...(options.auth ? ['-c', join(authDir, 'nats.conf')] : []), '-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir];
  const child: ChildProcess = spawn('nats-server', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let output = '';
  child.stderr!.on('data', (chunk: Buffer) => void (output += chunk.toString()));
  const logged = (text: string, from: number, what: string) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (output.indexOf(text, from) >= 0) {
          clearTimeout(timer);
          child.stderr!.off('data', check);
          resolve();
        }
      };
      const timer = setTimeout(() => reject(new Error(`nats-server: ${what} not logged within 10 s: ${output.slice(from)}`)), 10_000);
      child.stderr!.on('data', check);
      child.once('error', reject);
      check();
    });
  await logged('Server is ready', 0, 'start');
  const url = `nats://127.0.0.1:${port}`;
  const as = (identity: string): NatsAccess => {
    if (!options.auth) return { url, insecure: true };
    return { url, creds: join(authDir, 'creds', `${identity}.creds`) };
  };
  return {
    url,
    access: as('broker'),
    as,
    ...(options.auth ? { authDir } : {}),
    reload: async () => {
      const from = output.length;
      child.kill('SIGHUP');
      await logged('Reloaded server configuration', from, 'reload');
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await new Promise((r) => child.once('exit', r));
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface NatsCluster {
  /** Every node's client URL, comma-separated, as agents and the CLI take them. */
  url: string;
  names: string[];
  as(identity: string): NatsAccess;
  authDir: string;
  /** kill -9 of one node (by index); its store stays. */
  kill(node: number): Promise<void>;
  /** Starts a killed node again, on its old store and ports. */
  start(node: number): Promise<void>;
  stop(): Promise<void>;
}

/**
 * `nodes` nats-servers with JetStream on loopback, clustered over mutual-TLS routes, with the
 * identities and TLS `rswap auth init --route ...` makes, for a test or bench of the replicated
 * control plane. Resolves once every node logged that it is ready.
 */
export async function startNatsCluster(options: { nodes?: number; hosts: string[]; insecure?: boolean }): Promise<NatsCluster> {
  const count = options.nodes ?? 3;
  const dir = await mkdtemp(join(tmpdir(), 'rswap-nats-cluster-'));
  const authDir = join(dir, 'auth');
  const ports = await Promise.all(Array.from({ length: count }, () => freePort()));
  const routePorts = await Promise.all(Array.from({ length: count }, () => freePort()));
  const routes = routePorts.map((p) => `nats-route://127.0.0.1:${p}`);
  // Insecure only for a bench compared with the one-node figures, which ran insecure too.
  if (!options.insecure) await authInit(authDir, { serverNames: ['localhost'], serverIps: ['127.0.0.1'], hosts: options.hosts, routes });
  const names = ports.map((_, i) => `n${i + 1}`);
  const children: Array<ChildProcess | undefined> = [];
  const start = async (i: number) => {
    const config = options.insecure ? ['--cluster_name', 'rswap', '--routes', routes.join(',')] : ['-c', join(authDir, 'nats.conf')];
    const args = [...config, '--name', names[i]!, '-a', '127.0.0.1', '-p', String(ports[i]), '--cluster', `nats://127.0.0.1:${routePorts[i]}`, '-js', '-sd', join(dir, names[i]!)];
    const child = spawn('nats-server', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    children[i] = child;
    let output = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nats-server ${names[i]} not ready within 20 s: ${output}`)), 20_000);
      child.stderr!.on('data', (chunk: Buffer) => {
        output += chunk.toString();
        if (output.includes('Server is ready')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`nats-server ${names[i]} exited (${code}): ${output}`)));
    });
  };
  const kill = async (i: number) => {
    const child = children[i];
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    }
    children[i] = undefined;
  };
  try {
    await Promise.all(names.map((_, i) => start(i)));
  } catch (error) {
    for (let i = 0; i < count; i += 1) await kill(i);
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  return {
    url: ports.map((p) => `nats://127.0.0.1:${p}`).join(','),
    names,
    as: (identity) => {
      const url = ports.map((p) => `nats://127.0.0.1:${p}`).join(',');
      return options.insecure ? { url, insecure: true } : { url, creds: join(authDir, 'creds', `${identity}.creds`) };
    },
    authDir,
    kill,
    start,
    stop: async () => {
      for (let i = 0; i < count; i += 1) await kill(i);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
