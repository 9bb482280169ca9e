/**
 * A memory workload that proves swap keeps data intact: it fills `--bytes` of incompressible data
 * in 1 MiB chunks (random, so zram or compression cannot cheat), remembers each chunk's SHA-256,
 * then reads every chunk back and compares. Prints one JSON line of results; exits 1 on any
 * mismatch. Run it inside a memory cgroup smaller than --bytes to force swapping.
 *
 *   --passes N        read everything back N times (default 1)
 *   --pause-file F    after the fill, wait until file F exists before verifying (tests use it to
 *                     change the swap devices under the data)
 *   --until-file F    keep reading everything back, pass after pass, until file F exists
 *   --idle-ms N       sleep N ms between passes (a workload that flaps between busy and idle)
 *   --fill-mib-per-s N  fill at most this fast (a workload that grows at a stated rate)
 *   --progress        JSON lines {"phase","done","total"} on stderr while it runs
 *   --mark TEXT       start every 4 KiB page with TEXT (the rest stays random): a pattern a test
 *                     can search for where the pages were swapped to
 */
import { createHash, randomFillSync } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { parseBytes } from '../shared/units.js';

const CHUNK = 1024 * 1024;

function vmstat(field: string): number {
  const match = new RegExp(`^${field} (\\d+)$`, 'm').exec(readFileSync('/proc/vmstat', 'utf8'));
  return match ? Number(match[1]) : 0;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const bytesArg = args[args.indexOf('--bytes') + 1];
  if (!args.includes('--bytes') || !bytesArg) {
    console.error('usage: workload --bytes SIZE [--passes N]');
    process.exit(2);
  }
  const passes = args.includes('--passes') ? Number(args[args.indexOf('--passes') + 1]) : 1;
  const pauseFile = args.includes('--pause-file') ? args[args.indexOf('--pause-file') + 1] : undefined;
  const untilFile = args.includes('--until-file') ? args[args.indexOf('--until-file') + 1] : undefined;
  const idleMs = args.includes('--idle-ms') ? Number(args[args.indexOf('--idle-ms') + 1]) : 0;
  const progress = args.includes('--progress');
  const fillRate = args.includes('--fill-mib-per-s') ? Number(args[args.indexOf('--fill-mib-per-s') + 1]) : Infinity;
  const mark = args.includes('--mark') ? Buffer.from(args[args.indexOf('--mark') + 1] ?? '') : undefined;
  const report = (phase: string, done: number, total: number) => {
    if (progress && (done % 16 === 0 || done === total)) process.stderr.write(`${JSON.stringify({ phase, done, total })}\n`);
  };
  const chunks = Math.ceil(parseBytes(bytesArg) / CHUNK);
  const started = performance.now();
  const swapInBefore = vmstat('pswpin');
  const data: Buffer[] = [];
  const digests: string[] = [];
  for (let i = 0; i < chunks; i += 1) {
    const chunk = Buffer.allocUnsafeSlow(CHUNK);
    randomFillSync(chunk);
    if (mark) for (let page = 0; page < CHUNK; page += 4096) mark.copy(chunk, page);
    data.push(chunk);
    digests.push(createHash('sha256').update(chunk).digest('hex'));
    report('fill', i + 1, chunks);
    // At a stated rate: chunk i+1 is due (i+1)/rate seconds after the start.
    const aheadMs = ((i + 1) / fillRate) * 1000 - (performance.now() - started);
    if (aheadMs > 0) await new Promise((r) => setTimeout(r, aheadMs));
  }
  const filledMs = performance.now() - started;
  let pausedMs = 0;
  if (pauseFile) {
    process.stderr.write(`${JSON.stringify({ phase: 'paused', file: pauseFile })}\n`);
    const pausedAt = performance.now();
    while (!existsSync(pauseFile)) await new Promise((r) => setTimeout(r, 100));
    pausedMs = performance.now() - pausedAt;
  }
  let corrupted = 0;
  let pass = 0;
  for (; pass < passes || (untilFile !== undefined && !existsSync(untilFile)); pass += 1) {
    if (pass > 0 && idleMs > 0) {
      process.stderr.write(`${JSON.stringify({ phase: 'idle' })}\n`);
      await new Promise((r) => setTimeout(r, idleMs));
      pausedMs += idleMs;
    }
    for (let i = 0; i < chunks; i += 1) {
      if (createHash('sha256').update(data[i]!).digest('hex') !== digests[i]) corrupted += 1;
      report(passes > 1 || untilFile ? `verify ${pass + 1}` : 'verify', i + 1, chunks);
    }
  }
  const result = {
    bytes: chunks * CHUNK,
    chunks,
    corruptedChunks: corrupted,
    passes: pass,
    fillMs: Math.round(filledMs),
    totalMs: Math.round(performance.now() - started - pausedMs), // the pause is not counted
    pausedMs: Math.round(pausedMs),
    pswpinDelta: vmstat('pswpin') - swapInBefore,
  };
  console.log(JSON.stringify(result));
  process.exit(corrupted === 0 ? 0 : 1);
}

void main();
