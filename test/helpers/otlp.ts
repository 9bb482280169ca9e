/**
 * A real OTLP/HTTP trace receiver for tests: POST /v1/traces with the JSON encoding (what
 * @opentelemetry/exporter-trace-otlp-http sends), answered as the spec says; spans kept in memory.
 */
import { createServer, type Server } from 'node:http';

export interface ReceivedSpan {
  service: string;
  /** The attributes of the process that sent it (service.name, service.instance.id, ...). */
  resource: Record<string, unknown>;
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  status: { code?: number; message?: string };
  attributes: Record<string, unknown>;
}

type AnyValue = { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number };
type KeyValue = { key: string; value: AnyValue };

const plain = (attributes: KeyValue[] = []) =>
  Object.fromEntries(attributes.map(({ key, value }) => [key, value.stringValue ?? value.intValue ?? value.boolValue ?? value.doubleValue]));

export interface OtlpReceiver {
  url: string;
  spans: ReceivedSpan[];
  requests: number;
  close(): Promise<void>;
}

export async function startOtlpReceiver(host: string, port: number, publicHost = host): Promise<OtlpReceiver> {
  const receiver: OtlpReceiver = { url: `http://${publicHost}:${port}`, spans: [], requests: 0, close: async () => {} };
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk: Buffer) => (body += chunk.toString()));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces' || !/json/.test(req.headers['content-type'] ?? '')) {
        res.writeHead(415).end();
        return;
      }
      receiver.requests += 1;
      const payload = JSON.parse(body) as {
        resourceSpans: Array<{ resource: { attributes: KeyValue[] }; scopeSpans: Array<{ spans: Array<Record<string, unknown>> }> }>;
      };
      for (const rs of payload.resourceSpans ?? []) {
        const resource = plain(rs.resource.attributes);
        const service = String(resource['service.name']);
        for (const ss of rs.scopeSpans ?? []) {
          for (const span of ss.spans ?? []) {
            receiver.spans.push({
              service,
              resource,
              traceId: String(span.traceId),
              spanId: String(span.spanId),
              ...(span.parentSpanId ? { parentSpanId: String(span.parentSpanId) } : {}),
              name: String(span.name),
              kind: Number(span.kind),
              status: (span.status ?? {}) as ReceivedSpan['status'],
              attributes: plain(span.attributes as KeyValue[]),
            });
          }
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(port, host, resolve));
  receiver.close = () => new Promise((resolve) => server.close(() => resolve()));
  return receiver;
}
