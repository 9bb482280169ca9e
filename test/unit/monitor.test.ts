import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cgroupV1Reading, cgroupV2Reading, machineReading, parsePsiSomeTotal, type Reading } from '../../services/monitor/sources.js';
import { DEFAULT_DETECTOR, Detector, fineWithoutLeases, isLow, neededBytes, runningOut, signalsBetween, surplus } from '../../services/monitor/detector.js';
import type { Signals } from '../../shared/schemas.js';

const MiB = 1024 ** 2;

test('sources - machine reading from /proc/meminfo, /proc/vmstat and PSI', () => {
  const meminfo = 'MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\nSwapTotal:  1048576 kB\nSwapFree:  524288 kB\n';
  const vmstat = 'pgmajfault 1234\npswpin 50\npswpout 700\nworkingset_refault_anon 99\n';
  const psi = 'some avg10=1.00 avg60=0.53 avg300=1.30 total=12131498\nfull avg10=0.00 avg60=0.44 avg300=1.06 total=9890174\n';
  const r = machineReading(5, meminfo, vmstat, psi);
  assert.deepEqual(r, {
    at: 5,
    limitBytes: 24000000 * 1024,
    usedBytes: 4000000 * 1024,
    availableBytes: 20000000 * 1024,
    swapUsedBytes: 512 * MiB,
    majorFaults: 1234,
    refaults: 99,
    swapOuts: 700,
    stallUs: 12131498,
  });
  assert.equal(parsePsiSomeTotal('full avg10=0 total=5\n'), undefined);
});

test('sources - cgroup v1 uses hierarchical totals; an unlimited cgroup is capped at the machine', () => {
  const stat = 'cache 1\nswap 7\ntotal_inactive_file 1048576\ntotal_swap 8388608\ntotal_pgmajfault 40\ntotal_workingset_refault_anon 3\n';
  const r = cgroupV1Reading(1, '200000000\n', '268435456\n', stat, 24 * 1024 * MiB);
  assert.equal(r.limitBytes, 256 * MiB);
  assert.equal(r.availableBytes, 256 * MiB - 200000000 + MiB);
  assert.equal(r.swapUsedBytes, 8 * MiB);
  assert.equal(r.majorFaults, 40);
  assert.equal(r.refaults, 3);
  assert.equal(r.swapOuts, undefined);
  assert.equal(r.stallUs, undefined);
  assert.equal(cgroupV1Reading(1, '0', '9223372036854771712', stat, 1000 * MiB).limitBytes, 1000 * MiB);
  assert.equal(r.swapUncounted, undefined);
  const uncounted = cgroupV1Reading(1, '200000000\n', '268435456\n', 'total_inactive_file 0\ntotal_pgmajfault 1\n', 24 * 1024 * MiB);
  assert.equal(uncounted.swapUncounted, true, 'without swap accounting (no total_swap) the swap is not counted, not zero');
});

test('sources - cgroup v2 reads memory.max "max", memory.swap.current and memory.pressure', () => {
  const r = cgroupV2Reading(1, '104857600\n', 'max\n', '4096\n', 'inactive_file 0\npgmajfault 2\nworkingset_refault_anon 1\npswpout 9\n', 'some avg10=0 avg60=0 avg300=0 total=77\n', 512 * MiB);
  assert.equal(r.limitBytes, 512 * MiB);
  assert.equal(r.availableBytes, 412 * MiB);
  assert.equal(r.swapUsedBytes, 4096);
  assert.equal(r.swapOuts, 9);
  assert.equal(r.stallUs, 77);
  assert.equal(r.swapUncounted, undefined);
  assert.equal(cgroupV2Reading(1, '1', 'max', '', '', '', MiB).swapUncounted, true, 'no memory.swap.current: not counted');
});

const reading = (at: number, extra: Partial<Reading> = {}): Reading => ({
  at,
  limitBytes: 256 * MiB,
  usedBytes: 200 * MiB,
  availableBytes: 56 * MiB,
  swapUsedBytes: 0,
  majorFaults: 0,
  refaults: 0,
  ...extra,
});

test('detector - rates: faults plus swap-outs, stall share from PSI totals, swap growth where swap-outs are not counted', () => {
  const s = signalsBetween(reading(0, { majorFaults: 100, stallUs: 0 }), reading(500, { majorFaults: 300, stallUs: 250_000, swapUsedBytes: 4096 * 100 }));
  assert.equal(s.swapPagesPerS, 400 + 200); // 200 faults and 100 pages of swap growth in 0.5 s
  assert.equal(s.stallPct, 50);
  // Counters that went backwards (a cgroup recreated) count as no traffic, not as negative.
  assert.equal(signalsBetween(reading(0, { majorFaults: 500 }), reading(1000, { majorFaults: 10 })).swapPagesPerS, 0);
  // Machine scope counts swap-outs directly.
  assert.equal(signalsBetween(reading(0, { swapOuts: 0 }), reading(1000, { swapOuts: 300, swapUsedBytes: 0 })).swapPagesPerS, 300);
});

const high: Signals = { swapPagesPerS: 5000, refaultsPerS: 100, availableBytes: 0, swapUsedBytes: 100 * MiB };
const mid: Signals = { swapPagesPerS: 100, refaultsPerS: 0, availableBytes: 0, swapUsedBytes: 100 * MiB };
const low: Signals = { swapPagesPerS: 0, refaultsPerS: 0, availableBytes: 50 * MiB, swapUsedBytes: 0 };

test('detector - enters only after signals hold high for enterHoldMs, and reports when they first crossed', () => {
  const d = new Detector(DEFAULT_DETECTOR);
  assert.equal(d.update(high, 0), undefined);
  assert.equal(d.update(low, 250), undefined, 'a spike alone is not pressure');
  assert.equal(d.update(high, 1000), undefined);
  assert.equal(d.update(high, 1250), undefined);
  assert.deepEqual(d.update(high, 1500), { kind: 'enter', onsetAt: 1000 });
  assert.equal(d.state, 'pressure');
});

test('detector - between the thresholds nothing changes; leaves after exitHoldMs of low signals', () => {
  const d = new Detector(DEFAULT_DETECTOR);
  d.update(high, 0);
  d.update(high, 500);
  assert.equal(d.state, 'pressure');
  for (let t = 1000; t < 60_000; t += 500) assert.equal(d.update(mid, t), undefined, 'mid-level traffic neither enters nor leaves');
  assert.equal(d.update(low, 60_000), undefined);
  assert.equal(d.update(low, 64_500), undefined);
  assert.deepEqual(d.update(low, 65_000), { kind: 'exit' });
  assert.equal(d.state, 'clear');
});

test('detector - flapping faster than the hold times causes no change at all', () => {
  const d = new Detector(DEFAULT_DETECTOR);
  d.update(high, 0);
  d.update(high, 500); // under pressure
  const changes = [];
  for (let t = 1000; t < 120_000; t += 1000) {
    // 3 s calm, 1 s busy: never 5 s of calm in a row
    changes.push(d.update(t % 4000 === 0 ? high : low, t));
  }
  assert.deepEqual(changes.filter(Boolean), []);
  assert.equal(d.state, 'pressure');
});

test('detector - need is swap in use plus the swap-out rate over the horizon, at least the minimum, whole MiB', () => {
  assert.equal(neededBytes({ ...high, swapUsedBytes: 10 * MiB }, 0, DEFAULT_DETECTOR), 64 * MiB);
  assert.equal(neededBytes({ ...high, swapUsedBytes: 100 * MiB + 1 }, 50 * MiB, DEFAULT_DETECTOR), 151 * MiB);
});

test('detector - surplus is available minus reserve, nothing under pressure, and the deficit under the reserve', () => {
  assert.deepEqual(surplus(900 * MiB, 256 * MiB, false), { lendableBytes: 644 * MiB, deficitBytes: 0 });
  assert.deepEqual(surplus(900 * MiB, 256 * MiB, true), { lendableBytes: 0, deficitBytes: 0 });
  assert.deepEqual(surplus(200 * MiB, 256 * MiB, false), { lendableBytes: 0, deficitBytes: 56 * MiB });
});

test('detector - without swap: memory that will run out within the lead time at its fill rate is pressure, before any thrashing', () => {
  // A swapless scope of 256 MiB filling at 32 MiB/s, sampled every 500 ms: no swap traffic at all.
  const d = new Detector(DEFAULT_DETECTOR);
  let previous = reading(0, { availableBytes: 256 * MiB, swapFreeBytes: 0 });
  let entered: { at: number; signals: Signals } | undefined;
  for (let at = 500; at <= 8_000 && !entered; at += 500) {
    const current = reading(at, { availableBytes: 256 * MiB - (at / 1000) * 32 * MiB, swapFreeBytes: 0 });
    const signals = signalsBetween(previous, current);
    assert.equal(signals.swapPagesPerS, 0);
    if (d.update(signals, at)?.kind === 'enter') entered = { at, signals };
    previous = current;
  }
  assert.ok(entered, 'pressure before the memory is gone');
  // Under 5 s x 32 MiB/s = 160 MiB left from 3.5 s on (144 MiB), held 500 ms: pressure at 4 s
  // with 128 MiB left, 4 s before the memory is gone.
  assert.equal(entered.at, 4_000);
  assert.equal(entered.signals.fillBytesPerS, 32 * MiB);
  assert.equal(neededBytes(entered.signals, 0, DEFAULT_DETECTOR), 160 * MiB, 'the need covers the fill over the lead time');
  // Off with --headroom-lead-s 0.
  assert.equal(new Detector({ ...DEFAULT_DETECTOR, headroomLeadS: 0 }).update(entered.signals, 0), undefined);
  assert.equal(signalsBetween(reading(0, { availableBytes: 10 * MiB }), reading(1000, { availableBytes: 20 * MiB })).fillBytesPerS, 0, 'growing memory fills nothing');
  // A host with swap of its own (no swapFreeBytes) is left to the thrashing signals: a fast
  // allocation that fits is not taken for one that will not.
  const { swapFreeBytes: _none, ...withOwnSwap } = entered.signals;
  const d2 = new Detector(DEFAULT_DETECTOR);
  d2.update(withOwnSwap, 0);
  assert.equal(d2.update(withOwnSwap, 1_000), undefined);
  // Once its leases give it room for the lead time, it is not running out; as the room fills, it is
  // again, and the need counts the swap already used.
  const d3 = new Detector(DEFAULT_DETECTOR);
  assert.equal(d3.update({ ...entered.signals, swapFreeBytes: 64 * MiB }, 0), undefined);
  assert.equal(d3.update({ ...entered.signals, swapFreeBytes: 64 * MiB }, 1_000), undefined, '128 + 64 MiB of room > 160 MiB of fill');
  assert.equal(neededBytes({ ...entered.signals, swapUsedBytes: 100 * MiB, swapFreeBytes: 8 * MiB }, 0, DEFAULT_DETECTOR), 260 * MiB);
});

test('detector - a swapless host whose lease gave it room stays under pressure while it fills, and clears once it stops', () => {
  // The lease of 204 MiB came: 70 MiB of its own left, filling at 16 MiB/s. It no longer runs out,
  // but without the lease it would in 4 s: clearing now would have the lease released under it.
  const o = { ...DEFAULT_DETECTOR, exitHoldMs: 2_000 };
  const d = new Detector(o);
  const filling: Signals = { swapPagesPerS: 0, refaultsPerS: 0, availableBytes: 70 * MiB, headroomBytes: 70 * MiB, swapUsedBytes: 0, swapFreeBytes: 204 * MiB, fillBytesPerS: 16 * MiB };
  assert.equal(d.update({ ...filling, swapFreeBytes: 0 }, 0), undefined);
  assert.equal(d.update({ ...filling, swapFreeBytes: 0 }, 500)?.kind, 'enter');
  assert.equal(runningOut(filling, o), false, 'the lease gives it room');
  for (let at = 1_000; at <= 10_000; at += 500) assert.equal(d.update(filling, at), undefined, `still filling at ${at} ms: no relief`);
  assert.equal(d.state, 'pressure');
  // The fill stopped: 70 MiB lasts for ever. Relief after the exit hold.
  const still = { ...filling, fillBytesPerS: 0 };
  assert.equal(d.update(still, 10_500), undefined);
  assert.equal(d.update(still, 12_500)?.kind, 'exit');
  // A slow fill its own headroom outlasts twice over clears too; a host with swap of its own is
  // left to the thrashing signals.
  assert.equal(fineWithoutLeases({ ...filling, fillBytesPerS: 7 * MiB }, o), true);
  assert.equal(fineWithoutLeases({ ...filling, fillBytesPerS: 8 * MiB }, o), false);
  const { swapFreeBytes: _none, ...ownSwap } = filling;
  assert.equal(fineWithoutLeases(ownSwap, o), true);
});

test('detector - a swapless lender that promises a lease is not filling: its headroom drops at once, its memory does not', () => {
  // 1 GiB available, then a 600 MiB lease exported: headroom 1 GiB -> 424 MiB within half a second.
  const before = reading(0, { availableBytes: 1024 * MiB, headroomBytes: 1024 * MiB, lentBytes: 0, swapFreeBytes: 0 });
  const after = reading(500, { availableBytes: 1024 * MiB, headroomBytes: 424 * MiB, lentBytes: 600 * MiB, swapFreeBytes: 0 });
  const signals = signalsBetween(before, after);
  assert.equal(signals.fillBytesPerS, 0, 'no fill');
  assert.equal(signals.headroomBytes, 424 * MiB, 'but the headroom is what is left');
  assert.equal(runningOut(signals, DEFAULT_DETECTOR), false);
  // Its own processes still count: 100 MiB more used over that half second is 200 MiB/s.
  const busy = reading(500, { availableBytes: 924 * MiB, headroomBytes: 324 * MiB, lentBytes: 600 * MiB, swapFreeBytes: 0 });
  assert.equal(signalsBetween(before, busy).fillBytesPerS, 200 * MiB);
});

test('detector - the fill rate is taken over the window, so a cache drop between two close samples is not a flood', () => {
  // 16 MiB/s for a second, then 25 MiB more gone in the 100 ms to a sample the kernel woke.
  const base = reading(0, { availableBytes: 128 * MiB, swapFreeBytes: 0 });
  const previous = reading(1_000, { availableBytes: 112 * MiB, swapFreeBytes: 0 });
  const current = reading(1_100, { availableBytes: 87 * MiB, swapFreeBytes: 0 });
  assert.equal(signalsBetween(previous, current).fillBytesPerS, 250 * MiB, 'over 100 ms it reads as 250 MiB/s');
  const windowed = signalsBetween(previous, current, base);
  assert.equal(windowed.fillBytesPerS, Math.round((41 * MiB) / 1.1), 'over the window it is the 37 MiB/s that it was');
  assert.ok(neededBytes(windowed, 0, DEFAULT_DETECTOR) <= 187 * MiB);
});

test('detector - a lender taking in its borrowers\' lease pages is not running out: its headroom counts them as used from the start', () => {
  // Available memory falls 64 MiB/s as tgtd receives pages of a promised lease; the headroom
  // (available net of promised pages not yet written) stays the same.
  const d = new Detector(DEFAULT_DETECTOR);
  let previous = reading(0, { availableBytes: 512 * MiB, headroomBytes: 256 * MiB });
  for (let at = 500; at <= 4_000; at += 500) {
    const current = reading(at, { availableBytes: 512 * MiB - (at / 1000) * 64 * MiB, headroomBytes: 256 * MiB });
    const signals = signalsBetween(previous, current);
    assert.equal(signals.fillBytesPerS, 0);
    assert.equal(d.update(signals, at), undefined);
    previous = current;
  }
  assert.equal(d.state, 'clear');
});

test('detector - a lease\'s swap area coming on or going off is no fill: the fill is memory and swap in use growing', () => {
  // A swapless host at 200 MiB available: a 256 MiB lease swaps on (room jumps), later it swaps
  // off with 64 MiB on it (the pages come back into memory).
  const before = reading(0, { availableBytes: 200 * MiB, swapFreeBytes: 0, swapUsedBytes: 0 });
  const on = reading(1_000, { availableBytes: 200 * MiB, swapFreeBytes: 256 * MiB, swapUsedBytes: 0 });
  assert.equal(signalsBetween(before, on).fillBytesPerS, 0, 'a swap-on frees no memory');
  const used = reading(2_000, { availableBytes: 200 * MiB, swapFreeBytes: 192 * MiB, swapUsedBytes: 64 * MiB });
  assert.equal(signalsBetween(on, used).fillBytesPerS, 64 * MiB, 'pages going out to the lease are the fill');
  const off = reading(3_000, { availableBytes: 136 * MiB, swapFreeBytes: 0, swapUsedBytes: 0 });
  assert.equal(signalsBetween(used, off).fillBytesPerS, 0, 'a swap-off moves pages, it adds none');
  assert.equal(isLow(signalsBetween(used, off), { ...DEFAULT_DETECTOR, headroomLeadS: 10 }), true);
});

test('detector - a thrashing host with swap of its own asks for its swap-out rate over the horizon, not its fill over the lead', () => {
  // 145 MiB in swap, swapping out 64 MiB/s, memory and swap in use growing 140 MiB/s.
  const s: Signals = { swapPagesPerS: 16384, refaultsPerS: 0, availableBytes: 0, headroomBytes: 0, swapUsedBytes: 145 * MiB, fillBytesPerS: 140 * MiB };
  const o = { ...DEFAULT_DETECTOR, horizonS: 2, headroomLeadS: 5 };
  assert.equal(neededBytes(s, 64 * MiB, o), (145 + 128) * MiB);
  assert.equal(neededBytes({ ...s, swapFreeBytes: 0 }, 64 * MiB, o), (145 + 700) * MiB, 'without swap of its own the fill over the lead is the need');
});
