import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, stringify } from 'yaml';
import { execa } from 'execa';
import { checkCompose, checkUnit, interpolate, mergeCompose } from '../../cli/check.js';
import { checkDashboard, exportedSeries } from '../../cli/dashboard.js';
import { SERIES } from '../../shared/series.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');
const compose = () => readFile(resolve(ROOT, 'compose.yaml'), 'utf8');
const clusterOverlay = () => readFile(resolve(ROOT, 'compose.cluster.yaml'), 'utf8');

/** The repo's compose.yaml, changed by `edit` (anchors and merges already resolved). */
async function broken(edit: (doc: Record<string, any>) => void): Promise<string[]> {
  const doc = parse(await compose(), { merge: true }) as Record<string, any>;
  edit(doc);
  return checkCompose(stringify(doc));
}

test('check - the shipped compose.yaml and systemd units pass', async () => {
  assert.deepEqual(checkCompose(await compose()), []);
  const units = (await readdir(resolve(ROOT, 'deploy/systemd'))).filter((f) => f.endsWith('.service'));
  assert.equal(units.length, 5, `the four services and the drain unit: ${units}`);
  for (const unit of units) assert.deepEqual(checkUnit(unit, await readFile(resolve(ROOT, 'deploy/systemd', unit), 'utf8')), []);
});

test('check - a broken compose.yaml fails, each way with its reason', async () => {
  const cases: Array<[string, (doc: Record<string, any>) => void, RegExp]> = [
    ['typo in a top-level key', (d) => { d.servics = d.services; }, /schema: \/ must NOT have additional properties 'servics'/],
    ['typo in a service key', (d) => { d.services.broker.enviroment = {}; }, /schema: \/services\/broker must NOT have additional properties 'enviroment'/],
    ['nats without a health check', (d) => { delete d.services.nats.healthcheck; }, /nats: no health check/],
    ['nats without JetStream', (d) => { d.services.nats.command = ['--store_dir', '/data']; }, /nats: JetStream is off/],
    ['Jaeger v1', (d) => { d.services.jaeger.image = 'jaegertracing/all-in-one:1.57'; }, /not Jaeger v2/],
    ['Jaeger without OTLP/HTTP', (d) => { d.services.jaeger.ports = ['16686:16686']; }, /jaeger: port 4318 is not published/],
    ['an agent not privileged', (d) => { d.services.exporter.privileged = false; }, /exporter: host agents must be privileged/],
    ['an agent off the host network', (d) => { delete d.services.attacher.network_mode; }, /attacher: host agents must use network_mode: host/],
    ['an exporter without the host\'s cgroups', (d) => { delete d.services.exporter.cgroup; }, /exporter: needs cgroup: host: its tgtd moves to a cgroup of its own/],
    ['an attacher in a private cgroup namespace', (d) => { d.services.attacher.cgroup = 'private'; }, /attacher: needs cgroup: host: its qemu-storage-daemon moves/],
    ['an exporter in a PID namespace of its own', (d) => { delete d.services.exporter.pid; }, /exporter: needs pid: host: in a PID namespace of its own, every process in it \(its tgtd too\) dies/],
    ['a cgroup mode Compose does not know', (d) => { d.services.exporter.cgroup = 'hots'; }, /schema: \/services\/exporter\/cgroup must be equal to one of the allowed values/],
    ['a flag rswap does not have', (d) => { d.services.attacher.command = ['attacher', '--metric-port', '9466']; }, /'rswap attacher' has no flag --metric-port/],
    ['a variable rswap does not read', (d) => { d.services.broker.environment.RSWAP_COOLDOWN = '5'; }, /'rswap broker' reads no RSWAP_COOLDOWN/],
    ['broker pointed at localhost', (d) => { d.services.broker.environment.RSWAP_NATS_URL = 'nats://127.0.0.1:4222'; }, /broker: in its own network namespace, 127\.0\.0\.1 is not NATS/],
    ['not waiting for NATS to be healthy', (d) => { d.services.monitor.depends_on = ['nats']; }, /monitor: must depend on nats with condition service_healthy/],
    ['traces sent elsewhere', (d) => { d.services.broker.environment.OTEL_EXPORTER_OTLP_ENDPOINT = 'http://jaeger:4317'; }, /broker: OTEL_EXPORTER_OTLP_ENDPOINT 'http:\/\/jaeger:4317' is not Jaeger's OTLP\/HTTP port 4318/],
    ['a missing service', (d) => { delete d.services.monitor; }, /service 'monitor' is missing/],
    ['nats without identities and TLS', (d) => { d.services.nats.command = ['--jetstream', '--store_dir', '/data']; }, /nats: no -c nats\.conf from rswap auth/],
    ['a service without credentials', (d) => { delete d.services.broker.environment.RSWAP_CREDS; }, /broker: RSWAP_CREDS is not set/],
    ['a service run insecure', (d) => { d.services.exporter.command = ['exporter', '--insecure']; }, /exporter: runs without NATS identity and TLS/],
    ['an attacher swapping unsealed', (d) => { d.services.attacher.environment.RSWAP_UNSEALED = '1'; }, /attacher: swaps to leases unencrypted/],
    ['NATS published on every address', (d) => { d.services.nats.ports[0] = '4222:4222'; }, /nats: port 4222:4222 is published on every address/],
    ['the UI on 0.0.0.0, long form', (d) => { d.services.jaeger.ports.push({ target: 16687, published: 16687, host_ip: '0.0.0.0' }); }, /jaeger: port 16687 is published on every address/],
    ['a broker run as root', (d) => { d.services.broker.user = 'root'; }, /broker: runs as root; it needs no privileges/],
    ['an agent not root', (d) => { delete d.services.exporter.user; }, /exporter: needs user: root/],
    ['no Prometheus', (d) => { delete d.services.prometheus; }, /service 'prometheus' is missing/],
    ['Prometheus on every address', (d) => { d.services.prometheus.command[2] = '--web.listen-address=0.0.0.0:9090'; }, /prometheus: listens beyond this host/],
    ['Prometheus with another config', (d) => { d.services.prometheus.volumes[0] = './other.yml:/etc/prometheus/prometheus.yml:ro'; }, /prometheus: \.\/deploy\/prometheus\/prometheus\.yml is not mounted/],
    ['Grafana with the default password', (d) => { delete d.services.grafana.environment.GF_SECURITY_ADMIN_PASSWORD__FILE; }, /grafana: the admin password must come from a file/],
    ['Grafana with a literal password', (d) => { d.services.grafana.environment.GF_SECURITY_ADMIN_PASSWORD = 'hunter2'; }, /grafana: the admin password must come from a file/],
    ['Grafana open to anyone', (d) => { d.services.grafana.environment.GF_AUTH_ANONYMOUS_ENABLED = 'true'; }, /grafana: anonymous access is on/],
    ['Grafana on every address', (d) => { delete d.services.grafana.environment.GF_SERVER_HTTP_ADDR; }, /grafana: listens beyond this host/],
    ['the dashboards not provisioned', (d) => { d.services.grafana.volumes.splice(2, 1); }, /grafana: \.\/deploy\/grafana\/dashboards is not mounted/],
  ];
  for (const [what, edit, expected] of cases) {
    const problems = await broken(edit);
    assert.ok(problems.some((p) => expected.test(p)), `${what}: ${JSON.stringify(problems)}`);
  }
  assert.match(checkCompose('services: [unclosed')[0]!, /not YAML/);
});

test('check - compose files merge as Compose merges them: commands replaced, ports added, environment by variable', () => {
  const merged = mergeCompose([
    { services: { nats: { command: ['-c', 'a.conf'], ports: ['4222:4222'] }, broker: { environment: { A: '1', B: '2' }, image: 'x' } } },
    { services: { nats: { command: ['-c', 'b.conf'], ports: ['4222:4222', '6222:6222'] }, broker: { environment: ['B=3', 'C=4'] } } },
  ]);
  assert.deepEqual(merged, {
    services: { nats: { command: ['-c', 'b.conf'], ports: ['4222:4222', '6222:6222'] }, broker: { environment: { A: '1', B: '3', C: '4' }, image: 'x' } },
  });
});

test('check - the three-node overlay passes over compose.yaml, and a node or broker set up wrong for a cluster fails', async () => {
  const base = await compose();
  const overlay = await clusterOverlay();
  assert.deepEqual(checkCompose(base, overlay), []);
  const nats = parse(overlay) as Record<string, any>;
  const command = nats.services.nats.command as string[];
  const without = (flag: string, values = 1) => command.filter((_, i) => i < command.indexOf(flag) || i > command.indexOf(flag) + values);
  const cases: Array<[string, (d: Record<string, any>) => void, RegExp]> = [
    ['route port not published', (d) => { delete d.services.nats.ports; }, /nats: route port 6222 is not published/],
    ['no node name', (d) => { d.services.nats.command = without('--name'); }, /nats: a cluster node needs its own --name/],
    ['container address advertised to nodes', (d) => { d.services.nats.command = without('--cluster_advertise'); }, /no --cluster_advertise/],
    ['container addresses told to clients', (d) => { d.services.nats.command = without('--no_advertise', 0); }, /no --no_advertise/],
    ['buckets at one replica', (d) => { delete d.services.broker.environment.RSWAP_KV_REPLICAS; }, /broker: RSWAP_KV_REPLICAS is 1/],
    ['a broker that knows one node', (d) => { d.services.broker.environment.RSWAP_NATS_URL = 'nats://nats:4222'; }, /broker: RSWAP_NATS_URL names one node/],
  ];
  for (const [what, edit, expected] of cases) {
    const doc = parse(overlay) as Record<string, any>;
    edit(doc);
    const problems = checkCompose(base, stringify(doc));
    assert.ok(problems.some((p) => expected.test(p)), `${what}: ${JSON.stringify(problems)}`);
  }
  // compose.yaml alone is one node: none of this applies.
  assert.deepEqual(checkCompose(base), []);
});

test('check - a unit that would kill the initiator with the agent, or has a wrong flag, fails', async () => {
  const exporter = await readFile(resolve(ROOT, 'deploy/systemd/rswap-exporter.service'), 'utf8');
  assert.match(checkUnit('x', exporter.replace('KillMode=process\n', ''))[0]!, /KillMode=process is needed/);
  const attacher = await readFile(resolve(ROOT, 'deploy/systemd/rswap-attacher.service'), 'utf8');
  assert.match(checkUnit('x', attacher.replace('KillMode=process\n', 'KillMode=control-group\n')).join('; '), /KillMode=process is needed: tgtd and qemu-storage-daemon carry swap/);
  assert.match(checkUnit('x', exporter.replace('--metrics-port 9465', '--metrics 9465'))[0]!, /'rswap exporter' has no flag --metrics/);
  assert.match(checkUnit('x', exporter.replace(/^LoadCredential=.*\n/m, '')).join('; '), /NATS credentials are needed/);
  assert.match(checkUnit('x', exporter.replace('--metrics-port 9465', '--metrics-port 9465 --insecure')).join('; '), /runs without NATS identity and TLS/);
  assert.match(checkUnit('x', exporter.replace('--metrics-port 9465', '--metrics-port 9465 --unsealed')).join('; '), /swaps to leases unencrypted/);
  assert.match(checkUnit('x', '[Service]\nExecStart=/bin/true\n')[0]!, /no ExecStart running rswap/);
});

test('check - units start as exec, pull in what they order after, keep the agents in the host\'s mount namespace, stop Debian\'s tgt.service, and run the broker unprivileged', async () => {
  const unit = async (name: string) => readFile(resolve(ROOT, 'deploy/systemd', name), 'utf8');
  const [exporter, attacher, broker] = await Promise.all([unit('rswap-exporter.service'), unit('rswap-attacher.service'), unit('rswap-broker.service')]);
  assert.match(checkUnit('x', exporter.replace('Type=exec', 'Type=simple')).join('; '), /Type=exec is needed/);
  assert.match(checkUnit('x', exporter.replace(/^Wants=.*\n/m, '')).join('; '), /After=network-online.target needs Wants=network-online.target/);
  assert.match(checkUnit('x', exporter.replace(/^Conflicts=tgt\.service\n/m, '')).join('; '), /Conflicts=tgt.service is needed/);
  for (const [name, text] of [['exporter', exporter], ['attacher', attacher]] as const) {
    for (const option of ['ProtectSystem=strict', 'PrivateTmp=yes', 'ProtectHome=read-only']) {
      assert.match(checkUnit(name, text.replace('[Install]', `${option}\n\n[Install]`)).join('; '), new RegExp(`${option.split('=')[0]}= gives the agent a mount namespace of its own`), `${name} with ${option}`);
    }
    assert.deepEqual(checkUnit(name, text.replace('[Install]', 'PrivateTmp=no\n\n[Install]')), [], 'an option turned off is fine');
  }
  assert.match(checkUnit('x', broker.replace('DynamicUser=yes\n', '')).join('; '), /DynamicUser=yes is needed/);
  assert.deepEqual(checkUnit('x', broker.replace('ProtectSystem=strict\n', 'ProtectSystem=strict\nPrivateTmp=yes\n')), [], 'the broker may have a namespace of its own');
});

test('check - compose variables resolve to their defaults', () => {
  assert.equal(interpolate('${RSWAP_NATS_URL:-nats://127.0.0.1:4222}'), 'nats://127.0.0.1:4222');
  assert.equal(interpolate('${RSWAP_HOST:?set it}'), 'SET-BY-OPERATOR');
});

test('check - the drain unit must drain at shutdown, before the exporter stops, with time to do it', async () => {
  const drain = await readFile(resolve(ROOT, 'deploy/systemd/rswap-drain.service'), 'utf8');
  assert.deepEqual(checkUnit('drain', drain), []);
  assert.match(checkUnit('x', drain.replace('RemainAfterExit=yes\n', ''))[0]!, /RemainAfterExit=yes is needed/);
  assert.match(checkUnit('x', drain.replace(/^ExecStop=.*\n/m, ''))[0]!, /ExecStop must run 'rswap drain/);
  assert.match(checkUnit('x', drain.replace(' rswap-exporter.service', ''))[0]!, /After=rswap-exporter.service is needed/);
});

test('check - the image: built in one stage, run from another with no tests, unprivileged by default; the build context leaves out what it does not need', async () => {
  const dockerfile = await readFile(resolve(ROOT, 'Dockerfile'), 'utf8');
  const stages = dockerfile.split(/^FROM /m).slice(1);
  assert.equal(stages.length, 2, 'a build stage and a run stage');
  const run = stages[1]!;
  assert.match(stages[0]!, /rm -rf dist\/test/, 'the compiled tests are dropped in the build stage');
  assert.doesNotMatch(run, /^COPY (?!--from=build)/m, 'the run stage takes only what the build stage made');
  assert.doesNotMatch(run, /npm ci|tsc|COPY .*test/, 'no dev dependencies, no compiler, no tests in the image');
  assert.match(run, /^USER node$/m, 'unprivileged unless compose says root');
  const ignored = (await readFile(resolve(ROOT, '.dockerignore'), 'utf8')).split('\n').map((l) => l.trim());
  for (const entry of ['node_modules', 'dist', '.git', 'bench/results']) assert.ok(ignored.includes(entry), `.dockerignore leaves out ${entry}`);
});

test('check - Prometheus\'s config passes promtool; the fleet dashboard queries only series rswap exports, and a renamed one is caught', async () => {
  const promtool = await execa('promtool', ['check', 'config', resolve(ROOT, 'deploy/prometheus/prometheus.yml')], { reject: false });
  assert.equal(promtool.exitCode, 0, `${promtool.stdout}\n${promtool.stderr}`);
  assert.match(promtool.stdout, /SUCCESS/);
  const broken = await execa('promtool', ['check', 'config', '/dev/stdin'], { input: 'scrape_configs:\n  - job_name: x\n    static_configs: [{targets: ["no port"]}]\n', reject: false });
  assert.notEqual(broken.exitCode, 0, 'promtool does refuse a bad config');

  const series = await exportedSeries();
  assert.ok(series.has('rswap_process_cpu_seconds_total') && series.has('rswap_time_to_attach_seconds_bucket') && !series.has('rswap_time_to_attach_seconds'));
  const text = await readFile(resolve(ROOT, 'deploy/grafana/dashboards/rswap-fleet.json'), 'utf8');
  assert.deepEqual(checkDashboard('rswap-fleet.json', text, series), []);
  const dashboard = JSON.parse(text) as { panels: Array<{ title: string; targets: Array<{ expr: string }> }> };
  const queried = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr)).join(' ');
  for (const name of ['rswap_lent_bytes', 'rswap_borrowed_bytes', 'rswap_leases', 'rswap_time_to_attach_seconds_bucket', 'rswap_rejected_messages_total', 'rswap_command_failures_total']) {
    assert.ok(queried.includes(name), `the dashboard shows ${name}`);
  }
  const renamed = text.replace('rswap_lent_bytes', 'rswap_lent_bytes_total');
  assert.match(checkDashboard('d', renamed, series).join('; '), /panel 'Lent, per lender' queries rswap_lent_bytes_total, which rswap does not export/);
  assert.match(checkDashboard('d', text.replace('rate(rswap_rejected_messages_total', 'rate(node_cpu_seconds_total'), series).join('; '), /queries node_cpu_seconds_total/);
  assert.match(checkDashboard('d', '{"panels": []}', series)[0]!, /no panel queries anything/);
  assert.match(checkDashboard('d', 'nope', series)[0]!, /not JSON/);
});

test('check - the list of exported series is what the services register: nothing missing, nothing extra', async () => {
  // Every metric the services define at load time, plus those they make when they start.
  const { registry } = await import('../../shared/metrics.js');
  await import('../../services/monitor/monitor.js');
  await import('../../services/broker/lifecycle.js');
  await import('../../shared/clock.js');
  const { leaseGauges } = await import('../../services/broker/gauges.js');
  leaseGauges(async () => []);
  const registered = new Set((await registry.getMetricsAsJSON()).map((m) => `${m.name}:${m.type}`));
  const declared = new Set(Object.entries(SERIES).map(([name, type]) => `${name}:${type}`));
  const notDeclared = [...registered].filter((n) => !declared.has(n));
  assert.deepEqual(notDeclared, [], 'every registered series is in shared/series.ts');
  // The exporter's orphan gauge is made when it starts; the rest must all be registered here.
  const notRegistered = [...declared].filter((n) => !registered.has(n) && !n.startsWith('rswap_exporter_orphan_targets:'));
  assert.deepEqual(notRegistered, [], 'every declared series exists');
});
