/**
 * Whose clock counts: the receiver's. A host's `at` says when it measured something, but its
 * clock may be minutes off, or the message replayed. Liveness ("heard from it lately") always uses
 * the time a message arrived. A measurement keeps its own `at` (it orders one host's reports) when
 * that lies within `maxSkewMs` of the arrival; one further off either way is replaced by the
 * arrival time and counted: so an offer cannot stay fresh forever, and a host whose clock is far
 * behind can still borrow, lend and be reclaimed.
 */
import { Counter } from 'prom-client';
import { registry } from './metrics.js';

/** How far a sender's clock may be off before its timestamps are not believed. */
export const DEFAULT_MAX_SKEW_MS = 60_000;

const skewed = new Counter({ name: 'rswap_clock_skew_total', help: 'Messages whose sender timestamp was off by more than the allowed skew, by direction', labelNames: ['direction'], registers: [registry] });

/** Counts a timestamp off by more than `maxSkewMs`; returns how far off it is (positive: ahead). */
export function noteSkew(sentAt: number | undefined, receivedAt: number, maxSkewMs = DEFAULT_MAX_SKEW_MS): number {
  const skew = sentAt === undefined ? 0 : sentAt - receivedAt;
  if (Math.abs(skew) > maxSkewMs) skewed.inc({ direction: skew > 0 ? 'future' : 'past' });
  return skew;
}

/**
 * The time to record for a measurement sent at `sentAt` and received at `receivedAt`: `sentAt`
 * when it lies within `maxSkewMs` of the arrival, else (or when missing) `receivedAt`.
 */
export function measuredAt(sentAt: number | undefined, receivedAt: number, maxSkewMs = DEFAULT_MAX_SKEW_MS): number {
  if (sentAt === undefined) return receivedAt;
  return Math.abs(noteSkew(sentAt, receivedAt, maxSkewMs)) > maxSkewMs ? receivedAt : sentAt;
}
