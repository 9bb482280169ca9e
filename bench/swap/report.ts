/**
 * The swap bench's outputs, from its rows (one per run, point, phase and device): CSV, a Markdown
 * table per sweep and mode whose cells are the median (min-max) of the runs, remote's ratios of
 * medians to local-disk swap with the paper's figures beside ours, and SVG plots of the medians
 * shaped like the paper's fig. 1 (ratio against data size) and fig. 2 (ratio against block size).
 * Pure functions: unit-tested without a device.
 */
import { formatBytes } from '../../shared/units.js';
import { cell, spread } from '../app/report.js';
import type { Mode } from './workload.js';

export type Sweep = 'data' | 'block';
export type RowMode = Mode | 'fill';

/** What one workload process measured of one phase (or its fill): the fields every swap bench row has. */
export interface Measured {
  mode: RowMode;
  mbps: number;
  ms: number;
  ops: number;
  pswpin: number;
  pswpout: number;
  /** The phase reached --phase-cap-seconds before doing its --phase-bytes: MB/s over the part it did. */
  timeCapped: boolean;
  /**
   * Remote devices only: bytes of the lease's FUSE export file in the page cache, read when the
   * phase's process has ended (its fill row carries the same value).
   */
  pageCacheBytes?: number;
  /** Requests the swap device completed during the phase, and their bytes (its sysfs stat). */
  ioReads?: number;
  ioWrites?: number;
  ioReadBytes?: number;
  ioWriteBytes?: number;
}

export interface Row extends Measured {
  /** The round (1-based) the measurement belongs to. */
  run: number;
  device: string;
  sweep: Sweep;
  /** Data size as a multiple of the cgroup's memory limit (the paper's x axis in fig. 1). */
  dataRatio: number;
  dataBytes: number;
  blockBytes: number;
  limitBytes: number;
}

const COLUMNS: Array<keyof Row> = ['run', 'device', 'sweep', 'dataRatio', 'dataBytes', 'blockBytes', 'limitBytes', 'mode', 'mbps', 'ms', 'ops', 'pswpin', 'pswpout', 'timeCapped', 'pageCacheBytes', 'ioReads', 'ioWrites', 'ioReadBytes', 'ioWriteBytes'];
const IO_COLUMNS = ['ioReads', 'ioWrites', 'ioReadBytes', 'ioWriteBytes'] as const;

export function toCsv(rows: Row[]): string {
  const text = (v: unknown) => (v === undefined ? '' : String(v));
  return [COLUMNS.join(','), ...rows.map((r) => COLUMNS.map((c) => text(r[c])).join(','))].join('\n') + '\n';
}

/** The optional measured columns: present only where the run had them (a page cache check, a block device). */
export const OPTIONAL_MEASURED = ['pageCacheBytes', ...IO_COLUMNS] as const;

/** A CSV row's measured fields, `get` giving a column's cell ('' where the CSV has none). */
export function measuredOf(get: (column: keyof Measured) => string): Measured {
  return {
    mode: get('mode') as RowMode,
    mbps: Number(get('mbps')),
    ms: Number(get('ms')),
    ops: Number(get('ops')),
    pswpin: Number(get('pswpin')),
    pswpout: Number(get('pswpout')),
    timeCapped: get('timeCapped') === 'true',
    ...Object.fromEntries(OPTIONAL_MEASURED.filter((c) => get(c) !== '').map((c) => [c, Number(get(c))])),
  };
}

/** Rows from swap.csv; a CSV written before runs, the page cache check and the device counts reads as run 1, without them. */
export function fromCsv(text: string): Row[] {
  const [header, ...lines] = text.trim().split('\n');
  const names = header!.split(',');
  return lines.map((line) => {
    const cells = line.split(',');
    const get = (c: keyof Row) => (names.includes(c) ? cells[names.indexOf(c)]! : '');
    return {
      run: get('run') === '' ? 1 : Number(get('run')),
      device: get('device'),
      sweep: get('sweep') as Sweep,
      dataRatio: Number(get('dataRatio')),
      dataBytes: Number(get('dataBytes')),
      blockBytes: Number(get('blockBytes')),
      limitBytes: Number(get('limitBytes')),
      ...measuredOf(get),
    };
  });
}

type At = Pick<Row, 'sweep' | 'dataBytes' | 'blockBytes' | 'mode'>;
const key = (r: At) => `${r.sweep}/${r.dataBytes}/${r.blockBytes}/${r.mode}`;

/**
 * The MB/s of `device` at a point over the runs: median, min, max and how many values (a point
 * has a fill row per mode in each run), in how many runs, and whether any of them hit the time cap.
 */
export function summary(rows: Row[], device: string, at: At) {
  const mine = rows.filter((r) => r.device === device && key(r) === key(at));
  const s = spread(mine.map((r) => r.mbps));
  return s && { ...s, runs: new Set(mine.map((r) => r.run)).size, timeCapped: mine.some((r) => r.timeCapped) };
}

/** The median throughput of `device` over that of `baseline` at a point (undefined where either is missing or 0). */
export function ratio(rows: Row[], device: string, baseline: string, at: At): number | undefined {
  const a = summary(rows, device, at);
  const b = summary(rows, baseline, at);
  return a && b && b.median > 0 ? a.median / b.median : undefined;
}

/** Local RAM-backed swap: the fastest of them at a point is the ceiling remote swap is held to. */
export const RAM_DEVICES = ['zram', 'ramfs-loop'] as const;

/** The fastest RAM-backed device measured at a point (by median), and remote's ratio to it. */
export function ceiling(rows: Row[], at: At): { device: string; ratio: number } | undefined {
  const best = RAM_DEVICES.map((d) => ({ device: d, s: summary(rows, d, at) }))
    .filter((x) => x.s !== undefined)
    .sort((a, b) => b.s!.median - a.s!.median)[0];
  const r = best && ratio(rows, 'remote', best.device, at);
  return best && r !== undefined ? { device: best.device, ratio: r } : undefined;
}

/** The block size of the data-size sweep (the run's smallest), e.g. "4KiB". */
export function dataSweepBlock(rows: Row[]): string {
  return formatBytes(Math.min(...rows.filter((r) => r.sweep === 'data').map((r) => r.blockBytes)));
}

/** Phases (not fills) that reached their time cap, of all phases measured; a point both sweeps share counts once. */
export function timeCapCount(rows: Row[]): { capped: number; phases: number } {
  const phases = new Map<string, boolean>();
  for (const r of rows) if (r.mode !== 'fill') phases.set(`${r.run}/${r.device}/${r.dataBytes}/${r.blockBytes}/${r.mode}`, r.timeCapped);
  return { capped: [...phases.values()].filter(Boolean).length, phases: phases.size };
}

/** The most page cache the FUSE export file held after any phase, per device that was checked. */
export function pageCacheMax(rows: Row[]): Record<string, number> {
  const max: Record<string, number> = {};
  for (const r of rows) if (r.pageCacheBytes !== undefined) max[r.device] = Math.max(max[r.device] ?? 0, r.pageCacheBytes);
  return max;
}

/** The paper's remote/local ratios (fig. 1 at 1 KB blocks over 512 MB-4 GB; fig. 2 at 1 GB, blocks >= 64 KB). */
export const PAPER = {
  data: { 'seq-read': [2.5, 3.2], 'random-read': [22, 27] } as Partial<Record<RowMode, [number, number]>>,
  block: { 'seq-read': [1.1, 1.2], 'random-read': [1.1, 1.2] } as Partial<Record<RowMode, [number, number]>>,
  blockFrom: 64 * 1024,
};

const fmt = (n: number | undefined, digits = 2) => (n === undefined || !Number.isFinite(n) ? '–' : n >= 100 ? n.toFixed(0) : n.toFixed(digits));

/** Points of one sweep, in order. */
function pointsOf(rows: Row[], sweep: Sweep): Array<{ dataBytes: number; blockBytes: number; dataRatio: number }> {
  const seen = new Map<string, { dataBytes: number; blockBytes: number; dataRatio: number }>();
  for (const r of rows.filter((row) => row.sweep === sweep)) seen.set(`${r.dataBytes}/${r.blockBytes}`, { dataBytes: r.dataBytes, blockBytes: r.blockBytes, dataRatio: r.dataRatio });
  return [...seen.values()].sort((a, b) => (sweep === 'data' ? a.dataBytes - b.dataBytes : a.blockBytes - b.blockBytes));
}

/**
 * One Markdown table per sweep and mode: MB/s of every device at every point, median (min-max) of
 * the runs, then remote's ratio of medians to local disk (the paper's measure), to the HDD model
 * (the paper's disk), and to the ceiling (the fastest local RAM-backed swap at that point, zram or
 * a loop device on ramfs, named in the cell); under the tables, how many phases hit the time cap and
 * how much page cache the remote devices' FUSE files held.
 */
const ceilingCell = (rows: Row[], at: At) => {
  const c = ceiling(rows, at);
  return c ? `${fmt(c.ratio)} (${c.device})` : '–';
};

export function markdownTables(rows: Row[], devices: string[], modes: RowMode[]): string {
  const out: string[] = [];
  const runs = new Set(rows.map((r) => r.run)).size;
  for (const sweep of ['data', 'block'] as const) {
    const points = pointsOf(rows, sweep);
    if (points.length === 0) continue;
    for (const mode of modes) {
      const paper = PAPER[sweep][mode];
      const title = sweep === 'data' ? `Data size sweep (${dataSweepBlock(rows)} blocks)` : 'Block size sweep (data = 1x limit)';
      out.push(`\n**${title}, ${mode}** — MB/s, median (min-max) of ${runs} run${runs === 1 ? '' : 's'}, and remote's ratios of medians\n`);
      const head = [sweep === 'data' ? 'data (x limit)' : 'block', ...devices, 'remote/local', 'remote/hdd-model', 'remote/ceiling', 'paper remote/local'];
      out.push(`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`);
      for (const p of points) {
        const at = { sweep, dataBytes: p.dataBytes, blockBytes: p.blockBytes, mode };
        const cells = devices.map((d) => {
          const s = summary(rows, d, at);
          return s ? `${cell(s, fmt)}${s.timeCapped ? '*' : ''}${s.runs < runs ? ` n=${s.runs}` : ''}` : '–';
        });
        const paperCell = paper && (sweep === 'data' || p.blockBytes >= PAPER.blockFrom) ? `${paper[0]}-${paper[1]}x` : '';
        out.push(
          `| ${sweep === 'data' ? `${p.dataRatio}x (${formatBytes(p.dataBytes)})` : formatBytes(p.blockBytes)} | ${cells.join(' | ')} | ${fmt(ratio(rows, 'remote', 'local', at))} | ${fmt(ratio(rows, 'remote', 'hdd-model', at))} | ${ceilingCell(rows, at)} | ${paperCell} |`,
        );
      }
    }
  }
  return out.join('\n') + '\n' + notes(rows, runs);
}

/** The lines under the tables: the time cap, missing runs, the FUSE files' page cache. */
function notes(rows: Row[], runs: number): string {
  const { capped, phases } = timeCapCount(rows);
  const lines = [
    `\`*\` at least one run of the phase reached its time cap (--phase-cap-seconds) before doing its --phase-bytes: MB/s over the part it did. ${capped} of ${phases} phases reached the cap.`,
  ];
  if (runs > 1) lines.push(`\`n=k\`: only k of the ${runs} runs measured that point (the others were OOM-killed on every attempt, or not reached).`);
  for (const [device, max] of Object.entries(pageCacheMax(rows))) {
    const held = `${device}: the FUSE file held at most ${formatBytes(max)} of page cache during the ${device} runs`;
    lines.push(max === 0 ? `${held}: the reads went to the lender.` : `${held}: up to that much of what was swapped in may have come from this machine's page cache, not from the lender.`);
  }
  return '\n' + lines.join('\n\n') + '\n';
}

// ---- The HDD model, calibrated ----

/**
 * A disk that serves one request at a time (queue depth 1, as swap-in faults of one thread arrive):
 * each request costs a positioning time, 1/IOPS (seek + half a rotation: about 12.5 ms on a
 * 7,200 rpm drive, 80 IOPS; 150-200 for short seeks), plus its bytes at the streaming rate. A
 * MODEL, not a measurement: no cache, no reordering, no readahead of its own.
 */
export const HDD_IOPS_SWEEP = [80, 100, 125, 150, 175, 200];
export const HDD_STREAM_BPS = 120e6;

/** The modelled disk's time (ms) for `io`, at `iops`. */
export function hddModelMs(io: { reads: number; writes: number; readBytes: number; writeBytes: number }, iops: number, bps = HDD_STREAM_BPS): number {
  return ((io.reads + io.writes) / iops + (io.readBytes + io.writeBytes) / bps) * 1000;
}

const ioOf = (r: Row) => (r.ioReads === undefined ? undefined : { reads: r.ioReads, writes: r.ioWrites ?? 0, readBytes: r.ioReadBytes ?? 0, writeBytes: r.ioWriteBytes ?? 0 });
const median = (values: number[]) => {
  const v = [...values].sort((a, b) => a - b);
  return v.length === 0 ? undefined : v.length % 2 ? v[(v.length - 1) / 2]! : (v[v.length / 2 - 1]! + v[v.length / 2]!) / 2;
};

/**
 * remote's speed-up over the modelled disk at a point, for each IOPS: per run, the model's time
 * for the requests the lease completed during the phase over the phase's measured time; the
 * median of the runs. Undefined where no run recorded its device's requests.
 */
export function hddModelRatios(rows: Row[], at: At, device = 'remote'): Array<{ iops: number; ratio: number }> | undefined {
  const mine = rows.filter((r) => r.device === device && key(r) === key(at) && ioOf(r) !== undefined && r.ms > 0);
  if (mine.length === 0) return undefined;
  return HDD_IOPS_SWEEP.map((iops) => ({ iops, ratio: median(mine.map((r) => hddModelMs(ioOf(r)!, iops) / r.ms))! }));
}

/** One table per mode: remote against the model across IOPS, with the requests behind it. */
export function hddModelTables(rows: Row[], modes: RowMode[], device = 'remote'): string {
  const out: string[] = [];
  for (const sweep of ['data', 'block'] as const) {
    for (const mode of modes) {
      const points = pointsOf(rows, sweep).filter((p) => hddModelRatios(rows, { sweep, ...p, mode }, device));
      if (points.length === 0) continue;
      out.push(`\n**HDD model (a model, not a disk), ${sweep === 'data' ? `data size sweep (${dataSweepBlock(rows)} blocks)` : 'block size sweep'}, ${mode}**: ${device}'s speed-up over a disk serving the same requests one at a time at 1/IOPS each plus ${HDD_STREAM_BPS / 1e6} MB/s, median of the runs\n`);
      const head = [sweep === 'data' ? 'data (x limit)' : 'block', 'requests (median)', 'KiB per request', ...HDD_IOPS_SWEEP.map((i) => `${i} IOPS`)];
      out.push(`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`);
      for (const p of points) {
        const at = { sweep, dataBytes: p.dataBytes, blockBytes: p.blockBytes, mode };
        const mine = rows.filter((r) => r.device === device && key(r) === key(at) && ioOf(r) !== undefined).map((r) => ioOf(r)!);
        const requests = median(mine.map((io) => io.reads + io.writes))!;
        const perRequest = median(mine.map((io) => (io.reads + io.writes > 0 ? (io.readBytes + io.writeBytes) / (io.reads + io.writes) / 1024 : 0)))!;
        const ratios = hddModelRatios(rows, at, device)!;
        out.push(`| ${sweep === 'data' ? `${p.dataRatio}x (${formatBytes(p.dataBytes)})` : formatBytes(p.blockBytes)} | ${Math.round(requests)} | ${fmt(perRequest, 1)} | ${ratios.map((r) => `${fmt(r.ratio)}x`).join(' | ')} |`);
      }
    }
  }
  return out.join('\n') + (out.length ? '\n' : '');
}

// ---- SVG ----

const COLORS: Record<string, string> = { remote: '#d62728', 'remote-unsealed': '#ff7f0e', 'remote-qemu10': '#8c564b', local: '#1f77b4', 'hdd-model': '#7f7f7f', zram: '#2ca02c', 'ramfs-loop': '#9467bd' };

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * One figure per sweep: a panel per mode, x = the sweep's points (evenly spaced, labelled), y = the
 * ratio of the device's median throughput to local-disk swap's on a log scale, a line per device; the paper's remote/local
 * ratios are a shaded band where it reported them.
 */
export function svgFigure(rows: Row[], sweep: Sweep, devices: string[], modes: Mode[], title: string): string {
  const points = pointsOf(rows, sweep);
  const panelW = 300;
  const panelH = 240;
  const left = 60;
  const top = 50;
  const gap = 40;
  const width = left + modes.length * (panelW + gap) + 10;
  const height = top + panelH + 110;
  const ratios = modes.flatMap((mode) =>
    devices.flatMap((d) => points.map((p) => ratio(rows, d, 'local', { sweep, dataBytes: p.dataBytes, blockBytes: p.blockBytes, mode })).filter((v): v is number => v !== undefined && v > 0)),
  );
  const bands = modes.flatMap((m) => PAPER[sweep][m] ?? []);
  const lo = Math.floor(Math.log10(Math.min(1, ...ratios, ...bands)));
  const hi = Math.ceil(Math.log10(Math.max(1, ...ratios, ...bands)));
  const span = Math.max(1, hi - lo);
  const yOf = (v: number) => top + panelH - ((Math.log10(v) - lo) / span) * panelH;
  const xOf = (panel: number, i: number) => left + panel * (panelW + gap) + (points.length === 1 ? panelW / 2 : (i / (points.length - 1)) * (panelW - 20) + 10);
  const svg: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">${escapeXml(title)}</text>`,
  ];
  modes.forEach((mode, panel) => {
    const x0 = left + panel * (panelW + gap);
    svg.push(`<rect x="${x0}" y="${top}" width="${panelW}" height="${panelH}" fill="none" stroke="#333"/>`);
    svg.push(`<text x="${x0 + panelW / 2}" y="${top - 8}" text-anchor="middle" font-size="12">${mode}</text>`);
    for (let e = lo; e <= hi; e += 1) {
      const y = yOf(10 ** e);
      svg.push(`<line x1="${x0}" x2="${x0 + panelW}" y1="${y}" y2="${y}" stroke="#ddd"/>`, `<text x="${x0 - 4}" y="${y + 4}" text-anchor="end">${10 ** e}x</text>`);
    }
    const paper = PAPER[sweep][mode];
    if (paper) {
      const from = sweep === 'block' ? points.findIndex((p) => p.blockBytes >= PAPER.blockFrom) : 0;
      if (from >= 0) {
        const xa = xOf(panel, from) - 5;
        const xb = xOf(panel, points.length - 1) + 5;
        svg.push(`<rect x="${xa}" y="${yOf(paper[1])}" width="${xb - xa}" height="${Math.max(2, yOf(paper[0]) - yOf(paper[1]))}" fill="#d62728" fill-opacity="0.15"/>`);
        svg.push(`<text x="${xa + 2}" y="${yOf(paper[1]) - 3}" fill="#a00">paper remote/local ${paper[0]}-${paper[1]}x</text>`);
      }
    }
    points.forEach((p, i) => {
      const label = sweep === 'data' ? `${p.dataRatio}x` : formatBytes(p.blockBytes).replace('.0', '');
      svg.push(`<text x="${xOf(panel, i)}" y="${top + panelH + 15}" text-anchor="middle">${escapeXml(label)}</text>`);
    });
    svg.push(`<text x="${x0 + panelW / 2}" y="${top + panelH + 32}" text-anchor="middle">${sweep === 'data' ? `data size / memory limit (${dataSweepBlock(rows)} blocks)` : 'block size (data = 1x limit)'}</text>`);
    for (const d of devices) {
      const pts = points
        .map((p, i) => [i, ratio(rows, d, 'local', { sweep, dataBytes: p.dataBytes, blockBytes: p.blockBytes, mode })] as const)
        .filter((pair): pair is readonly [number, number] => pair[1] !== undefined && pair[1] > 0)
        .map(([i, v]) => `${xOf(panel, i).toFixed(1)},${yOf(v).toFixed(1)}`);
      if (pts.length === 0) continue;
      const color = COLORS[d] ?? '#000';
      svg.push(`<polyline points="${pts.join(' ')}" fill="none" stroke="${color}" stroke-width="2"${d === 'local' ? ' stroke-dasharray="4 3"' : ''}/>`);
      for (const pt of pts) {
        const [cx, cy] = pt.split(',');
        svg.push(`<circle cx="${cx}" cy="${cy}" r="3" fill="${color}"/>`);
      }
    }
  });
  svg.push(`<text x="16" y="${top + panelH / 2}" transform="rotate(-90 16 ${top + panelH / 2})" text-anchor="middle">throughput / local-disk swap</text>`);
  devices.forEach((d, i) => {
    const x = left + (i % 3) * 260;
    const y = top + panelH + 55 + Math.floor(i / 3) * 18;
    svg.push(`<line x1="${x}" x2="${x + 20}" y1="${y - 4}" y2="${y - 4}" stroke="${COLORS[d] ?? '#000'}" stroke-width="2"/>`, `<text x="${x + 26}" y="${y}">${escapeXml(d)}</text>`);
  });
  svg.push('</svg>');
  return svg.join('\n') + '\n';
}
