/**
 * A workload that thrashes until the system under test has answered, for tests of automatic leases.
 * A workload of fixed length races the monitor and the lease: on a loaded machine it can finish on
 * local swap before the lease is up. This one reads its data back pass after pass until `answered`
 * gives a value and one whole pass has been read back since, then stops and reports.
 */
import { writeFile } from 'node:fs/promises';
import { startWorkload, type WorkloadReport } from '../../bench/run-workload.js';
import { waitFor } from '../../shared/wait.js';

export async function thrashUntil<T>(
  cgroup: string,
  bytes: string,
  stopFile: string,
  what: string,
  answered: () => Promise<T | undefined>,
  timeoutMs = 120_000,
): Promise<{ report: WorkloadReport; answer: T }> {
  const phases: string[] = [];
  const workload = startWorkload(cgroup, ['--bytes', bytes, '--until-file', stopFile], (p) => phases.push(p.phase));
  workload.result.catch(() => undefined); // awaited below; a failure must not go unhandled meanwhile
  const pass = () => Number(/^verify (\d+)$/.exec(phases.at(-1) ?? '')?.[1] ?? 0);
  let answer: T;
  try {
    const found = await waitFor(what, async () => {
      const value = await answered();
      return value === undefined ? undefined : { value, pass: pass() };
    }, { timeoutMs, intervalMs: 250 });
    answer = found.value;
    // Pass found.pass + 1 is read back whole once pass found.pass + 2 starts.
    await waitFor(`a whole pass read back after: ${what}`, async () => pass() >= found.pass + 2, { timeoutMs, intervalMs: 250 });
  } finally {
    await writeFile(stopFile, '');
  }
  return { report: await workload.result, answer };
}
