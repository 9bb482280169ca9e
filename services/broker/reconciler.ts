/**
 * The lease reconciler: the one path that drives a lease, step by step, toward where it should be.
 *
 * Handlers never drive a lease themselves. They record intent (a new lease record; `end` on an
 * existing one) and call `reconcile(id)`. A reconcile reads the lease and what the agents report,
 * picks the next step by the state table in shared/lease-states.ts (`decide`, a pure function) and
 * takes it, again and again, until the lease rests: active with nothing to do, ended, or driven by
 * another broker that is not overdue. The broker's sweep calls it for every lease `decide` finds
 * work for, so a lease whose broker died, a borrower gone silent and an end asked for just before
 * a crash all take the same path as a fresh bring-up.
 *
 * One reconcile per lease runs at a time. A call while one runs joins the next run, which reads
 * the lease after the running one is done: sweeps never pile up behind a slow step.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import type { z } from 'zod';
import { trace, SpanStatusCode } from '@opentelemetry/api';
import { contextOf } from '../../shared/tracing.js';
import { metrics } from '../../shared/metrics.js';
import type { Logger } from '../../shared/log.js';
import { ErrorCodes, RswapError, errorCode, errorMessage } from '../../shared/errors.js';
import { requestJson } from '../../shared/messaging.js';
import { subjects } from '../../shared/subjects.js';
import { LEASE_STATES } from '../../shared/lease-states.js';
import { AttachReply, ExportReply, OkReply, type HostRecord, type LeaseRecord, type LeaseState } from '../../shared/schemas.js';
import { formatBytes } from '../../shared/units.js';
import { KeyedQueue } from '../../shared/serial.js';
import type { HostStore } from './hosts.js';
import type { LeaseStore } from './lease-store.js';
import type { PolicyOptions } from './policy.js';

const isEnded = (state: LeaseState) => LEASE_STATES[state].step === 'none';

export interface ReconcilerOptions extends PolicyOptions {
  exportTimeoutMs: number;
  attachTimeoutMs: number;
  detachTimeoutMs: number;
  unexportTimeoutMs: number;
  /**
   * A borrower whose attacher has not announced itself for this long is gone, unless its lender
   * still reports it logged in (see `decide`): its leases end.
   */
  borrowerTimeoutMs: number;
}

/**
 * Agent commands are idempotent per lease (each agent runs a lease's commands one at a time, and a
 * repeat finds the work done): one without a reply this long is sent again, so a command lost with
 * a NATS node that died, or sent while the agent was reconnecting, still reaches it.
 */
export const COMMAND_RESEND_MS = 10_000;

/** The pause before a command an agent answered with a timeout of its own is sent again. */
const AGAIN_AFTER_MS = 1_000;

/** How long a KV call of the broker's own is tried again while it times out (a leader election). */
const KV_RETRY_MS = 30_000;

/** How long a lease may sit in a state before another broker takes it over (its driver died). */
export function stuckAfterMs(state: LeaseState, o: ReconcilerOptions): number {
  const bounds = LEASE_STATES[state].boundBy;
  if (bounds.length === 0) return Infinity;
  const timeouts = { export: o.exportTimeoutMs, attach: o.attachTimeoutMs, detach: o.detachTimeoutMs, unexport: o.unexportTimeoutMs };
  return bounds.reduce((sum, b) => sum + timeouts[b], 5_000);
}

/** What the reconciler does next with a lease. */
export type Action =
  | { do: 'rest'; why: string; warn?: boolean }
  | { do: 'claim' }
  | { do: 'reserve' }
  | { do: 'export' }
  | { do: 'attach' }
  | { do: 'release' }
  | { do: 'move'; to: LeaseState; reason?: string }
  | { do: 'fail'; reason: string; borrowerGone: boolean };

export interface Facts {
  /** This broker (lease records name their driver). */
  me: string;
  now: number;
  /** When this broker last heard the borrower's attacher (its own clock); undefined if unknown. */
  borrowerSeenAt?: number;
  /** The lender's latest announce, itself fresh, lists a session on the lease's target. */
  loggedInAtLender?: boolean;
}

/**
 * Whether the lease's lender, in an announce of its own that is still fresh, reports a borrower
 * logged in to the lease's target (now, or within its session grace).
 */
export function loggedInAtLender(lease: LeaseRecord, lender: HostRecord | undefined, now: number, announceTtlMs: number): boolean {
  const exporter = lender?.exporter;
  return exporter !== undefined && now - exporter.at <= announceTtlMs && (exporter.sessions ?? []).includes(lease.id);
}

/**
 * The facts `decide` needs about a lease, from its borrower's and lender's host records: one
 * derivation for the reconciler and the broker's sweep. Liveness matters only to an active lease.
 */
export function factsFor(lease: LeaseRecord, me: string, now: number, borrower: HostRecord | undefined, lender: HostRecord | undefined, announceTtlMs: number): Facts {
  if (lease.state !== 'active') return { me, now };
  const borrowerSeenAt = borrower?.attacher?.at;
  return { me, now, ...(borrowerSeenAt === undefined ? {} : { borrowerSeenAt }), loggedInAtLender: loggedInAtLender(lease, lender, now, announceTtlMs) };
}

/** The next step for a lease, from the state table: pure, so every rule is unit-tested. */
export function decide(lease: LeaseRecord, facts: Facts, o: ReconcilerOptions): Action {
  const row = LEASE_STATES[lease.state];
  if (row.step === 'none') return { do: 'rest', why: `${lease.state}` };
  // Mid-step states belong to the broker that took the last step until it is overdue.
  if (row.boundBy.length > 0 && lease.driver !== facts.me) {
    const age = facts.now - lease.updatedAt;
    if (age < stuckAfterMs(lease.state, o)) return { do: 'rest', why: `${lease.state}, driven by ${lease.driver ?? 'another broker'}` };
    return { do: 'claim' };
  }
  switch (row.step) {
    case 'reserve':
      return { do: 'reserve' };
    case 'export':
      return { do: 'export' };
    case 'advance':
      return lease.end ? { do: 'move', to: 'draining', reason: lease.end.reason } : { do: 'move', to: 'attaching' };
    case 'attach':
      return { do: 'attach' };
    case 'release':
      return { do: 'release' };
    case 'watch': {
      // Silence counts from the last announce this broker received (its own clock). A missing
      // host record is no evidence that the borrower is gone. Nor is silence while the lender sees
      // the borrower logged in: a host thrashing on this very lease can stall its agents for
      // minutes while its kernel still swaps there, and a dead host's session ends by itself
      // (tgtd's NOP-In). Until then nothing can be asked of it, a release included.
      const seen = facts.borrowerSeenAt;
      if (seen !== undefined && facts.now - seen >= o.borrowerTimeoutMs) {
        const silence = `borrower ${lease.borrower} silent for ${Math.round((facts.now - seen) / 1000)}s`;
        if (facts.loggedInAtLender) return { do: 'rest', why: `${silence} but logged in at ${lease.lender}: its pages are in use`, warn: true };
        return { do: 'fail', reason: silence, borrowerGone: true };
      }
      if (lease.end) return { do: 'move', to: 'draining', reason: lease.end.reason };
      return { do: 'rest', why: 'active' };
    }
  }
}

/** How a reconcile ended: the lease as it rests, and the error of the step that failed or was refused. */
export interface Outcome {
  lease: LeaseRecord | undefined;
  error?: unknown;
  /** The step that failed, when one did. */
  failedAt?: Action['do'];
}

const tracer = trace.getTracer('rswap.broker');

type Exported = Extract<z.infer<typeof ExportReply>, { ok: true }>;

export class Reconciler {
  private readonly serial = new KeyedQueue();
  /** A reconcile queued behind a running one, per lease: later calls join it. */
  private readonly queued = new Map<string, Promise<Outcome>>();
  /** Target and CHAP from an export, for the attach that follows (never written to KV). */
  private readonly exported = new Map<string, Exported>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly hosts: HostStore,
    private readonly leases: LeaseStore,
    private readonly options: ReconcilerOptions,
    private readonly log: Logger,
    /** This broker's name in lease records. */
    readonly me: string,
  ) {}

  /** Drives the lease until it rests; resolves with where it rests. Never throws for a step that failed. */
  reconcile(leaseId: string): Promise<Outcome> {
    const queued = this.queued.get(leaseId);
    if (queued) return queued;
    const run = this.serial.run(leaseId, () => {
      this.queued.delete(leaseId);
      return this.run(leaseId);
    });
    this.queued.set(leaseId, run);
    return run;
  }

  /** Runs `task` on the lease between reconciles (a lost lender fails it at once). */
  exclusive<T>(leaseId: string, task: () => Promise<T>): Promise<T> {
    return this.serial.run(leaseId, task);
  }

  private async run(leaseId: string): Promise<Outcome> {
    let outcome: Outcome = { lease: undefined };
    let tookOver = false;
    // Each step moves the lease along the table; a lease cannot take more steps than this.
    for (let steps = 0; steps < 12; steps += 1) {
      const lease = await this.leases.get(leaseId);
      if (!lease) return { ...outcome, lease: undefined };
      const active = lease.state === 'active'; // (only then are the host records read)
      const [borrower, lender] = active ? await Promise.all([this.hosts.get(lease.borrower), this.hosts.get(lease.lender)]) : [undefined, undefined];
      const action = decide(lease, factsFor(lease, this.me, Date.now(), borrower, lender, this.options.announceTtlMs), this.options);
      if (action.do === 'rest') {
        // A lease taken over from a broker that died while lending it: that broker's mark on the
        // borrower (lendFor) would keep every other broker from serving the borrower until it went
        // stale. The lend it guarded is done, so the mark goes (only if it still names this lease).
        if (tookOver) await this.hosts.releaseBorrower(lease.borrower, lease.id).catch((error: unknown) => this.log.warn({ leaseId, err: errorMessage(error) }, 'could not clear the borrower mark of a lease taken over'));
        return { ...outcome, lease };
      }
      if (action.do === 'claim') tookOver = true;
      const error = await this.inLeaseTrace(lease, action.do, () => this.take(lease, action));
      if (error !== undefined) outcome = { lease, error, failedAt: action.do };
    }
    return { ...outcome, lease: await this.leases.get(leaseId) };
  }

  /** Takes one step; returns the error of a step that failed (the lease has been moved accordingly). */
  private async take(lease: LeaseRecord, action: Exclude<Action, { do: 'rest' }>): Promise<unknown> {
    try {
      switch (action.do) {
        case 'claim':
          this.log.warn({ leaseId: lease.id, state: lease.state }, 'taking over a lease whose broker stopped');
          await this.leases.claim(lease.id, lease.updatedAt, this.me);
          return undefined;
        case 'move':
          await this.leases.move(lease.id, action.to, action.reason ? { reason: action.reason } : {});
          return undefined;
        case 'fail':
          this.log.warn({ leaseId: lease.id, borrower: lease.borrower }, `${action.reason}: ending the lease`);
          await this.fail(lease.id, action.reason, true, action.borrowerGone);
          return undefined;
        case 'reserve':
          return await this.reserve(lease);
        case 'export':
          return await this.export(lease);
        case 'attach':
          return await this.attach(lease);
        case 'release':
          return await this.release(lease);
      }
    } catch (error) {
      // Another broker (or a handler here) changed the lease first: read it again.
      if (errorCode(error) === ErrorCodes.ILLEGAL_STATE) return undefined;
      throw error;
    }
  }

  private async reserve(lease: LeaseRecord): Promise<unknown> {
    try {
      await this.hosts.reserve(lease.lender, lease.id, lease.sizeBytes, Date.now(), this.options);
    } catch (error) {
      await this.fail(lease.id, `reserving ${formatBytes(lease.sizeBytes)} on ${lease.lender}: ${errorMessage(error)}`, false);
      return error;
    }
    await this.leases.move(lease.id, 'exporting');
    return undefined;
  }

  private async export(lease: LeaseRecord): Promise<unknown> {
    let reply: Exported;
    try {
      reply = await this.requestExport(lease);
    } catch (error) {
      this.exported.delete(lease.id);
      if (errorCode(error) === ErrorCodes.ILLEGAL_STATE) throw error; // the lender saw the lease move on
      await this.fail(lease.id, `export failed: ${errorMessage(error)}`, true);
      return error;
    }
    try {
      await this.transient(() => this.leases.move(lease.id, 'exported', { target: reply.target }));
    } catch (error) {
      this.exported.delete(lease.id);
      throw error;
    }
    return undefined;
  }

  /**
   * Asks the lender for the lease's target and CHAP. The borrower will log in to the portal in the
   * reply, so it must be the one the lender announced itself (only the lender's identity can
   * announce for it): a reply naming any other portal is refused.
   */
  private async requestExport(lease: LeaseRecord): Promise<Exported> {
    const body = { leaseId: lease.id, lender: lease.lender, sizeBytes: lease.sizeBytes, borrower: { host: lease.borrower, iqn: lease.borrowerIqn, address: lease.borrowerAddress } };
    const reply = await this.command(subjects.exportCmd(lease.lender), body, ExportReply, this.options.exportTimeoutMs);
    const announced = (await this.transient(() => this.hosts.get(lease.lender)))?.exporter?.portal;
    if (reply.target.portal !== announced) {
      throw new RswapError(ErrorCodes.WRONG_HOST, `the lender answered with portal ${reply.target.portal}, not its announced ${announced ?? '(none)'}`);
    }
    this.exported.set(lease.id, reply);
    return reply;
  }

  private async attach(lease: LeaseRecord): Promise<unknown> {
    try {
      // The CHAP secret is never in KV: a lease taken over asks the lender again (idempotent there).
      const exported = this.exported.get(lease.id) ?? (await this.requestExport(lease));
      const body = { leaseId: lease.id, borrower: lease.borrower, lender: lease.lender, sizeBytes: lease.sizeBytes, target: exported.target, chap: exported.chap };
      const attached = await this.command(subjects.attachCmd(lease.borrower), body, AttachReply, this.options.attachTimeoutMs);
      const active = await this.transient(() => this.leases.move(lease.id, 'active', { device: attached.device, initiator: attached.initiator, ...(attached.sealed !== undefined ? { sealed: attached.sealed } : {}) }));
      metrics.timeToAttach.observe((active.updatedAt - lease.createdAt) / 1000);
      return undefined;
    } catch (error) {
      if (errorCode(error) === ErrorCodes.ILLEGAL_STATE) throw error;
      await this.fail(lease.id, `attach failed: ${errorMessage(error)}`, true);
      return error;
    } finally {
      this.exported.delete(lease.id);
    }
  }

  /**
   * The borrower swaps off first (or refuses, when its pages would not fit: the lease goes back to
   * active), then the lender removes the target. A release taken over from a broker that died
   * detaches again: a no-op on a borrower that already let go.
   */
  private async release(lease: LeaseRecord): Promise<unknown> {
    try {
      await this.detach(lease);
    } catch (error) {
      if (errorCode(error) === ErrorCodes.ILLEGAL_STATE) throw error; // the borrower saw the lease move on
      if (errorCode(error) === ErrorCodes.SWAPOFF_UNSAFE) {
        await this.leases.move(lease.id, 'active', { reason: errorMessage(error) });
      } else {
        await this.fail(lease.id, `detach failed: ${errorMessage(error)}`, true);
      }
      return error;
    }
    // The borrower has swapped off; if the unexport fails anyway, the lender's reconciler removes
    // the target of a released lease once no session is left.
    const targetGone = await this.unexport(lease);
    const released = await this.transient(() => this.leases.move(lease.id, 'released'));
    await this.giveBack(released, targetGone);
    return undefined;
  }

  /**
   * A KV read or write of this broker's own, tried again while it times out: a NATS node that led
   * the bucket has just died and the others are electing a new leader (seconds). Between an agent
   * that did its work and the record of it, a timeout is no reason to fail the lease.
   */
  private async transient<T>(task: () => Promise<T>): Promise<T> {
    const started = Date.now();
    for (;;) {
      try {
        return await task();
      } catch (error) {
        if (errorCode(error) !== ErrorCodes.TIMEOUT || (error instanceof RswapError && error.remote) || Date.now() - started > KV_RETRY_MS) throw error;
        this.log.warn({ err: errorMessage(error) }, 'a KV call timed out; trying again');
        await new Promise((resolve) => setTimeout(resolve, AGAIN_AFTER_MS));
      }
    }
  }

  /** Asks the borrower to swap off and log out (see `command`). */
  private async detach(lease: LeaseRecord): Promise<void> {
    await this.command(subjects.detachCmd(lease.borrower), { leaseId: lease.id, borrower: lease.borrower }, OkReply, this.options.detachTimeoutMs);
  }

  /**
   * One agent command, within `budgetMs` in all. An agent that answered with a timeout of its own
   * (its KV read missed its deadline: a host under pressure, a NATS node failing over) is asked
   * again while time is left: every command is idempotent, and that is no reason to fail a lease.
   */
  private async command<T>(subject: string, body: unknown, schema: z.ZodType<T>, budgetMs: number): Promise<Extract<T, { ok: true }>> {
    const started = Date.now();
    for (;;) {
      const left = budgetMs - (Date.now() - started);
      try {
        return await requestJson(this.nc, subject, body, schema, Math.max(1_000, left), { resendAfterMs: COMMAND_RESEND_MS });
      } catch (error) {
        const transient = error instanceof RswapError && error.remote && error.code === ErrorCodes.TIMEOUT;
        if (!transient || left < 2 * AGAIN_AFTER_MS) throw error;
        this.log.warn({ subject, err: errorMessage(error) }, 'the agent timed out on its side; asking again');
        await new Promise((resolve) => setTimeout(resolve, AGAIN_AFTER_MS));
      }
    }
  }

  /**
   * Marks a lease failed, then (with `cleanUp`) asks the borrower to swap off and, only once it
   * did, the lender to remove the target; gives the bytes back once the target is gone. Without
   * the borrower's word (a borrower known to be gone is not asked; one that refuses, times out or
   * fails) the lender removes the target by itself once no session has been seen for its grace.
   */
  async fail(leaseId: string, reason: string, cleanUp: boolean, borrowerGone = false): Promise<LeaseRecord | undefined> {
    trace.getActiveSpan()?.setStatus({ code: SpanStatusCode.ERROR, message: `lease ${leaseId} failed: ${reason}` });
    this.exported.delete(leaseId); // no CHAP secret kept for a lease that will not attach
    let lease: LeaseRecord;
    try {
      lease = await this.leases.move(leaseId, 'failed', { reason });
    } catch (error) {
      const now = await this.leases.get(leaseId);
      if (now && isEnded(now.state)) {
        this.log.info({ leaseId, state: now.state }, 'lease already ended elsewhere');
        return now;
      }
      // Not marked failed: no cleanup of a lease that may still be in use; the sweep tries again.
      this.log.error({ leaseId, err: errorMessage(error) }, 'could not mark lease failed');
      return now;
    }
    let targetGone = false;
    if (cleanUp && !borrowerGone) {
      // The target is asked for only once the borrower said it swapped off. Without that word (a
      // silent borrower, a detach that timed out or failed) its session may be down for a while
      // only, and its pages still needed: the lender removes the target by itself once no session
      // has been seen for its grace period (sessionGraceMs), which is how a dead borrower's goes.
      try {
        await this.detach(lease);
        targetGone = await this.unexport(lease);
      } catch (error) {
        this.log.warn({ leaseId, err: errorMessage(error) }, 'cleanup: detach failed; the lender removes the target after its session grace');
      }
    }
    await this.giveBack(lease, targetGone);
    return lease;
  }

  /**
   * Asks the lender to remove the lease's target; true when it answered that it did. The lease's
   * bytes go back to the lender then, or, if it refused (a session is still logged in), once the
   * lender reports that it no longer serves the lease (its announce; see reservationEnded).
   */
  private async unexport(lease: LeaseRecord): Promise<boolean> {
    try {
      await this.command(subjects.unexportCmd(lease.lender), { leaseId: lease.id, lender: lease.lender }, OkReply, this.options.unexportTimeoutMs);
      return true;
    } catch (error) {
      this.log.warn({ leaseId: lease.id, err: errorMessage(error) }, 'unexport refused or failed; the lender removes the target once no session is left');
      return false;
    }
  }

  private async giveBack(lease: LeaseRecord, targetGone: boolean): Promise<void> {
    if (targetGone) await this.hosts.unreserve(lease.lender, lease.id);
    else await this.hosts.unreserveIfEnded(lease.lender, lease.id, lease);
  }

  /**
   * Runs `task` in a span `lease <step>` of the lease's own trace (from its traceparent), so a step
   * that starts from a sweep, an operator or another host's event still shows in the lease's trace.
   * The lease id is an attribute, not part of the name: span names stay few.
   */
  inLeaseTrace<T>(lease: LeaseRecord, step: string, task: () => Promise<T>, attributes: Record<string, string> = {}): Promise<T> {
    return tracer.startActiveSpan(`lease ${step}`, { attributes: { 'rswap.lease.id': lease.id, ...attributes } }, contextOf(lease.traceparent), async (span) => {
      try {
        return await task();
      } catch (error) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: errorMessage(error) });
        throw error;
      } finally {
        span.end();
      }
    });
  }
}
