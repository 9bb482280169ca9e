import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { CommandError, createRunner, redact } from '../../shared/runner.js';

const run = createRunner(pino({ level: 'silent' }));

test('runner - returns stdout of a successful command', async () => {
  const result = await run('sh', ['-c', 'echo hello']);
  assert.equal(result.stdout.trim(), 'hello');
  assert.equal(result.exitCode, 0);
});

test('runner - a failure carries the command, exit code and stderr, with secrets redacted', async () => {
  await assert.rejects(run('sh', ['-c', 'echo "bad hunter2" >&2; exit 3', 'hunter2'], { secrets: ['hunter2'] }), (error: unknown) => {
    assert.ok(error instanceof CommandError);
    assert.equal(error.exitCode, 3);
    assert.match(error.stderr, /bad \*\*\*/);
    assert.match(error.command, /^sh -c/);
    assert.doesNotMatch(error.message, /hunter2/);
    return true;
  });
});

test('runner - times out, and accepts listed exit codes', async () => {
  await assert.rejects(run('sleep', ['5'], { timeoutMs: 100 }), /timed out after 100ms/);
  assert.equal((await run('sh', ['-c', 'exit 21'], { okExitCodes: [21] })).exitCode, 21);
  await assert.rejects(run('/nonexistent/tool', []), CommandError);
  assert.equal(redact('a s3 b s3', ['s3']), 'a *** b ***');
});
