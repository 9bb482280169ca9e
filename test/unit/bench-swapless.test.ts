import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fastestRescued, type RateRun } from '../../bench/swapless.js';

const r = (mibPerS: number, rescued: boolean): RateRun => ({ mibPerS, rescued, leases: 1, ms: 1000, detail: '' });

test('swapless bench - the fastest rate rescued every time, and none once a slower rate failed', () => {
  assert.equal(fastestRescued([r(8, true), r(8, true), r(16, true), r(16, false), r(32, true)]), 8, 'one miss at 16 MiB/s: 32 is luck, not a result');
  assert.equal(fastestRescued([r(32, true), r(4, true), r(16, true)]), 32, 'in rate order, whatever the run order');
  assert.equal(fastestRescued([r(4, false), r(8, true)]), undefined);
  assert.equal(fastestRescued([]), undefined);
});
