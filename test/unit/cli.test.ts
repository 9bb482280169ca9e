import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');
const CLI = resolve(ROOT, 'dist/cli/rswap.js');

test('cli - --version and -V print the version in package.json and exit 0', async () => {
  const { version } = JSON.parse(await readFile(resolve(ROOT, 'package.json'), 'utf8')) as { version: string };
  for (const flag of ['--version', '-V']) {
    const r = await execa(process.execPath, [CLI, flag], { reject: false });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout.trim(), version);
  }
});

test('cli - the broker\'s --host is checked like every host id, with the reason', async () => {
  const r = await execa(process.execPath, [CLI, 'broker', '--host', 'Broker.1', '--nats', 'nats://127.0.0.1:1', '--insecure'], { reject: false, timeout: 30_000 });
  assert.notEqual(r.exitCode, 0);
  assert.match(r.stderr, /host id must be 1-63 of \[a-z0-9-\]/);
});

/** Runs the built CLI; `stderr` is its last line (a command may warn first, e.g. about --insecure). */
async function rswap(args: string[], env: Record<string, string> = {}) {
  const r = await execa(process.execPath, [CLI, ...args], { reject: false, timeout: 30_000, env: { RSWAP_LOG_LEVEL: 'silent', ...env } });
  return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr.trim().split('\n').at(-1) ?? '' };
}

test('cli - an unknown flag or command is a usage error: exit 2, one line naming it and where the help is', async () => {
  assert.deepEqual(await rswap(['leases', '--bogus']), { code: 2, stdout: '', stderr: "rswap: RSWAP_E_USAGE: unknown option '--bogus' (see rswap leases --help)" });
  assert.deepEqual(await rswap(['--bogus', 'leases']), { code: 2, stdout: '', stderr: "rswap: RSWAP_E_USAGE: unknown option '--bogus' (see rswap --help)" });
  assert.deepEqual(await rswap(['leasez']), { code: 2, stdout: '', stderr: "rswap: RSWAP_E_USAGE: unknown command 'leasez' (Did you mean leases?) (see rswap --help)" });
  const typo = await rswap(['hosts', '--jsn']);
  assert.equal(typo.code, 2);
  assert.equal(typo.stderr, "rswap: RSWAP_E_USAGE: unknown option '--jsn' (Did you mean --json?) (see rswap hosts --help)");
});

test('cli - a bad flag value or argument is a usage error (exit 2, one line), before any connection', async () => {
  const host = await rswap(['inject', 'pressure', '--host', 'BAD!', '--bytes', '1GiB', '--nats', 'nats://127.0.0.1:1', '--insecure']);
  assert.equal(host.code, 2);
  assert.match(host.stderr, /^rswap: RSWAP_E_USAGE: option '--host <id>' argument 'BAD!' is invalid\. host id must be 1-63 of \[a-z0-9-\].* \(see rswap inject pressure --help\)$/);
  const size = await rswap(['inject', 'surplus', '--host', 'h1', '--bytes', '1GiB', '--lent', '12XB', '--nats', 'nats://127.0.0.1:1', '--insecure']);
  assert.equal(size.code, 2);
  assert.match(size.stderr, /^rswap: RSWAP_E_USAGE: option '--lent <size>' argument '12XB' is invalid\. invalid size: '12XB'/);
  const lease = await rswap(['release', 'nope', '--nats', 'nats://127.0.0.1:1', '--insecure']);
  assert.equal(lease.code, 2);
  assert.match(lease.stderr, /^rswap: RSWAP_E_USAGE: command-argument value 'nope' is invalid for argument 'lease'\. lease id must look like 'l-0123456789ab'/);
  const missing = await rswap(['inject', 'relief']);
  assert.deepEqual(missing, { code: 2, stdout: '', stderr: "rswap: RSWAP_E_USAGE: required option '--host <id>' not specified (see rswap inject relief --help)" });
});

test('cli - a bad service setting, from a flag or from RSWAP_*, is exit 2 with one line naming the flag; the flag wins over the variable', async () => {
  const bus = ['--nats', 'nats://127.0.0.1:1', '--insecure'];
  const viaFlag = await rswap(['broker', '--offer-ttl-ms', 'soon', ...bus]);
  assert.equal(viaFlag.code, 2);
  assert.match(viaFlag.stderr, /^rswap: RSWAP_E_CONFIG: invalid settings: --offer-ttl-ms \(offerTtlMs\): [^[\]{}]+$/);
  assert.deepEqual(await rswap(['broker', ...bus], { RSWAP_OFFER_TTL_MS: 'soon' }), viaFlag);
  const both = await rswap(['broker', '--offer-ttl-ms', '5000', '--host', 'Broker.1', ...bus], { RSWAP_OFFER_TTL_MS: 'soon' });
  assert.equal(both.code, 2);
  assert.match(both.stderr, /^rswap: RSWAP_E_CONFIG: invalid settings: --host \(host\): host id must be/);
  assert.doesNotMatch(both.stderr, /offer-ttl-ms/);
  const bool = await rswap(['leases', '--nats', 'nats://127.0.0.1:1'], { RSWAP_INSECURE: 'yes' });
  assert.deepEqual(bool, { code: 2, stdout: '', stderr: 'rswap: RSWAP_E_CONFIG: invalid settings: --insecure (insecure): must be true, false, 1 or 0' });
});

test('cli - NATS unreachable is exit 3, at once, naming the URL; the global flags work before and after the command, and from the environment', async () => {
  const expected = (url: string) => ({ code: 3, stdout: '', stderr: `rswap: RSWAP_E_UNREACHABLE: cannot reach NATS at ${url} (connection refused); pass --nats URL or set RSWAP_NATS_URL` });
  const started = Date.now();
  assert.deepEqual(await rswap(['--nats', 'nats://127.0.0.1:1', '--insecure', 'leases']), expected('nats://127.0.0.1:1'));
  assert.deepEqual(await rswap(['leases', '--nats', 'nats://127.0.0.1:1', '--insecure']), expected('nats://127.0.0.1:1'));
  assert.deepEqual(await rswap(['--json', 'hosts', '--insecure', '--nats', 'nats://127.0.0.1:2']), expected('nats://127.0.0.1:2'));
  assert.deepEqual(await rswap(['inject', 'relief', '--host', 'h1', '--insecure'], { RSWAP_NATS_URL: 'nats://127.0.0.1:3' }), expected('nats://127.0.0.1:3'));
  assert.deepEqual(await rswap(['--nats', 'nats://127.0.0.1:4', 'trace', 'l-0123456789ab'], { RSWAP_NATS_URL: 'nats://127.0.0.1:3', RSWAP_INSECURE: '1' }), expected('nats://127.0.0.1:4'));
  assert.ok(Date.now() - started < 20_000, `five refused connections took ${Date.now() - started} ms`);
  // Without --insecure or credentials it does not connect: a usage matter, exit 2.
  assert.equal((await rswap(['leases', '--nats', 'nats://127.0.0.1:1'])).code, 2);
});

test('cli - check --json prints one JSON document: ok for the shipped files, the problems (exit 1) for a broken one', async () => {
  const ok = await execa(process.execPath, [CLI, 'check', '--json', 'compose.yaml', 'deploy/systemd/rswap-broker.service'], { cwd: ROOT, reject: false });
  assert.equal(ok.exitCode, 0, ok.stderr);
  assert.deepEqual(JSON.parse(ok.stdout), { ok: true, files: ['compose.yaml', 'deploy/systemd/rswap-broker.service'], problems: [] });
  const { mkdtemp, writeFile, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const dir = await mkdtemp(resolve(tmpdir(), 'rswap-check-'));
  try {
    const file = resolve(dir, 'compose.yaml');
    await writeFile(file, 'servics: {}\n');
    const bad = await execa(process.execPath, [CLI, '--json', 'check', file], { reject: false });
    assert.equal(bad.exitCode, 1);
    const result = JSON.parse(bad.stdout) as { ok: boolean; files: string[]; problems: string[] };
    assert.equal(result.ok, false);
    assert.deepEqual(result.files, [file]);
    assert.ok(result.problems.some((p) => p.includes("'servics'")), result.problems.join('\n'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('cli - every service setting is a flag whose --help shows its default and its environment variable', async () => {
  const { BrokerConfig } = await import('../../services/broker/index.js');
  const { ExporterConfig } = await import('../../services/exporter/index.js');
  const { AttacherConfig } = await import('../../services/attacher/index.js');
  const { MonitorConfig } = await import('../../services/monitor/index.js');
  const { envName, flagName } = await import('../../shared/config.js');
  for (const [role, schema] of Object.entries({ broker: BrokerConfig, exporter: ExporterConfig, attacher: AttacherConfig, monitor: MonitorConfig })) {
    const r = await execa(process.execPath, [CLI, role, '--help'], { reject: false });
    assert.equal(r.exitCode, 0);
    // One entry per flag: a line "  --flag ..." and its indented continuation lines.
    const entries = r.stdout.split(/\n(?= {2}-)/).map((e) => e.replace(/\s+/g, ' ').trim());
    for (const key of Object.keys((schema as unknown as { shape: object }).shape)) {
      const entry = entries.find((e) => e.startsWith(`--${flagName(key)} `));
      assert.ok(entry, `${role} --help lists --${flagName(key)}`);
      assert.match(entry, new RegExp(`\\(.*default: .*, env: ${envName(key)}\\)$`), `${role}: ${entry}`);
    }
  }
  const broker = (await execa(process.execPath, [CLI, 'broker', '--help'])).stdout.replace(/\s+/g, ' ');
  assert.match(broker, /--offer-ttl-ms <ms> offers older than this are not matched \(default: 30000, env: RSWAP_OFFER_TTL_MS\)/);
  assert.match(broker, /--min-lease-bytes <size> smallest lease, e\.g\. 64MiB \(default: 64MiB, env: RSWAP_MIN_LEASE_BYTES\)/);
  assert.match(broker, /Global Options: .*--nats <url> .*\(default: "nats:\/\/127\.0\.0\.1:4222", env: RSWAP_NATS_URL\)/);
});

test('cli - rswap --help ends with the exit codes, and exits 0', async () => {
  const r = await execa(process.execPath, [CLI, '--help'], { reject: false });
  assert.equal(r.exitCode, 0);
  assert.match(r.stdout, /Exit codes:\n {2}0 {2}ok\n {2}1 .*\n {2}2 {2}usage[^]* {2}3 {2}NATS unreachable[^]* {2}4 {2}the request was refused or failed/);
  const leases = (await execa(process.execPath, [CLI, 'leases', '--help'])).stdout;
  for (const flag of ['--nats', '--creds', '--insecure', '--json']) assert.match(leases, new RegExp(`^ {2}${flag}\\b`, 'm'), `leases --help lists ${flag}`);
});
