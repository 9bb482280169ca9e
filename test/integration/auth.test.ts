/**
 * The bus only the right hosts can use, on a real nats-server with rswap's auth folder (NKeys, the
 * permissions of shared/auth.ts, TLS with its own CA) and the real broker: who can connect, what
 * each identity can publish, hear and write, and what a stranger posing as a lender gets.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect as tcpConnect } from 'node:net';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { connect, nkeyAuthenticator, type Msg, type NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { connectAs, startNatsServer, type NatsServer } from '../../shared/nats.js';
import { authInit, connectionOptions, readCreds, rotateIdentity } from '../../shared/auth.js';
import { subjects } from '../../shared/subjects.js';
import { startBroker } from '../../services/broker/index.js';
import { cordonHost, drainHost, listHosts, listLeases } from '../../cli/operator.js';
import { allAnnounced, scriptedAgents, type ScriptedAgents } from '../helpers/agents.js';
import { waitFor } from '../../shared/wait.js';

const MiB = 1024 ** 2;
const HOSTS = ['host-a', 'host-b', 'host-c'];
let server: NatsServer;
let broker: Awaited<ReturnType<typeof startBroker>>;
const conns = new Map<string, NatsConnection>();
let agents: ScriptedAgents;
/** Every message the observer got on '>' (subject and payload). */
const observed: Array<{ subject: string; data: string }> = [];
/** Permission errors each connection was told about. */
const refusals = new Map<string, string[]>();

const as = (name: string) => conns.get(name)!;

before(async () => {
  server = await startNatsServer({ auth: { hosts: HOSTS } });
  for (const name of ['broker', 'operator', 'observer', ...HOSTS]) {
    const nc = await connectAs(server.as(name), `test-${name}`);
    conns.set(name, nc);
    refusals.set(name, []);
    void (async () => {
      for await (const status of nc.status()) if (status.type === 'error') refusals.get(name)!.push(String((status as { error?: Error }).error?.message));
    })();
  }
  as('observer').subscribe('>', { callback: (_e, m) => void observed.push({ subject: m.subject, data: m.string() }) });
  await as('observer').flush();
  broker = await startBroker({ nats: server.url, creds: server.as('broker').creds, host: 'broker-auth', sweepIntervalMs: 500 });
  // Scripted agents, each host on its own identity's connection.
  agents = scriptedAgents((host) => as(host), HOSTS, { announceEveryMs: 1_000 });
  // The broker chooses only lenders whose exporter it has heard: wait for every announce, not a time.
  await allAnnounced(as('observer'), HOSTS);
});

after(async () => {
  agents?.stop();
  await broker?.stop();
  for (const nc of conns.values()) await nc.close();
  await server?.stop();
});

/** A pressure as the borrower itself sends it; the broker's answer. */
const pressure = async (host: string, bytes: number) =>
  (await as(host).request(subjects.pressure(host), JSON.stringify({ host, neededBytes: bytes, at: Date.now(), source: 'inject' }), { timeout: 30_000 })).json<{ ok: boolean; leaseId?: string; state?: string }>();
const offer = async (host: string, bytes: number) =>
  (await as(host).request(subjects.surplus(host), JSON.stringify({ host, lendableBytes: bytes, lentBytes: 0, deficitBytes: 0, at: Date.now(), source: 'inject' }), { timeout: 10_000 })).json<{ ok: boolean }>();

/** Sends raw bytes to nats-server without TLS and returns what it answered. */
function plaintext(url: string, text: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    let got = '';
    const socket = tcpConnect(Number(port), hostname, () => socket.write(text));
    socket.on('data', (chunk) => (got += chunk.toString()));
    socket.on('close', () => resolve(got));
    socket.on('error', reject);
    socket.setTimeout(10_000, () => socket.destroy(new Error(`no answer; got: ${got}`)));
  });
}

test('auth - no credentials, no TLS or a wrong identity: refused at connect', async () => {
  // Plaintext: the server says TLS is required, takes no CONNECT and closes the connection.
  const answer = await plaintext(server.url, 'CONNECT {"verbose":true,"pedantic":false}\r\nPING\r\n');
  assert.match(answer, /^INFO .*"tls_required":true/);
  assert.doesNotMatch(answer, /PONG|\+OK/, 'no plaintext command was taken');
  const creds = await readCreds(server.as('host-a').creds!);
  // TLS with rswap's CA but no identity.
  await assert.rejects(connect({ servers: server.url, tls: { ca: creds.ca }, timeout: 5_000 }), /Authorization Violation/i);
  // A valid identity without TLS is never even tried: the client must verify the server's certificate.
  await assert.rejects(connect({ servers: server.url, authenticator: nkeyAuthenticator(new TextEncoder().encode(creds.seed)), timeout: 5_000 }), /certificate|TLS/i);
  // The services refuse to start without credentials (unless --insecure), or as another identity.
  await assert.rejects(startBroker({ nats: server.url, host: 'nobody' }), /no NATS credentials: pass --creds FILE/);
  await assert.rejects(startBroker({ nats: server.url, host: 'nobody', creds: server.as('host-a').creds }), /is host 'host-a'; this process needs broker credentials/);
});

test("auth - host-a speaks only for itself: no pressure for host-b, no host-b commands, no one else's replies, no KV writes, no operator requests", async () => {
  // Forged, then a real one: the observer sees the real one only, so the forged one never went out.
  as('host-a').publish(subjects.pressure('host-b'), JSON.stringify({ host: 'host-b', neededBytes: 64 * MiB, at: Date.now(), source: 'forged' }));
  await as('host-a').flush();
  const sentinel = observed.length;
  as('host-b').publish(subjects.telemetry('host-b'), JSON.stringify({ sentinel: true }));
  await waitFor('the sentinel seen', async () => observed.slice(sentinel).some((m) => m.subject === subjects.telemetry('host-b')), { timeoutMs: 10_000 });
  assert.equal(observed.some((m) => m.data.includes('"source":"forged"')), false, 'the forged pressure reached no one');
  await waitFor('host-a told its publish was refused', async () => refusals.get('host-a')!.some((r) => /Permissions Violation for Publish to "rswap.v1.host.host-b.pressure"/.test(r)), { timeoutMs: 10_000 });

  // host-b's commands and the broker's replies: the subscriptions are refused and receive nothing.
  const stolen: Msg[] = [];
  const errors: string[] = [];
  for (const subject of [`rswap.v1.cmd.host-b.>`, '_INBOX_broker.>', '_INBOX_host-b.>', '>']) {
    as('host-a').subscribe(subject, { callback: (e, m) => void (e ? errors.push(e.message) : stolen.push(m)) });
  }
  await waitFor('four subscriptions refused', async () => errors.length === 4, { timeoutMs: 10_000 });
  assert.ok(errors.every((e) => /Permissions Violation for Subscription/.test(e)), errors.join('; '));
  // A full lease meanwhile: commands to host-b and replies to the broker flow, host-a sees none.
  assert.equal((await offer('host-c', 512 * MiB)).ok, true);
  const lease = await pressure('host-b', 64 * MiB);
  assert.equal(lease.state, 'active', JSON.stringify(lease));
  assert.deepEqual(stolen, []);

  // KV: readable, not writable.
  const kv = await new Kvm(as('host-a')).open('rswap_leases');
  assert.equal((await kv.get(lease.leaseId!))?.json<{ state: string }>().state, 'active', 'a host can read lease records');
  await assert.rejects(kv.put(lease.leaseId!, JSON.stringify({ forged: true })), /Permissions Violation|timeout|no responders/i);
  await assert.rejects(new Kvm(as('host-a')).create('rswap_hosts_forged'), /Permissions Violation|timeout|no responders|permission/i);
  // Operator requests.
  for (const subject of [subjects.release, subjects.revoke, subjects.drain]) {
    await assert.rejects(as('host-a').request(subject, JSON.stringify({ leaseId: lease.leaseId, host: 'host-c' }), { timeout: 5_000 }), /Permissions Violation for Publish/);
  }
  const after = (await listLeases(server.as('operator'))).find((l) => l.id === lease.leaseId)!;
  assert.equal(after.state, 'active', 'nothing host-a tried changed the lease');
  // The operator may release it.
  const released = (await as('operator').request(subjects.release, JSON.stringify({ leaseId: lease.leaseId }), { timeout: 30_000 })).json<{ lease?: { state: string } }>();
  assert.equal(released.lease?.state, 'released');
});

test('auth - an observer on ">" sees events and lease states, never a command, a reply or a CHAP secret', async () => {
  const from = observed.length;
  assert.equal((await offer('host-c', 512 * MiB)).ok, true);
  const lease = await pressure('host-a', 64 * MiB);
  assert.equal(lease.state, 'active', JSON.stringify(lease));
  await waitFor('the lease going active, seen by the observer', async () => observed.slice(from).some((m) => m.subject === subjects.leaseState(lease.leaseId!) && m.data.includes('"state":"active"')), { timeoutMs: 10_000 });
  const seen = observed.slice(from);
  assert.ok(seen.some((m) => m.subject === subjects.pressure('host-a')), 'it sees the pressure');
  assert.ok(agents.commands.some((c) => c === `attach host-a ${lease.leaseId}`), 'a command carrying the secret was sent');
  assert.deepEqual(seen.filter((m) => m.subject.startsWith('rswap.v1.cmd.') || m.subject.startsWith('_INBOX')).map((m) => m.subject), [], 'no command, no reply');
  assert.equal(observed.some((m) => m.data.includes('abcdefghijkl')), false, 'no CHAP secret, ever');
  // Observers cannot act: no operator request, no KV write.
  await assert.rejects(as('observer').request(subjects.release, JSON.stringify({ leaseId: lease.leaseId }), { timeout: 5_000 }), /Permissions Violation for Publish/);
});

test('auth - a stranger posing as a lender never gets a lease; a lender whose export reply names another portal gets its lease failed', async () => {
  // The stranger holds no lender identity (here an observer's): it announces a portal, offers a
  // huge surplus and listens for exports, as a lender named 'rogue' and as host-c.
  const rogue = await connect({ ...(await connectionOptions(server.as('observer'))).options, servers: server.url });
  try {
    const rogueErrors: string[] = [];
    void (async () => {
      for await (const s of rogue.status()) if (s.type === 'error') rogueErrors.push(String((s as { error?: Error }).error?.message));
    })();
    const exports: Msg[] = [];
    rogue.subscribe('rswap.v1.cmd.*.export', { callback: (e, m) => void (e ? rogueErrors.push(e.message) : exports.push(m)) });
    for (const host of ['rogue', 'host-c']) {
      rogue.publish(subjects.announce(host), JSON.stringify({ host, role: 'exporter', portal: '198.18.0.66:3260', at: Date.now() }));
      rogue.publish(subjects.surplus(host), JSON.stringify({ host, lendableBytes: 64 * 1024 * MiB, lentBytes: 0, deficitBytes: 0, at: Date.now(), source: 'inject' }));
    }
    await rogue.flush();
    await waitFor('the stranger refused four times', async () => rogueErrors.filter((e) => /Permissions Violation for Publish/.test(e)).length >= 4, { timeoutMs: 10_000 });
    // host-b needs memory; only the real lenders' offers count, and they have gone stale or are
    // absent here: no lease, and nothing reached the stranger.
    assert.equal((await listHosts(server.as('operator'))).some((h) => h.host === 'rogue' || h.exporter?.portal === '198.18.0.66:3260'), false, 'no portal of the stranger recorded');
    const portal = '198.18.0.77:3260';
    // A real lender (host-c) whose export reply names a portal other than the one it announced.
    agents.exportPortal.set('host-c', portal);
    assert.equal((await offer('host-c', 512 * MiB)).ok, true);
    const reply = await pressure('host-b', 64 * MiB);
    assert.equal(reply.state, 'failed', JSON.stringify(reply));
    const lease = (await listLeases(server.as('operator'))).find((l) => l.id === reply.leaseId)!;
    assert.match(lease.reason!, /export failed: the lender answered with portal 198\.18\.0\.77:3260, not its announced 198\.18\.0\.\d+:3260/);
    assert.equal(lease.lender, 'host-c');
    assert.deepEqual(exports, [], 'the stranger heard no export');
    assert.ok(rogueErrors.some((e) => /Permissions Violation for Subscription/.test(e)));
  } finally {
    agents.exportPortal.delete('host-c');
    await rogue.close();
  }
  // The credentials files are 0600: only their owner reads them.
  assert.equal(((await stat(server.as('host-a').creds!)).mode & 0o777).toString(8), '600');
  assert.ok((await readFile(server.as('host-a').creds!, 'utf8')).includes('"role": "host"'));
});

test('auth - a lender cordons, drains and uncordons itself with its own identity (the rswap-drain unit), and no other host', async () => {
  assert.equal((await cordonHost(server.as('host-c'), 'host-c', true)).cordoned !== undefined, true);
  const drained = await drainHost(server.as('host-c'), 'host-c', 60_000);
  assert.deepEqual(drained.stayed, []);
  assert.equal((await cordonHost(server.as('host-c'), 'host-c', false)).cordoned, undefined);
  // Another host: on its own subject the payload must name it (else refused as spoofed) ...
  const spoofed = (await as('host-c').request(subjects.selfCordon('host-c'), JSON.stringify({ host: 'host-a' }), { timeout: 10_000 })).json<{ ok: boolean; error?: { code: string } }>();
  assert.equal(spoofed.error?.code, 'RSWAP_E_SPOOFED_HOST');
  // ... and on the other host's subject it cannot publish at all.
  await assert.rejects(cordonHost(server.as('host-c'), 'host-a', true), /Permissions Violation for Publish to "rswap.v1.broker.cordon"/);
  await assert.rejects(as('host-c').request(subjects.selfDrain('host-a'), JSON.stringify({ host: 'host-a' }), { timeout: 5_000 }), /Permissions Violation for Publish/);
  assert.equal((await listHosts(server.as('operator'))).find((h) => h.host === 'host-a')?.cordoned, undefined);
});

test("auth - no one but brokers joins the brokers' queue group, a host's event gets no answer on another identity's inbox, and a host cannot lift an operator's cordon", async () => {
  // An observer in the brokers' queue group would take a share of their messages.
  const errors: string[] = [];
  for (const name of ['observer', 'operator']) {
    as(name).subscribe(subjects.allPressure, { queue: 'rswap-broker', callback: (e) => void (e && errors.push(e.message)) });
  }
  await waitFor('both queue subscriptions refused', async () => errors.length === 2, { timeoutMs: 10_000 });
  assert.ok(errors.every((e) => /Permissions Violation for Subscription/.test(e)), errors.join('; '));
  // A host's event that asks for the answer on the broker's inbox (where it could pass for a
  // reply the broker awaits) is dropped, unanswered.
  const dropped = broker.rejects.byReason.get('RSWAP_E_SPOOFED_HOST') ?? 0;
  const onBrokerInbox: string[] = [];
  const peek = as('broker').subscribe('_INBOX_broker.forged', { callback: (_e, m) => void onBrokerInbox.push(m.string()) });
  as('host-a').publish(subjects.relief('host-a'), JSON.stringify({ host: 'host-a', at: Date.now(), source: 'inject' }), { reply: '_INBOX_broker.forged' });
  await waitFor('the forged reply subject refused', async () => (broker.rejects.byReason.get('RSWAP_E_SPOOFED_HOST') ?? 0) > dropped, { timeoutMs: 10_000 });
  await as('broker').flush();
  peek.unsubscribe();
  assert.deepEqual(onBrokerInbox, []);
  // An operator's cordon stays until an operator lifts it; the host lifts only its own.
  await cordonHost(server.as('operator'), 'host-c', true);
  await assert.rejects(cordonHost(server.as('host-c'), 'host-c', false), /cordoned by an operator: only an operator uncordons it/);
  assert.equal((await listHosts(server.as('operator'))).find((h) => h.host === 'host-c')?.cordoned?.by, 'operator');
  await cordonHost(server.as('operator'), 'host-c', false);
  assert.equal((await listHosts(server.as('operator'))).find((h) => h.host === 'host-c')?.cordoned, undefined);
});

test('auth - a rotated key: after nats-server reloads, the old key no longer signs in (its open connection is closed) and the new one does', async () => {
  // The last test: host-c's scripted agents (on the key rotated away here) stop announcing first.
  agents.stop();
  const old = server.as('host-c').creds!;
  const oldCreds = await readFile(old, 'utf8');
  const oldFile = `${server.authDir!}/host-c.old.creds`;
  await writeFile(oldFile, oldCreds, { mode: 0o600 });
  const openWithOld = await connectAs({ url: server.url, creds: oldFile }, 'old-key');
  const closed = openWithOld.closed();
  await rotateIdentity(server.authDir!, 'host-c');
  assert.notEqual(await readFile(old, 'utf8'), oldCreds, 'the creds file holds a new key');
  await server.reload();
  await closed; // nats-server drops a connection whose key is no longer listed
  await assert.rejects(connectAs({ url: server.url, creds: oldFile }, 'old-key-again'), /Authorization Violation/i);
  const fresh = await connectAs(server.as('host-c'), 'new-key');
  await fresh.close();
  assert.equal(as('host-c').isClosed(), true, "host-c's long-lived connection, on the old key, was closed too");
});

test("auth - an operator's own CA signs nats-server's certificate instead of a new one", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rswap-own-ca-'));
  try {
    await execa('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '30', '-subj', '/CN=their CA',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
    await authInit(join(dir, 'auth'), { serverNames: ['localhost'], serverIps: ['127.0.0.1'], ca: { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') } });
    const verified = await execa('openssl', ['verify', '-CAfile', join(dir, 'cert.pem'), join(dir, 'auth', 'server.pem')]);
    assert.match(verified.stdout, /server\.pem: OK/);
    assert.equal((await readCreds(join(dir, 'auth', 'creds', 'operator.creds'))).ca, await readFile(join(dir, 'cert.pem'), 'utf8'), 'clients trust their CA');
    // Grafana's admin password for compose.yaml: random, never Grafana's default.
    const password = (await readFile(join(dir, 'auth', 'grafana-admin-password'), 'utf8')).trim();
    assert.match(password, /^[A-Za-z0-9_-]{24}$/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
