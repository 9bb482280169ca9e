/**
 * Drives leases through their states: match demand to a lender, export, attach; release
 * (swap-off on the borrower first, then unexport on the lender); and on any failure, mark the lease
 * failed with the reason, return the capacity and ask both sides to clean up.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { propagation, context, trace, SpanStatusCode } from '@opentelemetry/api';
import { contextOf } from '../../shared/tracing.js';
import { metrics } from '../../shared/metrics.js';
import type { Logger } from '../../shared/log.js';
import { ErrorCodes, RswapError, errorCode, errorMessage } from '../../shared/errors.js';
import { requestJson } from '../../shared/messaging.js';
import { subjects } from '../../shared/subjects.js';
import { AttachReply, ExportReply, OkReply, type HostRecord, type LeaseRecord, type LostEvent, type PressureEvent } from '../../shared/schemas.js';
import { formatBytes } from '../../shared/units.js';
import type { HostStore } from './hosts.js';
import { LeaseStore, newLeaseId } from './lease-store.js';
import { chooseLender, type PolicyOptions } from './policy.js';
import { isTerminal } from './states.js';
import { KeyedQueue } from '../../shared/serial.js';
import { waitFor } from '../../shared/wait.js';
import type { UnservedDemand } from './demand.js';

export interface LifecycleOptions extends PolicyOptions {
  exportTimeoutMs: number;
  attachTimeoutMs: number;
  detachTimeoutMs: number;
  unexportTimeoutMs: number;
  /** How long a borrower must stay clear of pressure before its leases go back. */
  releaseCooldownMs: number;
  /** A borrower whose attacher has not announced itself for this long is gone: its leases end. */
  borrowerTimeoutMs: number;
  /** Open leases one borrower may hold. */
  maxLeasesPerBorrower: number;
  /** The first wait before a refused cool-down release is tried again (it doubles, up to 10 min). */
  drainRetryMs: number;
  /** Pressures handled at once (each may bring a lease up); more are refused until one is done. */
  maxInFlight: number;
}

/** How long a lease may sit in a state before another broker takes it over (its driver died). */
export function stuckAfterMs(state: LeaseRecord['state'], o: LifecycleOptions): number {
  const grace = 5_000;
  if (state === 'requested' || state === 'exporting') return o.exportTimeoutMs + grace;
  if (state === 'exported' || state === 'attaching') return o.exportTimeoutMs + o.attachTimeoutMs + grace;
  if (state === 'draining') return o.detachTimeoutMs + o.unexportTimeoutMs + grace;
  return Infinity;
}

const tracer = trace.getTracer('rswap.broker');

/** The longest wait before a refused cool-down release is tried again. */
const MAX_DRAIN_RETRY_MS = 600_000;

export class Lifecycle {
  private readonly perBorrower = new KeyedQueue();
  private readonly perLender = new KeyedQueue();
  /** Leases whose cool-down swap-off was refused: not tried again before `until`. */
  private readonly drainBackoff = new Map<string, { until: number; delayMs: number }>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly hosts: HostStore,
    private readonly leases: LeaseStore,
    private readonly options: LifecycleOptions,
    private readonly log: Logger,
    /** This broker's name in lease records and borrower marks. */
    private readonly brokerId = 'broker',
    /** Pressure no lender could serve yet: retried when offers come (see demand.ts). */
    private readonly unserved?: UnservedDemand,
  ) {}

  /**
   * Demand from a borrower: lend unless its existing leases already cover it. A pressure no lender
   * can serve now waits in `unserved` (which solicits fresh offers) and is retried as they come.
   */
  async onPressure(event: PressureEvent, at: number, receivedAt = Date.now(), retry = false): Promise<LeaseRecord | undefined> {
    // A retry of a pressure that waited for a lender queues behind the borrower's current work:
    // there is at most one per borrower (in `unserved`), and dropping it would lose the rescue.
    if (retry) return this.onPressureQueued(event, at, receivedAt);
    // Bounded work. One pressure per borrower at a time: a repeat that comes while the last one is
    // still handled (a slow bring-up) is answered at once, not queued behind it. Past
    // `maxInFlight` borrowers being handled, a new one is refused at once; the monitor repeats it.
    if (this.pressureOf.has(event.host)) {
      this.log.debug({ borrower: event.host }, 'pressure ignored: this borrower\'s last pressure is still being handled');
      return undefined;
    }
    if (this.pressureOf.size >= this.options.maxInFlight) {
      throw new RswapError(ErrorCodes.NO_CAPACITY, `broker busy: ${this.pressureOf.size} pressures in flight (--max-in-flight); a later repeat is served`);
    }
    this.pressureOf.add(event.host);
    try {
      return await this.onPressureQueued(event, at, receivedAt);
    } finally {
      this.pressureOf.delete(event.host);
    }
  }

  /** Borrowers whose pressure is being handled now. */
  private readonly pressureOf = new Set<string>();

  private async onPressureQueued(event: PressureEvent, at: number, receivedAt: number): Promise<LeaseRecord | undefined> {
    return this.perBorrower.run(event.host, async () => {
      const borrower = await this.hosts.recordPressure(event.host, event.neededBytes, at);
      if (!borrower.attacher) {
        throw new RswapError(ErrorCodes.BAD_MESSAGE, `host '${event.host}' has no attacher announced; it cannot borrow`);
      }
      // Another broker may handle this borrower's pressure at the same moment: the mark on its
      // record (by CAS) lets one of them lend; the leases are read only after winning it.
      const leaseId = newLeaseId();
      if (!(await this.hosts.claimBorrower(event.host, leaseId, this.brokerId, Date.now(), stuckAfterMs('attaching', this.options)))) {
        this.log.info({ borrower: event.host }, 'pressure ignored: another broker is lending to this host');
        return undefined;
      }
      try {
        const open = (await this.leases.list()).filter((l) => l.borrower === event.host && !isTerminal(l.state));
        if (open.some((l) => l.state !== 'active')) {
          this.log.info({ borrower: event.host }, 'pressure ignored: a lease for this host is in progress');
          return undefined;
        }
        // Each lease is a swap area, and the kernel takes only so many: never more than the cap.
        if (open.length >= this.options.maxLeasesPerBorrower) {
          this.unserved?.drop(event.host);
          this.log.warn({ borrower: event.host, leases: open.length }, `pressure not served: the borrower holds ${open.length} leases, the most allowed (--max-leases-per-borrower)`);
          return undefined;
        }
        const coveredBytes = open.reduce((sum, l) => sum + l.sizeBytes, 0);
        if (coveredBytes >= event.neededBytes) {
          this.unserved?.drop(event.host);
          this.log.info({ borrower: event.host, coveredBytes }, 'pressure ignored: existing leases cover it');
          return undefined;
        }
        const lease = await this.lend(borrower, event.neededBytes - coveredBytes, new Set(), undefined, leaseId);
        if (!lease) {
          this.unserved?.add({ event, at, receivedAt, context: context.active() }, Date.now());
          return undefined;
        }
        this.unserved?.drop(event.host);
        metrics.timeToMatch.observe(Math.max(0, lease.createdAt - at) / 1000);
        return this.bringUp(lease);
      } finally {
        await this.hosts.releaseBorrower(event.host, leaseId);
      }
    });
  }

  /**
   * Retries every pressure still waiting for a lender, each in its own trace: called when an offer
   * or an exporter's announce arrives. One still unserved waits again (until its time is up).
   */
  retryUnserved(now: number): void {
    for (const pressure of this.unserved?.take(now) ?? []) {
      this.log.info({ borrower: pressure.event.host, neededBytes: pressure.event.neededBytes }, 'retrying a pressure that had no lender');
      void context
        .with(pressure.context, () => this.onPressure(pressure.event, pressure.at, pressure.receivedAt, true))
        .catch((error: unknown) => {
          // Busy: it waits for the next offer again (until its time is up).
          if (errorCode(error) === ErrorCodes.NO_CAPACITY) this.unserved?.add(pressure, Date.now());
          this.log.warn({ borrower: pressure.event.host, err: errorMessage(error) }, 'retried pressure failed');
        });
    }
  }

  /** The borrower's pressure is over: a pressure of it still waiting for a lender is dropped. */
  onRelief(host: string): void {
    this.unserved?.drop(host);
  }

  /**
   * Creates a lease for `bytes` on the best lender (other than those excluded) and reserves its
   * capacity; undefined when no lender can serve it. The caller brings it up.
   */
  private async lend(borrower: HostRecord, bytes: number, exclude: ReadonlySet<string> = new Set(), replaces?: string, id = newLeaseId()): Promise<LeaseRecord | undefined> {
    const now = Date.now();
    const placement = chooseLender(await this.hosts.list(), borrower.host, bytes, now, this.options, exclude);
    if ('reason' in placement) {
      this.log.warn({ borrower: borrower.host, neededBytes: bytes, reason: placement.reason }, 'cannot serve pressure');
      return undefined;
    }
    const carrier: Record<string, string> = {};
    propagation.inject(context.active(), carrier);
    const lease = await this.leases.create({
      id,
      borrower: borrower.host,
      lender: placement.lender,
      sizeBytes: placement.sizeBytes,
      state: 'requested',
      createdAt: now,
      updatedAt: now,
      history: [{ state: 'requested', at: now }],
      borrowerIqn: borrower.attacher!.iqn,
      borrowerAddress: borrower.attacher!.address,
      ...(replaces ? { replaces } : {}),
      ...(carrier.traceparent ? { traceparent: carrier.traceparent } : {}),
    });
    try {
      await this.hosts.reserve(lease.lender, lease.id, lease.sizeBytes, now, this.options);
    } catch (error) {
      await this.fail(lease.id, `reserving ${formatBytes(lease.sizeBytes)} on ${lease.lender}: ${errorMessage(error)}`, false);
      return undefined;
    }
    return lease;
  }

  /**
   * Export, then attach, from whatever state the lease is in before active: a lease taken over
   * from a broker that died resumes here. Both commands are idempotent on the agents, so repeating
   * one that had already run only returns its result again.
   */
  private async bringUp(lease: LeaseRecord): Promise<LeaseRecord | undefined> {
    let step = 'export';
    let current = lease;
    try {
      if (current.state === 'requested') current = await this.leases.move(lease.id, 'exporting');
      const exported = await requestJson(
        this.nc,
        subjects.exportCmd(lease.lender),
        { leaseId: lease.id, lender: lease.lender, sizeBytes: lease.sizeBytes, borrower: { host: lease.borrower, iqn: lease.borrowerIqn, address: lease.borrowerAddress } },
        ExportReply,
        this.options.exportTimeoutMs,
      );
      if (current.state === 'exporting') current = await this.leases.move(lease.id, 'exported', { target: exported.target });
      step = 'attach';
      if (current.state === 'exported') current = await this.leases.move(lease.id, 'attaching');
      const attached = await requestJson(
        this.nc,
        subjects.attachCmd(lease.borrower),
        { leaseId: lease.id, borrower: lease.borrower, lender: lease.lender, sizeBytes: lease.sizeBytes, target: exported.target, chap: exported.chap },
        AttachReply,
        this.options.attachTimeoutMs,
      );
      const active = await this.leases.move(lease.id, 'active', { device: attached.device, initiator: attached.initiator });
      metrics.timeToAttach.observe((active.updatedAt - lease.createdAt) / 1000);
      return active;
    } catch (error) {
      return this.fail(lease.id, `${step} failed: ${errorMessage(error)}`, true);
    }
  }

  /**
   * Takes over leases whose broker stopped mid-step (stuck in a state longer than that step may
   * take) and drives them on: a bring-up resumes, a release completes. Exactly one broker wins each
   * lease (CAS on its record). Returns the ids taken over.
   */
  async resumeStuck(now: number): Promise<string[]> {
    const taken: string[] = [];
    for (const lease of await this.leases.list()) {
      if (isTerminal(lease.state) || lease.state === 'active' || now - lease.updatedAt < stuckAfterMs(lease.state, this.options)) continue;
      let claimed: LeaseRecord;
      try {
        claimed = await this.leases.claim(lease.id, lease.updatedAt, this.brokerId);
      } catch {
        continue; // another broker took it, or it moved on
      }
      taken.push(lease.id);
      this.log.warn({ leaseId: lease.id, state: lease.state }, 'taking over a lease whose broker stopped');
      void this.perBorrower
        .run(lease.borrower, () =>
          this.inLeaseTrace(claimed, `resume ${lease.id} from ${lease.state}`, async () => {
            if (claimed.state === 'draining') return this.finishRelease(claimed, true);
            if (claimed.state === 'requested') {
              try {
                await this.hosts.reserve(claimed.lender, claimed.id, claimed.sizeBytes, Date.now(), this.options);
              } catch (error) {
                return this.fail(claimed.id, `reserving ${formatBytes(claimed.sizeBytes)} on ${claimed.lender}: ${errorMessage(error)}`, false);
              }
            }
            return this.bringUp(claimed);
          }),
        )
        .catch((error: unknown) => this.log.error({ leaseId: lease.id, err: errorMessage(error) }, 'resume failed'));
    }
    return taken;
  }

  /**
   * Ends the active leases of borrowers whose attacher has been silent for `borrowerTimeoutMs`
   * (host down, or cut off): the lender gets its memory back. Their pages are gone with the host.
   */
  async expireGoneBorrowers(now: number): Promise<string[]> {
    const hosts = new Map((await this.hosts.list()).map((h) => [h.host, h]));
    const expired: string[] = [];
    for (const lease of (await this.leases.list()).filter((l) => l.state === 'active')) {
      // Silence is measured from the last announce this broker received (its own clock). A
      // missing or unreadable host record is no evidence that the borrower is gone: skip it.
      const seen = hosts.get(lease.borrower)?.attacher?.at;
      if (seen === undefined) {
        this.log.warn({ leaseId: lease.id, borrower: lease.borrower }, 'no announce on record for this borrower; not judging it gone');
        continue;
      }
      if (now - seen < this.options.borrowerTimeoutMs) continue;
      await this.perBorrower.run(lease.borrower, async () => {
        const reason = `borrower ${lease.borrower} silent for ${Math.round((now - seen) / 1000)}s`;
        this.log.warn({ leaseId: lease.id, borrower: lease.borrower }, `${reason}: ending the lease`);
        await this.inLeaseTrace(lease, `expire ${lease.id}`, () => this.fail(lease.id, reason, true, true));
        expired.push(lease.id);
      });
    }
    return expired;
  }

  /** Marks a lease failed, returns its capacity and (if anything may exist) asks both hosts to clean up. */
  private async fail(leaseId: string, reason: string, cleanUp: boolean, borrowerGone = false): Promise<LeaseRecord | undefined> {
    trace.getActiveSpan()?.setStatus({ code: SpanStatusCode.ERROR, message: `lease ${leaseId} failed: ${reason}` });
    let lease: LeaseRecord | undefined;
    try {
      lease = await this.leases.move(leaseId, 'failed', { reason });
    } catch (error) {
      lease = await this.leases.get(leaseId);
      if (lease && isTerminal(lease.state)) {
        // Another broker ended it first (and cleans up): nothing more to do here.
        this.log.info({ leaseId, state: lease.state }, 'lease already ended elsewhere');
        return lease;
      }
      this.log.error({ leaseId, err: errorMessage(error) }, 'could not mark lease failed');
    }
    if (!lease) return undefined;
    // The bytes stay promised while the lender still holds the target (a borrower may swap on it).
    const targetGone = cleanUp ? await this.tearDown(lease, borrowerGone) : false;
    await this.giveBack(lease, targetGone);
    return lease;
  }

  /**
   * Swap-off and logout on the borrower, then target removal on the lender. If the borrower refuses
   * the swap-off (its pages would not fit), the target stays: the lender keeps serving those pages
   * (its exporter does not remove a target the borrower still uses) until the borrower's own
   * reconciler manages the swap-off. Only a borrower known to be gone is torn down regardless.
   */
  /** Returns true when the lender confirmed the target gone (its unexport answered ok). */
  private async tearDown(lease: LeaseRecord, borrowerGone = false): Promise<boolean> {
    if (!borrowerGone) {
      try {
        await requestJson(this.nc, subjects.detachCmd(lease.borrower), { leaseId: lease.id, borrower: lease.borrower }, OkReply, this.options.detachTimeoutMs);
      } catch (error) {
        this.log.warn({ leaseId: lease.id, err: errorMessage(error) }, 'cleanup: detach failed');
        if (errorCode(error) === ErrorCodes.SWAPOFF_UNSAFE) return false;
      }
    }
    // The lender removes the target only when it sees no session on it (its own view, which
    // tgtd's NOP-In probing keeps true for a dead borrower); else its reconciler does, later.
    return this.unexport(lease);
  }

  /**
   * Asks the lender to remove the lease's target; true when it answered that it did. The lease's
   * bytes go back to the lender then, or, if it refused (a session is still logged in), once the
   * lender reports that it no longer serves the lease (its announce; see reservationEnded).
   */
  private async unexport(lease: LeaseRecord): Promise<boolean> {
    try {
      await requestJson(this.nc, subjects.unexportCmd(lease.lender), { leaseId: lease.id, lender: lease.lender }, OkReply, this.options.unexportTimeoutMs);
      return true;
    } catch (error) {
      this.log.warn({ leaseId: lease.id, err: errorMessage(error) }, 'unexport refused or failed; the lender removes the target once no session is left');
      return false;
    }
  }

  /** The lease's bytes back to its lender: at once when it confirmed the target gone, else once it reports so. */
  private async giveBack(lease: LeaseRecord, targetGone: boolean): Promise<void> {
    if (targetGone) await this.hosts.unreserve(lease.lender, lease.id);
    else await this.hosts.unreserveIfEnded(lease.lender, lease.id, lease);
  }

  /**
   * A borrower lost the lender of a lease: the lease fails (its pages on that lender are gone), the
   * lender is not chosen again until its exporter announces itself, and the borrower's next
   * pressure is served by another lender.
   */
  async onLost(event: LostEvent): Promise<LeaseRecord | undefined> {
    const lease = await this.leases.require(event.leaseId);
    if (lease.borrower !== event.host) throw new RswapError(ErrorCodes.WRONG_HOST, `lease ${lease.id} is not borrowed by '${event.host}'`);
    if (isTerminal(lease.state)) return lease;
    return this.perBorrower.run(lease.borrower, () =>
      this.inLeaseTrace(lease, `lost ${lease.id}`, async () => {
        await this.hosts.forgetExporter(lease.lender, Date.now());
        return this.fail(lease.id, `lender ${lease.lender} lost: ${event.reason}`, true);
      }),
    );
  }

  /**
   * Gives a lease back: the borrower swaps off first (or refuses, when its pages would not fit, and
   * the lease stays active), then the lender removes the target. Releasing a released or failed
   * lease again answers with its state and does nothing.
   */
  async release(leaseId: string, reason?: string): Promise<LeaseRecord> {
    const lease = await this.leases.require(leaseId);
    return this.perBorrower.run(lease.borrower, () => this.drain(leaseId, reason));
  }

  /**
   * Runs `task` in a span of the lease's own trace (from its traceparent), so a release or reclaim
   * that starts from a timer, an operator or another host's event still shows in the lease's trace.
   */
  private inLeaseTrace<T>(lease: LeaseRecord, name: string, task: () => Promise<T>): Promise<T> {
    return tracer.startActiveSpan(name, { attributes: { 'rswap.lease.id': lease.id } }, contextOf(lease.traceparent), async (span) => {
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

  /** `release` for a caller that already holds the borrower's queue. */
  private async drain(leaseId: string, reason?: string): Promise<LeaseRecord> {
    let current = await this.leases.require(leaseId);
    if (current.state === 'draining') {
      // Another broker is releasing it (a duplicated request): answer with how that ends.
      current = await waitFor(`lease ${leaseId} to finish draining`, async () => {
        const now = await this.leases.require(leaseId);
        return now.state === 'draining' ? undefined : now;
      }, { timeoutMs: this.options.detachTimeoutMs + this.options.unexportTimeoutMs, intervalMs: 100 });
    }
    if (isTerminal(current.state)) return current;
    return this.inLeaseTrace(current, `release ${leaseId}`, () => this.drainTraced(current, reason));
  }

  private async drainTraced(current: LeaseRecord, reason?: string): Promise<LeaseRecord> {
    const leaseId = current.id;
    if (current.state !== 'active' && current.state !== 'exported') {
      throw new RswapError(ErrorCodes.ILLEGAL_STATE, `lease ${leaseId} is ${current.state}; release it once it is active`);
    }
    try {
      await this.leases.move(leaseId, 'draining', reason ? { reason } : {});
    } catch (error) {
      // Another broker started the same release a moment earlier: answer with how it ends.
      if (errorCode(error) === ErrorCodes.ILLEGAL_STATE) return this.drain(leaseId, reason);
      throw error;
    }
    try {
      await requestJson(this.nc, subjects.detachCmd(current.borrower), { leaseId, borrower: current.borrower }, OkReply, this.options.detachTimeoutMs);
    } catch (error) {
      if (errorCode(error) === ErrorCodes.SWAPOFF_UNSAFE) {
        await this.leases.move(leaseId, 'active', { reason: errorMessage(error) });
        throw error;
      }
      await this.fail(leaseId, `detach failed: ${errorMessage(error)}`, true);
      throw error;
    }
    return this.finishRelease(current, false);
  }

  /**
   * The end of a release: unexport, then released. A release taken over from a broker that died
   * detaches first (again, maybe: a no-op on a borrower that already let go).
   */
  private async finishRelease(lease: LeaseRecord, detachFirst: boolean): Promise<LeaseRecord> {
    const leaseId = lease.id;
    if (detachFirst) await requestJson(this.nc, subjects.detachCmd(lease.borrower), { leaseId, borrower: lease.borrower }, OkReply, this.options.detachTimeoutMs);
    // The borrower has swapped off; if the unexport fails anyway, the lender's reconciler removes
    // the target of a released lease once no session is left.
    const targetGone = await this.unexport(lease);
    const released = await this.leases.move(leaseId, 'released');
    await this.giveBack(released, targetGone);
    return released;
  }

  /**
   * A borrower clear of pressure for the cool-down gets its leases taken back, newest first. A
   * refused swap-off (its pages would not fit in RAM) leaves that lease active; the next check
   * tries again. Returns the leases released.
   */
  async releaseIfCool(host: string, now: number): Promise<LeaseRecord[]> {
    return this.perBorrower.run(host, async () => {
      const record = await this.hosts.get(host);
      if (record?.clearSince === undefined || now - record.clearSince < this.options.releaseCooldownMs) return [];
      const active = (await this.leases.list()).filter((l) => l.borrower === host && l.state === 'active').sort((a, b) => b.createdAt - a.createdAt);
      for (const [leaseId, b] of this.drainBackoff) if (now - b.until > MAX_DRAIN_RETRY_MS) this.drainBackoff.delete(leaseId); // long over
      const released: LeaseRecord[] = [];
      for (const lease of active) {
        // A swap-off the borrower refused (its pages would not fit) is tried again after a wait
        // that doubles each time, up to 10 minutes: not on every heartbeat.
        const backoff = this.drainBackoff.get(lease.id);
        if (backoff && now < backoff.until) break;
        try {
          released.push(await this.drain(lease.id, `pressure clear for ${Math.round((now - record.clearSince) / 1000)}s`));
          this.drainBackoff.delete(lease.id);
        } catch (error) {
          if (errorCode(error) === ErrorCodes.SWAPOFF_UNSAFE) {
            const delayMs = Math.min(MAX_DRAIN_RETRY_MS, backoff ? backoff.delayMs * 2 : this.options.drainRetryMs);
            this.drainBackoff.set(lease.id, { until: now + delayMs, delayMs });
            this.log.info({ leaseId: lease.id, err: errorMessage(error), retryInMs: delayMs }, 'cool-down release refused: the pages would not fit; will retry');
          } else {
            this.log.info({ leaseId: lease.id, err: errorMessage(error) }, 'cool-down release failed; will retry');
          }
          break;
        }
      }
      return released;
    });
  }

  /**
   * A lender under its reserve takes memory back, make-before-break: for each of its active leases
   * (largest first, until the deficit is covered) the borrower first gets a replacement lease from
   * another lender, and only then swaps off the old one; then the lender tears it down. With no
   * replacement the swap-off goes ahead only if the borrower's pages fit elsewhere (its attacher
   * checks, and refuses otherwise). A deficit reported before a reclaim of this lender finished is
   * stale and ignored.
   */
  /**
   * Make-before-break, for a caller holding the borrower's queue: a replacement lease from another
   * lender comes up first, then the old lease is released (swap-off, then teardown). Without a
   * replacement the swap-off still goes ahead if the borrower's pages fit elsewhere; if not, the
   * attacher refuses, this throws RSWAP_E_SWAPOFF_UNSAFE and the old lease stays active.
   */
  private async replaceThenRelease(old: LeaseRecord, why: string): Promise<{ released: LeaseRecord; replacement?: LeaseRecord }> {
    const borrower = await this.hosts.get(old.borrower);
    let replacement: LeaseRecord | undefined;
    if (borrower?.attacher) {
      const lease = await this.lend(borrower, old.sizeBytes, new Set([old.lender]), old.id);
      replacement = lease && (await this.bringUp(lease));
    }
    const replaced = replacement?.state === 'active';
    if (!replaced) this.log.warn({ leaseId: old.id }, 'no replacement lease; swapping off only if the pages fit');
    const released = await this.drain(old.id, `${why}${replaced ? `, replaced by ${replacement!.id}` : ''}`);
    return { released, ...(replaced ? { replacement } : {}) };
  }

  /**
   * An operator takes a lease back from its lender (maintenance, rebalancing): make-before-break,
   * as a reclaim. Answers with the old lease (released) and its replacement.
   */
  async revoke(leaseId: string): Promise<{ released: LeaseRecord; replacement?: LeaseRecord }> {
    const lease = await this.leases.require(leaseId);
    return this.perBorrower.run(lease.borrower, async () => {
      const current = await this.leases.require(leaseId);
      if (current.state !== 'active') throw new RswapError(ErrorCodes.ILLEGAL_STATE, `lease ${leaseId} is ${current.state}; only an active lease can be revoked`);
      return this.inLeaseTrace(current, `revoke ${leaseId}`, () => this.replaceThenRelease(current, 'revoked'));
    });
  }

  /**
   * Cordons a lender, then moves every lease off it, one at a time, make-before-break (as revoke):
   * so it can be rebooted without killing a borrower's processes. A lease that cannot move (no
   * replacement, and its pages would not fit on the borrower) stays, and is reported.
   */
  async drainLender(lender: string): Promise<{ moved: Array<{ from: string; to?: string }>; stayed: Array<{ leaseId: string; reason: string }> }> {
    await this.hosts.setCordoned(lender, true, Date.now());
    return this.perLender.run(lender, async () => {
      const moved: Array<{ from: string; to?: string }> = [];
      const stayed: Array<{ leaseId: string; reason: string }> = [];
      const tried = new Set<string>();
      // Until nothing is left on it: a lease placed just before the cordon, or one still coming up
      // or draining, is picked up on a later round (each waits at most for its own step's timeouts).
      const deadline = Date.now() + stuckAfterMs('draining', this.options) + stuckAfterMs('attaching', this.options);
      for (;;) {
        const open = (await this.leases.list()).filter((l) => l.lender === lender && !isTerminal(l.state) && !tried.has(l.id));
        if (open.length === 0) break;
        const active = open.filter((l) => l.state === 'active').sort((a, b) => b.sizeBytes - a.sizeBytes);
        if (active.length === 0) {
          if (Date.now() > deadline) {
            for (const l of open) stayed.push({ leaseId: l.id, reason: `still ${l.state} when the drain gave up waiting` });
            break;
          }
          await new Promise((resolve) => setTimeout(resolve, 250));
          continue;
        }
        for (const seen of active) {
          tried.add(seen.id);
          try {
            const done = await this.perBorrower.run(seen.borrower, async () => {
              // Read again inside the borrower's queue: a release or expiry may have ended it meanwhile.
              const old = await this.leases.require(seen.id);
              if (old.state !== 'active') return undefined;
              this.log.warn({ leaseId: old.id, lender, borrower: old.borrower }, 'draining a cordoned lender: moving the lease');
              return this.inLeaseTrace(old, `drain ${lender}: move ${old.id}`, () => this.replaceThenRelease(old, `lender ${lender} drained`));
            });
            if (done) moved.push({ from: seen.id, ...(done.replacement ? { to: done.replacement.id } : {}) });
          } catch (error) {
            stayed.push({ leaseId: seen.id, reason: errorMessage(error) });
          }
        }
      }
      return { moved, stayed };
    });
  }

  async reclaim(lender: string, deficitBytes: number, reportedAt: number): Promise<LeaseRecord[]> {
    return this.perLender.run(lender, async () => {
      const leases = await this.leases.list();
      const endedSince = leases.some((l) => l.lender === lender && isTerminal(l.state) && l.updatedAt > reportedAt && l.history.some((h) => h.state === 'draining'));
      if (endedSince) return [];
      const victims = leases.filter((l) => l.lender === lender && l.state === 'active').sort((a, b) => b.sizeBytes - a.sizeBytes);
      const reclaimed: LeaseRecord[] = [];
      let covered = 0;
      for (const old of victims) {
        if (covered >= deficitBytes) break;
        this.log.warn({ leaseId: old.id, lender, borrower: old.borrower, deficitBytes }, 'lender under its reserve: reclaiming');
        const done = await this.perBorrower
          .run(old.borrower, () => this.replaceThenRelease(old, `reclaimed by ${lender}`))
          .catch((error: unknown) => {
            this.log.error({ leaseId: old.id, err: errorMessage(error) }, 'reclaim: swap-off refused; the lender stays under its reserve');
            return undefined;
          });
        if (done) {
          reclaimed.push(done.released);
          covered += old.sizeBytes;
        }
      }
      return reclaimed;
    });
  }
}
