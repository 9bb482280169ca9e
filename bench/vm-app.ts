/**
 * The application bench on a VM borrower: Redis and the page reads of bench/app/run.ts, run inside
 * a VM (Debian's kernel, the testbed's image) on each kind of swap that VM can have:
 *
 *   vm-disk   the VM's own virtio disk, a file on this machine's disk with the host's page cache
 *             bypassed (cache=none): a cloud VM's local disk
 *   vm-zram   zram in the VM: RAM, the ceiling (the values are random, so no compression gain)
 *   vm-rswap  an rswap lease with the kernel initiator (open-iscsi, iscsi_tcp, sealed with
 *             dm-crypt), from a tgt lender in a namespace on this machine: the production path
 *   vm-rswap-unsealed  the same lease with the VM's attacher run --unsealed (no dm-crypt): not
 *             by default; it tells the cost of sealing from the network path's. Sealing is the
 *             attacher's own setting, so a run has one of the two lease devices, not both
 *
 * Method, as in the host bench: a fixed amount of work per run (load `ratio x limit` of 4 KiB
 * values, then `--ops` GETs and `--ops` SETs of random keys, every reply checked; the page reads
 * time `--ops` first touches); one fresh process in a fresh memory cgroup (v2, in the VM) per run;
 * `--runs` rounds, each setting every device up, measuring it and tearing it down, the order
 * rotated from round to round; an OOM kill with swap is run again (up to 3 times) and kept in the
 * results. Inside the VM each run is `node dist/bench/app/run.js --one ...`, the host bench's own
 * code. Before each run the bench checks /proc/swaps in the VM: the device under test is the only
 * swap area.
 *
 * No "no swap" device: in the VM (cgroup v2) a Redis over its limit with no swap at all was not
 * OOM-killed but ran on for 20 minutes without finishing (seen once, in smoke mode, under TCG):
 * with no anonymous page to evict, reclaim takes the program's own file pages, which come back
 * over 9p, again and again. The host bench's table has the no-swap rows (OOM kills).
 *
 * Under TCG (no working KVM here) every instruction in the VM is emulated, so the absolute figures
 * are far below real hardware; compare devices within the table, not with the host's.
 *
 *   node dist/bench/vm-app.js [--devices vm-disk,vm-zram,vm-rswap|vm-rswap-unsealed] [--ratios 2]
 *     [--apps redis,touch] [--runs 5] [--ops 5000] [--limit 128MiB] [--vm-mib 1024]
 *     [--out bench/results/vm-app] [--nats-port 14228] [--smoke]
 * Writes app.csv, app.md, redis-get.svg and meta.json to --out after every device's turn.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { createRunner } from '../shared/runner.js';
import { formatBytes, MiB, parseBytes } from '../shared/units.js';
import { waitFor } from '../shared/wait.js';
import { logTail, testbedBus, testbedDown, testbedUp, type Testbed } from '../cli/testbed/testbed.js';
import { accelerator, vmExec, vmImage } from '../cli/testbed/vm.js';
import { injectPressure, injectSurplus, listLeases, releaseLease } from '../cli/operator.js';
import { describeRow, roundOrder, swapBytes } from './app/run.js';
import { markdownTables, svgBars, toCsv, type AppRow } from './app/report.js';
import { runMeta } from './args.js';

export const VM_DEVICES = ['vm-disk', 'vm-zram', 'vm-rswap', 'vm-rswap-unsealed'] as const;
export type VmDevice = (typeof VM_DEVICES)[number];
/** What a run measures unless told: every device but the unsealed lease (it needs a run of its own). */
export const VM_DEFAULT_DEVICES: VmDevice[] = ['vm-disk', 'vm-zram', 'vm-rswap'];
export const VM_LABELS: Record<VmDevice, string> = {
  'vm-disk': "VM's own virtio disk (host page cache bypassed)",
  'vm-zram': 'VM, zram (RAM, the ceiling)',
  'vm-rswap': 'VM, rswap, kernel initiator (sealed)',
  'vm-rswap-unsealed': 'VM, rswap, kernel initiator (unsealed)',
};

const APP_RUN = resolve(fileURLToPath(import.meta.url), '../app/run.js');
const ATTEMPTS = 3;

export interface VmAppOptions {
  devices: VmDevice[];
  ratios: number[];
  apps: Array<'redis' | 'touch'>;
  runs: number;
  ops: number;
  limitBytes: number;
  valueBytes: number;
  vmMiB: number;
  out: string;
  natsPort: number;
  dir: string;
}

export function parseVmAppArgs(argv: string[]): VmAppOptions {
  const value = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const smoke = argv.includes('--smoke');
  const list = (name: string, fallback: string) => (value(name) ?? fallback).split(',').filter(Boolean);
  const devices = list('devices', VM_DEFAULT_DEVICES.join(','));
  for (const d of devices) if (!(VM_DEVICES as readonly string[]).includes(d)) throw new Error(`unknown device '${d}'; devices are ${VM_DEVICES.join(', ')}`);
  if (devices.includes('vm-rswap') && devices.includes('vm-rswap-unsealed')) throw new Error("vm-rswap and vm-rswap-unsealed go in separate runs: sealing is the VM attacher's own setting (--unsealed), fixed when the VM starts");
  const apps = list('apps', smoke ? 'redis' : 'redis,touch');
  for (const a of apps) if (a !== 'redis' && a !== 'touch') throw new Error(`unknown app '${a}'; apps are redis, touch`);
  const ratios = list('ratios', smoke ? '1.5' : '2').map(Number);
  if (ratios.some((r) => !(r > 0 && r <= 3))) throw new Error(`ratios must be in (0, 3]: ${ratios.join(',')}`);
  const runs = Number(value('runs') ?? (smoke ? 1 : 5));
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs is a whole number, 1 or more, not '${value('runs')}'`);
  const ops = Number(value('ops') ?? (smoke ? 200 : 5000));
  if (!Number.isInteger(ops) || ops < 1) throw new Error(`--ops is a whole number, 1 or more, not '${value('ops')}'`);
  return {
    devices: devices as VmDevice[],
    apps: apps as VmAppOptions['apps'],
    ratios,
    runs,
    ops,
    limitBytes: parseBytes(value('limit') ?? (smoke ? '64MiB' : '128MiB')),
    valueBytes: parseBytes(value('value') ?? '4KiB'),
    vmMiB: Number(value('vm-mib') ?? 1024),
    out: value('out') ?? 'bench/results/vm-app',
    natsPort: Number(value('nats-port') ?? 14228),
    dir: value('dir') ?? '/run/rswap/bench-vm-app',
  };
}

/** The VM's shell lines that put a local device under swap (above nothing: the VM has no other). */
export function swapOnScript(device: 'vm-disk' | 'vm-zram', sizeBytes: number): string {
  if (device === 'vm-disk') return ['set -e', 'mkswap /dev/vda >/dev/null', 'swapon -p 100 /dev/vda'].join('\n');
  return ['set -e', `echo ${sizeBytes} > /sys/block/zram0/disksize`, 'mkswap /dev/zram0 >/dev/null', 'swapon -p 100 /dev/zram0'].join('\n');
}

export function swapOffScript(device: 'vm-disk' | 'vm-zram'): string {
  if (device === 'vm-disk') return 'swapoff /dev/vda';
  return ['swapoff /dev/zram0', 'echo 1 > /sys/block/zram0/reset'].join('\n');
}

/** The swap areas a VM's /proc/swaps lists (their device paths). */
export function swapAreas(procSwaps: string): string[] {
  return procSwaps.split('\n').slice(1).map((l) => l.trim().split(/\s+/)[0]!).filter(Boolean);
}

/** One run inside the VM: cgroup v2 with the memory controller, caches dropped, then the host bench's own measurement. */
export function jobScript(app: string, device: VmDevice, ratio: number, round: number, options: Pick<VmAppOptions, 'limitBytes' | 'ops' | 'valueBytes'>): string {
  return [
    'grep -q " /sys/fs/cgroup cgroup2 " /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup',
    'echo +memory > /sys/fs/cgroup/cgroup.subtree_control',
    'sync; echo 3 > /proc/sys/vm/drop_caches',
    `${process.execPath} ${APP_RUN} --one --app ${app} --device ${device} --ratio ${ratio} --round ${round} --limit ${options.limitBytes} --ops ${options.ops} --value ${options.valueBytes}`,
  ].join('\n');
}

/** The row a --one run printed (its last JSON line). */
export function rowOf(output: string): AppRow {
  const line = output.split('\n').filter((l) => l.startsWith('{')).at(-1);
  if (!line) throw new Error(`no result from the run in the VM: ${output.slice(-800)}`);
  return JSON.parse(line) as AppRow;
}

interface Turn {
  /** The path the device has in the VM's /proc/swaps. */
  path: string;
  teardown(): Promise<void>;
}

/**
 * What the VM says about its storage and memory after a failure: its kernel's lines about iSCSI,
 * SCSI, swap, OOM and hung tasks (kept apart from the rest, which a flood of I/O errors would push
 * out), the sessions' and devices' state with their I/O error counts (a non-zero ioerr_cnt on the
 * lease's device is a read that failed), swap, and whether iscsid still runs.
 */
export const VM_DIAGNOSIS = [
  'echo "uptime: $(cut -d" " -f1 /proc/uptime) s"',
  "dmesg | grep -iE 'iscsi|connection[0-9]|session[0-9]|sd [0-9]|I/O error|Read-error|swap on|swapoff|crypt|oom|Killed process|blocked for|allocation failure|9p' | tail -n 80",
  'echo "--- dmesg, last lines"; dmesg | tail -n 20',
  'echo "--- iSCSI sessions"; grep -H . /sys/class/iscsi_session/*/state 2>/dev/null',
  'echo "--- SCSI devices: state ioerr_cnt iorequest_cnt timeout"; for d in /sys/class/scsi_device/*/device; do echo "$d $(cat $d/state $d/ioerr_cnt $d/iorequest_cnt $d/timeout 2>/dev/null | tr "\\n" " ")"; done',
  'echo "--- swap"; cat /proc/swaps; grep -E "^(oom_kill|pswpin|pswpout) " /proc/vmstat',
  'echo "--- iscsid: $(pgrep -x iscsid | tr "\\n" " ")"',
].join('\n');

async function inVm(share: string, script: string, what: string): Promise<string> {
  const job = await vmExec(share, script, 1_800_000, 180_000);
  if (job.code !== 0) {
    const diagnosis = await vmExec(share, VM_DIAGNOSIS, 120_000).then((d) => d.output.trimEnd(), (error: unknown) => `(the VM did not answer: ${String(error)})`);
    // The agents' and the console's last lines, read from the host (they say something even when
    // the VM no longer answers; the testbed's folder goes with the testbed).
    const logs = await Promise.all(['console.log', 'attacher.log'].map(async (file) => `--- ${join(share, file)}, last lines:\n${await logTail(join(share, file), 15)}`));
    throw new Error(`${what} failed in the VM (exit ${job.code}): ${job.output.slice(-4000)}\n--- the VM's kernel and storage:\n${diagnosis}\n${logs.join('\n')}`);
  }
  return job.output;
}

async function setUp(device: VmDevice, tb: Testbed, sizeBytes: number, progress: (line: string) => void): Promise<Turn> {
  const vm = tb.vms![0]!;
  if (device === 'vm-disk' || device === 'vm-zram') {
    await inVm(vm.dir, swapOnScript(device, sizeBytes), `swap on ${device}`);
    return { path: device === 'vm-disk' ? '/dev/vda' : '/dev/zram0', teardown: async () => void (await inVm(vm.dir, swapOffScript(device), `swap off ${device}`)) };
  }
  // vm-rswap or vm-rswap-unsealed: a lease of the same size from host-a, asked for by hand (no
  // monitors run).
  await injectSurplus(testbedBus(tb, 'host-a'), 'host-a', `${sizeBytes + 256 * MiB}`, '0');
  await injectPressure(testbedBus(tb, vm.name), vm.name, String(sizeBytes));
  const started = Date.now();
  const lease = await waitFor(`a lease for ${vm.name}`, async () => (await listLeases(testbedBus(tb))).find((l) => l.borrower === vm.name && (l.state === 'active' || l.state === 'failed')), { timeoutMs: 600_000, intervalMs: 500 });
  if (lease.state !== 'active' || !lease.device) throw new Error(`the lease for ${vm.name} failed: ${lease.reason ?? 'no reason given'}`);
  // The attach reply says whether the VM seals it: the row is only what its label says.
  if (lease.sealed !== (device === 'vm-rswap')) {
    await releaseLease(testbedBus(tb), lease.id);
    throw new Error(`${device}: the lease came up ${lease.sealed ? 'sealed' : 'unsealed'}`);
  }
  progress(`  lease ${lease.id}: ${lease.initiator} initiator, ${lease.device}, ${formatBytes(lease.sizeBytes)} from ${lease.lender}, up in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  return {
    path: lease.device,
    // Through rswap: the VM swaps off, then the lender tears the target down.
    teardown: async () => void (await releaseLease(testbedBus(tb), lease.id)),
  };
}

export async function runVmAppBench(options: VmAppOptions, progress: (line: string) => void = console.log): Promise<AppRow[]> {
  const log = pino({ level: 'silent' });
  const run = createRunner(log);
  const sizeBytes = swapBytes(options);
  const rows: AppRow[] = [];
  let accel = '';
  let kernel = '';
  // Stopped by a signal (Ctrl-C, a test's timeout): the testbed goes first, VM and lease included.
  const stop = (signal: NodeJS.Signals) => {
    void testbedDown(run, log, options.dir).finally(() => process.kill(process.pid, signal));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const image = await vmImage(log);
    kernel = image.version;
    accel = await accelerator(image);
    progress(`VM: Debian ${kernel} under ${accel}, ${options.vmMiB} MiB; swap devices ${formatBytes(sizeBytes)}`);
    const tb = await testbedUp(run, log, {
      dir: options.dir,
      hosts: 1,
      vmHosts: 1,
      vmInitiators: ['kernel'],
      vmMemoryMiB: options.vmMiB,
      vmDiskMiB: sizeBytes / MiB,
      ...(options.devices.includes('vm-rswap-unsealed') ? { attacherArgs: ['--unsealed'] } : {}),
      natsPort: options.natsPort,
      monitors: false,
      memoryBytes: [2048 * MiB],
      reserveBytes: [256 * MiB],
    });
    const vm = tb.vms![0]!;
    for (let round = 1; round <= options.runs; round += 1) {
      for (const device of roundOrder(options.devices, round)) {
        const started = Date.now();
        const turn = await setUp(device, tb, sizeBytes, progress);
        try {
          const areas = swapAreas(await inVm(vm.dir, 'cat /proc/swaps', 'reading /proc/swaps'));
          if (areas.length !== 1 || areas[0] !== turn.path) throw new Error(`${device}: the VM swaps on ${areas.join(', ') || 'nothing'}, not ${turn.path} alone: results would mix devices`);
          for (const ratio of options.ratios) {
            for (const app of options.apps) {
              for (let attempt = 1; attempt <= ATTEMPTS; attempt += 1) {
                const row = rowOf(await inVm(vm.dir, jobScript(app, device, ratio, round, options), `${app} on ${device}`));
                rows.push(row);
                progress(`round ${round} ${device} ${ratio}x ${app}: ${describeRow(row)}${row.outcome === 'oom' ? ` (attempt ${attempt} of ${ATTEMPTS})` : ''}`);
                if (row.outcome === 'ok') break;
              }
            }
          }
        } finally {
          await turn.teardown();
        }
        progress(`  ${device} round ${round} done in ${Math.round((Date.now() - started) / 1000)} s`);
        await writeOutputs(rows, options, { accel, kernel });
      }
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    const problems = await testbedDown(run, log, options.dir);
    if (problems.length > 0) throw new Error(`cleanup problems: ${problems.join('; ')}`);
  }
  await writeOutputs(rows, options, { accel, kernel });
  return rows;
}

async function writeOutputs(rows: AppRow[], options: VmAppOptions, vm: { accel: string; kernel: string }): Promise<void> {
  await mkdir(options.out, { recursive: true });
  const limit = formatBytes(options.limitBytes);
  await writeFile(join(options.out, 'app.csv'), toCsv(rows));
  const header = `In a VM (Debian ${vm.kernel}, ${options.vmMiB} MiB, 1 vCPU, ${vm.accel === 'tcg' ? 'TCG: every instruction emulated, so compare devices within this table only' : vm.accel}). Memory cgroup limit ${limit}, values ${formatBytes(options.valueBytes)}, ${options.ops} GETs and ${options.ops} SETs (or page reads) per run, ${options.runs} run(s) per point.`;
  await writeFile(join(options.out, 'app.md'), `${header}\n\n${markdownTables(rows, options.devices, VM_LABELS, options.ratios)}`);
  await writeFile(join(options.out, 'redis-get.svg'), svgBars(rows, options.devices, VM_LABELS, options.ratios, `Redis random GETs in a VM (${vm.accel}), ${limit} cgroup, median of runs (whiskers: min-max)`));
  const meta = { ...(await runMeta()), vm: { kernel: vm.kernel, accel: vm.accel, memoryMiB: options.vmMiB, cpus: 1 }, options: { ...options, devices: options.devices.map((d) => `${d}: ${VM_LABELS[d]}`) } };
  await writeFile(join(options.out, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
}

if (process.argv[1]?.endsWith('vm-app.js')) {
  const started = Date.now();
  runVmAppBench(parseVmAppArgs(process.argv.slice(2))).then(
    () => console.log(`done in ${Math.round((Date.now() - started) / 1000)} s`),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
}
