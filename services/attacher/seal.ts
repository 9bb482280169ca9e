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
 *   whose one key slot is locked by a random passphrase; rswap writes the header itself (luks.ts)
 *   onto the LUN, and hands the passphrase over the daemon's QMP socket.
 *
 * What sealing does not give: integrity. A lender that alters ciphertext makes the borrower read
 * garbage for those blocks (XTS has no authentication), not chosen data, and one that writes back
 * a block's older ciphertext rolls it back; it still sees which blocks are written and when.
 * docs/security.md states this.
 */
import { randomBytes } from 'node:crypto';
import { access, open } from 'node:fs/promises';
import type { Runner } from '../../shared/runner.js';
import { ErrorCodes, RswapError } from '../../shared/errors.js';
import type { Qmp } from './qmp.js';
import { LUKS_HEADER_BYTES, luksHeader } from './luks.js';

export { LUKS_HEADER_BYTES };

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

/** A LUKS header for one lease, and the passphrase (hex digits) that unlocks it. */
export interface LuksHeader {
  header: Buffer;
  passphrase: Buffer;
}

/**
 * A LUKS header with a fresh random master key, locked by a fresh random passphrase (luks.ts, in
 * milliseconds). The passphrase stays in this process until exportLun hands it to the daemon.
 */
export function makeLuksHeader(): LuksHeader {
  const key = randomBytes(64);
  const passphrase = hexBuffer(key); // a LUKS passphrase must be text: 128 hex digits, 512 bits
  key.fill(0);
  return { header: luksHeader(passphrase), passphrase };
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
