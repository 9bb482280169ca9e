import { readFile } from 'node:fs/promises';
import { cpus, release, totalmem } from 'node:os';

/** A bench's command-line option: the value after `--name`, or the fallback. */
export function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}

/** What every bench's meta.json starts with: when, the command that ran, the machine, its page-cluster. */
export async function runMeta(): Promise<{ at: string; command: string; machine: Record<string, unknown>; pageCluster: string }> {
  return {
    at: new Date().toISOString(),
    command: `node ${process.argv.slice(1).map((a) => (a.includes(' ') ? `'${a}'` : a)).join(' ')}`,
    machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memoryBytes: totalmem(), kernel: release() },
    pageCluster: (await readFile('/proc/sys/vm/page-cluster', 'utf8')).trim(),
  };
}
