/**
 * The demo: a fresh two-host testbed; host-a offers memory, host-b asks for it; the lease comes up;
 * a workload in a memory cgroup on host-b writes twice its limit of random data and verifies every
 * byte while it swaps to host-a's RAM; the lease is released and everything is removed.
 */
import { execa } from 'execa';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger } from '../shared/log.js';
import { createRunner } from '../shared/runner.js';
import { createMemoryCgroup } from '../shared/cgroup.js';
import { readSwaps } from '../shared/procfs.js';
import { subjects } from '../shared/subjects.js';
import { LeaseStateEvent } from '../shared/schemas.js';
import { MiB, formatBytes } from '../shared/units.js';
import { testbedDown, testbedUp } from './testbed/testbed.js';
import { waitFor } from '../shared/wait.js';
import { injectPressure, injectSurplus, listLeases, releaseLease, withNats } from './operator.js';

const WORKLOAD = resolve(fileURLToPath(import.meta.url), '../../bench/workload.js');
const LIMIT_BYTES = 128 * MiB;
const DATA_BYTES = 2 * LIMIT_BYTES;

export async function runDemo(dir: string): Promise<void> {
  const log = createLogger('demo');
  log.level = 'warn';
  const run = createRunner(log);
  const t0 = Date.now();
  const say = (text: string) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s] ${text}`);
  let cleaned = false;
  const cleanUp = async () => {
    if (cleaned) return;
    cleaned = true;
    say('removing the testbed');
    const problems = await testbedDown(run, log, dir);
    say(problems.length === 0 ? 'testbed removed: no target, mount, loop device, swap area or namespace left' : `cleanup problems: ${problems.join('; ')}`);
  };
  process.once('SIGINT', () => void cleanUp().then(() => process.exit(130)));
  try {
    say('creating a testbed: NATS, broker, host-a and host-b in network namespaces');
    const tb = await testbedUp(run, log, { dir, hosts: 2, natsPort: 14223, exporterArgs: ['--reserve-bytes', '256MiB'] });
    await withNats(tb.natsUrl, async (nc) => {
      const seen = new Set<string>();
      nc.subscribe(subjects.allLeaseStates, {
        callback: (_e, msg) => {
          const { lease } = LeaseStateEvent.parse(msg.json());
          const key = `${lease.id}/${lease.state}`;
          if (seen.has(key)) return;
          seen.add(key);
          say(`lease ${lease.id} ${lease.state}${lease.device ? ` (${lease.device})` : ''}${lease.reason ? `: ${lease.reason}` : ''}`);
        },
      });
      say('host-a offers 512MiB; host-b asks for 256MiB (rswap inject)');
      await injectSurplus(tb.natsUrl, 'host-a', '512MiB', '0');
      await injectPressure(tb.natsUrl, 'host-b', '256MiB');
      const { id: leaseId } = await waitFor(`an active lease (see the logs under ${dir})`, async () => (await listLeases(tb.natsUrl)).find((l) => l.state === 'active'), {
        timeoutMs: 60_000,
        intervalMs: 200,
      });
      const area = (await readSwaps()).sort((a, b) => b.priority - a.priority)[0];
      say(`host-b swaps on ${area?.path} at priority ${area?.priority}, ${formatBytes(area?.sizeBytes ?? 0)} of host-a's RAM`);

      const cgroup = await createMemoryCgroup(`rswap-demo-${process.pid}`, LIMIT_BYTES);
      try {
        say(`workload: ${formatBytes(DATA_BYTES)} of random data in a ${formatBytes(LIMIT_BYTES)} memory cgroup, every byte verified`);
        const result = await execa(cgroup.wrap([process.execPath, WORKLOAD, '--bytes', String(DATA_BYTES)])[0]!, cgroup.wrap([process.execPath, WORKLOAD, '--bytes', String(DATA_BYTES)]).slice(1), { reject: false });
        const report = JSON.parse(result.stdout || '{}') as { corruptedChunks?: number; totalMs?: number; pswpinDelta?: number };
        say(`workload done in ${report.totalMs}ms: ${report.corruptedChunks === 0 ? 'all bytes intact' : `${report.corruptedChunks} chunks CORRUPTED`}, ${report.pswpinDelta} pages swapped in`);
      } finally {
        await cgroup.remove();
      }
      say('releasing the lease (rswap release)');
      const released = await releaseLease(tb.natsUrl, leaseId);
      say(`lease ${released.id} is ${released.state}`);
    });
  } finally {
    await cleanUp();
  }
}
