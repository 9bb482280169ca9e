import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { KEY_BYTES, LUKS_HEADER_BYTES, afMerge, afSplit, diffuse, luksHeader, openLuksHeader, xtsSectors } from '../../services/attacher/luks.js';
import { makeLuksHeader } from '../../services/attacher/seal.js';

const field = (h: Buffer, at: number, size: number) => h.subarray(at, at + size).toString('latin1').replace(/\0+$/, '');

test('luks - the header has the layout qemu writes for aes-256-xts-plain64/sha256: one slot enabled, eight at 4 KiB-aligned offsets, payload at sector 4040', () => {
  const h = luksHeader(Buffer.from('a passphrase'));
  assert.equal(h.length, LUKS_HEADER_BYTES);
  assert.equal(LUKS_HEADER_BYTES, 4040 * 512);
  assert.deepEqual([...h.subarray(0, 6)], [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);
  assert.equal(h.readUInt16BE(6), 1);
  assert.deepEqual([field(h, 8, 32), field(h, 40, 32), field(h, 72, 32)], ['aes', 'xts-plain64', 'sha256']);
  assert.equal(h.readUInt32BE(104), 4040, 'payload offset in sectors');
  assert.equal(h.readUInt32BE(108), KEY_BYTES);
  assert.match(field(h, 168, 40), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a UUID');
  const slots = Array.from({ length: 8 }, (_, i) => ({ active: h.readUInt32BE(208 + 48 * i), offset: h.readUInt32BE(248 + 48 * i), stripes: h.readUInt32BE(252 + 48 * i) }));
  assert.deepEqual(slots.map((s) => s.offset), [8, 512, 1016, 1520, 2024, 2528, 3032, 3536]);
  assert.ok(slots.every((s) => s.stripes === 4000));
  assert.deepEqual(slots.map((s) => s.active), [0x00ac71f3, ...Array(7).fill(0x0000dead)]);
  assert.equal(h.readUInt32BE(212), 1000, 'slot 0 iterations');
});

test('luks - the passphrase opens the master key (checked against the digest); another passphrase does not', () => {
  const pass = Buffer.from('correct horse');
  const h = luksHeader(pass);
  const key = openLuksHeader(h, pass);
  assert.equal(key.length, KEY_BYTES);
  assert.ok(!key.every((b) => b === 0));
  assert.throws(() => openLuksHeader(h, Buffer.from('correct horsf')), /no key slot of this LUKS header opens with that passphrase/);
  assert.throws(() => openLuksHeader(Buffer.alloc(LUKS_HEADER_BYTES), pass), /not a LUKS1 header/);
  // A changed byte of the encrypted key material loses the key: every stripe counts.
  const damaged = Buffer.from(h);
  damaged[8 * 512 + 100_000]! ^= 1;
  assert.throws(() => openLuksHeader(damaged, pass), /no key slot/);
});

test('luks - each header has its own master key, salts and UUID; makeLuksHeader gives each a fresh 128-hex-digit passphrase', () => {
  const a = makeLuksHeader();
  const b = makeLuksHeader();
  assert.match(a.passphrase.toString('latin1'), /^[0-9a-f]{128}$/);
  assert.notDeepEqual(a.passphrase, b.passphrase);
  for (const [at, size] of [[112, 20], [132, 32], [168, 40], [216, 32]] as const) {
    assert.notDeepEqual(a.header.subarray(at, at + size), b.header.subarray(at, at + size), `bytes ${at}-${at + size - 1} differ`);
  }
  assert.notDeepEqual(openLuksHeader(a.header, a.passphrase), openLuksHeader(b.header, b.passphrase));
});

test('luks - AF split and merge: the key comes back from all stripes, not from one short; diffusion is the hash chain of LUKS1', () => {
  const key = randomBytes(64);
  const split = afSplit(key, 4000);
  assert.equal(split.length, 64 * 4000);
  assert.deepEqual(afMerge(split, 64, 4000), key);
  const changed = Buffer.from(split);
  changed[10]! ^= 0x80;
  assert.notDeepEqual(afMerge(changed, 64, 4000), key);
  // Stripes of zeros: d stays H-chained zeros, so the last stripe is the key XOR that chain.
  const zeros = afSplit(key, 3, (n) => Buffer.alloc(n));
  assert.deepEqual(zeros.subarray(0, 128), Buffer.alloc(128));
  const chain = diffuse(diffuse(Buffer.alloc(64)));
  assert.deepEqual(zeros.subarray(128), Buffer.from(chain.map((b, i) => b ^ key[i]!)));
  // diffuse of 64 bytes: two SHA-256 pieces, each keyed by its index.
  assert.equal(diffuse(Buffer.alloc(40)).length, 40, 'a partial last piece is truncated');
});

test('luks - XTS sector by sector with plain64 IVs: round trip, and the same plaintext in two sectors encrypts differently', () => {
  const key = randomBytes(64);
  const data = Buffer.alloc(1024, 7);
  const enc = xtsSectors(key, data, true);
  assert.notDeepEqual(enc.subarray(0, 512), enc.subarray(512), 'the sector number is the tweak');
  assert.deepEqual(xtsSectors(key, enc, false), data);
  assert.throws(() => xtsSectors(key, Buffer.alloc(100), true), /whole sectors/);
});
