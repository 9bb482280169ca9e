/** Lease records in KV: created once, then changed only by CAS through the state machine. */
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { randomBytes } from 'node:crypto';
import { casUpdate, getParsed, KvMirror } from '../../shared/kv.js';
import { ErrorCodes, RswapError } from '../../shared/errors.js';
import { publishJson } from '../../shared/messaging.js';
import { subjects } from '../../shared/subjects.js';
import { LeaseRecord, type LeaseState } from '../../shared/schemas.js';
import type { Logger } from '../../shared/log.js';
import { cutReason, transition, withStep } from './states.js';
import { LEASE_STATES } from '../../shared/lease-states.js';

export function newLeaseId(): string {
  return `l-${randomBytes(6).toString('hex')}`;
}

export class LeaseStore {
  private readonly mirror: KvMirror<LeaseRecord>;

  constructor(
    private readonly kv: KV,
    private readonly nc: NatsConnection,
    private readonly log: Logger,
    /** This broker: every step it takes names it as the lease's driver. */
    private readonly brokerId = 'broker',
  ) {
    this.mirror = new KvMirror(kv, LeaseRecord);
  }

  async get(leaseId: string): Promise<LeaseRecord | undefined> {
    return (await getParsed(this.kv, leaseId, LeaseRecord))?.value;
  }

  async require(leaseId: string): Promise<LeaseRecord> {
    const lease = await this.get(leaseId);
    if (!lease) throw new RswapError(ErrorCodes.UNKNOWN_LEASE, `unknown lease '${leaseId}'`);
    return lease;
  }

  async list(): Promise<LeaseRecord[]> {
    return (await this.mirror.list()).map((entry) => entry.value);
  }

  async create(lease: LeaseRecord): Promise<LeaseRecord> {
    await this.kv.create(lease.id, JSON.stringify(lease));
    this.announce(lease);
    return lease;
  }

  /** Moves a lease to `to` by CAS; throws ILLEGAL_STATE if another step got there first. */
  async move(
    leaseId: string,
    to: LeaseState,
    changes: Parameters<typeof transition>[3] = {},
  ): Promise<LeaseRecord> {
    const { value } = await casUpdate(this.kv, leaseId, LeaseRecord, (current) => {
      if (!current) throw new RswapError(ErrorCodes.UNKNOWN_LEASE, `unknown lease '${leaseId}'`);
      // A lease mid-step belongs to its driver: another broker moves it only after claiming it
      // (or fails it). A broker that was merely slow finds it taken and stands back.
      if (LEASE_STATES[current.state].boundBy.length > 0 && current.driver && current.driver !== this.brokerId && to !== 'failed') {
        throw new RswapError(ErrorCodes.ILLEGAL_STATE, `lease ${leaseId} is ${current.state}, driven by ${current.driver}`);
      }
      return transition(current, to, Date.now(), { ...changes, driver: this.brokerId });
    });
    this.announce(value);
    return value;
  }

  /**
   * Records that the lease should end (a release, a cool-down, a revoke, a drain): its next step is
   * `draining`. Only an active or exported lease takes it; one already draining or ended is
   * returned as it is. A first reason asked for stays.
   */
  async askEnd(leaseId: string, reason: string): Promise<LeaseRecord> {
    const { value } = await casUpdate(this.kv, leaseId, LeaseRecord, (current) => {
      if (!current) throw new RswapError(ErrorCodes.UNKNOWN_LEASE, `unknown lease '${leaseId}'`);
      if (current.end || (current.state !== 'active' && current.state !== 'exported')) return current;
      return { ...current, end: { reason: cutReason(reason), at: Date.now() } };
    });
    return value;
  }

  /**
   * Takes over a lease whose driver stopped: succeeds for exactly one broker, the one whose CAS
   * finds the record unchanged since `seenUpdatedAt`. The step is kept in the history.
   */
  async claim(leaseId: string, seenUpdatedAt: number, by: string): Promise<LeaseRecord> {
    const { value } = await casUpdate(this.kv, leaseId, LeaseRecord, (current) => {
      if (!current) throw new RswapError(ErrorCodes.UNKNOWN_LEASE, `unknown lease '${leaseId}'`);
      if (current.updatedAt !== seenUpdatedAt) throw new RswapError(ErrorCodes.ILLEGAL_STATE, `lease ${leaseId} moved on; not taking it over`);
      const now = Date.now();
      return { ...current, driver: by, updatedAt: now, ...withStep(current, { state: current.state, at: now, reason: `taken over by broker ${by}` }) };
    });
    this.announce(value);
    return value;
  }

  /** Deletes an ended lease's record (past its retention). Only a terminal one. */
  async remove(lease: LeaseRecord): Promise<void> {
    if (lease.state !== 'released' && lease.state !== 'failed') throw new RswapError(ErrorCodes.ILLEGAL_STATE, `lease ${lease.id} is ${lease.state}; only an ended lease is deleted`);
    await this.kv.delete(lease.id);
    this.log.info({ leaseId: lease.id, state: lease.state }, 'ended lease deleted after its retention');
  }

  private announce(lease: LeaseRecord): void {
    this.log.info({ leaseId: lease.id, state: lease.state, borrower: lease.borrower, lender: lease.lender, reason: lease.reason }, `lease ${lease.state}`);
    publishJson(this.nc, subjects.leaseState(lease.id), { lease });
  }
}
