/**
 * The swap bench's outputs, from its rows: CSV, ratios to local-disk swap, a Markdown table with
 * the paper's figures beside ours, and SVG plots shaped like the paper's fig. 1 (ratio against
 * data size) and fig. 2 (ratio against block size). Pure functions: unit-tested without a device.
 */
import { formatBytes } from '../../shared/units.js';
import type { Mode } from './workload.js';

export type Sweep = 'data' | 'block';
export type RowMode = Mode | 'fill';

export interface Row {
  device: string;
  sweep: Sweep;
  /** Data size as a multiple of the cgroup's memory limit (the paper's x axis in fig. 1). */
  dataRatio: number;
  dataBytes: number;
  blockBytes: number;
  limitBytes: number;
  mode: RowMode;
  mbps: number;
  ms: number;
  ops: number;
  pswpin: number;
  pswpout: number;
  timeCapped: boolean;
}

const COLUMNS: Array<keyof Row> = ['device', 'sweep', 'dataRatio', 'dataBytes', 'blockBytes', 'limitBytes', 'mode', 'mbps', 'ms', 'ops', 'pswpin', 'pswpout', 'timeCapped'];

export function toCsv(rows: Row[]): string {
  return [COLUMNS.join(','), ...rows.map((r) => COLUMNS.map((c) => String(r[c])).join(','))].join('\n') + '\n';
}

export function fromCsv(text: string): Row[] {
  const [header, ...lines] = text.trim().split('\n');
  const names = header!.split(',');
  return lines.map((line) => {
    const cells = line.split(',');
    const get = (c: keyof Row) => cells[names.indexOf(c)]!;
    return {
      device: get('device'),
      sweep: get('sweep') as Sweep,
      dataRatio: Number(get('dataRatio')),
      dataBytes: Number(get('dataBytes')),
      blockBytes: Number(get('blockBytes')),
      limitBytes: Number(get('limitBytes')),
      mode: get('mode') as RowMode,
      mbps: Number(get('mbps')),
      ms: Number(get('ms')),
      ops: Number(get('ops')),
      pswpin: Number(get('pswpin')),
      pswpout: Number(get('pswpout')),
      timeCapped: get('timeCapped') === 'true',
    };
  });
}

const key = (r: Pick<Row, 'sweep' | 'dataBytes' | 'blockBytes' | 'mode'>) => `${r.sweep}/${r.dataBytes}/${r.blockBytes}/${r.mode}`;

/** Throughput of `device` over `baseline` at each point both measured (undefined where either is missing or 0). */
export function ratio(rows: Row[], device: string, baseline: string, point: Pick<Row, 'sweep' | 'dataBytes' | 'blockBytes' | 'mode'>): number | undefined {
  const k = key(point);
  const a = rows.find((r) => r.device === device && key(r) === k);
  const b = rows.find((r) => r.device === baseline && key(r) === k);
  return a && b && b.mbps > 0 ? a.mbps / b.mbps : undefined;
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
 * One Markdown table per sweep and mode: MB/s of every device at every point, then remote's
 * ratio to local disk (the paper's measure), to the HDD model (the paper's disk), and to the ceiling.
 */
export function markdownTables(rows: Row[], devices: string[], modes: RowMode[]): string {
  const out: string[] = [];
  for (const sweep of ['data', 'block'] as const) {
    const points = pointsOf(rows, sweep);
    if (points.length === 0) continue;
    for (const mode of modes) {
      const paper = PAPER[sweep][mode];
      out.push(`\n**${sweep === 'data' ? 'Data size sweep (1 KiB blocks)' : 'Block size sweep (data = 1x limit)'}, ${mode}** — MB/s, and remote's ratios\n`);
      const head = [sweep === 'data' ? 'data (x limit)' : 'block', ...devices, 'remote/local', 'remote/hdd-model', 'remote/ceiling', 'paper remote/local'];
      out.push(`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`);
      for (const p of points) {
        const at = { sweep, dataBytes: p.dataBytes, blockBytes: p.blockBytes, mode };
        const cells = devices.map((d) => {
          const r = rows.find((row) => row.device === d && key(row) === key(at));
          return r ? `${fmt(r.mbps)}${r.timeCapped ? '*' : ''}` : '–';
        });
        const paperCell = paper && (sweep === 'data' || p.blockBytes >= PAPER.blockFrom) ? `${paper[0]}-${paper[1]}x` : '';
        out.push(
          `| ${sweep === 'data' ? `${p.dataRatio}x (${formatBytes(p.dataBytes)})` : formatBytes(p.blockBytes)} | ${cells.join(' | ')} | ${fmt(ratio(rows, 'remote', 'local', at))} | ${fmt(ratio(rows, 'remote', 'hdd-model', at))} | ${fmt(ratio(rows, 'remote', 'ramfs-loop', at))} | ${paperCell} |`,
        );
      }
    }
  }
  out.push('\n`*` the phase reached its time cap before covering the data once: MB/s over the part it did.');
  return out.join('\n') + '\n';
}

// ---- SVG ----

const COLORS: Record<string, string> = { remote: '#d62728', local: '#1f77b4', 'hdd-model': '#7f7f7f', zram: '#2ca02c', 'ramfs-loop': '#9467bd' };

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * One figure per sweep: a panel per mode, x = the sweep's points (evenly spaced, labelled), y = the
 * throughput ratio to local-disk swap on a log scale, a line per device; the paper's remote/local
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
    svg.push(`<text x="${x0 + panelW / 2}" y="${top + panelH + 32}" text-anchor="middle">${sweep === 'data' ? 'data size / memory limit (1 KiB blocks)' : 'block size (data = 1x limit)'}</text>`);
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
