/**
 * Start order does not matter, with every real part on the testbed: the monitors, exporters and
 * attachers start first and publish their first offers to nobody; then the broker starts. A
 * pressure right after it is up gets a lease (real tgt target, real login, real swapon). The same
 * after the broker is killed and restarted mid-run.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TestBus } from '../helpers/bus.js';
import pino from 'pino';
import { createRunner } from '../../shared/runner.js';
import { killTestbedProcess, startTestbedProcess, testbedDown, testbedUp, type Testbed, testbedBus } from '../../cli/testbed/testbed.js';
import { freePort } from '../helpers/nats.js';
import { assertNothingLeft, attachedLoops } from '../helpers/leftovers.js';
import { subjects } from '../../shared/subjects.js';
import { waitFor } from '../../shared/wait.js';
import { listLeases } from '../../cli/operator.js';

const MiB = 1024 ** 2;
const DIR = '/run/rswap/test-start-order';
const log = pino({ level: 'silent' });
const run = createRunner(log);
let tb: Testbed;
let nc: TestBus;
let loopsBefore: string[] = [];

before(async () => {
  loopsBefore = await attachedLoops(run);
  tb = await testbedUp(run, log, {
    dir: DIR,
    hosts: 3,
    natsPort: await freePort(),
    memoryBytes: [1024 * MiB, 128 * MiB, 128 * MiB],
    reserveBytes: [256 * MiB, 32 * MiB, 32 * MiB],
    brokerLast: true, // every monitor has published its first offer before the broker starts
  });
  nc = await TestBus.open(tb);
});

after(async () => {
  await nc?.drain();
  const problems = await testbedDown(run, log, DIR);
  assert.deepEqual(problems, []);
});

/** Pressure as `rswap inject` sends it, as a request: the broker's answer says what it did. */
const pressure = async (host: string) =>
  (await nc.request(subjects.pressure(host), JSON.stringify({ host, neededBytes: 64 * MiB, at: Date.now(), source: 'inject' }), { timeout: 120_000 })).json<{ ok: boolean; leaseId?: string; state?: string; error?: unknown }>();

const release = async (leaseId: string) => (await nc.request(subjects.release, JSON.stringify({ leaseId }), { timeout: 120_000 })).json<{ lease?: { state: string } }>();

async function brokerStarts(): Promise<number> {
  const text = await readFile(join(DIR, 'broker.log'), 'utf8').catch(() => '');
  return text.split('\n').filter((l) => l.includes('"broker started"')).length;
}

test('start order - a broker that starts after the whole fleet lends to a pressure 1 s after it is up', async () => {
  await waitFor('the broker started', async () => (await brokerStarts()) === 1, { timeoutMs: 30_000 });
  await new Promise((r) => setTimeout(r, 1_000)); // the scenario: 1 s after the broker is up
  const reply = await pressure('host-b');
  assert.equal(reply.state, 'active', `the pressure got a lease at once: ${JSON.stringify(reply)}`);
  const lease = (await listLeases(testbedBus(tb))).find((l) => l.id === reply.leaseId)!;
  assert.equal(lease.lender, 'host-a');
  assert.equal((await release(lease.id)).lease?.state, 'released');
  await assertNothingLeft(tb, run, loopsBefore);
});

test('start order - a broker killed and restarted mid-run lends to a pressure 1 s after it is back', async () => {
  const starts = await brokerStarts();
  assert.equal(await killTestbedProcess(tb, 'broker'), 1);
  startTestbedProcess(tb, 'broker');
  await waitFor('the broker started again', async () => (await brokerStarts()) === starts + 1, { timeoutMs: 30_000 });
  await new Promise((r) => setTimeout(r, 1_000));
  const reply = await pressure('host-c');
  assert.equal(reply.state, 'active', `the pressure got a lease at once: ${JSON.stringify(reply)}`);
  assert.equal((await release(reply.leaseId!)).lease?.state, 'released');
  await assertNothingLeft(tb, run, loopsBefore);
});
