/**
 * The replicated control plane on the testbed: three nats-server nodes (mutual-TLS routes, the KV
 * buckets at three replicas) and two brokers, every process given every node's URL. While one
 * lease serves a verifying workload and another is coming up, kill -9 of: a NATS node that does
 * not lead the lease bucket, a broker, and the node that leads it. Each time the bring-up
 * completes, no byte is lost, no lease is made twice, and the node comes back and catches up.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pino from 'pino';
import { jetstreamManager } from '@nats-io/jetstream';
import { createRunner } from '../../shared/runner.js';
import { connectAs } from '../../shared/nats.js';
import { buckets, subjects } from '../../shared/subjects.js';
import { waitFor } from '../../shared/wait.js';
import { killTestbedProcess, startTestbedProcess, testbedBus, testbedDown, testbedUp, type Testbed } from '../../cli/testbed/testbed.js';
import { injectSurplus, listLeases, releaseLease } from '../../cli/operator.js';
import { startWorkload } from '../../bench/run-workload.js';
import { TestBus } from '../helpers/bus.js';
import { freePort } from '../helpers/nats.js';
import { assertNothingLeft, attachedLoops } from '../helpers/leftovers.js';
import { LeaseStateEvent, type LeaseRecord } from '../../shared/schemas.js';

const MiB = 1024 ** 2;
const DIR = '/run/rswap/test-cluster';
const log = pino({ level: 'silent' });
const run = createRunner(log);
let tb: Testbed;
let nc: TestBus;
let loopsBefore: string[] = [];

before(async () => {
  loopsBefore = await attachedLoops(run);
  tb = await testbedUp(run, log, {
    dir: DIR,
    hosts: 3, // host-a lends; host-b runs the verifying workload; host-c's lease comes up during each fault
    natsPort: await freePort(),
    natsNodes: 3,
    brokers: 2,
    monitors: false,
    memoryBytes: [1536 * MiB, 128 * MiB, 128 * MiB],
    reserveBytes: [256 * MiB, 32 * MiB, 32 * MiB],
  });
  nc = await TestBus.open(tb);
});

after(async () => {
  await nc?.drain();
  const problems = await testbedDown(run, log, DIR);
  assert.deepEqual(problems, []);
});

/** The lease bucket's stream as the broker identity sees it: replicas, leader, who is current. */
async function leaseStream() {
  const bus = await connectAs(testbedBus(tb, 'broker'), 'test-cluster-jsm');
  try {
    return (await (await jetstreamManager(bus)).streams.info(`KV_${buckets.leases}`)).cluster;
  } finally {
    await bus.close();
  }
}

const leasesOf = async (host: string): Promise<LeaseRecord[]> => (await listLeases(testbedBus(tb))).filter((l) => l.borrower === host);

/** Pressure as the monitor sends it; the answer may never come if the broker handling it dies. */
const pressure = (host: string, bytes: number) => nc.request(subjects.pressure(host), JSON.stringify({ host, neededBytes: bytes, at: Date.now(), source: 'inject' }), { timeout: 120_000 }).catch(() => undefined);

async function activeLease(host: string, timeoutMs = 240_000): Promise<LeaseRecord> {
  let seen: LeaseRecord[] = [];
  return waitFor(`${host}'s lease active`, async () => (seen = await leasesOf(host).catch(() => seen)).find((l) => l.state === 'active'), { timeoutMs, intervalMs: 500 }).catch((error: Error) => {
    // Say where each lease of the host got to, and why: a failed bring-up names its step.
    throw new Error(`${error.message}; ${host}'s leases: ${seen.map((l) => `${l.id} ${l.state}${l.reason ? ` (${l.reason})` : ''}`).join(', ') || 'none'}`);
  });
}

for (const fault of ['a NATS node that does not lead the lease bucket', 'a broker', 'the NATS node that leads the lease bucket'] as const) {
  test(`cluster - kill -9 of ${fault} while a lease comes up and another serves a verifying workload: the bring-up completes, no byte lost, no lease made twice`, async () => {
    const stopFile = join(DIR, 'workload.stop');
    await rm(stopFile, { force: true });
    // Lease 1: host-b, a workload twice its memory reading itself back, pass after pass. (No
    // monitors run: host-a's offers come from the test, fresh before each pressure.)
    await injectSurplus(testbedBus(tb, 'host-a'), 'host-a', '1GiB', '0');
    void pressure('host-b', 256 * MiB);
    const first = await activeLease('host-b');
    const phases: string[] = [];
    let victim: string | undefined;
    let killed: Promise<number> | undefined;
    let restarted = false;
    const workload = startWorkload(tb.hosts[1]!.cgroup, ['--bytes', '256MiB', '--until-file', stopFile], (p) => phases.push(p.phase));
    try {
      await waitFor('the workload reading back from the lease', async () => phases.includes('verify 1'), { timeoutMs: 300_000, intervalMs: 250 });
      // Lease 2 (host-c) is asked for, and the fault strikes while it comes up: once its lender
      // is exporting it. A broker fault kills the broker driving that step.
      const stream = await leaseStream();
      const nodes = ['nats', 'nats-2', 'nats-3'];
      const node = fault.startsWith('the NATS node that leads') ? stream!.leader! : nodes.find((n) => n !== stream!.leader)!;
      assert.ok(fault === 'a broker' || nodes.includes(node), `the lease bucket's leader is a testbed node: ${stream?.leader}`);
      const watch = nc.subscribe(subjects.allLeaseStates, {
        callback: (_e, msg) => {
          const { lease } = LeaseStateEvent.parse(msg.json());
          if (killed || lease.borrower !== 'host-c' || lease.state !== 'exporting') return;
          // A broker names itself in the records as <its --host>-<pid>-<random>.
          victim = fault === 'a broker' ? lease.driver!.split('-').slice(0, -2).join('-') : node;
          killed = killTestbedProcess(tb, victim);
          killed.catch(() => undefined); // awaited below
        },
      });
      await injectSurplus(testbedBus(tb, 'host-a'), 'host-a', '768MiB', '256MiB');
      void pressure('host-c', 128 * MiB);
      await waitFor('the fault struck mid bring-up', async () => killed !== undefined, { timeoutMs: 120_000, intervalMs: 100 });
      watch.unsubscribe();
      assert.equal(await killed, 1, `${victim} killed`);
      assert.ok(victim === 'broker' || victim === 'broker-2' || nodes.includes(victim!), `a testbed process: ${victim}`);
      const second = await activeLease('host-c');
      await writeFile(stopFile, '');
      const report = await workload.result;
      assert.equal(report.corruptedChunks, 0, 'every byte of the workload came back intact');
      assert.ok(report.passes >= 1);
      // No lease made twice: one open lease each, the first one untouched.
      assert.deepEqual((await leasesOf('host-b')).filter((l) => !['released', 'failed'].includes(l.state)).map((l) => l.id), [first.id]);
      assert.deepEqual((await leasesOf('host-c')).filter((l) => !['released', 'failed'].includes(l.state)).map((l) => l.id), [second.id]);
      // Back, and caught up.
      startTestbedProcess(tb, victim!);
      restarted = true;
      if (fault !== 'a broker') {
        // JetStream may not answer while the node rejoins: no answer is not current yet.
        await waitFor(`${victim} back and current on the lease bucket`, async () => {
          const stream = await leaseStream().catch(() => undefined);
          return stream?.replicas?.some((r) => r.name === victim && r.current) || stream?.leader === victim;
        }, { timeoutMs: 120_000, intervalMs: 500 });
      }
      for (const lease of [first, second]) assert.equal((await releaseLease(testbedBus(tb), lease.id)).state, 'released');
      await assertNothingLeft(tb, run, loopsBefore, { reservations: true });
    } finally {
      // Whatever failed, the next test starts from a whole cluster and no open lease.
      await writeFile(stopFile, '').catch(() => undefined);
      workload.kill();
      await workload.result.catch(() => undefined);
      if (victim && !restarted && (await killed?.catch(() => 0)) === 1) startTestbedProcess(tb, victim);
      for (const lease of await listLeases(testbedBus(tb)).catch(() => [] as LeaseRecord[])) {
        if (!['released', 'failed'].includes(lease.state)) await releaseLease(testbedBus(tb), lease.id).catch(() => undefined);
      }
    }
  });
}
