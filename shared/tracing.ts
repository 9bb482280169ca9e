/**
 * OpenTelemetry for one rswap process. Trace ids always exist (a tracer provider is registered, so
 * log lines and lease records carry them), but spans leave the process only when
 * OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set: then a batch processor
 * exports them over OTLP/HTTP, e.g. to Jaeger on :4318. Otherwise recording costs an allocation per
 * span and nothing else.
 *
 * The tracer provider and the OTLP/HTTP exporter only, not the all-in-one Node SDK: that one loads
 * every exporter it could configure (gRPC, logs, metrics, Zipkin), 4,000 more files at each start.
 * In the testbed's VM under TCG, `rswap --help` took 41 s with it and 14 s without, and the VM's
 * agents were up 182-201 s after boot with it, 66 s without.
 */
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { BatchSpanProcessor, NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { defaultResource, detectResources, envDetector, resourceFromAttributes, type Resource } from '@opentelemetry/resources';
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from '@opentelemetry/semantic-conventions';
import { ROOT_CONTEXT, defaultTextMapGetter, type Context } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { hostname } from 'node:os';
import { version } from './version.js';

let shutdown: (() => Promise<void>) | undefined;

export function otlpEndpoint(): string | undefined {
  return process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || process.env.OTEL_EXPORTER_OTLP_ENDPOINT || undefined;
}

/**
 * What this process's spans say about it: service.name `rswap-<service>`, service.version (of
 * package.json), service.instance.id `<host>-<pid>` (the host and pid of its log lines), and
 * rswap.host. These are defaults an operator may replace: OTEL_RESOURCE_ATTRIBUTES overrides any of
 * them, and OTEL_SERVICE_NAME wins over a service.name there (the SDK spec's rule, applied by
 * @opentelemetry/resources' env detector, which also percent-decodes the values).
 */
export function serviceResource(service: string, host?: string): Resource {
  const ours = resourceFromAttributes({
    [ATTR_SERVICE_NAME]: `rswap-${service}`,
    [ATTR_SERVICE_VERSION]: version,
    'service.instance.id': `${host ?? hostname()}-${process.pid}`,
    ...(host ? { 'rswap.host': host } : {}),
  });
  return defaultResource().merge(ours).merge(detectResources({ detectors: [envDetector] }));
}

/** Starts tracing for this process, once (see serviceResource for what its spans carry). */
export function startTracing(service: string, host?: string): { exporting: boolean } {
  if (shutdown) return { exporting: otlpEndpoint() !== undefined };
  const resource = serviceResource(service, host);
  const exporting = otlpEndpoint() !== undefined;
  // Spans leave every half second, so a lease's trace is complete in Jaeger soon after it is.
  const spanProcessors = exporting ? [new BatchSpanProcessor(new OTLPTraceExporter(), { scheduledDelayMillis: 500 })] : [];
  const provider = new NodeTracerProvider({ resource, spanProcessors });
  provider.register(); // the global tracer, W3C trace context, and an async-hooks context manager
  shutdown = () => provider.shutdown();
  return { exporting };
}

/** Sends what is still buffered; called on the way out. */
export async function stopTracing(): Promise<void> {
  await shutdown?.().catch(() => undefined);
}

/** The context of a W3C traceparent (a lease's), to continue its trace later. */
const w3c = new W3CTraceContextPropagator();
export function contextOf(traceparent: string | undefined): Context {
  return traceparent ? w3c.extract(ROOT_CONTEXT, { traceparent }, defaultTextMapGetter) : ROOT_CONTEXT;
}

/** The trace id inside a W3C traceparent, or undefined. */
export function traceIdOf(traceparent: string | undefined): string | undefined {
  return /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/.exec(traceparent ?? '')?.[1];
}
