/** The broker's view of each host, kept in the hosts KV bucket and changed only by CAS. */
import type { KV } from '@nats-io/kv';
import { casUpdate, getParsed, KvMirror } from '../../shared/kv.js';
import { ErrorCodes, RswapError } from '../../shared/errors.js';
import { HostRecord, type AnnounceEvent, type SurplusEvent } from '../../shared/schemas.js';
import { formatBytes } from '../../shared/units.js';
import { freeBytes, reservationEnded, type PolicyOptions } from './policy.js';

const empty = (host: string): HostRecord => ({ host, reservations: {} });

export class HostStore {
  private readonly mirror: KvMirror<HostRecord>;

  constructor(private readonly kv: KV) {
    this.mirror = new KvMirror(kv, HostRecord);
  }

  /** Every host's record, as of this call (read from a watched copy, see KvMirror). */
  async list(): Promise<HostRecord[]> {
    return (await this.mirror.list()).map((entry) => entry.value);
  }

  /** Records an agent's announce; `receivedAt` (this broker's clock) is what its liveness counts from. */
  async recordAnnounce(event: AnnounceEvent, receivedAt: number): Promise<HostRecord> {
    const { value } = await casUpdate(this.kv, event.host, HostRecord, (current) => {
      const record = current ?? empty(event.host);
      if (event.role === 'exporter') {
        return { ...record, exporter: { portal: event.portal, at: receivedAt, ...(event.serving ? { serving: event.serving } : {}), ...(event.sessions ? { sessions: event.sessions } : {}), ...(event.orphans?.length ? { orphans: event.orphans } : {}) } };
      }
      return { ...record, attacher: { iqn: event.iqn, address: event.address, initiator: event.initiator, ...(event.sealed !== undefined ? { sealed: event.sealed } : {}), at: receivedAt } };
    });
    return value;
  }

  /** Keeps only the newest offer: an older one arriving late is ignored. */
  async recordOffer(event: SurplusEvent, at: number): Promise<HostRecord> {
    const { value } = await casUpdate(this.kv, event.host, HostRecord, (current) => {
      const record = current ?? empty(event.host);
      if (record.offer && record.offer.at > at) return record;
      return { ...record, offer: { lendableBytes: event.lendableBytes, lentBytes: event.lentBytes, deficitBytes: event.deficitBytes, at } };
    });
    return value;
  }

  /** Records the newest pressure; the host is no longer clear. A late, older event changes nothing. */
  async recordPressure(host: string, neededBytes: number, at: number): Promise<HostRecord> {
    const { value } = await casUpdate(this.kv, host, HostRecord, (current) => {
      const record = current ?? empty(host);
      // An older event arriving late, or a copy of the newest one, changes nothing.
      if (record.pressure && record.pressure.at >= at) return record;
      const { clearSince: _cleared, ...rest } = record;
      return { ...rest, pressure: { neededBytes, at } };
    });
    return value;
  }

  /**
   * Records that the host is clear, unless pressure came after `at`. Keeps the earliest clear time
   * of an unbroken clear spell: repeated relief events do not restart the cool-down.
   */
  async recordRelief(host: string, at: number): Promise<HostRecord> {
    const { value } = await casUpdate(this.kv, host, HostRecord, (current) => {
      const record = current ?? empty(host);
      if (record.pressure && record.pressure.at >= at) return record;
      if (record.clearSince !== undefined && record.clearSince <= at) return record;
      return { ...record, clearSince: at };
    });
    return value;
  }

  /**
   * Marks `borrower` as having a lease on the way, by CAS: of several brokers handling its pressure
   * at once, one wins and the others stand back. A mark older than `staleMs` (its broker died) is
   * taken over. Returns false when another broker holds a fresh mark.
   */
  async claimBorrower(borrower: string, leaseId: string, by: string, now: number, staleMs: number): Promise<boolean> {
    try {
      await casUpdate(this.kv, borrower, HostRecord, (current) => {
        const record = current ?? empty(borrower);
        if (record.lending && now - record.lending.at < staleMs) throw new RswapError(ErrorCodes.ILLEGAL_STATE, 'lending in progress');
        return { ...record, lending: { leaseId, by, at: now } };
      });
      return true;
    } catch (error) {
      if (error instanceof RswapError && error.code === ErrorCodes.ILLEGAL_STATE) return false;
      throw error;
    }
  }

  /** Clears the borrower's mark if it is still `leaseId`'s. */
  async releaseBorrower(borrower: string, leaseId: string): Promise<void> {
    await casUpdate(this.kv, borrower, HostRecord, (current) => {
      if (!current?.lending || current.lending.leaseId !== leaseId) return current ?? empty(borrower);
      const { lending: _done, ...rest } = current;
      return rest;
    });
  }

  /**
   * Sets a lender aside until its exporter announces itself again (a borrower just lost it). What
   * it last said it serves is kept: those bytes stay promised.
   */
  async forgetExporter(host: string, now: number): Promise<void> {
    await casUpdate(this.kv, host, HostRecord, (current) => {
      const record = current ?? empty(host);
      return record.exporter ? { ...record, exporter: { ...record.exporter, lostAt: now } } : record;
    });
  }

  /**
   * Cordons (no new leases) or uncordons a host; it must be known to the broker. `by` the host
   * itself, an uncordon lifts only a cordon it set itself: an operator's stays.
   */
  async setCordoned(host: string, cordoned: boolean, now: number, by: 'operator' | 'self' = 'operator'): Promise<HostRecord> {
    const { value } = await casUpdate(this.kv, host, HostRecord, (current) => {
      if (!current) throw new RswapError(ErrorCodes.UNKNOWN_HOST, `unknown host '${host}'`);
      if (cordoned) {
        // An operator's cordon is the stronger one: it replaces the host's own, never the reverse.
        if (current.cordoned && (current.cordoned.by === 'operator' || by === 'self')) return current;
        return { ...current, cordoned: { at: current.cordoned?.at ?? now, by } };
      }
      if (!current.cordoned) return current;
      if (by === 'self' && current.cordoned.by !== 'self') {
        throw new RswapError(ErrorCodes.ILLEGAL_STATE, `host '${host}' was cordoned by an operator: only an operator uncordons it`);
      }
      const { cordoned: _lifted, ...rest } = current;
      return rest;
    });
    return value;
  }

  async get(host: string): Promise<HostRecord | undefined> {
    return (await getParsed(this.kv, host, HostRecord))?.value;
  }

  /**
   * Promises `sizeBytes` of the lender to a lease. The check and the write are one CAS on the
   * lender's record, so two brokers can never promise the same bytes twice.
   */
  async reserve(lender: string, leaseId: string, sizeBytes: number, now: number, options: PolicyOptions): Promise<void> {
    await casUpdate(this.kv, lender, HostRecord, (current) => {
      if (!current) throw new RswapError(ErrorCodes.NO_CAPACITY, `unknown lender '${lender}'`);
      if (current.reservations[leaseId] !== undefined) return current;
      if (current.cordoned) throw new RswapError(ErrorCodes.NO_CAPACITY, `lender '${lender}' is cordoned`);
      const free = freeBytes(current, now, options);
      if (free < sizeBytes) {
        throw new RswapError(ErrorCodes.NO_CAPACITY, `lender '${lender}' has ${formatBytes(free)} free, lease needs ${formatBytes(sizeBytes)}`);
      }
      return { ...current, reservations: { ...current.reservations, [leaseId]: sizeBytes } };
    });
  }

  /**
   * Returns a lease's bytes to its lender once `reservationEnded` says so (decided inside the CAS,
   * on the lender's latest record); true when the bytes went back (or were not reserved).
   */
  async unreserveIfEnded(lender: string, leaseId: string, lease: { state: string; updatedAt: number } | undefined): Promise<boolean> {
    let freed = true;
    await casUpdate(this.kv, lender, HostRecord, (current) => {
      const record = current ?? empty(lender);
      if (record.reservations[leaseId] === undefined) return record;
      if (!reservationEnded(record, leaseId, lease)) {
        freed = false;
        return record;
      }
      const { [leaseId]: _dropped, ...rest } = record.reservations;
      return { ...record, reservations: rest };
    });
    return freed;
  }

  /** Returns a lease's bytes to its lender; doing it twice is harmless. */
  async unreserve(lender: string, leaseId: string): Promise<void> {
    await casUpdate(this.kv, lender, HostRecord, (current) => {
      const record = current ?? empty(lender);
      if (record.reservations[leaseId] === undefined) return record;
      const { [leaseId]: _dropped, ...rest } = record.reservations;
      return { ...record, reservations: rest };
    });
  }
}
