/**
 * The swap devices the bench compares, each set up and torn down by the bench itself. Everything
 * it makes lives under two folders of its own (WORK on the local disk, RUN in /run) and is found
 * again by those paths, so `cleanupDevices` also mends an interrupted run and touches nothing else.
 *
 *   remote      an rswap lease on the testbed: tgt on ramfs in host-a's namespace, the userspace
 *               initiator (qemu-storage-daemon + FUSE + loop) on the borrower, sealed (luks)
 *   remote-unsealed  the same lease with the attacher's --unsealed: what sealing costs
 *   remote-qemu10  the same lease with qemu-storage-daemon 10.0 (bookworm-backports, fetched into
 *               QEMU_BPO by bench/swap/fetch-qemu-bpo.sh) instead of the system's 7.2
 *   local       a swap file on the local disk (here a virtio disk), the paper's baseline
 *   hdd-model   a MODEL of the paper's hard disk: a file on the local disk behind
 *               qemu-storage-daemon's throttle (150 IOPS, 120 MB/s), FUSE and loop
 *   zram        a compressed RAM block device (the data is random, so it compresses to nothing)
 *   ramfs-loop  a loop device on a ramfs file: swap to RAM through a block device with no network
 * The ceiling for remote swap is the faster of zram and ramfs-loop at each point (report.ts).
 */
import { access, chmod, mkdir, readFile, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../shared/log.js';
import type { Runner } from '../../shared/runner.js';
import { readMounts, readSwaps } from '../../shared/procfs.js';
import { MiB } from '../../shared/units.js';
import { waitFor } from '../../shared/wait.js';
import { testbedDown, testbedUp, testbedBus } from '../../cli/testbed/testbed.js';
import { injectPressure, injectSurplus, listLeases, releaseLease } from '../../cli/operator.js';
import { chooseSwapPriority } from '../../services/attacher/swap.js';
import { stopGracefully } from '../../shared/process.js';

export const DEVICES = ['remote', 'local', 'hdd-model', 'zram', 'ramfs-loop', 'remote-unsealed', 'remote-qemu10'] as const;
export type DeviceName = (typeof DEVICES)[number];
/** What a run without --devices compares: the remote variants only when asked for (the cost of sealing, another qemu). */
export const DEFAULT_DEVICES: DeviceName[] = DEVICES.filter((d) => d !== 'remote-unsealed' && d !== 'remote-qemu10');

/** Where bench/swap/fetch-qemu-bpo.sh puts qemu-storage-daemon 10.0 (its Debian packages, unpacked). */
export const QEMU_BPO = '/var/tmp/rswap-qemu-bpo/root';

export const DEVICE_LABELS: Record<DeviceName, string> = {
  remote: 'rswap remote (tgt on ramfs, userspace initiator, sealed)',
  'remote-unsealed': 'rswap remote, unsealed (--unsealed)',
  'remote-qemu10': 'rswap remote, sealed, qemu-storage-daemon 10.0 (bookworm-backports) instead of 7.2',
  local: 'local disk swap file (virtio)',
  'hdd-model': 'HDD model (150 IOPS, 120 MB/s throttle)',
  zram: 'zram',
  'ramfs-loop': 'ramfs loop (RAM through a loop device)',
};

export const WORK = '/var/tmp/rswap-bench-swap';
export const RUN = '/run/rswap/bench-swap';
/** The remote devices' testbed (its hosts' state folders, its leases' FUSE exports). */
export const TESTBED = '/run/rswap/bench-swap-testbed';

/** The modeled disk: a 7,200 rpm drive does about 150 random IOPS and 120 MB/s streaming. */
export const HDD_IOPS = 150;
export const HDD_BPS = 120e6;

export interface SwapDevice {
  name: DeviceName;
  /** The block device or file given to swapon. */
  path: string;
  priority: number;
  teardown(): Promise<void>;
}

export interface DeviceOptions {
  sizeBytes: number;
  natsPort: number;
  /** Extra flags for the testbed's exporters and attachers (tuning runs). */
  exporterArgs?: string[];
  attacherArgs?: string[];
}

/** The attacher's environment that makes it start qemu-storage-daemon 10.0 from QEMU_BPO, with its own block modules. */
async function qemuBpoEnv(): Promise<Record<string, string>> {
  const binary = join(QEMU_BPO, 'usr/bin/qemu-storage-daemon');
  if (!(await access(binary).then(() => true, () => false))) throw new Error(`remote-qemu10 needs ${binary}: run sh bench/swap/fetch-qemu-bpo.sh first`);
  return { PATH: `${join(QEMU_BPO, 'usr/bin')}:${process.env.PATH ?? '/usr/bin:/bin'}`, QEMU_MODULE_DIR: join(QEMU_BPO, 'usr/lib/x86_64-linux-gnu/qemu') };
}

/** Fails unless the qemu-storage-daemon serving `leaseId` runs `binary` (so a variant measures what it says). */
async function mustRunFrom(leaseId: string, binary: string): Promise<void> {
  for (const pid of await readdir('/proc').then((names) => names.filter((n) => /^\d+$/.test(n)))) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (!cmdline.startsWith('qemu-storage-daemon') && !cmdline.includes('/qemu-storage-daemon\0')) continue;
    if (!cmdline.includes(leaseId)) continue;
    const exe = await readlink(`/proc/${pid}/exe`).catch(() => '');
    if (exe === binary) return;
    throw new Error(`lease ${leaseId} is served by ${exe || 'an unknown binary'}, not ${binary}`);
  }
  throw new Error(`no qemu-storage-daemon serves lease ${leaseId}`);
}

async function swapOn(run: Runner, path: string): Promise<number> {
  // Above every swap area on the machine (the attacher's rule), so the pages go to the device under test.
  const priority = chooseSwapPriority(await readSwaps(), new Set());
  await run('mkswap', [path]);
  await run('swapon', ['-p', String(priority), path]);
  return priority;
}

async function loopFor(run: Runner, file: string): Promise<string> {
  return (await run('losetup', ['--find', '--show', file])).stdout.trim();
}

/** Loop devices whose backing file lies under `dir` (ours), or whose FUSE file is gone ("/") but recorded. */
async function ourLoops(run: Runner): Promise<string[]> {
  const { stdout } = await run('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE']);
  const recorded = (await readFile(join(RUN, 'loops'), 'utf8').catch(() => '')).split('\n').filter(Boolean);
  return stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(([name, file]) => name && file && (file.startsWith(`${WORK}/`) || file.startsWith(`${RUN}/`) || (file === '/' && recorded.includes(name))))
    .map(([name]) => name!);
}

async function recordLoop(device: string): Promise<void> {
  await writeFile(join(RUN, 'loops'), `${device}\n`, { flag: 'a' });
}

async function stopPidfile(pidfile: string): Promise<void> {
  const pid = Number((await readFile(pidfile, 'utf8').catch(() => '')).trim());
  if (pid) await stopGracefully(pid);
}

/**
 * Removes whatever an earlier run left: swap areas and loop devices on our files, qemu-storage-
 * daemon, FUSE and ramfs mounts under RUN, our zram device, the testbed, both folders. Swap-off
 * comes first, so no page is lost before its device goes.
 */
export async function cleanupDevices(run: Runner, log: Logger): Promise<void> {
  const loops = await ourLoops(run);
  const zram = (await readFile(join(RUN, 'zram'), 'utf8').catch(() => '')).trim();
  for (const area of await readSwaps()) {
    if (loops.includes(area.path) || area.path.startsWith(`${WORK}/`) || (zram && area.path === `/dev/zram${zram}`)) await run('swapoff', [area.path], { timeoutMs: 300_000 });
  }
  for (const device of loops) await run('losetup', ['-d', device]);
  if (zram) {
    await writeFile(`/sys/block/zram${zram}/reset`, '1').catch(() => {});
    await writeFile('/sys/class/zram-control/hot_remove', zram).catch(() => {});
  }
  for (const entry of await readdir(RUN).catch(() => [] as string[])) {
    if (entry.endsWith('.pid')) await stopPidfile(join(RUN, entry));
  }
  const mounts = (await readMounts()).filter((m) => m.target.startsWith(`${RUN}/`)).reverse();
  for (const m of mounts) await run('umount', ['-l', m.target]);
  // Only a testbed of ours: `testbed down` would also stop another testbed's agents on the bridge.
  if (await access(TESTBED).then(() => true, () => false)) {
    const problems = await testbedDown(run, log, TESTBED);
    if (problems.length > 0) log.warn({ problems }, 'bench testbed: cleanup problems');
  }
  await rm(RUN, { recursive: true, force: true });
  await rm(WORK, { recursive: true, force: true });
}

async function prepareFolders(): Promise<void> {
  await mkdir(WORK, { recursive: true, mode: 0o700 });
  await mkdir(RUN, { recursive: true, mode: 0o700 });
}

/** A file of `bytes` zeros on the local disk (written, so swapon finds no holes). */
async function diskFile(run: Runner, path: string, bytes: number): Promise<void> {
  await run('dd', ['if=/dev/zero', `of=${path}`, 'bs=1M', `count=${Math.ceil(bytes / MiB)}`, 'status=none'], { timeoutMs: 300_000 });
  await chmod(path, 0o600);
}

export async function setUpDevice(name: DeviceName, run: Runner, log: Logger, options: DeviceOptions): Promise<SwapDevice> {
  await prepareFolders();
  const teardown = () => cleanupDevices(run, log);
  const size = options.sizeBytes;
  switch (name) {
    case 'local': {
      const file = join(WORK, 'local.swap');
      await diskFile(run, file, size);
      return { name, path: file, priority: await swapOn(run, file), teardown };
    }
    case 'ramfs-loop': {
      const mount = join(RUN, 'ramfs');
      await mkdir(mount);
      await run('mount', ['-t', 'ramfs', '-o', 'mode=700', 'rswap-bench', mount]);
      const file = join(mount, 'swap.img');
      await run('truncate', ['-s', String(size), file]);
      const device = await loopFor(run, file);
      await recordLoop(device);
      return { name, path: device, priority: await swapOn(run, device), teardown };
    }
    case 'zram': {
      const id = (await readFile('/sys/class/zram-control/hot_add', 'utf8')).trim();
      await writeFile(join(RUN, 'zram'), `${id}\n`);
      await writeFile(`/sys/block/zram${id}/disksize`, String(size));
      const device = `/dev/zram${id}`;
      await waitFor(`${device} to appear`, async () => (await readFile(`/sys/block/zram${id}/size`, 'utf8').catch(() => '0')).trim() !== '0', { timeoutMs: 5_000 });
      return { name, path: device, priority: await swapOn(run, device), teardown };
    }
    case 'hdd-model': {
      const image = join(WORK, 'hdd.img');
      await diskFile(run, image, size);
      const exportFile = join(RUN, 'hdd.export');
      await writeFile(exportFile, '', { mode: 0o600 });
      await run('qemu-storage-daemon', [
        '--object', `throttle-group,id=hdd,x-iops-total=${HDD_IOPS},x-bps-total=${HDD_BPS}`,
        // O_DIRECT on the image: the host's page cache must not make the model faster than a disk.
        '--blockdev', `driver=file,node-name=image,filename=${image},cache.direct=on`,
        '--blockdev', 'driver=throttle,node-name=hdd,throttle-group=hdd,file=image',
        '--export', `type=fuse,id=hdd,node-name=hdd,mountpoint=${exportFile},writable=on`,
        '--pidfile', join(RUN, 'hdd.pid'),
        '--daemonize',
      ], { timeoutMs: 30_000 });
      const device = await loopFor(run, exportFile);
      await recordLoop(device);
      return { name, path: device, priority: await swapOn(run, device), teardown };
    }
    case 'remote':
    case 'remote-unsealed':
    case 'remote-qemu10': {
      // host-a lends; host-b borrows. No monitors: the bench asks for exactly one lease of `size`.
      const attacherArgs = [...(options.attacherArgs ?? []), ...(name === 'remote-unsealed' ? ['--unsealed'] : [])];
      const qemuBpo = name === 'remote-qemu10' ? await qemuBpoEnv() : undefined;
      const tb = await testbedUp(run, log, {
        dir: TESTBED,
        hosts: 2,
        natsPort: options.natsPort,
        monitors: false,
        memoryBytes: [size + 512 * MiB, 256 * MiB],
        reserveBytes: [256 * MiB, 64 * MiB],
        ...(options.exporterArgs ? { exporterArgs: options.exporterArgs } : {}),
        ...(attacherArgs.length > 0 ? { attacherArgs } : {}),
        ...(qemuBpo ? { processEnv: { 'host-b/attacher': qemuBpo } } : {}),
      });
      await injectSurplus(testbedBus(tb, 'host-a'), 'host-a', `${size + 256 * MiB}`, '0');
      await injectPressure(testbedBus(tb, 'host-b'), 'host-b', String(size));
      const lease = await waitFor('the bench lease active', async () => (await listLeases(testbedBus(tb))).find((l) => l.state === 'active' || l.state === 'failed'), { timeoutMs: 60_000 });
      if (lease.state !== 'active' || !lease.device) throw new Error(`the bench lease failed: ${lease.reason ?? 'no reason given'}`);
      const area = (await readSwaps()).find((a) => a.path === lease.device);
      if (!area) throw new Error(`lease ${lease.id} is active but ${lease.device} is not in /proc/swaps`);
      if (qemuBpo) await mustRunFrom(lease.id, join(QEMU_BPO, 'usr/bin/qemu-storage-daemon'));
      return {
        name,
        path: lease.device,
        priority: area.priority,
        teardown: async () => {
          // Release through rswap (swap-off first, then the lender tears down), then everything else.
          await releaseLease(testbedBus(tb), lease.id).catch((error: Error) => log.warn({ err: error.message }, 'release failed; cleaning up by force'));
          await teardown();
        },
      };
    }
  }
}
