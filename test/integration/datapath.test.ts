/**
 * The data-path daemons' own cgroups (shared/datapath.ts) on this machine's real hierarchies: a
 * process started through its placement leaves the container's cgroup in every hierarchy before
 * it runs, so the container's stop (tests/helpers/fake-container.ts, both runc modes) leaves it
 * alive while a process left in the container dies. And tgtd, started and adopted on its socket
 * in the state folder. The whole lease under container restarts: test/e2e/datapath-lifetime.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { access, mkdtemp, readFile, readdir, rm, rmdir } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import pino from 'pino';
import { createMemoryCgroup, type MemoryCgroup } from '../../shared/cgroup.js';
import { DATAPATH, MOVE_FAILED, placeDatapath, removeDatapath } from '../../shared/datapath.js';
import { VIEWS, cgroupHierarchies, hierarchyOf } from '../../shared/hierarchies.js';
import { CommandError, createRunner } from '../../shared/runner.js';
import { isAlive, stopGracefully } from '../../shared/process.js';
import { waitFor } from '../../shared/wait.js';
import { freePort } from '../../shared/nats.js';
import { Tgt, tgtSocket } from '../../services/exporter/tgt.js';
import { cgroupOf, FakeContainer, STOP_MODES } from '../helpers/fake-container.js';

const log = pino({ level: 'silent' });
const PROJECT = resolve(fileURLToPath(import.meta.url), '../../../..');
const DATAPATH_MODULE = resolve(fileURLToPath(import.meta.url), '../../../shared/datapath.js');
const run = createRunner(log);
const cleanups: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch((error: unknown) => console.error('cleanup:', error));
});

const gone = async (pid: number) => waitFor(`pid ${pid} gone`, async () => !isAlive(pid), { timeoutMs: 10_000 });
const exists = (path: string) => access(path).then(() => true, () => false);

/** Waits until `pid` runs `comm` (past the prelude's exec) and returns its folder in each hierarchy. */
async function placesOf(pid: number, comm: string): Promise<string[]> {
  await waitFor(`pid ${pid} running ${comm}`, async () => (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim() === comm, { timeoutMs: 10_000, intervalMs: 20 });
  return Promise.all((await cgroupHierarchies()).map(async (h) => (await cgroupOf(pid, h))!));
}

test('datapath - a process started through its placement outlives the container\'s stop in both runc modes; one left in the container dies', async () => {
  const memory: MemoryCgroup = await createMemoryCgroup(`rswap-test-dp-mem-${process.pid}`, 64 * 1024 ** 2);
  cleanups.push(() => memory.remove());
  const container = await FakeContainer.create('dp');
  cleanups.push(() => container.remove());
  const hierarchies = await cgroupHierarchies();
  for (const mode of STOP_MODES) {
    const name = `test-${process.pid}-${mode}`;
    cleanups.push(() => removeDatapath(name));
    container.start(['sleep', '3600'], '/dev/null');
    const left = container.exec(['sleep', '3601']); // started the old way, detached: like tgtd before
    const placement = await placeDatapath(name, { memoryCgroup: memory.path });
    const moved = container.exec(placement.wrap(['sleep', '3602']));
    cleanups.push(() => stopGracefully(moved, 0));
    const expected = hierarchies.map((h) => (hierarchyOf([h], memory.path) ? memory.path : join(h.mountPoint, DATAPATH, name)));
    assert.deepEqual(await placesOf(moved, 'sleep'), expected, 'its own cgroup in every hierarchy, the memory cgroup given in its hierarchy');
    assert.deepEqual(await placesOf(left, 'sleep'), container.folders, 'the other one is in the container everywhere');

    const killed = await container.stop(mode);
    assert.ok(killed >= 1, `${mode}: the runtime's kill found what the main process left`);
    await gone(left);
    assert.ok(isAlive(moved), `${mode}: the placed process lives on`);
    assert.deepEqual(await placesOf(moved, 'sleep'), expected);

    await stopGracefully(moved, 0);
    await gone(moved);
    await removeDatapath(name);
    for (const folder of expected.filter((f) => f !== memory.path)) assert.equal(await exists(folder), false, `${folder} removed`);
    assert.equal(await exists(memory.path), true, 'the memory cgroup given is not ours to remove');
  }
});

test('datapath - a move that fails fails the start, with its own exit code and the reason; a memory cgroup in no hierarchy is refused', async () => {
  const name = `test-${process.pid}-fail`;
  cleanups.push(() => removeDatapath(name));
  const placement = await placeDatapath(name);
  await removeDatapath(name); // gone before the daemon starts: its prelude cannot move it
  const error = await run('true', [], { wrap: placement.wrap }).then(() => undefined, (e: unknown) => e);
  assert.ok(error instanceof CommandError, String(error));
  assert.equal(error.exitCode, MOVE_FAILED);
  assert.match(error.stderr, new RegExp(`${DATAPATH}/${name}/cgroup.procs`));
  await assert.rejects(placeDatapath(name, { memoryCgroup: '/nonexistent/memory/x' }), /memory cgroup \/nonexistent\/memory\/x is in no mounted cgroup hierarchy/);
  await assert.rejects(placeDatapath('../escape'), /bad data-path cgroup name/);
});

/** A control port whose default tgt socket no other tgtd on this machine uses. */
async function unusedControlPort(from: number): Promise<number> {
  for (let port = from; port < from + 50; port += 1) if (!(await exists(`/var/run/tgtd/socket.${port}`))) return port;
  throw new Error('no free tgt control port');
}

test('datapath - tgtd starts in its own cgroups on a socket in the state folder; a new exporter adopts it there, and one an earlier rswap started on the default socket', async () => {
  const stateDir = await mkdtemp(join(tmpdir(), 'rswap-dp-tgt-'));
  cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
  const port = await unusedControlPort(3940);
  const portal = `127.0.0.1:${await freePort()}`;
  cleanups.push(() => removeDatapath(`tgtd-${port}`));
  const first = new Tgt(run, log, port, portal, stateDir);
  assert.equal(await first.ensureDaemon(), 'started');
  const pid = Number((await readFile(join(stateDir, 'tgtd.pid'), 'utf8')).trim());
  cleanups.push(() => stopGracefully(pid, 0));
  assert.equal(await exists(`${tgtSocket(stateDir)}.${port}`), true, 'its socket is in the state folder');
  const hierarchies = await cgroupHierarchies();
  assert.deepEqual(await placesOf(pid, 'tgtd'), hierarchies.map((h) => join(h.mountPoint, DATAPATH, `tgtd-${port}`)));
  const again = new Tgt(run, log, port, portal, stateDir);
  assert.equal(await again.ensureDaemon(), 'adopted', 'the exporter\'s next start finds it by its socket');
  assert.deepEqual(await again.list(), []);
  await stopGracefully(pid, 0);
  await gone(pid);
  await removeDatapath(`tgtd-${port}`);

  // A tgtd from before: default socket (/var/run/tgtd/socket.<port>), started by hand here.
  const oldPort = await unusedControlPort(port + 1);
  const oldPortal = `127.0.0.1:${await freePort()}`;
  const old = spawn('tgtd', ['-f', '-C', String(oldPort), '--iscsi', `portal=${oldPortal}`], { detached: true, stdio: 'ignore' });
  old.unref();
  cleanups.push(() => rm(`/var/run/tgtd/socket.${oldPort}`, { force: true }));
  cleanups.push(() => rm(`/var/run/tgtd/socket.${oldPort}.lock`, { force: true }));
  cleanups.push(() => stopGracefully(old.pid!, 0));
  await waitFor('the old tgtd answers', async () => (await run('tgtadm', ['-C', String(oldPort), '--lld', 'iscsi', '--mode', 'system', '--op', 'show']).then(() => true, () => false)), { timeoutMs: 10_000 });
  const upgraded = new Tgt(run, log, oldPort, oldPortal, stateDir);
  assert.equal(await upgraded.ensureDaemon(), 'adopted', 'adopted on the default socket, not a second tgtd');
  assert.deepEqual(await upgraded.list(), []);
  assert.equal(await exists(`${tgtSocket(stateDir)}.${oldPort}`), false, 'no tgtd started on the new socket');
});

test('datapath - in a cgroup namespace of its own (compose\'s cgroup: private), placing a daemon is refused, saying what to set', async () => {
  cleanups.push(() => removeDatapath(`test-${process.pid}-ns`)); // nothing, unless the refusal came late
  const datapath = new URL('../../shared/datapath.js', import.meta.url).pathname;
  const script = `import(${JSON.stringify(datapath)}).then((m) => m.placeDatapath('test-${process.pid}-ns')).then(() => console.log('placed'), (e) => console.log(e.message))`;
  // (A mount namespace of its own too: whatever it might mount stays there.)
  const { stdout } = await run('unshare', ['--cgroup', '-m', '--propagation', 'private', process.execPath, '--input-type=module', '-e', script]);
  // Told by the namespace where pid 1's can be read (not on these machines: their pid 1 hides it),
  // else by the hierarchies, which the namespace shows as sub-trees ("/../..").
  assert.match(stdout, /^cannot give test-\d+-ns cgroups of its own: (this process is in a cgroup namespace of its own|\S+ shows only \S+ of its hierarchy); an agent in a container needs the host's cgroups \(compose: cgroup: host\)$/m);
});

test('datapath - a state folder too long for tgtd\'s control socket is refused before tgtd starts', async () => {
  const port = await unusedControlPort(3960);
  const tgt = new Tgt(run, log, port, `127.0.0.1:${await freePort()}`, `/var/lib/${'x'.repeat(90)}`);
  await assert.rejects(tgt.ensureDaemon(), /tgtd's control socket \/var\/lib\/x+\/tgtd\.socket\.\d+ is longer than a Unix socket's 107 bytes: use a shorter --state-dir/);
});

test('datapath - where the cgroup mounts show only a sub-tree (a container on a cgroup v1 host), the daemon still gets its own cgroups, from a whole view mounted aside', async () => {
  // A mount namespace of its own in which the memory hierarchy's mount shows only a folder of it,
  // as runc mounts it for a container; the host's whole mount is covered, as under a bound /sys.
  const memory: MemoryCgroup = await createMemoryCgroup(`rswap-test-dp-sub-${process.pid}`, 64 * 1024 ** 2);
  cleanups.push(() => memory.remove());
  const name = `test-${process.pid}-subtree`;
  cleanups.push(() => removeDatapath(name));
  const hierarchy = hierarchyOf(await cgroupHierarchies(), memory.path)!;
  const views = await readdir(VIEWS).catch(() => undefined);
  cleanups.push(async () => {
    // The mount points it made (their mounts went with the namespace), and VIEWS if it made that.
    for (const view of await readdir(VIEWS).catch(() => [] as string[])) if (!views?.includes(view)) await rmdir(join(VIEWS, view)).catch(() => undefined);
    if (!views) await rmdir(VIEWS).catch(() => undefined);
  });
  const script = `const { placeDatapath } = await import(${JSON.stringify(DATAPATH_MODULE)});
const { spawn } = await import('node:child_process');
const placement = await placeDatapath(${JSON.stringify(name)});
const child = spawn(placement.wrap(['sleep', '3600'])[0], placement.wrap(['sleep', '3600']).slice(1), { detached: true, stdio: 'ignore' });
child.unref();
console.log(JSON.stringify({ pid: child.pid, folders: placement.folders }));`;
  const inNamespace = await execa('unshare', ['-m', '--propagation', 'private', 'sh', '-c', 'mount --bind "$1" "$2" && exec "$0" --input-type=module -e "$3"', process.execPath, memory.path, hierarchy.mountPoint, script], { cwd: PROJECT });
  const { pid, folders } = JSON.parse(inNamespace.stdout.trim().split('\n').at(-1)!) as { pid: number; folders: string[] };
  cleanups.push(() => stopGracefully(pid, 0));
  assert.ok(folders.some((f) => f.startsWith(`${VIEWS}/`)), `the memory hierarchy was reached through a view of its own: ${folders.join(', ')}`);
  await waitFor(`pid ${pid} running sleep`, async () => (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim() === 'sleep', { timeoutMs: 10_000, intervalMs: 20 });
  // Seen from outside: in rswap.datapath at the hierarchy's root, not under the folder the namespace showed.
  assert.equal(await cgroupOf(pid, hierarchy), join(hierarchy.mountPoint, DATAPATH, name));
});
