/**
 * Pressure detection with hysteresis, as a pure function of readings (so it is unit-tested with
 * made-up timelines):
 *
 * - A reading is "high" when the stall share or the swap traffic reaches its enter threshold, and
 *   "low" when both are under their (lower) exit thresholds. In between it is neither, and the
 *   state holds.
 * - clear -> pressure once readings have stayed high for `enterHoldMs`; pressure -> clear once they
 *   have stayed low for `exitHoldMs`. A short spike or a short lull changes nothing.
 * - On a host without swap of its own, a reading is also "high" when the scope is about to run out:
 *   at the rate its memory and swap in use grow (the fill), its available memory and the room
 *   left in its own leases are gone within `headroomLeadS`. There the kernel shows no thrashing
 *   before the OOM killer acts, so this is the only warning. (With swap, the thrashing signals
 *   come in time, and a fast allocation that would fit is not taken for one.) Such a host is "low"
 *   only once its own headroom, without the leases, lasts twice the lead time: while it still
 *   fills, its leases stay.
 * - The need is what the scope lacks: the bytes it has in swap now plus what it swaps out at the
 *   current rate over `horizonS` (without swap of its own: what it fills over `headroomLeadS`, if
 *   more), at least `minNeededBytes`, rounded up to a MiB.
 */
import type { Signals } from '../../shared/schemas.js';
import { MiB, roundUpToMiB } from '../../shared/units.js';
import { PAGE, type Reading } from './sources.js';

export interface DetectorOptions {
  enterStallPct: number;
  exitStallPct: number;
  enterSwapPagesPerS: number;
  exitSwapPagesPerS: number;
  enterHoldMs: number;
  exitHoldMs: number;
  minNeededBytes: number;
  horizonS: number;
  /** Pressure when the room (memory, and own leases' free swap) would be gone within this many seconds at the fill rate. */
  headroomLeadS: number;
}

export const DEFAULT_DETECTOR: DetectorOptions = {
  enterStallPct: 10,
  exitStallPct: 2,
  enterSwapPagesPerS: 256, // 1 MiB/s of swap traffic
  exitSwapPagesPerS: 32,
  enterHoldMs: 500,
  exitHoldMs: 5_000,
  minNeededBytes: 64 * MiB,
  horizonS: 1,
  headroomLeadS: 5, // a lease takes about 1 s to come up (docs/benchmarks.md), detection up to 1 s more
};

/** How fast the scope's swap usage grew between two readings, bytes/s (shrinking counts as 0). */
export function swapGrowthBytesPerS(previous: Reading, current: Reading): number {
  return Math.max(0, current.swapUsedBytes - previous.swapUsedBytes) / Math.max(0.001, (current.at - previous.at) / 1000);
}

/**
 * The fill rate is measured over at least this long. Over the 100 ms between two samples the
 * kernel dropping or refilling a few MiB of cache reads as hundreds of MiB/s, and that times the
 * lead time becomes a lease no lender can give.
 */
export const FILL_WINDOW_MS = 1_000;

/** How much a counter grew between two readings (one that went backwards, a cgroup recreated, grew 0). */
const growth = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? 0 : Math.max(0, b - a));

/**
 * The swap traffic between two readings, in pages: major faults plus swap-outs (where the scope
 * does not count swap-outs, cgroup v1, the growth of its swap usage stands in), and refaults.
 */
export function swapPagesBetween(previous: Reading, current: Reading): { swapPages: number; refaults: number } {
  const swapOuts =
    current.swapOuts !== undefined && previous.swapOuts !== undefined
      ? growth(previous.swapOuts, current.swapOuts)
      : growth(previous.swapUsedBytes, current.swapUsedBytes) / PAGE;
  return { swapPages: growth(previous.majorFaults, current.majorFaults) + swapOuts, refaults: growth(previous.refaults, current.refaults) };
}

/**
 * Rates between two readings of the same scope (counters that went backwards count as 0). The fill
 * rate is taken from `fillBase` (the newest reading at least FILL_WINDOW_MS old) when given.
 */
export function signalsBetween(previous: Reading, current: Reading, fillBase: Reading = previous): Signals {
  const seconds = Math.max(0.001, (current.at - previous.at) / 1000);
  const rateOver = (secs: number) => (a: number | undefined, b: number | undefined) => growth(a, b) / secs;
  const rate = rateOver(seconds);
  const traffic = swapPagesBetween(previous, current);
  const signals: Signals = {
    swapPagesPerS: round(traffic.swapPages / seconds),
    refaultsPerS: round(traffic.refaults / seconds),
    availableBytes: current.availableBytes,
    swapUsedBytes: current.swapUsedBytes,
  };
  signals.headroomBytes = current.headroomBytes ?? current.availableBytes;
  // The fill: how fast the scope's memory and swap in use grow. Taken from what is used, not from
  // the room left, so a lease's swap area coming or going is no fill (its swap-on would read as
  // memory freed, its swap-off as a flood). A lease the host just promised takes its size off the
  // headroom at once: that is a promise, not memory filling, so the promises are added back
  // (without it, a lender that exports 300 MiB reads as filling at 300 MiB/s and borrows from its
  // own borrower).
  const inUse = (r: Reading) => r.swapUsedBytes - (r.headroomBytes ?? r.availableBytes) - (r.lentBytes ?? 0);
  signals.fillBytesPerS = Math.round(rateOver(Math.max(0.001, (current.at - fillBase.at) / 1000))(inUse(fillBase), inUse(current)));
  if (current.swapFreeBytes !== undefined) signals.swapFreeBytes = current.swapFreeBytes;
  if (current.stallUs !== undefined && previous.stallUs !== undefined) {
    signals.stallPct = round(Math.min(100, (rate(previous.stallUs, current.stallUs) / 1e6) * 100));
  }
  return signals;
}

const round = (n: number) => Math.round(n * 10) / 10;

/**
 * A host without swap of its own (`swapFreeBytes` is set only there: the room left in its leases),
 * where at the current fill rate memory and that room are gone within `headroomLeadS`. Where the
 * host has swap, the kernel swaps and the thrashing signals come in time: this is for the host
 * whose only other outcome is the OOM killer.
 */
export function runningOut(s: Signals, o: DetectorOptions): boolean {
  const fill = s.fillBytesPerS ?? 0;
  if (s.swapFreeBytes === undefined || fill <= 0) return false;
  return (s.headroomBytes ?? s.availableBytes) + s.swapFreeBytes < fill * o.headroomLeadS;
}

/**
 * Whether a host without swap of its own could do without its leases: its own headroom lasts at
 * least twice the lead time at the current fill rate. A lease that gives a filling host room makes
 * it no longer run out, but that is no reason to give the lease back: the release would take the
 * room away while the memory still fills (and with no pages in swap yet, the swap-off is "safe").
 * Hosts with swap of their own always can.
 */
export function fineWithoutLeases(s: Signals, o: DetectorOptions): boolean {
  if (s.swapFreeBytes === undefined) return true;
  return (s.headroomBytes ?? s.availableBytes) >= 2 * (s.fillBytesPerS ?? 0) * o.headroomLeadS;
}

export function isHigh(s: Signals, o: DetectorOptions): boolean {
  return (s.stallPct ?? 0) >= o.enterStallPct || s.swapPagesPerS + s.refaultsPerS >= o.enterSwapPagesPerS || runningOut(s, o);
}

export function isLow(s: Signals, o: DetectorOptions): boolean {
  return (s.stallPct ?? 0) < o.exitStallPct && s.swapPagesPerS + s.refaultsPerS < o.exitSwapPagesPerS && !runningOut(s, o) && fineWithoutLeases(s, o);
}

export function neededBytes(s: Signals, swapOutBytesPerS: number, o: DetectorOptions): number {
  // On a host without swap of its own: swap in use plus what the fill brings over the lead time,
  // the leases it needs in all. Where the host has swap, its swap-outs are in the fill too, and the
  // swap-out rate over the horizon already counts them.
  const filling = s.swapFreeBytes !== undefined ? s.swapUsedBytes + (s.fillBytesPerS ?? 0) * o.headroomLeadS : 0;
  return roundUpToMiB(Math.max(o.minNeededBytes, s.swapUsedBytes + swapOutBytesPerS * o.horizonS, filling));
}

export type Change = { kind: 'enter'; onsetAt: number } | { kind: 'exit' } | undefined;

export class Detector {
  state: 'clear' | 'pressure' = 'clear';
  /** Since when the readings have been high (while clear) or low (while under pressure). */
  private since: number | undefined;

  constructor(private readonly options: DetectorOptions) {}

  /** Feeds one set of signals taken at `at`; returns the state change it causes, if any. */
  update(signals: Signals, at: number): Change {
    const o = this.options;
    if (this.state === 'clear') {
      if (!isHigh(signals, o)) {
        this.since = undefined;
        return undefined;
      }
      this.since ??= at;
      if (at - this.since < o.enterHoldMs) return undefined;
      const onsetAt = this.since;
      this.state = 'pressure';
      this.since = undefined;
      return { kind: 'enter', onsetAt };
    }
    if (!isLow(signals, o)) {
      this.since = undefined;
      return undefined;
    }
    this.since ??= at;
    if (at - this.since < o.exitHoldMs) return undefined;
    this.state = 'clear';
    this.since = undefined;
    return { kind: 'exit' };
  }
}

/**
 * What a host offers: available - reserve, nothing while it is under pressure itself. `available`
 * is net of lease pages promised but not yet written.
 */
export function surplus(availableBytes: number, reserveBytes: number, underPressure: boolean): { lendableBytes: number; deficitBytes: number } {
  return {
    lendableBytes: underPressure ? 0 : Math.max(0, Math.floor(availableBytes - reserveBytes)),
    deficitBytes: Math.max(0, Math.ceil(reserveBytes - availableBytes)),
  };
}
