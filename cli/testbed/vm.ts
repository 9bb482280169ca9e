/**
 * VM hosts for the testbed: a real kernel where this machine's own lacks parts (the kernel iSCSI
 * initiator) or where a test must not touch the machine (machine-wide memory pressure).
 *
 * Each VM boots Debian's packaged kernel under qemu (KVM where /dev/kvm exists, else TCG: slow but
 * a real kernel) with a small initramfs built here from busybox-static and the kernel's own modules.
 * The initramfs mounts this machine's root filesystem read-only over 9p with a tmpfs overlay on top
 * (so the VM runs the same rswap build and Debian tools, and whatever it writes stays in its RAM),
 * shares the VM's own testbed folder writable at the same path (its logs and its script), brings up
 * its network on a tap device and runs the script. Packages are fetched with `apt-get download` and
 * unpacked into a cache: nothing is installed on this machine beyond qemu.
 */
import { access, chmod, cp, mkdir, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { execa } from 'execa';
import type { Logger } from '../../shared/log.js';

export const VM_CACHE = '/var/cache/rswap/vm';

/**
 * The modules the VM loads at boot (their dependencies come with them, in order). dm_crypt, xts
 * and aesni_intel seal what the kernel path swaps: the VM cannot load modules on demand.
 * virtio_blk and zram are the VM's own swap devices in the benches (a disk, RAM).
 */
const MODULES = ['virtio_pci', 'virtio_net', 'virtio_blk', '9pnet_virtio', '9p', 'overlay', 'sd_mod', 'iscsi_tcp', 'crc32c_generic', 'crc32c-intel', 'fuse', 'loop', 'dm_crypt', 'xts', 'aesni_intel', 'zram'];

export interface VmImage {
  version: string;
  kernel: string;
  initrd: string;
}

/** Runs `command` in `cwd`, returning stdout. */
async function sh(command: string, args: string[], cwd?: string): Promise<string> {
  return (await execa(command, args, { cwd })).stdout;
}

/**
 * The kernel and initramfs for VM hosts, built once per kernel version into VM_CACHE: Debian's
 * current linux-image-amd64 and busybox-static, unpacked (not installed).
 */
export async function vmImage(log: Logger, cache = VM_CACHE): Promise<VmImage> {
  const depends = await sh('apt-cache', ['depends', 'linux-image-amd64']);
  const pkg = /Depends: (linux-image-[0-9][^\s]*)/.exec(depends)?.[1];
  if (!pkg) throw new Error(`no kernel package behind linux-image-amd64: ${depends}`);
  const version = pkg.replace(/^linux-image-/, '');
  // One folder per kernel and initramfs recipe: a changed module list or init builds anew.
  const recipe = createHash('sha256').update(JSON.stringify([MODULES, INIT])).digest('hex').slice(0, 8);
  const dir = join(cache, `${version}-${recipe}`);
  const image = { version, kernel: join(dir, 'root', 'boot', `vmlinuz-${version}`), initrd: join(dir, 'initrd.gz') };
  if (await access(image.initrd).then(() => true, () => false)) return image;
  log.info({ version }, 'building the VM image (kernel and initramfs) once');
  // Built aside and renamed into place: an interrupted build never counts as built.
  const building = `${dir}.building-${process.pid}`;
  await rm(building, { recursive: true, force: true });
  try {
    await buildImage(pkg, version, building);
  } catch (error) {
    // A failed build leaves nothing behind (a 400 MB unpacked kernel package, otherwise).
    await rm(building, { recursive: true, force: true });
    throw error;
  }
  await rm(dir, { recursive: true, force: true });
  await rename(building, dir);
  await pruneCache(cache, dir);
  return image;
}

/** Unpacks the kernel and busybox into `building` and makes the initramfs beside them. */
async function buildImage(pkg: string, version: string, building: string): Promise<void> {
  const debs = join(building, 'debs');
  await mkdir(debs, { recursive: true });
  await sh('apt-get', ['download', pkg, 'busybox-static'], debs);
  const root = join(building, 'root');
  for (const deb of await readdir(debs)) await sh('dpkg-deb', ['-x', join(debs, deb), root]);
  await sh('depmod', ['-b', root, version]);
  // The initramfs: busybox, the modules in load order, and init.
  const initramfs = join(building, 'initramfs');
  for (const d of ['bin', 'modules', 'proc', 'sys', 'dev', 'lower', 'upper', 'newroot']) await mkdir(join(initramfs, d), { recursive: true });
  await cp(join(root, 'bin', 'busybox'), join(initramfs, 'bin', 'busybox'));
  const order: string[] = [];
  for (const module of MODULES) {
    for (const line of (await sh('modprobe', ['-d', root, '-S', version, '--show-depends', module])).split('\n')) {
      const file = /^insmod (\S+)/.exec(line)?.[1];
      const name = file?.split('/').pop();
      if (!file || !name || order.includes(name)) continue;
      await cp(file, join(initramfs, 'modules', name));
      order.push(name);
    }
  }
  await writeFile(join(initramfs, 'modules', 'order'), `${order.join('\n')}\n`);
  await writeFile(join(initramfs, 'init'), INIT);
  await chmod(join(initramfs, 'init'), 0o755);
  const cpio = await execa('sh', ['-c', `find . | ${join(initramfs, 'bin', 'busybox')} cpio -o -H newc | gzip -1 > ${join(building, 'initrd.gz')}`], { cwd: initramfs });
  if (cpio.exitCode !== 0) throw new Error(`initramfs: ${cpio.stderr}`);
  // Only the kernel and the initramfs are kept (the modules it needs are inside it): 20 MB, not 400.
  await rm(debs, { recursive: true, force: true });
  await rm(initramfs, { recursive: true, force: true });
  for (const entry of await readdir(root)) if (entry !== 'boot') await rm(join(root, entry), { recursive: true, force: true });
}

/** Removes the images of older recipes and kernels, except those a running VM was started from. */
async function pruneCache(cache: string, keep: string): Promise<void> {
  const running: string[] = [];
  for (const pid of await readdir('/proc').catch(() => [] as string[])) {
    if (/^\d+$/.test(pid)) running.push(await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => ''));
  }
  for (const entry of await readdir(cache).catch(() => [] as string[])) {
    const path = join(cache, entry);
    if (path === keep || entry.includes('.building-') || running.some((cmd) => cmd.includes(`${path}/`))) continue;
    await rm(path, { recursive: true, force: true });
  }
}

/**
 * The VM's first process: modules, this machine's root (read-only 9p, tmpfs overlay), the VM's
 * own folder writable at the same path, then its script (`rswap.script=PATH` on the kernel command
 * line, a file in that folder). Whatever goes wrong is printed on the console (the VM's log).
 */
const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
arg() { sed -n "s/.*$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }
SCRIPT=$(arg rswap.script); SHARE=$(arg rswap.share)
for m in $(cat /modules/order); do insmod /modules/$m 2>/dev/null || echo "rswap-vm: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose hostroot /lower || { echo "rswap-vm: 9p root failed"; poweroff -f; }
mount -t tmpfs -o size=256m tmpfs /upper && mkdir -p /upper/up /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/up,workdir=/upper/work /newroot || { echo "rswap-vm: overlay failed"; poweroff -f; }
mkdir -p /newroot$SHARE && mount -t 9p -o trans=virtio,version=9p2000.L,cache=none share /newroot$SHARE || { echo "rswap-vm: share failed"; poweroff -f; }
mount --move /proc /newroot/proc; mount --move /sys /newroot/sys; mount --move /dev /newroot/dev
echo "rswap-vm: root ready, running $SCRIPT"
exec switch_root /newroot /bin/sh "$SCRIPT"
`;

export interface VmSpec {
  /** Host name (also the VM's name). */
  name: string;
  /** The VM's own folder on this machine: shared writable at the same path; holds its script. */
  share: string;
  /** Tap device on the testbed bridge. */
  tap: string;
  mac: string;
  memoryMiB: number;
  cpus?: number;
  /**
   * A raw file on this machine's disk, given to the VM as its own disk (/dev/vda), with the host's
   * page cache bypassed (cache=none): a local disk of the VM's own, as a VM in a cloud has.
   */
  disk?: string;
}

let probed: Promise<'kvm' | 'tcg'> | undefined;

/** How long a KVM guest may take to print its kernel's banner; a working KVM does it in about a second. */
const KVM_PROBE_MS = 20_000;

/**
 * KVM where this machine has a working one, else TCG. /dev/kvm may exist and still not run a
 * guest: seen here, a vCPU that fails to start ("failed to set MSR"), and one that hangs silently
 * after the BIOS, before the kernel prints anything (nested virtualisation without the features
 * it needs). So a kernel is booted under KVM with no root: KVM counts only if that kernel prints
 * its banner (it then panics and the VM exits); silence or an error means TCG.
 */
export function accelerator(image: VmImage): Promise<'kvm' | 'tcg'> {
  probed ??= (async () => {
    if (!(await access('/dev/kvm').then(() => true, () => false))) return 'tcg';
    return (await kernelSpeaks(['qemu-system-x86_64', '-accel', 'kvm', '-cpu', 'host', '-m', '64', '-nographic', '-no-reboot', '-kernel', image.kernel, '-append', 'console=ttyS0 panic=-1'])) ? 'kvm' : 'tcg';
  })();
  return probed;
}

/** Runs `command` (a qemu) until its guest's kernel prints its banner (true), or it exits or `timeoutMs` pass (false). */
export async function kernelSpeaks([file, ...args]: string[], timeoutMs = KVM_PROBE_MS): Promise<boolean> {
  const probe = execa(file!, args, { reject: false, stdin: 'ignore', all: true });
  return new Promise((resolve) => {
    let said = '';
    const done = (ok: boolean) => {
      clearTimeout(timer);
      probe.kill('SIGKILL');
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    probe.all?.on('data', (chunk: Buffer) => {
      said = (said + chunk.toString()).slice(-4096);
      if (/Linux version \d/.test(said)) done(true);
    });
    void probe.then(() => done(/Linux version \d/.test(said)));
  });
}

/** qemu's command line for a VM host running `${share}/vm.sh`. */
export function qemuCommand(image: VmImage, vm: VmSpec, accel: 'kvm' | 'tcg'): string[] {
  return [
    'qemu-system-x86_64',
    '-name', `rswap-vm-${vm.name}`,
    '-accel', accel,
    '-cpu', accel === 'kvm' ? 'host' : 'max',
    '-m', String(vm.memoryMiB),
    '-smp', String(vm.cpus ?? 1),
    '-nographic', '-no-reboot',
    '-kernel', image.kernel,
    '-initrd', image.initrd,
    '-append', `console=ttyS0 quiet panic=-1 rswap.script=${join(vm.share, 'vm.sh')} rswap.share=${vm.share}`,
    '-fsdev', 'local,id=root,path=/,security_model=none,readonly=on,multidevs=remap',
    '-device', 'virtio-9p-pci,fsdev=root,mount_tag=hostroot',
    '-fsdev', `local,id=share,path=${vm.share},security_model=none`,
    '-device', 'virtio-9p-pci,fsdev=share,mount_tag=share',
    '-netdev', `tap,id=n0,ifname=${vm.tap},script=no,downscript=no`,
    '-device', `virtio-net-pci,netdev=n0,mac=${vm.mac}`,
    ...(vm.disk ? ['-drive', `file=${vm.disk},format=raw,if=virtio,cache=none`] : []),
  ];
}

/**
 * The VM's script: network up with its address, iscsid started, then `agents` (shell lines that
 * start its rswap processes in the background, logging into its folder); it then waits, so the VM
 * lives until qemu is stopped.
 */
export function vmScript(vm: VmSpec, address: string, iqn: string, agents: string[]): string {
  return [
    'set -u',
    'echo "rswap-vm: up"',
    'ip link set lo up && ip link set eth0 up',
    `ip addr add ${address}/24 dev eth0`,
    'mkdir -p /run/lock /var/lib/iscsi /etc/iscsi /var/lib/rswap',
    `echo "InitiatorName=${iqn}" > /etc/iscsi/initiatorname.iscsi`,
    'iscsid || echo "rswap-vm: iscsid failed"',
    // The watchdog's signs of life: a heartbeat file this machine reads (vmExec's stallMs), and the
    // kernel's own report of a task blocked for 30 s on the console.
    'echo 30 > /proc/sys/kernel/hung_task_timeout_secs; echo -1 > /proc/sys/kernel/hung_task_warnings',
    // (Each beat starts programs from the 9p root and writes to the share: it shows that the VM
    // still runs processes and does I/O. The OOM killer leaves it alone.)
    `(echo -1000 > /proc/self/oom_score_adj; while :; do date +%s > ${vm.share}/heartbeat.tmp && mv ${vm.share}/heartbeat.tmp ${vm.share}/heartbeat; sleep 1; done) &`,
    ...agents,
    'echo "rswap-vm: agents started"',
    // Jobs from this machine (vmExec): a script dropped in jobs/ runs, its output and exit code come back.
    `mkdir -p ${vm.share}/jobs; cd ${vm.share}/jobs`,
    'while :; do',
    '  for job in *.sh; do',
    '    [ -e "$job" ] || continue',
    '    mv "$job" "$job.run"; sh "$job.run" > "${job%.sh}.out" 2>&1; echo $? > "${job%.sh}.rc.tmp"; mv "${job%.sh}.rc.tmp" "${job%.sh}.rc"',
    '  done',
    '  sleep 0.2',
    'done',
    '',
  ].join('\n');
}

/**
 * Runs `script` (sh) inside a VM host and returns its exit code and output, once the VM reports
 * them (through its shared folder; no network, no ssh).
 */
export async function vmExec(share: string, script: string, timeoutMs = 600_000, stallMs?: number): Promise<{ code: number; output: string }> {
  const id = `job-${Date.now()}-${Math.random().toString(16).slice(2, 8)}`;
  const jobs = join(share, 'jobs');
  await mkdir(jobs, { recursive: true });
  await writeFile(join(jobs, `${id}.tmp`), script);
  await rename(join(jobs, `${id}.tmp`), join(jobs, `${id}.sh`));
  const submitted = Date.now();
  const deadline = submitted + timeoutMs;
  let lastConsoleCheck = 0;
  // Only what the kernel says from now on is about this job.
  const consoleFrom = await stat(join(share, 'console.log')).then((s) => s.size, () => 0);
  for (;;) {
    const rc = await readFile(join(jobs, `${id}.rc`), 'utf8').catch(() => undefined);
    if (rc !== undefined) return { code: Number(rc.trim()), output: await readFile(join(jobs, `${id}.out`), 'utf8').catch(() => '') };
    if (Date.now() > deadline) throw new Error(`VM job in ${share} did not finish within ${timeoutMs} ms: ${script.slice(0, 200)}`);
    if (stallMs !== undefined) {
      // No heartbeat at all counts from when this job was handed over.
      const beat = await stat(join(share, 'heartbeat')).then((s) => s.mtimeMs, () => submitted);
      if (Date.now() - beat > stallMs) throw new VmStalled(share, Date.now() - beat, 'no heartbeat');
      // A VM whose heartbeat goes on while the tasks that swap are stuck is stalled too: the kernel
      // says so on the console (hung-task reports, which repeat with a growing time).
      if (Date.now() - lastConsoleCheck >= 5_000) {
        lastConsoleCheck = Date.now();
        const hung = longestHungTaskS((await readFile(join(share, 'console.log')).catch(() => Buffer.alloc(0))).subarray(consoleFrom).toString('utf8'));
        if (hung * 1000 >= stallMs) throw new VmStalled(share, hung * 1000, 'a task blocked');
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/**
 * The longest time a task has been blocked, as the kernel's hung-task reports on a console say
 * ("INFO: task kswapd0:38 blocked for more than 61 seconds.").
 */
export function longestHungTaskS(console: string): number {
  let longest = 0;
  for (const m of console.matchAll(/INFO: task .+ blocked for more than (\d+) seconds\./g)) longest = Math.max(longest, Number(m[1]));
  return longest;
}

/**
 * The VM is stalled or deadlocked: its heartbeat stopped, or the kernel reports a task blocked for
 * as long as the stall limit (its console has what the kernel said).
 */
export class VmStalled extends Error {
  constructor(readonly share: string, readonly silentMs: number, readonly why: 'no heartbeat' | 'a task blocked' = 'no heartbeat') {
    super(why === 'no heartbeat' ? `VM in ${share} stalled: no heartbeat for ${Math.round(silentMs / 1000)} s` : `VM in ${share} stalled: a task blocked for more than ${Math.round(silentMs / 1000)} s (hung-task report on its console)`);
  }
}

export async function writeVmScript(vm: VmSpec, script: string): Promise<void> {
  await mkdir(vm.share, { recursive: true });
  await writeFile(join(vm.share, 'vm.sh'), script, { mode: 0o755 });
}
