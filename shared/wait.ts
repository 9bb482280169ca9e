/**
 * Polls `probe` until it returns a value (anything but undefined or false) and returns that value;
 * throws `<what> not ready within <timeoutMs>ms` past the deadline. An error thrown by `probe` ends
 * the wait at once: a probe that may fail while the thing starts catches that itself.
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined | false>,
  { timeoutMs, intervalMs = 100 }: { timeoutMs: number; intervalMs?: number },
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() >= deadline) throw new Error(`${what} not ready within ${timeoutMs}ms`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
