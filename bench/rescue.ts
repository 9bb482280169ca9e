/**
 * Time to rescue: from the onset of pressure on a borrower to remote swap active, over many runs,
 * on a fresh testbed (host-a lends 1 GiB, host-b has 128 MiB and a local-disk swap file).
 *
 * Each run starts a workload on host-b that fills twice its memory and reads it back. Onset is the
 * first page host-b swaps out, seen by this bench polling host-b's cgroup every 2 ms (independent
 * of the monitor). The phases come from the events and the lease record:
 *   detect  onset -> the monitor publishes pressure (includes its 500 ms enter hold)
 *   match   pressure -> lease requested (broker: placement, KV writes)
 *   export  requested -> exported (exporter: ramfs, image, tgt target, CHAP)
 *   attach  exported -> active (attacher: login, self-test, mkswap, swapon)
 * Then the workload finishes verifying, the lease goes back after a 1 s cool-down, and the next run
 * starts. Usage: node dist/bench/rescue.js [--runs 20] [--out bench/results/rescue.json]
 *                                       [--dir /run/rswap/bench-rescue] [--nats-port 14224] [--unsealed]
 * Leases are sealed, as by default (docs/security.md); --unsealed runs the attacher with --unsealed,
 * to show what sealing adds to the attach phase.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { connectAs } from '../shared/nats.js';
import pino from 'pino';
import { createRunner } from '../shared/runner.js';
import { subjects } from '../shared/subjects.js';
import { LeaseStateEvent, PressureEvent, type LeaseRecord } from '../shared/schemas.js';
import { MiB } from '../shared/units.js';
import { waitFor } from '../shared/wait.js';
import { testbedBus, testbedDown, testbedUp } from '../cli/testbed/testbed.js';
import { startWorkload } from './run-workload.js';
import { openSource } from '../services/monitor/sources.js';
import { arg } from './args.js';

const PHASES = ['detect', 'match', 'export', 'attach', 'total'] as const;
type Phase = (typeof PHASES)[number];

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length) - 1;
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank))]!;
}

async function main(): Promise<void> {
  const runs = Number(arg('runs', '20'));
  const out = arg('out', 'bench/results/rescue.json');
  const dir = arg('dir', '/run/rswap/bench-rescue');
  const log = pino({ level: 'silent' });
  const run = createRunner(log);
  const results: Array<Record<Phase, number>> = [];
  const missed: Array<Record<string, unknown>> = [];
  let interrupted = false;
  // `on`, not `once`: execa's exit hook re-raises a signal that finds no other listener left.
  // SIGINT or SIGTERM (a test's timeout): no new run starts, and the testbed is taken down.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      interrupted = true;
    });
  }
  try {
    const tb = await testbedUp(run, log, {
      dir,
      hosts: 2,
      natsPort: Number(arg('nats-port', '14224')),
      memoryBytes: [1024 * MiB, 128 * MiB],
      reserveBytes: [256 * MiB, 32 * MiB],
      localSwapBytes: 512 * MiB,
      brokerArgs: ['--release-cooldown-ms', '1000'],
      monitorArgs: ['--exit-hold-ms', '1000'],
      ...(process.argv.includes('--unsealed') ? { attacherArgs: ['--unsealed'] } : {}),
    });
    const borrower = tb.hosts[1]!;
    // The monitor's own reader of a cgroup: swap in use is total_swap (v1) or memory.swap.current (v2).
    const cgroup = await openSource(`cgroup:${borrower.cgroup}`);
    const swapUsed = async () => (await cgroup.read()).swapUsedBytes;
    const nc = await connectAs(testbedBus(tb, 'observer'), 'rswap-bench-rescue');
    const pressures: PressureEvent[] = [];
    const leases = new Map<string, LeaseRecord>();
    nc.subscribe(subjects.pressure(borrower.name), { callback: (_e, m) => void pressures.push(PressureEvent.parse(m.json())) });
    nc.subscribe(subjects.allLeaseStates, {
      callback: (_e, m) => {
        const { lease } = LeaseStateEvent.parse(m.json());
        leases.set(lease.id, lease);
      },
    });
    for (let i = 0; i < runs && !interrupted; i += 1) {
      pressures.length = 0;
      leases.clear();
      // Swap slots of the previous run may still be charged for a moment: onset is growth past them.
      const swapBefore = await swapUsed();
      const started = Date.now();
      const workload = startWorkload(borrower.cgroup, ['--bytes', '256MiB']);
      workload.result.catch(() => undefined); // awaited below; a failure meanwhile must not crash the bench before its cleanup
      let onset: number | undefined;
      while (onset === undefined && Date.now() - started < 60_000) {
        if ((await swapUsed()) > swapBefore) onset = Date.now();
        else await new Promise((r) => setTimeout(r, 2));
      }
      const first = await waitFor('a lease active', async () => [...leases.values()].sort((a, b) => a.createdAt - b.createdAt).find((l) => l.state === 'active'), {
        timeoutMs: 60_000,
        intervalMs: 20,
      }).catch(() => undefined);
      if (!first) {
        // A rescue that never came is a result, not a crash: count it, say why, go on.
        const report = await workload.result.catch((error: unknown) => ({ error: String(error) }));
        missed.push({ run: i + 1, pressures: pressures.length, leases: [...leases.values()].map((l) => `${l.id} ${l.state} ${l.reason ?? ''}`), workload: report });
        console.log(`run ${String(i + 1).padStart(2)}/${runs}: NOT RESCUED (${pressures.length} pressure events, leases: ${[...leases.values()].map((l) => l.state).join(', ') || 'none'})`);
        await waitFor('leases back after the cool-down', async () => [...leases.values()].every((l) => l.state === 'released' || l.state === 'failed'), { timeoutMs: 60_000, intervalMs: 100 });
        continue;
      }
      const pressure = pressures.find((p) => p.onsetAt !== undefined)!;
      const at = (state: string) => first.history.find((h) => h.state === state)!.at;
      const r: Record<Phase, number> = {
        detect: pressure.at! - onset!,
        match: at('requested') - pressure.at!,
        export: at('exported') - at('requested'),
        attach: at('active') - at('exported'),
        total: at('active') - onset!,
      };
      results.push(r);
      console.log(`run ${String(i + 1).padStart(2)}/${runs}: ${PHASES.map((p) => `${p} ${r[p]}ms`).join(', ')} (monitor onset ${pressure.onsetAt! - onset!}ms after the first swap-out)`);
      const report = await workload.result;
      if (report.corruptedChunks !== 0) throw new Error(`run ${i + 1}: ${report.corruptedChunks} corrupted chunks`);
      await waitFor('leases back after the cool-down', async () => [...leases.values()].every((l) => l.state === 'released' || l.state === 'failed'), { timeoutMs: 60_000, intervalMs: 100 });
    }
    await nc.drain();
  } finally {
    const problems = await testbedDown(run, log, dir);
    if (problems.length > 0) console.error(`cleanup problems: ${problems.join('; ')}`);
  }
  const summary = Object.fromEntries(
    PHASES.map((p) => {
      const sorted = results.map((r) => r[p]).sort((a, b) => a - b);
      return [p, { p50: percentile(sorted, 50), p95: percentile(sorted, 95), min: sorted[0], max: sorted.at(-1) }];
    }),
  );
  await mkdir(dirname(out), { recursive: true });
  const attempted = results.length + missed.length;
  const sealed = !process.argv.includes('--unsealed');
  await writeFile(out, JSON.stringify({ runs: results.length, attempted, rescued: results.length, sealed, missed, at: new Date().toISOString(), summary, results }, null, 2) + '\n');
  console.log(`\n| phase | p50 (ms) | p95 (ms) | min | max |\n|---|---|---|---|---|`);
  for (const p of PHASES) console.log(`| ${p} | ${summary[p]!.p50} | ${summary[p]!.p95} | ${summary[p]!.min} | ${summary[p]!.max} |`);
  console.log(`\n${results.length} of ${attempted} runs rescued; written to ${out}`);
  if (missed.length > 0) process.exitCode = 1;
}

if (process.argv[1]?.endsWith('rescue.js')) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
