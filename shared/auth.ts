/**
 * Who may do what on the bus: one NKey identity per host, broker, operator and observer, TLS with
 * rswap's own CA, and the nats-server authorization that enforces least privilege.
 *
 * An auth folder (made by `rswap auth init`) holds
 *   ca.pem, ca-key.pem          the CA (keep ca-key.pem offline once the server's cert is made)
 *   server.pem, server-key.pem  nats-server's certificate, for the names and addresses given
 *   identities.json             every identity: name, role, public NKey (no secrets)
 *   nats.conf                   tls {...} and authorization {...} for nats-server (`-c nats.conf`),
 *                               and with cluster.json a cluster {...} whose routes use mutual TLS
 *   cluster.json                (a cluster only) its name and every node's route URL
 *   creds/<name>.creds          one per identity, 0600: its NKey seed and the CA, all a process needs
 *
 * Permissions (nats-server enforces them; a message outside them never reaches anyone):
 *   host H     publishes only rswap.v1.host.H.>, hears only rswap.v1.cmd.H.>, the broker's hello
 *              and solicit, and replies on its own inbox; reads the KV buckets, never writes them
 *   broker     sends commands, writes both buckets, hears every host's events and operator requests
 *   operator   release, revoke, cordon, uncordon, drain; reads everything but commands and inboxes
 *   observer   reads (KV, events, lease states); never a command or a reply (they carry CHAP secrets)
 *   Neither of the last two may join the brokers' queue group, nor delete a KV consumer.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createUser } from '@nats-io/nkeys';
import { nkeyAuthenticator, type ConnectionOptions } from '@nats-io/transport-node';
import { execa } from 'execa';
import { z } from 'zod';
import { ErrorCodes, RswapError } from './errors.js';
import { HostId } from './schemas.js';
import { PREFIX, buckets, subjects } from './subjects.js';

export const Role = z.enum(['broker', 'host', 'operator', 'observer']);
export type Role = z.infer<typeof Role>;

export const Identity = z.object({ name: HostId, role: Role, publicKey: z.string().regex(/^U[A-Z2-7]{55}$/) });
export type Identity = z.infer<typeof Identity>;

const Identities = z.object({ identities: z.array(Identity) });

/** A credentials file: everything one process needs to connect as one identity. */
export const Creds = z.object({
  format: z.literal('rswap-creds/1'),
  name: HostId,
  role: Role,
  seed: z.string().regex(/^SU[A-Z2-7]{56}$/),
  /** The CA that signed nats-server's certificate (PEM). */
  ca: z.string().includes('BEGIN CERTIFICATE'),
});
export type Creds = z.infer<typeof Creds>;

/** The queue group every broker's handlers share. */
export const BROKER_QUEUE = 'rswap-broker';

/** Each identity hears replies only under its own inbox prefix, so no one reads another's replies. */
export const inboxPrefix = (name: string) => `_INBOX_${name}`;

/** Reading the KV buckets: stream info, direct and plain gets, watches (ordered consumers). */
function kvRead(): string[] {
  const streams = Object.values(buckets).map((b) => `KV_${b}`);
  return [
    '$JS.API.INFO',
    ...streams.flatMap((s) => [
      `$JS.API.STREAM.INFO.${s}`,
      `$JS.API.STREAM.MSG.GET.${s}`,
      `$JS.API.DIRECT.GET.${s}`,
      `$JS.API.DIRECT.GET.${s}.>`,
      `$JS.API.CONSUMER.CREATE.${s}`,
      `$JS.API.CONSUMER.CREATE.${s}.>`,
      // No CONSUMER.DELETE: one reader could delete another's (the broker's watch); ephemeral
      // consumers go by themselves once their reader is gone.
      `$JS.API.CONSUMER.INFO.${s}.>`,
      `$JS.FC.${s}.>`,
    ]),
  ];
}

const operatorRequests = [subjects.release, subjects.revoke, subjects.cordon, subjects.uncordon, subjects.drain];

/** The nats-server permissions of one identity, among `everyone` (whose inboxes it must not read). */
export function permissionsFor(identity: Pick<Identity, 'name' | 'role'>, everyone: Array<Pick<Identity, 'name'>> = []): Record<string, unknown> {
  const { name, role } = identity;
  const inbox = `${inboxPrefix(name)}.>`;
  switch (role) {
    case 'host':
      return {
        publish: { allow: [`${PREFIX}.host.${name}.>`, ...kvRead()] },
        subscribe: { allow: [`${PREFIX}.cmd.${name}.>`, subjects.brokerHello, subjects.brokerSolicit, inbox] },
        // Replies to the commands it received, once each, to whoever asked (the broker's inbox).
        allow_responses: true,
      };
    case 'broker':
      return {
        publish: { allow: [`${PREFIX}.cmd.>`, subjects.brokerHello, subjects.brokerSolicit, `${PREFIX}.lease.>`, '$JS.API.>', '$JS.FC.>', '$JS.ACK.>', ...Object.values(buckets).map((b) => `$KV.${b}.>`)] },
        subscribe: { allow: [`${PREFIX}.host.>`, ...operatorRequests, inbox] },
        allow_responses: true,
      };
    case 'operator':
    case 'observer': {
      // Everything but commands and other identities' replies: those carry CHAP secrets. A
      // subscription to '>' is allowed and never gets them (nats-server filters its deliveries).
      // No queue subscription in the brokers' group: it would take a share of the brokers' messages.
      const others = [...new Set(everyone.map((i) => i.name))].filter((n) => n !== name).map((n) => `${inboxPrefix(n)}.>`);
      return {
        publish: { allow: [...(role === 'operator' ? operatorRequests : []), ...kvRead()] },
        subscribe: { allow: ['>'], deny: [`${PREFIX}.cmd.>`, '_INBOX.>', ...others, `> ${BROKER_QUEUE}`] },
      };
    }
  }
}

/** A NATS cluster: its name and every node's route URL (`nats-route://host:port`). */
export const ClusterSettings = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/),
  routes: z.array(z.string().regex(/^nats-route:\/\/[^/\s]+:\d+$/, "a route is 'nats-route://host:port'")).min(2).max(15),
});
export type ClusterSettings = z.infer<typeof ClusterSettings>;

async function readCluster(dir: string): Promise<ClusterSettings | undefined> {
  const text = await readFile(join(dir, 'cluster.json'), 'utf8').catch(() => undefined);
  return text === undefined ? undefined : ClusterSettings.parse(JSON.parse(text));
}

/**
 * nats-server's `tls {...}` and `authorization {...}`, for `nats-server -c nats.conf`; for a
 * cluster also `cluster {...}`: routes only between nodes that show a certificate of this CA (the
 * one server certificate, valid for every node's address). Each node is started with its own
 * `--name` and `--cluster nats://ADDRESS:PORT` (its route listener), as docs/operations.md shows.
 */
export function serverConfig(dir: string, identities: Identity[], cluster?: ClusterSettings): string {
  const users = identities.map((i) => `    # ${i.role} ${i.name}\n    { nkey: ${JSON.stringify(i.publicKey)}, permissions: ${JSON.stringify(permissionsFor(i, identities))} }`);
  const abs = resolve(dir);
  return [
    '# Written by `rswap auth`: do not edit, run `rswap auth add-host|add-operator|...` instead.',
    '# Every client must use TLS (plaintext is refused) and sign in with its NKey.',
    `tls { cert_file: ${JSON.stringify(join(abs, 'server.pem'))}, key_file: ${JSON.stringify(join(abs, 'server-key.pem'))}, timeout: 5 }`,
    ...(cluster
      ? [
          'cluster {',
          `  name: ${JSON.stringify(cluster.name)}`,
          `  tls { cert_file: ${JSON.stringify(join(abs, 'server.pem'))}, key_file: ${JSON.stringify(join(abs, 'server-key.pem'))}, ca_file: ${JSON.stringify(join(abs, 'ca.pem'))}, verify: true, timeout: 5 }`,
          `  routes = [${cluster.routes.map((r) => JSON.stringify(r)).join(', ')}]`,
          '}',
        ]
      : []),
    'authorization {',
    '  users = [',
    users.join('\n'),
    '  ]',
    '}',
    '',
  ].join('\n');
}

/** A new NKey identity and its seed (the seed is the secret: it goes only into its creds file). */
export function newIdentity(name: string, role: Role): { identity: Identity; seed: string } {
  const user = createUser();
  return { identity: Identity.parse({ name, role, publicKey: user.getPublicKey() }), seed: new TextDecoder().decode(user.getSeed()) };
}

export async function readIdentities(dir: string): Promise<Identity[]> {
  return Identities.parse(JSON.parse(await readFile(join(dir, 'identities.json'), 'utf8'))).identities;
}

async function writeSecret(file: string, text: string): Promise<void> {
  await writeFile(file, text, { mode: 0o600 });
  await chmod(file, 0o600); // also when the file was there before
}

/**
 * Adds an identity to an auth folder: its creds file (0600), identities.json and nats.conf
 * (reload nats-server afterwards: `nats-server --signal reload`). A name already taken is refused.
 */
export async function addIdentity(dir: string, name: string, role: Role): Promise<string> {
  const identities = await readIdentities(dir);
  const taken = identities.find((i) => i.name === name);
  if (taken) throw new RswapError(ErrorCodes.CONFIG, `an identity named '${name}' exists already (${taken.role})`);
  return issueKey(dir, identities, name, role);
}

/**
 * Gives an identity a new NKey: its creds file and nats.conf are rewritten, and once nats-server
 * reloads its config the old key no longer signs in. The role and name stay.
 */
export async function rotateIdentity(dir: string, name: string): Promise<string> {
  const identities = await readIdentities(dir);
  const current = identities.find((i) => i.name === name);
  if (!current) throw new RswapError(ErrorCodes.CONFIG, `no identity named '${name}' in ${dir}`);
  return issueKey(dir, identities, name, current.role);
}

/** A new key for `name` (added, or replacing its old one): its creds file, identities.json and nats.conf. */
async function issueKey(dir: string, identities: Identity[], name: string, role: Role): Promise<string> {
  const { identity, seed } = newIdentity(name, role);
  const ca = await readFile(join(dir, 'ca.pem'), 'utf8');
  const all = identities.some((i) => i.name === name) ? identities.map((i) => (i.name === name ? identity : i)) : [...identities, identity];
  // nats.conf first: until nats-server reloads it, the old key (if any) still signs in.
  await writeSecret(join(dir, 'nats.conf'), serverConfig(dir, all, await readCluster(dir)));
  await writeFile(join(dir, 'identities.json'), `${JSON.stringify({ identities: all }, null, 2)}\n`);
  await mkdir(join(dir, 'creds'), { recursive: true, mode: 0o700 });
  const file = join(dir, 'creds', `${name}.creds`);
  await writeSecret(file, `${JSON.stringify(Creds.parse({ format: 'rswap-creds/1', name, role, seed, ca }), null, 2)}\n`);
  return file;
}

export interface AuthInitOptions {
  /** DNS names and IP addresses clients use to reach nats-server (its certificate's subjectAltName). */
  serverNames: string[];
  serverIps: string[];
  /** Identities made at once, besides one broker ('broker'), one operator ('operator') and one observer ('observer'). */
  hosts?: string[];
  /** An operator's own CA (certificate and key, PEM files) to sign nats-server's certificate; default: a new one. */
  ca?: { cert: string; key: string };
  /** A cluster of nats-servers: every node's route URL (`nats-route://host:port`); one certificate serves them all. */
  routes?: string[];
}

/** Makes an auth folder: a CA, nats-server's certificate, identities, creds files and nats.conf. */
export async function authInit(dir: string, options: AuthInitOptions): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  try {
    await readFile(join(dir, 'identities.json'));
    throw new RswapError(ErrorCodes.CONFIG, `${dir} already holds an auth folder; add identities with rswap auth add-host|add-operator|...`);
  } catch (error) {
    if (error instanceof RswapError) throw error;
  }
  const san = [...options.serverNames.map((n) => `DNS:${n}`), ...options.serverIps.map((ip) => `IP:${ip}`)].join(',');
  if (!san) throw new RswapError(ErrorCodes.CONFIG, 'give the names or addresses clients use to reach nats-server (--server-name, --server-ip)');
  const parsed = options.routes ? ClusterSettings.safeParse({ name: 'rswap', routes: options.routes }) : undefined;
  if (parsed && !parsed.success) throw new RswapError(ErrorCodes.CONFIG, `--route: ${parsed.error.issues.map((i) => i.message).join('; ')} (two to fifteen nodes)`);
  const cluster = parsed?.data;
  await makeCertificates(dir, san, options.ca);
  if (cluster) await writeFile(join(dir, 'cluster.json'), `${JSON.stringify(cluster, null, 2)}\n`);
  await writeFile(join(dir, 'identities.json'), `${JSON.stringify({ identities: [] }, null, 2)}\n`);
  await addIdentity(dir, 'broker', 'broker');
  await addIdentity(dir, 'operator', 'operator');
  await addIdentity(dir, 'observer', 'observer');
  for (const host of options.hosts ?? []) await addIdentity(dir, host, 'host');
  // Grafana's admin password (compose.yaml hands it to Grafana as a file): random, never a default.
  // Readable inside the 0700 auth folder only; Grafana runs as its own user, hence 0644.
  await writeFile(join(dir, GRAFANA_PASSWORD_FILE), `${randomBytes(18).toString('base64url')}\n`, { mode: 0o644 });
}

/** In the auth folder: Grafana's admin password, made by `rswap auth init`. */
export const GRAFANA_PASSWORD_FILE = 'grafana-admin-password';

/**
 * The CA (10 years) and nats-server's certificate (825 days) for `san`, with openssl. Both are
 * valid from a day before they are made, so a host whose clock runs behind still accepts them.
 */
async function makeCertificates(dir: string, san: string, ownCa?: { cert: string; key: string }): Promise<void> {
  const work = join(dir, '.ca');
  await mkdir(join(work, 'new'), { recursive: true, mode: 0o700 });
  const stamp = (ms: number) => new Date(ms).toISOString().replace(/[-:T]/g, '').slice(0, 14) + 'Z';
  const day = 86_400_000;
  const from = stamp(Date.now() - day);
  await writeFile(join(work, 'index.txt'), '');
  await writeFile(join(work, 'serial'), `${randomSerial()}\n`);
  await writeFile(join(work, 'ca.cnf'), [
    '[ca]', 'default_ca = rswap',
    '[rswap]', `database = ${join(work, 'index.txt')}`, `new_certs_dir = ${join(work, 'new')}`, `serial = ${join(work, 'serial')}`,
    'default_md = sha256', 'policy = any', 'unique_subject = no', 'copy_extensions = none',
    '[any]', 'commonName = supplied',
    '[ca_ext]', 'basicConstraints = critical,CA:TRUE', 'keyUsage = critical,keyCertSign,cRLSign', 'subjectKeyIdentifier = hash',
    '[server_ext]', 'basicConstraints = CA:FALSE', `subjectAltName = ${san}`, 'extendedKeyUsage = serverAuth,clientAuth', 'keyUsage = critical,digitalSignature', 'authorityKeyIdentifier = keyid',
    '',
  ].join('\n'));
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const sign = ['ca', '-batch', '-notext', '-config', join(work, 'ca.cnf'), '-keyfile', join(dir, 'ca-key.pem'), '-startdate', from];
  try {
    if (ownCa) {
      await writeFile(join(dir, 'ca.pem'), await readFile(ownCa.cert));
      await writeFile(join(dir, 'ca-key.pem'), await readFile(ownCa.key), { mode: 0o600 });
    } else {
      await execa('openssl', ['req', '-new', ...ec, '-keyout', join(dir, 'ca-key.pem'), '-out', join(work, 'ca.csr'), '-subj', '/CN=rswap CA']);
      await execa('openssl', [...sign, '-selfsign', '-in', join(work, 'ca.csr'), '-out', join(dir, 'ca.pem'), '-enddate', stamp(Date.now() + 3650 * day), '-extensions', 'ca_ext']);
    }
    await execa('openssl', ['req', '-new', ...ec, '-keyout', join(dir, 'server-key.pem'), '-out', join(work, 'server.csr'), '-subj', '/CN=rswap nats-server']);
    await execa('openssl', [...sign, '-cert', join(dir, 'ca.pem'), '-in', join(work, 'server.csr'), '-out', join(dir, 'server.pem'), '-enddate', stamp(Date.now() + 825 * day), '-extensions', 'server_ext']);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  await Promise.all(['ca-key.pem', 'server-key.pem'].map((f) => chmod(join(dir, f), 0o600)));
}

const randomSerial = () => randomBytes(8).toString('hex').replace(/^[89a-f]/, '1');

export async function readCreds(file: string): Promise<Creds> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new RswapError(ErrorCodes.CONFIG, `cannot read credentials ${file}: ${(error as Error).message}`);
  }
  const parsed = Creds.safeParse((() => { try { return JSON.parse(text); } catch { return undefined; } })());
  if (!parsed.success) throw new RswapError(ErrorCodes.CONFIG, `${file} is not an rswap credentials file (made by rswap auth)`);
  return parsed.data;
}

/** How a process reaches NATS: its credentials file, or an explicit --insecure. */
export interface NatsAccess {
  url: string;
  creds?: string | undefined;
  insecure?: boolean | undefined;
}

export const INSECURE_WARNING =
  'INSECURE: connecting to NATS without an identity or TLS (--insecure). Anyone who can reach this NATS server can speak for any host, read CHAP secrets and receive swapped pages. Use --creds FILE from `rswap auth`.';

/**
 * The connection options for `access`: NKey sign-in, TLS verified against rswap's CA and this
 * identity's own inbox prefix. Without creds it refuses, unless insecure was asked for.
 */
export async function connectionOptions(access: NatsAccess): Promise<{ options: Partial<ConnectionOptions>; creds?: Creds }> {
  if (!access.creds) {
    if (access.insecure) return { options: {} };
    throw new RswapError(ErrorCodes.CONFIG, 'no NATS credentials: pass --creds FILE (or RSWAP_CREDS) from `rswap auth`, or --insecure to connect without identity and TLS');
  }
  const creds = await readCreds(access.creds);
  return {
    creds,
    options: {
      authenticator: nkeyAuthenticator(new TextEncoder().encode(creds.seed)),
      tls: { ca: creds.ca },
      inboxPrefix: inboxPrefix(creds.name),
    },
  };
}
