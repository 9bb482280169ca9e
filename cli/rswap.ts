#!/usr/bin/env node
/** rswap: start any service, and do the operator's work (inject, list, release, testbed, demo). */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { z } from 'zod';
import { DEFAULT_NATS_URL, SizeSetting, envName, flagName, natsSettings, parseConfig } from '../shared/config.js';
import type { NatsAccess } from '../shared/nats.js';
import { addIdentity, authInit, rotateIdentity } from '../shared/auth.js';
import { HostId, LeaseId } from '../shared/schemas.js';
import { createLogger } from '../shared/log.js';
import { OOM_SCORE_ADJ, protectFromOomKiller } from '../shared/oom.js';
import { createRunner } from '../shared/runner.js';
import { ErrorCodes, RswapError, errorCode, errorMessage } from '../shared/errors.js';
import { formatBytes } from '../shared/units.js';
import { BrokerConfig, startBroker } from '../services/broker/index.js';
import { DEFAULT_ISCSI_PARAMS, ExporterConfig, startExporter } from '../services/exporter/index.js';
import { AttacherConfig, startAttacher } from '../services/attacher/index.js';
import { MonitorConfig, startMonitor } from '../services/monitor/index.js';
import { cordonHost, drainHost, getLease, revokeLease, hostsTable, leaseTimeline, injectPressure, injectRelief, injectSurplus, leasesTable, listHosts, listFleet, releaseLease, withNats, DEFAULT_JAEGER_URL } from './operator.js';
import { testbedDown, testbedUp } from './testbed/testbed.js';
import { runDemo } from './demo.js';
import { startTracing, traceIdOf } from '../shared/tracing.js';
import { version } from '../shared/version.js';
import { checkCompose, checkUnit } from './check.js';
import { readFile } from 'node:fs/promises';

const EXIT_CODES = `
The global flags go before or after the command (rswap --nats URL leases = rswap leases
--nats URL); a flag wins over its environment variable.

Exit codes:
  0  ok
  1  anything else (a local step failed; rswap check found problems)
  2  usage: an unknown command or flag, a bad flag or argument value, a bad setting
     (RSWAP_E_USAGE, RSWAP_E_CONFIG), NATS credentials it does not take
  3  NATS unreachable: connection refused or timed out (RSWAP_E_UNREACHABLE)
  4  the request was refused or failed: an error reply from a broker or agent
     (e.g. RSWAP_E_UNKNOWN_LEASE, RSWAP_E_SWAPOFF_UNSAFE), no broker answered, a drain
     that left leases behind
Errors print as one line on stderr: rswap: RSWAP_E_<CODE>: message`;

/** A setting's flag, read from its environment variable (RSWAP_<SETTING>) when not given. */
function setting(flags: string, description: string): Option {
  const option = new Option(flags, description);
  return option.env(envName(option.attributeName()));
}
/** For --help: a default that the schema does not hold (none, or one worked out at start). */
const shownDefault = (text: string) => [text, text] as const;

/**
 * The flags every command takes, before or after its name (commander reads a program's options
 * anywhere on the line). Their defaults are shown in --help; the value used comes from given().
 */
const program = new Command('rswap')
  .description('Lend idle RAM across Linux hosts as swap, automatically.')
  .version(version, '-V, --version', 'print the version')
  .configureHelp({ showGlobalOptions: true })
  .exitOverride() // usage errors exit 2, below
  .addOption(setting('--nats <url>', 'NATS server URL (several: comma-separated)').default(DEFAULT_NATS_URL))
  .addOption(setting('--creds <file>', 'credentials of this identity, from rswap auth').default(...shownDefault('none: only --insecure connects')))
  .addOption(setting('--insecure', 'connect without identity or TLS (warned about; never in production)').default(false))
  .addOption(new Option('--json', 'print the result as one JSON document on stdout').default(false))
  .addHelpText('after', EXIT_CODES);

/**
 * The settings in `keys` as given to `command` or before it: a flag, else its environment
 * variable as written (the schema checks both the same way); one given neither way is left out,
 * for the schema's default (the defaults commander holds are only for --help).
 */
function given(command: Command, keys: string[]): Record<string, unknown> {
  const values: Record<string, unknown> = {};
  for (const cmd of [program, command]) {
    for (const option of cmd.options) {
      const key = option.attributeName();
      if (!keys.includes(key)) continue;
      const source = cmd.getOptionValueSource(key);
      if (source === 'cli') values[key] = cmd.getOptionValue(key);
      if (source === 'env') values[key] = process.env[option.envVar!];
    }
  }
  if (values.creds === '') delete values.creds; // an empty RSWAP_CREDS is none, as before
  return values;
}

const NATS_KEYS = Object.keys(natsSettings);
/** How an operator command reaches NATS. */
function busOf(command: Command): NatsAccess {
  const { nats, creds, insecure } = parseConfig(z.object(natsSettings), given(command, NATS_KEYS));
  return { url: nats, creds, insecure };
}

/** Prints a command's result: one JSON document with --json, else the text for people. */
function print(result: unknown, text: () => string): void {
  console.log(program.opts().json ? JSON.stringify(result, null, 2) : text());
}

/** An argParser: the value as given, checked with `schema` (a bad one is a usage error, exit 2). */
const checked = (schema: z.ZodType) => (value: string) => {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new InvalidArgumentError(parsed.error.issues.map((i) => i.message).join('; '));
  return value;
};

const services: Array<{ command: Command; schema: { shape: Record<string, z.ZodType> } }> = [];

function serviceCommand(name: string, description: string, schema: { shape: Record<string, z.ZodType> }, start: (raw: Record<string, unknown>) => Promise<unknown>) {
  const keys = Object.keys(schema.shape);
  const command = program.command(name).description(description)
    .addOption(setting('--host <id>', 'this host id: [a-z0-9-]'))
    .addOption(setting('--metrics-port <port>', 'serve Prometheus metrics on this port at /metrics').default(...shownDefault('off')))
    .addOption(setting('--metrics-address <ip>', 'the address /metrics listens on (another host\'s Prometheus needs this host\'s address)').default(...shownDefault('127.0.0.1')))
    .action(async (_options: unknown, self: Command) => {
      const raw = given(self, keys);
      startTracing(name, typeof raw.host === 'string' ? raw.host : undefined);
      if (name in OOM_SCORE_ADJ) await protectFromOomKiller(OOM_SCORE_ADJ[name as keyof typeof OOM_SCORE_ADJ], createLogger(name, typeof raw.host === 'string' ? raw.host : undefined));
      await start(raw);
    });
  services.push({ command, schema });
  return command;
}

/**
 * Every setting is a flag (those not described above get one that points to the reference), with
 * its environment variable and, unless described above, the schema's default in --help.
 */
function addRemainingSettings(): void {
  const globals = new Set(program.options.map((o) => o.attributeName()));
  for (const { command, schema } of services) {
    for (const [key, type] of Object.entries(schema.shape).filter(([k]) => !globals.has(k))) {
      let option = command.options.find((o) => o.attributeName() === key);
      if (!option) command.addOption((option = setting(`--${flagName(key)} <value>`, 'see docs/operations.md')));
      if (option.envVar !== envName(key)) throw new Error(`rswap ${command.name()} --${flagName(key)}: declare it with setting(), for its environment variable`);
      if (option.defaultValue !== undefined) continue;
      const fallback = type.safeParse(undefined); // the schema's default, or a failure if the setting is required
      if (!fallback.success) option.default(...shownDefault('none, required'));
      else if (fallback.data !== undefined) option.default(fallback.data, key.endsWith('Bytes') ? formatBytes(fallback.data as number) : undefined);
    }
  }
}

serviceCommand('broker', 'match borrowers to lenders and drive leases', BrokerConfig, startBroker)
  .addOption(setting('--offer-ttl-ms <ms>', 'offers older than this are not matched'))
  .addOption(setting('--min-lease-bytes <size>', 'smallest lease, e.g. 64MiB'))
  .addOption(setting('--max-lease-bytes <size>', 'largest lease, e.g. 4GiB'))
  .addOption(setting('--release-cooldown-ms <ms>', 'a borrower clear of pressure this long gives its leases back'));

serviceCommand('exporter', 'lend this host\'s RAM as ramfs-backed iSCSI targets (tgt)', ExporterConfig, startExporter)
  .addOption(setting('--address <ip>', 'address of the iSCSI portal'))
  .addOption(setting('--portal-port <port>', 'iSCSI portal port'))
  .addOption(setting('--tgt-control-port <n>', 'tgtd control port, its -C'))
  .addOption(setting('--tgt-iothreads <n>', 'tgtd I/O threads, its -t').default(...shownDefault("tgtd's own, 16")))
  .addOption(setting('--iscsi-params <list>', 'iSCSI parameters for every target, Name=Value,...; "" for tgt\'s own').default(...shownDefault(DEFAULT_ISCSI_PARAMS)))
  .addOption(setting('--state-dir <path>', 'where lease mounts live'))
  .addOption(setting('--reserve-bytes <size>', 'memory never lent'))
  .addOption(setting('--max-lend-bytes <size>', 'most lent in total'))
  .addOption(setting('--memory-cgroup <path>', 'start tgtd in this memory cgroup, so what it lends is charged there').default(...shownDefault("the exporter's")));

serviceCommand('attacher', 'swap onto remote memory leased to this host', AttacherConfig, startAttacher)
  .addOption(setting('--address <ip>', 'this host\'s address, the one the lender admits'))
  .addOption(setting('--iqn <iqn>', 'initiator name').default(...shownDefault('iqn.2026-11.io.rswap:<host>')))
  .addOption(setting('--initiator <kind>', 'iSCSI initiator; auto: kernel where iscsi_tcp exists').choices(['auto', 'kernel', 'userspace']))
  .addOption(setting('--state-dir <path>', 'this service\'s state'))
  .addOption(setting('--swap-priority <n>', 'priority of remote swap').default(...shownDefault('highest local + 100')))
  .addOption(setting('--swapoff-margin-bytes <size>', 'RAM left free after a swap-off'))
  .addOption(setting('--unsealed', 'swap to leases unencrypted: every lender can read and change the pages (warned about; sealed by default, with a per-lease key held only here)'));

serviceCommand('monitor', 'watch this host\'s memory (or one cgroup\'s) and publish pressure, relief and surplus', MonitorConfig, startMonitor)
  .addOption(setting('--scope <scope>', "'machine' or 'cgroup:/sys/fs/cgroup/...' for one memory cgroup"))
  .addOption(setting('--interval-ms <ms>', 'sample interval; PSI triggers wake it sooner'))
  .addOption(setting('--reserve-bytes <size>', 'memory this host never lends; under it the broker reclaims'))
  .addOption(setting('--enter-stall-pct <pct>', 'PSI some share that means pressure'))
  .addOption(setting('--exit-stall-pct <pct>', 'PSI some share under which pressure is over'))
  .addOption(setting('--enter-swap-pages-per-s <n>', 'swap traffic that means pressure, pages/s'))
  .addOption(setting('--exit-swap-pages-per-s <n>', 'swap traffic under which pressure is over'))
  .addOption(setting('--enter-hold-ms <ms>', 'how long signals must stay high'))
  .addOption(setting('--exit-hold-ms <ms>', 'how long signals must stay low'))
  .addOption(setting('--min-needed-bytes <size>', 'smallest need reported'))
  .addOption(setting('--exporter-state-dir <path>', 'this host\'s exporter state dir, to count what it lends'));

addRemainingSettings();

const inject = program.command('inject').description('publish an event by hand, as a monitor would');
inject
  .command('pressure')
  .description('host H needs N more bytes of memory')
  .requiredOption('--host <id>', 'the borrower (required)', checked(HostId))
  .requiredOption('--bytes <size>', 'how much it needs, e.g. 256MiB (required)', checked(SizeSetting))
  .action(async (o: { host: string; bytes: string }, self: Command) => {
    const event = await injectPressure(busOf(self), o.host, o.bytes);
    print(event, () => `published pressure: ${JSON.stringify(event)}`);
  });
inject
  .command('surplus')
  .description('host H can lend N bytes')
  .requiredOption('--host <id>', 'the lender (required)', checked(HostId))
  .requiredOption('--bytes <size>', 'how much it can lend now, e.g. 1GiB (required)', checked(SizeSetting))
  .option('--lent <size>', 'how much it already lends', checked(SizeSetting), '0')
  .option('--deficit <size>', 'how far it is under its reserve (more than 0 makes the broker reclaim)', checked(SizeSetting), '0')
  .action(async (o: { host: string; bytes: string; lent: string; deficit: string }, self: Command) => {
    const event = await injectSurplus(busOf(self), o.host, o.bytes, o.lent, o.deficit);
    print(event, () => `published surplus: ${JSON.stringify(event)}`);
  });
inject
  .command('relief')
  .description('host H is no longer under pressure (its leases go back after the cool-down)')
  .requiredOption('--host <id>', 'the borrower (required)', checked(HostId))
  .action(async (o: { host: string }, self: Command) => {
    const event = await injectRelief(busOf(self), o.host);
    print(event, () => `published relief: ${JSON.stringify(event)}`);
  });

program
  .command('leases')
  .description('list leases (the table also shows orphan targets: kept by a lender without a lease record)')
  .action(async (_o: unknown, self: Command) => {
    const { leases, hosts } = await listFleet(busOf(self));
    print(leases, () => leasesTable(leases, hosts));
  });

program
  .command('top')
  .description('a live view of the fleet: hosts, live and just-ended leases, the latest events; q quits')
  .addOption(new Option('--interval-ms <ms>', 'read the buckets this often (events redraw at once)').default('2000').argParser((v) => {
    const ms = Number(v);
    if (!Number.isInteger(ms) || ms < 100) throw new InvalidArgumentError('a whole number of milliseconds, at least 100');
    return String(ms);
  }))
  .option('--once', 'print one frame and exit (no terminal control)')
  .action(async (o: { intervalMs: string; once?: boolean }, self: Command) => {
    const { runTop } = await import('./top.js');
    await withNats(busOf(self), (nc) => runTop(nc, { intervalMs: Number(o.intervalMs), once: o.once === true }));
  });

program
  .command('trace')
  .description("a lease's timeline (each state, when, how long each step took) and its trace in Jaeger")
  .argument('<lease>', 'lease id, e.g. l-0123456789ab', checked(LeaseId))
  .addOption(new Option('--jaeger <url>', 'Jaeger UI').env('RSWAP_JAEGER_URL').default(DEFAULT_JAEGER_URL))
  .action(async (leaseId: string, o: { jaeger: string }, self: Command) => {
    const lease = await getLease(busOf(self), leaseId);
    const traceId = traceIdOf(lease.traceparent);
    print({ lease, trace: traceId ? { id: traceId, url: `${o.jaeger.replace(/\/$/, '')}/trace/${traceId}` } : null }, () => leaseTimeline(lease, o.jaeger));
  });

program
  .command('hosts')
  .description('list hosts: portals, initiators, offers, reservations, pressure')
  .action(async (_o: unknown, self: Command) => {
    const hosts = await listHosts(busOf(self));
    print(hosts, () => hostsTable(hosts));
  });

program
  .command('release')
  .description('give a lease back: swap-off on the borrower, then teardown on the lender')
  .argument('<lease>', 'lease id, e.g. l-0123456789ab', checked(LeaseId))
  .action(async (leaseId: string, _o: unknown, self: Command) => {
    const lease = await releaseLease(busOf(self), leaseId);
    print(lease, () => `lease ${lease.id} is ${lease.state}`);
  });

program
  .command('revoke')
  .description('move a lease off its lender, make-before-break: a replacement first, then swap-off and teardown')
  .argument('<lease>', 'lease id, e.g. l-0123456789ab', checked(LeaseId))
  .action(async (leaseId: string, _o: unknown, self: Command) => {
    const result = await revokeLease(busOf(self), leaseId);
    const { released, replacement } = result;
    print(result, () => `lease ${released.id} is ${released.state}${replacement ? `; replaced by ${replacement.id} from ${replacement.lender}` : '; no replacement was needed or possible'}`);
  });

for (const [name, cordoned, description, done] of [
  ['cordon', true, 'place no new lease on a lender (its current leases stay)', 'is cordoned: no new leases on it'],
  ['uncordon', false, 'let a cordoned lender take new leases again', 'is uncordoned'],
] as const) {
  program
    .command(name)
    .description(description)
    .argument('<host>', 'host id', checked(HostId))
    .action(async (host: string, _o: unknown, self: Command) => {
      const record = await cordonHost(busOf(self), host, cordoned);
      print(record, () => `${host} ${done}`);
    });
}

program
  .command('drain')
  .description('cordon a lender, then move every lease off it make-before-break (before a reboot); exits 4 if a lease could not move')
  .argument('<host>', 'host id', checked(HostId))
  .action(async (host: string, _o: unknown, self: Command) => {
    const { moved, stayed } = await drainHost(busOf(self), host);
    print({ host, moved, stayed }, () => [
      ...moved.map((m) => `moved ${m.from}${m.to ? ` -> ${m.to}` : ' (given back: the borrower no longer needed it elsewhere)'}`),
      ...stayed.map((s) => `STAYED ${s.leaseId}: ${s.reason}`),
      stayed.length === 0 ? `${host} is drained and cordoned: it serves no lease` : `${host} is cordoned; ${stayed.length} lease(s) could not move`,
    ].join('\n'));
    if (stayed.length > 0) process.exitCode = 4;
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
    if (!o.caCert !== !o.caKey) throw new RswapError(ErrorCodes.CONFIG, '--ca-cert and --ca-key go together');
    await authInit(o.dir, { serverNames: o.serverName, serverIps: o.serverIp, hosts: o.host, ...(o.caCert && o.caKey ? { ca: { cert: o.caCert, key: o.caKey } } : {}), ...(o.route.length > 0 ? { routes: o.route } : {}) });
    print({ dir: o.dir, natsConf: `${o.dir}/nats.conf`, creds: `${o.dir}/creds`, caKey: `${o.dir}/ca-key.pem` }, () => [
      `auth folder ${o.dir}: run nats-server with -c ${o.dir}/nats.conf (plus -js, --store_dir, ...)`,
      ...(o.route.length > 0 ? ['a cluster: start each node with its own --name and --cluster nats://ADDRESS:PORT (its route listener), and the broker with --kv-replicas 3'] : []),
      `give each process its own file from ${o.dir}/creds/ (0600) with --creds or RSWAP_CREDS; keep ${o.dir}/ca-key.pem offline`,
    ].join('\n'));
  });
for (const role of ['host', 'broker', 'operator', 'observer'] as const) {
  auth
    .command(`add-${role}`)
    .description(`add a${role === 'operator' || role === 'observer' ? 'n' : ''} ${role} identity; then reload nats-server (nats-server --signal reload)`)
    .argument('<name>', role === 'host' ? 'host id' : 'identity name ([a-z0-9-])', checked(HostId))
    .addOption(authDirOption())
    .action(async (name: string, o: { dir: string }) => {
      const file = await addIdentity(o.dir, name, role);
      print({ role, name, creds: file, natsConf: `${o.dir}/nats.conf` }, () => `${role} ${name}: ${file}; ${o.dir}/nats.conf updated, reload nats-server`);
    });
}

auth
  .command('rotate')
  .description('give an identity a new key (its creds file and nats.conf are rewritten); reload nats-server, then restart its process with the new file')
  .argument('<name>', 'identity name')
  .addOption(authDirOption())
  .action(async (name: string, o: { dir: string }) => {
    const file = await rotateIdentity(o.dir, name);
    print({ name, creds: file, natsConf: `${o.dir}/nats.conf` }, () => `${name}: new key in ${file}; reload nats-server (nats-server --signal reload), then restart ${name}'s process: the old key no longer signs in`);
  });

const testbed = program.command('testbed').description('several hosts on this machine, as network namespaces (root only); --insecure: NATS without identities or TLS');
testbed
  .command('up')
  .description('create hosts, NATS and the agents')
  .option('--hosts <n>', 'number of hosts', '2')
  .option('--dir <path>', 'where everything lives', '/run/rswap/testbed')
  .option('--nats-port <port>', 'NATS port on the bridge', '14222')
  .option('--vm-hosts <n>', 'VM hosts after those (a real kernel, the kernel iSCSI initiator; qemu, TCG where there is no KVM)', '0')
  .action(async (o: { hosts: string; dir: string; natsPort: string; vmHosts: string }, self: Command) => {
    const log = createLogger('testbed');
    const run = createRunner(log);
    try {
      const tb = await testbedUp(run, log, { dir: o.dir, hosts: Number(o.hosts), natsPort: Number(o.natsPort), vmHosts: Number(o.vmHosts), ...(busOf(self).insecure ? { insecure: true } : {}) });
      const hosts = [...tb.hosts, ...(tb.vms ?? [])].map((h) => ({ name: h.name, address: h.address }));
      print({ nats: tb.natsUrl, hosts, ...(tb.creds ? { creds: tb.creds } : {}) }, () => [
        `testbed up: ${hosts.map((h) => `${h.name} ${h.address}`).join(', ')}; NATS ${tb.natsUrl}`,
        ...(tb.vms ?? []).map((vm) => `VM host ${vm.name}: ready ${((vm.readyMs ?? 0) / 1000).toFixed(1)} s after start; console and agent logs in ${vm.dir}`),
        `try: rswap hosts --nats ${tb.natsUrl}${tb.creds ? ` --creds ${tb.creds.operator}` : ' --insecure'}`,
      ].join('\n'));
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
    if (problems.length > 0) throw new Error(`testbed down left problems: ${problems.join('; ')}`);
    print({ dir: o.dir }, () => 'testbed down');
  });

program
  .command('check')
  .description('check deployment files without running them: compose.yaml (Compose schema + rswap invariants) and systemd units; exits 1 if there are problems')
  .argument('<files...>', 'compose files (several are merged in order, as docker compose -f a -f b does), deploy/systemd/*.service and/or Grafana dashboards (*.json: every query on series rswap exports)')
  .action(async (files: string[]) => {
    const problems: string[] = [];
    const composeFiles = files.filter((f) => !f.endsWith('.service') && !f.endsWith('.json'));
    for (const file of files.filter((f) => f.endsWith('.service'))) problems.push(...checkUnit(file, await readFile(file, 'utf8')));
    const dashboards = files.filter((f) => f.endsWith('.json'));
    if (dashboards.length > 0) {
      const { checkDashboard, exportedSeries } = await import('./dashboard.js');
      const series = await exportedSeries();
      for (const file of dashboards) problems.push(...checkDashboard(file, await readFile(file, 'utf8'), series));
    }
    if (composeFiles.length > 0) {
      const texts = await Promise.all(composeFiles.map((f) => readFile(f, 'utf8')));
      problems.push(...checkCompose(...texts).map((p) => `${composeFiles.join(' + ')}: ${p}`));
    }
    print({ ok: problems.length === 0, files, problems }, () => (problems.length === 0 ? `ok: ${files.join(', ')}` : `${problems.length} problem(s):\n  ${problems.join('\n  ')}`));
    if (problems.length > 0) process.exitCode = 1;
  });

program
  .command('demo')
  .description('one lease end to end on a fresh testbed, with a workload that verifies its data (prints its progress; no --json)')
  .option('--dir <path>', 'testbed folder', '/run/rswap/demo')
  .action(async (o: { dir: string }) => {
    await runDemo(o.dir);
  });

/** What the exit code says (docs/operations.md, "The CLI"): see EXIT_CODES. */
const REFUSED = new Set<string>([ErrorCodes.TIMEOUT, ErrorCodes.UNKNOWN_LEASE, ErrorCodes.UNKNOWN_HOST]);
function exitCodeOf(error: unknown): number {
  if (error instanceof CommanderError) return error.exitCode === 0 ? 0 : 2;
  if (!(error instanceof RswapError)) return 1;
  if (error.code === ErrorCodes.CONFIG) return 2;
  if (error.code === ErrorCodes.UNREACHABLE) return 3;
  return error.remote || REFUSED.has(error.code) ? 4 : 1;
}

/** Commander's usage errors as ours: one line, with the code and where the help is. */
(function oneLineUsageErrors(command: Command, path: string): void {
  command.configureOutput({ outputError: (text, write) => write(`rswap: ${ErrorCodes.USAGE}: ${text.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ').trim()} (see ${path} --help)\n`) });
  for (const sub of command.commands) oneLineUsageErrors(sub, `${path} ${sub.name()}`);
})(program, 'rswap');

program.parseAsync().catch((error: unknown) => {
  if (!(error instanceof CommanderError)) console.error(`rswap: ${errorCode(error)}: ${errorMessage(error).replace(/\s*\n\s*/g, ' ')}`);
  process.exit(exitCodeOf(error));
});
