/** requestJson on a real nats-server: an agent that is restarting still gets its command. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { requestJson } from '../../shared/messaging.js';
import { OkReply } from '../../shared/schemas.js';
import { startNatsServer, type NatsServer } from '../helpers/nats.js';

let server: NatsServer;
let nc: NatsConnection;
let agent: NatsConnection;

before(async () => {
  server = await startNatsServer();
  nc = await connect({ servers: server.url });
  agent = await connect({ servers: server.url });
});

after(async () => {
  await nc?.close();
  await agent?.close();
  await server?.stop();
});

test('requestJson - a responder that appears within the grace gets the request once; none at all fails as no responders', async () => {
  let received = 0;
  setTimeout(() => {
    agent.subscribe('test.restarting', { callback: (_e, msg) => {
        received += 1;
        msg.respond(JSON.stringify({ ok: true }));
      },
    });
  }, 800);
  const started = Date.now();
  assert.deepEqual(await requestJson(nc, 'test.restarting', {}, OkReply, 5_000), { ok: true });
  assert.ok(Date.now() - started >= 800, 'it waited for the responder');
  assert.equal(received, 1, 'delivered once');

  const t = Date.now();
  await assert.rejects(requestJson(nc, 'test.nobody', {}, OkReply, 1_500), /no responders: 'test\.nobody'/);
  const waited = Date.now() - t;
  assert.ok(waited >= 1_000 && waited < 8_000, `gave up within the request's own timeout (${waited} ms)`);
});

test('requestJson - an idempotent command whose request was lost is sent again after resendAfterMs, and answered; without it, it times out', async () => {
  // The first request is dropped (as one through a nats-server that died, or to an agent between
  // two connections, is); the second is answered.
  let seen = 0;
  const sub = agent.subscribe('test.lossy', {
    callback: (_e, msg) => {
      seen += 1;
      if (seen > 1) msg.respond(JSON.stringify({ ok: true }));
    },
  });
  await agent.flush();
  assert.deepEqual(await requestJson(nc, 'test.lossy', {}, OkReply, 5_000, { resendAfterMs: 300 }), { ok: true });
  assert.equal(seen, 2, 'sent twice: the lost one and the resend');
  seen = 0;
  await assert.rejects(requestJson(nc, 'test.lossy', {}, OkReply, 700), /no reply within 700ms: 'test\.lossy'/);
  assert.equal(seen, 1, 'without a resend, once');
  sub.unsubscribe();
});

test('requestJson - a request to the broker with no broker running fails within the short grace, saying no broker answered', async () => {
  const t = Date.now();
  await assert.rejects(requestJson(nc, 'rswap.v1.broker.release', { leaseId: 'l-0123456789ab' }, OkReply, 330_000, { noRespondersGraceMs: 1_000 }), /no responders: 'rswap\.v1\.broker\.release' \(no broker answered\)/);
  const waited = Date.now() - t;
  assert.ok(waited < 60_000, `after the grace, not the request's 330 s timeout (${waited} ms)`);
});

test('handle - a NATS call of the agent that timed out comes back as RSWAP_E_TIMEOUT, marked as the agent\'s own answer; asking that timed out is not', async () => {
  const { handle, RejectCounter } = await import('../../shared/messaging.js');
  const { ErrorCodes, RswapError } = await import('../../shared/errors.js');
  const { z } = await import('zod');
  const pino = (await import('pino')).default;
  // The agent's handler asks something nobody answers in time (as a KV read on a thrashing host does).
  handle(agent, 'test.agent-timeout', { schema: z.object({}), log: pino({ level: 'silent' }), rejects: new RejectCounter() }, async () => {
    agent.subscribe('test.silent', { callback: () => {} });
    await agent.request('test.silent', '', { timeout: 200 });
  });
  const error = await requestJson(nc, 'test.agent-timeout', {}, OkReply, 5_000).then(() => undefined, (e: unknown) => e);
  assert.ok(error instanceof RswapError, String(error));
  assert.equal(error.code, ErrorCodes.TIMEOUT);
  assert.equal(error.remote, true, 'the agent answered: it timed out on its side');
  assert.equal(error.message, 'timeout');
  // No answer at all is a timeout of the asker's own.
  agent.subscribe('test.never', { callback: () => {} });
  const own = await requestJson(nc, 'test.never', {}, OkReply, 300).then(() => undefined, (e: unknown) => e);
  assert.ok(own instanceof RswapError && own.code === ErrorCodes.TIMEOUT && !own.remote, String(own));
});
