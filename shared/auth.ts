/**
 * Who may do what on the bus: one NKey identity per host, broker, operator and observer, TLS with
 * rswap's own CA, and the nats-server authorization that enforces least privilege.
 *
 * An auth folder (made by `rswap auth init`) holds
 *   ca.pem, ca-key.pem          the CA (keep ca-key.pem offline once the server's cert is made)
 *   server.pem, server-key.pem  nats-server's certificate, for the names and addresses given
 *   identities.json             every identity: name, role, public NKey (no secrets)
 *   nats.conf                   tls {...} and authorization {...} for nats-server (`-c nats.conf`)
 *   creds/<name>.creds          one per identity, 0600: its NKey seed and the CA, all a process needs
 *
 * Permissions (nats-server enforces them; a message outside them never reaches anyone):
 *   host H     publishes only rswap.v1.host.H.>, hears only rswap.v1.cmd.H.>, the broker's hello
 *              and solicit, and replies on its own inbox; reads the KV buckets, never writes them
 *   broker     sends commands, writes both buckets, hears every host's events and operator requests
 *   operator   release, revoke, cordon, uncordon, drain; reads everything but commands and inboxes
 *   observer   reads (KV, events, lease states); never a command or a reply (they carry CHAP secrets)
 */
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
      `$JS.API.CONSUMER.DELETE.${s}.>`,
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
      const others = [...new Set(everyone.map((i) => i.name))].filter((n) => n !== name).map((n) => `${inboxPrefix(n)}.>`);
      return {
        publish: { allow: [...(role === 'operator' ? operatorRequests : []), ...kvRead()] },
        subscribe: { allow: ['>'], deny: [`${PREFIX}.cmd.>`, '_INBOX.>', ...others] },
      };
    }
  }
}

/** nats-server's `tls {...}` and `authorization {...}`, for `nats-server -c nats.conf`. */
export function serverConfig(dir: string, identities: Identity[]): string {
  const users = identities.map((i) => `    # ${i.role} ${i.name}\n    { nkey: ${JSON.stringify(i.publicKey)}, permissions: ${JSON.stringify(permissionsFor(i, identities))} }`);
  const abs = resolve(dir);
  return [
    '# Written by `rswap auth`: do not edit, run `rswap auth add-host|add-operator|...` instead.',
    '# Every client must use TLS (plaintext is refused) and sign in with its NKey.',
    `tls { cert_file: ${JSON.stringify(join(abs, 'server.pem'))}, key_file: ${JSON.stringify(join(abs, 'server-key.pem'))}, timeout: 5 }`,
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
  if (identities.some((i) => i.name === name)) throw new RswapError(ErrorCodes.CONFIG, `an identity named '${name}' exists already (${identities.find((i) => i.name === name)!.role})`);
  const { identity, seed } = newIdentity(name, role);
  const ca = await readFile(join(dir, 'ca.pem'), 'utf8');
  const file = join(dir, 'creds', `${name}.creds`);
  await mkdir(join(dir, 'creds'), { recursive: true, mode: 0o700 });
  await writeSecret(file, `${JSON.stringify(Creds.parse({ format: 'rswap-creds/1', name, role, seed, ca }), null, 2)}\n`);
  const all = [...identities, identity];
  await writeFile(join(dir, 'identities.json'), `${JSON.stringify({ identities: all }, null, 2)}\n`);
  await writeSecret(join(dir, 'nats.conf'), serverConfig(dir, all));
  return file;
}

export interface AuthInitOptions {
  /** DNS names and IP addresses clients use to reach nats-server (its certificate's subjectAltName). */
  serverNames: string[];
  serverIps: string[];
  /** Identities made at once, besides one broker ('broker'), one operator ('operator') and one observer ('observer'). */
  hosts?: string[];
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
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await execa('openssl', ['req', '-x509', ...ec, '-keyout', join(dir, 'ca-key.pem'), '-out', join(dir, 'ca.pem'), '-days', '3650', '-subj', '/CN=rswap CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  await execa('openssl', ['req', ...ec, '-keyout', join(dir, 'server-key.pem'), '-out', join(dir, 'server.csr'), '-subj', '/CN=rswap nats-server']);
  const san = [...options.serverNames.map((n) => `DNS:${n}`), ...options.serverIps.map((ip) => `IP:${ip}`)].join(',');
  if (!san) throw new RswapError(ErrorCodes.CONFIG, 'give the names or addresses clients use to reach nats-server (--server-name, --server-ip)');
  await writeFile(join(dir, 'server.ext'), `subjectAltName=${san}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n`);
  await execa('openssl', ['x509', '-req', '-in', join(dir, 'server.csr'), '-CA', join(dir, 'ca.pem'), '-CAkey', join(dir, 'ca-key.pem'), '-CAcreateserial',
    '-out', join(dir, 'server.pem'), '-days', '825', '-extfile', join(dir, 'server.ext')]);
  await Promise.all(['server.csr', 'server.ext', 'ca.srl'].map((f) => rm(join(dir, f), { force: true })));
  await Promise.all(['ca-key.pem', 'server-key.pem'].map((f) => chmod(join(dir, f), 0o600)));
  await writeFile(join(dir, 'identities.json'), `${JSON.stringify({ identities: [] }, null, 2)}\n`);
  await addIdentity(dir, 'broker', 'broker');
  await addIdentity(dir, 'operator', 'operator');
  await addIdentity(dir, 'observer', 'observer');
  for (const host of options.hosts ?? []) await addIdentity(dir, host, 'host');
}

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
