/**
 * Runs async tasks one at a time per key, in arrival order; a failed task does not block the next.
 * Used where two handlers must not interleave: tid allocation in tgtd, swap priority decisions,
 * two events for one borrower.
 */
export class KeyedQueue {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const next = (this.tails.get(key) ?? Promise.resolve()).catch(() => undefined).then(task);
    this.tails.set(key, next);
    void next
      .finally(() => {
        if (this.tails.get(key) === next) this.tails.delete(key);
      })
      .catch(() => undefined);
    return next;
  }
}

/**
 * Joins a repeated call to the one still in flight for the same key, instead of queueing it again.
 * Agent commands are resent every 10 s while they run (a lost message is otherwise lost for
 * good); behind a one-at-a-time queue each resend would wait its turn and then redo the whole
 * check, so a swap-off that takes minutes would pile up dozens of copies of itself.
 */
export class SingleFlight {
  private readonly flights = new Map<string, Promise<unknown>>();

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const flying = this.flights.get(key);
    if (flying) return flying as Promise<T>;
    const flight = task().finally(() => this.flights.delete(key));
    this.flights.set(key, flight);
    return flight;
  }

  /** How many keys are in flight (for tests and logs). */
  get size(): number {
    return this.flights.size;
  }
}
