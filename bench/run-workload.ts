/** Starts bench/workload.js inside a memory cgroup and follows its progress (demo, bench, tests). */
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { wrapInCgroup } from '../shared/cgroup.js';

const WORKLOAD = resolve(fileURLToPath(import.meta.url), '../workload.js');

export interface WorkloadReport {
  bytes: number;
  chunks: number;
  corruptedChunks: number;
  passes: number;
  fillMs: number;
  totalMs: number;
  pausedMs: number;
  pswpinDelta: number;
}

export interface Progress {
  phase: string;
  done?: number;
  total?: number;
}

export interface RunningWorkload {
  pid: number | undefined;
  /** Resolves with the report; rejects with its stderr if it failed or was killed. */
  result: Promise<WorkloadReport>;
  kill(): void;
}

export function startWorkload(cgroupPath: string, args: string[], onProgress: (p: Progress) => void = () => {}): RunningWorkload {
  const command = wrapInCgroup(cgroupPath, [process.execPath, WORKLOAD, '--progress', ...args]);
  const child = execa(command[0]!, command.slice(1), { reject: false, timeout: 1_800_000 });
  let stderr = '';
  let partial = ''; // a line split across two reads is parsed once whole
  child.stderr!.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split('\n');
    partial = lines.pop()!;
    for (const line of lines.filter(Boolean)) {
      try {
        onProgress(JSON.parse(line) as Progress);
      } catch {
        stderr += `${line}\n`;
      }
    }
  });
  const result = child.then((r) => {
    if (partial) stderr += `${partial}\n`;
    if (r.exitCode !== 0 || !r.stdout) {
      throw new Error(`workload ${r.signal ? `killed by ${r.signal}` : `exited with ${r.exitCode}`}: ${stderr.trim() || String(r.stdout)}`);
    }
    return JSON.parse(String(r.stdout)) as WorkloadReport;
  });
  return { pid: child.pid, result, kill: () => child.kill('SIGKILL') };
}
