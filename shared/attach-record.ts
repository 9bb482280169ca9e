/**
 * The attacher's record of each lease it swapped on: `<stateDir>/leases/<id>/attach.json`. The
 * attacher writes it and finds its own work again by it after a restart; the monitor on the same
 * host reads it to tell this host's lease swap areas from any other swap. One reader for both,
 * so they agree on what a record is: one that does not parse or validate (torn by a crash, or
 * written by hand) is no record.
 */
import { readFile, readdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { LeaseId, Target } from './schemas.js';

export const AttachRecord = z.object({
  leaseId: LeaseId,
  target: Target,
  /** The swap area as /proc/swaps names it: /dev/sdX or /dev/mapper/rswap-<lease> (kernel initiator), /dev/loopN (userspace). */
  device: z.string().startsWith('/'),
  priority: z.number().int(),
  /** Whether the swap area encrypts what goes to the lease (absent in records written before sealing). */
  sealed: z.boolean().optional(),
});
export type AttachRecord = z.infer<typeof AttachRecord>;

export const leaseDir = (stateDir: string, leaseId: string) => join(stateDir, 'leases', leaseId);
const recordFile = (stateDir: string, leaseId: string) => join(leaseDir(stateDir, leaseId), 'attach.json');

/** The lease ids with a state folder on this host (a record, or an attach under way). */
export async function heldLeases(stateDir: string): Promise<string[]> {
  return readdir(join(stateDir, 'leases')).catch(() => []);
}

export async function readAttachRecord(stateDir: string, leaseId: string): Promise<AttachRecord | undefined> {
  const text = await readFile(recordFile(stateDir, leaseId), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const parsed = AttachRecord.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** Written whole or not at all (no fsync: after a power cut the swap area is gone anyway). */
export async function writeAttachRecord(stateDir: string, record: AttachRecord): Promise<void> {
  const file = recordFile(stateDir, record.leaseId);
  await writeFile(`${file}.new`, JSON.stringify(record), { mode: 0o600 });
  await rename(`${file}.new`, file);
}

/** The swap devices of every lease this host holds a valid record for. */
export async function leaseDevices(stateDir: string): Promise<Set<string>> {
  const devices = new Set<string>();
  for (const leaseId of await heldLeases(stateDir)) {
    const record = await readAttachRecord(stateDir, leaseId);
    if (record) devices.add(record.device);
  }
  return devices;
}
