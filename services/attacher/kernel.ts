/**
 * The kernel initiator (open-iscsi), the production default where iscsi_tcp exists. A node record
 * per lease, bound to an `rswap` iface that carries our initiator name, with CHAP and a replacement
 * timeout; the LUN is found by its stable /dev/disk/by-path link, or without udev through sysfs.
 *
 * replacement_timeout decides what swap I/O does when the target vanishes: I/O is queued for that
 * long, then failed (a failed swap-in kills the faulting process with SIGBUS). Longer rides out a
 * lender or network restart; shorter frees a hung borrower sooner.
 */
import { access, readFile, readdir, realpath } from 'node:fs/promises';
import type { Logger } from '../../shared/log.js';
import type { Runner } from '../../shared/runner.js';
import { ErrorCodes, RswapError } from '../../shared/errors.js';
import type { Chap, Target } from '../../shared/schemas.js';
import type { Initiator } from './initiator.js';
import { closeSealedMapping, openSealedMapping } from './seal.js';

export const IFACE = 'rswap';
/** iscsiadm exit code: no matching session / no records found. */
const ISCSI_ERR_NO_OBJS_FOUND = 21;
const ISCSI_ERR_SESS_EXISTS = 15;

export interface KernelOptions {
  initiatorIqn: string;
  replacementTimeoutS: number;
  /** How long to wait for the LUN's disk after login. */
  deviceWaitMs: number;
  /** Swap through dm-crypt with a random key held only in this kernel (seal.ts). */
  seal: boolean;
  /** Where sysfs is (tests use a fake tree). */
  sysfs?: string;
  /** The device mapper's control node (tests name a stand-in). */
  dmControl?: string;
}

/**
 * The disk of the target's LUN, found through sysfs from its iSCSI session (no udev needed, as in
 * a minimal VM): the session whose target name and connection address match, then its
 * `device/target*\/H:C:T:LUN/block/<disk>`. Undefined while there is none.
 */
export async function sessionDevice(target: Target, sysfs = '/sys'): Promise<string | undefined> {
  const list = (path: string) => readdir(path).catch(() => [] as string[]);
  for (const base of await sessionsOf(target, sysfs)) {
    for (const scsiTarget of (await list(`${base}/device`)).filter((d) => d.startsWith('target'))) {
      for (const lun of (await list(`${base}/device/${scsiTarget}`)).filter((d) => d.endsWith(`:${target.lun}`))) {
        const [disk] = await list(`${base}/device/${scsiTarget}/${lun}/block`);
        if (disk) return `/dev/${disk}`;
      }
    }
  }
  return undefined;
}

const readTrimmed = (path: string) => readFile(path, 'utf8').then((t) => t.trim(), () => '');

/** The sysfs folders of the kernel's sessions whose target name and connection address match. */
async function sessionsOf(target: Target, sysfs: string): Promise<string[]> {
  const found: string[] = [];
  for (const session of await readdir(`${sysfs}/class/iscsi_session`).catch(() => [] as string[])) {
    const base = `${sysfs}/class/iscsi_session/${session}`;
    if ((await readTrimmed(`${base}/targetname`)) !== target.iqn) continue;
    const connection = `${sysfs}/class/iscsi_connection/connection${session.replace(/^session/, '')}:0`;
    if (`${await readTrimmed(`${connection}/persistent_address`)}:${await readTrimmed(`${connection}/persistent_port`)}` !== target.portal) continue;
    found.push(base);
  }
  return found;
}

/**
 * Whether the kernel holds a logged-in session to the target: `LOGGED_IN` in the session's sysfs
 * `state` (FAILED while it tries to reconnect). Undefined when no session names the target.
 */
export async function sessionState(target: Target, sysfs = '/sys'): Promise<string | undefined> {
  const [base] = await sessionsOf(target, sysfs);
  return base === undefined ? undefined : (await readTrimmed(`${base}/state`)) || undefined;
}

export function byPathLink(target: Target): string {
  return `/dev/disk/by-path/ip-${target.portal}-iscsi-${target.iqn}-lun-${target.lun}`;
}

export class KernelInitiator implements Initiator {
  readonly kind = 'kernel' as const;
  get sealed(): boolean {
    return this.options.seal;
  }

  constructor(
    private readonly run: Runner,
    private readonly log: Logger,
    private readonly options: KernelOptions,
  ) {}

  private node(target: Target): string[] {
    return ['-m', 'node', '-T', target.iqn, '-p', target.portal, '-I', IFACE];
  }

  private async update(target: Target, name: string, value: string, secrets: string[] = []): Promise<void> {
    await this.run('iscsiadm', [...this.node(target), '-o', 'update', '-n', name, '-v', value], { secrets });
  }

  /** The `rswap` iface carries our initiator name, whatever /etc/iscsi/initiatorname.iscsi says. */
  private async ensureIface(): Promise<void> {
    await this.run('iscsiadm', ['-m', 'iface', '-I', IFACE, '-o', 'new'], { okExitCodes: [ISCSI_ERR_SESS_EXISTS, 6] });
    await this.run('iscsiadm', ['-m', 'iface', '-I', IFACE, '-o', 'update', '-n', 'iface.initiatorname', '-v', this.options.initiatorIqn]);
  }

  async login(leaseId: string, target: Target, chap: Chap): Promise<string> {
    const link = byPathLink(target);
    await this.ensureIface();
    await this.run('iscsiadm', [...this.node(target), '-o', 'new']);
    await this.update(target, 'node.startup', 'manual');
    await this.update(target, 'node.session.auth.authmethod', 'CHAP');
    await this.update(target, 'node.session.auth.username', chap.user);
    // iscsiadm takes the secret only as an argument; the runner redacts it from logs and errors.
    await this.update(target, 'node.session.auth.password', chap.secret, [chap.secret]);
    // Mutual CHAP: the login fails unless the target proves it holds the lease's target secret.
    if (chap.targetUser && chap.targetSecret) {
      await this.update(target, 'node.session.auth.username_in', chap.targetUser);
      await this.update(target, 'node.session.auth.password_in', chap.targetSecret, [chap.targetSecret]);
    }
    await this.update(target, 'node.session.timeo.replacement_timeout', String(this.options.replacementTimeoutS));
    await this.run('iscsiadm', [...this.node(target), '--login'], { okExitCodes: [ISCSI_ERR_SESS_EXISTS] });
    // The LUN's stable by-path link where udev runs; else its disk found through sysfs from the session.
    for (let waited = 0; ; waited += 100) {
      const device = (await access(link).then(() => link, () => undefined)) ?? (await sessionDevice(target, this.options.sysfs));
      if (device) {
        // The real node, as /proc/swaps will name it (a by-path link or a udev /dev/mapper link is not).
        const disk = await realpath(device);
        this.log.info({ leaseId, device: disk }, 'iscsi session up');
        if (!this.options.seal) return disk;
        return realpath(await openSealedMapping(this.run, leaseId, disk, this.options.dmControl));
      }
      if (waited >= this.options.deviceWaitMs) {
        throw new RswapError(ErrorCodes.TIMEOUT, `lease ${leaseId}: logged in but neither ${link} nor the session's disk in sysfs appeared within ${this.options.deviceWaitMs}ms`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  async logout(leaseId: string, target: Target | undefined): Promise<void> {
    // The mapping goes first: it holds the disk open, and with it goes the key.
    await closeSealedMapping(this.run, leaseId, this.options.dmControl);
    if (!target) return;
    await this.run('iscsiadm', [...this.node(target), '--logout'], { okExitCodes: [ISCSI_ERR_NO_OBJS_FOUND] });
    await this.run('iscsiadm', [...this.node(target), '-o', 'delete'], { okExitCodes: [ISCSI_ERR_NO_OBJS_FOUND] });
    this.log.info({ leaseId }, 'iscsi session down');
  }

  async dropCaches(_leaseId: string, device: string): Promise<void> {
    await this.run('blockdev', ['--flushbufs', device]);
  }

  probePath(_leaseId: string, device: string): string {
    return device;
  }

  /**
   * The kernel's session state while it has one (LOGGED_IN, or FAILED while it reconnects): the
   * kernel then fails the lease's I/O by itself once replacement_timeout runs out, so a read that
   * is merely slow (a borrower thrashing on the lease, a slow VM) is never taken for a lost lender.
   */
  async stallOwner(target: Target): Promise<string | undefined> {
    const state = await sessionState(target, this.options.sysfs);
    return state === undefined ? undefined : `the kernel's session is ${state}`;
  }

  /** The SCSI layer fails the I/O itself once replacement_timeout runs out: nothing to do. */
  async failIo(): Promise<void> {}
}
