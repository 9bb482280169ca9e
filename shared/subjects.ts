/**
 * Every NATS subject rswap uses, under one versioned prefix. Subjects carry the host id of whoever
 * may publish on them (events) or whoever must act on them (commands), so per-host NATS permissions
 * can later allow `rswap.v1.host.H.>` publish and `rswap.v1.cmd.H.>` subscribe for host H alone.
 */
export const PREFIX = 'rswap.v1';

export const subjects = {
  /** Events a host publishes about itself. */
  pressure: (host: string) => `${PREFIX}.host.${host}.pressure`,
  surplus: (host: string) => `${PREFIX}.host.${host}.surplus`,
  announce: (host: string) => `${PREFIX}.host.${host}.announce`,
  relief: (host: string) => `${PREFIX}.host.${host}.relief`,
  telemetry: (host: string) => `${PREFIX}.host.${host}.telemetry`,
  lost: (host: string) => `${PREFIX}.host.${host}.lost`,
  /** A lender asks for itself what an operator may ask for any host (its own identity suffices). */
  selfCordon: (host: string) => `${PREFIX}.host.${host}.cordon`,
  selfUncordon: (host: string) => `${PREFIX}.host.${host}.uncordon`,
  selfDrain: (host: string) => `${PREFIX}.host.${host}.drain`,
  /** Wildcards the broker subscribes to; the host token is the second-to-last one. */
  allPressure: `${PREFIX}.host.*.pressure`,
  allSurplus: `${PREFIX}.host.*.surplus`,
  allAnnounce: `${PREFIX}.host.*.announce`,
  allRelief: `${PREFIX}.host.*.relief`,
  allTelemetry: `${PREFIX}.host.*.telemetry`,
  allLost: `${PREFIX}.host.*.lost`,
  allSelfCordon: `${PREFIX}.host.*.cordon`,
  allSelfUncordon: `${PREFIX}.host.*.uncordon`,
  allSelfDrain: `${PREFIX}.host.*.drain`,

  /** Commands (request/reply) to the exporter and attacher of one host. */
  exportCmd: (host: string) => `${PREFIX}.cmd.${host}.export`,
  unexportCmd: (host: string) => `${PREFIX}.cmd.${host}.unexport`,
  attachCmd: (host: string) => `${PREFIX}.cmd.${host}.attach`,
  detachCmd: (host: string) => `${PREFIX}.cmd.${host}.detach`,

  /**
   * A broker that starts (or reconnects) asks every agent to announce itself now, and every monitor
   * to resend its offer and its pressure, not at their next interval.
   */
  brokerHello: `${PREFIX}.broker.hello`,
  /** A broker that has a pressure no lender can serve asks every monitor for a fresh offer. */
  brokerSolicit: `${PREFIX}.broker.solicit`,
  /** Operator requests to the broker. */
  release: `${PREFIX}.broker.release`,
  /** Move a lease to another lender, make-before-break. */
  revoke: `${PREFIX}.broker.revoke`,
  /** No new leases on a lender / again / cordon it and move every lease off it (make-before-break). */
  cordon: `${PREFIX}.broker.cordon`,
  uncordon: `${PREFIX}.broker.uncordon`,
  drain: `${PREFIX}.broker.drain`,

  /** Lease state changes published by the broker; observers subscribe to `rswap.v1.lease.>`. */
  leaseState: (leaseId: string) => `${PREFIX}.lease.${leaseId}.state`,
  allLeaseStates: `${PREFIX}.lease.*.state`,
} as const;

/** The host token of an event subject `rswap.v1.host.<host>.<event>`, or undefined. */
export function hostOfSubject(subject: string): string | undefined {
  const parts = subject.split('.');
  if (parts.length !== 5 || `${parts[0]}.${parts[1]}` !== PREFIX || parts[2] !== 'host') return undefined;
  return parts[3];
}

/** The variable token's name, by the kind of subject (the third token). */
const VARIABLE_TOKEN = new Map([['host', '{host}'], ['cmd', '{host}'], ['lease', '{lease}']]);

/**
 * The subject's template, for span names: the variable token (a host id, a lease id) becomes
 * `{host}` or `{lease}`, e.g. `rswap.v1.host.{host}.pressure`. Other subjects are their own template.
 */
export function subjectTemplate(subject: string): string {
  const parts = subject.split('.');
  const token = VARIABLE_TOKEN.get(parts[2] ?? '');
  if (parts.length !== 5 || `${parts[0]}.${parts[1]}` !== PREFIX || !token) return subject;
  return [...parts.slice(0, 3), token, parts[4]].join('.');
}

/** JetStream KV buckets. */
export const buckets = {
  leases: 'rswap_leases',
  hosts: 'rswap_hosts',
} as const;
