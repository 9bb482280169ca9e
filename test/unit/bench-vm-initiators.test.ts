import { test } from 'node:test';
import assert from 'node:assert/strict';
import { summarize, type InitiatorRun } from '../../bench/vm-initiators.js';

const r = (initiator: 'kernel' | 'userspace', rep: number, seq: number, random: number): InitiatorRun => ({
  initiator,
  rep,
  fillMbps: seq * 2,
  phases: { 'seq-read': { mbps: seq, pswpin: 1, timeCapped: false }, 'random-read': { mbps: random, pswpin: 1, timeCapped: true } },
});

test('vm initiators bench - per phase, every run of each initiator and the ratio of their medians', () => {
  const summary = summarize([r('kernel', 1, 30, 2), r('userspace', 1, 10, 1), r('kernel', 2, 20, 3), r('userspace', 2, 10, 1), r('kernel', 3, 90, 4), r('userspace', 3, 5, 1)]);
  assert.deepEqual(summary.map((s) => s.mode), ['fill', 'seq-read', 'random-read']);
  const seq = summary.find((s) => s.mode === 'seq-read')!;
  assert.deepEqual(seq.kernel, [30, 20, 90]);
  assert.equal(seq.ratio, 3, 'median 30 over median 10: an outlier run (90) moves nothing');
  assert.equal(summary.find((s) => s.mode === 'random-read')!.ratio, 3);
  assert.equal(summarize([r('kernel', 1, 1, 1)]).find((s) => s.mode === 'seq-read')!.ratio, 0, 'no userspace run: no ratio');
});
