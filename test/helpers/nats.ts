/** A real nats-server with JetStream for one test file, on a free loopback port, removed after. */
import type { NatsConnection } from '@nats-io/transport-node';

export { freePort, startNatsServer, type NatsServer } from '../../shared/nats.js';

/** Sends raw JSON (or an object) as a request and returns the reply as rswap shapes it. */
export async function ask(nc: Pick<NatsConnection, 'request'>, subject: string, body: unknown, timeoutMs = 30_000): Promise<{ ok: boolean; error?: { code: string; message: string } }> {
  return (await nc.request(subject, typeof body === 'string' ? body : JSON.stringify(body), { timeout: timeoutMs })).json();
}
