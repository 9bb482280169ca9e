/**
 * The demo: rswap doing its job unattended, on a fresh two-host testbed.
 *
 * host-a has 1 GiB and lends; host-b has 128 MiB. A workload whose working set is twice host-b's
 * memory runs twice: first with only the local-disk swap file (in a cgroup no monitor watches, so
 * nothing rescues it), then on host-b itself, where the monitor sees it thrash, the broker lends
 * host-a's RAM and host-b swaps onto it. A live timeline shows each step as NATS reports it; the
 * summary compares the two runs. Everything is removed at the end, also on Ctrl-C.
 */
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import type { NatsConnection } from '@nats-io/transport-node';
import { createLogger } from '../shared/log.js';
import { createRunner } from '../shared/runner.js';
import { createMemoryCgroup } from '../shared/cgroup.js';
import { subjects } from '../shared/subjects.js';
import { LeaseStateEvent, PressureEvent, type LeaseRecord } from '../shared/schemas.js';
import { MiB, formatBytes } from '../shared/units.js';
import { waitFor } from '../shared/wait.js';
import { startWorkload, type Progress, type WorkloadReport } from '../bench/run-workload.js';
import { NETNS_PREFIX, testbedBus, testbedDown, testbedUp, type Testbed } from './testbed/testbed.js';
import { withNats } from './operator.js';

const BORROWER_MEMORY = 128 * MiB;
const DATA_BYTES = 2 * BORROWER_MEMORY;
const PASSES = 2;

type Say = (text: string) => void;

/** One line that redraws in place on a terminal; on a pipe, a line at each quarter. */
function progressLine(say: Say): (p: Progress) => void {
  const tty = process.stdout.isTTY;
  let lastQuarter = -1;
  let lastPhase = '';
  return (p) => {
    if (p.done === undefined || !p.total) return;
    const fraction = p.done / p.total;
    if (tty) {
      const width = 30;
      const bar = '#'.repeat(Math.round(fraction * width)).padEnd(width, '.');
      process.stdout.write(`\r         ${p.phase.padEnd(9)} [${bar}] ${String(Math.round(fraction * 100)).padStart(3)}%`);
      if (p.done === p.total) process.stdout.write('\n');
      return;
    }
    const quarter = Math.floor(fraction * 4);
    if (quarter !== lastQuarter || p.phase !== lastPhase) {
      lastQuarter = quarter;
      lastPhase = p.phase;
      if (quarter > 0) say(`workload ${p.phase}: ${quarter * 25}%`);
    }
  };
}

function describe(lease: LeaseRecord): string {
  switch (lease.state) {
    case 'requested':
      return `lease ${lease.id} matched: ${formatBytes(lease.sizeBytes)} of ${lease.lender}'s RAM for ${lease.borrower}`;
    case 'exported':
      return `lease ${lease.id} exported: ${lease.lender} serves a ramfs-backed iSCSI target at ${lease.target?.portal}`;
    case 'active':
      return `lease ${lease.id} active: ${lease.borrower} swaps on ${lease.device} (${lease.initiator} initiator) above its disk swap`;
    case 'draining':
      return `lease ${lease.id} draining: ${lease.borrower} swaps off (${lease.reason ?? 'released'})`;
    case 'released':
      return `lease ${lease.id} released: ${lease.lender} removed the target and the ramfs`;
    default:
      return `lease ${lease.id} ${lease.state}${lease.reason ? `: ${lease.reason}` : ''}`;
  }
}

/** Prints pressure, relief and lease events for the borrower as they arrive on NATS. */
function followTimeline(nc: NatsConnection, borrower: string, say: Say, leases: Map<string, LeaseRecord>, onsets: number[]): void {
  nc.subscribe(subjects.pressure(borrower), {
    callback: (_e, msg) => {
      const event = PressureEvent.parse(msg.json());
      if (event.onsetAt === undefined) return; // repeats of the same spell
      onsets.push(event.onsetAt);
      const s = event.signals;
      const swapMBs = s ? ((s.swapPagesPerS + s.refaultsPerS) * 4096) / 1e6 : 0;
      say(`${borrower} monitor: thrashing (${swapMBs.toFixed(0)} MB/s of swap traffic, ${formatBytes(s?.swapUsedBytes ?? 0)} in swap); asks for ${formatBytes(event.neededBytes)}`);
    },
  });
  let reliefShown = false;
  nc.subscribe(subjects.relief(borrower), {
    callback: () => {
      if (!reliefShown && [...leases.values()].some((l) => l.state === 'active')) {
        reliefShown = true;
        say(`${borrower} monitor: pressure cleared; leases go back after the broker's cool-down`);
      }
    },
  });
  nc.subscribe(subjects.allLeaseStates, {
    callback: (_e, msg) => {
      const { lease } = LeaseStateEvent.parse(msg.json());
      if (lease.borrower !== borrower || leases.get(lease.id)?.state === lease.state) return;
      leases.set(lease.id, lease);
      if (lease.state !== 'exporting' && lease.state !== 'attaching') say(describe(lease));
    },
  });
}

async function runWorkload(cgroupPath: string, say: Say): Promise<WorkloadReport> {
  const report = await startWorkload(cgroupPath, ['--bytes', String(DATA_BYTES), '--passes', String(PASSES)], progressLine(say)).result;
  say(`workload done in ${(report.totalMs / 1000).toFixed(1)}s: ${report.chunks} chunks, ${report.corruptedChunks === 0 ? 'every byte intact' : `${report.corruptedChunks} CORRUPTED`}, ${report.pswpinDelta} pages swapped in`);
  return report;
}

export async function runDemo(dir: string): Promise<void> {
  const log = createLogger('demo');
  log.level = 'warn';
  const run = createRunner(log);
  const t0 = Date.now();
  const say: Say = (text) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${text}`);
  // One cleanup, however many ask: a Ctrl-C during the final cleanup waits for it to finish.
  let cleaning: Promise<void> | undefined;
  const cleanUp = () =>
    (cleaning ??= (async () => {
      say('removing the testbed');
      const problems = await testbedDown(run, log, dir);
      say(problems.length === 0 ? 'testbed removed: no target, mount, loop device, swap area, cgroup or namespace left' : `cleanup problems: ${problems.join('; ')}`);
    })());
  // `on`, not `once`: execa's exit hook re-raises a signal that finds no other listener left,
  // which would end the demo before its cleanup. A second Ctrl-C waits for the same cleanup.
  let interrupted: Promise<void> | undefined;
  process.on('SIGINT', () => {
    if (interrupted) return;
    console.log('\ninterrupted: cleaning up');
    interrupted = cleanUp().then(() => process.exit(130));
  });
  try {
    say('creating a testbed: NATS, broker; host-a (1GiB, lends) and host-b (128MiB) in network namespaces, each with a monitor, exporter and attacher; a 512MiB swap file on local disk');
    const tb: Testbed = await testbedUp(run, log, {
      dir,
      hosts: 2,
      natsPort: 14223,
      memoryBytes: [1024 * MiB, BORROWER_MEMORY],
      reserveBytes: [256 * MiB, 32 * MiB],
      localSwapBytes: 512 * MiB,
      brokerArgs: ['--release-cooldown-ms', '5000'],
      monitorArgs: ['--exit-hold-ms', '2000'],
    });
    const borrower = tb.hosts[1]!;
    const workloadText = `${formatBytes(DATA_BYTES)} of random data in ${formatBytes(BORROWER_MEMORY)}, read back ${PASSES}x and verified`;

    say(`run 1, local-disk swap only: ${workloadText}, in a cgroup no monitor watches`);
    const baselineCgroup = await createMemoryCgroup(`${NETNS_PREFIX}host-b-local-only`, BORROWER_MEMORY);
    let baseline: WorkloadReport;
    try {
      baseline = await runWorkload(baselineCgroup.path, say);
    } finally {
      await baselineCgroup.remove();
    }

    const leases = new Map<string, LeaseRecord>();
    const onsets: number[] = [];
    const { report, rescueMs } = await withNats(testbedBus(tb), async (nc) => {
      followTimeline(nc, borrower.name, say, leases, onsets);
      await nc.flush();
      say(`run 2, with rswap: the same workload on ${borrower.name}; nobody types a command from here on`);
      const report = await runWorkload(borrower.cgroup, say);
      const activeAt = [...leases.values()].map((l) => l.history?.find((h) => h.state === 'active')?.at).filter((t): t is number => t !== undefined);
      // Time to rescue: from the first sample over the enter threshold to remote swap on.
      const rescueMs = activeAt.length > 0 && onsets.length > 0 ? Math.min(...activeAt) - onsets[0]! : undefined;
      if (leases.size === 0) throw new Error('no lease came up while the workload ran (the broker and monitor logs below say why)');
      await waitFor('the leases to go back after the cool-down', async () => {
        const all = [...leases.values()];
        return all.length > 0 && all.every((l) => l.state === 'released' || l.state === 'failed');
      }, { timeoutMs: 120_000, intervalMs: 200 });
      return { report, rescueMs };
    });

    const speedup = baseline.totalMs / report.totalMs;
    console.log('');
    console.log('summary');
    console.log(`  workload              ${workloadText}`);
    console.log(`  local-disk swap only  ${(baseline.totalMs / 1000).toFixed(1)}s`);
    console.log(`  with rswap            ${(report.totalMs / 1000).toFixed(1)}s  (${speedup >= 1 ? `${speedup.toFixed(2)}x faster` : `${(1 / speedup).toFixed(2)}x slower`})`);
    if (rescueMs !== undefined) console.log(`  time to rescue        ${(rescueMs / 1000).toFixed(2)}s from the onset of thrashing to remote swap on`);
    console.log(`  data                  ${baseline.corruptedChunks + report.corruptedChunks === 0 ? 'every byte verified in both runs' : 'CORRUPTION FOUND'}`);
    console.log(`  logs                  ${join(dir, '*.log')} (removed with the testbed)`);
    console.log('');
    if (baseline.corruptedChunks + report.corruptedChunks > 0) process.exitCode = 1;
  } catch (error) {
    // The logs go with the testbed: show what the services said before they do.
    for (const file of ['broker.log', 'host-a/monitor.log', 'host-b/monitor.log', 'host-a/exporter.log', 'host-b/attacher.log']) {
      const lines = (await readFile(join(dir, file), 'utf8').catch(() => '')).split('\n').filter((l) => /"level":(4|5|6)0/.test(l) || /pressure|cannot serve/.test(l));
      if (lines.length > 0) console.error(`--- ${file} (warnings, errors, pressure) ---\n${lines.slice(-15).join('\n')}`);
    }
    throw error;
  } finally {
    await cleanUp();
  }
}
