/**
 * The fastest fill a host without swap survives: on a fresh testbed (host-a lends, host-b is a
 * memory cgroup of 128 MiB with no swap anywhere), a workload fills 256 MiB at a stated rate and
 * reads it back. Rescued: it completes with every byte verified. Not rescued: the OOM killer ended
 * it (the monitor's warning, its lead time at the fill rate, came too late for a lease). The
 * monitor runs with its defaults (--headroom-lead-s 5); each rate runs several times, and the
 * fastest rate rescued every time is the result.
 * Usage: node dist/bench/swapless.js [--rates 4,8,16,32,64] [--runs 3]
 *          [--out bench/results/swapless.json] [--dir /run/rswap/bench-swapless] [--nats-port 14225]
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import pino from 'pino';
import { createRunner } from '../shared/runner.js';
import { readSwaps } from '../shared/procfs.js';
import { MiB } from '../shared/units.js';
import { waitFor } from '../shared/wait.js';
import { testbedBus, testbedDown, testbedUp } from '../cli/testbed/testbed.js';
import { listLeases } from '../cli/operator.js';
import { startWorkload } from './run-workload.js';
import { arg } from './args.js';

export interface RateRun {
  mibPerS: number;
  rescued: boolean;
  /** Leases that came up for it. */
  leases: number;
  ms: number;
  detail: string;
}

/** The fastest rate rescued in every one of its runs, and below which no rate failed (else undefined). */
export function fastestRescued(runs: RateRun[]): number | undefined {
  const rates = [...new Set(runs.map((r) => r.mibPerS))].sort((a, b) => a - b);
  let fastest: number | undefined;
  for (const rate of rates) {
    if (!runs.filter((r) => r.mibPerS === rate).every((r) => r.rescued)) break;
    fastest = rate;
  }
  return fastest;
}

async function main(): Promise<void> {
  const rates = arg('rates', '4,8,16,32,64').split(',').map(Number);
  const runsPerRate = Number(arg('runs', '3'));
  const out = arg('out', 'bench/results/swapless.json');
  const dir = arg('dir', '/run/rswap/bench-swapless');
  const foreign = await readSwaps();
  if (foreign.length > 0) throw new Error(`this machine has swap areas (${foreign.map((a) => a.path).join(', ')}): no cgroup here is without swap`);
  const log = pino({ level: 'silent' });
  const run = createRunner(log);
  const results: RateRun[] = [];
  let lenderBorrowed: number | undefined;
  try {
    const tb = await testbedUp(run, log, {
      dir,
      hosts: 2,
      natsPort: Number(arg('nats-port', '14225')),
      memoryBytes: [1536 * MiB, 128 * MiB],
      reserveBytes: [256 * MiB, 32 * MiB],
      brokerArgs: ['--release-cooldown-ms', '2000'],
      monitorArgs: ['--exit-hold-ms', '2000'],
    });
    const borrower = tb.hosts[1]!;
    for (const mibPerS of rates) {
      for (let i = 0; i < runsPerRate; i += 1) {
        const before = new Set((await listLeases(testbedBus(tb))).map((l) => l.id));
        const started = Date.now();
        const outcome = await startWorkload(borrower.cgroup, ['--bytes', '256MiB', '--fill-mib-per-s', String(mibPerS)]).result.then(
          (report) => (report.corruptedChunks === 0 ? { rescued: true, detail: `${report.pswpinDelta} pages swapped in` } : { rescued: false, detail: `${report.corruptedChunks} chunks corrupted` }),
          (error: Error) => ({ rescued: false, detail: error.message.split('\n')[0]! }),
        );
        const ms = Date.now() - started;
        const mine = (await listLeases(testbedBus(tb))).filter((l) => !before.has(l.id) && l.borrower === borrower.name);
        const up = mine.filter((l) => l.history.some((h) => h.state === 'active'));
        results.push({ mibPerS, ...outcome, leases: up.length, ms });
        console.log(`${String(mibPerS).padStart(4)} MiB/s run ${i + 1}/${runsPerRate}: ${outcome.rescued ? 'rescued' : 'NOT rescued'} on ${up.length} lease(s) in ${ms} ms (${outcome.detail})`);
        // The next run starts on a host with nothing borrowed.
        await waitFor('the leases given back', async () => (await listLeases(testbedBus(tb))).filter((l) => l.borrower === borrower.name).every((l) => l.state === 'released' || l.state === 'failed'), { timeoutMs: 120_000, intervalMs: 250 });
      }
    }
    // The lender must never have borrowed: its borrower's leases are promises, not its memory filling.
    lenderBorrowed = (await listLeases(testbedBus(tb))).filter((l) => l.borrower !== borrower.name).length;
  } finally {
    const problems = await testbedDown(run, log, dir);
    if (problems.length > 0) console.error(`cleanup problems: ${problems.join('; ')}`);
  }
  console.log(`leases the lender took for itself: ${lenderBorrowed}`);
  const fastest = fastestRescued(results);
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, JSON.stringify({ at: new Date().toISOString(), workload: '256 MiB into a 128 MiB cgroup, no swap', headroomLeadS: 5, runsPerRate, fastestRescuedMiBPerS: fastest ?? null, lenderBorrowed, results }, null, 2) + '\n');
  console.log('\n| fill (MiB/s) | rescued | leases per run | time per run (s) |\n|---|---|---|---|');
  for (const rate of rates) {
    const rs = results.filter((r) => r.mibPerS === rate);
    console.log(`| ${rate} | ${rs.filter((r) => r.rescued).length} of ${rs.length} | ${rs.map((r) => r.leases).join(', ')} | ${rs.map((r) => (r.ms / 1000).toFixed(1)).join(', ')} |`);
  }
  console.log(`\nfastest fill rescued every time: ${fastest === undefined ? 'none' : `${fastest} MiB/s`}; written to ${out}`);
}

if (process.argv[1]?.endsWith('swapless.js')) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
