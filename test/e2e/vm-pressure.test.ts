/**
 * Machine-wide memory pressure on a real kernel, where it must never be made on the CI machine: a VM
 * borrower with no swap at all, its monitor watching the whole machine, the kernel initiator. A
 * workload fills twice the VM's RAM with no memory cgroup around it; its leases are unsealed (see
 * attacherArgs below). With the lender, filling at 2 MiB/s, leases come before memory runs out and
 * every byte reads back intact, under a watchdog: the VM's heartbeat must not stop for 90 s while it
 * swaps over the network (the kernel's hung-task reports, if any, are in its console log). Then,
 * with the leases given back and the lender cordoned, the VM's OOM killer ends the same workload.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { testbedBus, testbedDown, testbedUp, type Testbed } from '../../cli/testbed/testbed.js';
import { vmExec } from '../../cli/testbed/vm.js';
import { cordonHost, listLeases, releaseLease } from '../../cli/operator.js';
import { freePort } from '../helpers/nats.js';
import { waitFor } from '../../shared/wait.js';

const MiB = 1024 ** 2;
const DIR = '/run/rswap/test-vm-pressure';
const WORKLOAD = resolve(fileURLToPath(import.meta.url), '../../../bench/workload.js');
const VM_MIB = 384;
// The VM has about 130 MiB free once its agents run: at 2 MiB/s that is a minute to the first
// lease, which under TCG takes 12-30 s to come up, and more than 50 s on a machine whose CPUs are
// busy with other work (at 8 MiB/s a loaded CI run lost; at 4 MiB/s one beside stress-ng did).
const RATE_MIB_PER_S = 2;
const FILL = `--bytes ${2 * VM_MIB}MiB --fill-mib-per-s ${RATE_MIB_PER_S}`;
// Without a lender the same bytes are filled as fast as the VM can: twice its RAM cannot fit at any
// rate, and at 2 MiB/s the kernel evicts and refaults the file pages of its 9p root in step with the
// fill, thrashing for many minutes (14 in one run) before the OOM killer acts.
const FILL_ALONE = `--bytes ${2 * VM_MIB}MiB`;
// And the VM's kernel is told not to thrash: with the multi-generational LRU's min_ttl_ms (the knob
// ChromeOS sets to 1000) it calls the OOM killer once it cannot keep the last second's working set,
// instead of evicting and refaulting its 9p root's file pages for minutes first (468 s in one run).
// It decides when, not whether: twice the RAM cannot fit.
const NO_THRASH = 'echo y > /sys/kernel/mm/lru_gen/enabled && echo 1000 > /sys/kernel/mm/lru_gen/min_ttl_ms || exit 3; ';
const STALL_MS = 90_000;
const log = pino({ level: 'silent' });
const run = createRunner(log);
let tb: Testbed;

before(async () => {
  tb = await testbedUp(run, log, {
    dir: DIR,
    hosts: 1, // host-a: the lender, in a namespace
    vmHosts: 1, // host-b: the borrower, a VM without swap, its monitor in machine scope
    vmMemoryMiB: VM_MIB,
    natsPort: await freePort(),
    memoryBytes: [1536 * MiB],
    reserveBytes: [256 * MiB],
    // The leases stay 30 s after the host is clear, so a lull while the workload starts does not
    // give back the lease it is about to need (with 3 s a loaded CI run lost one so, then ran out).
    // (The testbed gives VM hosts' attaches 300 s: under TCG they can take minutes.)
    brokerArgs: ['--release-cooldown-ms', '30000'],
    // A lease comes up in seconds on real hardware but takes far longer in a VM under TCG (every
    // step runs emulated): the monitor asks that much earlier. On KVM or metal the default (5 s) is
    // what docs/benchmarks.md measures.
    monitorArgs: ['--exit-hold-ms', '2000', '--headroom-lead-s', '60'],
    // The default margin (256 MiB, for servers) is more than this VM ever has free: no swap-off
    // would ever be safe, and the leases could not go back.
    // Unsealed, on purpose and only here: under TCG dm-crypt's AES runs as emulated guest code on
    // every page swapped out, and in 384 MiB that slows reclaim past the point of rescue (sealed,
    // three runs in a row lost on 2026-12-02: an OOM kill with 32 MiB of 470 swapped, and two
    // stalls). Unsealed is not always enough: beside stress-ng --cpu 2 it lost once the same way
    // (docs/reliability.md). The sealed kernel path is proven under a workload in vm.test.ts; this
    // test is about a swapless machine rescued in time.
    attacherArgs: ['--swapoff-margin-bytes', '32MiB', '--unsealed'],
  });
});

after(async () => {
  const problems = await testbedDown(run, log, DIR);
  assert.deepEqual(problems, []);
});

/** The workload in the VM under the watchdog: its exit code, its report, and what the kernel said. */
async function workloadInVm(fill: string, watchdog: boolean, setup = ''): Promise<{ rc: number; pid: number; report?: { corruptedChunks: number; chunks: number }; output: string }> {
  const vm = tb.vms![0]!;
  // Its pid, so an OOM kill is known to be the workload's and not an agent's (they run node too).
  const job = await vmExec(vm.dir, `${setup}dmesg -C; free -m; node ${WORKLOAD} ${fill} --passes 1 & w=$!; echo workload-pid=$w; wait $w; echo rc=$?; dmesg | grep -E 'Out of memory|blocked for more than' ; cat /proc/swaps`, 1_500_000, watchdog ? STALL_MS : undefined);
  const rc = Number(/^rc=(\d+)$/m.exec(job.output)?.[1] ?? -1);
  const pid = Number(/^workload-pid=(\d+)$/m.exec(job.output)?.[1] ?? -1);
  const line = job.output.split('\n').find((l) => l.startsWith('{"bytes"'));
  return { rc, pid, ...(line ? { report: JSON.parse(line) as { corruptedChunks: number; chunks: number } } : {}), output: job.output };
}

/** What the monitor and attacher in the VM did and what became of each lease, for a failure message. */
async function story(since: number): Promise<string> {
  const vm = tb.vms![0]!;
  const events: [number, string][] = [];
  for (const role of ['monitor', 'attacher']) {
    for (const line of (await readFile(join(vm.dir, `${role}.log`), 'utf8').catch(() => '')).split('\n')) {
      try {
        const entry = JSON.parse(line) as { time: number; msg: string; neededBytes?: number; signals?: Record<string, number>; leaseId?: string; usedBytes?: number };
        if (entry.time < since || !/pressure|swap|detached/.test(entry.msg)) continue;
        const s = entry.signals;
        const facts = s ? `need ${((entry.neededBytes ?? 0) / MiB).toFixed(0)} MiB, headroom ${((s.headroomBytes ?? 0) / MiB).toFixed(0)} MiB, lease room ${((s.swapFreeBytes ?? 0) / MiB).toFixed(0)} MiB, fill ${((s.fillBytesPerS ?? 0) / MiB).toFixed(1)} MiB/s, swap ${s.swapPagesPerS} pages/s` : `${entry.leaseId ?? ''}${entry.usedBytes !== undefined ? ` ${(entry.usedBytes / MiB).toFixed(0)} MiB used` : ''}`;
        events.push([entry.time, `${role}: ${entry.msg} (${facts})`]);
      } catch {
        // not a log entry
      }
    }
  }
  for (const l of (await listLeases(testbedBus(tb)).catch(() => [])).filter((x) => x.borrower === vm.name)) {
    for (const h of l.history) events.push([h.at, `lease ${l.id} ${(l.sizeBytes / MiB).toFixed(0)} MiB: ${h.state}${h.reason ? ` (${h.reason})` : ''}`]);
  }
  return events.sort((a, b) => a[0] - b[0]).map(([at, what]) => `+${((at - since) / 1000).toFixed(1)} s ${what}`).join('\n');
}

/**
 * For a failure: what the VM's attacher logged last (every message, not only the story's) and the
 * end of its console (hung tasks, iSCSI errors, the OOM killer), so a stalled step names itself.
 */
async function lastWords(): Promise<string> {
  const vm = tb.vms![0]!;
  const tail = async (file: string, lines: number) => (await readFile(join(vm.dir, file), 'utf8').catch(() => '')).trimEnd().split('\n').slice(-lines);
  const attacher = (await tail('attacher.log', 40)).map((line) => {
    try {
      const e = JSON.parse(line) as { time: number; msg: string; leaseId?: string; err?: string; cmd?: string };
      return `${new Date(e.time).toISOString().slice(11, 23)} ${e.msg}${e.leaseId ? ` ${e.leaseId}` : ''}${e.cmd ? ` [${e.cmd}]` : ''}${e.err ? `: ${e.err}` : ''}`;
    } catch {
      return line;
    }
  });
  return `the VM's attacher, last lines:\n${attacher.join('\n')}\nthe VM's console, last lines:\n${(await tail('console.log', 30)).join('\n')}`;
}

test('vm pressure - a swapless VM filling twice its RAM machine-wide: OOM-killed without a lender, rescued by leases over the kernel initiator with every byte verified', async () => {
  const vm = tb.vms![0]!;
  console.log(`VM host ${vm.name} (${VM_MIB} MiB, no swap) ready ${((vm.readyMs ?? 0) / 1000).toFixed(1)} s after it started`);

  // With the lender: leases before memory runs out, every byte back.
  const started = Date.now();
  // A stall (or any failure of the job) says what the VM's agents and leases did up to it.
  const rescued = await workloadInVm(FILL, true).catch(async (error: Error) => {
    assert.fail(`${error.message}\nwhat the VM did:\n${await story(started)}\n${await lastWords()}`);
  });
  const told = await story(started);
  console.log(`what the VM did:\n${told}`);
  assert.equal(rescued.rc, 0, `${rescued.output}\n${told}\n${await lastWords()}`);
  assert.equal(rescued.report?.corruptedChunks, 0, 'every byte read back intact');
  assert.equal(rescued.report?.chunks, 2 * VM_MIB);
  assert.doesNotMatch(rescued.output, /blocked for more than/, 'no task hung while the VM swapped over the network');
  const leases = (await listLeases(testbedBus(tb))).filter((l) => l.borrower === vm.name && l.history.some((h) => h.state === 'active'));
  assert.ok(leases.length > 0, 'it ran on remote memory');
  assert.ok(leases.every((l) => l.initiator === 'kernel'));
  const bringUp = leases.map((l) => l.history.find((h) => h.state === 'active')!.at - l.createdAt);
  console.log(`machine-wide in a VM: ${2 * VM_MIB} MiB at ${RATE_MIB_PER_S} MiB/s in ${VM_MIB} MiB of RAM without swap completed on ${leases.length} lease(s) over the kernel initiator in ${((Date.now() - started) / 1000).toFixed(0)} s; each lease came up in ${bringUp.map((ms) => (ms / 1000).toFixed(1)).join(', ')} s`);

  // Given back after the cool-down: swap-off and logout in the VM.
  let states = '';
  await waitFor('the leases given back after the cool-down', async () => {
    const now = (await listLeases(testbedBus(tb))).filter((l) => leases.some((x) => x.id === l.id));
    states = now.map((l) => `${l.id} ${l.state}${l.reason ? ` (${l.reason})` : ''}`).join(', ');
    if (now.some((l) => l.state === 'failed')) throw new Error('a lease failed instead of being given back');
    return now.every((l) => l.state === 'released');
    // Bounded by the broker's own budget for a swap-off (its 300 s detach timeout) and a margin:
    // the VM's swap-offs run one at a time, each reading its pages back under TCG.
  }, { timeoutMs: 420_000, intervalMs: 500 }).catch(async (error: Error) => {
    const console_ = await readFile(join(vm.dir, 'console.log'), 'utf8').catch(() => '');
    assert.fail(`${error.message}: ${states}\n${console_.slice(-2000)}`);
  });

  // Without a lender: the OOM killer ends the workload (and only it: the agents live on). This half
  // runs last, on a VM the rescue left without swap, so the rescue starts on a fresh VM and not on
  // one that has just thrashed to an OOM kill. Any lease still up is given back first; the cordon
  // keeps a new one from coming.
  await cordonHost(testbedBus(tb), 'host-a', true);
  const cordonedAt = Date.now();
  const settled = await waitFor('the VM\'s leases settled before the run without a lender', async () => {
    const mine = (await listLeases(testbedBus(tb))).filter((x) => x.borrower === vm.name);
    return mine.every((x) => ['active', 'released', 'failed'].includes(x.state)) ? mine : undefined;
  }, { timeoutMs: 600_000, intervalMs: 1_000 });
  for (const l of settled.filter((x) => x.state === 'active')) {
    const released = await releaseLease(testbedBus(tb), l.id);
    assert.equal(released.state, 'released', `the lease ${l.id} given back: ${released.reason ?? ''}`);
  }
  // (No watchdog here: a VM without swap may stall on file pages before the OOM killer acts; that is
  // the outcome rswap prevents, not a stall of its path.)
  const aloneAt = Date.now();
  const alone = await workloadInVm(FILL_ALONE, false, NO_THRASH);
  console.log(`without a lender: ${2 * VM_MIB} MiB filled as fast as the VM can, ended after ${((Date.now() - aloneAt) / 1000).toFixed(0)} s with rc ${alone.rc}`);
  assert.notEqual(alone.rc, 0, `without a lender the workload cannot complete: ${alone.output}`);
  assert.ok(alone.pid > 0, `the workload's pid: ${alone.output}`);
  assert.match(alone.output, new RegExp(`Out of memory: Killed process ${alone.pid} \\(node\\)`), `the OOM killer ended the workload (pid ${alone.pid}), not an agent: ${alone.output}`);
  assert.deepEqual((await listLeases(testbedBus(tb))).filter((l) => l.borrower === vm.name && (l.createdAt >= cordonedAt || l.state === 'active')), [], 'no lease without a lender');
});
