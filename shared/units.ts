/** Sizes with units: "512MiB", "1GiB", "64M" (binary), or a plain byte count. */

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024, kb: 1024, kib: 1024,
  m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1024 ** 4, tib: 1024 ** 4,
};

export const MiB = 1024 ** 2;
export const GiB = 1024 ** 3;

/**
 * Parses a size such as "512MiB" or "1.5GiB" into bytes. Units are binary (k = 1024) because
 * memory and block devices are sized in pages and sectors, never in powers of ten.
 */
export function parseBytes(text: string | number): number {
  if (typeof text === 'number') {
    if (!Number.isSafeInteger(text) || text < 0) throw new RangeError(`invalid size: '${text}'`);
    return text;
  }
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = match ? UNITS[match[2]!.toLowerCase()] : undefined;
  if (!match || unit === undefined) {
    throw new RangeError(`invalid size: '${text}' (expected a number with an optional unit, e.g. 512MiB, 1GiB)`);
  }
  const bytes = Math.round(Number(match[1]) * unit);
  if (!Number.isSafeInteger(bytes)) throw new RangeError(`size out of range: '${text}'`);
  return bytes;
}

/** Formats bytes with the largest binary unit that keeps the number >= 1: 536870912 -> "512MiB". */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let index = 0;
  while (Math.abs(value) >= 1024 && index < units.length - 1) {
    value /= 1024;
    index += 1;
  }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(1);
  return `${text}${units[index]}`;
}

export function roundUpToMiB(bytes: number): number {
  return Math.ceil(bytes / MiB) * MiB;
}
