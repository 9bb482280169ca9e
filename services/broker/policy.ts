/**
 * Placement policy: which lender serves a borrower's demand, and how big the lease is.
 *
 * - A lender qualifies when its exporter has announced itself recently (and not been lost by a
 *   borrower since), it is not cordoned, its newest offer is fresh, and it is not the borrower.
 * - Free capacity = offered lendable bytes + bytes it already serves (as it reported them) - bytes
 *   the broker has reserved on it. The offer is already net of the lender's reserve, so a lease
 *   never takes a lender below its reserve.
 * - The lease size is the demand rounded up to a MiB, clamped to [minLeaseBytes, maxLeaseBytes].
 * - Most headroom first (worst fit): the lender with the most free capacity wins, ties by host id.
 *   It spreads leases across lenders, so one lender's reclaim touches as few borrowers as possible.
 *   It lends the whole lease, or all it has when that is less but still at least minLeaseBytes.
 */
import type { HostRecord } from '../../shared/schemas.js';
import { MiB, roundUpToMiB } from '../../shared/units.js';

export interface PolicyOptions {
  offerTtlMs: number;
  announceTtlMs: number;
  minLeaseBytes: number;
  maxLeaseBytes: number;
}

export type Placement = { lender: string; sizeBytes: number } | { reason: string };

export function reservedBytes(host: HostRecord): number {
  return Object.values(host.reservations).reduce((sum, bytes) => sum + bytes, 0);
}

/** Bytes the broker may still promise on this host, or 0 when its offer is missing or stale. */
export function freeBytes(host: HostRecord, now: number, options: Pick<PolicyOptions, 'offerTtlMs'>): number {
  if (!host.offer || now - host.offer.at > options.offerTtlMs) return 0;
  return Math.max(0, host.offer.lendableBytes + host.offer.lentBytes - reservedBytes(host));
}

export function chooseLender(
  hosts: HostRecord[],
  borrower: string,
  neededBytes: number,
  now: number,
  options: PolicyOptions,
  /** Lenders not to use (the one reclaiming its memory). */
  exclude: ReadonlySet<string> = new Set(),
): Placement {
  const wanted = Math.min(options.maxLeaseBytes, Math.max(options.minLeaseBytes, roundUpToMiB(neededBytes)));
  const candidates = hosts
    .filter((h) => h.host !== borrower && !exclude.has(h.host) && !h.cordoned && h.exporter && h.exporter.lostAt === undefined && now - h.exporter.at <= options.announceTtlMs)
    .map((h) => ({ host: h.host, free: Math.floor(freeBytes(h, now, options) / MiB) * MiB }))
    .filter((c) => c.free >= options.minLeaseBytes)
    .sort((a, b) => b.free - a.free || a.host.localeCompare(b.host));
  const best = candidates[0];
  if (!best) return { reason: 'no lender with a fresh offer and enough free capacity' };
  return { lender: best.host, sizeBytes: Math.min(wanted, best.free) };
}

/**
 * Whether a lender's reservation for `leaseId` can go back: only once the lease has ended and the
 * lender no longer holds its target or ramfs, as the lender itself reported in an announce
 * received after the lease ended. A failed lease whose borrower still swaps on the target keeps
 * its bytes promised, and so does an orphan target whose record is gone. An exporter that does not
 * report what it serves (an older one) gets its bytes back when the lease ends.
 */
export function reservationEnded(lender: HostRecord, leaseId: string, lease: { state: string; updatedAt: number } | undefined): boolean {
  if (lease && lease.state !== 'released' && lease.state !== 'failed') return false;
  const serving = lender.exporter?.serving;
  if (serving === undefined) return true;
  if (serving.includes(leaseId)) return false;
  return lease === undefined || lender.exporter!.at > lease.updatedAt;
}
