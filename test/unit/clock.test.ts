import { test } from 'node:test';
import assert from 'node:assert/strict';
import { measuredAt, noteSkew } from '../../shared/clock.js';
import { registry } from '../../shared/metrics.js';

const now = 1_800_000_000_000;

async function skewCount(direction: string): Promise<number> {
  const metric = await registry.getSingleMetric('rswap_clock_skew_total')!.get();
  return metric.values.find((v) => v.labels.direction === direction)?.value ?? 0;
}

test('clock - a plausible timestamp is kept; a missing one is the arrival time', () => {
  assert.equal(measuredAt(now - 5_000, now), now - 5_000);
  assert.equal(measuredAt(now + 5_000, now), now + 5_000, 'a little ahead: a clock slightly off, believed');
  assert.equal(measuredAt(undefined, now), now);
});

test('clock - far ahead or far behind is replaced by the arrival time, and counted', async () => {
  const [future, past] = [await skewCount('future'), await skewCount('past')];
  assert.equal(measuredAt(now + 3_600_000, now), now);
  assert.equal(measuredAt(now - 600_000, now), now);
  assert.equal(await skewCount('future'), future + 1);
  assert.equal(await skewCount('past'), past + 1);
  assert.equal(measuredAt(now - 100_000, now, 120_000), now - 100_000, 'the allowed skew is a setting');
});

test('clock - liveness notes the skew and says how far off it is', async () => {
  const past = await skewCount('past');
  assert.equal(noteSkew(now - 600_000, now), -600_000);
  assert.equal(noteSkew(undefined, now), 0);
  assert.equal(await skewCount('past'), past + 1);
});
