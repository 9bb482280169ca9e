/**
 * The broker's gauges of the whole fleet, read from the lease bucket at scrape time. Every broker
 * reads the same bucket, so with two brokers each reports the same values, each under its own
 * `host` label: aggregate them across brokers with max, never sum (docs/operations.md).
 */
import { scrapeGauge } from '../../shared/metrics.js';
import { isTerminal } from './states.js';
import type { LeaseRecord } from '../../shared/schemas.js';

export const FLEET_NOTE = 'the same from every broker: aggregate with max, not sum';

export function leaseGauges(readLeases: () => Promise<LeaseRecord[]>): void {
  // The three gauges of one scrape share one read of the leases bucket.
  let snapshot: { at: number; leases: Promise<LeaseRecord[]> } | undefined;
  const scrapeLeases = () => {
    if (!snapshot || Date.now() - snapshot.at > 1_000) snapshot = { at: Date.now(), leases: readLeases() };
    return snapshot.leases;
  };
  scrapeGauge('rswap_leases', `Leases by state (${FLEET_NOTE})`, ['state'], async () => {
    const counts = new Map<string, number>();
    for (const lease of await scrapeLeases()) counts.set(lease.state, (counts.get(lease.state) ?? 0) + 1);
    return [...counts].map(([state, value]) => ({ labels: { state }, value }));
  });
  // Labelled `lender` / `borrower`, not `host`: that one names the broker reporting the series.
  const liveBytes = async (role: 'lender' | 'borrower') => {
    const bytes = new Map<string, number>();
    for (const lease of await scrapeLeases()) {
      if (!isTerminal(lease.state)) bytes.set(lease[role], (bytes.get(lease[role]) ?? 0) + lease.sizeBytes);
    }
    return [...bytes].map(([host, value]) => ({ labels: { [role]: host }, value }));
  };
  scrapeGauge('rswap_lent_bytes', `Bytes of live leases per lender (${FLEET_NOTE})`, ['lender'], () => liveBytes('lender'));
  scrapeGauge('rswap_borrowed_bytes', `Bytes of live leases per borrower (${FLEET_NOTE})`, ['borrower'], () => liveBytes('borrower'));
}
