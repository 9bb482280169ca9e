/**
 * Every series rswap's own code exports, by name and type: what dashboards and alerts may use.
 * `rswap check` holds a dashboard to this list (plus Node.js's own `rswap_process_*` and
 * `rswap_nodejs_*`, which prom-client names); the unit tests hold the services' registries to it,
 * and the observability e2e test holds every live /metrics scrape to it.
 */
export const SERIES = {
  rswap_rejected_messages_total: 'counter',
  rswap_command_failures_total: 'counter',
  rswap_commands_total: 'counter',
  rswap_clock_skew_total: 'counter',
  rswap_time_to_match_seconds: 'histogram',
  rswap_time_to_attach_seconds: 'histogram',
  rswap_leases: 'gauge',
  rswap_lent_bytes: 'gauge',
  rswap_borrowed_bytes: 'gauge',
  rswap_broker_silent_borrower_leases: 'gauge',
  rswap_monitor_pressure: 'gauge',
  rswap_monitor_available_bytes: 'gauge',
  rswap_monitor_lendable_bytes: 'gauge',
  rswap_monitor_swap_pages_total: 'counter',
  rswap_exporter_orphan_targets: 'gauge',
} as const;

/** The names a query can use for a series: a histogram's are its _bucket, _sum and _count. */
export function queryableNames(series: Record<string, string>): Set<string> {
  const names = new Set<string>();
  for (const [name, type] of Object.entries(series)) {
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${name}${suffix}`);
    else names.add(name);
  }
  return names;
}
