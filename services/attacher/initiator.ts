/** One interface, two iSCSI initiators: the kernel's open-iscsi and the userspace qemu path. */
import type { Chap, Target } from '../../shared/schemas.js';

export interface Initiator {
  readonly kind: 'kernel' | 'userspace';
  /** Whether login seals the lease (seal.ts): what it swaps there is encrypted with a key held only here. */
  readonly sealed: boolean;
  /** Logs in and returns the block device to swap on. Idempotent by lease id. */
  login(leaseId: string, target: Target, chap: Chap): Promise<string>;
  /** Logs out and removes everything login made. Idempotent: nothing there is fine. */
  logout(leaseId: string, target: Target | undefined): Promise<void>;
  /**
   * Drops cached pages between the device and the target, so a read after it travels the whole
   * stack (used by the self-test).
   */
  dropCaches(leaseId: string, device: string): Promise<void>;
  /** The path a health probe reads to reach the target without caches on the way. */
  probePath(leaseId: string, device: string): string;
  /**
   * Whether the initiator itself times out this lease's stalled I/O (the kernel does, after its
   * replacement_timeout, while it holds a session): says why, or undefined. Then a probe read that
   * outlasts the replacement timeout is slow, not lost; only a failed read is.
   */
  stallOwner?(target: Target): Promise<string | undefined>;
  /** Makes the lease's I/O fail now instead of waiting for a lender that is gone. */
  failIo(leaseId: string): Promise<void>;
}
