/**
 * The host agents keep the OOM killer off themselves and off every process they start (tgtd,
 * qemu-storage-daemon): the real CLI on a real nats-server, its score read from /proc.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import pino from 'pino';
import { startNatsServer, type NatsServer } from '../helpers/nats.js';
import { OOM_SCORE_ADJ, protectFromOomKiller } from '../../shared/oom.js';
import { waitFor } from '../../shared/wait.js';

const CLI = resolve(fileURLToPath(import.meta.url), '../../../cli/rswap.js');
const OOM_MODULE = resolve(fileURLToPath(import.meta.url), '../../../shared/oom.js');
const silent = pino({ level: 'silent' });

let server: NatsServer;
before(async () => {
  server = await startNatsServer();
});
after(async () => {
  await server.stop();
});

/** Lowering a score takes CAP_SYS_RESOURCE, which some sandboxes (this CI machine's among them) withhold even from root. */
async function mayLowerScores(): Promise<boolean> {
  const caps = /^CapEff:\s*([0-9a-f]+)$/m.exec(await readFile('/proc/self/status', 'utf8'))?.[1] ?? '0';
  return (BigInt(`0x${caps}`) >> 24n) % 2n === 1n;
}

test('oom - the monitor started by the CLI runs with its oom_score_adj, or says in its log why it cannot', async () => {
  const agent = execa(process.execPath, [CLI, 'monitor', '--host', 'oom-test', '--nats', server.url, '--insecure'], { reject: false, env: { RSWAP_LOG_LEVEL: 'info' }, all: true });
  let said = '';
  agent.all?.on('data', (chunk: Buffer) => (said += chunk.toString()));
  try {
    await waitFor('the monitor\'s oom_score_adj line', async () => said.includes('oom_score_adj'), { timeoutMs: 30_000 });
    const score = Number((await readFile(`/proc/${agent.pid}/oom_score_adj`, 'utf8')).trim());
    if (await mayLowerScores()) {
      assert.match(said, /kept off the OOM killer/, said);
      assert.equal(score, OOM_SCORE_ADJ.monitor);
    } else {
      // (The VM tests see the score set: root in a VM has every capability.)
      assert.match(said, /could not set oom_score_adj: the OOM killer may pick this agent .*CAP_SYS_RESOURCE/, said);
      assert.equal(score, 0);
    }
  } finally {
    agent.kill('SIGTERM');
    await agent;
  }
});

test('oom - a process the agent starts inherits the score (as tgtd and qemu-storage-daemon do)', async () => {
  const script = `const { protectFromOomKiller } = await import(${JSON.stringify(OOM_MODULE)});
const pino = (await import('pino')).default;
await protectFromOomKiller(500, pino({ level: 'silent' }));
const { execFileSync } = await import('node:child_process');
process.stdout.write(execFileSync('cat', ['/proc/self/oom_score_adj']).toString());`;
  const child = await execa(process.execPath, ['--input-type=module', '-e', script], { cwd: resolve(fileURLToPath(import.meta.url), '../../../..') });
  // Raised, not lowered: raising needs no capability, and inheritance is the same either way.
  assert.equal(child.stdout.trim(), '500');
});

test('oom - where the score cannot be set, the agent is told why and goes on', async () => {
  assert.equal(await protectFromOomKiller(-1000, silent, '/nonexistent/oom_score_adj'), false);
});
