/** A real nats-server with JetStream for one test file, on a free loopback port, removed after. */
import type { NatsConnection } from '@nats-io/transport-node';

export { freePort, startNatsServer, type NatsServer } from '../../shared/nats.js';

/**
 * Sends raw JSON (or an object) as a request and returns the reply as rswap shapes it. The default
 * wait (2 min) outlasts a sealed bring-up or a swap-off on a loaded machine: a step that fails is
 * answered with the broker's reason, not cut short by the test's own timeout.
 */
export async function ask(nc: Pick<NatsConnection, 'request'>, subject: string, body: unknown, timeoutMs = 120_000): Promise<{ ok: boolean; error?: { code: string; message: string } }> {
  return (await nc.request(subject, typeof body === 'string' ? body : JSON.stringify(body), { timeout: timeoutMs })).json();
}
