/**
 * Kernel against userspace initiator, each in a VM of the same make: two VM borrowers (same
 * kernel, memory, CPUs and image), one attaching with the kernel initiator (open-iscsi, iscsi_tcp),
 * one with the userspace one (qemu-storage-daemon, FUSE, loop), each on a lease of the same size
 * from the same tgt lender in a namespace. The swap bench's workload (bench/swap/workload.js) runs
 * in one VM at a time, the initiators taking turns, so a slow spell of the machine falls on both:
 * as in the swap bench, in a memory cgroup (cgroup v2 in the VM) with 2x its limit in data, 4 KiB
 * blocks, a sequential and a random read phase. The cgroup, in a VM with room for it, the agents
 * (about 190 MiB) and the initiator, keeps the pressure off the initiator itself: machine-wide, the
 * userspace one deadlocks (docs/reliability.md; in a 384 MiB VM it did so here too). Reported
 * as ratios kernel / userspace: under TCG (no /dev/kvm) every instruction in the VM is emulated,
 * so the absolute figures are far below real hardware and say little; the ratio is the finding.
 *
 * Usage: node dist/bench/vm-initiators.js [--vm-mib 768] [--limit-mib 128] [--data-mib 256] [--lease-mib 512]
 *          [--reps 3] [--phase-seconds 15] [--out bench/results/vm-initiators.json]
 *          [--dir /run/rswap/bench-vm-initiators] [--nats-port 14227]
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { createRunner } from '../shared/runner.js';
import { MiB } from '../shared/units.js';
import { waitFor } from '../shared/wait.js';
import { testbedBus, testbedDown, testbedUp } from '../cli/testbed/testbed.js';
import { accelerator, vmExec, vmImage } from '../cli/testbed/vm.js';
import { injectPressure, injectSurplus, listLeases, releaseLease } from '../cli/operator.js';
import type { SwapWorkloadReport } from './swap/workload.js';
import { arg } from './args.js';
import { INITIATORS, initiatorPair, type InitiatorName } from './vm-pair.js';

const WORKLOAD = resolve(fileURLToPath(import.meta.url), '../swap/workload.js');
const MODES = ['seq-read', 'random-read'] as const;

export interface InitiatorRun {
  initiator: InitiatorName;
  rep: number;
  /** MB/s (10^6 bytes/s) per phase, and pages swapped in during it. */
  phases: Record<string, { mbps: number; pswpin: number; timeCapped: boolean }>;
  fillMbps: number;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** Per mode: each initiator's median and range over its runs, and the ratio of the medians. */
export function summarize(runs: InitiatorRun[]): { mode: string; kernel: number[]; userspace: number[]; ratio: number }[] {
  return ['fill', ...MODES].map((mode) => {
    const of = (initiator: InitiatorName) => runs.filter((r) => r.initiator === initiator).map((r) => (mode === 'fill' ? r.fillMbps : r.phases[mode]?.mbps ?? 0));
    const kernel = of('kernel');
    const userspace = of('userspace');
    return { mode, kernel, userspace, ratio: median(userspace) > 0 ? median(kernel) / median(userspace) : 0 };
  });
}

async function main(): Promise<void> {
  const vmMiB = Number(arg('vm-mib', '768'));
  const limitMiB = Number(arg('limit-mib', '128'));
  const dataMiB = Number(arg('data-mib', '256'));
  const leaseMiB = Number(arg('lease-mib', '512'));
  const reps = Number(arg('reps', '3'));
  const phaseSeconds = Number(arg('phase-seconds', '15'));
  const out = arg('out', 'bench/results/vm-initiators.json');
  const dir = arg('dir', '/run/rswap/bench-vm-initiators');
  const log = pino({ level: 'silent' });
  const run = createRunner(log);
  const runs: InitiatorRun[] = [];
  let accel = '';
  try {
    // Leases by hand (no monitors): the same size for both, and nothing else moving.
    const tb = await testbedUp(run, log, initiatorPair(dir, vmMiB, Number(arg('nats-port', '14227')), { monitors: false }));
    accel = await accelerator(await vmImage(log));
    const vms = tb.vms!;
    for (const vm of vms) {
      // One lease each, of the same size, from host-a (its offer injected: no monitors run).
      await injectSurplus(testbedBus(tb, 'host-a'), 'host-a', `${2 * leaseMiB * MiB}`, '0');
      await injectPressure(testbedBus(tb, vm.name), vm.name, `${leaseMiB * MiB}`);
      const lease = await waitFor(`a lease for ${vm.name}`, async () => (await listLeases(testbedBus(tb))).find((l) => l.borrower === vm.name && (l.state === 'active' || l.state === 'failed')), { timeoutMs: 600_000, intervalMs: 500 });
      if (lease.state !== 'active') throw new Error(`the lease for ${vm.name} failed: ${lease.reason ?? 'no reason given'}`);
      console.log(`${vm.name}: ${lease.initiator} initiator on ${lease.device} (${leaseMiB} MiB from ${lease.lender})`);
    }
    for (let rep = 1; rep <= reps; rep++) {
      // Turns alternate which initiator goes first, so neither always runs on a warmer machine.
      const order = rep % 2 ? [0, 1] : [1, 0];
      for (const i of order) {
        const vm = vms[i]!;
        const initiator = INITIATORS[i]!;
        // A fresh cgroup per run (cgroup v2, mounted on first use), the workload alone in it.
        const cg = `/sys/fs/cgroup/rswap-bench-${rep}`;
        const script = [
          'grep -q " /sys/fs/cgroup cgroup2 " /proc/mounts || mount -t cgroup2 none /sys/fs/cgroup',
          'echo +memory > /sys/fs/cgroup/cgroup.subtree_control',
          `mkdir -p ${cg} && echo ${limitMiB * MiB} > ${cg}/memory.max`,
          'sync; echo 3 > /proc/sys/vm/drop_caches',
          `sh -c 'echo $$ > ${cg}/cgroup.procs && exec node ${WORKLOAD} --data ${dataMiB}MiB --block 4KiB --modes ${MODES.join(',')} --phase-seconds ${phaseSeconds} --seed ${rep}'; echo rc=$?`,
          `rmdir ${cg}`,
        ].join('\n');
        const job = await vmExec(vm.dir, script, 1_800_000, 180_000);
        const line = job.output.split('\n').find((l) => l.startsWith('{'));
        if (!line) throw new Error(`${initiator}: no report from the workload: ${job.output.slice(-500)}`);
        const report = JSON.parse(line) as SwapWorkloadReport;
        const phases = Object.fromEntries(MODES.map((m) => [m, { mbps: report.phases[m]!.mbps, pswpin: report.phases[m]!.pswpin, timeCapped: report.phases[m]!.timeCapped }]));
        runs.push({ initiator, rep, phases, fillMbps: report.fill.mbps });
        console.log(`rep ${rep} ${initiator}: fill ${report.fill.mbps.toFixed(1)} MB/s, ${MODES.map((m) => `${m} ${report.phases[m]!.mbps.toFixed(2)} MB/s (${report.phases[m]!.pswpin} pages in)`).join(', ')}`);
      }
    }
    for (const lease of (await listLeases(testbedBus(tb))).filter((l) => l.state === 'active')) await releaseLease(testbedBus(tb), lease.id);
  } finally {
    const problems = await testbedDown(run, log, dir);
    if (problems.length > 0) console.error(`cleanup problems: ${problems.join('; ')}`);
  }
  const summary = summarize(runs);
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify({ at: new Date().toISOString(), accel, vmMiB, limitMiB, dataMiB, leaseMiB, blockBytes: 4096, phaseSeconds, reps, summary, runs }, null, 2) + '\n');
  const range = (xs: number[]) => `${median(xs).toFixed(2)} (${Math.min(...xs).toFixed(2)}-${Math.max(...xs).toFixed(2)})`;
  console.log('\n| phase | kernel MB/s, median (range) | userspace MB/s, median (range) | kernel / userspace |\n|---|---|---|---|');
  for (const s of summary) console.log(`| ${s.mode} | ${range(s.kernel)} | ${range(s.userspace)} | ${s.ratio.toFixed(2)}x |`);
  console.log(`\n${reps} runs each, ${accel}; written to ${out}`);
}

if (process.argv[1]?.endsWith('vm-initiators.js')) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
