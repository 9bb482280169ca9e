import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KeyedQueue } from '../../shared/serial.js';

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
