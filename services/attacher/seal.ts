/**
 * Sealed pages: what a borrower swaps to a lease is encrypted on the borrower with a random key
 * made for that lease, which never leaves the borrower's memory, is never written to a file and
 * never appears on a command line.
 * The lender stores ciphertext only. Swap needs no persistence, so the key dies with the lease
 * (or with the borrower), exactly like a Linux "encrypted swap with a random key".
 *
 * Two stacks, one per initiator:
 * - kernel (open-iscsi): dm-crypt over the LUN's disk, a plain mapping (no header) with a random
 *   aes-xts-plain64 key given to `dmsetup` on its standard input; the swap area is /dev/mapper/<name>.
 * - userspace (qemu-storage-daemon): qemu's `luks` driver between the LUN and the FUSE export.
 *   qemu has no header-less format, so the first LUKS_HEADER_BYTES of the lease hold a LUKS header
 *   whose one key slot is locked by a random passphrase; the header is made ahead of the attach
 *   (makeLuksHeader), written onto the LUN, and the passphrase handed over the daemon's QMP socket.
 *
 * What sealing does not give: integrity. A lender that alters ciphertext makes the borrower read
 * garbage for those blocks (XTS has no authentication), not chosen data, and one that writes back
 * a block's older ciphertext rolls it back; it still sees which blocks are written and when.
 * docs/security.md states this.
 */
import { randomBytes } from 'node:crypto';
import { access, open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Runner } from '../../shared/runner.js';
import { ErrorCodes, RswapError, errorMessage } from '../../shared/errors.js';
import type { Qmp } from './qmp.js';

/** How often to try formatting past qemu 7.2's flaky PBKDF2 benchmark (see makeLuksHeader). */
const PBKDF_BENCHMARK_ATTEMPTS = 10;

/** The LUKS1 header qemu writes for aes-256-xts (8 key slots of 4000 stripes): 505 pages. */
export const LUKS_HEADER_BYTES = 2_068_480;

/**
 * qemu's luks options. iter-time is short because the passphrase is 64 random bytes: no key
 * stretching makes it harder to guess, and a slow unlock would only slow down every attach.
 */
export const LUKS_OPTIONS = { 'cipher-alg': 'aes-256', 'cipher-mode': 'xts', 'ivgen-alg': 'plain64', 'hash-alg': 'sha256', 'iter-time': 10 } as const;

/** Hex digits of `bytes` in a new Buffer, never a JS string (which could not be zeroed). */
export function hexBuffer(bytes: Uint8Array): Buffer {
  const digits = Buffer.from('0123456789abcdef');
  const out = Buffer.alloc(bytes.length * 2);
  bytes.forEach((byte, i) => {
    out[2 * i] = digits[byte >> 4]!;
    out[2 * i + 1] = digits[byte & 15]!;
  });
  return out;
}

/** A LUKS header made ahead of an attach, and the passphrase (hex digits) that unlocks it. */
export interface LuksHeader {
  header: Buffer;
  passphrase: Buffer;
}

let headers = 0;

/**
 * Makes a LUKS header (a fresh random master key, locked by a fresh random passphrase) with
 * `qemu-img create`, in `dir`, and reads it back; the file is removed. The passphrase reaches
 * qemu-img on its standard input. This is the slow part of sealing (about 2 s of CPU: qemu times
 * PBKDF2 before it writes a key slot, however short iter-time is), so the userspace initiator makes
 * the next lease's header while no attach waits for it.
 */
export async function makeLuksHeader(run: Runner, dir: string): Promise<LuksHeader> {
  const key = randomBytes(64);
  const passphrase = hexBuffer(key); // a LUKS passphrase must be text: 128 hex digits, 512 bits
  key.fill(0);
  const file = join(dir, `luks-header.${process.pid}.${(headers += 1)}`);
  const options = Object.entries({ 'key-secret': 'seal', ...LUKS_OPTIONS }).map(([k, v]) => `${k}=${v}`).join(',');
  try {
    for (let attempt = 1; ; attempt += 1) {
      try {
        // Through `cat`, so qemu-img's stdin is a pipe it can open by name (Node gives a socket).
        await run('sh', ['-c', 'cat | qemu-img "$@"', 'sh', 'create', '-q', '-f', 'luks', '--object', 'secret,id=seal,file=/dev/stdin', '-o', options, file, '0'], { input: passphrase, timeoutMs: 120_000 });
        break;
      } catch (error) {
        // qemu 7.2 as Debian ships it times its PBKDF2 benchmark with getrusage and gives up when
        // the first (7 ms) round reads 0 ms, now and then (fixed upstream in qemu 9.2/10.0: "crypto:
        // fix bogus error benchmarking pbkdf on fast machines"). It fails before writing anything.
        if (attempt >= PBKDF_BENCHMARK_ATTEMPTS || !/Unable to get accurate CPU usage/.test(errorMessage(error))) throw error;
      }
    }
    const header = await readFile(file);
    if (header.length !== LUKS_HEADER_BYTES) throw new RswapError(ErrorCodes.INTERNAL, `qemu-img made a ${header.length}-byte LUKS header, not ${LUKS_HEADER_BYTES}`);
    return { header, passphrase };
  } catch (error) {
    passphrase.fill(0);
    throw error;
  } finally {
    await rm(file, { force: true });
  }
}

/**
 * Adds the FUSE export of node `base` at `mountpoint` to a running qemu-storage-daemon. Sealed
 * (given a header): the header goes onto the start of the LUN through a raw export at the same
 * mountpoint, flushed; then the passphrase goes to the daemon (built in a Buffer and zeroed after),
 * the luks node opens over the LUN and the daemon drops the passphrase (the node keeps only the
 * master key it unlocked); then the export of the luks node. `seal.passphrase` is zeroed.
 */
export async function exportLun(qmp: Qmp, base: string, mountpoint: string, seal: LuksHeader | undefined): Promise<void> {
  let node = base;
  if (seal) {
    try {
      const lunBytes = await nodeBytes(qmp, base);
      if (!lunBytes || lunBytes <= LUKS_HEADER_BYTES) throw new RswapError(ErrorCodes.NO_CAPACITY, `cannot seal node ${base}: ${lunBytes ?? 'unknown'} bytes, the header alone takes ${LUKS_HEADER_BYTES}`);
      await qmp.execute('block-export-add', { type: 'fuse', id: 'header', 'node-name': base, mountpoint, writable: true });
      const file = await open(mountpoint, 'r+');
      try {
        await file.write(seal.header, 0, seal.header.length, 0);
        await file.sync();
      } finally {
        await file.close();
      }
      await qmp.execute('block-export-del', { id: 'header' });
      await qmp.waitEvent((e) => e.event === 'BLOCK_EXPORT_DELETED' && e.data?.id === 'header', 'the header export\'s removal');
      const line = Buffer.concat([Buffer.from('{"execute":"object-add","arguments":{"qom-type":"secret","id":"seal","format":"raw","data":"'), seal.passphrase, Buffer.from('"}}\n')]);
      try {
        await qmp.send('object-add', line);
      } finally {
        line.fill(0);
      }
      await qmp.execute('blockdev-add', { driver: 'luks', 'node-name': 'sealed', file: base, 'key-secret': 'seal' });
      await qmp.execute('object-del', { id: 'seal' });
      const sealedBytes = await nodeBytes(qmp, 'sealed');
      if (sealedBytes !== lunBytes - LUKS_HEADER_BYTES) {
        throw new RswapError(ErrorCodes.INTERNAL, `sealed node is ${sealedBytes} bytes, expected ${lunBytes - LUKS_HEADER_BYTES} (a LUN of ${lunBytes} less a ${LUKS_HEADER_BYTES}-byte header)`);
      }
      node = 'sealed';
    } finally {
      seal.passphrase.fill(0);
    }
  }
  await qmp.execute('block-export-add', { type: 'fuse', id: 'swap', 'node-name': node, mountpoint, writable: true });
}

async function nodeBytes(qmp: Qmp, name: string): Promise<number | undefined> {
  const nodes = (await qmp.execute('query-named-block-nodes', { flat: true })) as Array<{ 'node-name': string; image: { 'virtual-size': number } }>;
  return nodes.find((n) => n['node-name'] === name)?.image['virtual-size'];
}

/** The device-mapper name of a lease's sealed mapping. */
export function mapperName(leaseId: string): string {
  return `rswap-${leaseId}`;
}

/** A dm-crypt table line in a Buffer: the whole device, aes-xts-plain64 with `keyHex`, IV from sector 0. */
export function dmCryptTable(device: string, sectors: number, keyHex: Buffer): Buffer {
  const isHex = (b: number) => (b >= 0x30 && b <= 0x39) || (b >= 0x61 && b <= 0x66);
  if (keyHex.length !== 128 || !keyHex.every(isHex)) {
    throw new RswapError(ErrorCodes.INTERNAL, 'dm-crypt key must be 64 bytes of hex');
  }
  if (!Number.isInteger(sectors) || sectors <= 0) throw new RswapError(ErrorCodes.NO_CAPACITY, `cannot seal ${device}: ${sectors} sectors`);
  return Buffer.concat([Buffer.from(`0 ${sectors} crypt aes-xts-plain64 `), keyHex, Buffer.from(` 0 ${device} 0\n`)]);
}

const DM_CONTROL = '/dev/mapper/control';
const dm = ['--noudevsync', '--noudevrules'];

/** The names of the device-mapper devices on this host; none where the kernel has no device mapper. */
async function mappings(run: Runner, control: string): Promise<string[]> {
  if (!(await access(control).then(() => true, () => false))) return [];
  const { stdout } = await run('dmsetup', ['info', '-c', '--noheadings', '-o', 'name']);
  return stdout.split('\n').map((l) => l.trim()).filter((l) => l && l !== 'No devices found');
}

/**
 * Maps `device` through dm-crypt with a random key and returns the mapping's path. Idempotent: an
 * existing mapping of this lease is returned as it is (its key is the one in the kernel).
 * `dmsetup` makes the node itself (no udev needed, as in a minimal VM).
 */
export async function openSealedMapping(run: Runner, leaseId: string, device: string, control = DM_CONTROL): Promise<string> {
  const name = mapperName(leaseId);
  if (!(await mappings(run, control)).includes(name)) {
    const sectors = Number((await run('blockdev', ['--getsz', device])).stdout.trim());
    const key = randomBytes(64);
    const keyHex = hexBuffer(key);
    key.fill(0);
    const table = dmCryptTable(device, sectors, keyHex);
    keyHex.fill(0);
    try {
      // The table (and the key in it) goes through stdin: never on a command line, never in a file.
      await run('dmsetup', [...dm, 'create', name], { input: table });
    } finally {
      table.fill(0);
    }
  }
  await run('dmsetup', [...dm, 'mknodes', name]);
  return `/dev/mapper/${name}`;
}

/** Removes a lease's mapping (and so its key from the kernel); none is fine, a failure is thrown. */
export async function closeSealedMapping(run: Runner, leaseId: string, control = DM_CONTROL): Promise<void> {
  const name = mapperName(leaseId);
  if (!(await mappings(run, control)).includes(name)) return;
  await run('dmsetup', [...dm, 'remove', '--retry', name]);
}
