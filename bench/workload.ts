/**
 * A memory workload that proves swap keeps data intact: it fills `--bytes` of incompressible data
 * in 1 MiB chunks (random, so zram or compression cannot cheat), remembers each chunk's SHA-256,
 * then reads every chunk back and compares. Prints one JSON line of results; exits 1 on any
 * mismatch. Run it inside a memory cgroup smaller than --bytes to force swapping.
 */
import { createHash, randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseBytes } from '../shared/units.js';

const CHUNK = 1024 * 1024;

function vmstat(field: string): number {
  const match = new RegExp(`^${field} (\\d+)$`, 'm').exec(readFileSync('/proc/vmstat', 'utf8'));
  return match ? Number(match[1]) : 0;
}

function main(): void {
  const args = process.argv.slice(2);
  const bytesArg = args[args.indexOf('--bytes') + 1];
  if (!args.includes('--bytes') || !bytesArg) {
    console.error('usage: workload --bytes SIZE [--passes N]');
    process.exit(2);
  }
  const passes = args.includes('--passes') ? Number(args[args.indexOf('--passes') + 1]) : 1;
  const chunks = Math.ceil(parseBytes(bytesArg) / CHUNK);
  const started = performance.now();
  const swapInBefore = vmstat('pswpin');
  const data: Buffer[] = [];
  const digests: string[] = [];
  for (let i = 0; i < chunks; i += 1) {
    const chunk = Buffer.allocUnsafeSlow(CHUNK);
    randomFillSync(chunk);
    data.push(chunk);
    digests.push(createHash('sha256').update(chunk).digest('hex'));
  }
  const filledMs = performance.now() - started;
  let corrupted = 0;
  for (let pass = 0; pass < passes; pass += 1) {
    for (let i = 0; i < chunks; i += 1) {
      if (createHash('sha256').update(data[i]!).digest('hex') !== digests[i]) corrupted += 1;
    }
  }
  const result = {
    bytes: chunks * CHUNK,
    chunks,
    corruptedChunks: corrupted,
    fillMs: Math.round(filledMs),
    totalMs: Math.round(performance.now() - started),
    pswpinDelta: vmstat('pswpin') - swapInBefore,
  };
  console.log(JSON.stringify(result));
  process.exit(corrupted === 0 ? 0 : 1);
}

main();
