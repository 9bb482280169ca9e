/**
 * Sealing on the userspace path, on the real qemu-storage-daemon: its luks driver between a block
 * node and the FUSE export, keyed over QMP. A file stands in for the iSCSI LUN (the whole stack with
 * a lender runs in the e2e tests); what matters here is what lands in the backing store.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { Qmp } from '../../services/attacher/qmp.js';
import { LUKS_HEADER_BYTES, exportLun, makeLuksHeader } from '../../services/attacher/seal.js';
import { readMounts } from '../../shared/procfs.js';
import { LUKS_MAGIC } from '../helpers/sealed.js';
import { stopGracefully } from '../../shared/process.js';

const MiB = 1024 * 1024;
const MARKER = Buffer.from('RSWAP-SEAL-TEST-MARKER-');

/** 1 MiB of pages that each start with MARKER, the rest random: easy to find in the clear. */
function markedMiB(): Buffer {
  const data = randomBytes(MiB);
  for (let page = 0; page < MiB; page += 4096) MARKER.copy(data, page);
  return data;
}

function count(haystack: Buffer, needle: Buffer): number {
  let n = 0;
  for (let at = haystack.indexOf(needle); at >= 0; at = haystack.indexOf(needle, at + 1)) n += 1;
  return n;
}

/**
 * Runs `body` against a qemu-storage-daemon with node `lun` on a fresh `imageBytes` image file and
 * a QMP socket; afterwards the daemon is stopped, its export unmounted and its folder removed.
 */
async function withDaemon(imageBytes: number, body: (d: { qmp: Qmp; exportFile: string; image: string; dir: string }) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'rswap-seal-'));
  const image = join(dir, 'lun.img');
  const pidfile = join(dir, 'qsd.pid');
  const socket = join(dir, 'qmp.sock');
  const exportFile = join(dir, 'export');
  await writeFile(image, '');
  await truncate(image, imageBytes);
  await writeFile(exportFile, '');
  try {
    await execa('qemu-storage-daemon', [
      '--blockdev', `driver=file,filename=${image},node-name=lun`,
      '--chardev', `socket,id=qmp,path=${socket},server=on,wait=off`,
      '--monitor', 'chardev=qmp',
      '--pidfile', pidfile,
      '--daemonize',
    ]);
    const pid = Number((await readFile(pidfile, 'utf8')).trim());
    try {
      const qmp = await Qmp.connect(socket);
      try {
        await body({ qmp, exportFile, image, dir });
      } finally {
        qmp.close();
      }
    } finally {
      await stopGracefully(pid);
      if ((await readMounts()).some((m) => m.target === exportFile)) await execa('umount', ['-l', exportFile]);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Writes marked data at the start and the end of the export, reads it back, returns the raw image. */
async function roundTrip(exportFile: string, image: string): Promise<{ raw: Buffer; exportBytes: number }> {
  const exportBytes = (await stat(exportFile)).size;
  const data = markedMiB();
  const file = await open(exportFile, 'r+');
  try {
    for (const offset of [0, exportBytes - MiB]) {
      await file.write(data, 0, MiB, offset);
    }
    await file.sync();
    // The page cache dropped (fadvise DONTNEED), so the read-back goes through the daemon's decryption.
    await execa('dd', [`if=${exportFile}`, 'iflag=nocache', 'count=0', 'status=none']);
    for (const offset of [0, exportBytes - MiB]) {
      const back = Buffer.alloc(MiB);
      await file.read(back, 0, MiB, offset);
      assert.ok(back.equals(data), `read back at ${offset} equals what was written`);
    }
  } finally {
    await file.close();
  }
  return { raw: await readFile(image), exportBytes };
}

for (const sealed of [true, false]) {
  test(`seal - ${sealed ? 'sealed: the backing store holds a LUKS header and no page in the clear' : 'unsealed (the control): the pages lie in the backing store in the clear'}`, async () => {
    await withDaemon(16 * MiB, async ({ qmp, exportFile, image, dir }) => {
      const header = sealed ? makeLuksHeader() : undefined;
      await exportLun(qmp, 'lun', exportFile, header);
      if (header) assert.ok(header.passphrase.every((b) => b === 0), 'the passphrase buffer is zeroed once the daemon has it');
      const { raw, exportBytes } = await roundTrip(exportFile, image);
      assert.equal(raw.length, 16 * MiB, 'the backing store did not grow or shrink');
      const found = count(raw, MARKER);
      if (sealed) {
        assert.equal(exportBytes, 16 * MiB - LUKS_HEADER_BYTES, 'the header takes LUKS_HEADER_BYTES, the rest is swap');
        assert.ok(raw.subarray(0, LUKS_MAGIC.length).equals(LUKS_MAGIC), 'a LUKS header at the start');
        assert.equal(found, 0, 'no marked page readable by the lender');
      } else {
        assert.equal(exportBytes, 16 * MiB);
        assert.equal(found, 2 * 256, 'every marked page lies in the clear');
      }
    });
  });
}

test('seal - a node too small for the header is refused with a clear error, and nothing is exported', async () => {
  await withDaemon(MiB, async ({ qmp, exportFile, image, dir }) => {
    await assert.rejects(exportLun(qmp, 'lun', exportFile, makeLuksHeader()), /cannot seal node lun: 1048576 bytes, the header alone takes 2068480/);
    assert.equal((await readMounts()).some((m) => m.target === exportFile), false, 'no export');
    assert.equal((await readFile(image)).length, MiB, 'nothing written');
  });
});

test('seal - QMP errors come back as errors naming the command, not as hangs', async () => {
  await withDaemon(4 * MiB, async ({ qmp }) => {
    await assert.rejects(qmp.execute('blockdev-add', { driver: 'luks', 'node-name': 'x', file: 'lun', 'key-secret': 'missing' }), /QMP blockdev-add failed: .*missing/);
    // A LUN with no LUKS header (a header that never made it there) does not open.
    await qmp.execute('object-add', { 'qom-type': 'secret', id: 'k', data: 'x', format: 'raw' });
    await assert.rejects(qmp.execute('blockdev-add', { driver: 'luks', 'node-name': 'y', file: 'lun', 'key-secret': 'k' }), /QMP blockdev-add failed/);
  });
});

test('seal - qemu opens the header rswap writes with its passphrase only, and reads back what it wrote through it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rswap-seal-'));
  try {
    const image = join(dir, 'image');
    const { header, passphrase } = makeLuksHeader();
    await writeFile(image, Buffer.concat([header, Buffer.alloc(MiB)]));
    // qemu-io through the luks driver, the passphrase given in a file (removed after each run).
    const io = async (secret: Buffer, command: string) => {
      await writeFile(join(dir, 'k'), secret, { mode: 0o600 });
      try {
        return await execa('qemu-io', ['--object', `secret,id=k,file=${join(dir, 'k')}`, '--image-opts', `driver=luks,key-secret=k,file.filename=${image}`, '-c', command], { reject: false });
      } finally {
        await rm(join(dir, 'k'), { force: true });
      }
    };
    assert.equal((await io(passphrase, 'write -P 0x5a 0 64k')).exitCode, 0);
    assert.equal((await io(passphrase, 'read -P 0x5a 0 64k')).exitCode, 0, 'read back through the luks driver');
    const wrong = Buffer.from(passphrase);
    wrong[0] = wrong[0] === 0x30 ? 0x31 : 0x30;
    assert.match(String((await io(wrong, 'read 0 4k')).stderr), /Invalid password, cannot unlock any keyslot/);
    const raw = await readFile(image);
    assert.ok(!raw.subarray(LUKS_HEADER_BYTES, LUKS_HEADER_BYTES + 64 * 1024).every((b) => b === 0x5a), 'ciphertext on the image, not the pattern');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
