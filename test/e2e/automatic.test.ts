/**
 * rswap unattended, on the testbed, with no event injected by hand: monitors watch each host's
 * memory cgroup, a workload thrashes on host-b, the broker lends, the workload verifies every byte,
 * and after the cool-down the lease goes back and nothing is left. Then lender protection: host-a's
 * own workload grows into its reserve while host-b swaps on host-a's RAM, and the lease moves to
 * host-c make-before-break while host-b keeps reading its data.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { access, rm, writeFile } from 'node:fs/promises';
import { TestBus } from '../helpers/bus.js';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { startWorkload, type RunningWorkload } from '../../bench/run-workload.js';
import { subjects } from '../../shared/subjects.js';
import { testbedDown, testbedUp, type Testbed, type TestbedHost, testbedBus } from '../../cli/testbed/testbed.js';
import { listLeases } from '../../cli/operator.js';
import { freePort } from '../helpers/nats.js';
import { assertNothingLeft, attachedLoops } from '../helpers/leftovers.js';
import { waitFor } from '../../shared/wait.js';
import { thrashUntil } from '../helpers/thrash.js';
import { PressureEvent, type LeaseRecord } from '../../shared/schemas.js';

const MiB = 1024 ** 2;
const DIR = '/run/rswap/test-auto';
const log = pino({ level: 'silent' });
const run = createRunner(log);
let tb: Testbed;
let loopsBefore: string[] = [];
let nc: TestBus;
const pressureSources: string[] = [];
const controlFiles: string[] = [];

before(async () => {
  loopsBefore = await attachedLoops(run);
  tb = await testbedUp(run, log, {
    dir: DIR,
    hosts: 3,
    natsPort: await freePort(),
    // host-a lends most; host-b is small and borrows; host-c is the second lender.
    memoryBytes: [1024 * MiB, 128 * MiB, 768 * MiB],
    reserveBytes: [384 * MiB, 32 * MiB, 192 * MiB],
    localSwapBytes: 512 * MiB,
    // A cool-down well above the flapping test's clear spells (relief comes 2-4 s into a 5 s idle spell).
    brokerArgs: ['--release-cooldown-ms', '10000'],
    monitorArgs: ['--exit-hold-ms', '2000'],
  });
  nc = await TestBus.open(tb);
  nc.subscribe(subjects.allPressure, { callback: (_e, msg) => {
      pressureSources.push(PressureEvent.parse(msg.json()).source);
    },
  });
});

after(async () => {
  await nc?.drain();
  const problems = await testbedDown(run, log, DIR);
  for (const file of controlFiles) await rm(file, { force: true });
  assert.deepEqual(problems, [], 'testbed down removed everything');
});

const host = (name: string): TestbedHost => tb.hosts.find((h) => h.name === name)!;

async function leasesOf(borrower: string): Promise<LeaseRecord[]> {
  return (await listLeases(testbedBus(tb))).filter((l) => l.borrower === borrower);
}

test('automatic - a thrashing workload gets remote memory with no event injected, verifies every byte, and gives it back after the cool-down', async () => {
  const stop = `${DIR}/thrash.stop`;
  controlFiles.push(stop);
  // However long the monitor and the lease take (a sealed attach on a loaded machine takes
  // seconds), host-b still thrashes when the lease is up, and reads everything back through it.
  const { report: r } = await thrashUntil(host('host-b').cgroup, '256MiB', stop, 'a lease of host-b active, with no event injected', async () => {
    return (await leasesOf('host-b')).some((l) => l.state === 'active') ? true : undefined;
  });
  assert.equal(r.corruptedChunks, 0);
  assert.ok(r.pswpinDelta > 0, 'it did swap');
  assert.ok(pressureSources.length > 0 && pressureSources.every((s) => s === 'monitor'), `pressure came only from monitors: ${pressureSources}`);

  // Workload gone -> relief after the exit hold -> leases back after the cool-down.
  const settled = await waitFor('every lease of host-b released', async () => {
    const now = await leasesOf('host-b');
    return now.every((l) => l.state === 'released') ? now : undefined;
  }, { timeoutMs: 60_000, intervalMs: 250 });
  assert.ok(settled.length >= 1, 'a lease came up on its own');
  assert.ok(settled.every((l) => l.history.some((h) => h.state === 'active')), `every lease was active before it went back: ${JSON.stringify(settled.map((l) => l.history))}`);
  for (const lease of settled) assert.match(lease.history.find((h) => h.state === 'draining')!.reason!, /pressure clear for/);
  await assertNothingLeft(tb, run, loopsBefore);
});

test('automatic - a lender that needs its memory back gets it make-before-break, and the borrower loses no byte', async () => {
  const stopBorrower = `${DIR}/borrower.stop`;
  const stopHog = `${DIR}/hog.stop`;
  controlFiles.push(stopBorrower, stopHog);
  const phases: string[] = [];
  const before = new Set((await leasesOf('host-b')).map((l) => l.id));
  // host-b keeps reading 256 MiB through swap until told to stop.
  const borrower = startWorkload(host('host-b').cgroup, ['--bytes', '256MiB', '--until-file', stopBorrower], (p) => phases.push(p.phase));
  borrower.result.catch(() => undefined); // awaited below; a failure must not go unhandled meanwhile
  let hog: RunningWorkload | undefined;
  try {
    const onA = await waitFor('host-b reading its data back while it swaps on host-a', async () => {
      const mine = (await leasesOf('host-b')).filter((l) => !before.has(l.id) && l.lender === 'host-a' && l.state === 'active');
      return phases.some((p) => p.startsWith('verify')) && mine.length > 0 ? mine : undefined;
    }, { timeoutMs: 120_000, intervalMs: 250 });

    // host-a's own workload takes 560 MiB of its 1 GiB: under its 384 MiB reserve with what it lends.
    hog = startWorkload(host('host-a').cgroup, ['--bytes', '560MiB', '--pause-file', stopHog]);
    hog.result.catch(() => undefined);
    const moved = await waitFor('host-a leases reclaimed', async () => {
      const now = await leasesOf('host-b');
      const old = onA.map((l) => now.find((n) => n.id === l.id)!);
      return old.every((l) => l.state === 'released') ? now : undefined;
    }, { timeoutMs: 180_000, intervalMs: 250 });
    for (const old of onA) {
      const record = moved.find((l) => l.id === old.id)!;
      const replacement = moved.find((l) => l.replaces === old.id);
      assert.ok(replacement, `a replacement for ${old.id}`);
      assert.equal(replacement.lender, 'host-c');
      assert.ok(replacement.history.some((h) => h.state === 'active'));
      const activeAt = replacement.history.find((h) => h.state === 'active')!.at;
      const drainingAt = record.history.find((h) => h.state === 'draining')!.at;
      assert.ok(activeAt <= drainingAt, 'the replacement was active before the old lease started to drain');
      assert.match(record.history.find((h) => h.state === 'draining')!.reason!, new RegExp(`reclaimed by host-a, replaced by ${replacement.id}`));
    }
  } finally {
    // Whatever happened, the workloads finish (and stop swapping) before the next test.
    await writeFile(stopBorrower, '');
    await writeFile(stopHog, '');
  }
  const [b, a] = await Promise.all([borrower.result, hog!.result]);
  assert.equal(b.corruptedChunks, 0, 'the borrower read back every byte');
  assert.ok(b.passes >= 1);
  assert.equal(a.corruptedChunks, 0, 'the lender workload was never killed and verified too');

  await waitFor('every lease of host-b released', async () => (await leasesOf('host-b')).every((l) => l.state === 'released'), { timeoutMs: 60_000, intervalMs: 250 });
  await assertNothingLeft(tb, run, loopsBefore);
  await access(DIR); // the testbed itself is still up for after()
});

test('automatic - a workload that flaps between busy and idle faster than the cool-down causes no lease churn', async () => {
  const stop = `${DIR}/flapper.stop`;
  controlFiles.push(stop);
  const phases: string[] = [];
  const before = new Set((await leasesOf('host-b')).map((l) => l.id));
  // Busy (a pass through 256 MiB in 128 MiB), then 5 s idle, again and again. An idle spell
  // outlasts the monitor's exit hold (2 s) and PSI's decay, so it reports relief, and the next busy
  // spell brings pressure back long before the broker's cool-down (10 s from that relief) runs out.
  const flapper = startWorkload(host('host-b').cgroup, ['--bytes', '256MiB', '--until-file', stop, '--idle-ms', '5000'], (p) => phases.push(p.phase));
  flapper.result.catch(() => undefined); // awaited below
  const reliefs: number[] = [];
  const sub = nc.subscribe(subjects.relief('host-b'), { callback: () => void reliefs.push(Date.now()) });
  const pressures: number[] = [];
  const pressureSub = nc.subscribe(subjects.pressure('host-b'), { callback: () => void pressures.push(Date.now()) });
  try {
    await waitFor('a lease for the flapping workload', async () => (await leasesOf('host-b')).some((l) => !before.has(l.id) && l.state === 'active'), { timeoutMs: 60_000, intervalMs: 250 });
    // Pressure really flaps: two reliefs, each followed by pressure again (a relief comes only after pressure).
    const from = reliefs.length;
    await waitFor('two reliefs while the workload flaps', async () => reliefs.length >= from + 2, { timeoutMs: 240_000, intervalMs: 250 });
    const during = (await leasesOf('host-b')).filter((l) => !before.has(l.id));
    const drained = during.filter((l) => l.history.some((h) => h.state === 'draining'));
    // On failure: why each lease went, against when host-b reported relief and pressure.
    const story = [
      ...drained.map((l) => `${l.history.find((h) => h.state === 'draining')!.at} ${l.id} from ${l.lender} draining: ${l.history.find((h) => h.state === 'draining')!.reason ?? ''}`),
      ...reliefs.map((at) => `${at} relief`),
      ...pressures.map((at) => `${at} pressure`),
    ].sort();
    assert.deepEqual(drained.map((l) => l.id), [], `no lease was given back while the workload flapped:\n${story.join('\n')}`);
  } finally {
    sub.unsubscribe();
    pressureSub.unsubscribe();
    await writeFile(stop, '');
  }
  assert.equal((await flapper.result).corruptedChunks, 0);
  await waitFor('every lease of host-b released', async () => (await leasesOf('host-b')).every((l) => l.state === 'released'), { timeoutMs: 60_000, intervalMs: 250 });
  await assertNothingLeft(tb, run, loopsBefore);
});
