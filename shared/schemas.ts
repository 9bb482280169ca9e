/**
 * The wire contract: every message and KV record, as zod schemas. Each service parses what it
 * receives with these at the boundary; docs/protocol.md shows each one with an example.
 */
import { z } from 'zod';
import { MiB, GiB } from './units.js';

const TiB = 1024 * GiB;

/** Host ids appear as subject tokens, so they may hold no dots, wildcards or spaces. */
export const HostId = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'host id must be 1-63 of [a-z0-9-], not starting or ending with -');
export const LeaseId = z.string().regex(/^l-[0-9a-f]{12}$/, "lease id must look like 'l-0123456789ab'");
/** Milliseconds since the epoch. */
export const Timestamp = z.number().int().positive();
/**
 * Any byte count a host may report. The largest servers hold tens of TiB of RAM; past 256 TiB on
 * one host a number is treated as absurd (a unit mistake, a corrupt message).
 */
export const Bytes = z.number().int().nonnegative().max(256 * TiB, 'more than 256TiB is not a plausible size for one host');
export const LeaseBytes = z
  .number()
  .int()
  .min(16 * MiB, 'a lease is at least 16MiB')
  .max(TiB, 'a lease is at most 1TiB')
  .refine((n) => n % MiB === 0, 'a lease size is a whole number of MiB');
export const Iqn = z.string().regex(/^iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[A-Za-z0-9.:_-]+)?$/, 'not an iSCSI qualified name');
const isIpv4 = (text: string) => z.ipv4().safeParse(text).success;
/** rswap's addresses are IPv4: an IPv6 one is refused saying so, not as a malformed string. */
const ipv6Refusal = (text: string) => `'${text}' is IPv6: rswap takes IPv4 portals and addresses only, for now`;
export const Ipv4 = z.string().superRefine((text, ctx) => {
  if (!isIpv4(text)) ctx.addIssue({ code: 'custom', message: text.includes(':') ? ipv6Refusal(text) : `'${text}' is not an IPv4 address` });
});
/** An iSCSI portal: IPV4:PORT, the port 1-65535. */
export const Portal = z.string().superRefine((text, ctx) => {
  const m = /^(.*):(\d{1,5})$/.exec(text);
  const port = Number(m?.[2]);
  if (text.startsWith('[') || (m?.[1] ?? '').includes(':')) ctx.addIssue({ code: 'custom', message: ipv6Refusal(text) });
  else if (!m || !isIpv4(m[1]!) || port < 1 || port > 65535) ctx.addIssue({ code: 'custom', message: `portal must be 'IPV4:PORT' with a port of 1-65535, not '${text}'` });
});
export const InitiatorKind = z.enum(['kernel', 'userspace']);

export const LeaseState = z.enum(['requested', 'exporting', 'exported', 'attaching', 'active', 'draining', 'released', 'failed']);
export type LeaseState = z.infer<typeof LeaseState>;

// ---- events (a host about itself) ----

/** What a monitor measured, as rates over its last sample interval. */
export const Signals = z.strictObject({
  /** Share of wall time some task stalled on memory (PSI "some"), percent. Absent where PSI is not per scope (cgroup v1). */
  stallPct: z.number().min(0).max(100).optional(),
  /** Swap traffic: major faults plus pages swapped out, per second. */
  swapPagesPerS: z.number().nonnegative(),
  /** Anonymous pages refaulted (evicted, then needed again) per second: the thrashing signal. */
  refaultsPerS: z.number().nonnegative(),
  availableBytes: Bytes,
  swapUsedBytes: Bytes,
  /** Available memory net of lease pages this host promised as a lender and has not yet received. */
  headroomBytes: z.number().optional(),
  /** How fast that headroom shrinks, bytes/s (0 while it grows): a lender taking in lease pages does not count. */
  fillBytesPerS: z.number().nonnegative().optional(),
  /** On a host without swap of its own: the room left in its leases' swap areas. */
  swapFreeBytes: z.number().nonnegative().optional(),
});
export type Signals = z.infer<typeof Signals>;

export const PressureEvent = z.strictObject({
  host: HostId,
  /** How many bytes of memory the host lacks in total (not on top of the leases it has). */
  neededBytes: Bytes.refine((n) => n > 0, 'neededBytes must be positive'),
  at: Timestamp.optional(),
  /** When the monitor first saw the signals cross the enter threshold (before the hold time). */
  onsetAt: Timestamp.optional(),
  source: z.enum(['monitor', 'inject']).default('inject'),
  signals: Signals.optional(),
});
export type PressureEvent = z.infer<typeof PressureEvent>;

/** The host's pressure has stayed under the exit thresholds for the exit hold time. */
export const ReliefEvent = z.strictObject({
  host: HostId,
  at: Timestamp,
  source: z.enum(['monitor', 'inject']).default('inject'),
});
export type ReliefEvent = z.infer<typeof ReliefEvent>;

export const SurplusEvent = z.strictObject({
  host: HostId,
  /** What the host can still lend now: available - reserve (0 while it is under pressure itself). */
  lendableBytes: Bytes,
  /** The total size of leases the host currently serves (already inside its used memory). */
  lentBytes: Bytes.default(0),
  /** How far available memory is under the reserve: more than 0 asks the broker to reclaim. */
  deficitBytes: Bytes.default(0),
  at: Timestamp.optional(),
  source: z.enum(['monitor', 'inject']).default('inject'),
});
export type SurplusEvent = z.infer<typeof SurplusEvent>;

/** A borrower's attacher lost the lender of a lease (its reads fail, or never come back). */
export const LostEvent = z.strictObject({
  host: HostId,
  leaseId: LeaseId,
  reason: z.string().max(500),
  at: Timestamp,
});
export type LostEvent = z.infer<typeof LostEvent>;

/** A monitor's heartbeat, for observers (the demo, dashboards); the broker does not need it. */
export const TelemetryEvent = z.strictObject({
  host: HostId,
  at: Timestamp,
  scope: z.string(),
  state: z.enum(['clear', 'pressure']),
  limitBytes: Bytes,
  usedBytes: Bytes,
  signals: Signals,
});
export type TelemetryEvent = z.infer<typeof TelemetryEvent>;

export const AnnounceEvent = z.discriminatedUnion('role', [
  z.strictObject({
    host: HostId,
    role: z.literal('exporter'),
    portal: Portal,
    at: Timestamp,
    /** Leases this lender still holds a target or ramfs for: their pages may be in use, so their capacity stays promised. */
    serving: z.array(LeaseId).max(4096).optional(),
    /** Leases whose target has a borrower logged in now: that borrower is alive on the data path. */
    sessions: z.array(LeaseId).max(4096).optional(),
    /** Targets it keeps although their lease record is missing, because a borrower is logged in. */
    orphans: z.array(LeaseId).max(4096).optional(),
  }),
  z.strictObject({
    host: HostId,
    role: z.literal('attacher'),
    iqn: Iqn,
    address: Ipv4,
    initiator: InitiatorKind,
    /** Whether what it swaps to a lease is encrypted with a key only it holds (false: --unsealed). */
    sealed: z.boolean().optional(),
    at: Timestamp,
  }),
]);
export type AnnounceEvent = z.infer<typeof AnnounceEvent>;

// ---- commands (request/reply) ----

export const Target = z.strictObject({ portal: Portal, iqn: Iqn, lun: z.number().int().min(1).max(255) });
export type Target = z.infer<typeof Target>;
/** CHAP credentials: only ever in replies and commands between the broker and the lease's two hosts. */
export const Chap = z.strictObject({
  user: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
  secret: z.string().regex(/^[A-Za-z0-9]{12,64}$/),
  /** The target's own credentials (mutual CHAP): an initiator that can checks them at login. */
  targetUser: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/).optional(),
  targetSecret: z.string().regex(/^[A-Za-z0-9]{12,64}$/).optional(),
});
export type Chap = z.infer<typeof Chap>;

export const ExportRequest = z.strictObject({
  leaseId: LeaseId,
  lender: HostId,
  sizeBytes: LeaseBytes,
  borrower: z.strictObject({ host: HostId, iqn: Iqn, address: Ipv4 }),
});
export type ExportRequest = z.infer<typeof ExportRequest>;

export const UnexportRequest = z.strictObject({
  leaseId: LeaseId,
  lender: HostId,
  /**
   * Refused when true: no message removes a target that has a session. The lender removes it once
   * it sees no session (tgtd drops a silent initiator's), or an operator forces it on the lender.
   */
  force: z.literal(false, { error: 'force is not accepted over the bus: a target with a session is removed only when its lender sees no session' }).optional(),
});
export type UnexportRequest = z.infer<typeof UnexportRequest>;

export const AttachRequest = z.strictObject({
  leaseId: LeaseId,
  borrower: HostId,
  lender: HostId,
  sizeBytes: LeaseBytes,
  target: Target,
  chap: Chap,
});
export type AttachRequest = z.infer<typeof AttachRequest>;

export const DetachRequest = z.strictObject({ leaseId: LeaseId, borrower: HostId });
export type DetachRequest = z.infer<typeof DetachRequest>;

export const ReleaseRequest = z.strictObject({ leaseId: LeaseId });
export type ReleaseRequest = z.infer<typeof ReleaseRequest>;

/** Cordon (no new leases on a lender), uncordon, or drain (cordon, then move every lease off it). */
export const HostRequest = z.strictObject({ host: HostId });
export type HostRequest = z.infer<typeof HostRequest>;

export const ErrorBody = z.strictObject({ code: z.string(), message: z.string() });
export type ErrorBody = z.infer<typeof ErrorBody>;

/** Every reply is `{ ok: true, ...result }` or `{ ok: false, error }`. */
export function replySchema<T extends z.ZodRawShape>(shape: T) {
  return z.union([z.object({ ok: z.literal(true), ...shape }), z.object({ ok: z.literal(false), error: ErrorBody })]);
}
export const ExportReply = replySchema({ target: Target, chap: Chap });
export const AttachReply = replySchema({ device: z.string(), priority: z.number().int(), initiator: InitiatorKind, sealed: z.boolean().optional() });
export const OkReply = replySchema({});

// ---- KV records ----

export const LeaseRecord = z.object({
  id: LeaseId,
  borrower: HostId,
  lender: HostId,
  sizeBytes: LeaseBytes,
  state: LeaseState,
  reason: z.string().optional(),
  createdAt: Timestamp,
  updatedAt: Timestamp,
  /** The first step and the latest ones (services/broker/states.ts, HISTORY_LIMIT in all). */
  history: z.array(z.object({ state: LeaseState, at: Timestamp, reason: z.string().optional() })),
  /** Steps dropped from the middle of the history to keep the record small. */
  historyDropped: z.number().int().nonnegative().optional(),
  borrowerIqn: Iqn,
  borrowerAddress: Ipv4,
  target: Target.optional(),
  device: z.string().optional(),
  initiator: InitiatorKind.optional(),
  /** Whether the borrower encrypts what it swaps to this lease (its attach reply says). */
  sealed: z.boolean().optional(),
  /** The broker that took the lease's latest step (another takes it over if that step is overdue). */
  driver: z.string().optional(),
  /**
   * An end asked for (a release, a cool-down, a revoke, a drain) that the broker has not acted on
   * yet: the lease's next step is `draining`. Gone once it is draining or ended.
   */
  end: z.object({ reason: z.string().max(500), at: Timestamp }).optional(),
  /** The lease this one replaces (make-before-break, when a lender reclaims its memory). */
  replaces: LeaseId.optional(),
  /** W3C traceparent of the span that created the lease: every later step joins this trace. */
  traceparent: z.string().optional(),
});
export type LeaseRecord = z.infer<typeof LeaseRecord>;

export const HostRecord = z.object({
  host: HostId,
  /** `at`: when the broker received the announce (its own clock). */
  exporter: z
    .object({
      portal: Portal,
      at: Timestamp,
      serving: z.array(LeaseId).optional(),
      /** Leases with a borrower logged in, as of that announce. */
      sessions: z.array(LeaseId).optional(),
      orphans: z.array(LeaseId).optional(),
      /** A borrower lost this lender: not chosen again until its exporter announces anew. */
      lostAt: Timestamp.optional(),
    })
    .optional(),
  attacher: z.object({ iqn: Iqn, address: Ipv4, initiator: InitiatorKind, sealed: z.boolean().optional(), at: Timestamp }).optional(),
  offer: z.object({ lendableBytes: Bytes, lentBytes: Bytes, deficitBytes: Bytes.default(0), at: Timestamp }).optional(),
  pressure: z.object({ neededBytes: Bytes, at: Timestamp }).optional(),
  /** A broker bringing up a lease for this borrower: no other broker starts one meanwhile. */
  lending: z.object({ leaseId: LeaseId, by: z.string(), at: Timestamp }).optional(),
  /**
   * This lender is cordoned (`rswap cordon`, `rswap drain`): no new lease is placed on it. `by`:
   * an operator, or the host itself (its rswap-drain unit); a host lifts only its own cordon.
   */
  cordoned: z.object({ at: Timestamp, by: z.enum(['operator', 'self']).optional() }).optional(),
  /** Set by a relief event newer than the last pressure: the host has been clear since then. */
  clearSince: Timestamp.optional(),
  /** Bytes the broker has promised to leases on this lender, by lease id. */
  reservations: z.record(z.string(), Bytes).default({}),
});
export type HostRecord = z.infer<typeof HostRecord>;

export const LeaseStateEvent = z.object({ lease: LeaseRecord });
