#!/usr/bin/env node
/** rswap: start any service, and do the operator's work (inject, list, release, testbed, demo). */
import { Command, Option } from 'commander';
import { natsUrl, credsFile, fromEnv } from '../shared/config.js';
import type { NatsAccess } from '../shared/nats.js';
import { addIdentity, authInit, rotateIdentity } from '../shared/auth.js';
import { HostId } from '../shared/schemas.js';
import { createLogger } from '../shared/log.js';
import { createRunner } from '../shared/runner.js';
import { RswapError, errorMessage } from '../shared/errors.js';
import { BrokerConfig, startBroker } from '../services/broker/index.js';
import { ExporterConfig, startExporter } from '../services/exporter/index.js';
import { AttacherConfig, startAttacher } from '../services/attacher/index.js';
import { MonitorConfig, startMonitor } from '../services/monitor/index.js';
import { cordonHost, drainHost, getLease, revokeLease, hostsTable, leaseTimeline, injectPressure, injectRelief, injectSurplus, leasesTable, listHosts, listLeases, releaseLease } from './operator.js';
import { testbedDown, testbedUp } from './testbed/testbed.js';
import { runDemo } from './demo.js';
import { startTracing } from '../shared/tracing.js';
import { version } from '../shared/version.js';
import { checkCompose, checkUnit } from './check.js';
import { readFile } from 'node:fs/promises';

const program = new Command('rswap')
  .description('Lend idle RAM across Linux hosts as swap, automatically.')
  .version(version, '-V, --version', 'print the version')
  .showHelpAfterError('(run with --help for usage)');

const natsOption = () => new Option('--nats <url>', 'NATS server URL (env RSWAP_NATS_URL, default nats://127.0.0.1:4222)');
const credsOption = () => new Option('--creds <file>', 'credentials of this identity, from rswap auth (env RSWAP_CREDS)');
const insecureOption = () => new Option('--insecure', 'connect without identity or TLS (warned about; never in production)');
/** The bus options every command takes. */
const withBus = (command: Command) => command.addOption(natsOption()).addOption(credsOption()).addOption(insecureOption());
/** How an operator command reaches NATS. */
type BusFlags = { nats?: string; creds?: string; insecure?: boolean };
const busOf = (o: BusFlags): NatsAccess => ({ url: natsUrl(o.nats), creds: credsFile(o.creds), insecure: o.insecure === true || process.env.RSWAP_INSECURE === '1' || process.env.RSWAP_INSECURE === 'true' });
const hostOption = () => new Option('--host <id>', 'this host id: [a-z0-9-] (env RSWAP_HOST)');

const services: Array<{ command: Command; keys: string[] }> = [];

function serviceCommand(name: string, description: string, keys: string[], start: (raw: Record<string, unknown>) => Promise<unknown>) {
  const command = withBus(program.command(name).description(description))
    .addOption(hostOption())
    .option('--metrics-port <port>', 'serve Prometheus metrics on this port at /metrics (default off)')
    .action(async (options: Record<string, unknown>) => {
      const raw = fromEnv(keys, options);
      raw.nats = natsUrl(options.nats as string | undefined);
      raw.creds = credsFile(options.creds as string | undefined);
      startTracing(name, typeof raw.host === 'string' ? raw.host : undefined);
      await start(raw);
    });
  services.push({ command, keys });
  return command;
}

/** Every setting is a flag: those not described above get one that points to the reference. */
function addRemainingSettings(): void {
  for (const { command, keys } of services) {
    const declared = new Set(command.options.map((o) => o.attributeName()));
    for (const key of keys.filter((k) => !declared.has(k))) {
      command.option(`--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} <value>`, 'see docs/operations.md (env RSWAP_' + key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase() + ')');
    }
  }
}

const keysOf = (schema: { shape: Record<string, unknown> }) => Object.keys(schema.shape);

serviceCommand('broker', 'match borrowers to lenders and drive leases', keysOf(BrokerConfig), startBroker)
  .option('--offer-ttl-ms <ms>', 'offers older than this are not matched (default 30000)')
  .option('--min-lease-bytes <size>', 'smallest lease, e.g. 64MiB')
  .option('--max-lease-bytes <size>', 'largest lease, e.g. 4GiB')
  .option('--release-cooldown-ms <ms>', 'a borrower clear of pressure this long gives its leases back (default 60000)');

serviceCommand('exporter', 'lend this host\'s RAM as ramfs-backed iSCSI targets (tgt)', keysOf(ExporterConfig), startExporter)
  .option('--address <ip>', 'address of the iSCSI portal (env RSWAP_ADDRESS)')
  .option('--portal-port <port>', 'iSCSI portal port (default 3260)')
  .option('--tgt-control-port <n>', 'tgtd control port, its -C (default 3260)')
  .option('--tgt-iothreads <n>', 'tgtd I/O threads, its -t (default tgtd\'s own, 16)')
  .option('--iscsi-params <list>', 'iSCSI parameters for every target, e.g. InitialR2T=No,FirstBurstLength=262144 (default tgt\'s)')
  .option('--state-dir <path>', 'where lease mounts live (default /var/lib/rswap/exporter)')
  .option('--reserve-bytes <size>', 'memory never lent (default 1GiB)')
  .option('--max-lend-bytes <size>', 'most lent in total (default 64GiB)')
  .option('--memory-cgroup <path>', 'start tgtd in this memory cgroup, so what it lends is charged there');

serviceCommand('attacher', 'swap onto remote memory leased to this host', keysOf(AttacherConfig), startAttacher)
  .option('--address <ip>', 'this host\'s address, the one the lender admits (env RSWAP_ADDRESS)')
  .option('--iqn <iqn>', 'initiator name (default iqn.2026-11.io.rswap:<host>)')
  .addOption(new Option('--initiator <kind>', 'iSCSI initiator (default auto: kernel where iscsi_tcp exists)').choices(['auto', 'kernel', 'userspace']))
  .option('--state-dir <path>', 'default /var/lib/rswap/attacher')
  .option('--swap-priority <n>', 'priority of remote swap (default: highest local + 100)')
  .option('--swapoff-margin-bytes <size>', 'RAM left free after a swap-off (default 256MiB)')
  .option('--unsealed', 'swap to leases unencrypted: every lender can read and change the pages (warned about; default: sealed with a per-lease key held only here; env RSWAP_UNSEALED)');

serviceCommand('monitor', 'watch this host\'s memory (or one cgroup\'s) and publish pressure, relief and surplus', keysOf(MonitorConfig), startMonitor)
  .option('--scope <scope>', "'machine' (default) or 'cgroup:/sys/fs/cgroup/...' for one memory cgroup")
  .option('--interval-ms <ms>', 'sample interval (default 500); PSI triggers wake it sooner')
  .option('--reserve-bytes <size>', 'memory this host never lends; under it the broker reclaims (default 1GiB)')
  .option('--enter-stall-pct <pct>', 'PSI some share that means pressure (default 10)')
  .option('--exit-stall-pct <pct>', 'PSI some share under which pressure is over (default 2)')
  .option('--enter-swap-pages-per-s <n>', 'swap traffic that means pressure, pages/s (default 256)')
  .option('--exit-swap-pages-per-s <n>', 'swap traffic under which pressure is over (default 32)')
  .option('--enter-hold-ms <ms>', 'how long signals must stay high (default 500)')
  .option('--exit-hold-ms <ms>', 'how long signals must stay low (default 5000)')
  .option('--min-needed-bytes <size>', 'smallest need reported (default 64MiB)')
  .option('--exporter-state-dir <path>', 'this host\'s exporter state dir, to count what it lends (default /var/lib/rswap/exporter)');

addRemainingSettings();

const inject = program.command('inject').description('publish an event by hand, as a monitor would');
inject
  .command('pressure')
  .description('host H needs N more bytes of memory')
  .addOption(natsOption()).addOption(credsOption()).addOption(insecureOption())
  .requiredOption('--host <id>', 'the borrower')
  .requiredOption('--bytes <size>', 'how much it needs, e.g. 256MiB')
  .action(async (o: { nats?: string; creds?: string; insecure?: boolean; host: string; bytes: string }) => {
    const event = await injectPressure(busOf(o), o.host, o.bytes);
    console.log(`published pressure: ${JSON.stringify(event)}`);
  });
inject
  .command('surplus')
  .description('host H can lend N bytes')
  .addOption(natsOption()).addOption(credsOption()).addOption(insecureOption())
  .requiredOption('--host <id>', 'the lender')
  .requiredOption('--bytes <size>', 'how much it can lend now, e.g. 1GiB')
  .option('--lent <size>', 'how much it already lends', '0')
  .option('--deficit <size>', 'how far it is under its reserve (more than 0 makes the broker reclaim)', '0')
  .action(async (o: { nats?: string; creds?: string; insecure?: boolean; host: string; bytes: string; lent: string; deficit: string }) => {
    const event = await injectSurplus(busOf(o), o.host, o.bytes, o.lent, o.deficit);
    console.log(`published surplus: ${JSON.stringify(event)}`);
  });
inject
  .command('relief')
  .description('host H is no longer under pressure (its leases go back after the cool-down)')
  .addOption(natsOption()).addOption(credsOption()).addOption(insecureOption())
  .requiredOption('--host <id>', 'the borrower')
  .action(async (o: { nats?: string; creds?: string; insecure?: boolean; host: string }) => {
    const event = await injectRelief(busOf(o), o.host);
    console.log(`published relief: ${JSON.stringify(event)}`);
  });

program
  .command('leases')
  .description('list leases (the table also shows orphan targets: kept by a lender without a lease record)')
  .addOption(natsOption()).addOption(credsOption()).addOption(insecureOption())
  .option('--json', 'print JSON')
  .action(async (o: { nats?: string; creds?: string; insecure?: boolean; json?: boolean }) => {
    const [leases, hosts] = await Promise.all([listLeases(busOf(o)), listHosts(busOf(o))]);
    console.log(o.json ? JSON.stringify(leases, null, 2) : leasesTable(leases, hosts));
  });

program
  .command('trace')
  .description("a lease's timeline (each state, when, how long each step took) and its trace in Jaeger")
  .argument('<lease>', 'lease id, e.g. l-0123456789ab')
  .addOption(natsOption()).addOption(credsOption()).addOption(insecureOption())
  .option('--jaeger <url>', 'Jaeger UI (env RSWAP_JAEGER_URL, default http://localhost:16686)')
  .action(async (leaseId: string, o: { nats?: string; creds?: string; insecure?: boolean; jaeger?: string }) => {
    console.log(leaseTimeline(await getLease(busOf(o), leaseId), o.jaeger));
  });

program
  .command('hosts')
  .description('list hosts: portals, initiators, offers, reservations, pressure')
  .addOption(natsOption()).addOption(credsOption()).addOption(insecureOption())
  .option('--json', 'print JSON')
  .action(async (o: { nats?: string; creds?: string; insecure?: boolean; json?: boolean }) => {
    const hosts = await listHosts(busOf(o));
    console.log(o.json ? JSON.stringify(hosts, null, 2) : hostsTable(hosts));
  });

program
  .command('release')
  .description('give a lease back: swap-off on the borrower, then teardown on the lender')
  .argument('<lease>', 'lease id, e.g. l-0123456789ab')
  .addOption(natsOption()).addOption(credsOption()).addOption(insecureOption())
  .action(async (leaseId: string, o: BusFlags) => {
    const lease = await releaseLease(busOf(o), leaseId);
    console.log(`lease ${lease.id} is ${lease.state}`);
  });

program
  .command('revoke')
  .description('move a lease off its lender, make-before-break: a replacement first, then swap-off and teardown')
  .argument('<lease>', 'lease id, e.g. l-0123456789ab')
  .addOption(natsOption()).addOption(credsOption()).addOption(insecureOption())
  .action(async (leaseId: string, o: BusFlags) => {
    const { released, replacement } = await revokeLease(busOf(o), leaseId);
    console.log(`lease ${released.id} is ${released.state}${replacement ? `; replaced by ${replacement.id} from ${replacement.lender}` : '; no replacement was needed or possible'}`);
  });

for (const [name, cordoned, description, done] of [
  ['cordon', true, 'place no new lease on a lender (its current leases stay)', 'is cordoned: no new leases on it'],
  ['uncordon', false, 'let a cordoned lender take new leases again', 'is uncordoned'],
] as const) {
  program
    .command(name)
    .description(description)
    .argument('<host>', 'host id')
    .addOption(natsOption()).addOption(credsOption()).addOption(insecureOption())
    .action(async (host: string, o: BusFlags) => {
      await cordonHost(busOf(o), host, cordoned);
      console.log(`${host} ${done}`);
    });
}

program
  .command('drain')
  .description('cordon a lender, then move every lease off it make-before-break (before a reboot)')
  .argument('<host>', 'host id')
  .addOption(natsOption()).addOption(credsOption()).addOption(insecureOption())
  .action(async (host: string, o: BusFlags) => {
    const { moved, stayed } = await drainHost(busOf(o), host);
    for (const m of moved) console.log(`moved ${m.from}${m.to ? ` -> ${m.to}` : ' (given back: the borrower no longer needed it elsewhere)'}`);
    for (const s of stayed) console.log(`STAYED ${s.leaseId}: ${s.reason}`);
    console.log(stayed.length === 0 ? `${host} is drained and cordoned: it serves no lease` : `${host} is cordoned; ${stayed.length} lease(s) could not move`);
    if (stayed.length > 0) process.exitCode = 1;
  });

const auth = program.command('auth').description('identities and TLS for NATS: an NKey per host, broker, operator and observer, and a CA');
const authDirOption = () => new Option('--dir <path>', 'the auth folder').default('/etc/rswap/auth');
auth
  .command('init')
  .description('make a CA, nats-server\'s certificate, identities (broker, operator, observer, and --host ...) and nats.conf')
  .addOption(authDirOption())
  .option('--server-name <names...>', 'DNS names clients use to reach nats-server', [])
  .option('--server-ip <ips...>', 'IP addresses clients use to reach nats-server', [])
  .option('--host <ids...>', 'hosts to make identities for now (more later with add-host)', [])
  .option('--ca-cert <file>', "your own CA's certificate (PEM) to sign nats-server's certificate with (default: a new CA)")
  .option('--ca-key <file>', "your own CA's key (PEM), with --ca-cert")
  .option('--route <urls...>', 'a cluster: every node\'s route URL, nats-route://ADDRESS:6222 (give each node\'s address to --server-ip too)', [])
  .action(async (o: { dir: string; serverName: string[]; serverIp: string[]; host: string[]; caCert?: string; caKey?: string; route: string[] }) => {
    if (!o.caCert !== !o.caKey) throw new Error('--ca-cert and --ca-key go together');
    await authInit(o.dir, { serverNames: o.serverName, serverIps: o.serverIp, hosts: o.host, ...(o.caCert && o.caKey ? { ca: { cert: o.caCert, key: o.caKey } } : {}), ...(o.route.length > 0 ? { routes: o.route } : {}) });
    console.log(`auth folder ${o.dir}: run nats-server with -c ${o.dir}/nats.conf (plus -js, --store_dir, ...)`);
    if (o.route.length > 0) console.log(`a cluster: start each node with its own --name and --cluster nats://ADDRESS:PORT (its route listener), and the broker with --kv-replicas 3`);
    console.log(`give each process its own file from ${o.dir}/creds/ (0600) with --creds or RSWAP_CREDS; keep ${o.dir}/ca-key.pem offline`);
  });
for (const role of ['host', 'broker', 'operator', 'observer'] as const) {
  auth
    .command(`add-${role}`)
    .description(`add a${role === 'operator' || role === 'observer' ? 'n' : ''} ${role} identity; then reload nats-server (nats-server --signal reload)`)
    .argument('<name>', role === 'host' ? 'host id' : 'identity name ([a-z0-9-])')
    .addOption(authDirOption())
    .action(async (name: string, o: { dir: string }) => {
      const file = await addIdentity(o.dir, HostId.parse(name), role);
      console.log(`${role} ${name}: ${file}; ${o.dir}/nats.conf updated, reload nats-server`);
    });
}

auth
  .command('rotate')
  .description('give an identity a new key (its creds file and nats.conf are rewritten); reload nats-server, then restart its process with the new file')
  .argument('<name>', 'identity name')
  .addOption(authDirOption())
  .action(async (name: string, o: { dir: string }) => {
    const file = await rotateIdentity(o.dir, name);
    console.log(`${name}: new key in ${file}; reload nats-server (nats-server --signal reload), then restart ${name}'s process: the old key no longer signs in`);
  });

const testbed = program.command('testbed').description('several hosts on this machine, as network namespaces (root only)');
testbed
  .command('up')
  .description('create hosts, NATS and the agents')
  .option('--hosts <n>', 'number of hosts', '2')
  .option('--dir <path>', 'where everything lives', '/run/rswap/testbed')
  .option('--nats-port <port>', 'NATS port on the bridge', '14222')
  .option('--vm-hosts <n>', 'VM hosts after those (a real kernel, the kernel iSCSI initiator; qemu, TCG where there is no KVM)', '0')
  .option('--insecure', 'NATS without identities or TLS (loud; never in production)')
  .action(async (o: { hosts: string; dir: string; natsPort: string; vmHosts: string; insecure?: boolean }) => {
    const log = createLogger('testbed');
    const run = createRunner(log);
    try {
      const tb = await testbedUp(run, log, { dir: o.dir, hosts: Number(o.hosts), natsPort: Number(o.natsPort), vmHosts: Number(o.vmHosts), ...(o.insecure ? { insecure: true } : {}) });
      console.log(`testbed up: ${[...tb.hosts, ...(tb.vms ?? [])].map((h) => `${h.name} ${h.address}`).join(', ')}; NATS ${tb.natsUrl}`);
      for (const vm of tb.vms ?? []) console.log(`VM host ${vm.name}: ready ${((vm.readyMs ?? 0) / 1000).toFixed(1)} s after start; console and agent logs in ${vm.dir}`);
      console.log(`try: rswap hosts --nats ${tb.natsUrl}${tb.creds ? ` --creds ${tb.creds.operator}` : ' --insecure'}`);
    } catch (error) {
      await testbedDown(run, log, o.dir);
      throw error;
    }
  });
testbed
  .command('down')
  .description('remove everything the testbed made, also after a crash')
  .option('--dir <path>', 'the testbed folder', '/run/rswap/testbed')
  .action(async (o: { dir: string }) => {
    const log = createLogger('testbed');
    const problems = await testbedDown(createRunner(log), log, o.dir);
    if (problems.length > 0) throw new Error(`testbed down left problems:\n  ${problems.join('\n  ')}`);
    console.log('testbed down');
  });

program
  .command('check')
  .description('check deployment files without running them: compose.yaml (Compose schema + rswap invariants) and systemd units')
  .argument('<files...>', 'compose files (several are merged in order, as docker compose -f a -f b does) and/or deploy/systemd/*.service')
  .action(async (files: string[]) => {
    const problems: string[] = [];
    const composeFiles = files.filter((f) => !f.endsWith('.service'));
    for (const file of files.filter((f) => f.endsWith('.service'))) problems.push(...checkUnit(file, await readFile(file, 'utf8')));
    if (composeFiles.length > 0) {
      const texts = await Promise.all(composeFiles.map((f) => readFile(f, 'utf8')));
      problems.push(...checkCompose(...texts).map((p) => `${composeFiles.join(' + ')}: ${p}`));
    }
    if (problems.length > 0) throw new Error(`${problems.length} problem(s):\n  ${problems.join('\n  ')}`);
    console.log(`ok: ${files.join(', ')}`);
  });

program
  .command('demo')
  .description('one lease end to end on a fresh testbed, with a workload that verifies its data')
  .option('--dir <path>', 'testbed folder', '/run/rswap/demo')
  .action(async (o: { dir: string }) => {
    await runDemo(o.dir);
  });

program.parseAsync().catch((error: unknown) => {
  const code = error instanceof RswapError ? `${error.code}: ` : '';
  console.error(`rswap: ${code}${errorMessage(error)}`);
  process.exit(1);
});
