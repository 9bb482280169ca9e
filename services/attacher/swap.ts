/** Swap-area decisions (pure) and the self-test that guards mkswap. */
import { randomBytes } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Runner } from '../../shared/runner.js';
import { ErrorCodes, RswapError } from '../../shared/errors.js';
import type { SwapArea } from '../../shared/procfs.js';
import { formatBytes } from '../../shared/units.js';

const MAX_PRIORITY = 32767;

/**
 * Remote areas go above every local one: the kernel fills the highest priority first, and all
 * remote areas share one priority so the kernel stripes pages across them.
 */
export function chooseSwapPriority(areas: SwapArea[], remoteDevices: Set<string>, configured?: number): number {
  const localMax = Math.max(-1, ...areas.filter((a) => !remoteDevices.has(a.path)).map((a) => a.priority));
  const wanted = configured ?? Math.max(100, localMax + 100);
  if (wanted <= localMax) {
    throw new RswapError(ErrorCodes.CONFIG, `swap priority ${wanted} is not above local swap (highest ${localMax})`);
  }
  return Math.min(MAX_PRIORITY, wanted);
}

export interface SwapoffCheck {
  safe: boolean;
  reason: string;
}

/**
 * Swap-off moves every page of the area back to RAM or to other swap; it is safe only when they
 * fit with a margin: used <= MemAvailable + free space of the other areas - margin.
 */
export function swapoffSafety(area: SwapArea, others: SwapArea[], memAvailableBytes: number, marginBytes: number): SwapoffCheck {
  const otherFree = others.reduce((sum, a) => sum + Math.max(0, a.sizeBytes - a.usedBytes), 0);
  const room = memAvailableBytes + otherFree - marginBytes;
  const facts = `${formatBytes(area.usedBytes)} in use, room for ${formatBytes(Math.max(0, room))} (MemAvailable ${formatBytes(memAvailableBytes)} + other swap free ${formatBytes(otherFree)} - margin ${formatBytes(marginBytes)})`;
  return area.usedBytes <= room ? { safe: true, reason: facts } : { safe: false, reason: `swap-off would not fit: ${facts}` };
}

const PATTERN_BYTES = 1024 * 1024; // 1 MiB at each end of the device

/**
 * Writes a random pattern at the start and the end of the device (direct I/O, fsync), drops every
 * cache between the device and the target, reads both back and compares. A device that returns
 * anything else is refused before mkswap can put pages on it.
 */
export async function selfTest(run: Runner, device: string, workDir: string, dropCaches: () => Promise<void>): Promise<void> {
  const pattern = join(workDir, 'selftest.pattern');
  const readBack = join(workDir, 'selftest.read');
  // The device's own size: a sealed one is the lease less its header.
  const sizeBytes = Number((await run('blockdev', ['--getsize64', device])).stdout.trim());
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 2 * PATTERN_BYTES) {
    throw new RswapError(ErrorCodes.SELF_TEST_FAILED, `self-test refused ${device}: its size (${sizeBytes} bytes) is under 2 MiB`);
  }
  const offsetsMiB = [0, Math.floor(sizeBytes / PATTERN_BYTES) - 1];
  const data = randomBytes(PATTERN_BYTES);
  await writeFile(pattern, data, { mode: 0o600 });
  try {
    for (const seek of offsetsMiB) {
      await run('dd', [`if=${pattern}`, `of=${device}`, 'bs=1M', 'count=1', `seek=${seek}`, 'oflag=direct', 'conv=fsync,notrunc', 'status=none']);
    }
    await dropCaches();
    for (const skip of offsetsMiB) {
      await run('dd', [`if=${device}`, `of=${readBack}`, 'bs=1M', 'count=1', `skip=${skip}`, 'iflag=direct', 'status=none']);
      const got = await readFile(readBack);
      if (!got.equals(data)) {
        const firstBad = got.findIndex((byte, i) => byte !== data[i]);
        throw new RswapError(ErrorCodes.SELF_TEST_FAILED, `self-test failed on ${device}: MiB ${skip} read back differs from byte ${firstBad} on`);
      }
    }
  } finally {
    await rm(pattern, { force: true });
    await rm(readBack, { force: true });
  }
}
