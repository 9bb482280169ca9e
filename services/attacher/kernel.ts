/**
 * The kernel initiator (open-iscsi), the production default where iscsi_tcp exists. A node record
 * per lease, bound to an `rswap` iface that carries our initiator name, with CHAP and a replacement
 * timeout; the LUN is found by its stable /dev/disk/by-path link.
 *
 * replacement_timeout decides what swap I/O does when the target vanishes: I/O is queued for that
 * long, then failed (a failed swap-in kills the faulting process with SIGBUS). Longer rides out a
 * lender or network restart; shorter frees a hung borrower sooner.
 */
import { access, realpath } from 'node:fs/promises';
import type { Logger } from '../../shared/log.js';
import type { Runner } from '../../shared/runner.js';
import { ErrorCodes, RswapError } from '../../shared/errors.js';
import type { Chap, Target } from '../../shared/schemas.js';
import type { Initiator } from './initiator.js';

export const IFACE = 'rswap';
/** iscsiadm exit code: no matching session / no records found. */
const ISCSI_ERR_NO_OBJS_FOUND = 21;
const ISCSI_ERR_SESS_EXISTS = 15;

export interface KernelOptions {
  initiatorIqn: string;
  replacementTimeoutS: number;
  /** How long to wait for udev to create the by-path link after login. */
  deviceWaitMs: number;
}

export function byPathLink(target: Target): string {
  return `/dev/disk/by-path/ip-${target.portal}-iscsi-${target.iqn}-lun-${target.lun}`;
}

export class KernelInitiator implements Initiator {
  readonly kind = 'kernel' as const;

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
    await this.run('iscsiadm', [...this.node(target), '--login'], { okExitCodes: [ISCSI_ERR_SESS_EXISTS], timeoutMs: 30_000 });
    for (let waited = 0; ; waited += 100) {
      try {
        await access(link);
        break;
      } catch {
        if (waited >= this.options.deviceWaitMs) {
          throw new RswapError(ErrorCodes.TIMEOUT, `lease ${leaseId}: logged in but ${link} did not appear within ${this.options.deviceWaitMs}ms`);
        }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    this.log.info({ leaseId, device: await realpath(link) }, 'iscsi session up');
    return link;
  }

  async logout(leaseId: string, target: Target | undefined): Promise<void> {
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

  /** The SCSI layer fails the I/O itself once replacement_timeout runs out: nothing to do. */
  async failIo(): Promise<void> {}
}
