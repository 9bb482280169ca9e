/**
 * Traced, schema-checked publish / request / subscribe over NATS. Spans follow the OpenTelemetry
 * messaging conventions: producer spans are named `publish <template>`, consumer spans
 * `process <template>`, where the template is the subject with its host or lease id as `{host}` or
 * `{lease}` (subjectTemplate): the span names are a fixed set, not one per host and lease. The
 * concrete subject is the attribute `messaging.destination.name`. The W3C trace context travels in
 * NATS headers. Every message is parsed at the boundary: a bad one is answered with a clear error (when
 * it has a reply subject), logged, counted, and changes nothing.
 */
import { headers as natsHeaders, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node';
import { context, propagation, SpanKind, SpanStatusCode, trace, type Context } from '@opentelemetry/api';
import type { z } from 'zod';
import type { Logger } from './log.js';
import { ErrorCodes, RswapError, errorCode, errorMessage, type ErrorCode } from './errors.js';
import { PREFIX, hostOfSubject, subjectTemplate } from './subjects.js';
import { inboxPrefix } from './auth.js';
import { metrics } from './metrics.js';

const tracer = trace.getTracer('rswap.messaging');

const setter = { set: (carrier: MsgHdrs, key: string, value: string) => carrier.set(key, value) };
const getter = {
  get: (carrier: MsgHdrs | undefined, key: string) => carrier?.get(key) || undefined,
  keys: (carrier: MsgHdrs | undefined) => (carrier ? [...carrier.keys()] : []),
};

/**
 * A messaging span's name and attributes: `publish` (a request too: it publishes with a reply
 * subject) is of type `send`, `process` of type `process`.
 */
function messagingSpan(operation: 'publish' | 'process', subject: string) {
  const template = subjectTemplate(subject);
  return {
    name: `${operation} ${template}`,
    attributes: {
      'messaging.system': 'nats',
      'messaging.operation.name': operation,
      'messaging.operation.type': operation === 'publish' ? 'send' : 'process',
      'messaging.destination.name': subject,
      'messaging.destination.template': template,
    },
  };
}

function headersFor(ctx: Context): MsgHdrs {
  const h = natsHeaders();
  propagation.inject(ctx, h, setter);
  return h;
}

/** Counts rejected messages by reason; the metrics endpoint reads it. */
export class RejectCounter {
  readonly byReason = new Map<string, number>();
  add(reason: string): void {
    this.byReason.set(reason, (this.byReason.get(reason) ?? 0) + 1);
    metrics.rejectedMessages.inc({ reason });
  }
  total(): number {
    return [...this.byReason.values()].reduce((a, b) => a + b, 0);
  }
}

export function publishJson(nc: NatsConnection, subject: string, body: unknown, parent: Context = context.active()): void {
  const { name, attributes } = messagingSpan('publish', subject);
  const span = tracer.startSpan(name, { kind: SpanKind.PRODUCER, attributes }, parent);
  try {
    nc.publish(subject, JSON.stringify(body), { headers: headersFor(trace.setSpan(parent, span)) });
  } finally {
    span.end();
  }
}

/** How long a request waits for a responder to appear (an agent restarting) before it fails. */
export const NO_RESPONDERS_GRACE_MS = 10_000;

export interface RequestOptions {
  /**
   * For idempotent commands only: with no reply this long, the request is sent again (until
   * timeoutMs). Core NATS does not keep a message: one that went through a nats-server killed at
   * that moment, or to an agent between two connections, is lost, and only a resend finds the agent.
   */
  resendAfterMs?: number;
  /** How long "no responders" is retried (an agent restarting); an operator asking a broker wants it short. */
  noRespondersGraceMs?: number;
}

/**
 * Sends a request and parses the reply; a `{ ok: false }` reply becomes an RswapError carrying the
 * remote code and message, so a failure reads the same wherever it happened.
 */
export async function requestJson<T>(
  nc: NatsConnection,
  subject: string,
  body: unknown,
  replySchema: z.ZodType<T>,
  timeoutMs: number,
  options: RequestOptions = {},
): Promise<Extract<T, { ok: true }>> {
  const { resendAfterMs, noRespondersGraceMs = NO_RESPONDERS_GRACE_MS } = options;
  const { name, attributes } = messagingSpan('publish', subject);
  return tracer.startActiveSpan(
    name,
    { kind: SpanKind.PRODUCER, attributes },
    async (span) => {
      try {
        // "No responders" means nobody listens right now, so nothing was delivered: an agent that is
        // restarting (systemd brings it back in seconds) gets the same request again, for a while.
        const started = Date.now();
        const grace = Math.min(timeoutMs, noRespondersGraceMs);
        let msg;
        const noResponders = (cause: unknown) => {
          const who = subject.startsWith(`${PREFIX}.broker.`) ? 'no broker answered' : "is that host's agent running?";
          return new RswapError(ErrorCodes.TIMEOUT, `no responders: '${subject}' (${who})`, { cause });
        };
        // Whether the last try found nobody listening: a last try that then runs out of time (a
        // loaded machine answers "no responders" late) still means nobody was there.
        let nobody = false;
        for (let attempt = 0; !msg; attempt += 1) {
          const left = Math.max(1, timeoutMs - (Date.now() - started));
          const resend = resendAfterMs !== undefined && resendAfterMs < left;
          try {
            msg = await nc.request(subject, JSON.stringify(body), { timeout: resend ? resendAfterMs : left, headers: headersFor(context.active()) });
          } catch (error) {
            const text = errorMessage(error);
            if (resend && /timeout/i.test(text)) {
              span.addEvent('resent', { 'rswap.after_ms': resendAfterMs });
              continue;
            }
            if (/no responders/i.test(text)) {
              nobody = true;
              if (Date.now() - started + 200 < grace) {
                await new Promise((resolve) => setTimeout(resolve, Math.min(1_000, 200 * 2 ** attempt)));
                continue;
              }
              throw noResponders(error);
            }
            if (/timeout/i.test(text)) throw nobody ? noResponders(error) : new RswapError(ErrorCodes.TIMEOUT, `no reply within ${timeoutMs}ms: '${subject}'`, { cause: error });
            throw error;
          }
        }
        const parsed = replySchema.safeParse(msg.json());
        if (!parsed.success) throw new RswapError(ErrorCodes.BAD_MESSAGE, `malformed reply on '${subject}': ${parsed.error.message}`);
        const reply = parsed.data as { ok: boolean; error?: { code: string; message: string } };
        if (!reply.ok) throw new RswapError((reply.error?.code as ErrorCode) ?? ErrorCodes.INTERNAL, reply.error?.message ?? 'unknown error', { remote: true });
        return parsed.data as Extract<T, { ok: true }>;
      } catch (error) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: errorMessage(error) });
        span.setAttribute('error.type', errorCode(error));
        throw error;
      } finally {
        span.end();
      }
    },
  );
}

export interface HandlerOptions<T> {
  schema: z.ZodType<T>;
  log: Logger;
  rejects: RejectCounter;
  /** Queue group: several brokers share the work instead of each doing it. */
  queue?: string;
  /** For events on `rswap.v1.host.<H>.*`: the payload's `host` must be H. */
  checkHostToken?: boolean;
}

function parseFailure(error: z.ZodError): string {
  return error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`).join('; ');
}

/**
 * Subscribes and runs `handler` for each valid message, inside a `process <template>` span joined to
 * the sender's trace. The handler's return value is the reply (when the message asked for one).
 */
export function handle<T>(
  nc: NatsConnection,
  subject: string,
  options: HandlerOptions<T>,
  handler: (data: T, msg: Msg) => Promise<unknown>,
): void {
  const { schema, log, rejects } = options;
  nc.subscribe(subject, {
    queue: options.queue,
    callback: (subError, msg) => {
      if (subError) {
        log.error({ err: subError, subject }, 'subscription error');
        return;
      }
      const parent = propagation.extract(context.active(), msg.headers, getter);
      const { name, attributes } = messagingSpan('process', msg.subject);
      const span = tracer.startSpan(name, { kind: SpanKind.CONSUMER, attributes }, parent);
      void context.with(trace.setSpan(parent, span), async () => {
        const reject = (code: ErrorCode, message: string) => {
          rejects.add(code);
          span.setStatus({ code: SpanStatusCode.ERROR, message });
          span.setAttribute('error.type', code);
          log.warn({ subject: msg.subject, code, reason: message }, 'message rejected');
          if (msg.reply) msg.respond(JSON.stringify({ ok: false, error: { code, message } }));
        };
        // A host's event asks for the answer on that host's own inbox: an answer sent anywhere else
        // (another identity's inbox, where it could pass for a reply that identity awaits) is not
        // sent, and the event is dropped.
        const host = options.checkHostToken ? hostOfSubject(msg.subject) : undefined;
        if (host && msg.reply?.startsWith('_INBOX_') && !msg.reply.startsWith(`${inboxPrefix(host)}.`)) {
          rejects.add(ErrorCodes.SPOOFED_HOST);
          span.setStatus({ code: SpanStatusCode.ERROR, message: 'reply subject of another identity' });
          log.warn({ subject: msg.subject, reply: msg.reply }, `message rejected: a reply from '${host}' may only go to ${inboxPrefix(host)}.>`);
          span.end();
          return;
        }
        try {
          let raw: unknown;
          try {
            raw = JSON.parse(msg.string());
          } catch {
            return reject(ErrorCodes.BAD_MESSAGE, `not JSON on '${msg.subject}'`);
          }
          const parsed = schema.safeParse(raw);
          if (!parsed.success) return reject(ErrorCodes.BAD_MESSAGE, `invalid message on '${msg.subject}': ${parseFailure(parsed.error)}`);
          if (options.checkHostToken) {
            const token = hostOfSubject(msg.subject);
            const claimed = (parsed.data as { host?: string }).host;
            if (token !== claimed) return reject(ErrorCodes.SPOOFED_HOST, `host '${claimed}' may not publish on '${msg.subject}'`);
          }
          const result = await handler(parsed.data, msg);
          if (msg.reply) msg.respond(JSON.stringify({ ok: true, ...(result as object | undefined) }));
        } catch (error) {
          reject(errorCode(error), errorMessage(error));
        } finally {
          span.end();
        }
      });
    },
  });
}
