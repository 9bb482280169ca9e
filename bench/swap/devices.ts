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
 * setUpLeases makes a layout of several leases at one priority instead (bench/swap/stripe.ts).
 */
import { access, chmod, mkdir, readFile, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../shared/log.js';
import type { Runner } from '../../shared/runner.js';
import { readMounts, readSwaps, type SwapArea } from '../../shared/procfs.js';
import { formatBytes, MiB } from '../../shared/units.js';
import type { LeaseRecord } from '../../shared/schemas.js';
import { waitFor } from '../../shared/wait.js';
import { testbedDown, testbedUp, testbedBus, type Testbed } from '../../cli/testbed/testbed.js';
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
      const tb = await lendingTestbed(run, log, {
        lendBytes: size,
        natsPort: options.natsPort,
        ...(options.exporterArgs ? { exporterArgs: options.exporterArgs } : {}),
        ...(attacherArgs.length > 0 ? { attacherArgs } : {}),
        ...(qemuBpo ? { processEnv: { 'host-b/attacher': qemuBpo } } : {}),
      });
      const lease = await obtainLease(tb, { lendBytes: size, lentBytes: 0 }, size, new Set());
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

interface LendingTestbedOptions {
  /** What host-a lends in all: its memory is this + 512 MiB (256 MiB of it its reserve). */
  lendBytes: number;
  natsPort: number;
  brokerArgs?: string[];
  exporterArgs?: string[];
  attacherArgs?: string[];
  processEnv?: Record<string, Record<string, string>>;
}

/** The bench's testbed: host-a lends, host-b borrows; no monitors, so leases come only when the bench asks. */
async function lendingTestbed(run: Runner, log: Logger, options: LendingTestbedOptions): Promise<Testbed> {
  await prepareFolders();
  return testbedUp(run, log, {
    dir: TESTBED,
    hosts: 2,
    natsPort: options.natsPort,
    monitors: false,
    memoryBytes: [options.lendBytes + 512 * MiB, 256 * MiB],
    reserveBytes: [256 * MiB, 64 * MiB],
    ...(options.brokerArgs ? { brokerArgs: options.brokerArgs } : {}),
    ...(options.exporterArgs ? { exporterArgs: options.exporterArgs } : {}),
    ...(options.attacherArgs ? { attacherArgs: options.attacherArgs } : {}),
    ...(options.processEnv ? { processEnv: options.processEnv } : {}),
  });
}

type ActiveLease = LeaseRecord & { device: string };

/**
 * One more lease of `bytes` for host-b, awaited active. host-a offers `lendBytes` + 256 MiB less
 * what it has lent already (offered afresh: an offer goes stale after 30 s), and host-b asks for
 * `neededBytes` in all: the broker lends what its open leases (`known`, by id) do not cover yet.
 * Without a monitor nothing repeats a pressure, so the bench repeats it every 10 s until the lease
 * record appears (a pressure the broker is still busy with is ignored).
 */
async function obtainLease(tb: Testbed, offer: { lendBytes: number; lentBytes: number }, neededBytes: number, known: ReadonlySet<string>): Promise<ActiveLease> {
  await injectSurplus(testbedBus(tb, 'host-a'), 'host-a', String(offer.lendBytes + 256 * MiB - offer.lentBytes), String(offer.lentBytes));
  const ask = () => injectPressure(testbedBus(tb, 'host-b'), 'host-b', String(neededBytes));
  await ask();
  let askedAt = Date.now();
  const lease = await waitFor('the bench lease active', async () => {
    const mine = (await listLeases(testbedBus(tb))).find((l) => l.borrower === 'host-b' && !known.has(l.id));
    if (!mine && Date.now() - askedAt >= 10_000) {
      await ask();
      askedAt = Date.now();
    }
    return mine && (mine.state === 'active' || mine.state === 'failed') ? mine : undefined;
  }, { timeoutMs: 120_000 });
  if (lease.state !== 'active' || !lease.device) throw new Error(`the bench lease failed: ${lease.reason ?? 'no reason given'}`);
  return { ...lease, device: lease.device };
}

/** One lease's swap area in a layout of several. */
export interface LeaseArea {
  leaseId: string;
  /** The swap area's block device (the userspace initiator's loop device). */
  path: string;
  priority: number;
  /** The lease's size (the area is a little smaller when sealed: the LUKS header). */
  sizeBytes: number;
}

export interface LeaseLayout {
  /** In the order the leases were obtained. */
  areas: LeaseArea[];
  /** Releases every lease through rswap (swap-off first), newest first, then cleanupDevices. */
  teardown(): Promise<void>;
}

export interface LeasesOptions {
  count: number;
  eachBytes: number;
  natsPort: number;
  exporterArgs?: string[];
  attacherArgs?: string[];
}

/** The broker's default smallest lease: a layout of smaller leases lowers it for its testbed. */
const MIN_LEASE_BYTES = 64 * MiB;
/** The broker's default --max-leases-per-borrower: the most leases a layout may have. */
export const MAX_LAYOUT_LEASES = 8;

/**
 * Why `devices` (the swap areas of one layout) would not be striped by the kernel, or undefined
 * when they will be: each must be in /proc/swaps, all at the same priority, and that priority
 * above every other area's (the kernel fills the highest priority first, and round-robins among
 * the areas that share it).
 */
export function stripeProblem(swaps: SwapArea[], devices: string[]): string | undefined {
  const mine = devices.map((d) => swaps.find((a) => a.path === d));
  const missing = devices.filter((_, i) => !mine[i]);
  if (missing.length > 0) return `not in /proc/swaps: ${missing.join(', ')}`;
  const priorities = [...new Set(mine.map((a) => a!.priority))];
  if (priorities.length > 1) return `the leases' swap areas have different priorities (${mine.map((a) => `${a!.path} ${a!.priority}`).join(', ')}): the kernel would fill one before the other, not stripe them`;
  const others = swaps.filter((a) => !devices.includes(a.path));
  const above = others.filter((a) => a.priority >= priorities[0]!);
  if (above.length > 0) return `swap areas at or above the leases' priority ${priorities[0]}: ${above.map((a) => `${a.path} ${a.priority}`).join(', ')}: pages would go there too`;
  return undefined;
}

/**
 * A layout of `count` leases of `eachBytes` each for host-b from host-a, on a testbed like the
 * remote device's (host-a lends the total + 256 MiB). The leases are asked for one after another,
 * each awaited active (the broker lends to a borrower only while none of its leases is in
 * progress, and lends only what its open leases do not cover: asking for k x eachBytes brings the
 * k-th). Fails, after tearing down what it made, unless every lease has exactly `eachBytes` and
 * all areas share one priority above every other swap area.
 */
export async function setUpLeases(run: Runner, log: Logger, options: LeasesOptions): Promise<LeaseLayout> {
  const { count, eachBytes } = options;
  if (!Number.isInteger(count) || count < 1 || count > MAX_LAYOUT_LEASES) throw new Error(`a layout has 1 to ${MAX_LAYOUT_LEASES} leases (the broker's --max-leases-per-borrower), not ${count}`);
  if (eachBytes % MiB !== 0 || eachBytes < 16 * MiB) throw new Error(`each lease must be a whole number of MiB and at least 16MiB, not ${formatBytes(eachBytes)}`);
  const total = count * eachBytes;
  const tb = await lendingTestbed(run, log, {
    lendBytes: total,
    natsPort: options.natsPort,
    ...(eachBytes < MIN_LEASE_BYTES ? { brokerArgs: ['--min-lease-bytes', String(eachBytes)] } : {}),
    ...(options.exporterArgs ? { exporterArgs: options.exporterArgs } : {}),
    ...(options.attacherArgs ? { attacherArgs: options.attacherArgs } : {}),
  });
  const leases: ActiveLease[] = [];
  const teardown = async () => {
    for (const lease of [...leases].reverse()) {
      await releaseLease(testbedBus(tb), lease.id).catch((error: Error) => log.warn({ leaseId: lease.id, err: error.message }, 'release failed; cleaning up by force'));
    }
    await cleanupDevices(run, log);
  };
  try {
    for (let k = 1; k <= count; k += 1) {
      const lease = await obtainLease(tb, { lendBytes: total, lentBytes: (k - 1) * eachBytes }, k * eachBytes, new Set(leases.map((l) => l.id)));
      leases.push(lease);
      if (lease.sizeBytes !== eachBytes) throw new Error(`lease ${k} of ${count} (${lease.id}) has ${formatBytes(lease.sizeBytes)}, not ${formatBytes(eachBytes)}: the layout would not be ${count} x ${formatBytes(eachBytes)}`);
    }
    const swaps = await readSwaps();
    const problem = stripeProblem(swaps, leases.map((l) => l.device));
    if (problem) throw new Error(`${count} leases, not striped: ${problem}`);
    const areas = leases.map((l) => ({ leaseId: l.id, path: l.device, priority: swaps.find((a) => a.path === l.device)!.priority, sizeBytes: l.sizeBytes }));
    return { areas, teardown };
  } catch (error) {
    await teardown().catch((e: Error) => log.warn({ err: e.message }, 'teardown after a failed set-up failed'));
    throw error;
  }
}
