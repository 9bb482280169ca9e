/** The application bench's results: one row per run, summaries per point, CSV, Markdown and SVG. */

export interface AppRow {
  round: number;
  app: 'redis' | 'sort' | 'touch';
  device: string;
  ratio: number;
  limitBytes: number;
  dataBytes: number;
  /** ok: finished and verified; oom: the cgroup's OOM killer ended it (a retry has the same round). */
  outcome: 'ok' | 'oom';
  /** redis: loading the dataset; sort: filling the array. */
  loadS?: number;
  getOps?: number;
  getP50Us?: number;
  getP99Us?: number;
  getP999Us?: number;
  setOps?: number;
  setP50Us?: number;
  setP99Us?: number;
  setP999Us?: number;
  /** Major faults in the app's cgroup during the GET phase, per GET. */
  getFaultsPerOp?: number;
  /** Pages swapped in (machine-wide) per major fault during the GET phase: readahead amplification. */
  swapinsPerFault?: number;
  sortS?: number;
  /** touch: latency of reading one byte of a random page, in microseconds. */
  touchP50Us?: number;
  touchP90Us?: number;
  touchP99Us?: number;
  touchP999Us?: number;
  /** touch: major faults in the cgroup per page read. */
  touchFaultsPerOp?: number;
  /** Page cache of the lease's FUSE export file on the borrower, most seen during the run (remote only). */
  fuseCacheMaxBytes?: number;
}

const COLUMNS: (keyof AppRow)[] = ['round', 'app', 'device', 'ratio', 'limitBytes', 'dataBytes', 'outcome', 'loadS', 'getOps', 'getP50Us', 'getP99Us', 'getP999Us', 'setOps', 'setP50Us', 'setP99Us', 'setP999Us', 'getFaultsPerOp', 'swapinsPerFault', 'sortS', 'touchP50Us', 'touchP90Us', 'touchP99Us', 'touchP999Us', 'touchFaultsPerOp', 'fuseCacheMaxBytes'];

export function toCsv(rows: AppRow[]): string {
  const cell = (v: unknown) => (v === undefined ? '' : String(v));
  return [COLUMNS.join(','), ...rows.map((r) => COLUMNS.map((c) => cell(r[c])).join(','))].join('\n') + '\n';
}

export function fromCsv(text: string): AppRow[] {
  const [header, ...lines] = text.trim().split('\n');
  const names = header!.split(',') as (keyof AppRow)[];
  return lines.map((line) => {
    const row: Record<string, unknown> = {};
    line.split(',').forEach((v, i) => {
      const name = names[i]!;
      if (v === '') return;
      row[name] = name === 'app' || name === 'device' || name === 'outcome' ? v : Number(v);
    });
    return row as unknown as AppRow;
  });
}

/** Median and range of the values present. */
export function spread(values: (number | undefined)[]): { median: number; min: number; max: number; n: number } | undefined {
  const v = values.filter((x): x is number => x !== undefined && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = Math.floor(v.length / 2);
  const median = v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  return { median, min: v[0]!, max: v.at(-1)!, n: v.length };
}

const fmt = (x: number) => (x >= 100 ? Math.round(x).toLocaleString('en-US') : x >= 10 ? x.toFixed(1) : x.toFixed(2));
/** A table cell: the median, and (min-max) when there is more than one value; '-' for none. */
export const cell = (s: ReturnType<typeof spread>, digits?: (x: number) => string) => {
  if (!s) return '-';
  const f = digits ?? fmt;
  return s.n > 1 ? `${f(s.median)} (${f(s.min)}-${f(s.max)})` : f(s.median);
};

/** One summary row per app, device and ratio, in the order given. */
export function summarize(rows: AppRow[], devices: string[], ratios: number[], app: AppRow['app']) {
  const out = [];
  for (const ratio of ratios) {
    for (const device of devices) {
      const attempts = rows.filter((r) => r.app === app && r.device === device && r.ratio === ratio);
      if (attempts.length === 0) continue;
      const ok = attempts.filter((r) => r.outcome === 'ok');
      const of = (k: keyof AppRow) => spread(ok.map((r) => r[k] as number | undefined));
      out.push({ ratio, device, runs: new Set(attempts.map((r) => r.round)).size, ok: ok.length, oom: attempts.length - ok.length, of });
    }
  }
  return out;
}

/** One table per app: its caption, its columns (name and the row field), a row per device and ratio. */
const TABLES: { app: AppRow['app']; caption: string; columns: [string, keyof AppRow][] }[] = [
  {
    app: 'redis',
    caption: 'Redis, random GETs then random SETs of whole values; each cell: median (min-max) over the runs that finished.',
    columns: [['GET ops/s', 'getOps'], ['GET p50 µs', 'getP50Us'], ['GET p99 µs', 'getP99Us'], ['GET p99.9 µs', 'getP999Us'], ['SET ops/s', 'setOps'], ['SET p99.9 µs', 'setP999Us'], ['faults per GET', 'getFaultsPerOp'], ['swap-ins per fault', 'swapinsPerFault']],
  },
  {
    app: 'touch',
    caption: 'Per-fault latency: one byte read from each of many uniformly random pages, timed one at a time; each cell: median (min-max) over the runs of that percentile.',
    columns: [['p50 µs', 'touchP50Us'], ['p90 µs', 'touchP90Us'], ['p99 µs', 'touchP99Us'], ['p99.9 µs', 'touchP999Us'], ['major faults per read', 'touchFaultsPerOp'], ['swap-ins per fault', 'swapinsPerFault']],
  },
  {
    app: 'sort',
    caption: 'Sort (a batch job: sort the whole array in place, once), median (min-max) seconds.',
    columns: [['sort s', 'sortS'], ['fill s', 'loadS']],
  },
];

export function markdownTables(rows: AppRow[], devices: string[], labels: Record<string, string>, ratios: number[]): string {
  const parts: string[] = [];
  for (const { app, caption, columns } of TABLES) {
    const stats = summarize(rows, devices, ratios, app);
    if (stats.length === 0) continue;
    const finished = (s: (typeof stats)[number]) => `${s.ok} of ${s.runs}${s.oom ? `; ${s.oom} OOM kill${s.oom > 1 ? 's' : ''}` : ''}`;
    parts.push(
      caption,
      '',
      `| data / limit | device | finished | ${columns.map(([name]) => name).join(' | ')} |`,
      `| --- | --- | --- | ${columns.map(() => '---').join(' | ')} |`,
      ...stats.map((s) => `| ${s.ratio}x | ${labels[s.device] ?? s.device} | ${finished(s)} | ${columns.map(([, field]) => cell(s.of(field))).join(' | ')} |`),
      '',
    );
  }
  return parts.join('\n');
}

/** Grouped bars, one group per ratio, one bar per device: the median GET ops/s, whiskers min-max, log scale. */
export function svgBars(rows: AppRow[], devices: string[], labels: Record<string, string>, ratios: number[], title: string): string {
  const colors = ['#777777', '#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b'];
  const stats = summarize(rows, devices, ratios, 'redis');
  const values = stats.flatMap((s) => [s.of('getOps')?.min, s.of('getOps')?.max]).filter((v): v is number => v !== undefined && v > 0);
  const lo = Math.pow(10, Math.floor(Math.log10(Math.min(...values, 100))));
  const hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...values, 1000))));
  const W = 760, H = 380, left = 70, right = 200, top = 40, bottom = 50;
  const plotW = W - left - right, plotH = H - top - bottom;
  const y = (v: number) => top + plotH - ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * plotH;
  const groupW = plotW / ratios.length;
  const barW = (groupW * 0.8) / devices.length;
  const out: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`, `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${title}</text>`];
  for (let d = Math.log10(lo); d <= Math.log10(hi); d += 1) {
    const v = Math.pow(10, d);
    out.push(`<line x1="${left}" x2="${left + plotW}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`, `<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${v.toLocaleString('en-US')}</text>`);
  }
  out.push(`<text x="16" y="${top + plotH / 2}" transform="rotate(-90 16 ${top + plotH / 2})" text-anchor="middle">GET ops/s (log)</text>`);
  ratios.forEach((ratio, g) => {
    const x0 = left + g * groupW + groupW * 0.1;
    out.push(`<text x="${left + g * groupW + groupW / 2}" y="${top + plotH + 20}" text-anchor="middle">data ${ratio}x the limit</text>`);
    devices.forEach((device, i) => {
      const s = stats.find((x) => x.ratio === ratio && x.device === device);
      const o = s?.of('getOps');
      const x = x0 + i * barW;
      if (!s) return;
      if (!o) {
        out.push(`<text x="${x + barW / 2}" y="${top + plotH - 4}" text-anchor="middle" font-size="10">OOM</text>`);
        return;
      }
      out.push(`<rect x="${x}" y="${y(o.median)}" width="${barW - 2}" height="${top + plotH - y(o.median)}" fill="${colors[i % colors.length]}"/>`);
      out.push(`<line x1="${x + barW / 2 - 1}" x2="${x + barW / 2 - 1}" y1="${y(o.max)}" y2="${y(o.min)}" stroke="#000"/>`);
    });
  });
  devices.forEach((device, i) => {
    out.push(`<rect x="${W - right + 10}" y="${top + i * 18}" width="12" height="12" fill="${colors[i % colors.length]}"/>`, `<text x="${W - right + 28}" y="${top + i * 18 + 10}">${labels[device] ?? device}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

/** Random 4 KiB reads per second of a hard disk at queue depth 1: 80 (a 5,400 rpm laptop disk) to 200 (15,000 rpm). */
export const HDD_MODEL_IOPS = [80, 100, 150, 200];

/**
 * A MODEL, not a measurement: what a fault would cost on a hard disk that serves `iops` random
 * reads a second at queue depth 1 (seek + half a rotation + transfer, about 1/iops), against the
 * measured median per-fault latency (page reads' p50) of each device, where the p50 is a fault
 * (from 2x on). No hard disk was measured.
 */
export function hddModelTable(rows: AppRow[], devices: string[], labels: Record<string, string>, ratios: number[]): string {
  const stats = summarize(rows, devices, ratios, 'touch').filter((s) => s.ratio >= 2 && s.of('touchP50Us'));
  if (stats.length === 0) return '';
  const lines = [
    'HDD MODEL (no hard disk measured): a random 4 KiB read at queue depth 1 takes 1/IOPS (seek, half a rotation, transfer); each cell: that time over the device\'s measured median per-fault latency (page reads\' p50, data 2x and more) = how many times faster than the modeled disk.',
    '',
    `| data / limit | device | measured p50 µs | ${HDD_MODEL_IOPS.map((i) => `vs ${i} IOPS (${(1e6 / i / 1000).toFixed(1)} ms)`).join(' | ')} |`,
    `| --- | --- | --- | ${HDD_MODEL_IOPS.map(() => '---').join(' | ')} |`,
  ];
  for (const s of stats) {
    const p50 = s.of('touchP50Us')!.median;
    lines.push(`| ${s.ratio}x | ${labels[s.device] ?? s.device} | ${fmt(p50)} | ${HDD_MODEL_IOPS.map((i) => `${fmt(1e6 / i / p50)}x`).join(' | ')} |`);
  }
  return lines.join('\n') + '\n';
}
