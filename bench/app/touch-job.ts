/**
 * Per-fault latency, as a program sees it: fill `--bytes` of random data (more than the cgroup
 * holds, so most of it is pushed out to swap), then read one byte of `--touches` uniformly random
 * pages, one at a time, timing each read. A page still in RAM reads in well under a microsecond; a
 * page in swap costs a fault and a swap-in, so the slow reads are the faults. Prints one JSON
 * line: the fill time and every read's latency in nanoseconds (the bench takes percentiles and
 * counts the cgroup's major faults around it).
 *
 *   node dist/bench/app/touch-job.js --bytes 256MiB --touches 20000 [--seed 1]
 */
import { parseBytes } from '../../shared/units.js';
import { xorshift32 } from '../swap/workload.js';

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}

const PAGE = 4096;
const bytes = parseBytes(option('bytes', '64MiB'));
const touches = Number(option('touches', '20000'));
const seed = Number(option('seed', '1'));
const pages = Math.floor(bytes / PAGE);

const started = process.hrtime.bigint();
const words = new Uint32Array((pages * PAGE) / 4);
const next = xorshift32(seed);
for (let i = 0; i < words.length; i += 1) words[i] = next();
const fillS = Number(process.hrtime.bigint() - started) / 1e9;

// Tell the bench the fill is done, then wait for its go: it reads the cgroup's counters between.
process.stdout.write('filled\n');
await new Promise<void>((resolve) => process.stdin.once('data', () => resolve()));
process.stdin.destroy(); // an open stdin would keep this process alive after its report

const latenciesNs: number[] = new Array(touches);
const pick = xorshift32(seed ^ 0x7f4a7c15);
let sum = 0;
for (let i = 0; i < touches; i += 1) {
  const word = (pick() % pages) * (PAGE / 4);
  const t0 = process.hrtime.bigint();
  sum += words[word]!;
  latenciesNs[i] = Number(process.hrtime.bigint() - t0);
}
console.log(JSON.stringify({ fillS, sum, latenciesNs }));
