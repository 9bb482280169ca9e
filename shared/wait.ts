/**
 * Polls `probe` until it returns a value (anything but undefined or false) and returns that value;
 * throws `<what> not ready within <timeoutMs>ms` past the deadline. A probe still running at the
 * deadline gets a grace (as long as the wait, at most 10 s) to answer; one that hangs past it ends
 * the wait (it is left to finish on its own): a hung probe must not hang the wait. An error thrown
 * by `probe` ends the wait at once: a probe that may fail while the thing starts catches that itself.
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false>,
  { timeoutMs, intervalMs = 100 }: { timeoutMs: number; intervalMs?: number },
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const overdue = new Promise<'overdue'>((resolve) => {
      timer = setTimeout(() => resolve('overdue'), Math.max(0, deadline - Date.now()) + Math.min(timeoutMs, 10_000));
    });
    const pending = probe();
    const value = await Promise.race([pending, overdue]).finally(() => clearTimeout(timer));
    if (value === 'overdue') {
      pending.catch(() => undefined); // its late failure is nobody's business now
      throw new Error(`${what} not ready within ${timeoutMs}ms (a check hung: no answer ${Math.min(timeoutMs, 10_000)}ms past the deadline)`);
    }
    if (value !== undefined && value !== false) return value as T;
    if (Date.now() >= deadline) throw new Error(`${what} not ready within ${timeoutMs}ms`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
