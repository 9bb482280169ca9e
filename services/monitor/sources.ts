/**
 * Where a monitor reads memory from: the whole machine, or one memory cgroup (v1 or v2). Each
 * source turns its files into one Reading of gauges and cumulative counters; the parsers are pure
 * functions of the file texts, so they are unit-tested with real kernel output.
 */
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseMeminfo } from '../../shared/procfs.js';

export const PAGE = 4096;

export interface Reading {
  at: number;
  /** The scope's memory: MemTotal for the machine, the limit for a cgroup. */
  limitBytes: number;
  usedBytes: number;
  /** What the scope can still use without swapping: MemAvailable, or limit - (usage - inactive file cache). */
  availableBytes: number;
  /** availableBytes net of lease pages promised but not yet written, where the monitor knows them. */
  headroomBytes?: number;
  /** What the host has promised to its borrowers (set by the monitor where it lends). */
  lentBytes?: number;
  /** On a host without swap of its own: the free room in its own leases' swap areas. */
  swapFreeBytes?: number;
  swapUsedBytes: number;
  /** The scope does not count its swap (a cgroup without swap accounting): swapUsedBytes reads 0. */
  swapUncounted?: true;
  /** Cumulative counters (they only grow). */
  majorFaults: number;
  refaults: number;
  /** Pages swapped out since boot, where the scope counts them (machine, cgroup v2); else undefined. */
  swapOuts?: number;
  /** Total microseconds some task stalled on memory (PSI), where the scope has it. */
  stallUs?: number;
}

export interface Source {
  /** 'machine' or 'cgroup:<path>' */
  scope: string;
  /** The file a PSI trigger can be written to, or the cgroup v1 folder for memory.pressure_level. */
  notify: { kind: 'psi'; path: string } | { kind: 'v1-pressure-level'; dir: string } | undefined;
  read(): Promise<Reading>;
}

/** "key value" lines (memory.stat, /proc/vmstat) as numbers. */
export function parseFlatKeyed(text: string): Map<string, number> {
  const fields = new Map<string, number>();
  for (const line of text.split('\n')) {
    const [key, value] = line.trim().split(/\s+/);
    if (key && value !== undefined && /^\d+$/.test(value)) fields.set(key, Number(value));
  }
  return fields;
}

/** The `total=` of the "some" line of a PSI file (/proc/pressure/memory, memory.pressure). */
export function parsePsiSomeTotal(text: string): number | undefined {
  const match = /^some .*total=(\d+)/m.exec(text);
  return match ? Number(match[1]) : undefined;
}

const num = (map: Map<string, number>, key: string) => map.get(key) ?? 0;

export function machineReading(at: number, meminfo: string, vmstat: string, psi: string | undefined): Reading {
  const mem = parseMeminfo(meminfo);
  const vm = parseFlatKeyed(vmstat);
  const total = num(mem, 'MemTotal');
  const available = num(mem, 'MemAvailable');
  return {
    at,
    limitBytes: total,
    usedBytes: total - available,
    availableBytes: available,
    swapUsedBytes: num(mem, 'SwapTotal') - num(mem, 'SwapFree'),
    majorFaults: num(vm, 'pgmajfault'),
    refaults: num(vm, 'workingset_refault_anon'),
    swapOuts: num(vm, 'pswpout'),
    ...(psi !== undefined ? { stallUs: parsePsiSomeTotal(psi) } : {}),
  };
}

/** cgroup v1: memory.usage_in_bytes, memory.limit_in_bytes and the hierarchical total_* of memory.stat. */
export function cgroupV1Reading(at: number, usage: string, limit: string, stat: string, machineTotal: number): Reading {
  const s = parseFlatKeyed(stat);
  const limitBytes = Math.min(Number(limit.trim()), machineTotal);
  const usedBytes = Number(usage.trim());
  return {
    at,
    limitBytes,
    usedBytes,
    availableBytes: Math.max(0, limitBytes - usedBytes + num(s, 'total_inactive_file')),
    swapUsedBytes: num(s, 'total_swap'),
    ...(s.has('total_swap') ? {} : { swapUncounted: true as const }),
    majorFaults: num(s, 'total_pgmajfault'),
    refaults: num(s, 'total_workingset_refault_anon'),
  };
}

/** cgroup v2: memory.current, memory.max ("max" = no limit), memory.swap.current, memory.stat, memory.pressure. */
export function cgroupV2Reading(at: number, current: string, max: string, swapCurrent: string, stat: string, pressure: string, machineTotal: number): Reading {
  const s = parseFlatKeyed(stat);
  const limitBytes = max.trim() === 'max' ? machineTotal : Math.min(Number(max.trim()), machineTotal);
  const usedBytes = Number(current.trim());
  return {
    at,
    limitBytes,
    usedBytes,
    availableBytes: Math.max(0, limitBytes - usedBytes + num(s, 'inactive_file')),
    swapUsedBytes: Number(swapCurrent.trim() || 0),
    ...(swapCurrent.trim() === '' ? { swapUncounted: true as const } : {}),
    majorFaults: num(s, 'pgmajfault'),
    refaults: num(s, 'workingset_refault_anon'),
    ...(s.has('pswpout') ? { swapOuts: num(s, 'pswpout') } : {}),
    stallUs: parsePsiSomeTotal(pressure),
  };
}

const read = (path: string) => readFile(path, 'utf8');
const exists = (path: string) => access(path).then(() => true, () => false);

async function machineTotal(): Promise<number> {
  return parseMeminfo(await read('/proc/meminfo')).get('MemTotal') ?? 0;
}

export async function openSource(scope: string): Promise<Source> {
  if (scope === 'machine') {
    const hasPsi = await exists('/proc/pressure/memory');
    return {
      scope,
      notify: hasPsi ? { kind: 'psi', path: '/proc/pressure/memory' } : undefined,
      read: async () =>
        machineReading(Date.now(), await read('/proc/meminfo'), await read('/proc/vmstat'), hasPsi ? await read('/proc/pressure/memory') : undefined),
    };
  }
  if (!scope.startsWith('cgroup:')) throw new Error(`scope must be 'machine' or 'cgroup:<path>', not '${scope}'`);
  const dir = scope.slice('cgroup:'.length);
  if (!dir.startsWith('/')) throw new Error(`the cgroup path must be absolute: '${dir}'`);
  const total = await machineTotal();
  if (await exists(join(dir, 'memory.usage_in_bytes'))) {
    return {
      scope,
      notify: (await exists(join(dir, 'memory.pressure_level'))) ? { kind: 'v1-pressure-level', dir } : undefined,
      read: async () =>
        cgroupV1Reading(Date.now(), await read(join(dir, 'memory.usage_in_bytes')), await read(join(dir, 'memory.limit_in_bytes')), await read(join(dir, 'memory.stat')), total),
    };
  }
  if (await exists(join(dir, 'memory.current'))) {
    return {
      scope,
      notify: { kind: 'psi', path: join(dir, 'memory.pressure') },
      read: async () =>
        cgroupV2Reading(
          Date.now(),
          await read(join(dir, 'memory.current')),
          await read(join(dir, 'memory.max')),
          await read(join(dir, 'memory.swap.current')).catch(() => ''), // no swap accounting
          await read(join(dir, 'memory.stat')),
          await read(join(dir, 'memory.pressure')),
          total,
        ),
    };
  }
  throw new Error(`'${dir}' is not a memory cgroup (no memory.usage_in_bytes or memory.current)`);
}
