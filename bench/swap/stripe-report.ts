/**
 * The striping bench's outputs (bench/swap/stripe.ts), from its rows (one per round, layout,
 * reader count and mode): stripe.csv, and stripe.md with the aggregate MB/s of each layout as
 * median (min-max) of the rounds, the ratio of N leases to the baseline layout (1 lease) at each
 * reader count, and how the reads spread over the leases' devices. Pure functions: unit-tested.
 */
import { formatBytes } from '../../shared/units.js';
import { cell, spread } from '../app/report.js';
import type { DeviceIo, Mode } from './workload.js';

export interface StripeRow {
  /** The round (1-based). */
  run: number;
  /** Leases in the layout: the same total swap split over this many. */
  layout: number;
  /** Each lease's size. */
  leaseBytes: number;
  /** Reader processes, all in one memory cgroup. */
  readers: number;
  mode: Mode;
  limitBytes: number;
  /** All readers' data together, and all their phase work together. */
  dataBytes: number;
  phaseBytes: number;
  blockBytes: number;
  /** Bytes all readers read in the phase (phaseBytes unless one hit the cap). */
  bytes: number;
  /** From the bench's go to the last reader's report. */
  ms: number;
  /** Aggregate: bytes / ms, 10^6 bytes per second. */
  mbps: number;
  /** Each reader's own MB/s and phase time (its clock, from its go). */
  readerMbps: number[];
  readerMs: number[];
  /** Pages swapped in and out on the whole machine between go and the last report. */
  pswpin: number;
  pswpout: number;
  /** A reader's phase stopped on --phase-cap-seconds. */
  timeCapped: boolean;
  /** Per lease, in the order they were obtained: its swap area's block device and what it completed. */
  devices: string[];
  deviceReads: number[];
  deviceReadBytes: number[];
  deviceWrites: number[];
  /** Per lease: its FUSE export file's page cache after the phase (undefined where fincore failed). */
  pageCacheBytes: Array<number | undefined>;
}

const COLUMNS: Array<keyof StripeRow> = [
  'run', 'layout', 'leaseBytes', 'readers', 'mode', 'limitBytes', 'dataBytes', 'phaseBytes', 'blockBytes', 'bytes', 'ms', 'mbps',
  'readerMbps', 'readerMs', 'pswpin', 'pswpout', 'timeCapped', 'devices', 'deviceReads', 'deviceReadBytes', 'deviceWrites', 'pageCacheBytes',
];
const LISTS = new Set<keyof StripeRow>(['readerMbps', 'readerMs', 'devices', 'deviceReads', 'deviceReadBytes', 'deviceWrites', 'pageCacheBytes']);

/** The per-reader and per-lease columns are lists, one value per reader or lease, joined by ';'. */
export function toCsv(rows: StripeRow[]): string {
  const text = (v: unknown) => (Array.isArray(v) ? v.map((x) => (x === undefined ? '' : String(x))).join(';') : String(v));
  return [COLUMNS.join(','), ...rows.map((r) => COLUMNS.map((c) => text(r[c])).join(','))].join('\n') + '\n';
}

export function fromCsv(text: string): StripeRow[] {
  const [header, ...lines] = text.trim().split('\n');
  const names = header!.split(',') as Array<keyof StripeRow>;
  return lines.map((line) => {
    const row: Record<string, unknown> = {};
    line.split(',').forEach((v, i) => {
      const name = names[i]!;
      if (name === 'mode') row[name] = v;
      else if (name === 'timeCapped') row[name] = v === 'true';
      else if (name === 'devices') row[name] = v === '' ? [] : v.split(';');
      else if (name === 'pageCacheBytes') row[name] = v === '' ? [] : v.split(';').map((x) => (x === '' ? undefined : Number(x)));
      else if (LISTS.has(name)) row[name] = v === '' ? [] : v.split(';').map(Number);
      else row[name] = Number(v);
    });
    return row as unknown as StripeRow;
  });
}

/** What the bench measured around one phase: the readers' reports, its window and the counters. */
export interface CellMeasurement {
  /** Each reader's phase of the cell's mode. */
  phases: Array<{ bytes: number; ms: number; mbps: number; timeCapped: boolean }>;
  /** From go to the last reader's report, ms. */
  ms: number;
  /** Per lease: requests completed between go and the last report. */
  io: DeviceIo[];
  pswpin: number;
  pswpout: number;
}

/** The difference of two block device stat readings (after - before). */
export function ioDelta(before: DeviceIo, after: DeviceIo): DeviceIo {
  return { reads: after.reads - before.reads, writes: after.writes - before.writes, readBytes: after.readBytes - before.readBytes, writeBytes: after.writeBytes - before.writeBytes };
}

/** A row from one cell's measurement: the aggregate is all bytes read / the window from go to the last report. */
export function rowOf(
  at: Pick<StripeRow, 'run' | 'layout' | 'leaseBytes' | 'readers' | 'mode' | 'limitBytes' | 'dataBytes' | 'phaseBytes' | 'blockBytes' | 'devices'>,
  m: CellMeasurement,
  pageCacheBytes: Array<number | undefined>,
): StripeRow {
  const bytes = m.phases.reduce((sum, p) => sum + p.bytes, 0);
  return {
    ...at,
    bytes,
    ms: Math.round(m.ms * 10) / 10,
    mbps: m.ms > 0 ? Math.round((bytes / 1e6 / (m.ms / 1000)) * 100) / 100 : 0,
    readerMbps: m.phases.map((p) => p.mbps),
    readerMs: m.phases.map((p) => p.ms),
    pswpin: m.pswpin,
    pswpout: m.pswpout,
    timeCapped: m.phases.some((p) => p.timeCapped),
    deviceReads: m.io.map((d) => d.reads),
    deviceReadBytes: m.io.map((d) => d.readBytes),
    deviceWrites: m.io.map((d) => d.writes),
    pageCacheBytes,
  };
}

export interface At {
  layout: number;
  readers: number;
  mode: Mode;
}
const mineAt = (rows: StripeRow[], at: At) => rows.filter((r) => r.layout === at.layout && r.readers === at.readers && r.mode === at.mode);

/** Aggregate MB/s at a cell over the rounds: median, min, max, n, and whether a round hit the cap. */
export function aggregate(rows: StripeRow[], at: At) {
  const mine = mineAt(rows, at);
  const s = spread(mine.map((r) => r.mbps));
  return s && { ...s, timeCapped: mine.some((r) => r.timeCapped) };
}

/** Each reader's own MB/s at a cell, over every reader of every round. */
export function perReader(rows: StripeRow[], at: At) {
  return spread(mineAt(rows, at).flatMap((r) => r.readerMbps));
}

/** The median aggregate of `at` over that of the same reader count and mode on `baseline` leases. */
export function speedup(rows: StripeRow[], at: At, baseline: number): number | undefined {
  const a = aggregate(rows, at);
  const b = aggregate(rows, { ...at, layout: baseline });
  return a && b && b.median > 0 ? a.median / b.median : undefined;
}

/**
 * The share of the phase's reads each lease's device completed (by lease, in the order obtained),
 * median over the rounds that counted any; undefined when none did.
 */
export function readShares(rows: StripeRow[], at: At): number[] | undefined {
  const shares = mineAt(rows, at)
    .map((r) => {
      const total = r.deviceReads.reduce((a, b) => a + b, 0);
      return total > 0 ? r.deviceReads.map((n) => n / total) : undefined;
    })
    .filter((s): s is number[] => s !== undefined);
  if (shares.length === 0) return undefined;
  return Array.from({ length: at.layout }, (_, i) => spread(shares.map((s) => s[i]))?.median ?? 0);
}

/** The most page cache any lease's FUSE file held after a phase, per layout ("2 leases"). */
export function pageCacheMax(rows: StripeRow[]): Record<string, number> {
  const max: Record<string, number> = {};
  for (const r of rows) {
    const seen = r.pageCacheBytes.filter((b): b is number => b !== undefined);
    if (seen.length > 0) max[leases(r.layout)] = Math.max(max[leases(r.layout)] ?? 0, ...seen);
  }
  return max;
}

/** Phases (cells) where a reader reached the cap, of all measured. */
export function timeCapCount(rows: StripeRow[]): { capped: number; phases: number } {
  return { capped: rows.filter((r) => r.timeCapped).length, phases: rows.length };
}

export const leases = (n: number) => `${n} lease${n === 1 ? '' : 's'}`;
const fmt = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '–' : x >= 100 ? x.toFixed(0) : x.toFixed(2));
const pct = (x: number) => `${Math.round(x * 100)}%`;
const int = (x: number | undefined) => (x === undefined ? '–' : Math.round(x).toLocaleString('en-US'));

export interface ReportContext {
  layouts: number[];
  readers: number[];
  modes: Mode[];
  runs: number;
  limitBytes: number;
  dataBytes: number;
  phaseBytes: number;
  blockBytes: number;
  swapBytes: number;
  oomKilled: string[];
}

/**
 * stripe.md: per mode, the aggregate MB/s table (reader counts down, layouts across, each N-lease
 * layout followed by its ratio to the baseline, the fewest leases measured: 1 unless left out),
 * each reader's own MB/s, then the reads per lease's device; notes on the cap, OOM kills and the
 * FUSE files' page cache.
 */
export function markdown(rows: StripeRow[], ctx: ReportContext): string {
  const layouts = [...ctx.layouts].sort((a, b) => a - b);
  const readers = [...ctx.readers].sort((a, b) => a - b);
  const baseline = layouts[0]!;
  const runs = new Set(rows.map((r) => r.run)).size;
  const out: string[] = [
    `# Striping swap over several leases`,
    '',
    `The same ${formatBytes(ctx.swapBytes)} of remote swap as 1 lease or split into N leases at one priority; P reader processes in one memory cgroup of ${formatBytes(ctx.limitBytes)} share ${formatBytes(ctx.dataBytes)} of data (each fills its share, then all read together) and ${formatBytes(ctx.phaseBytes)} of reads in ${formatBytes(ctx.blockBytes)} blocks. Aggregate MB/s = bytes all readers read / time from go to the last reader's end (10^6 bytes/s); median (min-max) of ${runs} round${runs === 1 ? '' : 's'}.`,
  ];
  for (const mode of ctx.modes) {
    out.push('', `## ${mode}`, '', `**Aggregate MB/s**, and each layout's ratio of medians to ${leases(baseline)}`, '');
    const head = ['readers', ...layouts.flatMap((n) => (n === baseline ? [leases(n)] : [leases(n), `${n} / ${baseline}`]))];
    out.push(`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`);
    for (const p of readers) {
      const cells = layouts.flatMap((n) => {
        const s = aggregate(rows, { layout: n, readers: p, mode });
        const value = s ? `${cell(s, fmt)}${s.timeCapped ? '*' : ''}${s.n < runs ? ` n=${s.n}` : ''}` : '–';
        return n === baseline ? [value] : [value, s ? `${fmt(speedup(rows, { layout: n, readers: p, mode }, baseline))}x` : '–'];
      });
      out.push(`| ${p} | ${cells.join(' | ')} |`);
    }
    out.push('', `**Each reader's own MB/s** (its bytes / its own phase time), median (min-max) over readers and rounds`, '');
    const readerHead = ['readers', ...layouts.map(leases)];
    out.push(`| ${readerHead.join(' | ')} |`, `|${readerHead.map(() => '---').join('|')}|`);
    for (const p of readers) out.push(`| ${p} | ${layouts.map((n) => cell(perReader(rows, { layout: n, readers: p, mode }), fmt)).join(' | ')} |`);
    out.push('', `**Reads per lease**: the share of the phase's read requests each lease's device completed (lease 1 / lease 2 / ...), median of the rounds; then the median of all leases' read requests and of the machine's pswpin`, '');
    out.push(`| ${readerHead.join(' | ')} |`, `|${readerHead.map(() => '---').join('|')}|`);
    for (const p of readers) {
      const cells = layouts.map((n) => {
        const at = { layout: n, readers: p, mode };
        const mine = mineAt(rows, at);
        if (mine.length === 0) return '–';
        const shares = readShares(rows, at);
        const reads = spread(mine.map((r) => r.deviceReads.reduce((a, b) => a + b, 0)))?.median;
        const pswpin = spread(mine.map((r) => r.pswpin))?.median;
        return `${shares ? shares.map(pct).join(' / ') : 'no reads'} (${int(reads)} reads, pswpin ${int(pswpin)})`;
      });
      out.push(`| ${p} | ${cells.join(' | ')} |`);
    }
  }
  const { capped, phases } = timeCapCount(rows);
  const notes = [
    `\`*\`: a reader of at least one round reached --phase-cap-seconds before doing its share: MB/s over the part done. ${capped} of ${phases} phases reached the cap.`,
  ];
  if (runs > 1) notes.push(`\`n=k\`: only k of the ${runs} rounds measured that cell (the others were OOM-killed on every attempt, or not reached).`);
  if (ctx.oomKilled.length > 0) notes.push(`OOM-killed attempts (retried up to 3 times): ${ctx.oomKilled.join('; ')}.`);
  for (const [layout, max] of Object.entries(pageCacheMax(rows))) {
    const held = `${layout}: a lease's FUSE file held at most ${formatBytes(max)} of page cache after a phase`;
    notes.push(max === 0 ? `${held}: the reads went to the lender.` : `${held}: up to that much of what was swapped in may have come from this machine's page cache, not from the lender.`);
  }
  return out.join('\n') + '\n\n' + notes.join('\n\n') + '\n';
}
