/**
 * What the broker's handlers ask of leases. Each records intent and leaves the driving to the
 * reconciler (reconciler.ts): a pressure creates a lease record and reconciles it up; a release,
 * cool-down, revoke, drain or reclaim marks a lease's `end` and reconciles it down; the sweep
 * reconciles every lease that has a step to take. Make-before-break moves (revoke, drain, reclaim)
 * bring a replacement up before they end the old lease.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { context, propagation } from '@opentelemetry/api';
import { Gauge } from 'prom-client';
import { metrics, registry } from '../../shared/metrics.js';
import { FLEET_NOTE } from './gauges.js';
import type { Logger } from '../../shared/log.js';
import { ErrorCodes, RswapError, errorCode, errorMessage } from '../../shared/errors.js';
import type { HostRecord, LeaseRecord, LostEvent, PressureEvent } from '../../shared/schemas.js';
import { KeyedQueue } from '../../shared/serial.js';
import { waitFor } from '../../shared/wait.js';
import type { HostStore } from './hosts.js';
import { LeaseStore, newLeaseId } from './lease-store.js';
import { chooseLender } from './policy.js';
import { isTerminal } from './states.js';
import { Reconciler, decide, factsFor, stuckAfterMs, type Outcome, type ReconcilerOptions } from './reconciler.js';
import type { UnservedDemand } from './demand.js';

export { stuckAfterMs };

export interface LifecycleOptions extends ReconcilerOptions {
  /** How long a borrower must stay clear of pressure before its leases go back. */
  releaseCooldownMs: number;
  /** Open leases one borrower may hold. */
  maxLeasesPerBorrower: number;
  /** The first wait before a refused cool-down release is tried again (it doubles, up to 10 min). */
  drainRetryMs: number;
  /** Pressures handled at once (each may bring a lease up); more are refused until one is done. */
  maxInFlight: number;
}

/** Every broker sweeps every lease: like the gauges of gauges.ts, this is the fleet's. */
const silentKeptGauge = new Gauge({ name: 'rswap_broker_silent_borrower_leases', help: `Active leases whose borrower is silent past the timeout but still logged in at its lender: kept (${FLEET_NOTE})`, registers: [registry] });

/** The longest wait before a refused cool-down release is tried again. */
const MAX_DRAIN_RETRY_MS = 600_000;

type Moved = { released: LeaseRecord; replacement?: LeaseRecord };

/** Tries to clear a borrower mark (500 ms, 1 s, ... apart: about 15 s in all). */
const MARK_RELEASE_ATTEMPTS = 8;

export class Lifecycle {
  readonly reconciler: Reconciler;
  /** Lending decisions for one borrower (and its cool-down) one at a time. */
  private readonly perBorrower = new KeyedQueue();
  private readonly perLender = new KeyedQueue();
  /** Borrowers whose pressure is being handled now. */
  private readonly pressureOf = new Set<string>();
  /** Leases whose cool-down swap-off was refused: not tried again before `until`. */
  private readonly drainBackoff = new Map<string, { until: number; delayMs: number }>();

  constructor(
    nc: NatsConnection,
    private readonly hosts: HostStore,
    private readonly leases: LeaseStore,
    private readonly options: LifecycleOptions,
    private readonly log: Logger,
    /** This broker's name in lease records and borrower marks. */
    private readonly brokerId = 'broker',
    /** Pressure no lender could serve yet: retried when offers come (see demand.ts). */
    private readonly unserved?: UnservedDemand,
  ) {
    this.reconciler = new Reconciler(nc, hosts, leases, options, log, brokerId);
  }

  /**
   * Demand from a borrower: lend unless its existing leases already cover it. A pressure no lender
   * can serve now waits in `unserved` (which solicits fresh offers) and is retried as they come.
   */
  async onPressure(event: PressureEvent, at: number, receivedAt = Date.now(), retry = false): Promise<LeaseRecord | undefined> {
    // A retry of a pressure that waited for a lender queues behind the borrower's current work:
    // there is at most one per borrower (in `unserved`), and dropping it would lose the rescue.
    if (retry) return this.perBorrower.run(event.host, () => this.lendFor(event, at, receivedAt));
    // Bounded work. One pressure per borrower at a time: a repeat that comes while the last one is
    // still handled (a slow bring-up) is answered at once, not queued behind it. Past
    // `maxInFlight` borrowers being handled, a new one is refused at once; the monitor repeats it.
    // Either way the pressure is recorded (one KV write): it ends the host's clear spell, so a
    // cool-down that a short relief started does not drain the leases of a host under pressure
    // again (seen in a VM: relief during a 135 s bring-up, pressure back 3 s later and ignored, and
    // the cool-down swapped a lease off into a VM about to run out of memory).
    if (this.pressureOf.has(event.host)) {
      await this.hosts.recordPressure(event.host, event.neededBytes, at);
      this.log.debug({ borrower: event.host }, "pressure recorded, not acted on: this borrower's last pressure is still being handled");
      return undefined;
    }
    if (this.pressureOf.size >= this.options.maxInFlight) {
      await this.hosts.recordPressure(event.host, event.neededBytes, at);
      throw new RswapError(ErrorCodes.NO_CAPACITY, `broker busy: ${this.pressureOf.size} pressures in flight (--max-in-flight); a later repeat is served`);
    }
    this.pressureOf.add(event.host);
    try {
      return await this.perBorrower.run(event.host, () => this.lendFor(event, at, receivedAt));
    } finally {
      this.pressureOf.delete(event.host);
    }
  }

  private async lendFor(event: PressureEvent, at: number, receivedAt: number): Promise<LeaseRecord | undefined> {
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
      const done = lease && (await this.reconciler.reconcile(lease.id));
      // No lender, or its bytes were taken between the choice and the reservation: wait for offers.
      if (!done || done.failedAt === 'reserve') {
        this.unserved?.add({ event, at, receivedAt, context: context.active() }, Date.now());
        return undefined;
      }
      this.unserved?.drop(event.host);
      metrics.timeToMatch.observe(Math.max(0, lease.createdAt - at) / 1000);
      return done.lease;
    } finally {
      await this.releaseMark(event.host, leaseId);
    }
  }

  /**
   * Clears this broker's mark on a borrower. While it stays, no other broker lends to the borrower
   * until it goes stale (minutes): on a cluster losing a node a KV write can fail for some seconds
   * ("jetstream is not enabled", timeouts), so it is tried again, for about 15 s.
   */
  private async releaseMark(borrower: string, leaseId: string): Promise<void> {
    for (let attempt = 1; ; attempt += 1) {
      try {
        await this.hosts.releaseBorrower(borrower, leaseId);
        return;
      } catch (error) {
        if (attempt >= MARK_RELEASE_ATTEMPTS) {
          this.log.warn({ borrower, leaseId, err: errorMessage(error) }, 'could not clear the borrower mark: other brokers wait until it goes stale');
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
      }
    }
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
   * Records a new lease for `bytes` on the best lender (other than those excluded), in the current
   * trace; undefined when no lender can serve it. Reconciling it reserves the bytes and brings it up.
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
    return this.leases.create({
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
      driver: this.brokerId,
      ...(replaces ? { replaces } : {}),
      ...(carrier.traceparent ? { traceparent: carrier.traceparent } : {}),
    });
  }

  /**
   * Every lease with a step to take, by the table (a lease whose broker died, a silent borrower, an
   * end asked for and not yet acted on), is reconciled, all at once; resolves when they rest.
   * Returns their ids. (Sweeps may overlap: a reconcile joins the one already running.)
   */
  async sweep(now: number, read: { leases?: LeaseRecord[]; hosts?: HostRecord[] } = {}): Promise<string[]> {
    // A caller's lists may be a moment old: each reconcile reads the lease and the borrower again.
    const hosts = new Map((read.hosts ?? (await this.hosts.list())).map((h) => [h.host, h]));
    const started = new Map<string, Promise<unknown>>();
    const kept = new Map<string, string>();
    for (const lease of read.leases ?? (await this.leases.list())) {
      const action = decide(lease, factsFor(lease, this.brokerId, now, hosts.get(lease.borrower), hosts.get(lease.lender), this.options.announceTtlMs), this.options);
      if (action.do === 'rest') {
        if (action.warn) kept.set(lease.id, action.why);
        continue;
      }
      started.set(lease.id, this.reconciler.reconcile(lease.id).catch((error: unknown) => this.log.error({ leaseId: lease.id, err: errorMessage(error) }, 'reconcile failed; the next sweep tries again')));
    }
    this.noteKept(kept);
    await Promise.all(started.values());
    return [...started.keys()];
  }

  /**
   * Leases kept although their borrower is silent, because its lender still sees it logged in: a
   * warning when one starts, a note when it ends, and their count as a metric. Nothing can be
   * asked of such a borrower; an operator should look at the host (docs/operations.md).
   */
  private keptSilent = new Map<string, string>();
  private noteKept(kept: Map<string, string>): void {
    for (const [leaseId, why] of kept) if (!this.keptSilent.has(leaseId)) this.log.warn({ leaseId }, `${why}: the lease stays`);
    for (const leaseId of this.keptSilent.keys()) if (!kept.has(leaseId)) this.log.info({ leaseId }, 'no longer kept for a silent borrower');
    this.keptSilent = kept;
    silentKeptGauge.set(kept.size);
  }

  /**
   * Gives a lease back: the borrower swaps off first (or refuses, when its pages would not fit, and
   * the lease stays active: this throws RSWAP_E_SWAPOFF_UNSAFE), then the lender removes the
   * target. Releasing a released or failed lease again answers with it and does nothing.
   */
  async release(leaseId: string, reason = 'released on request'): Promise<LeaseRecord> {
    const lease = await this.leases.require(leaseId);
    if (isTerminal(lease.state)) return lease;
    if (lease.state !== 'active' && lease.state !== 'exported' && lease.state !== 'draining') {
      throw new RswapError(ErrorCodes.ILLEGAL_STATE, `lease ${leaseId} is ${lease.state}; release it once it is active`);
    }
    await this.leases.askEnd(leaseId, reason);
    let done: Outcome = await this.reconciler.reconcile(leaseId);
    if (done.lease?.state === 'draining') {
      // Another broker is releasing it: answer with how that ends.
      const ended = await waitFor(`lease ${leaseId} to finish draining`, async () => {
        const now = await this.leases.get(leaseId);
        return now?.state === 'draining' ? undefined : now;
      }, { timeoutMs: stuckAfterMs('draining', this.options), intervalMs: 100 });
      done = { lease: ended };
    }
    if (!done.lease) throw new RswapError(ErrorCodes.UNKNOWN_LEASE, `unknown lease '${leaseId}'`);
    if (done.lease.state === 'released') return done.lease;
    if (done.error !== undefined) throw done.error;
    const code = done.lease.state === 'active' ? ErrorCodes.SWAPOFF_UNSAFE : ErrorCodes.ILLEGAL_STATE;
    throw new RswapError(code, `lease ${leaseId} is ${done.lease.state}: ${done.lease.reason ?? 'not released'}`);
  }

  /**
   * A borrower clear of pressure for the cool-down gets its leases taken back, newest first. A
   * refused swap-off (its pages would not fit in RAM) leaves that lease active and is tried again
   * after a wait that doubles each time, up to 10 minutes. Returns the leases released.
   */
  async releaseIfCool(host: string, now: number): Promise<LeaseRecord[]> {
    return this.perBorrower.run(host, async () => {
      const record = await this.hosts.get(host);
      if (record?.clearSince === undefined || now - record.clearSince < this.options.releaseCooldownMs) return [];
      const active = (await this.leases.list()).filter((l) => l.borrower === host && l.state === 'active').sort((a, b) => b.createdAt - a.createdAt);
      for (const [leaseId, b] of this.drainBackoff) if (now - b.until > MAX_DRAIN_RETRY_MS) this.drainBackoff.delete(leaseId); // long over
      const released: LeaseRecord[] = [];
      for (const lease of active) {
        const backoff = this.drainBackoff.get(lease.id);
        if (backoff && now < backoff.until) break;
        try {
          released.push(await this.release(lease.id, `pressure clear for ${Math.round((now - record.clearSince) / 1000)}s`));
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
   * A borrower lost the lender of a lease: the lease fails (its pages on that lender are gone), the
   * lender is not chosen again until its exporter announces itself, and the borrower's next
   * pressure is served by another lender. The bytes stay promised while the lender still serves
   * the target: a forged `lost` frees nothing.
   */
  async onLost(event: LostEvent): Promise<LeaseRecord | undefined> {
    const lease = await this.leases.require(event.leaseId);
    if (lease.borrower !== event.host) throw new RswapError(ErrorCodes.WRONG_HOST, `lease ${lease.id} is not borrowed by '${event.host}'`);
    if (isTerminal(lease.state)) return lease;
    return this.reconciler.exclusive(lease.id, () =>
      this.reconciler.inLeaseTrace(lease, 'lost', async () => {
        await this.hosts.forgetExporter(lease.lender, Date.now());
        return this.reconciler.fail(lease.id, `lender ${lease.lender} lost: ${event.reason}`, true);
      }),
    );
  }

  /**
   * Make-before-break, for a caller holding the borrower's queue: a replacement lease from another
   * lender comes up first, then the old lease is released (swap-off, then teardown). Without a
   * replacement the swap-off still goes ahead if the borrower's pages fit elsewhere; if not, the
   * attacher refuses, this throws RSWAP_E_SWAPOFF_UNSAFE and the old lease stays active.
   */
  private async replaceThenRelease(old: LeaseRecord, why: string): Promise<Moved> {
    return this.reconciler.inLeaseTrace(old, 'replace', async () => {
      const borrower = await this.hosts.get(old.borrower);
      const lease = borrower?.attacher && (await this.lend(borrower, old.sizeBytes, new Set([old.lender]), old.id));
      const replacement = lease ? (await this.reconciler.reconcile(lease.id)).lease : undefined;
      const replaced = replacement?.state === 'active';
      if (!replaced) this.log.warn({ leaseId: old.id }, 'no replacement lease; swapping off only if the pages fit');
      const released = await this.release(old.id, `${why}${replaced ? `, replaced by ${replacement.id}` : ''}`);
      return { released, ...(replaced ? { replacement } : {}) };
    }, { 'rswap.lease.reason': why });
  }

  /** An active lease, read again inside the borrower's queue, moved make-before-break; undefined if it ended meanwhile. */
  private moveLease(seen: LeaseRecord, why: string): Promise<Moved | undefined> {
    return this.perBorrower.run(seen.borrower, async () => {
      const old = await this.leases.require(seen.id);
      return old.state === 'active' ? this.replaceThenRelease(old, why) : undefined;
    });
  }

  /**
   * An operator takes a lease back from its lender (maintenance, rebalancing): make-before-break,
   * as a reclaim. Answers with the old lease (released) and its replacement.
   */
  async revoke(leaseId: string): Promise<Moved> {
    const lease = await this.leases.require(leaseId);
    const moved = await this.moveLease(lease, 'revoked');
    if (!moved) throw new RswapError(ErrorCodes.ILLEGAL_STATE, `lease ${leaseId} is ${(await this.leases.require(leaseId)).state}; only an active lease can be revoked`);
    return moved;
  }

  /**
   * Cordons a lender, then moves every lease off it, one at a time, make-before-break (as revoke):
   * so it can be rebooted without killing a borrower's processes. A lease that cannot move (no
   * replacement, and its pages would not fit on the borrower) stays, and is reported.
   */
  async drainLender(lender: string, by: 'operator' | 'self' = 'operator'): Promise<{ moved: Array<{ from: string; to?: string }>; stayed: Array<{ leaseId: string; reason: string }> }> {
    await this.hosts.setCordoned(lender, true, Date.now(), by);
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
          this.log.warn({ leaseId: seen.id, lender, borrower: seen.borrower }, 'draining a cordoned lender: moving the lease');
          try {
            const done = await this.moveLease(seen, `lender ${lender} drained`);
            if (done) moved.push({ from: seen.id, ...(done.replacement ? { to: done.replacement.id } : {}) });
          } catch (error) {
            stayed.push({ leaseId: seen.id, reason: errorMessage(error) });
          }
        }
      }
      return { moved, stayed };
    });
  }

  /**
   * A lender under its reserve takes memory back, make-before-break: its active leases, largest
   * first, are moved until the deficit is covered. A deficit reported before a reclaim of this
   * lender finished is stale and ignored.
   */
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
        const done = await this.moveLease(old, `reclaimed by ${lender}`).catch((error: unknown) => {
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
