/** Memory cgroups for workloads (v1 where /sys/fs/cgroup/memory exists, else v2). */
import { mkdir, rmdir, writeFile, access } from 'node:fs/promises';
import { join } from 'node:path';

const V1 = '/sys/fs/cgroup/memory';
const V2 = '/sys/fs/cgroup';

export interface MemoryCgroup {
  path: string;
  version: 1 | 2;
  /** A shell prefix that moves the shell into the cgroup before it execs the command. */
  wrap(command: string[]): string[];
  remove(): Promise<void>;
}

/** A command line that moves its shell into the cgroup folder `path`, then execs `command`. */
export function wrapInCgroup(path: string, command: string[]): string[] {
  return ['sh', '-c', `echo $$ > '${join(path, 'cgroup.procs')}' && exec "$@"`, 'sh', ...command];
}

/** The root of the memory hierarchy: cgroup v1's memory controller where mounted, else v2. */
export async function memoryCgroupRoot(): Promise<string> {
  return (await access(join(V1, 'memory.limit_in_bytes')).then(() => true, () => false)) ? V1 : V2;
}

/** The folder a cgroup named `name` has under the memory hierarchy. */
export async function memoryCgroupPath(name: string): Promise<string> {
  return join(await memoryCgroupRoot(), name);
}

export async function createMemoryCgroup(name: string, limitBytes: number): Promise<MemoryCgroup> {
  const path = await memoryCgroupPath(name);
  const v1 = path.startsWith(V1 + '/');
  await mkdir(path, { recursive: true });
  if (v1) {
    await writeFile(join(path, 'memory.limit_in_bytes'), String(limitBytes));
  } else {
    await writeFile(join(path, 'memory.max'), String(limitBytes));
  }
  return {
    path,
    version: v1 ? 1 : 2,
    wrap: (command) => wrapInCgroup(path, command),
    remove: () => removeCgroup(path),
  };
}

/** Removes an (empty) cgroup folder, waiting up to 5 s for exiting processes to leave it. */
export async function removeCgroup(path: string): Promise<void> {
  for (let i = 0; i < 50; i += 1) {
    try {
      await rmdir(path);
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  await rmdir(path);
}

