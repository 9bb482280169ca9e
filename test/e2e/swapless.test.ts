/**
 * A host without swap, the default on cloud VMs and Kubernetes nodes: a workload that outgrows its
 * memory is OOM-killed before any thrashing signal fires. The monitor asks for remote memory when,
 * at the rate memory fills, it would run out within its lead time (--headroom-lead-s), so the lease
 * is swap before the OOM killer acts. Shown on a memory cgroup of 128 MiB with no swap anywhere:
 * 256 MiB filled at 16 MiB/s completes with every byte verified; without rswap, it is OOM-killed.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { readSwaps } from '../../shared/procfs.js';
import { createMemoryCgroup } from '../../shared/cgroup.js';
import { NETNS_PREFIX, testbedBus, testbedDown, testbedUp, type Testbed } from '../../cli/testbed/testbed.js';
import { listLeases } from '../../cli/operator.js';
import { startWorkload } from '../../bench/run-workload.js';
import { freePort } from '../helpers/nats.js';
import { waitFor } from '../../shared/wait.js';

const MiB = 1024 ** 2;
const DIR = '/run/rswap/test-swapless';
const FILL = ['--bytes', '256MiB', '--fill-mib-per-s', '16'];
const log = pino({ level: 'silent' });
const run = createRunner(log);
let tb: Testbed | undefined;
/** Swap areas on this machine that are not ours: with any, no cgroup here is swapless. */
let foreignSwap: string[] = [];

before(async () => {
  foreignSwap = (await readSwaps()).map((a) => a.path);
  if (foreignSwap.length > 0) return;
  tb = await testbedUp(run, log, {
    dir: DIR,
    hosts: 2,
    natsPort: await freePort(),
    memoryBytes: [1024 * MiB, 128 * MiB], // no local swap file: nothing to swap to but leases
    reserveBytes: [256 * MiB, 32 * MiB],
    brokerArgs: ['--release-cooldown-ms', '3000'],
    // Twice the default lead: the test shows the mechanism, and a loaded machine (CI beside other
    // jobs) may take several seconds to bring a lease up. How fast a fill the default rescues is
    // measured in bench/, not asserted here.
    monitorArgs: ['--exit-hold-ms', '2000', '--headroom-lead-s', '10'],
  });
});

after(async () => {
  if (!tb) return;
  assert.deepEqual(await testbedDown(run, log, DIR), []);
});

test('swapless - a workload filling a swapless host at 16 MiB/s to twice its memory completes with rswap; without it, the OOM killer ends it', async (t) => {
  if (foreignSwap.length > 0) return t.skip(`this machine has swap areas (${foreignSwap.join(', ')}): no cgroup here is without swap`);
  const testbed = tb!;
  // Without rswap: the same workload in a cgroup of the same size that no monitor watches.
  const alone = await createMemoryCgroup(`${NETNS_PREFIX}host-b-unwatched`, 128 * MiB);
  try {
    const killed = await startWorkload(alone.path, FILL).result.then(() => 'completed', (error: Error) => error.message);
    assert.match(killed, /killed by SIGKILL/, 'without swap, the OOM killer ends it');
  } finally {
    await alone.remove();
  }
  // With rswap: host-b's monitor sees memory running out and asks before the OOM killer acts.
  const before = new Set((await listLeases(testbedBus(testbed))).map((l) => l.id));
  const report = await startWorkload(testbed.hosts[1]!.cgroup, [...FILL, '--passes', '2']).result;
  assert.equal(report.corruptedChunks, 0, 'every byte read back intact, twice');
  // The leases that came up (one the lender refused, because by then it would have left less than
  // its reserve, fails and is not waited for).
  const leases = (await listLeases(testbedBus(testbed))).filter((l) => !before.has(l.id) && l.borrower === 'host-b' && l.history.some((h) => h.state === 'active'));
  assert.ok(leases.length > 0, 'it ran on remote memory');
  console.log(`swapless: 256 MiB at 16 MiB/s in 128 MiB completed on ${leases.length} lease(s), fill ${report.fillMs} ms, ${report.pswpinDelta} pages swapped in`);
  let states = '';
  await waitFor('the leases given back after the cool-down', async () => {
    const now = (await listLeases(testbedBus(testbed))).filter((l) => leases.some((x) => x.id === l.id));
    states = now.map((l) => `${l.id} ${l.state}${l.reason ? ` (${l.reason})` : ''}`).join(', ');
    return now.every((l) => l.state === 'released');
  }, { timeoutMs: 120_000, intervalMs: 250 }).catch((error: Error) => assert.fail(`${error.message}: ${states}`));
});
