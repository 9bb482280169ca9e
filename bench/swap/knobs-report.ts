/**
 * The knobs bench's outputs, from its rows (two per workload process: its fill and its phase, per
 * round and variant): CSV, and a Markdown table of each variant's MB/s per mode, median (min-max)
 * over the rounds, with the ratio of its median to baseline's. Pure functions: unit-tested
 * without a device.
 */
import { formatBytes } from '../../shared/units.js';
import { cell, spread } from '../app/report.js';
import { measuredOf, OPTIONAL_MEASURED, type Measured, type RowMode } from './report.js';
import type { Mode } from './workload.js';

/** A knobs row: the swap bench's measured fields (its mode: 'fill', or the process's phase, then equal to `process`). */
export interface KnobRow extends Measured {
  /** The round (1-based); also the seed of its random accesses. */
  round: number;
  variant: string;
  /** The mode of the workload process the row comes from (a fill row's: the phase that followed the fill). */
  process: Mode;
}

/** A workload attempt the cgroup's OOM killer ended (run again, up to 3 attempts in all). */
export interface OomKill {
  round: number;
  variant: string;
  mode: Mode;
  attempt: number;
}

/** A variant whose knob could not be set on this machine: not measured in those rounds. */
export interface SkippedVariant {
  variant: string;
  knob: string;
  /** The error setting the knob gave (the first round's). */
  reason: string;
  rounds: number[];
}

export const BASELINE = 'baseline';

const COLUMNS: Array<keyof KnobRow> = ['round', 'variant', 'process', 'mode', 'mbps', 'ms', 'ops', 'pswpin', 'pswpout', 'timeCapped', 'pageCacheBytes', 'ioReads', 'ioWrites', 'ioReadBytes', 'ioWriteBytes'];
const OPTIONAL: ReadonlyArray<keyof KnobRow> = OPTIONAL_MEASURED;

export function knobsCsv(rows: KnobRow[]): string {
  const text = (v: unknown) => (v === undefined ? '' : String(v));
  return [COLUMNS.join(','), ...rows.map((r) => COLUMNS.map((c) => text(r[c])).join(','))].join('\n') + '\n';
}

/** Rows from knobs.csv; a CSV of the old method (one row per repetition, all modes in one process) is refused. */
export function parseKnobsCsv(text: string): KnobRow[] {
  const [header, ...lines] = text.trim().split('\n');
  const names = (header ?? '').split(',');
  const missing = COLUMNS.filter((c) => !OPTIONAL.includes(c) && !names.includes(c));
  if (missing.length > 0) throw new Error(`not a knobs.csv of this bench: no ${missing.join(', ')} column (header '${header}')`);
  return lines.filter(Boolean).map((line) => {
    const cells = line.split(',');
    const get = (c: keyof KnobRow) => (names.includes(c) ? cells[names.indexOf(c)] ?? '' : '');
    return {
      round: Number(get('round')),
      variant: get('variant'),
      process: get('process') as Mode,
      ...measuredOf(get),
    };
  });
}

/**
 * A variant's MB/s in a mode over the rounds: median, min, max, how many values (the fill has one
 * per process: three a round), in how many rounds, and whether any of them hit the time cap.
 */
export function knobSummary(rows: KnobRow[], variant: string, mode: RowMode) {
  const mine = rows.filter((r) => r.variant === variant && r.mode === mode);
  const s = spread(mine.map((r) => r.mbps));
  return s && { ...s, rounds: new Set(mine.map((r) => r.round)).size, timeCapped: mine.some((r) => r.timeCapped) };
}

/** The variant's median over the baseline's in a mode (undefined where either is missing or the baseline's is 0). */
export function ratioToBaseline(rows: KnobRow[], variant: string, mode: RowMode, baseline = BASELINE): number | undefined {
  const a = knobSummary(rows, variant, mode);
  const b = knobSummary(rows, baseline, mode);
  return a && b && b.median > 0 ? a.median / b.median : undefined;
}

/** Phases (fills not counted) that reached their time cap, of all phases measured. */
export function knobsTimeCapped(rows: KnobRow[]): { capped: number; phases: number } {
  const phases = rows.filter((r) => r.mode !== 'fill');
  return { capped: phases.filter((r) => r.timeCapped).length, phases: phases.length };
}

/** The most page cache the FUSE export file held after any process, and after which variant; undefined if never read. */
export function knobsPageCacheMax(rows: KnobRow[]): { bytes: number; variant: string } | undefined {
  let max: { bytes: number; variant: string } | undefined;
  for (const r of rows) if (r.pageCacheBytes !== undefined && (!max || r.pageCacheBytes > max.bytes)) max = { bytes: r.pageCacheBytes, variant: r.variant };
  return max;
}

/** What the Markdown says besides the rows: the method's numbers, the variants' knobs, what was skipped or killed. */
export interface KnobsReportInfo {
  variants: Array<{ name: string; knob: string }>;
  modes: readonly Mode[];
  /** Rounds planned (--runs). */
  runs: number;
  dataBytes: number;
  limitBytes: number;
  blockBytes: number;
  phaseBytes: number;
  phaseCapSeconds: number;
  skipped: SkippedVariant[];
  oomKilled: OomKill[];
}

const ratioCell = (r: number | undefined) => (r === undefined ? '–' : `${r.toFixed(2)}x`);

/** The ranges of rounds, e.g. [1,2,3,5] -> "1-3, 5". */
export function roundList(rounds: number[]): string {
  const sorted = [...new Set(rounds)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; i += 1) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j += 1;
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j;
  }
  return parts.join(', ');
}

/**
 * knobs.md: a row per measured variant, for the fill and each mode its MB/s as median (min-max)
 * over the rounds and its median over baseline's; under the table one line with the rounds, the
 * work per phase, the phases that hit the cap, the OOM kills and the most FUSE page cache, then
 * the killed attempts and the skipped variants by name.
 */
export function knobsMarkdown(rows: KnobRow[], info: KnobsReportInfo): string {
  const rounds = new Set(rows.map((r) => r.round)).size;
  const modes: RowMode[] = ['fill', ...info.modes];
  const out: string[] = [
    `**The remote path's tuning knobs**, one changed at a time on an rswap lease: ${formatBytes(info.dataBytes)} of data in a ${formatBytes(info.limitBytes)} memory cgroup, ${formatBytes(info.blockBytes)} blocks. MB/s, median (min-max) over the rounds, and the variant's median over ${BASELINE}'s (variant/${BASELINE}).`,
    '',
  ];
  const head = ['variant', 'knob', ...modes.flatMap((m) => [m, `/${BASELINE}`])];
  out.push(`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`);
  let partial = false;
  for (const v of info.variants) {
    if (!rows.some((r) => r.variant === v.name)) continue;
    const cells = modes.flatMap((mode) => {
      const s = knobSummary(rows, v.name, mode);
      if (s && s.rounds < rounds) partial = true;
      const text = s ? `${cell(s)}${s.timeCapped ? '*' : ''}${s.rounds < rounds ? ` n=${s.rounds}` : ''}` : '–';
      return [text, ratioCell(ratioToBaseline(rows, v.name, mode))];
    });
    out.push(`| ${v.name} | ${v.knob} | ${cells.join(' | ')} |`);
  }
  const { capped, phases } = knobsTimeCapped(rows);
  const cache = knobsPageCacheMax(rows);
  const cacheText = cache === undefined
    ? 'FUSE page cache not read'
    : cache.bytes === 0
      ? 'FUSE page cache after a process: at most 0B (every swap-in went to the lender)'
      : `FUSE page cache after a process: at most ${formatBytes(cache.bytes)} (after ${cache.variant}; up to that much of what was swapped in may have come from this machine's page cache, not from the lender)`;
  out.push(
    '',
    `${rounds} of ${info.runs} round${info.runs === 1 ? '' : 's'}; ${formatBytes(info.phaseBytes)} of accesses per phase, one workload process per round, variant and mode, each after its own fill of the data; ${capped} of ${phases} phases reached the cap (--phase-cap-seconds ${info.phaseCapSeconds}); ${info.oomKilled.length} OOM kill${info.oomKilled.length === 1 ? '' : 's'}; ${cacheText}.`,
  );
  if (capped > 0) out.push('', '`*` at least one round of the phase reached its time cap before doing its bytes: MB/s over the part it did.');
  if (partial) out.push('', `\`n=k\`: only k of the ${rounds} rounds measured that cell (the others were OOM-killed on every attempt, skipped, or not reached).`);
  if (info.oomKilled.length > 0) {
    out.push('', `OOM-killed attempts (each run again, up to 3 attempts): ${info.oomKilled.map((k) => `round ${k.round} ${k.variant} ${k.mode} (attempt ${k.attempt})`).join('; ')}.`);
  }
  for (const s of info.skipped) out.push('', `Skipped: ${s.variant} (${s.knob}) in round${s.rounds.length === 1 ? '' : 's'} ${roundList(s.rounds)}: ${s.reason}`);
  return out.join('\n') + '\n';
}
