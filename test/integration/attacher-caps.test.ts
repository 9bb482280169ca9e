/**
 * The attacher refuses an attach before any login when its host already has --max-swap-areas swap
 * areas: swapon would fail past the kernel's limit (32) only after the login, the self-test and
 * mkswap. And the monitor counts as its room only the swap areas its own attacher recorded. Real
 * /proc/swaps with a real swap file this test adds (and removes). Run as root.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, rm, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { execa } from 'execa';
import { Attacher } from '../../services/attacher/attacher.js';
import type { Initiator } from '../../services/attacher/initiator.js';
import { createRunner } from '../../shared/runner.js';
import { readSwaps } from '../../shared/procfs.js';
import { leaseSwap } from '../../services/monitor/monitor.js';
import { leaseDevices, readAttachRecord, writeAttachRecord } from '../../shared/attach-record.js';

const SWAPFILE = `/var/tmp/rswap-test-swap-areas-${process.pid}.swap`;
let stateDir: string;

before(async () => {
  stateDir = await mkdtemp(join(tmpdir(), 'rswap-attacher-caps-'));
  await execa('dd', ['if=/dev/zero', `of=${SWAPFILE}`, 'bs=1M', 'count=16', 'status=none']);
  await execa('chmod', ['600', SWAPFILE]);
  await execa('mkswap', [SWAPFILE]);
  await execa('swapon', ['-p', '1', SWAPFILE]);
});

after(async () => {
  if ((await readSwaps()).some((a) => a.path === SWAPFILE)) await execa('swapoff', [SWAPFILE]);
  await rm(SWAPFILE, { force: true });
  await rm(stateDir, { recursive: true, force: true });
});

test('attacher caps - at --max-swap-areas, an attach is refused before any login', async () => {
  const areas = (await readSwaps()).length;
  assert.ok(areas >= 1, 'the test\'s own swap file is on');
  const logins: string[] = [];
  // Records whether the attach got as far as a login; it must not.
  const initiator: Initiator = {
    kind: 'userspace',
    sealed: false,
    login: async (leaseId) => (logins.push(leaseId), '/dev/null'),
    logout: async () => {},
    dropCaches: async () => {},
    probePath: () => '/dev/null',
    failIo: async () => {},
  };
  const log = pino({ level: 'silent' });
  const attacher = new Attacher(createRunner(log), initiator, { host: 'host-b', stateDir, swapoffMarginBytes: 0, swapoffTimeoutMs: 10_000, maxSwapAreas: areas }, log);
  await assert.rejects(
    attacher.attach({ leaseId: 'l-0123456789ab', borrower: 'host-b', lender: 'host-a', sizeBytes: 64 * 1024 ** 2, target: { portal: '198.18.0.11:3260', iqn: 'iqn.2026-11.io.rswap:host-a.l-0123456789ab', lun: 1 }, chap: { user: 'l-0123456789ab', secret: 'abcdefghijkl' } }),
    (error: Error & { code?: string }) => error.code === 'RSWAP_E_NO_CAPACITY' && new RegExp(`${areas} swap areas`).test(error.message),
  );
  assert.deepEqual(logins, [], 'no login was tried');
});

test('lease swap - the monitor counts only the areas its own attacher recorded as its room', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rswap-lease-swap-'));
  try {
    const areas = (await readSwaps()).length;
    const mine = (await readSwaps()).find((a) => a.path === SWAPFILE)!;
    // Before the record: the swap file is someone else's (local swap, or another host's lease).
    assert.deepEqual(await leaseSwap(dir), { freeBytes: 0, usedBytes: 0, otherAreas: areas });
    await mkdir(join(dir, 'leases', 'l-0123456789ab'), { recursive: true });
    const target = { portal: '198.18.0.11:3260', iqn: 'iqn.2026-11.io.rswap:host-a.l-0123456789ab', lun: 1 };
    await writeAttachRecord(dir, { leaseId: 'l-0123456789ab', target, device: SWAPFILE, priority: 1 });
    // A torn record, and one that parses but is no record (no target), count as nothing, for the
    // monitor as for the attacher (one reader, shared/attach-record.ts).
    await mkdir(join(dir, 'leases', 'l-ba9876543210'), { recursive: true });
    await writeFile(join(dir, 'leases', 'l-ba9876543210', 'attach.json'), '{"device":');
    await mkdir(join(dir, 'leases', 'l-ba9876543211'), { recursive: true });
    await writeFile(join(dir, 'leases', 'l-ba9876543211', 'attach.json'), JSON.stringify({ leaseId: 'l-ba9876543211', device: SWAPFILE, priority: 1 }));
    assert.equal(await readAttachRecord(dir, 'l-ba9876543210'), undefined);
    assert.equal(await readAttachRecord(dir, 'l-ba9876543211'), undefined);
    assert.deepEqual(await leaseDevices(dir), new Set([SWAPFILE]));
    assert.deepEqual(await leaseSwap(dir), { freeBytes: mine.sizeBytes - mine.usedBytes, usedBytes: mine.usedBytes, otherAreas: areas - 1 });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
