import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KeyedQueue, SingleFlight } from '../../shared/serial.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('serial - tasks of one key never interleave; a failure does not block the next; keys run apart', async () => {
  const queue = new KeyedQueue();
  const events: string[] = [];
  const task = (name: string, ms: number, fail = false) => async () => {
    events.push(`${name}:start`);
    await sleep(ms);
    events.push(`${name}:end`);
    if (fail) throw new Error(name);
    return name;
  };
  const results = await Promise.allSettled([queue.run('a', task('a1', 30, true)), queue.run('a', task('a2', 1)), queue.run('b', task('b1', 5))]);
  assert.deepEqual(results.map((r) => r.status), ['rejected', 'fulfilled', 'fulfilled']);
  assert.ok(events.indexOf('a1:end') < events.indexOf('a2:start'), 'a2 waits for a1');
  assert.ok(events.indexOf('b1:end') < events.indexOf('a1:end'), 'b runs beside a');
});

test('single flight - a repeat joins the call in flight for its key; once it ended, the next call runs again; a failure reaches every caller', async () => {
  const flights = new SingleFlight();
  let runs = 0;
  let finish!: (v: string) => void;
  const task = () => {
    runs += 1;
    return new Promise<string>((resolve) => (finish = resolve));
  };
  const first = flights.run('detach l-1', task);
  const resent = flights.run('detach l-1', task);
  const other = flights.run('detach l-2', async () => 'other');
  assert.equal(runs, 1, 'the resend did not start the work again');
  assert.equal(flights.size, 2);
  finish('done');
  assert.deepEqual(await Promise.all([first, resent, other]), ['done', 'done', 'other']);
  assert.equal(flights.size, 0);
  const again = flights.run('detach l-1', task);
  assert.equal(runs, 2, 'a call after the flight ended runs again');
  finish('again');
  assert.equal(await again, 'again');
  let failures = 0;
  const failing = () => flights.run('attach l-3', async () => {
    failures += 1;
    await sleep(5);
    throw new Error('login failed');
  });
  const results = await Promise.allSettled([failing(), failing()]);
  assert.deepEqual(results.map((r) => r.status), ['rejected', 'rejected']);
  assert.equal(failures, 1);
  await assert.rejects(failing(), /login failed/);
  assert.equal(failures, 2, 'a failed flight is not kept');
});
