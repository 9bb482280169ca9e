/**
 * Machine-wide memory pressure with each initiator, in VMs (never on this machine itself): two VM
 * borrowers without swap, their monitors watching the whole machine, one with the kernel initiator
 * (open-iscsi, iscsi_tcp), one with the userspace one (qemu-storage-daemon, FUSE, loop). In each, in
 * turn, a workload fills twice the VM's RAM at a stated rate with no memory cgroup around it and
 * reads it back, under a watchdog: a VM whose heartbeat stops for --stall-s is stalled (swapping
 * needs memory the path cannot get: a deadlock, or close enough). Outcomes: completed (every byte
 * verified), oom-killed, stalled, failed. The VM's settings (min_free_kbytes,
 * watermark_scale_factor) are recorded, and can be set with --min-free-kbytes.
 * Usage: node dist/bench/vm-pressure.js [--vm-mib 384] [--fill-mib-per-s 8] [--stall-s 120]
 *          [--min-free-kbytes N] [--headroom-lead-s 30] [--out bench/results/vm-pressure.json]
 *          [--dir /run/rswap/bench-vm-pressure] [--nats-port 14226]
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { createRunner } from '../shared/runner.js';
import { MiB } from '../shared/units.js';
import { waitFor } from '../shared/wait.js';
import { killTestbedProcess, testbedBus, testbedDown, testbedUp } from '../cli/testbed/testbed.js';
import { VmStalled, accelerator, vmExec, vmImage } from '../cli/testbed/vm.js';
import { listLeases } from '../cli/operator.js';
import { arg } from './args.js';
import { INITIATORS, initiatorPair } from './vm-pair.js';

const WORKLOAD = resolve(fileURLToPath(import.meta.url), '../workload.js');

interface Outcome {
  initiator: (typeof INITIATORS)[number];
  outcome: 'completed' | 'oom-killed' | 'stalled' | 'failed';
  seconds: number;
  leases: number;
  settings: Record<string, string>;
  /** What the kernel said: OOM kills and hung tasks, from the VM's console. */
  kernel: string[];
  detail: string;
}

async function main(): Promise<void> {
  const vmMiB = Number(arg('vm-mib', '384'));
  const rate = Number(arg('fill-mib-per-s', '8'));
  const stallMs = Number(arg('stall-s', '120')) * 1000;
  const minFree = arg('min-free-kbytes', '');
  const out = arg('out', 'bench/results/vm-pressure.json');
  const dir = arg('dir', '/run/rswap/bench-vm-pressure');
  const log = pino({ level: 'silent' });
  const run = createRunner(log);
  const results: Outcome[] = [];
  let accel = '';
  try {
    const tb = await testbedUp(run, log, initiatorPair(dir, vmMiB, Number(arg('nats-port', '14226')), {
      brokerArgs: ['--release-cooldown-ms', '3000'],
      // As in test/e2e/vm-pressure.test.ts: under TCG a lease takes 10-30 s to come up, so the
      // monitors ask 30 s ahead; the VMs are too small for the default swap-off margin (256 MiB).
      monitorArgs: ['--exit-hold-ms', '2000', '--headroom-lead-s', arg('headroom-lead-s', '30')],
      attacherArgs: ['--swapoff-margin-bytes', '32MiB'],
    }));
    accel = await accelerator(await vmImage(log)); // as the testbed chose it
    for (const [i, initiator] of INITIATORS.entries()) {
      const vm = tb.vms![i]!;
      console.log(`${vm.name} (${initiator} initiator, ${vmMiB} MiB, no swap) ready in ${((vm.readyMs ?? 0) / 1000).toFixed(0)} s`);
      const set = minFree ? `sysctl -w vm.min_free_kbytes=${minFree} >/dev/null; ` : '';
      const settings = Object.fromEntries(
        (await vmExec(vm.dir, `${set}for k in min_free_kbytes watermark_scale_factor; do echo "$k=$(cat /proc/sys/vm/$k)"; done`)).output
          .split('\n')
          .filter((l) => l.includes('='))
          .map((l) => l.split('=') as [string, string]),
      );
      const started = Date.now();
      let outcome: Outcome['outcome'];
      let detail: string;
      let kernel: string[] = [];
      try {
        const job = await vmExec(vm.dir, `dmesg -C; node ${WORKLOAD} --bytes ${2 * vmMiB}MiB --fill-mib-per-s ${rate}; echo rc=$?; dmesg | grep -E 'Out of memory|blocked for more than|page allocation failure' | head -20`, 1_800_000, stallMs);
        kernel = job.output.split('\n').filter((l) => /Out of memory|blocked for more than|page allocation failure/.test(l));
        const report = job.output.split('\n').find((l) => l.startsWith('{"bytes"'));
        const corrupted = report ? (JSON.parse(report) as { corruptedChunks: number }).corruptedChunks : undefined;
        outcome = corrupted === 0 ? 'completed' : kernel.some((l) => /Out of memory: Killed process \d+ \(node\)/.test(l)) ? 'oom-killed' : 'failed';
        detail = corrupted === undefined ? job.output.trim().split('\n').slice(-3).join(' | ') : `${corrupted} chunks corrupted`;
      } catch (error) {
        outcome = error instanceof VmStalled ? 'stalled' : 'failed';
        detail = (error as Error).message;
        // What the stalled kernel still printed on its console (hung tasks are errors: quiet keeps them).
        const console_ = await readFile(join(vm.dir, 'console.log'), 'utf8').catch(() => '');
        kernel = console_.split('\n').filter((l) => /Out of memory|blocked for more than/.test(l)).slice(0, 20);
        // A stalled VM would go on burning CPU under the next one's measurement.
        await killTestbedProcess(tb, `${vm.name}/vm`).catch(() => undefined);
      }
      const seconds = Math.round((Date.now() - started) / 1000);
      const leases = (await listLeases(testbedBus(tb))).filter((l) => l.borrower === vm.name && l.history.some((h) => h.state === 'active')).length;
      results.push({ initiator, outcome, seconds, leases, settings, kernel, detail });
      console.log(`${initiator}: ${outcome} after ${seconds} s on ${leases} lease(s) (${detail}); ${kernel.length} kernel reports`);
      if (outcome !== 'stalled' && outcome !== 'failed') {
        await waitFor('the leases given back', async () => (await listLeases(testbedBus(tb))).filter((l) => l.borrower === vm.name).every((l) => l.state === 'released' || l.state === 'failed'), { timeoutMs: 300_000, intervalMs: 500 }).catch((error: Error) => console.log(`${initiator}: ${error.message}`));
      }
    }
  } finally {
    const problems = await testbedDown(run, log, dir);
    if (problems.length > 0) console.error(`cleanup problems: ${problems.join('; ')}`);
  }
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify({ at: new Date().toISOString(), accel, vmMiB, workload: `${2 * vmMiB} MiB at ${rate} MiB/s, one read-back`, stallS: stallMs / 1000, results }, null, 2) + '\n');
  console.log('\n| initiator | outcome | time (s) | leases | min_free_kbytes | watermark_scale_factor |\n|---|---|---|---|---|---|');
  for (const r of results) console.log(`| ${r.initiator} | ${r.outcome} | ${r.seconds} | ${r.leases} | ${r.settings.min_free_kbytes ?? '?'} | ${r.settings.watermark_scale_factor ?? '?'} |`);
  console.log(`\nwritten to ${out}`);
}

if (process.argv[1]?.endsWith('vm-pressure.js')) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
