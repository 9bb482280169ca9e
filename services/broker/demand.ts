/**
 * Pressure the broker could not serve for want of a lender, kept until it is served.
 *
 * Offers are events: a broker that starts (or restarts, or reconnects) after a lender's last
 * surplus, or whose lenders' offers went stale, cannot lend until they speak again. So a pressure
 * that finds no lender
 *   1. asks every monitor for a fresh offer at once (`rswap.v1.broker.solicit`), at most once per
 *      `solicitEveryMs`, so a fleet is not asked again for every repeat of every pressure;
 *   2. waits, keyed by borrower, until its relief, a newer pressure from it, or `ttlMs` after it
 *      arrived; every offer that arrives meanwhile retries it, in the pressure's own trace.
 *
 * It lives in this broker's memory only: a monitor repeats its pressure every 2 s while it lasts,
 * so another broker (or this one, restarted) hears it again within one repeat.
 */
import type { Context } from '@opentelemetry/api';
import type { PressureEvent } from '../../shared/schemas.js';

export interface Unserved {
  event: PressureEvent;
  /** When the pressure happened (its `at`, or when it arrived), for the time-to-match metric. */
  at: number;
  /** When this broker received it (its own clock): the pressure waits `ttlMs` from then, retries included. */
  receivedAt: number;
  /** The trace the pressure came in, so the lease it finally gets joins it. */
  context: Context;
}

export class UnservedDemand {
  private readonly waiting = new Map<string, Unserved>();
  private lastSolicitAt = -Infinity;

  constructor(
    private readonly options: { ttlMs: number; solicitEveryMs: number },
    private readonly solicit: () => void,
  ) {}

  /** Keeps `pressure` (replacing an older one of the same borrower) and solicits offers if due. */
  add(pressure: Unserved, now: number): void {
    if (now - pressure.receivedAt > this.options.ttlMs) return; // it has waited long enough
    this.waiting.set(pressure.event.host, pressure);
    if (now - this.lastSolicitAt >= this.options.solicitEveryMs) {
      this.lastSolicitAt = now;
      this.solicit();
    }
  }

  /** The borrower's pressure is served, cleared or superseded: stop retrying it. */
  drop(borrower: string): void {
    this.waiting.delete(borrower);
  }

  /**
   * Hands back every pressure still waiting (oldest first) and forgets them, and those past
   * `ttlMs`; the caller retries each, and one still unserved comes back through `add`.
   */
  take(now: number): Unserved[] {
    const due = [...this.waiting.values()].filter((p) => now - p.receivedAt <= this.options.ttlMs).sort((a, b) => a.receivedAt - b.receivedAt);
    this.waiting.clear();
    return due;
  }

  get size(): number {
    return this.waiting.size;
  }
}
