/**
 * An agent run the way a container runtime runs one in the host PID namespace (compose's
 * `pid: host`): in a cgroup of its own in every hierarchy, and stopped the way runc stops such a
 * container once its main process has exited: every process still in the container's cgroup is
 * killed. runc 1.1 sends SIGKILL to each; runc 1.2 freezes the cgroup first (so nothing forks
 * away meanwhile), kills them all, then thaws it. Whatever the agent started and left in its
 * cgroup dies with it; what moved out (shared/datapath.ts) lives on.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { removeCgroup } from '../../shared/cgroup.js';
import { cgroupHierarchies, execIn, makeCgroup, pidsIn, type Hierarchy } from '../../shared/hierarchies.js';
import { isAlive } from '../../shared/process.js';
import { waitFor } from '../../shared/wait.js';

export type StopMode = 'runc-1.1' | 'runc-1.2';
export const STOP_MODES: StopMode[] = ['runc-1.1', 'runc-1.2'];

export class FakeContainer {
  private main: number | undefined;

  private constructor(
    readonly name: string,
    private readonly places: Array<{ hierarchy: Hierarchy; folder: string }>,
  ) {}

  /** The container's cgroups, `rswap-test-<name>-<pid of this test>` in every hierarchy. */
  static async create(name: string): Promise<FakeContainer> {
    const cgroup = `rswap-test-${name}-${process.pid}`;
    const places = (await cgroupHierarchies()).map((hierarchy) => ({ hierarchy, folder: join(hierarchy.mountPoint, cgroup) }));
    for (const { hierarchy, folder } of places) await makeCgroup(hierarchy, folder);
    return new FakeContainer(name, places);
  }

  get folders(): string[] {
    return this.places.map((p) => p.folder);
  }

  /** Runs `command` as the container's main process (detached, output to `logFile`); returns its pid. */
  start(command: string[], logFile: string, env: Record<string, string> = {}): number {
    const wrapped = execIn(this.folders, command, 125);
    const fd = openSync(logFile, 'a');
    const child = spawn(wrapped[0]!, wrapped.slice(1), { detached: true, stdio: ['ignore', fd, fd], env: { ...process.env, ...env } });
    closeSync(fd);
    child.unref();
    this.main = child.pid!;
    return this.main;
  }

  /** Starts another process in the container (as `docker exec` does, or a child the agent left running). */
  exec(command: string[]): number {
    const wrapped = execIn(this.folders, command, 125);
    const child = spawn(wrapped[0]!, wrapped.slice(1), { detached: true, stdio: 'ignore' });
    child.unref();
    return child.pid!;
  }

  /** Every pid in the container's cgroups (in any hierarchy). */
  async pids(): Promise<number[]> {
    const all = new Set<number>();
    for (const folder of this.folders) for (const pid of await pidsIn(folder)) all.add(pid);
    return [...all];
  }

  /**
   * The main process exits (`signal`: SIGTERM is `docker compose restart`'s stop, SIGKILL after
   * 10 s, Docker's default; SIGKILL stands for a crash), then the runtime kills whatever is left in
   * the container's cgroup. Returns how many processes that kill found.
   */
  async stop(mode: StopMode, signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<number> {
    const main = this.main;
    if (main !== undefined && isAlive(main)) {
      process.kill(main, signal);
      await waitFor(`${this.name}: main process exited`, async () => !isAlive(main), { timeoutMs: 10_000 }).catch(() => process.kill(main, 'SIGKILL'));
    }
    this.main = undefined;
    const freezer = this.places.find((p) => p.hierarchy.controllers.includes('freezer')) ?? this.places.find((p) => p.hierarchy.version === 2);
    if (mode === 'runc-1.2' && freezer) await this.freeze(freezer, true);
    const left = await this.pids();
    for (const pid of left) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    if (mode === 'runc-1.2' && freezer) await this.freeze(freezer, false);
    await waitFor(`${this.name}: every process in its cgroup gone`, async () => (await this.pids()).length === 0, { timeoutMs: 10_000 });
    return left.length;
  }

  /** Removes the container's cgroups, first killing what is still in them. */
  async remove(): Promise<void> {
    if ((await this.pids()).length > 0 || this.main !== undefined) await this.stop('runc-1.1');
    for (const folder of this.folders) await removeCgroup(folder);
  }

  private async freeze({ hierarchy, folder }: { hierarchy: Hierarchy; folder: string }, frozen: boolean): Promise<void> {
    if (hierarchy.version === 1) {
      await writeFile(join(folder, 'freezer.state'), frozen ? 'FROZEN' : 'THAWED');
      await waitFor(`${this.name}: ${frozen ? 'frozen' : 'thawed'}`, async () => (await readFile(join(folder, 'freezer.state'), 'utf8')).trim() === (frozen ? 'FROZEN' : 'THAWED'), { timeoutMs: 10_000, intervalMs: 20 });
    } else {
      await writeFile(join(folder, 'cgroup.freeze'), frozen ? '1' : '0');
      await waitFor(`${this.name}: ${frozen ? 'frozen' : 'thawed'}`, async () => (await readFile(join(folder, 'cgroup.events'), 'utf8')).includes(`frozen ${frozen ? 1 : 0}`), { timeoutMs: 10_000, intervalMs: 20 });
    }
  }
}

/** The folder of `pid`'s cgroup in `hierarchy` (from /proc/<pid>/cgroup), or undefined when it is gone. */
export async function cgroupOf(pid: number, hierarchy: Hierarchy): Promise<string | undefined> {
  const text = await readFile(`/proc/${pid}/cgroup`, 'utf8').catch(() => '');
  const key = (controllers: string) => controllers.split(',').sort().join(',');
  for (const line of text.split('\n')) {
    const [id, controllers, path] = line.split(':');
    if (path === undefined) continue;
    const matches = hierarchy.version === 2 ? id === '0' && controllers === '' : key(controllers!) === key(hierarchy.controllers.join(','));
    if (matches) return join(hierarchy.mountPoint, path);
  }
  return undefined;
}
