/**
 * Several hosts on one machine: each host is a network namespace joined by veth to a bridge, with
 * an address from 198.18.0.0/24 (the benchmarking range). NATS with JetStream and the broker run in
 * the root namespace; each host's monitor, exporter and attacher run inside its namespace.
 *
 * Each host also gets its own memory: a memory cgroup (rswap-host-a, ...) with a limit. Its monitor
 * watches that cgroup (`--scope cgroup:...`), its tgtd runs in it (so the RAM it lends counts
 * against the lender), and workloads "on" the host run in it. The agents themselves run outside,
 * like a hypervisor's control plane. The kernel, and so the swap areas, are shared: an optional
 * local swap file (priority 5, on disk under /var/tmp) stands for every host's local disk swap.
 *
 * Everything the testbed makes lives under one folder (default /run/rswap/testbed) or carries its
 * names, and `down` removes it all, also after a crash: it finds things by those marks, not by a
 * state file.
 */
import { spawn } from 'node:child_process';
import { subjects, hostOfSubject } from '../../shared/subjects.js';
import { closeSync, openSync } from 'node:fs';
import { chmod, mkdir, readFile, readdir, rm, rmdir, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../../shared/log.js';
import type { Runner } from '../../shared/runner.js';
import { readMounts, readSwaps } from '../../shared/procfs.js';
import { errorMessage } from '../../shared/errors.js';
import { waitFor } from '../../shared/wait.js';
import { listHosts } from '../operator.js';
import { createMemoryCgroup, memoryCgroupRoot, removeCgroup } from '../../shared/cgroup.js';
import { GiB, MiB } from '../../shared/units.js';
import { daemonCgroup, recordedLoops } from '../../services/attacher/userspace.js';
import { tgtSocket } from '../../services/exporter/tgt.js';
import { removeDatapath } from '../../shared/datapath.js';
import { authInit, readIdentities } from '../../shared/auth.js';
import { accelerator, qemuCommand, vmImage, vmScript, writeVmScript } from './vm.js';
import { connectAs, freePort, type NatsAccess } from '../../shared/nats.js';
import { isAlive } from '../../shared/process.js';

export const BRIDGE = 'rswap-br0';
export const BRIDGE_ADDRESS = '198.18.0.1';
export const NETNS_PREFIX = 'rswap-';

export interface TestbedOptions {
  dir: string;
  hosts: number;
  natsPort: number;
  /** Memory limit of each host's cgroup, by host index (default 1GiB each). */
  memoryBytes?: number[];
  /** Memory each host never lends, by host index (default a quarter of its memory). */
  reserveBytes?: number[];
  /** Start a monitor per host (default true); without, events come only from `rswap inject`. */
  monitors?: boolean;
  /**
   * Start the broker last, once every monitor has published its first offer (default false: the
   * broker first). Tests a broker that starts after the fleet: it must still learn every offer.
   */
  brokerLast?: boolean;
  /** Size of the shared local-disk swap file at priority 5 (default none). */
  localSwapBytes?: number;
  /** Environment for every rswap process (e.g. OTEL_EXPORTER_OTLP_ENDPOINT). */
  env?: Record<string, string>;
  /** More environment for one process, by its name ('host-b/attacher'): e.g. a skewed clock. */
  processEnv?: Record<string, Record<string, string>>;
  /** More flags for one host's process, by its name ('host-c/attacher'), after those for every host. */
  processArgs?: Record<string, string[]>;
  /** Extra flags for the broker and for every monitor/exporter/attacher. */
  brokerArgs?: string[];
  monitorArgs?: string[];
  exporterArgs?: string[];
  attacherArgs?: string[];
  /**
   * Run NATS with no identities and no TLS (default false: the testbed makes an auth folder, every
   * process signs in with its own credentials over TLS). Every service then warns on each start.
   */
  insecure?: boolean;
  /**
   * VM hosts after the namespace hosts (cli/testbed/vm.ts): a real kernel with the kernel iSCSI
   * initiator, on the same bridge through a tap device; each runs a monitor (machine scope), an
   * exporter and an attacher (`--initiator kernel` unless `vmInitiators` says otherwise).
   */
  vmHosts?: number;
  /** Each VM host's RAM (default 1024 MiB). */
  vmMemoryMiB?: number;
  /** Each VM host's initiator, in order (default kernel, the production path). */
  vmInitiators?: Array<'kernel' | 'userspace'>;
  /**
   * Each VM host gets a disk of its own of this size (/dev/vda in the VM; none by default): a file
   * on this machine's disk, `vmDiskPath(dir, name)`, read and written past the page cache.
   */
  vmDiskMiB?: number;
  /**
   * nats-server nodes (default 1). Three make a cluster over mutual-TLS routes on the bridge, with
   * the KV buckets at three replicas; every process is given every node's URL. Processes 'nats',
   * 'nats-2', 'nats-3'.
   */
  natsNodes?: number;
  /** Brokers (default 1): 'broker', 'broker-2', ... all at once, as in a deployment that keeps one spare. */
  brokers?: number;
}

export interface TestbedHost {
  name: string;
  netns: string;
  address: string;
  tgtControlPort: number;
  /** The host's memory cgroup folder. */
  cgroup: string;
  memoryBytes: number;
}

/** A process the testbed started, by name ('nats', 'broker', 'host-a/exporter', ...), to restart it. */
export interface TestbedProcess {
  name: string;
  command: string[];
  logFile: string;
  env: Record<string, string>;
}

export interface Testbed {
  dir: string;
  natsUrl: string;
  hosts: TestbedHost[];
  localSwap?: string;
  processes: TestbedProcess[];
  /** Credentials file of each identity (broker, operator, observer, each host), unless insecure. */
  creds?: Record<string, string>;
  /** VM hosts: name, address, tap and folder (console.log and agent logs in it). */
  vms?: TestbedVm[];
}

export interface TestbedVm {
  name: string;
  address: string;
  tap: string;
  dir: string;
  memoryMiB: number;
  /** Boot to ready (its exporter and attacher recorded by the broker), ms. */
  readyMs?: number;
}

/**
 * How to reach a testbed's NATS as one of its identities (default the operator). 'broker' is what
 * a test uses to forge commands or write records, as only a broker may.
 */
export function testbedBus(tb: Pick<Testbed, 'natsUrl' | 'creds'>, identity = 'operator'): NatsAccess {
  if (!tb.creds) return { url: tb.natsUrl, insecure: true };
  const creds = tb.creds[identity];
  if (!creds) throw new Error(`the testbed has no identity '${identity}' (have: ${Object.keys(tb.creds).join(', ')})`);
  return { url: tb.natsUrl, creds };
}

const CLI = resolve(fileURLToPath(import.meta.url), '../../rswap.js');

export function hostsFor(count: number, cgroupRoot: string, memoryBytes: number[] = []): TestbedHost[] {
  return Array.from({ length: count }, (_, i) => {
    const name = `host-${String.fromCharCode(97 + i)}`;
    const netns = `${NETNS_PREFIX}${name}`;
    return { name, netns, address: `198.18.0.${11 + i}`, tgtControlPort: 3300 + i, cgroup: join(cgroupRoot, netns), memoryBytes: memoryBytes[i] ?? GiB };
  });
}

/** tgtadm `args` on a testbed host's tgtd (found by its control port and socket). */
export function tgtadmOn(run: Runner, tb: Pick<Testbed, 'dir'>, host: Pick<TestbedHost, 'name' | 'tgtControlPort'>, args: string[]) {
  return run('tgtadm', ['-C', String(host.tgtControlPort), '--lld', 'iscsi', ...args], { env: { TGT_IPC_SOCKET: tgtSocket(join(tb.dir, host.name, 'exporter')) } });
}

/** The shared local swap file of a testbed in `dir`: on disk, since /run is tmpfs. */
export const localSwapPath = (dir: string) => `/var/tmp/rswap-${basename(dir)}-local.swap`;
/** The file behind a VM host's own disk (`vmDiskMiB`), on this machine's disk. */
export const vmDiskPath = (dir: string, vm: string) => `/var/tmp/rswap-${basename(dir)}-${vm}.disk`;

const started: TestbedProcess[] = [];
/** The processes `testbedUp` started, by name, with their pids: a wait for them to be ready ends if one exits. */
const launched = new Map<string, { pid: number; logFile: string }>();

function startDetached(command: string[], logFile: string, env: Record<string, string> = {}, name?: string): number {
  if (name) started.push({ name, command, logFile, env });
  const fd = openSync(logFile, 'a');
  const child = spawn(command[0]!, command.slice(1), { detached: true, stdio: ['ignore', fd, fd], env: { ...process.env, ...env } });
  closeSync(fd);
  child.unref();
  if (name && child.pid) launched.set(name, { pid: child.pid, logFile });
  return child.pid!;
}

/**
 * Throws, naming them with the end of their logs, if processes the testbed started have exited
 * while it waits for them (nsenter and the agents keep their pid: nsenter execs). Called from a
 * wait's probe, it ends the wait at once: a crash is not a slow start.
 */
async function throwIfExited(): Promise<void> {
  const dead = [...launched].filter(([, p]) => !isAlive(p.pid));
  if (dead.length === 0) return;
  const tails = await Promise.all(dead.map(async ([name, p]) => `--- ${name}: ${p.logFile}\n${await logTail(p.logFile, 12)}`));
  throw new Error(`testbed: ${dead.map(([name]) => name).join(', ')} exited while the testbed started\n${tails.join('\n')}`);
}

/** The last `count` lines of a log, each cut to 400 characters, for an error that says why. */
export async function logTail(file: string, count: number): Promise<string> {
  const lines = (await readFile(file, 'utf8').catch(() => '(no log)')).trimEnd().split('\n').slice(-count);
  return lines.map((l) => l.slice(0, 400)).join('\n');
}

/** The last lines of a host's agent logs (and a VM's console), for an error that says why it is not up. */
async function lastWords(hostDir: string, vm: boolean): Promise<string> {
  const files = [...(vm ? ['console.log'] : []), 'exporter.log', 'attacher.log', 'monitor.log'];
  const parts = await Promise.all(files.map(async (file) => `--- ${join(hostDir, file)}\n${await logTail(join(hostDir, file), 8)}`));
  return parts.join('\n');
}

export async function testbedUp(run: Runner, log: Logger, options: TestbedOptions): Promise<Testbed> {
  const dir = options.dir;
  launched.clear();
  const hosts = hostsFor(options.hosts, await memoryCgroupRoot(), options.memoryBytes);
  const vmNames = Array.from({ length: options.vmHosts ?? 0 }, (_, i) => `host-${String.fromCharCode(97 + options.hosts + i)}`);
  // Node 1 listens on natsPort; more nodes (a cluster) on free ports, and each on a route port.
  const natsNodes = options.natsNodes ?? 1;
  const clientPorts = [options.natsPort, ...(await Promise.all(Array.from({ length: natsNodes - 1 }, () => freePort())))];
  const routePorts = natsNodes > 1 ? await Promise.all(clientPorts.map(() => freePort())) : [];
  const natsUrl = clientPorts.map((p) => `nats://${BRIDGE_ADDRESS}:${p}`).join(',');
  // The VM image first (built once per kernel version, cached): nothing is set up yet if it fails.
  const image = vmNames.length > 0 ? await vmImage(log) : undefined;
  const links = await run('ip', ['-o', 'link', 'show']);
  if (links.stdout.includes(` ${BRIDGE}:`)) throw new Error(`a testbed is already up (bridge ${BRIDGE} exists); run 'rswap testbed down' first`);
  await mkdir(dir, { recursive: true, mode: 0o700 });

  await run('ip', ['link', 'add', BRIDGE, 'type', 'bridge']);
  await run('ip', ['addr', 'add', `${BRIDGE_ADDRESS}/24`, 'dev', BRIDGE]);
  await run('ip', ['link', 'set', BRIDGE, 'up']);
  for (const host of hosts) {
    const veth = `rsw-${host.name}`;
    await run('ip', ['netns', 'add', host.netns]);
    await run('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', host.netns]);
    await run('ip', ['link', 'set', veth, 'master', BRIDGE, 'up']);
    await run('ip', ['-n', host.netns, 'addr', 'add', `${host.address}/24`, 'dev', 'eth0']);
    await run('ip', ['-n', host.netns, 'link', 'set', 'eth0', 'up']);
    await run('ip', ['-n', host.netns, 'link', 'set', 'lo', 'up']);
    await mkdir(join(dir, host.name), { recursive: true });
    await createMemoryCgroup(host.netns, host.memoryBytes); // at host.cgroup
  }
  let localSwap: string | undefined;
  if (options.localSwapBytes) {
    localSwap = localSwapPath(dir);
    await run('dd', ['if=/dev/zero', `of=${localSwap}`, 'bs=1M', `count=${Math.ceil(options.localSwapBytes / MiB)}`, 'status=none']);
    await chmod(localSwap, 0o600);
    await run('mkswap', [localSwap]);
    await run('swapon', ['-p', '5', localSwap]);
  }

  // Secure by default: an identity per process, least privilege, TLS with the testbed's own CA.
  let creds: Record<string, string> | undefined;
  const authDir = join(dir, 'auth');
  if (!options.insecure) {
    const routes = routePorts.map((p) => `nats-route://${BRIDGE_ADDRESS}:${p}`);
    await authInit(authDir, { serverNames: ['localhost'], serverIps: [BRIDGE_ADDRESS, '127.0.0.1'], hosts: [...hosts.map((h) => h.name), ...vmNames], ...(routes.length > 0 ? { routes } : {}) });
    creds = Object.fromEntries((await readIdentities(authDir)).map((i) => [i.name, join(authDir, 'creds', `${i.name}.creds`)]));
  }
  const credsOf = (name: string) => (creds ? ['--creds', creds[name]!] : ['--insecure']);
  if (natsNodes > 1 && !creds) throw new Error('a NATS cluster in the testbed runs with its identities and TLS (not insecure)');
  for (const [i, port] of clientPorts.entries()) {
    const name = i === 0 ? 'nats' : `nats-${i + 1}`;
    const natsDir = join(dir, name);
    await mkdir(natsDir, { recursive: true });
    const cluster = natsNodes > 1 ? ['--name', name, '--cluster', `nats://${BRIDGE_ADDRESS}:${routePorts[i]}`] : [];
    const natsPid = startDetached(['nats-server', ...(creds ? ['-c', join(authDir, 'nats.conf')] : []), ...cluster, '-a', BRIDGE_ADDRESS, '-p', String(port), '-js', '-sd', natsDir, '-P', join(natsDir, 'nats.pid')], join(dir, `${name}.log`), {}, name);
    await writeFile(join(dir, `${name}.pid`), `${natsPid}\n`);
  }
  for (let i = 0; i < natsNodes; i += 1) {
    const logFile = join(dir, `${i === 0 ? 'nats' : `nats-${i + 1}`}.log`);
    await waitFor('testbed: nats-server', async () => {
      await throwIfExited();
      return (await readFile(logFile, 'utf8').catch(() => '')).includes('Server is ready');
    }, { timeoutMs: 60_000 });
  }

  const node = process.execPath;
  const startBroker = async () => {
    // With VM hosts (often under TCG, where every guest instruction is emulated), an attach inside a
    // VM under memory pressure can take minutes on a loaded machine: the broker waits that long.
    const slowAttach = (options.vmHosts ?? 0) > 0 && !(options.brokerArgs ?? []).includes('--attach-timeout-ms') ? ['--attach-timeout-ms', '300000'] : [];
    const replicas = natsNodes >= 3 ? ['--kv-replicas', '3'] : [];
    for (let i = 0; i < (options.brokers ?? 1); i += 1) {
      const name = i === 0 ? 'broker' : `broker-${i + 1}`;
      const brokerPid = startDetached([node, CLI, 'broker', '--nats', natsUrl, ...credsOf('broker'), '--host', name, ...replicas, ...slowAttach, ...(options.brokerArgs ?? [])], join(dir, `${name}.log`), options.env, name);
      await writeFile(join(dir, `${name}.pid`), `${brokerPid}\n`);
    }
  };
  // With the broker last: listen for the monitors' first offers before they start.
  const offered = new Set<string>();
  const watcher = options.brokerLast && options.monitors !== false ? await connectAs(testbedBus({ natsUrl, ...(creds ? { creds } : {}) }, 'observer'), 'rswap-testbed') : undefined;
  watcher?.subscribe(subjects.allSurplus, { callback: (_e, msg) => void offered.add(hostOfSubject(msg.subject) ?? '') });
  if (!options.brokerLast) await startBroker();
  for (const [i, host] of hosts.entries()) {
    const inNs = ['nsenter', `--net=/run/netns/${host.netns}`, node, CLI];
    const common = ['--nats', natsUrl, ...credsOf(host.name), '--host', host.name, '--address', host.address];
    const exporterDir = join(dir, host.name, 'exporter');
    const reserve = String(options.reserveBytes?.[i] ?? Math.floor(host.memoryBytes / 4));
    startDetached(
      // The exporter keeps the same reserve as the monitor (its own check counts promised bytes).
      [...inNs, 'exporter', ...common, '--tgt-control-port', String(host.tgtControlPort), '--state-dir', exporterDir, '--memory-cgroup', host.cgroup, '--reserve-bytes', reserve, ...(options.exporterArgs ?? []), ...(options.processArgs?.[`${host.name}/exporter`] ?? [])],
      join(dir, host.name, 'exporter.log'),
      { ...options.env, ...options.processEnv?.[`${host.name}/exporter`] },
      `${host.name}/exporter`,
    );
    if (options.monitors !== false) {
      startDetached(
        [...inNs, 'monitor', '--nats', natsUrl, ...credsOf(host.name), '--host', host.name, '--scope', `cgroup:${host.cgroup}`, '--reserve-bytes', reserve, '--exporter-state-dir', exporterDir, '--attacher-state-dir', join(dir, host.name, 'attacher'), ...(options.monitorArgs ?? []), ...(options.processArgs?.[`${host.name}/monitor`] ?? [])],
        join(dir, host.name, 'monitor.log'),
        { ...options.env, ...options.processEnv?.[`${host.name}/monitor`] },
        `${host.name}/monitor`,
      );
    }
    startDetached(
      [...inNs, 'attacher', ...common, '--initiator', 'userspace', '--state-dir', join(dir, host.name, 'attacher'), ...(options.attacherArgs ?? []), ...(options.processArgs?.[`${host.name}/attacher`] ?? [])],
      join(dir, host.name, 'attacher.log'),
      { ...options.env, ...options.processEnv?.[`${host.name}/attacher`] },
      `${host.name}/attacher`,
    );
  }
  if (options.brokerLast) {
    try {
      if (watcher) {
        await waitFor('testbed: every monitor published an offer', async () => {
          await throwIfExited();
          return hosts.every((h) => offered.has(h.name));
        }, { timeoutMs: 120_000 });
      }
    } finally {
      await watcher?.close();
    }
    await startBroker();
  }
  const vms: TestbedVm[] = [];
  if (image) {
    const accel = await accelerator(image);
    for (const [i, name] of vmNames.entries()) {
      const vm: TestbedVm = { name, address: `198.18.0.${11 + hosts.length + i}`, tap: `rswv-${name}`, dir: join(dir, name), memoryMiB: options.vmMemoryMiB ?? 1024 };
      await run('ip', ['tuntap', 'add', 'dev', vm.tap, 'mode', 'tap']);
      await run('ip', ['link', 'set', vm.tap, 'master', BRIDGE, 'up']);
      const disk = options.vmDiskMiB ? vmDiskPath(dir, name) : undefined;
      if (disk) {
        // Allocated, not sparse: the VM's writes land on blocks the file system already gave it.
        await run('fallocate', ['-l', String(options.vmDiskMiB! * MiB), disk]);
        await chmod(disk, 0o600);
      }
      const spec = { name, share: vm.dir, tap: vm.tap, mac: `52:54:00:72:73:${(0x10 + i).toString(16)}`, memoryMiB: vm.memoryMiB, ...(disk ? { disk } : {}) };
      // Each agent restarted 2 s after it exits, as the systemd units do (Restart=always).
      const inVm = (role: string, args: string[]) => {
        const logFile = join(vm.dir, `${role}.log`);
        return `(while :; do ${node} ${CLI} ${role} --nats ${natsUrl} ${credsOf(name).join(' ')} --host ${name} ${args.join(' ')} >> ${logFile} 2>&1; echo "rswap-vm: ${role} exited ($?), restarting in 2 s" >> ${logFile}; sleep 2; done) &`;
      };
      await writeVmScript(spec, vmScript(spec, vm.address, `iqn.2026-11.io.rswap:${name}`, [
        inVm('exporter', ['--address', vm.address, '--state-dir', '/var/lib/rswap/exporter', ...(options.exporterArgs ?? [])]),
        ...(options.monitors !== false ? [inVm('monitor', ['--scope', 'machine', '--exporter-state-dir', '/var/lib/rswap/exporter', '--attacher-state-dir', '/var/lib/rswap/attacher', ...(options.monitorArgs ?? [])])] : []),
        // Under TCG every step runs emulated: iscsiadm alone can take a minute on a loaded machine.
        inVm('attacher', ['--address', vm.address, '--initiator', options.vmInitiators?.[i] ?? 'kernel', '--state-dir', '/var/lib/rswap/attacher', ...((options.attacherArgs ?? []).includes('--command-timeout-ms') ? [] : ['--command-timeout-ms', '120000']), ...(options.attacherArgs ?? [])]),
      ]));
      startDetached(qemuCommand(image, spec, accel), join(vm.dir, 'console.log'), {}, `${name}/vm`);
      vms.push(vm);
    }
  }
  const bootedAt = Date.now();
  const testbed: Testbed = { dir, natsUrl, hosts, ...(localSwap ? { localSwap } : {}), processes: started.splice(0), ...(creds ? { creds } : {}), ...(vms.length ? { vms } : {}) };
  await writeFile(join(dir, 'testbed.json'), JSON.stringify(testbed, null, 2));
  // Ready when the broker has recorded every host's exporter and attacher (a VM's too: it boots
  // and starts node under TCG, which takes a while). A process that exits ends the wait at once;
  // the deadline only guards against a hang (ten node processes start at once on a loaded machine,
  // and a new NATS cluster elects its JetStream leader before the broker can make its buckets).
  const names = [...hosts.map((h) => h.name), ...vms.map((v) => v.name)];
  let missing = names;
  try {
    await waitFor('testbed: agents announced to the broker', async () => {
      await throwIfExited();
      // NATS may refuse for a moment while the broker creates the buckets: not ready yet.
      const known = await listHosts(testbedBus(testbed)).catch(() => []);
      for (const vm of vms) if (vm.readyMs === undefined && known.some((k) => k.host === vm.name && k.exporter && k.attacher)) vm.readyMs = Date.now() - bootedAt;
      missing = names.filter((name) => !known.some((k) => k.host === name && k.exporter && k.attacher));
      return missing.length === 0;
    }, { timeoutMs: vms.length > 0 ? 240_000 : 120_000 });
  } catch (error) {
    // The testbed's directory goes with testbed down: what the missing hosts said goes in the error.
    const said = await Promise.all(missing.map((name) => lastWords(join(dir, name), vms.some((v) => v.name === name))));
    throw new Error(`${errorMessage(error)}; not announced: ${missing.join(', ')}\n${said.join('\n')}`);
  }
  if (vms.length > 0) {
    await writeFile(join(dir, 'testbed.json'), JSON.stringify(testbed, null, 2));
    for (const vm of vms) log.info({ vm: vm.name, readyMs: vm.readyMs, accel: await accelerator(image!) }, `VM host ${vm.name} ready ${((vm.readyMs ?? 0) / 1000).toFixed(1)} s after it started`);
  }
  log.info({ dir, natsUrl, hosts: names }, 'testbed up');
  return testbed;
}

/** The pids of a testbed process now: found by its command line, as `down` finds them. */
async function pidsOf(p: TestbedProcess): Promise<number[]> {
  // nsenter execs the agent, so the agent's command line is what follows nsenter's own arguments.
  const wanted = (p.command[0] === 'nsenter' ? p.command.slice(2) : p.command).join(' ');
  return pidsWhere((cmd) => cmd.trim() === wanted);
}

/** kill -9 of one testbed process (fault injection); returns how many processes it hit. */
export async function killTestbedProcess(tb: Testbed, name: string): Promise<number> {
  const p = tb.processes.find((x) => x.name === name);
  if (!p) throw new Error(`no testbed process '${name}' (have: ${tb.processes.map((x) => x.name).join(', ')})`);
  const pids = await pidsOf(p);
  await killAll(pids);
  return pids.length;
}

/** Starts a testbed process again, exactly as `up` did. */
export function startTestbedProcess(tb: Testbed, name: string): void {
  const p = tb.processes.find((x) => x.name === name);
  if (!p) throw new Error(`no testbed process '${name}'`);
  startDetached(p.command, p.logFile, p.env);
}

export async function readTestbed(dir: string): Promise<Testbed> {
  return JSON.parse(await readFile(join(dir, 'testbed.json'), 'utf8')) as Testbed;
}

async function pidsWhere(match: (cmdline: string, pid: number) => boolean): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline && match(cmdline.split('\0').join(' '), pid)) pids.push(pid);
  }
  return pids;
}

async function killAll(pids: number[]): Promise<void> {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  for (let i = 0; i < 50; i += 1) {
    if (!pids.some(isAlive)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Loop devices the testbed's initiators made: backed by a file under `dir`, or recorded by an
 * attacher under `dir` and backed by a FUSE export that is gone (its path then reads as "/").
 */
export async function loopDevicesUnder(run: Runner, dir: string): Promise<string[]> {
  const { stdout } = await run('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE']);
  const found = new Set(
    stdout
      .split('\n')
      .map((line) => line.trim().split(/\s+/))
      .filter(([name, file]) => name && file && file.startsWith(dir + '/'))
      .map(([name]) => name!),
  );
  for (const host of (await readdir(dir).catch(() => [] as string[])).filter((name) => name.startsWith('host-'))) {
    for (const device of await recordedLoops(join(dir, host, 'attacher', 'leases'))) found.add(device);
  }
  return [...found];
}

/**
 * Removes everything a testbed in `dir` made, in the order that loses no page: stop rswap's
 * processes, swap off our areas, detach our loop devices, stop the initiators, then targets and
 * tgtd, then mounts, namespaces, the bridge and NATS. Touches only what carries the testbed's marks.
 */
export async function testbedDown(run: Runner, log: Logger, dir: string): Promise<string[]> {
  const problems: string[] = [];
  const attempt = async (what: string, task: () => Promise<unknown>) => {
    try {
      await task();
    } catch (error) {
      problems.push(`${what}: ${errorMessage(error)}`);
    }
  };
  // 1. rswap's own processes (broker, agents): they talk to the testbed's NATS on the bridge.
  await attempt('stop rswap processes', async () => killAll(await pidsWhere((cmd) => cmd.includes('rswap.js ') && cmd.includes(`nats://${BRIDGE_ADDRESS}:`))));
  // Workloads in the host cgroups: once they are gone, their swapped pages are free and the
  // swap-offs below have nothing to read back. tgtd (also there) serves the lenders until step 3.
  const cgroupRoot = await memoryCgroupRoot();
  const cgroups = (await readdir(cgroupRoot).catch(() => [] as string[])).filter((name) => name.startsWith(NETNS_PREFIX + 'host-'));
  const pidsIn = async (name: string) =>
    (await readFile(join(cgroupRoot, name, 'cgroup.procs'), 'utf8').catch(() => '')).split('\n').filter(Boolean).map(Number);
  for (const name of cgroups) {
    await attempt(`stop workloads in ${name}`, async () => {
      const workloads = [];
      for (const pid of await pidsIn(name)) {
        const comm = (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim();
        if (comm !== 'tgtd') workloads.push(pid);
      }
      await killAll(workloads);
    });
  }
  // 2. Swap areas and loop devices backed by files under the folder.
  const ours = await loopDevicesUnder(run, dir).catch(() => []);
  const swaps = await readSwaps();
  // A swap-off on a lease whose lender is dead blocks (the initiator retries forever). The
  // workloads are gone, so nothing of value is on those areas: after a minute, stop the initiators
  // so the I/O fails and the swap-off returns.
  const stopInitiators = async () => killAll(await pidsWhere((cmd) => cmd.includes('qemu-storage-daemon') && cmd.includes(dir + '/')));
  const watchdog = setTimeout(() => void stopInitiators(), 60_000);
  for (const device of ours) {
    if (swaps.some((a) => a.path === device)) await attempt(`swapoff ${device}`, () => run('swapoff', [device], { timeoutMs: 600_000 }));
    await attempt(`losetup -d ${device}`, () => run('losetup', ['-d', device]));
  }
  clearTimeout(watchdog);
  // The shared local swap file last among swap areas: pages on the remote areas may move to it.
  const localSwap = localSwapPath(dir);
  if (swaps.some((a) => a.path === localSwap)) await attempt(`swapoff ${localSwap}`, () => run('swapoff', [localSwap], { timeoutMs: 600_000 }));
  await attempt(`rm ${localSwap}`, () => rm(localSwap, { force: true }));
  // VM hosts (qemu names the folder): what they borrowed is gone with them; what they lent, the
  // swap-offs above have taken back.
  await attempt('stop VM hosts', async () => killAll(await pidsWhere((cmd) => cmd.startsWith('qemu-system-x86_64') && cmd.includes('-name rswap-vm-') && cmd.includes(dir + '/'))));
  // Their own disks, once no VM holds them.
  for (const file of (await readdir('/var/tmp').catch(() => [] as string[])).filter((f) => f.startsWith(`rswap-${basename(dir)}-host-`) && f.endsWith('.disk'))) {
    await attempt(`rm /var/tmp/${file}`, () => rm(join('/var/tmp', file), { force: true }));
  }
  // 3. Initiators (qemu-storage-daemon names the folder), then everything in our namespaces (tgtd).
  await attempt('stop initiators', stopInitiators);
  const namespaces = (await run('ip', ['netns', 'list']).then((r) => r.stdout, () => ''))
    .split('\n')
    .map((line) => line.split(' ')[0]!)
    .filter((name) => name.startsWith(NETNS_PREFIX + 'host-'));
  for (const netns of namespaces) {
    await attempt(`stop processes in ${netns}`, async () => {
      const { stdout } = await run('ip', ['netns', 'pids', netns]);
      await killAll(stdout.split('\n').filter(Boolean).map(Number));
    });
  }
  // 4. Mounts under the folder (FUSE exports, ramfs), deepest first.
  const mounts = (await readMounts()).filter((m) => m.target.startsWith(dir + '/')).sort((a, b) => b.target.length - a.target.length);
  for (const mount of mounts) await attempt(`umount ${mount.target}`, () => run('umount', ['-l', mount.target]));
  // 5. Host cgroups: whatever still runs in them is ours; then the folders.
  for (const name of cgroups) {
    await attempt(`cgroup ${name}`, async () => {
      await killAll(await pidsIn(name));
      await removeCgroup(join(cgroupRoot, name));
    });
  }
  // The daemons' own cgroups (shared/datapath.ts), now empty: each tgtd's by the control port in
  // its socket's name, each initiator's by a lease folder its attacher did not remove.
  for (const host of (await readdir(dir).catch(() => [] as string[])).filter((name) => name.startsWith('host-'))) {
    const sockets = await readdir(join(dir, host, 'exporter')).catch(() => [] as string[]);
    const ports = sockets.map((f) => /^tgtd\.socket\.(\d+)$/.exec(f)?.[1]).filter((p): p is string => p !== undefined);
    const leases = await readdir(join(dir, host, 'attacher', 'leases')).catch(() => [] as string[]);
    for (const name of [...ports.map((p) => `tgtd-${p}`), ...leases.map(daemonCgroup)]) await attempt(`cgroups of ${name}`, () => removeDatapath(name));
  }
  // 6. Links, namespaces, bridge, NATS. Each host's veth goes first, by its root-side name: that
  // removes both ends at once, while a namespace is torn down by the kernel later (seconds later
  // when it still held TCP connections to a host that vanished), and a next testbed would find
  // the old link still there.
  const { stdout: links } = await run('ip', ['-o', 'link', 'show']).catch(() => ({ stdout: '' }));
  for (const link of [...links.matchAll(/^\d+: (rsw[vw]?-host-[a-z]+)[@:]/gm)].map((m) => m[1]!)) {
    await attempt(`link ${link}`, () => run('ip', ['link', 'del', link]));
  }
  for (const netns of namespaces) await attempt(`netns ${netns}`, () => run('ip', ['netns', 'del', netns]));
  await attempt('bridge', async () => {
    const { stdout } = await run('ip', ['-o', 'link', 'show']);
    if (stdout.includes(` ${BRIDGE}:`)) await run('ip', ['link', 'del', BRIDGE]);
  });
  await attempt('nats-server', async () => killAll(await pidsWhere((cmd) => cmd.startsWith('nats-server') && cmd.includes(dir + '/'))));
  // RSWAP_TESTBED_KEEP_LOGS=DIR keeps every log of the testbed (its processes', the VMs' consoles)
  // under DIR/<testbed>-<time>, to read after a failed test.
  const keep = process.env.RSWAP_TESTBED_KEEP_LOGS;
  if (keep) await attempt('keep logs', () => run('sh', ['-c', 'mkdir -p "$2" && cd "$1" && find . -name "*.log" -exec cp --parents {} "$2" ";"', 'sh', dir, join(keep, `${basename(dir)}-${Date.now()}`)]));
  if (problems.length === 0) {
    await rm(dir, { recursive: true, force: true });
    // The shared parent (/run/rswap) goes too once no other testbed or demo uses it.
    if (basename(dirname(dir)) === 'rswap') await rmdir(dirname(dir)).catch(() => undefined);
  }
  log.info({ dir, problems }, 'testbed down');
  return problems;
}
