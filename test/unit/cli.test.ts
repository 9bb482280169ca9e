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
