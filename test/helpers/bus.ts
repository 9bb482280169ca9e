/**
 * A testbed's NATS as a test drives it. The testbed's bus enforces least privilege, so each message
 * goes over the connection of the identity that may send it: a host's events as that host, a
 * command (a forged one, in fault tests) as the broker, an operator request as the operator, and
 * every subscription as the observer. Tests use it like a NatsConnection.
 */
import type { Msg, NatsConnection, PublishOptions, RequestOptions, Subscription, SubscriptionOptions } from '@nats-io/transport-node';
import { connectAs } from '../../shared/nats.js';
import { PREFIX, hostOfSubject } from '../../shared/subjects.js';
import { testbedBus, type Testbed } from '../../cli/testbed/testbed.js';

export class TestBus {
  private constructor(private readonly conns: Map<string, NatsConnection>) {}

  /** One connection per identity of the testbed (broker, operator, observer, each host). */
  static async open(tb: Pick<Testbed, 'natsUrl' | 'creds' | 'hosts'>): Promise<TestBus> {
    const names = tb.creds ? Object.keys(tb.creds) : ['broker', 'operator', 'observer', ...tb.hosts.map((h) => h.name)];
    const conns = new Map<string, NatsConnection>();
    try {
      for (const name of names) conns.set(name, await connectAs(testbedBus(tb, tb.creds ? name : undefined), `rswap-test-${name}`));
    } catch (error) {
      await Promise.all([...conns.values()].map((c) => c.close()));
      throw error;
    }
    return new TestBus(conns);
  }

  /** The connection of one identity. */
  as(identity: string): NatsConnection {
    const nc = this.conns.get(identity);
    if (!nc) throw new Error(`no identity '${identity}' on this bus`);
    return nc;
  }

  /** Who may send on `subject`: the host it names, else the broker (commands, hello) or the operator. */
  static senderOf(subject: string): string {
    const host = hostOfSubject(subject);
    if (host) return host;
    if (subject.startsWith(`${PREFIX}.broker.`) && !/\.(hello|solicit)$/.test(subject)) return 'operator';
    return 'broker';
  }

  request(subject: string, payload?: string | Uint8Array, opts?: RequestOptions): Promise<Msg> {
    return this.as(TestBus.senderOf(subject)).request(subject, payload, opts);
  }

  publish(subject: string, payload?: string | Uint8Array, opts?: PublishOptions): void {
    this.as(TestBus.senderOf(subject)).publish(subject, payload, opts);
  }

  subscribe(subject: string, opts?: SubscriptionOptions): Subscription {
    return this.as('observer').subscribe(subject, opts);
  }

  async flush(): Promise<void> {
    await Promise.all([...this.conns.values()].map((c) => c.flush()));
  }

  async drain(): Promise<void> {
    await Promise.all([...this.conns.values()].map((c) => c.drain().catch(() => undefined)));
  }
}
