/**
 * The userspace initiator: qemu-storage-daemon logs in (libiscsi) and exports the LUN through FUSE
 * onto a regular file; a loop device on that file is what the kernel swaps on. For kernels without
 * iscsi_tcp (containers, these test machines). Slower and less safe than the kernel path: its
 * sockets get no memory reserves, so it must stay out of memory-limited cgroups. Each lease's
 * daemon runs in cgroups of its own (shared/datapath.ts), unlimited, out of the attacher's
 * container: it outlives a restart of the attacher, which adopts it.
 *
 * Sealed (the default), the daemon puts its `luks` driver between the LUN and the export, keyed
 * by a random passphrase handed over its QMP socket: the lender stores only ciphertext. See seal.ts.
 */
import { readFile, readdir, writeFile, mkdir, rm, access } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Logger } from '../../shared/log.js';
import type { Runner } from '../../shared/runner.js';
import { errorMessage } from '../../shared/errors.js';
import { CommandError } from '../../shared/runner.js';
import { MOVE_FAILED, moveFailed, placeDatapath, removeDatapath, reportInside } from '../../shared/datapath.js';
import { pidsIn } from '../../shared/hierarchies.js';
import { readMounts } from '../../shared/procfs.js';
import type { Chap, Target } from '../../shared/schemas.js';
import type { Initiator } from './initiator.js';
import { isAlive, stopGracefully } from '../../shared/process.js';
import { Qmp } from './qmp.js';
import { exportLun, makeLuksHeader } from './seal.js';

export class UserspaceInitiator implements Initiator {
  readonly kind = 'userspace' as const;

  constructor(
    private readonly run: Runner,
    private readonly log: Logger,
    private readonly stateDir: string,
    private readonly initiatorIqn: string,
    /** Encrypt what is swapped to the lease with a key that never leaves this host (seal.ts). */
    readonly sealed: boolean,
  ) {}

  private paths(leaseId: string) {
    const dir = join(this.stateDir, 'leases', leaseId);
    return { dir, secret: join(dir, 'chap.secret'), exportFile: join(dir, 'export'), pidfile: join(dir, 'qsd.pid'), qmp: join(dir, 'qmp.sock'), loopFile: join(dir, LOOP_FILE) };
  }

  /**
   * The qemu-storage-daemon arguments: the LUN and a QMP socket; the export (sealed or not) is
   * added over QMP once the daemon runs. The CHAP secret travels in a file, never on the command line.
   */
  daemonArgs(leaseId: string, target: Target, chap: Chap): string[] {
    const p = this.paths(leaseId);
    const blockdev = [
      'driver=iscsi',
      'node-name=lun',
      'transport=tcp',
      `portal=${target.portal}`,
      `target=${target.iqn}`,
      `lun=${target.lun}`,
      `user=${chap.user}`,
      'password-secret=chap',
      `initiator-name=${this.initiatorIqn}`,
    ].join(',');
    return [
      '--object', `secret,id=chap,file=${p.secret}`,
      '--blockdev', blockdev,
      '--chardev', `socket,id=qmp,path=${p.qmp},server=on,wait=off`,
      '--monitor', 'chardev=qmp',
      '--pidfile', p.pidfile,
      '--daemonize',
    ];
  }

  async login(leaseId: string, target: Target, chap: Chap): Promise<string> {
    const p = this.paths(leaseId);
    const existing = await this.loopOf(p.exportFile);
    if (existing) return existing;
    await mkdir(p.dir, { recursive: true, mode: 0o700 });
    if (!(await this.exportMounted(p.exportFile))) {
      // A daemon left by an attach that died before its export existed holds a session: stop it.
      await this.stopDaemon(leaseId);
      await writeFile(p.exportFile, '', { mode: 0o600 });
      const placement = await placeDatapath(daemonCgroup(leaseId));
      try {
        await writeFile(p.secret, chap.secret, { mode: 0o600 });
        // --daemonize returns once the iSCSI login succeeded and the QMP socket listens.
        await this.run('qemu-storage-daemon', this.daemonArgs(leaseId, target, chap), { timeoutMs: 30_000, secrets: [chap.secret], wrap: placement.wrap });
      } catch (error) {
        await removeDatapath(placement.name).catch(() => undefined);
        if (error instanceof CommandError && error.exitCode === MOVE_FAILED) throw moveFailed('qemu-storage-daemon', error.stderr.trim());
        throw error;
      } finally {
        await rm(p.secret, { force: true });
      }
      for (const pid of await pidsIn(placement.folders[0] ?? '')) await reportInside('qemu-storage-daemon', pid, this.log);
      const header = this.sealed ? makeLuksHeader() : undefined;
      const qmp = await Qmp.connect(p.qmp).catch((error: unknown) => {
        header?.passphrase.fill(0);
        throw error;
      });
      try {
        await exportLun(qmp, 'lun', p.exportFile, header);
      } finally {
        qmp.close();
      }
    }
    // No --direct-io: with qemu 7.2's FUSE export it corrupts data past 8 KiB (docs/design.md, known hazards).
    const { stdout } = await this.run('losetup', ['--find', '--show', p.exportFile]);
    const device = stdout.trim();
    // Recorded, because a loop device can no longer be found by its file once the FUSE export died.
    await writeFile(p.loopFile, `${device}\n`, { mode: 0o600 });
    return device;
  }

  async logout(leaseId: string): Promise<void> {
    const p = this.paths(leaseId);
    for (let device = await this.loopOf(p.exportFile); device; device = await this.loopOf(p.exportFile)) {
      await this.run('losetup', ['-d', device]);
    }
    // With qemu-storage-daemon gone (a lost lender) the file lookup above finds nothing: the
    // device login recorded is detached by name, if it is still the one backed by our export.
    for (const device of await recordedLoops(join(this.stateDir, 'leases'), leaseId)) await this.run('losetup', ['-d', device]);
    await this.stopDaemon(leaseId);
    await removeDatapath(daemonCgroup(leaseId)).catch((error) => this.log.warn({ leaseId, err: errorMessage(error) }, "could not remove the initiator's cgroups"));
    if (await this.exportMounted(p.exportFile)) {
      await this.run('umount', ['-l', p.exportFile]).catch((error) => this.log.warn({ leaseId, err: errorMessage(error) }, 'could not unmount FUSE export'));
    }
    await rm(p.dir, { recursive: true, force: true });
  }

  async dropCaches(leaseId: string, device: string): Promise<void> {
    await this.run('blockdev', ['--flushbufs', device]);
    // fadvise(DONTNEED) on the FUSE file: the next read goes to qemu, libiscsi and the target.
    await this.run('dd', [`if=${this.paths(leaseId).exportFile}`, 'iflag=nocache', 'count=0', 'status=none']);
  }

  probePath(leaseId: string): string {
    return this.paths(leaseId).exportFile;
  }

  /**
   * Stops qemu-storage-daemon without logging out: reads and writes on the FUSE file then fail
   * (the kernel initiator does the same once replacement_timeout runs out). Pages on the lost
   * lender are gone either way.
   */
  async failIo(leaseId: string): Promise<void> {
    const pid = await readFile(this.paths(leaseId).pidfile, 'utf8').then((t) => Number(t.trim()), () => undefined);
    if (pid && isAlive(pid)) process.kill(pid, 'SIGKILL');
    this.log.warn({ leaseId, pid }, 'initiator stopped: I/O on the lost lease now fails');
  }

  /** Stops this lease's daemon: the pid in its pidfile, if that process still names the pidfile. */
  private async stopDaemon(leaseId: string): Promise<void> {
    const { pidfile } = this.paths(leaseId);
    const pid = await readFile(pidfile, 'utf8').then((t) => Number(t.trim()), () => undefined);
    const cmdline = pid ? await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '') : '';
    if (pid && cmdline.split('\0').includes(pidfile)) await stopGracefully(pid);
  }

  private async loopOf(file: string): Promise<string | undefined> {
    try {
      await access(file);
    } catch {
      return undefined;
    }
    const { stdout } = await this.run('losetup', ['-j', file]);
    return stdout.split(':')[0]?.trim() || undefined;
  }

  private async exportMounted(file: string): Promise<boolean> {
    return (await readMounts()).some((m) => m.target === file && m.fstype.startsWith('fuse'));
  }
}

const LOOP_FILE = 'loop';

/** The name of a lease's qemu-storage-daemon cgroups, under rswap.datapath. */
export const daemonCgroup = (leaseId: string) => `qsd-${leaseId}`;

/**
 * Loop devices recorded by login under `leasesDir/<lease>/loop` (all leases, or one) that are still
 * attached to that lease's export file, or to a file whose FUSE mount is already gone (the kernel
 * then shows the backing file as "/"). A device number reused by someone else shows their file.
 */
export async function recordedLoops(leasesDir: string, leaseId?: string): Promise<string[]> {
  const leases = leaseId ? [leaseId] : await readdir(leasesDir).catch(() => [] as string[]);
  const found: string[] = [];
  for (const lease of leases) {
    const device = (await readFile(join(leasesDir, lease, LOOP_FILE), 'utf8').catch(() => '')).trim();
    if (!/^\/dev\/loop\d+$/.test(device)) continue;
    const backing = (await readFile(`/sys/block/${basename(device)}/loop/backing_file`, 'utf8').catch(() => '')).trim();
    if (backing === join(leasesDir, lease, 'export') || backing === '/') found.push(device);
  }
  return found;
}

