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
