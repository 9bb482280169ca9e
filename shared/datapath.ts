/**
 * The data-path daemons, tgtd and qemu-storage-daemon, get a lifetime of their own: each starts in
 * a cgroup of its own, rswap.datapath/<name> (tgtd-<control port>, qsd-<lease>), in every mounted
 * cgroup hierarchy. When an agent's container stops (its main process exited), runc kills every
 * process in the container's cgroup, and compose runs the agents in the host PID namespace, where
 * that is all their children: a daemon outside that cgroup lives on, keeps the swap it carries,
 * and the agent's next start adopts it. Under systemd the daemons stay in the unit's cgroup:
 * KillMode=process keeps them alive, and systemd owns the tree (see underSystemd).
 *
 * The move happens before exec, in a shell prelude: the daemon never runs inside the container's
 * cgroup. Where it must be in a given memory cgroup (tgtd, charged to what the lender lends), that
 * one is its place in the memory hierarchy. Only folders under rswap.datapath are made or removed.
 */
import { readlink, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, RswapError, errorMessage } from './errors.js';
import { removeCgroup } from './cgroup.js';
import { execa } from 'execa';
import { cgroupHierarchies, cgroupsOf, execIn, fullViews, hierarchyOf, makeCgroup, stillInside } from './hierarchies.js';
import type { Logger } from './log.js';

export const DATAPATH = 'rswap.datapath';
/** The prelude's exit code when it could not move the shell (qemu-storage-daemon and tgtd use 1). */
export const MOVE_FAILED = 125;

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const HOST_CGROUPS = "an agent in a container needs the host's cgroups (compose: cgroup: host)";

export interface Placement {
  name: string;
  /** The daemon's cgroup in each hierarchy. */
  folders: string[];
  /** `command`, run by a shell that first moves itself into `folders` (exit MOVE_FAILED if it cannot). */
  wrap(command: string[]): string[];
}

/**
 * Makes the daemon `name`'s cgroups (rswap.datapath/<name> in every hierarchy; `memoryCgroup`, an
 * existing folder, instead in the hierarchy that holds it). Fails if a folder cannot be made, or
 * if a hierarchy is mounted as a sub-tree only (a private cgroup namespace: no way out of it).
 */
export async function placeDatapath(name: string, { memoryCgroup }: { memoryCgroup?: string } = {}): Promise<Placement> {
  if (!NAME.test(name)) throw new RswapError(ErrorCodes.INTERNAL, `bad data-path cgroup name '${name}'`);
  // In a cgroup namespace of its own (compose's cgroup: private), every folder it can make is
  // inside the container's cgroup, and dies with it. Seen where pid 1 is the host's (pid: host).
  const [own, init] = await Promise.all(['self', '1'].map((pid) => readlink(`/proc/${pid}/ns/cgroup`).catch(() => undefined)));
  if (own && init && own !== init) throw new RswapError(ErrorCodes.CONFIG, `cannot give ${name} cgroups of its own: this process is in a cgroup namespace of its own; ${HOST_CGROUPS}`);
  if (await underSystemd()) {
    // A unit's KillMode=process already lets the daemon outlive the agent, and systemd owns the
    // tree: nothing may make cgroups beside its own (systemd's cgroup delegation rules).
    return { name, folders: memoryCgroup ? [memoryCgroup] : [], wrap: (command) => (memoryCgroup ? execIn([memoryCgroup], command, MOVE_FAILED) : command) };
  }
  const hierarchies = await fullViews((args) => execa('mount', args));
  if (memoryCgroup && !hierarchyOf(hierarchies, memoryCgroup)) {
    throw new RswapError(ErrorCodes.CONFIG, `memory cgroup ${memoryCgroup} is in no mounted cgroup hierarchy`);
  }
  const partial = hierarchies.find((h) => h.root !== '/');
  if (partial) throw new RswapError(ErrorCodes.CONFIG, `cannot give ${name} cgroups of its own: ${partial.mountPoint} shows only ${partial.root} of its hierarchy; ${HOST_CGROUPS}`);
  const folders: string[] = [];
  for (const hierarchy of hierarchies) {
    if (memoryCgroup && hierarchyOf([hierarchy], memoryCgroup)) {
      folders.push(memoryCgroup);
      continue;
    }
    const folder = join(hierarchy.mountPoint, DATAPATH, name);
    await makeCgroup(hierarchy, folder).catch(async (error: unknown) => {
      await removeDatapath(name).catch(() => undefined); // the folders made before this one
      throw new RswapError(ErrorCodes.COMMAND_FAILED, `cannot make cgroup ${folder} for ${name}: ${errorMessage(error)}; ${HOST_CGROUPS}`);
    });
    folders.push(folder);
  }
  return { name, folders, wrap: (command) => execIn(folders, command, MOVE_FAILED) };
}

/**
 * Running as a systemd service: systemd set INVOCATION_ID, and this process is still in a
 * service's cgroup (a child moved elsewhere, such as a test's fake container, inherits the
 * variable but not the place).
 */
export async function underSystemd(): Promise<boolean> {
  if (!process.env.INVOCATION_ID) return false;
  const own = await cgroupsOf('self').catch(() => new Map<string, string>());
  const systemdPath = [...own].find(([key]) => key.endsWith(':name=systemd'))?.[1] ?? own.get('0:') ?? '';
  return /\.service$/.test(systemdPath);
}

/**
 * After a start: where the daemon `pid` is still in this agent's cgroup (a view of the tree that
 * was not what it seemed), says loudly that a stop of the agent's container will kill it. Returns
 * the hierarchies concerned ([] when it is out, or under systemd, where it stays by design).
 */
export async function reportInside(name: string, pid: number, log: Logger): Promise<string[]> {
  if (await underSystemd()) return [];
  const inside = stillInside(await cgroupsOf('self'), await cgroupsOf(pid).catch(() => new Map<string, string>()));
  if (inside.length > 0) log.error({ daemon: name, pid, hierarchies: inside }, `${name} is still in this agent's cgroup (${inside.join(', ')}): a stop of the agent's container will kill it, and the swap it carries. ${HOST_CGROUPS}`);
  return inside;
}

/** The error for a daemon whose prelude could not move it (`detail`: its stderr, or where that went). */
export function moveFailed(name: string, detail: string): RswapError {
  return new RswapError(ErrorCodes.COMMAND_FAILED, `${name} was not started: it could not be moved into its own cgroups (${detail}); ${HOST_CGROUPS}`);
}

/**
 * Removes the daemon `name`'s cgroups once it is gone (waits up to 5 s for it to leave them), and
 * rswap.datapath itself where no other daemon's is left in it.
 */
export async function removeDatapath(name: string): Promise<void> {
  if (!NAME.test(name)) throw new RswapError(ErrorCodes.INTERNAL, `bad data-path cgroup name '${name}'`);
  for (const hierarchy of await cgroupHierarchies()) {
    await removeCgroup(join(hierarchy.mountPoint, DATAPATH, name));
    await rmdir(join(hierarchy.mountPoint, DATAPATH)).catch(() => undefined); // not empty, or gone
  }
}
