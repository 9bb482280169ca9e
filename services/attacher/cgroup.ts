import { readFile, writeFile } from 'node:fs/promises';
import type { Logger } from '../../shared/log.js';
import { errorMessage } from '../../shared/errors.js';

/**
 * Moves a process that carries swap I/O to the root memory cgroup (v1 or v2): inside a
 * memory-limited cgroup it could be reclaimed, or OOM-killed, while paging for others.
 */
export async function escapeToRootMemoryCgroup(pid: number, log: Logger): Promise<void> {
  const cgroups = await readFile(`/proc/${pid}/cgroup`, 'utf8').catch(() => '');
  const v1 = /^\d+:memory:(.*)$/m.exec(cgroups);
  const v2 = /^0::(.*)$/m.exec(cgroups);
  const [path, procs] = v1 ? [v1[1], '/sys/fs/cgroup/memory/cgroup.procs'] : [v2?.[1], '/sys/fs/cgroup/cgroup.procs'];
  if (!path || path === '/') return;
  try {
    await writeFile(procs, String(pid));
    log.info({ pid, from: path }, 'moved initiator to the root memory cgroup');
  } catch (error) {
    log.warn({ pid, cgroup: path, err: errorMessage(error) }, 'initiator stays in a memory cgroup; it may be reclaimed under pressure');
  }
}
