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
    const answer = await within(probe(), Math.max(0, deadline - Date.now()) + Math.min(timeoutMs, 10_000));
    if (!answer.done) throw new Error(`${what} not ready within ${timeoutMs}ms (a check hung: no answer ${Math.min(timeoutMs, 10_000)}ms past the deadline)`);
    const value = answer.value;
    if (value !== undefined && value !== false) return value;
    if (Date.now() >= deadline) throw new Error(`${what} not ready within ${timeoutMs}ms`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/**
 * `task`'s outcome if it settles within `ms`, else `{ done: false }` (the task is left to finish on
 * its own; a late failure of it is ignored). A failure within `ms` is thrown.
 */
export async function within<T>(task: Promise<T>, ms: number): Promise<{ done: true; value: T } | { done: false }> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<{ done: false }>((resolve) => {
    timer = setTimeout(() => resolve({ done: false }), ms);
  });
  const answer = await Promise.race([task.then((value) => ({ done: true as const, value })), late]).finally(() => clearTimeout(timer));
  if (!answer.done) task.catch(() => undefined);
  return answer;
}
