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

/**
 * Each hierarchy once (a hierarchy mounted twice is one), from /proc/self/mountinfo's text. Only
 * mounts a path reaches count: a mount covered by a later one at its path or above is hidden (in
 * a container, the runtime's cgroup mounts cover a bind of the host's /sys), and a folder made
 * "in" it would land in whatever covers it.
 */
export function parseHierarchies(mountinfo: string): Hierarchy[] {
  const mounts = mountinfo.split('\n').map((line) => {
    const [before, after] = line.split(' - ');
    const [, , device, root, mountPoint] = (before ?? '').split(' ');
    const [fstype, , superOptions] = (after ?? '').split(' ');
    return { device, root: unescape(root ?? ''), mountPoint: unescape(mountPoint ?? ''), fstype, superOptions };
  }).filter((m) => m.device && m.mountPoint);
  const covered = (i: number) => mounts.slice(i + 1).some((later) => later.mountPoint === mounts[i]!.mountPoint || mounts[i]!.mountPoint.startsWith(later.mountPoint === '/' ? '/' : `${later.mountPoint}/`));
  const found = new Map<string, Hierarchy>();
  for (const [i, m] of mounts.entries()) {
    if ((m.fstype !== 'cgroup' && m.fstype !== 'cgroup2') || covered(i)) continue;
    const hierarchy: Hierarchy = {
      mountPoint: m.mountPoint,
      version: m.fstype === 'cgroup2' ? 2 : 1,
      controllers: m.fstype === 'cgroup2' ? [] : (m.superOptions ?? '').split(',').filter((o) => o !== 'rw' && o !== 'ro'),
      root: m.root,
    };
    // A mount of the whole hierarchy is preferred to one of a sub-tree.
    if (!found.has(m.device!) || (found.get(m.device!)!.root !== '/' && hierarchy.root === '/')) found.set(m.device!, hierarchy);
  }
  return [...found.values()];
}

export async function cgroupHierarchies(): Promise<Hierarchy[]> {
  return parseHierarchies(await readFile('/proc/self/mountinfo', 'utf8'));
}

/** Where fullViews mounts a hierarchy of its own. */
export const VIEWS = '/run/rswap/cgroup';

/**
 * The hierarchies, each seen whole: one whose mount shows only a sub-tree (on a cgroup v1 host a
 * container runtime mounts only the container's own cgroup at /sys/fs/cgroup/<controller>, even
 * in the host's cgroup namespace) is mounted again, whole, under VIEWS. In a cgroup namespace of
 * its own a new mount shows that namespace's root only, so it stays a sub-tree: the caller refuses.
 */
export async function fullViews(mount: (args: string[]) => Promise<unknown>): Promise<Hierarchy[]> {
  let hierarchies = await cgroupHierarchies();
  // A root above the mount ('/..') is how a cgroup namespace of its own shows the host's mounts:
  // no new mount can show more than that namespace, so none is made (the caller refuses).
  if (hierarchies.some((x) => x.root.startsWith('/..'))) return hierarchies;
  for (const h of hierarchies.filter((x) => x.root !== '/')) {
    const fstype = h.version === 2 ? 'cgroup2' : 'cgroup';
    // The mount options that name the hierarchy (not xattr or release_agent, which only describe it).
    const names = h.controllers.filter((c) => c !== 'xattr' && !c.startsWith('release_agent='));
    const options = h.version === 2 ? [] : ['-o', names.map((c) => (c.startsWith('name=') ? `none,${c}` : c)).join(',')];
    const target = join(VIEWS, h.version === 2 ? 'unified' : names.join(',').replace(/=/g, '-'));
    await mkdir(target, { recursive: true });
    await mount(['-t', fstype, ...options, fstype, target]);
  }
  if (hierarchies.some((x) => x.root !== '/')) hierarchies = await cgroupHierarchies();
  return hierarchies;
}

/** The cgroup paths of a process, hierarchy id and controllers -> path, from /proc/<pid>/cgroup. */
export async function cgroupsOf(pid: number | 'self'): Promise<Map<string, string>> {
  const text = await readFile(`/proc/${pid}/cgroup`, 'utf8');
  return new Map(text.split('\n').filter(Boolean).map((line) => {
    const [id, controllers, ...path] = line.split(':');
    return [`${id}:${controllers}`, path.join(':')] as [string, string];
  }));
}

/**
 * The hierarchies (as /proc/<pid>/cgroup names them) where `daemon` is in `agent`'s cgroup or below
 * it: whoever kills every process in the agent's cgroup (a container runtime) kills it there too.
 * A hierarchy where the agent is at the root is none: everything is below the root.
 */
export function stillInside(agent: Map<string, string>, daemon: Map<string, string>): string[] {
  return [...agent].filter(([key, path]) => {
    const there = daemon.get(key);
    return path !== '/' && there !== undefined && (there === path || there.startsWith(`${path}/`));
  }).map(([key]) => key);
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
