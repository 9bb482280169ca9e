/**
 * A LUKS1 header written by rswap itself, for the userspace path's sealed leases (seal.ts): qemu's
 * `luks` driver opens it with the lease's passphrase. Before, `qemu-img create -f luks` made it,
 * which costs about 2 s of CPU per lease: qemu times PBKDF2 to pick an iteration count, however
 * short an iter-time it is given, and on qemu 7.2 that timing fails now and then. Here the count
 * is fixed, and a header takes milliseconds.
 *
 * The layout is the one qemu writes for aes-256-xts-plain64 with sha256 (LUKS1 On-Disk Format
 * Specification 1.2.3): a 592-byte header, eight key slots of 4000 stripes at 4 KiB-aligned
 * offsets (one enabled), the payload at sector 4040. What protects the pages is the master key,
 * 512 random bits; the passphrase that locks it is 512 random bits too, never typed by anyone,
 * so PBKDF2's iteration count adds nothing against guessing: it is the specification's minimum.
 */
import { createCipheriv, createDecipheriv, createHash, pbkdf2Sync, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { ErrorCodes, RswapError } from '../../shared/errors.js';

const SECTOR = 512;
const MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]); // "LUKS\xba\xbe"
const HASH = 'sha256';
const CIPHER = 'aes-256-xts';
/** aes-256-xts: two 256-bit keys. */
export const KEY_BYTES = 64;
const STRIPES = 4000;
const SLOTS = 8;
const ITERATIONS = 1000;
const DIGEST_BYTES = 20;
const SLOT_ENABLED = 0x00ac71f3;
const SLOT_DISABLED = 0x0000dead;
/** Key material of one slot, 4000 x 64 bytes, in sectors rounded up to 4 KiB (504). */
const SLOT_SECTORS = Math.ceil(Math.ceil((STRIPES * KEY_BYTES) / SECTOR) / 8) * 8;
const FIRST_SLOT_SECTOR = 8;
const PAYLOAD_SECTOR = FIRST_SLOT_SECTOR + SLOTS * SLOT_SECTORS; // 4040
/** The header and its key slots: the first LUKS_HEADER_BYTES of the LUN; the swap area follows. */
export const LUKS_HEADER_BYTES = PAYLOAD_SECTOR * SECTOR; // 2,068,480

/** LUKS's diffusion: each hash-sized piece of `block` replaced by H(be32(index) || piece), truncated. */
export function diffuse(block: Buffer): Buffer {
  const out = Buffer.alloc(block.length);
  const size = createHash(HASH).digest().length;
  for (let i = 0, at = 0; at < block.length; i += 1, at += size) {
    const index = Buffer.alloc(4);
    index.writeUInt32BE(i);
    const piece = block.subarray(at, Math.min(at + size, block.length));
    createHash(HASH).update(index).update(piece).digest().copy(out, at, 0, piece.length);
  }
  return out;
}

const xorInto = (target: Buffer, source: Buffer) => {
  for (let i = 0; i < target.length; i += 1) target[i]! ^= source[i]!;
};

/** Anti-forensic split of `key` into `stripes` stripes: all stripes are needed to merge it back. */
export function afSplit(key: Buffer, stripes = STRIPES, random: (bytes: number) => Buffer = randomBytes): Buffer {
  const out = Buffer.alloc(key.length * stripes);
  let d: Buffer = Buffer.alloc(key.length);
  for (let i = 0; i < stripes - 1; i += 1) {
    const stripe = random(key.length);
    stripe.copy(out, i * key.length);
    xorInto(d, stripe);
    d = diffuse(d);
  }
  xorInto(d, key);
  d.copy(out, (stripes - 1) * key.length);
  return out;
}

/** The key that afSplit split. */
export function afMerge(material: Buffer, keyBytes: number, stripes = STRIPES): Buffer {
  let d: Buffer = Buffer.alloc(keyBytes);
  for (let i = 0; i < stripes - 1; i += 1) {
    xorInto(d, material.subarray(i * keyBytes, (i + 1) * keyBytes));
    d = diffuse(d);
  }
  xorInto(d, material.subarray((stripes - 1) * keyBytes, stripes * keyBytes));
  return d;
}

/** AES-XTS sector by sector with plain64 IVs (the sector number, little-endian), from sector 0. */
export function xtsSectors(key: Buffer, data: Buffer, encrypt: boolean): Buffer {
  if (data.length % SECTOR !== 0) throw new RswapError(ErrorCodes.INTERNAL, `XTS data must be whole sectors, not ${data.length} bytes`);
  const out = Buffer.alloc(data.length);
  for (let sector = 0; sector * SECTOR < data.length; sector += 1) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt(sector));
    const c = encrypt ? createCipheriv(CIPHER, key, iv) : createDecipheriv(CIPHER, key, iv);
    c.setAutoPadding(false);
    const part = Buffer.concat([c.update(data.subarray(sector * SECTOR, (sector + 1) * SECTOR)), c.final()]);
    part.copy(out, sector * SECTOR);
  }
  return out;
}

const text = (buffer: Buffer, at: number, value: string, size: number) => {
  if (value.length >= size) throw new RswapError(ErrorCodes.INTERNAL, `LUKS field '${value}' does not fit ${size} bytes`);
  buffer.write(value, at, 'latin1');
};

/**
 * A LUKS1 header for aes-256-xts-plain64/sha256 with a fresh random master key in slot 0, locked
 * by `passphrase`; LUKS_HEADER_BYTES long. The master key and what derives from it are zeroed
 * before it returns: only the header (the key encrypted under the passphrase) leaves.
 */
export function luksHeader(passphrase: Buffer): Buffer {
  const header = Buffer.alloc(LUKS_HEADER_BYTES);
  const masterKey = randomBytes(KEY_BYTES);
  let material: Buffer | undefined;
  let slotKey: Buffer | undefined;
  try {
    MAGIC.copy(header, 0);
    header.writeUInt16BE(1, 6);
    text(header, 8, 'aes', 32);
    text(header, 40, 'xts-plain64', 32);
    text(header, 72, HASH, 32);
    header.writeUInt32BE(PAYLOAD_SECTOR, 104);
    header.writeUInt32BE(KEY_BYTES, 108);
    const digestSalt = randomBytes(32);
    pbkdf2Sync(masterKey, digestSalt, ITERATIONS, DIGEST_BYTES, HASH).copy(header, 112);
    digestSalt.copy(header, 132);
    header.writeUInt32BE(ITERATIONS, 164);
    text(header, 168, randomUUID(), 40);
    for (let slot = 0; slot < SLOTS; slot += 1) {
      const at = 208 + slot * 48;
      const offset = FIRST_SLOT_SECTOR + slot * SLOT_SECTORS;
      header.writeUInt32BE(slot === 0 ? SLOT_ENABLED : SLOT_DISABLED, at);
      header.writeUInt32BE(offset, at + 40);
      header.writeUInt32BE(STRIPES, at + 44);
      if (slot !== 0) continue;
      const salt = randomBytes(32);
      header.writeUInt32BE(ITERATIONS, at + 4);
      salt.copy(header, at + 8);
      slotKey = pbkdf2Sync(passphrase, salt, ITERATIONS, KEY_BYTES, HASH);
      material = afSplit(masterKey);
      // Encrypted in whole sectors; the split key ends inside its last one, padded with zeros.
      const padded = Buffer.alloc(Math.ceil(material.length / SECTOR) * SECTOR);
      material.copy(padded);
      xtsSectors(slotKey, padded, true).copy(header, offset * SECTOR);
      padded.fill(0);
    }
    return header;
  } finally {
    masterKey.fill(0);
    material?.fill(0);
    slotKey?.fill(0);
  }
}

/**
 * The master key in `header` that `passphrase` unlocks, checked against the header's digest; for
 * tests and checks (qemu opens the header on the data path). Throws for a wrong passphrase.
 */
export function openLuksHeader(header: Buffer, passphrase: Buffer): Buffer {
  if (!header.subarray(0, 6).equals(MAGIC) || header.readUInt16BE(6) !== 1) throw new RswapError(ErrorCodes.BAD_MESSAGE, 'not a LUKS1 header');
  const keyBytes = header.readUInt32BE(108);
  const digest = header.subarray(112, 132);
  const digestSalt = header.subarray(132, 164);
  const digestIterations = header.readUInt32BE(164);
  for (let slot = 0; slot < SLOTS; slot += 1) {
    const at = 208 + slot * 48;
    if (header.readUInt32BE(at) !== SLOT_ENABLED) continue;
    const slotKey = pbkdf2Sync(passphrase, header.subarray(at + 8, at + 40), header.readUInt32BE(at + 4), keyBytes, HASH);
    const offset = header.readUInt32BE(at + 40) * SECTOR;
    const stripes = header.readUInt32BE(at + 44);
    const length = Math.ceil((keyBytes * stripes) / SECTOR) * SECTOR;
    const material = xtsSectors(slotKey, header.subarray(offset, offset + length), false);
    const key = afMerge(material, keyBytes, stripes);
    slotKey.fill(0);
    material.fill(0);
    if (timingSafeEqual(pbkdf2Sync(key, digestSalt, digestIterations, DIGEST_BYTES, HASH), digest)) return key;
    key.fill(0);
  }
  throw new RswapError(ErrorCodes.BAD_MESSAGE, 'no key slot of this LUKS header opens with that passphrase');
}
