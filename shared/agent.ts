/** What the two host agents share: periodic announce and reconcile loops. */
import type { Logger } from './log.js';
import { errorMessage } from './errors.js';

import type { NatsConnection } from '@nats-io/transport-node';
import { subjects } from './subjects.js';

/** Announces now, every `intervalMs`, and whenever a broker starts and says hello. */
export function announceLoop(nc: NatsConnection, intervalMs: number, log: Logger, announce: () => void): () => void {
  const stop = every(intervalMs, 'announce', log, async () => announce());
  const sub = nc.subscribe(subjects.brokerHello, { callback: () => announce() });
  return () => {
    stop();
    sub.unsubscribe();
  };
}

/** Runs `task` now and then every `intervalMs`, never twice at once; errors are logged, not fatal. */
export function every(intervalMs: number, name: string, log: Logger, task: () => Promise<unknown>): () => void {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try {
      await task();
    } catch (error) {
      log.warn({ task: name, err: errorMessage(error) }, `${name} failed`);
    } finally {
      running = false;
    }
  };
  void tick();
  const timer = setInterval(() => void tick(), intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
