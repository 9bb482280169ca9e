/**
 * The remote path's tuning knobs, measured one at a time on one point of the swap bench (256 MiB of
 * data in a 128 MiB cgroup, 4 KiB blocks): each variant changes one knob, runs the workload
 * --reps times, and puts the knob back. Variants that change the exporter get a lease of their own.
 * Every machine-wide setting it touches (vm.page-cluster, swap readahead, FUSE readahead, guest
 * halt polling, the unbound-workqueue CPU mask, CPU affinity) is read first and restored after,
 * also on failure.
 *
 *   node dist/bench/swap/knobs.js [--reps 2] [--variants a,b] [--phase-seconds 6]
 *                                 [--out bench/results/knobs.csv]
 */
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { readMounts } from '../../shared/procfs.js';
import { MiB } from '../../shared/units.js';
import { cleanupDevices, setUpDevice } from './devices.js';
import { runWorkloadIn } from './run.js';

const SETTINGS = {
  pageCluster: '/proc/sys/vm/page-cluster',
  vmaReadahead: '/sys/kernel/mm/swap/vma_ra_enabled',
  haltPoll: '/sys/module/haltpoll/parameters/guest_halt_poll_ns',
  workqueueMask: '/sys/devices/virtual/workqueue/cpumask',
} as const;

interface Variant {
  name: string;
  knob: string;
  /** Extra exporter flags: variants with the same ones share a lease. */
  exporterArgs?: string[];
  apply?: () => Promise<void>;
  /** The workload runs on CPU 0 too. */
  pinWorkload?: boolean;
}

/** The FUSE exports of our leases: their bdi ("0:N") carries the readahead setting. */
async function fuseBdis(): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').filter((l) => l.includes(' - fuse') && l.includes('/run/rswap/bench-swap-testbed/')).map((l) => l.split(' ')[2]!);
}

async function pin(pattern: string, cpus: string): Promise<void> {
  const { stdout } = await execa('pgrep', ['-f', pattern], { reject: false });
  for (const pid of stdout.split('\n').filter(Boolean)) await execa('taskset', ['-a', '-p', '-c', cpus, pid], { reject: false });
}

export const VARIANTS: Variant[] = [
  { name: 'baseline', knob: 'the defaults' },
  ...[0, 1, 4, 5].map((n) => ({ name: `page-cluster-${n}`, knob: `vm.page-cluster ${n} (default 3)`, apply: () => writeFile(SETTINGS.pageCluster, String(n)) })),
  {
    name: 'fuse-readahead-0',
    knob: 'FUSE export readahead 0 (default 128 KiB)',
    apply: async () => {
      for (const bdi of await fuseBdis()) await writeFile(`/sys/class/bdi/${bdi}/read_ahead_kb`, '0');
    },
  },
  { name: 'vma-readahead-off', knob: 'swap readahead by slot, not by address', apply: () => writeFile(SETTINGS.vmaReadahead, 'false') },
  { name: 'halt-poll', knob: 'guest halt polling 200 µs (the kernel default)', apply: () => writeFile(SETTINGS.haltPoll, '200000') },
  {
    name: 'one-cpu',
    knob: 'tgtd, qemu-storage-daemon, workload and unbound workqueues on CPU 0',
    pinWorkload: true,
    apply: async () => {
      await pin('^tgtd -f', '0');
      await pin('^qemu-storage-daemon', '0');
      await writeFile(SETTINGS.workqueueMask, '1');
    },
  },
  { name: 'tgt-iscsi-defaults', knob: "tgt's own iSCSI parameters (--iscsi-params '')", exporterArgs: ['--iscsi-params', ''] },
  { name: 'tgt-iothreads-1', knob: 'tgtd with 1 I/O thread (default 16)', exporterArgs: ['--tgt-iothreads', '1'] },
];

interface Measured {
  variant: string;
  rep: number;
  fill: number;
  seq: number;
  random: number;
  write: number;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const value = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const reps = Number(value('reps') ?? 2);
  const phaseSeconds = Number(value('phase-seconds') ?? 6);
  const out = value('out') ?? 'bench/results/knobs.csv';
  const wanted = value('variants')?.split(',');
  const variants = VARIANTS.filter((v) => !wanted || wanted.includes(v.name));
  const log = pino({ level: 'warn' }, pino.destination(2));
  const run = createRunner(log);
  const saved = new Map<string, string>();
  for (const path of Object.values(SETTINGS)) saved.set(path, (await readFile(path, 'utf8').catch(() => '')).trim());
  const rows: Measured[] = [];
  await cleanupDevices(run, log);
  try {
    const groups = new Map<string, Variant[]>();
    for (const v of variants) {
      const key = JSON.stringify(v.exporterArgs ?? []);
      groups.set(key, [...(groups.get(key) ?? []), v]);
    }
    for (const group of groups.values()) {
      const exporterArgs = group[0]!.exporterArgs ?? [];
      const device = await setUpDevice('remote', run, log, { sizeBytes: 512 * MiB, natsPort: 14226, exporterArgs });
      const bdiReadahead = new Map<string, string>();
      for (const bdi of await fuseBdis()) bdiReadahead.set(bdi, (await readFile(`/sys/class/bdi/${bdi}/read_ahead_kb`, 'utf8')).trim());
      try {
        for (const v of group) {
          try {
            // A knob this machine lacks skips its variant; the finally puts back what it did set.
            const skipped = await Promise.resolve(v.apply?.()).then(() => undefined, (error: Error) => error.message);
            if (skipped) {
              console.log(`${v.name.padEnd(20)} skipped: ${skipped}`);
              continue;
            }
            for (let rep = 1; rep <= reps; rep += 1) {
              const args = ['--data', String(256 * MiB), '--block', '4096', '--phase-seconds', String(phaseSeconds)];
              const r = await runWorkloadIn(128 * MiB, args, `workload (${v.name})`, v.pinWorkload ? ['taskset', '-c', '0'] : []);
              const row = { variant: v.name, rep, fill: r.fill.mbps, seq: r.phases['seq-read']!.mbps, random: r.phases['random-read']!.mbps, write: r.phases['random-write']!.mbps };
              rows.push(row);
              console.log(`${v.name.padEnd(20)} rep ${rep}: fill ${row.fill} | seq-read ${row.seq} | random-read ${row.random} | random-write ${row.write} MB/s`);
            }
          } finally {
            for (const [path, old] of saved) if (old) await writeFile(path, old).catch(() => {});
            for (const [bdi, old] of bdiReadahead) await writeFile(`/sys/class/bdi/${bdi}/read_ahead_kb`, old).catch(() => {});
            const online = (await readFile('/sys/devices/system/cpu/online', 'utf8')).trim();
            await pin('^tgtd -f', online);
            await pin('^qemu-storage-daemon', online);
          }
        }
      } finally {
        await device.teardown();
      }
    }
  } finally {
    for (const [path, old] of saved) if (old) await writeFile(path, old).catch(() => {});
    await cleanupDevices(run, log);
  }
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, ['variant,rep,fill,seqRead,randomRead,randomWrite', ...rows.map((r) => `${r.variant},${r.rep},${r.fill},${r.seq},${r.random},${r.write}`)].join('\n') + '\n');
  const range = (xs: number[]) => (Math.min(...xs) === Math.max(...xs) ? `${Math.min(...xs)}` : `${Math.min(...xs)}-${Math.max(...xs)}`);
  const table = ['| variant | knob | fill | seq-read | random-read | random-write |', '|---|---|---|---|---|---|'];
  for (const v of variants) {
    const mine = rows.filter((r) => r.variant === v.name);
    if (mine.length === 0) continue;
    table.push(`| ${v.name} | ${v.knob} | ${range(mine.map((r) => r.fill))} | ${range(mine.map((r) => r.seq))} | ${range(mine.map((r) => r.random))} | ${range(mine.map((r) => r.write))} |`);
  }
  await writeFile(join(dirname(out), 'knobs.md'), table.join('\n') + '\n');
  console.log(`\n${table.join('\n')}\n\nwritten to ${out}`);
  const leftover = (await readMounts()).filter((m) => m.target.startsWith('/run/rswap/bench-swap'));
  if (leftover.length > 0) throw new Error(`mounts left: ${leftover.map((m) => m.target).join(', ')}`);
}

if (process.argv[1]?.endsWith('swap/knobs.js')) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
