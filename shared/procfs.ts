/** Parsers for the /proc files rswap reads. Pure functions of the text, so they are unit-tested. */
import { readFile } from 'node:fs/promises';

/** /proc/meminfo as bytes by field name (MemAvailable, SwapFree, ...). */
export function parseMeminfo(text: string): Map<string, number> {
  const fields = new Map<string, number>();
  for (const line of text.split('\n')) {
    const match = /^(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+kB)?$/.exec(line.trim());
    if (match) fields.set(match[1]!, Number(match[2]) * (line.includes('kB') ? 1024 : 1));
  }
  return fields;
}

export async function readMeminfo(): Promise<Map<string, number>> {
  return parseMeminfo(await readFile('/proc/meminfo', 'utf8'));
}

export interface SwapArea {
  path: string;
  type: string;
  sizeBytes: number;
  usedBytes: number;
  priority: number;
}

/** /proc/swaps; paths with spaces are octal-escaped by the kernel (\040). */
export function parseSwaps(text: string): SwapArea[] {
  return text
    .split('\n')
    .slice(1)
    .map((line) => line.trim().split(/\s+/))
    .filter((cols) => cols.length >= 5)
    .map(([path, type, size, used, priority]) => ({
      path: unescapeOctal(path!),
      type: type!,
      sizeBytes: Number(size) * 1024,
      usedBytes: Number(used) * 1024,
      priority: Number(priority),
    }));
}

export async function readSwaps(): Promise<SwapArea[]> {
  return parseSwaps(await readFile('/proc/swaps', 'utf8'));
}

export interface Mount {
  source: string;
  target: string;
  fstype: string;
  options: string;
}

export function parseMounts(text: string): Mount[] {
  return text
    .split('\n')
    .map((line) => line.split(' '))
    .filter((cols) => cols.length >= 4)
    .map(([source, target, fstype, options]) => ({
      source: unescapeOctal(source!),
      target: unescapeOctal(target!),
      fstype: fstype!,
      options: options!,
    }));
}

export async function readMounts(): Promise<Mount[]> {
  return parseMounts(await readFile('/proc/self/mounts', 'utf8'));
}

function unescapeOctal(text: string): string {
  return text.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}
