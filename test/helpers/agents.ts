/**
 * Scripted host agents for broker tests: they answer the broker's commands on NATS like a real
 * exporter and attacher would (same subjects and reply shapes) and record every command, so a test
 * can assert which commands were sent and in what order. The real agents are in the e2e tests.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { subjects } from '../../shared/subjects.js';
import { openStores } from '../../shared/nats.js';
import { listParsed } from '../../shared/kv.js';
import { HostRecord } from '../../shared/schemas.js';
import { waitFor } from '../../shared/wait.js';

/**
 * Waits until the broker has recorded both agents of every host (each announce is its own message,
 * handled in any order: a host record can exist with only one of them).
 */
export async function allAnnounced(nc: NatsConnection, hosts: string[]): Promise<void> {
  await waitFor('every host\'s exporter and attacher recorded by the broker', async () => {
    const records = (await listParsed((await openStores(nc)).hosts, HostRecord)).map((e) => e.value);
    return hosts.every((h) => records.some((r) => r.host === h && r.exporter && r.attacher));
  }, { timeoutMs: 30_000 });
}

export interface ScriptedAgents {
  /** Every command received, in order: "export host-a l-...", with `force` marked on unexport. */
  commands: string[];
  /** Lease ids whose swap-off the attacher refuses (its pages "would not fit"). */
  refuseDetach: Set<string>;
  /**
   * Per `<verb> <host>` (e.g. `export lender-a`), how many of those commands the agent answers with
   * a timeout of its own first (its KV read missed its deadline: a thrashing host, a NATS failover).
   */
  timeouts: Map<string, number>;
  /** Per host, how far its clock is off (ms, negative: behind); its announces carry that time. */
  clockOffsetMs: Map<string, number>;
  /** Hosts that no longer announce (the host is gone). */
  silenced: Set<string>;
  /** Per lender, the leases its exporter says it still serves (left out of its announce when unset). */
  serving: Map<string, string[]>;
  /** Per lender, the leases its exporter says have a borrower logged in (left out when unset). */
  sessions: Map<string, string[]>;
  /** Lease ids whose unexport the exporter refuses (a session is still logged in). */
  refuseUnexport: Set<string>;
  /** Per lender, a portal its exporter answers exports with instead of the one it announced. */
  exportPortal: Map<string, string>;
  /** While set, the exporter answers exports only once this promise resolves (a slow lender). */
  exportGate: Promise<void> | undefined;
  announce(host: string, at?: number): void;
  stop(): void;
}

export function addressOf(index: number): string {
  return `198.18.0.${20 + index}`;
}

/**
 * `announceEveryMs`: announce every host that often, as real agents do (every 10 s); default once.
 * `nc`: one connection for every host (a bus without identities), or each host's own.
 */
export function scriptedAgents(nc: NatsConnection | ((host: string) => NatsConnection), hosts: string[], { announceEveryMs }: { announceEveryMs?: number } = {}): ScriptedAgents {
  const connOf = typeof nc === 'function' ? nc : () => nc;
  let timer: NodeJS.Timeout | undefined;
  const agents: ScriptedAgents = {
    commands: [],
    refuseDetach: new Set(),
    timeouts: new Map(),
    clockOffsetMs: new Map(),
    silenced: new Set(),
    serving: new Map(),
    sessions: new Map(),
    refuseUnexport: new Set(),
    exportPortal: new Map(),
    exportGate: undefined,
    stop: () => clearInterval(timer),
    announce: (host, at = Date.now() + (agents.clockOffsetMs.get(host) ?? 0)) => {
      if (agents.silenced.has(host)) return;
      const address = addressOf(hosts.indexOf(host));
      const serving = agents.serving.get(host);
      const sessions = agents.sessions.get(host);
      connOf(host).publish(subjects.announce(host), JSON.stringify({ host, role: 'exporter', portal: `${address}:3260`, at, ...(serving ? { serving } : {}), ...(sessions ? { sessions } : {}) }));
      connOf(host).publish(subjects.announce(host), JSON.stringify({ host, role: 'attacher', iqn: `iqn.2026-11.io.rswap:${host}`, address, initiator: 'userspace', at }));
    },
  };
  for (const [index, host] of hosts.entries()) {
    const address = addressOf(index);
    connOf(host).subscribe(`rswap.v1.cmd.${host}.*`, {
      callback: (_e, msg) => {
        const verb = msg.subject.split('.').pop()!;
        const body = msg.json<{ leaseId: string; force?: boolean }>();
        agents.commands.push(`${verb} ${host} ${body.leaseId}${body.force ? ' force' : ''}`);
        if ((agents.timeouts.get(`${verb} ${host}`) ?? 0) > 0) {
          agents.timeouts.set(`${verb} ${host}`, agents.timeouts.get(`${verb} ${host}`)! - 1);
          msg.respond(JSON.stringify({ ok: false, error: { code: 'RSWAP_E_TIMEOUT', message: 'timeout' } }));
        } else if (verb === 'export') {
          const reply = JSON.stringify({ ok: true, target: { portal: agents.exportPortal.get(host) ?? `${address}:3260`, iqn: `iqn.2026-11.io.rswap:${host}.${body.leaseId}`, lun: 1 }, chap: { user: body.leaseId, secret: 'abcdefghijkl' } });
          if (agents.exportGate) void agents.exportGate.then(() => msg.respond(reply));
          else msg.respond(reply);
        } else if (verb === 'attach') {
          msg.respond(JSON.stringify({ ok: true, device: '/dev/loop7', priority: 105, initiator: 'userspace' }));
        } else if (verb === 'unexport' && agents.refuseUnexport.has(body.leaseId)) {
          msg.respond(JSON.stringify({ ok: false, error: { code: 'RSWAP_E_IN_USE', message: 'a session is still logged in' } }));
        } else if (verb === 'detach' && agents.refuseDetach.has(body.leaseId)) {
          msg.respond(JSON.stringify({ ok: false, error: { code: 'RSWAP_E_SWAPOFF_UNSAFE', message: 'swap-off would not fit' } }));
        } else {
          msg.respond(JSON.stringify({ ok: true }));
        }
      },
    });
    agents.announce(host);
  }
  // Like the real agents: announce again when a broker says hello (it may have started after us).
  for (const host of hosts) connOf(host).subscribe(subjects.brokerHello, { callback: () => agents.announce(host) });
  if (announceEveryMs) {
    timer = setInterval(() => hosts.forEach((host) => agents.announce(host)), announceEveryMs);
    timer.unref();
  }
  return agents;
}
