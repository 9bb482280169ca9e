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
import { ErrorCodes, RswapError, errorMessage } from '../../shared/errors.js';
import { readMeminfo, readMounts } from '../../shared/procfs.js';
import { Chap, type ExportRequest, type LeaseRecord, type Target } from '../../shared/schemas.js';
import { formatBytes } from '../../shared/units.js';
import type { TargetInfo, Tgt } from './tgt.js';
import { KeyedQueue } from '../../shared/serial.js';

export const IQN_PREFIX = 'iqn.2026-11.io.rswap';

export interface ExporterOptions {
  host: string;
  stateDir: string;
  /** Memory the lender keeps for itself whatever it has promised. */
  reserveBytes: number;
  /** The most this host lends in total. */
  maxLendBytes: number;
}

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
export function randomSecret(length = 24): string {
  return Array.from({ length }, () => ALPHABET[randomInt(ALPHABET.length)]).join('');
}

export class Exporter {
  /** Every change to tgtd and the mounts, one at a time: tids are allocated by reading the listing. */
  private readonly queue = new KeyedQueue();

  constructor(
    private readonly run: Runner,
    private readonly tgt: Tgt,
    private readonly options: ExporterOptions,
    private readonly log: Logger,
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
    return this.queue.run('tgt', async () => {
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
        const chap = { user: request.leaseId, secret: randomSecret() };
        await writeFile(join(dir, 'chap.json'), JSON.stringify(chap), { mode: 0o600 });
        const tid = await this.tgt.create(iqn, image, request.borrower.address, chap.user, chap.secret, targets);
        this.log.info({ leaseId: request.leaseId, tid, sizeBytes: request.sizeBytes, borrower: request.borrower.host }, 'exported');
        return { target: { ...this.target(), iqn }, chap };
      } catch (error) {
        await this.unmountRamfs(request.leaseId).catch(() => undefined);
        throw error;
      }
    });
  }

  async unexport(leaseId: string): Promise<void> {
    return this.queue.run('tgt', async () => {
      const iqn = this.iqnFor(leaseId);
      const target = (await this.tgt.list()).find((t) => t.iqn === iqn);
      await this.tgt.remove(target?.tid, leaseId);
      await this.unmountRamfs(leaseId);
      this.log.info({ leaseId, hadTarget: Boolean(target) }, 'unexported');
    });
  }

  /** Whether the borrower at `address` has a session (I_T nexus) on the lease's target. */
  async inUseBy(leaseId: string, address: string): Promise<boolean> {
    const target = (await this.tgt.list()).find((t) => t.iqn === this.iqnFor(leaseId));
    return target?.sessions.includes(address) ?? false;
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

  /**
   * Removes what belongs to no live lease of this host (absent from KV, released or failed).
   * Leases still in flight are left alone: the broker drives them.
   */
  async reconcile(lookup: (leaseId: string) => Promise<LeaseRecord | undefined>): Promise<string[]> {
    // Each lease is looked up right before acting: a lease created after a bulk read is not an orphan.
    const isLive = async (leaseId: string) => {
      const lease = await lookup(leaseId);
      if (lease === undefined || lease.lender !== this.options.host || lease.state === 'released') return false;
      // A failed lease stays while its borrower still has a session: it may still hold pages there.
      if (lease.state === 'failed') return this.inUseBy(leaseId, lease.borrowerAddress);
      return true;
    };
    const removed: string[] = [];
    for (const leaseId of await this.held()) {
      if (await isLive(leaseId)) continue;
      try {
        await this.unexport(leaseId);
        removed.push(leaseId);
      } catch (error) {
        this.log.error({ leaseId, err: errorMessage(error) }, 'reconcile: could not remove orphan export');
      }
    }
    if (removed.length > 0) this.log.info({ removed }, 'reconcile removed orphan exports');
    return removed;
  }

  private async checkCapacity(sizeBytes: number, targets: TargetInfo[]): Promise<void> {
    const meminfo = await readMeminfo();
    const available = meminfo.get('MemAvailable') ?? 0;
    if (available - sizeBytes < this.options.reserveBytes) {
      throw new RswapError(
        ErrorCodes.NO_CAPACITY,
        `lending ${formatBytes(sizeBytes)} would leave ${formatBytes(available - sizeBytes)} available, under the reserve of ${formatBytes(this.options.reserveBytes)}`,
      );
    }
    let lent = 0;
    for (const leaseId of await this.held(targets)) {
      lent += await stat(join(this.leaseDir(leaseId), 'image')).then((s) => s.size, () => 0);
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
