/**
 * Issue 17: in compose, restarting the exporter's or the attacher's container must not kill tgtd
 * or qemu-storage-daemon. Here host-a's exporter and host-b's attacher run in fake containers
 * (test/helpers/fake-container.ts: a cgroup of their own in every hierarchy, and a stop that kills
 * everything in it once the main process has exited, as runc 1.1 and 1.2 do). While a lease serves
 * a workload that has swapped to it and reads every byte back, both containers are restarted,
 * again and again in both modes: tgtd and qemu-storage-daemon keep their pids, the lease stays
 * active, no byte is lost. A first test shows the stop is strong enough: the same daemons started
 * the old way, left in the container's cgroup, die with it.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { access, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { readSwaps } from '../../shared/procfs.js';
import { stopGracefully } from '../../shared/process.js';
import { waitFor } from '../../shared/wait.js';
import { freePort } from '../../shared/nats.js';
import { DATAPATH } from '../../shared/datapath.js';
import { cgroupHierarchies, hierarchyOf } from '../../shared/hierarchies.js';
import { killTestbedProcess, testbedBus, testbedDown, testbedUp, type Testbed } from '../../cli/testbed/testbed.js';
import { listLeases } from '../../cli/operator.js';
import { startWorkload, type Progress } from '../../bench/run-workload.js';
import { daemonCgroup } from '../../services/attacher/userspace.js';
import type { LeaseRecord } from '../../shared/schemas.js';
import { assertNothingLeft, attachedLoops } from '../helpers/leftovers.js';
import { cgroupOf, FakeContainer, STOP_MODES, type StopMode } from '../helpers/fake-container.js';

const MiB = 1024 ** 2;
const DIR = '/run/rswap/test-datapath';
const log = pino({ level: 'silent' });
const run = createRunner(log);
const stopFile = `${DIR}/workload.stop`; // inside the testbed folder: removed with it
/** How the main process ends in each round: a restart's SIGTERM, a crash's SIGKILL, a SIGTERM again. */
const ROUNDS: Array<'SIGTERM' | 'SIGKILL'> = ['SIGTERM', 'SIGKILL', 'SIGTERM'];

let tb: Testbed;
let loopsBefore: string[] = [];
const containers: FakeContainer[] = [];
/** Daemons the control test starts, by pid and a word of their command line: stopped in after() if still ours. */
const strays: Array<{ pid: number; marker: string }> = [];

before(async () => {
  loopsBefore = await attachedLoops(run);
  tb = await testbedUp(run, log, {
    dir: DIR,
    hosts: 2,
    natsPort: await freePort(),
    // host-a lends; host-b is small and borrows.
    memoryBytes: [1024 * MiB, 128 * MiB],
    reserveBytes: [256 * MiB, 32 * MiB],
    localSwapBytes: 512 * MiB,
    brokerArgs: ['--release-cooldown-ms', '3000', '--sweep-interval-ms', '1000'],
    monitorArgs: ['--exit-hold-ms', '2000'],
  });
});

after(async () => {
  await writeFile(stopFile, '').catch(() => undefined);
  for (const { pid, marker } of strays) {
    if ((await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).includes(marker)) await stopGracefully(pid, 0);
  }
  for (const container of containers) await container.remove();
  const problems = await testbedDown(run, log, DIR);
  assert.deepEqual(problems, [], 'testbed down removed everything');
  for (const h of await cgroupHierarchies()) {
    for (const name of ['tgtd-3300', 'tgtd-3301']) {
      await assert.rejects(access(join(h.mountPoint, DATAPATH, name)), `${h.mountPoint}: ${name}'s cgroup removed`);
    }
  }
});

const logLines = async (file: string, pattern: RegExp) => (await readFile(file, 'utf8').catch(() => '')).split('\n').filter((l) => pattern.test(l)).length;
/** What `pid` runs, '' once it has exited (a zombie too: a killed daemon waits for init to reap it). */
async function comm(pid: number): Promise<string> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state === '' || state === 'Z' ? '' : stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
}
const pidIn = async (file: string) => Number((await readFile(file, 'utf8')).trim());

/** Where `pid` is in each hierarchy, and where it should be: its own cgroup (or the memory cgroup given). */
async function placement(pid: number, name: string, memoryCgroup?: string) {
  const hierarchies = await cgroupHierarchies();
  const actual = await Promise.all(hierarchies.map((h) => cgroupOf(pid, h)));
  const expected = hierarchies.map((h) => (memoryCgroup && hierarchyOf([h], memoryCgroup) ? memoryCgroup : join(h.mountPoint, DATAPATH, name)));
  return { actual, expected };
}

test('datapath lifetime - tgtd and qemu-storage-daemon started the old way, in the container\'s cgroup, die when it stops (both modes)', async () => {
  const container = await FakeContainer.create('control');
  containers.push(container);
  for (const mode of STOP_MODES) {
    container.start(['sleep', '3600'], '/dev/null');
    // What tgt.ts and userspace.ts did before: tgtd detached, qemu-storage-daemon --daemonize.
    const port = 3390;
    const socket = join(DIR, `control-tgtd.socket`);
    const portal = `portal=127.0.0.1:${await freePort()}`;
    const tgtd = container.exec(['env', `TGT_IPC_SOCKET=${socket}`, 'tgtd', '-f', '-C', String(port), '--iscsi', portal]);
    strays.push({ pid: tgtd, marker: portal });
    const pidfile = join(DIR, `control-qsd-${mode}.pid`);
    container.exec(['qemu-storage-daemon', '--blockdev', 'null-co,node-name=null', '--pidfile', pidfile, '--daemonize']);
    const qsd = await waitFor('the control qemu-storage-daemon daemonized', async () => (await pidIn(pidfile).catch(() => 0)) || undefined, { timeoutMs: 20_000 });
    strays.push({ pid: qsd, marker: pidfile });
    await waitFor('the control tgtd answers', async () => run('tgtadm', ['-C', String(port), '--lld', 'iscsi', '--mode', 'system', '--op', 'show'], { env: { TGT_IPC_SOCKET: socket } }).then(() => true, () => false), { timeoutMs: 20_000 });
    assert.deepEqual([await comm(tgtd), await comm(qsd)], ['tgtd', 'qemu-storage-da']);
    const killed = await container.stop(mode);
    assert.ok(killed >= 2, `${mode}: the runtime's kill found the daemons (${killed} processes)`);
    // The container's cgroup is empty: they have exited (and may wait a moment to be reaped).
    assert.deepEqual([await comm(tgtd), await comm(qsd)], ['', ''], `${mode}: tgtd and qemu-storage-daemon died with the container`);
  }
});

test('datapath lifetime - exporter and attacher containers restarted in both runc modes while a lease serves a verifying workload: tgtd and qemu-storage-daemon live on, no byte lost', async () => {
  const [lender, borrower] = [tb.hosts[0]!, tb.hosts[1]!];
  const exporterDir = join(DIR, lender.name, 'exporter');
  const agents = [
    { name: `${lender.name}/exporter`, container: await FakeContainer.create('exporter'), started: /"msg":"exporter started"/ },
    { name: `${borrower.name}/attacher`, container: await FakeContainer.create('attacher'), started: /"msg":"attacher started"/ },
  ];
  containers.push(...agents.map((a) => a.container));
  const processOf = (name: string) => tb.processes.find((p) => p.name === name)!;
  /** Starts the agent in its container and waits for its start to finish (its log says so once more). */
  const startAgent = async (agent: (typeof agents)[number]) => {
    const p = processOf(agent.name);
    const before = await logLines(p.logFile, agent.started);
    agent.container.start(p.command, p.logFile, p.env);
    await waitFor(`${agent.name} started in its container`, async () => (await logLines(p.logFile, agent.started)) > before, { timeoutMs: 60_000, intervalMs: 250 });
  };

  // The testbed started both agents (and host-a's tgtd) outside any container: they are replaced
  // by agents in containers, and tgtd is started by the exporter in its container.
  assert.equal(await killTestbedProcess(tb, agents[0]!.name), 1);
  const oldTgtd = await pidIn(join(exporterDir, 'tgtd.pid'));
  assert.equal(await comm(oldTgtd), 'tgtd');
  await stopGracefully(oldTgtd, 0);
  await waitFor('the testbed\'s tgtd gone', async () => (await comm(oldTgtd)) === '', { timeoutMs: 10_000 });
  assert.equal(await killTestbedProcess(tb, agents[1]!.name), 1);
  const tgtdStarts = await logLines(processOf(agents[0]!.name).logFile, /"tgtd":"started"/);
  for (const agent of agents) await startAgent(agent);
  assert.equal(await logLines(processOf(agents[0]!.name).logFile, /"tgtd":"started"/), tgtdStarts + 1, 'the exporter in its container started tgtd');
  const tgtd = await pidIn(join(exporterDir, 'tgtd.pid'));
  const tgtdPlace = await placement(tgtd, `tgtd-${lender.tgtControlPort}`, lender.cgroup);
  assert.deepEqual(tgtdPlace.actual, tgtdPlace.expected, 'tgtd is in its own cgroups, and in host-a\'s memory cgroup');

  await rm(stopFile, { force: true });
  let passes = 0; // verify passes read back whole
  const workload = startWorkload(borrower.cgroup, ['--bytes', '256MiB', '--until-file', stopFile], (p: Progress) => {
    if (p.phase.startsWith('verify') && p.done === p.total) passes += 1;
  });
  workload.result.catch(() => undefined);
  const restarts: Record<StopMode, number> = { 'runc-1.1': 0, 'runc-1.2': 0 };
  let lease: LeaseRecord;
  let qsd: number;
  try {
    lease = await waitFor('host-b swapping to a lease and reading back through it', async () => {
      const active = (await listLeases(testbedBus(tb))).find((l) => l.borrower === borrower.name && l.state === 'active');
      return active && passes >= 1 ? active : undefined;
    }, { timeoutMs: 120_000, intervalMs: 250 });
    const swapped = await waitFor('pages on the lease\'s swap area', async () => (await readSwaps()).find((a) => a.path === lease.device && a.usedBytes > 0), { timeoutMs: 60_000, intervalMs: 250 });
    console.log(`${Math.round(swapped.usedBytes / MiB)} MiB of the workload on ${lease.id}'s swap area (${lease.device}) before the restarts`);
    qsd = await pidIn(join(DIR, borrower.name, 'attacher', 'leases', lease.id, 'qsd.pid'));
    const qsdPlace = await placement(qsd, daemonCgroup(lease.id));
    assert.deepEqual(qsdPlace.actual, qsdPlace.expected, 'qemu-storage-daemon is in its own cgroups');

    for (const signal of ROUNDS) {
      for (const mode of STOP_MODES) {
        for (const agent of agents) {
          await agent.container.stop(mode, signal);
          assert.deepEqual(await agent.container.pids(), [], `${agent.name}: nothing left in its container`);
          assert.equal(await comm(tgtd), 'tgtd', `tgtd (${tgtd}) lives on after ${agent.name}'s container stopped (${mode}, ${signal})`);
          assert.equal(await comm(qsd), 'qemu-storage-da', `qemu-storage-daemon (${qsd}) lives on after ${agent.name}'s container stopped (${mode}, ${signal})`);
          await startAgent(agent);
          restarts[mode] += 1;
        }
        // The swap still works end to end: one more whole pass read back after this round.
        const passesNow = passes;
        await waitFor(`a whole pass read back after the ${mode} restarts`, async () => passes > passesNow, { timeoutMs: 180_000, intervalMs: 250 });
      }
    }
    assert.equal(await pidIn(join(exporterDir, 'tgtd.pid')), tgtd, 'tgtd was adopted each time, never started again');
    assert.equal(await logLines(processOf(agents[0]!.name).logFile, /"tgtd":"adopted"/), ROUNDS.length * STOP_MODES.length, 'each exporter start adopted tgtd');
    const now = (await listLeases(testbedBus(tb))).find((l) => l.id === lease.id)!;
    assert.equal(now.state, 'active', 'the lease served throughout and is still active');
    assert.ok((await readSwaps()).some((a) => a.path === now.device), 'its swap area is still on');
    assert.equal(await comm(tgtd), 'tgtd');
    assert.equal(await comm(qsd), 'qemu-storage-da');
  } finally {
    await writeFile(stopFile, '');
  }
  const report = await workload.result;
  assert.equal(report.corruptedChunks, 0, 'every byte read back intact across the restarts');
  console.log(`${restarts['runc-1.1']} restarts (runc 1.1 mode) and ${restarts['runc-1.2']} (runc 1.2 mode) of the exporter and attacher containers: tgtd ${tgtd} and qemu-storage-daemon ${qsd} lived on; ${report.passes} verify passes of ${report.chunks} MiB, ${report.corruptedChunks} corrupted`);

  // The lease ends (the workload is gone): its qemu-storage-daemon stops and its cgroups go with it.
  await waitFor('every lease ended', async () => (await listLeases(testbedBus(tb))).every((l) => l.state === 'released' || l.state === 'failed'), { timeoutMs: 90_000, intervalMs: 250 });
  await waitFor('qemu-storage-daemon stopped', async () => (await comm(qsd)) === '', { timeoutMs: 30_000 });
  for (const h of await cgroupHierarchies()) await assert.rejects(access(join(h.mountPoint, DATAPATH, daemonCgroup(lease.id))), `${h.mountPoint}: the lease's initiator cgroup removed`);
  await assertNothingLeft(tb, run, loopsBefore, { reservations: true });
});
