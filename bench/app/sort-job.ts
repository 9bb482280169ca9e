/**
 * The batch job of the application bench: sort `--bytes` of random doubles in place, in one
 * process, and check the result. Prints one JSON line: how long the fill and the sort took.
 *
 *   node dist/bench/app/sort-job.js --bytes 256MiB [--seed 1]
 *
 * The array is filled from a seeded xorshift, so every run sorts the same numbers; a
 * Float64Array's sort without a comparator runs in place (no second copy of the data).
 */
import { parseBytes } from '../../shared/units.js';
import { xorshift32 } from '../swap/workload.js';

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}

const bytes = parseBytes(option('bytes', '64MiB'));
const seed = Number(option('seed', '1'));
const count = Math.floor(bytes / 8);
const started = process.hrtime.bigint();
const data = new Float64Array(count);
const next = xorshift32(seed);
for (let i = 0; i < count; i += 1) data[i] = next() * 4294967296 + next();
const filled = process.hrtime.bigint();
data.sort();
const sorted = process.hrtime.bigint();
for (let i = 1; i < count; i += 1) {
  if (data[i - 1]! > data[i]!) {
    console.error(`not sorted at ${i}`);
    process.exit(2);
  }
}
const s = (a: bigint, b: bigint) => Number(b - a) / 1e9;
console.log(JSON.stringify({ bytes: count * 8, fillS: s(started, filled), sortS: s(filled, sorted) }));
