/**
 * The lender's side of a lease: a ramfs mount holding one image file of the lease size, behind a
 * tgt target bound to the borrower's address with per-lease CHAP. Export and unexport are
 * idempotent by lease id; `reconcile` makes tgtd and the mounts match the leases in KV.
 */
import { randomInt } from 'node:crypto';
import { mkdir, readFile, rm, rmdir, truncate, writeFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../shared/log.js';
import type { Runner } from '../../shared/runner.js';
import { ErrorCodes, RswapError, errorCode, errorMessage } from '../../shared/errors.js';
import { readMounts } from '../../shared/procfs.js';
import type { Source } from '../monitor/sources.js';
import { Chap, LeaseId, type ExportRequest, type LeaseRecord, type Target } from '../../shared/schemas.js';
import { formatBytes } from '../../shared/units.js';
import type { TargetInfo, Tgt } from './tgt.js';
import { KeyedQueue, SingleFlight } from '../../shared/serial.js';


/** The tgt account the target answers mutual CHAP with. */
const targetUserOf = (leaseId: string) => `${leaseId}-target`;
export const IQN_PREFIX = 'iqn.2026-11.io.rswap';

export interface ExporterOptions {
  host: string;
  stateDir: string;
  /** Memory the lender keeps for itself whatever it has promised. */
  reserveBytes: number;
  /** The most this host lends in total. */
  maxLendBytes: number;
  /** How long an ended lease's target outlives its last session (a failed lease, an orphan). */
  sessionGraceMs: number;
}

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
export function randomSecret(length = 24): string {
  return Array.from({ length }, () => ALPHABET[randomInt(ALPHABET.length)]).join('');
}

export class Exporter {
  /** Every change to tgtd and the mounts, one at a time: tids are allocated by reading the listing. */
  private readonly queue = new KeyedQueue();
  /** A resent export or unexport joins the one in flight for its lease (see SingleFlight). */
  private readonly flights = new SingleFlight();

  constructor(
    private readonly run: Runner,
    private readonly tgt: Tgt,
    private readonly options: ExporterOptions,
    private readonly log: Logger,
    /** Where the lent pages are charged: the machine, or tgtd's memory cgroup. */
    private readonly memory: Pick<Source, 'read'>,
  ) {}

  iqnFor(leaseId: string): string {
    return `${IQN_PREFIX}:${this.options.host}.${leaseId}`;
  }

  leaseDir(leaseId: string): string {
    return join(this.options.stateDir, 'leases', leaseId);
  }

  private target(): Omit<Target, 'iqn'> {
    return { portal: this.tgt.portal, lun: 1 };
  }

  async export(request: ExportRequest): Promise<{ target: Target; chap: Chap }> {
    if (request.lender !== this.options.host) {
      throw new RswapError(ErrorCodes.WRONG_HOST, `lease ${request.leaseId} is for lender '${request.lender}', this is '${this.options.host}'`);
    }
    return this.flights.run(`export ${request.leaseId}`, () => this.queue.run('tgt', async () => {
      const iqn = this.iqnFor(request.leaseId);
      const dir = this.leaseDir(request.leaseId);
      // One listing serves the idempotency check, the capacity check and the tid allocation.
      const targets = await this.tgt.list();
      const existing = targets.find((t) => t.iqn === iqn);
      if (existing) {
        const chap = Chap.parse(JSON.parse(await readFile(join(dir, 'chap.json'), 'utf8')));
        this.log.info({ leaseId: request.leaseId, tid: existing.tid }, 'export already done');
        return { target: { ...this.target(), iqn }, chap };
      }
      await this.checkCapacity(request.sizeBytes, targets);
      await this.mountRamfs(request.leaseId);
      try {
        const image = join(dir, 'image');
        await writeFile(image, '', { mode: 0o600 });
        await truncate(image, request.sizeBytes);
        // The borrower's secret, and the target's own for mutual CHAP (the borrower checks it where its initiator can).
        const chap = { user: request.leaseId, secret: randomSecret(), targetUser: targetUserOf(request.leaseId), targetSecret: randomSecret() };
        await writeFile(join(dir, 'chap.json'), JSON.stringify(chap), { mode: 0o600 });
        const tid = await this.tgt.create(iqn, image, request.borrower.address, chap, targets);
        this.log.info({ leaseId: request.leaseId, tid, sizeBytes: request.sizeBytes, borrower: request.borrower.host }, 'exported');
        return { target: { ...this.target(), iqn }, chap };
      } catch (error) {
        await this.unmountRamfs(request.leaseId).catch(() => undefined);
        throw error;
      }
    }));
  }

  /**
   * Removes the lease's target and ramfs, never while an initiator is logged in to the target
   * (RSWAP_E_IN_USE): its pages may be a live process's memory. The check and the removal share
   * one listing under the tgt queue, so no login slips in between.
   */
  async unexport(leaseId: string, { waitMs = 5_000 }: { waitMs?: number } = {}): Promise<void> {
    return this.flights.run(`unexport ${leaseId}`, () => this.unexportWaiting(leaseId, waitMs));
  }

  private async unexportWaiting(leaseId: string, waitMs: number): Promise<void> {
    // A borrower that has just logged out may stay listed for a moment: wait for its session to
    // end (up to `waitMs`), then refuse.
    const deadline = Date.now() + waitMs;
    for (;;) {
      try {
        return await this.unexportNow(leaseId);
      } catch (error) {
        if (errorCode(error) !== ErrorCodes.IN_USE || Date.now() >= deadline) throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  private async unexportNow(leaseId: string): Promise<void> {
    return this.queue.run('tgt', async () => {
      const iqn = this.iqnFor(leaseId);
      const target = (await this.tgt.list()).find((t) => t.iqn === iqn);
      if (target && target.sessions.length > 0) {
        throw new RswapError(ErrorCodes.IN_USE, `lease ${leaseId}: ${target.sessions.join(', ')} still logged in to its target; it stays until the session ends`);
      }
      await this.tgt.remove(target?.tid, [leaseId, targetUserOf(leaseId)]);
      await this.unmountRamfs(leaseId);
      this.log.info({ leaseId, hadTarget: Boolean(target) }, 'unexported');
    });
  }

  /**
   * The lease ids this host holds a target or ramfs for, as the broker is told (`serving`). Read
   * under the tgt queue, so an export half done is either not started or complete in the listing.
   */
  async serving(): Promise<string[]> {
    return (await this.report()).serving;
  }

  /**
   * What the broker is told in each announce: the leases it holds a target or ramfs for
   * (`serving`), and those with a borrower logged in now or within the session grace (`sessions`).
   * A session is the data path's own proof that the borrower is alive and may be swapping there,
   * whatever the bus says; the grace covers a session dropped for a moment by a stalled borrower
   * (the same grace after which the target of a failed lease goes).
   */
  async report(): Promise<{ serving: string[]; sessions: string[] }> {
    return this.queue.run('tgt', async () => {
      const targets = await this.tgt.list();
      const now = Date.now();
      const valid = (ids: Iterable<string>) => [...ids].filter((id) => LeaseId.safeParse(id).success).sort().slice(0, 4096);
      const held = await this.held(targets);
      this.noteSessions(targets, held, now);
      const recent = [...this.sessionSeen].filter(([, at]) => now - at < this.options.sessionGraceMs).map(([id]) => id);
      return { serving: valid(held), sessions: valid(recent) };
    });
  }

  /** When each held lease last had a session (this process's clock), from a listing of tgtd's. */
  private noteSessions(targets: TargetInfo[], held: Set<string>, now: number): void {
    const prefix = `${IQN_PREFIX}:${this.options.host}.`;
    for (const t of targets) if (t.iqn.startsWith(prefix) && t.sessions.length > 0) this.sessionSeen.set(t.iqn.slice(prefix.length), now);
    for (const leaseId of this.sessionSeen.keys()) if (!held.has(leaseId)) this.sessionSeen.delete(leaseId);
  }

  /** The lease ids this host holds anything for: targets and ramfs mounts. */
  async held(targets?: TargetInfo[]): Promise<Set<string>> {
    const ids = new Set<string>();
    const prefix = `${IQN_PREFIX}:${this.options.host}.`;
    for (const target of targets ?? (await this.tgt.list())) {
      if (target.iqn.startsWith(prefix)) ids.add(target.iqn.slice(prefix.length));
    }
    const leasesDir = join(this.options.stateDir, 'leases') + '/';
    for (const mount of await readMounts()) {
      if (mount.fstype === 'ramfs' && mount.target.startsWith(leasesDir)) ids.add(mount.target.slice(leasesDir.length));
    }
    return ids;
  }

  /** Targets with a session whose lease record is missing, found by the last reconcile. */
  readonly orphans = new Set<string>();
  /** When each held lease last had a session (or was first seen without one), this process's clock. */
  private readonly lastSession = new Map<string, number>();
  /** When each held lease last had a session, as far as this process saw (never "first seen"). */
  private readonly sessionSeen = new Map<string, number>();

  /**
   * Removes what belongs to no live lease of this host (released, failed, or absent from KV) once
   * nobody is logged in to it. A target with a session stays whatever KV says: a lost or deleted
   * record is reported as an orphan (log and metric), never a reason to pull swap from a borrower.
   * Leases still in flight are left alone: the broker drives them.
   */
  async reconcile(lookup: (leaseId: string) => Promise<LeaseRecord | undefined>): Promise<string[]> {
    const removed: string[] = [];
    const targets = await this.tgt.list();
    const sessionsOf = (leaseId: string) => targets.find((t) => t.iqn === this.iqnFor(leaseId))?.sessions ?? [];
    const now = Date.now();
    const held = await this.held(targets);
    this.noteSessions(targets, held, now);
    for (const leaseId of this.lastSession.keys()) if (!held.has(leaseId)) this.lastSession.delete(leaseId);
    this.orphans.clear();
    for (const leaseId of held) {
      if (sessionsOf(leaseId).length > 0 || !this.lastSession.has(leaseId)) this.lastSession.set(leaseId, now);
      // Looked up right before acting: a lease created after the listing is not an orphan.
      const lease = await lookup(leaseId);
      const ended = lease === undefined || lease.lender !== this.options.host || lease.state === 'released' || lease.state === 'failed';
      if (!ended) continue;
      if (sessionsOf(leaseId).length > 0) {
        if (lease === undefined) {
          this.orphans.add(leaseId);
          this.log.error({ leaseId, sessions: sessionsOf(leaseId) }, 'orphan target: its lease record is missing but a borrower is logged in; kept (see docs/operations.md, orphan targets)');
        }
        continue;
      }
      // A released lease's borrower swapped off and logged out. Anything else may have a borrower
      // that was only cut off for a while: its target waits out the grace after its last session.
      // Without a target (tgtd died with it) there is nothing to come back to: no grace.
      const quietMs = now - this.lastSession.get(leaseId)!;
      const hasTarget = targets.some((t) => t.iqn === this.iqnFor(leaseId));
      if (lease?.state !== 'released' && hasTarget && quietMs < this.options.sessionGraceMs) continue;
      try {
        await this.unexport(leaseId, { waitMs: 0 });
        removed.push(leaseId);
      } catch (error) {
        // RSWAP_E_IN_USE: a session came up since the listing; next time.
        this.log.warn({ leaseId, err: errorMessage(error) }, 'reconcile: could not remove an ended export');
      }
    }
    if (removed.length > 0) this.log.info({ removed }, 'reconcile removed ended exports');
    return removed;
  }

  /**
   * Refuses an export that would take this host under its reserve once every lease it serves is
   * written in full. Lease images are sparse: a page exists only once the borrower writes it, so
   * available memory does not yet show what is promised; ramfs pages cannot be reclaimed, so an
   * over-promise ends with the lender out of memory. Counts every image it holds, failed leases
   * still serving a borrower included.
   */
  private async checkCapacity(sizeBytes: number, targets: TargetInfo[]): Promise<void> {
    let lent = 0;
    let resident = 0;
    for (const leaseId of await this.held(targets)) {
      const image = await stat(join(this.leaseDir(leaseId), 'image')).catch(() => undefined);
      if (!image) continue;
      lent += image.size;
      resident += Math.min(image.size, image.blocks * 512);
    }
    const available = (await this.memory.read()).availableBytes;
    const left = available - (lent - resident) - sizeBytes;
    if (left < this.options.reserveBytes) {
      throw new RswapError(
        ErrorCodes.NO_CAPACITY,
        `lending ${formatBytes(sizeBytes)} would leave ${formatBytes(Math.max(0, left))} once every lease is written (${formatBytes(available)} available, ${formatBytes(lent - resident)} promised and not yet written), under the reserve of ${formatBytes(this.options.reserveBytes)}`,
      );
    }
    if (lent + sizeBytes > this.options.maxLendBytes) {
      throw new RswapError(ErrorCodes.NO_CAPACITY, `lending ${formatBytes(sizeBytes)} more would exceed maxLendBytes ${formatBytes(this.options.maxLendBytes)} (${formatBytes(lent)} lent)`);
    }
  }

  private async mountRamfs(leaseId: string): Promise<void> {
    const dir = this.leaseDir(leaseId);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    if ((await readMounts()).some((m) => m.target === dir)) return;
    // The source name marks the mount as ours in /proc/mounts.
    await this.run('mount', ['-t', 'ramfs', '-o', 'mode=0700', `rswap-${leaseId}`, dir]);
  }

  private async unmountRamfs(leaseId: string): Promise<void> {
    const dir = this.leaseDir(leaseId);
    if ((await readMounts()).some((m) => m.target === dir)) {
      await rm(join(dir, 'image'), { force: true });
      await rm(join(dir, 'chap.json'), { force: true });
      await this.run('umount', [dir]);
    }
    await rmdir(dir).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOENT') throw error;
    });
  }
}
