/**
 * The cgroup hierarchies mounted on this machine (cgroup v1: one per controller mount; v2: the
 * unified tree; a hybrid machine has both) and folders made in each. A process is in one cgroup
 * per hierarchy, and whoever kills "every process in a cgroup" may read any of them: to take a
 * process out of a container's cgroups, it must be moved in all of them.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';

export interface Hierarchy {
  mountPoint: string;
  version: 1 | 2;
  /** v1: the controllers (or name=...) of this mount; v2: []. */
  controllers: string[];
  /** The folder of the hierarchy this mount shows: '/' unless it shows only a sub-tree. */
  root: string;
}

const unescape = (text: string) => text.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));

/** Each hierarchy once (a hierarchy mounted twice is one), from /proc/self/mountinfo's text. */
export function parseHierarchies(mountinfo: string): Hierarchy[] {
  const found = new Map<string, Hierarchy>();
  for (const line of mountinfo.split('\n')) {
    const [before, after] = line.split(' - ');
    if (!before || !after) continue;
    const [, , device, root, mountPoint] = before.split(' ');
    const [fstype, , superOptions] = after.split(' ');
    if ((fstype !== 'cgroup' && fstype !== 'cgroup2') || !device || !root || !mountPoint) continue;
    const hierarchy: Hierarchy = {
      mountPoint: unescape(mountPoint),
      version: fstype === 'cgroup2' ? 2 : 1,
      controllers: fstype === 'cgroup2' ? [] : (superOptions ?? '').split(',').filter((o) => o !== 'rw' && o !== 'ro'),
      root: unescape(root),
    };
    // A mount of the whole hierarchy is preferred to one of a sub-tree.
    if (!found.has(device) || (found.get(device)!.root !== '/' && hierarchy.root === '/')) found.set(device, hierarchy);
  }
  return [...found.values()];
}

export async function cgroupHierarchies(): Promise<Hierarchy[]> {
  return parseHierarchies(await readFile('/proc/self/mountinfo', 'utf8'));
}

/** The hierarchy whose mount holds the folder `path`, if any. */
export function hierarchyOf(hierarchies: Hierarchy[], path: string): Hierarchy | undefined {
  return hierarchies.find((h) => path.startsWith(h.mountPoint + '/'));
}

/**
 * Makes the cgroup folder `path` (and its parents) under `hierarchy`. A new v1 cpuset folder gets
 * its parent's CPUs and memory nodes: one with none takes no process (ENOSPC).
 */
export async function makeCgroup(hierarchy: Hierarchy, path: string, tries = 3): Promise<void> {
  const levels = relative(hierarchy.mountPoint, path).split('/');
  for (let i = 1; i <= levels.length; i += 1) {
    const folder = join(hierarchy.mountPoint, ...levels.slice(0, i));
    try {
      await mkdir(folder);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // A parent removed meanwhile by whoever left it empty (removeDatapath): make it again.
      if (code === 'ENOENT' && i > 1 && tries > 1) return makeCgroup(hierarchy, path, tries - 1);
      if (code !== 'EEXIST') throw error;
    }
    if (!hierarchy.controllers.includes('cpuset')) continue;
    for (const file of ['cpuset.cpus', 'cpuset.mems']) {
      if ((await readFile(join(folder, file), 'utf8')).trim() === '') await writeFile(join(folder, file), await readFile(join(dirname(folder), file), 'utf8'));
    }
  }
}

/** The pids in a cgroup folder ([] when it is gone). */
export async function pidsIn(folder: string): Promise<number[]> {
  return (await readFile(join(folder, 'cgroup.procs'), 'utf8').catch(() => '')).split('\n').filter(Boolean).map(Number);
}

/**
 * A command line whose shell moves itself into each of `folders`, then execs `command`: the
 * command is in those cgroups from its first instruction. Exits `failCode` if a move fails.
 */
export function execIn(folders: string[], command: string[], failCode: number): string[] {
  for (const folder of folders) if (folder.includes("'")) throw new Error(`a cgroup folder with a quote: ${folder}`);
  const procs = folders.map((f) => `'${join(f, 'cgroup.procs')}'`).join(' ');
  return ['sh', '-c', `for f in ${procs}; do echo $$ > "$f" || exit ${failCode}; done; exec "$@"`, 'sh', ...command];
}
