/**
 * The borrower's side of a lease: log in, self-test, mkswap, swapon above local swap; and back:
 * swap-off only when the pages fit, then log out. Idempotent by lease id; each lease's facts live
 * in `<stateDir>/leases/<id>/attach.json` so a restarted attacher finds what it made.
 */
import { mkdir, rm } from 'node:fs/promises';
import type { Logger } from '../../shared/log.js';
import type { Runner } from '../../shared/runner.js';
import { ErrorCodes, RswapError, errorMessage } from '../../shared/errors.js';
import { readMeminfo, readSwaps } from '../../shared/procfs.js';
import type { AttachRequest, LeaseRecord } from '../../shared/schemas.js';
import { heldLeases, leaseDevices, leaseDir, readAttachRecord, writeAttachRecord, type AttachRecord } from '../../shared/attach-record.js';
import type { Initiator } from './initiator.js';
import { KeyedQueue, SingleFlight } from '../../shared/serial.js';
import { chooseSwapPriority, selfTest, swapoffSafety } from './swap.js';
import { judge, startProbe, type HealthVerdict, type Probe } from './health.js';

export interface AttacherOptions {
  host: string;
  stateDir: string;
  swapPriority?: number;
  swapoffMarginBytes: number;
  swapoffTimeoutMs: number;
  /** Swap areas this host may have in all, local ones included (the kernel's limit is 32). */
  maxSwapAreas: number;
}

export class Attacher {
  private readonly queue = new KeyedQueue();
  /** A resent attach or detach joins the one in flight for its lease (see SingleFlight). */
  private readonly flights = new SingleFlight();

  constructor(
    private readonly run: Runner,
    readonly initiator: Initiator,
    private readonly options: AttacherOptions,
    private readonly log: Logger,
  ) {}

  /** One swap change at a time: priorities and safety checks read the whole /proc/swaps. */
  private serial<T>(task: () => Promise<T>): Promise<T> {
    return this.queue.run('swap', task);
  }

  private dir(leaseId: string): string {
    return leaseDir(this.options.stateDir, leaseId);
  }

  private record(leaseId: string): Promise<AttachRecord | undefined> {
    return readAttachRecord(this.options.stateDir, leaseId);
  }

  remoteDevices(): Promise<Set<string>> {
    return leaseDevices(this.options.stateDir);
  }

  async attach(request: AttachRequest): Promise<{ device: string; priority: number; initiator: 'kernel' | 'userspace'; sealed: boolean }> {
    return this.flights.run(`attach ${request.leaseId}`, () => this.serial(async () => {
      const kind = this.initiator.kind;
      const sealed = this.initiator.sealed;
      const done = await this.record(request.leaseId);
      const swaps = await readSwaps();
      // Done before (a repeated command, or a restart): reported as it was built, not as configured now.
      if (done && swaps.some((a) => a.path === done.device)) return { device: done.device, priority: done.priority, initiator: kind, sealed: done.sealed ?? false };
      // Refused before any login: swapon would fail past the kernel's limit, after all the work.
      if (swaps.length >= this.options.maxSwapAreas) {
        throw new RswapError(ErrorCodes.NO_CAPACITY, `this host has ${swaps.length} swap areas, the most it takes (--max-swap-areas ${this.options.maxSwapAreas}; the kernel allows 32)`);
      }
      await mkdir(this.dir(request.leaseId), { recursive: true, mode: 0o700 });
      try {
        // Inside the try: a login that fails after its session is up (sealing, the disk) logs out.
        const device = await this.initiator.login(request.leaseId, request.target, request.chap);
        await selfTest(this.run, device, this.dir(request.leaseId), () => this.initiator.dropCaches(request.leaseId, device));
        const priority = chooseSwapPriority(swaps, await this.remoteDevices(), this.options.swapPriority);
        await this.run('mkswap', ['-L', request.leaseId, device]);
        // Written whole or not at all: an attacher killed mid-write never leaves a torn record.
        await writeAttachRecord(this.options.stateDir, { leaseId: request.leaseId, target: request.target, device, priority, sealed });
        await this.run('swapon', ['-p', String(priority), device]);
        if (!sealed) this.log.warn({ leaseId: request.leaseId }, 'lease UNSEALED: the lender can read every page swapped to it');
        this.log.info({ leaseId: request.leaseId, device, priority, initiator: kind, sealed }, 'swap on remote memory active');
        return { device, priority, initiator: kind, sealed };
      } catch (error) {
        await this.initiator.logout(request.leaseId, request.target).catch((e) => this.log.error({ leaseId: request.leaseId, err: errorMessage(e) }, 'logout after failed attach'));
        await rm(this.dir(request.leaseId), { recursive: true, force: true });
        throw error;
      }
    }));
  }

  async detach(leaseId: string): Promise<void> {
    return this.flights.run(`detach ${leaseId}`, () => this.serial(async () => {
      const rec = await this.record(leaseId);
      const swaps = await readSwaps();
      const area = rec ? swaps.find((a) => a.path === rec.device) : undefined;
      if (area) {
        const meminfo = await readMeminfo();
        const check = swapoffSafety(area, swaps.filter((a) => a !== area), meminfo.get('MemAvailable') ?? 0, this.options.swapoffMarginBytes);
        if (!check.safe) throw new RswapError(ErrorCodes.SWAPOFF_UNSAFE, `lease ${leaseId}: ${check.reason}`);
        this.log.info({ leaseId, device: area.path, usedBytes: area.usedBytes }, 'swapping off');
        await this.run('swapoff', [area.path], { timeoutMs: this.options.swapoffTimeoutMs });
      }
      await this.initiator.logout(leaseId, rec?.target);
      await rm(this.dir(leaseId), { recursive: true, force: true });
      this.log.info({ leaseId }, 'detached');
    }));
  }

  private readonly probes = new Map<string, Probe>();

  /**
   * One health round: for every lease swapped on, judge the last probe and start the next. Returns
   * the leases whose lender is lost; their initiator has been told to fail its I/O.
   */
  async checkHealth(now: number, replacementTimeoutMs: number): Promise<HealthVerdict[]> {
    const lost: HealthVerdict[] = [];
    const swaps = await readSwaps();
    for (const leaseId of await this.held()) {
      const rec = await this.record(leaseId);
      const area = rec && swaps.find((a) => a.path === rec.device);
      if (!rec || !area) {
        this.probes.delete(leaseId);
        continue;
      }
      const probe = this.probes.get(leaseId);
      const verdict = probe && judge(probe, now, replacementTimeoutMs);
      const owner = verdict && !probe.done ? await this.initiator.stallOwner?.(rec.target).catch(() => undefined) : undefined;
      if (owner) {
        // Overdue, but the initiator fails stalled I/O itself (the kernel, after replacement_timeout):
        // the read waits behind the lease's own swap traffic, and comes back or fails in time.
        if (!probe!.slowLogged) this.log.warn({ leaseId, waitedS: Math.round((now - probe!.startedAt) / 1000) }, `health read slow; ${owner}: not lost`);
        probe!.slowLogged = true;
        continue;
      }
      if (verdict) {
        this.probes.delete(leaseId);
        await this.initiator.failIo(leaseId).catch((e: unknown) => this.log.error({ leaseId, err: errorMessage(e) }, 'could not fail the initiator'));
        lost.push({ leaseId, reason: verdict });
        continue;
      }
      if (!probe || probe.done) this.probes.set(leaseId, startProbe(this.initiator.probePath(leaseId, rec.device), area.sizeBytes, now));
    }
    return lost;
  }

  /** Lease ids with anything on this host (a state folder). */
  held(): Promise<string[]> {
    return heldLeases(this.options.stateDir);
  }

  /** Detaches what belongs to no live lease of this host (absent from KV, released or failed). */
  async reconcile(lookup: (leaseId: string) => Promise<LeaseRecord | undefined>): Promise<string[]> {
    // Each lease is looked up right before acting: a lease created after a bulk read is not an orphan.
    const isLive = async (leaseId: string) => {
      const lease = await lookup(leaseId);
      return lease !== undefined && lease.borrower === this.options.host && lease.state !== 'released' && lease.state !== 'failed';
    };
    const removed: string[] = [];
    for (const leaseId of await this.held()) {
      if (await isLive(leaseId)) continue;
      try {
        await this.detach(leaseId);
        removed.push(leaseId);
      } catch (error) {
        this.log.error({ leaseId, err: errorMessage(error) }, 'reconcile: could not detach orphan');
      }
    }
    return removed;
  }
}
