/**
 * tgt, the userspace iSCSI target: one tgtd per exporter (its own control port and portal), driven
 * by tgtadm. tgtd is started detached, in cgroups of its own (shared/datapath.ts), so it keeps
 * serving when the exporter dies or its container stops; a restarted exporter adopts it. Its
 * control socket (TGT_IPC_SOCKET, which tgtd and tgtadm both read) lives in the exporter's state
 * folder, not in /var/run: an exporter in a new container, with a new /var/run, still finds it.
 */
import type { Chap } from '../../shared/schemas.js';
import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../shared/log.js';
import type { Runner } from '../../shared/runner.js';
import { ErrorCodes, RswapError } from '../../shared/errors.js';
import { MOVE_FAILED, moveFailed, placeDatapath, removeDatapath, reportInside } from '../../shared/datapath.js';

export interface TargetInfo {
  tid: number;
  iqn: string;
  backingStores: string[];
  accounts: string[];
  acl: string[];
  /** Initiator addresses with a session (I_T nexus) on this target. */
  sessions: string[];
}

/** Parses `tgtadm --mode target --op show`. */
export function parseTargets(text: string): TargetInfo[] {
  const targets: TargetInfo[] = [];
  let current: TargetInfo | undefined;
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const head = /^Target (\d+): (\S+)$/.exec(line);
    if (head) {
      current = { tid: Number(head[1]), iqn: head[2]!, backingStores: [], accounts: [], acl: [], sessions: [] };
      targets.push(current);
      section = '';
      continue;
    }
    if (!current || line === '') continue;
    if (/^(System|I_T nexus|LUN|Account|ACL) information:$/.test(line)) {
      section = line.split(' ')[0]!;
      continue;
    }
    if (section === 'LUN') {
      const store = /^Backing store path: (\/.+)$/.exec(line);
      if (store) current.backingStores.push(store[1]!);
    } else if (section === 'I_T') {
      const ip = /^IP Address: (\S+)$/.exec(line);
      if (ip) current.sessions.push(ip[1]!);
    } else if (section === 'Account') {
      current.accounts.push(line);
    } else if (section === 'ACL') {
      current.acl.push(line);
    }
  }
  return targets;
}

const ISCSI = ['--lld', 'iscsi'];

/** How long a tgtd just started may take to answer tgtadm before it is killed and the start fails. */
const TGTD_START_MS = 60_000;

/** The socket path tgtd and tgtadm are given: tgtd listens on `<path>.<control port>`. */
export const tgtSocket = (stateDir: string) => join(stateDir, 'tgtd.socket');

export class Tgt {
  constructor(
    private readonly run: Runner,
    private readonly log: Logger,
    readonly controlPort: number,
    readonly portal: string,
    private readonly stateDir: string,
    private readonly iothreads?: number,
    /** iSCSI session parameters set on every new target (tgtadm --op update), e.g. InitialR2T=No. */
    private readonly targetParams: Record<string, string> = {},
    private readonly tgtdPath = 'tgtd',
  ) {}

  /** Set once a tgtd from an rswap before TGT_IPC_SOCKET is adopted: it answers on tgt's default socket. */
  private defaultSocket = false;

  private get env(): Record<string, string> {
    return this.defaultSocket ? {} : { TGT_IPC_SOCKET: tgtSocket(this.stateDir) };
  }

  private adm(args: string[], secrets: string[] = []) {
    return this.run('tgtadm', ['-C', String(this.controlPort), ...ISCSI, ...args], { secrets, timeoutMs: 15_000, env: this.env });
  }

  async isRunning(): Promise<boolean> {
    try {
      await this.adm(['--mode', 'system', '--op', 'show']);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Adopts a running tgtd on our control socket, or starts one in its own cgroups; makes sure it
   * listens on our portal. `memoryCgroup`: tgtd's place in the memory hierarchy, so the lease
   * pages it writes are charged there (an adopted tgtd stays where it was started).
   */
  async ensureDaemon(memoryCgroup?: string): Promise<'adopted' | 'started'> {
    if (await this.isRunning()) {
      await this.ensurePortal();
      return 'adopted';
    }
    // Upgraded under systemd, the tgtd an earlier rswap started still serves on the default socket.
    this.defaultSocket = true;
    if (await this.isRunning()) {
      this.log.warn({ controlPort: this.controlPort }, "adopted a tgtd on tgt's default control socket, started by an earlier rswap: it stays in the cgroups it was started in");
      await this.ensurePortal();
      return 'adopted';
    }
    this.defaultSocket = false;
    const socket = `${tgtSocket(this.stateDir)}.${this.controlPort}`;
    if (Buffer.byteLength(socket) > 107) throw new RswapError(ErrorCodes.CONFIG, `tgtd's control socket ${socket} is longer than a Unix socket's 107 bytes: use a shorter --state-dir`);
    const name = `tgtd-${this.controlPort}`;
    const placement = await placeDatapath(name, memoryCgroup ? { memoryCgroup } : {});
    try {
      const started = await this.startDaemon(placement.wrap);
      // tgtd keeps running when its portal cannot be bound (it ignores that failure): add it, or fail.
      await this.ensurePortal();
      return started;
    } catch (error) {
      await removeDatapath(name).catch(() => undefined);
      throw error;
    }
  }

  private async startDaemon(wrap: (command: string[]) => string[]): Promise<'started'> {
    const logFile = join(this.stateDir, 'tgtd.log');
    const logFd = openSync(logFile, 'a');
    const command = wrap([this.tgtdPath, '-f', '-C', String(this.controlPort), ...(this.iothreads ? ['-t', String(this.iothreads)] : []), '--iscsi', `portal=${this.portal}`]);
    const child = spawn(command[0]!, command.slice(1), {
      detached: true,
      stdio: ['ignore', logFd, logFd],
      env: { ...process.env, ...this.env },
    });
    closeSync(logFd);
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    child.once('error', (error) => this.log.error({ err: error }, 'tgtd failed to start'));
    child.unref();
    // Until it answers or exits. On a loaded machine a tgtd (and each tgtadm asking it) can take
    // seconds to start: the limit only ends a tgtd that neither answers nor exits.
    const deadline = Date.now() + TGTD_START_MS;
    while (Date.now() < deadline) {
      if (await this.isRunning()) {
        await writeFile(join(this.stateDir, 'tgtd.pid'), `${child.pid}\n`);
        if (child.pid) await reportInside('tgtd', child.pid, this.log);
        return 'started';
      }
      const code = await Promise.race([exited, new Promise((r) => setTimeout(r, 100)).then(() => 'running' as const)]);
      if (code === MOVE_FAILED) throw moveFailed('tgtd', `see ${logFile}`);
      if (code !== 'running') {
        throw new RswapError(ErrorCodes.COMMAND_FAILED, `tgtd exited with ${code} (see ${logFile}; is portal ${this.portal} in use?)`);
      }
    }
    // Not left running unrecorded, in a cgroup the caller is about to remove.
    if (child.pid) process.kill(child.pid, 'SIGKILL');
    throw new RswapError(ErrorCodes.TIMEOUT, `tgtd on control port ${this.controlPort} did not answer within ${TGTD_START_MS / 1000} s (see ${logFile})`);
  }

  private async ensurePortal(): Promise<void> {
    const { stdout } = await this.adm(['--mode', 'portal', '--op', 'show']);
    if (stdout.includes(`Portal: ${this.portal},`)) return;
    await this.adm(['--mode', 'portal', '--op', 'new', '--param', `portal=${this.portal}`]);
  }

  async list(): Promise<TargetInfo[]> {
    return parseTargets((await this.adm(['--mode', 'target', '--op', 'show'])).stdout);
  }

  /**
   * Creates a target with LUN 1 on `backingStore` (rdwr: ramfs has no O_DIRECT) that requires CHAP
   * (`chap.user`), answers mutual CHAP as `chap.targetUser` when given, and admits only
   * `initiatorAddress`. The accounts are bound before the address: a target with an address but no
   * account would admit that address without CHAP, even for an instant. Rolls back on any failure.
   * `existing`: a fresh listing the caller already has (saves a tgtadm call).
   */
  async create(iqn: string, backingStore: string, initiatorAddress: string, chap: Chap, existing?: TargetInfo[]): Promise<number> {
    const tids = (existing ?? (await this.list())).map((t) => t.tid);
    const tid = Math.max(0, ...tids) + 1;
    try {
      await this.adm(['--mode', 'target', '--op', 'new', '--tid', String(tid), '--targetname', iqn]);
      await this.adm(['--mode', 'logicalunit', '--op', 'new', '--tid', String(tid), '--lun', '1', '--backing-store', backingStore, '--bstype', 'rdwr']);
      for (const [name, value] of Object.entries(this.targetParams)) {
        await this.adm(['--mode', 'target', '--op', 'update', '--tid', String(tid), '--name', name, '--value', value]);
      }
      await this.adm(['--mode', 'account', '--op', 'new', '--user', chap.user, '--password', chap.secret], [chap.secret]);
      await this.adm(['--mode', 'account', '--op', 'bind', '--tid', String(tid), '--user', chap.user]);
      if (chap.targetUser && chap.targetSecret) {
        await this.adm(['--mode', 'account', '--op', 'new', '--user', chap.targetUser, '--password', chap.targetSecret], [chap.targetSecret]);
        await this.adm(['--mode', 'account', '--op', 'bind', '--tid', String(tid), '--user', chap.targetUser, '--outgoing']);
      }
      // tgt admits an initiator if its address OR its name is listed, so only the address is bound.
      await this.adm(['--mode', 'target', '--op', 'bind', '--tid', String(tid), '--initiator-address', initiatorAddress]);
      return tid;
    } catch (error) {
      await this.remove(tid, [chap.user, ...(chap.targetUser ? [chap.targetUser] : [])]);
      throw error;
    }
  }

  /** Sets the named ones of this exporter's target parameters on every existing target. */
  async applyParams(names: string[]): Promise<void> {
    for (const target of await this.list()) {
      for (const name of names.filter((n) => this.targetParams[n] !== undefined)) {
        await this.adm(['--mode', 'target', '--op', 'update', '--tid', String(target.tid), '--name', name, '--value', this.targetParams[name]!]);
      }
    }
  }

  /** Deletes the target (even with sessions) and its accounts; absent ones are fine. */
  async remove(tid: number | undefined, users: string[]): Promise<void> {
    if (tid !== undefined) {
      await this.adm(['--mode', 'target', '--op', 'delete', '--force', '--tid', String(tid)]).catch((error: unknown) => {
        if (!/can't find the target/i.test(String((error as Error).message))) throw error;
      });
    }
    for (const user of users) await this.adm(['--mode', 'account', '--op', 'delete', '--user', user]).catch(() => undefined);
  }
}
