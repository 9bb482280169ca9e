/**
 * Checks a Grafana dashboard (JSON) against the series rswap exports: every query names at least
 * one rswap series and no series that does not exist, so a renamed metric cannot leave a panel
 * silently empty.
 */
import { Registry, collectDefaultMetrics } from 'prom-client';
import { SERIES, queryableNames } from '../shared/series.js';

/** rswap's own series and Node.js's (prom-client's default metrics, under the `rswap_` prefix). */
export async function exportedSeries(): Promise<Set<string>> {
  const defaults = new Registry();
  collectDefaultMetrics({ register: defaults, prefix: 'rswap_' });
  const types = Object.fromEntries((await defaults.getMetricsAsJSON()).map((m) => [m.name, String(m.type)]));
  return queryableNames({ ...types, ...SERIES });
}

interface Panel {
  title?: string;
  targets?: Array<{ expr?: string }>;
  panels?: Panel[];
}

/** Problems in a dashboard's queries; `where` names the file in each. */
export function checkDashboard(where: string, text: string, series: Set<string>): string[] {
  let dashboard: { title?: string; panels?: Panel[] };
  try {
    dashboard = JSON.parse(text) as typeof dashboard;
  } catch (error) {
    return [`${where}: not JSON: ${(error as Error).message}`];
  }
  const problems: string[] = [];
  const panels: Panel[] = [];
  const collect = (list: Panel[] = []) => list.forEach((p) => (panels.push(p), collect(p.panels)));
  collect(dashboard.panels);
  let queries = 0;
  for (const panel of panels) {
    for (const { expr } of panel.targets ?? []) {
      if (!expr) continue;
      queries += 1;
      // Metric names are the identifiers not followed by '(' (functions) and outside {...} and by (...).
      const names = [...expr.replace(/\$\{?\w+\}?/g, '').replace(/\[[^\]]*\]/g, '').replace(/\{[^}]*\}/g, '').replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '').matchAll(/\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()/g)]
        .map((m) => m[1]!)
        .filter((n) => !/^(and|or|unless|offset|bool|inf|nan)$/i.test(n) && !/^\d/.test(n));
      const unknown = names.filter((n) => !series.has(n));
      if (unknown.length > 0) problems.push(`${where}: panel '${panel.title ?? '?'}' queries ${unknown.join(', ')}, which rswap does not export`);
      if (!names.some((n) => series.has(n))) problems.push(`${where}: panel '${panel.title ?? '?'}' queries no rswap series: ${expr}`);
    }
  }
  if (queries === 0) problems.push(`${where}: no panel queries anything`);
  return problems;
}
