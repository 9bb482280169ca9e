/** The built CLI against a real nats-server: --json output, and a refused request (exit 4). */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { startNatsServer, type NatsServer } from '../helpers/nats.js';
import { startBroker } from '../../services/broker/index.js';

const CLI = resolve(fileURLToPath(import.meta.url), '../../../cli/rswap.js');

let server: NatsServer;
before(async () => {
  process.env.RSWAP_LOG_LEVEL = 'silent';
  server = await startNatsServer();
});
after(async () => {
  await server.stop();
});

/** Runs the CLI on the test's NATS; `stderr` is its last line (after the --insecure warning). */
async function rswap(...args: string[]) {
  const r = await execa(process.execPath, [CLI, ...args, '--nats', server.url, '--insecure'], { reject: false, timeout: 60_000, env: { RSWAP_LOG_LEVEL: 'silent' } });
  return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr.trim().split('\n').at(-1) ?? '' };
}

test('cli - a request no broker answers, and one a broker refuses, exit 4 with the one-line reason; --json prints parseable results', async () => {
  // Before any broker: the reads answer "nothing", as JSON; a release finds no broker.
  const empty = await rswap('--json', 'leases');
  assert.equal(empty.code, 0, empty.stderr);
  assert.deepEqual(JSON.parse(empty.stdout), []);
  // One connection for leases and hosts: the --insecure warning once, not once per read.
  const plain = await execa(process.execPath, [CLI, 'leases', '--nats', server.url, '--insecure'], { reject: false, timeout: 60_000 });
  assert.equal(plain.exitCode, 0, plain.stderr);
  assert.equal(plain.stderr.split('\n').filter((l) => l.startsWith('INSECURE')).length, 1, plain.stderr);
  assert.deepEqual(await rswap('release', 'l-0123456789ab'), { code: 4, stdout: '', stderr: "rswap: RSWAP_E_TIMEOUT: no responders: 'rswap.v1.broker.release' (no broker answered)" });

  const broker = await startBroker({ nats: server.url, insecure: true, host: 'broker-cli' });
  try {
    assert.deepEqual(await rswap('release', 'l-0123456789ab', '--json'), { code: 4, stdout: '', stderr: "rswap: RSWAP_E_UNKNOWN_LEASE: unknown lease 'l-0123456789ab'" });
    assert.equal((await rswap('trace', 'l-0123456789ab')).code, 4);
    const published = await rswap('inject', 'surplus', '--json', '--host', 'h1', '--bytes', '1GiB');
    assert.equal(published.code, 0, published.stderr);
    assert.deepEqual({ ...JSON.parse(published.stdout), at: 0 }, { host: 'h1', lendableBytes: 1024 ** 3, lentBytes: 0, deficitBytes: 0, at: 0, source: 'inject' });
    let hosts: Array<{ host: string }> = [];
    for (let i = 0; i < 50 && hosts.length === 0; i += 1) {
      const r = await rswap('hosts', '--json');
      assert.equal(r.code, 0, r.stderr);
      hosts = JSON.parse(r.stdout) as Array<{ host: string }>;
      if (hosts.length === 0) await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(hosts.map((h) => h.host), ['h1']);
    const cordoned = await rswap('--json', 'cordon', 'h1');
    assert.equal(cordoned.code, 0, cordoned.stderr);
    assert.equal((JSON.parse(cordoned.stdout) as { cordoned?: { by: string } }).cordoned?.by, 'operator');
    const unknown = await rswap('cordon', 'h9');
    assert.equal(unknown.code, 4);
    assert.match(unknown.stderr, /^rswap: RSWAP_E_UNKNOWN_HOST: /);
  } finally {
    await broker.stop();
  }
});
