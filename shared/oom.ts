/**
 * Keeps the kernel's OOM killer off the agents, as iscsid does for itself. When memory runs out on
 * a borrower, the OOM killer picks a victim by size and its oom_score_adj; killing the attacher or
 * the qemu-storage-daemon it started (which carries swapped pages on the userspace path) loses
 * those pages or the next rescue, and killing tgtd on a lender loses every borrower's pages (its
 * lent pages live in ramfs, so killing it frees nothing). The setting is inherited by every process
 * an agent starts, so the data-path daemons get it too.
 */
import { readFile, writeFile } from 'node:fs/promises';
import type { Logger } from './log.js';

/** The score each host agent runs with: -1000 exempts a process; -900 leaves it the last resort. */
export const OOM_SCORE_ADJ = { exporter: -1000, attacher: -1000, monitor: -900 } as const;

/** Sets this process's oom_score_adj; a process without the right to (not root) is told why and goes on. */
export async function protectFromOomKiller(score: number, log: Logger, file = '/proc/self/oom_score_adj'): Promise<boolean> {
  try {
    await writeFile(file, String(score));
    const now = Number((await readFile(file, 'utf8')).trim());
    if (now !== score) throw new Error(`it reads back ${now}`);
    log.info({ oomScoreAdj: score }, 'kept off the OOM killer\'s list (oom_score_adj)');
    return true;
  } catch (error) {
    log.warn({ err: (error as Error).message, oomScoreAdj: score }, 'could not set oom_score_adj: the OOM killer may pick this agent or the daemons it starts (run as root, or with CAP_SYS_RESOURCE)');
    return false;
  }
}
