import { pino, type Logger } from 'pino';
import { trace } from '@opentelemetry/api';

export type { Logger };

/**
 * One structured logger per process. Each line inside an active span carries trace_id and span_id,
 * so a lease's log lines can be found from its trace and the other way round.
 */
export function createLogger(service: string, host?: string): Logger {
  return pino({
    name: 'rswap',
    level: process.env.RSWAP_LOG_LEVEL ?? 'info',
    base: { service, ...(host ? { host } : {}) },
    mixin() {
      const span = trace.getActiveSpan();
      if (!span) return {};
      const { traceId, spanId } = span.spanContext();
      return { trace_id: traceId, span_id: spanId };
    },
  });
}
