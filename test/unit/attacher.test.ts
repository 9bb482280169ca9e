import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { chooseSwapPriority, swapoffSafety } from '../../services/attacher/swap.js';
import { KernelInitiator, byPathLink } from '../../services/attacher/kernel.js';
import type { Runner, RunOptions } from '../../shared/runner.js';
import type { SwapArea } from '../../shared/procfs.js';

const MiB = 1024 ** 2;
const area = (path: string, priority: number, sizeMiB = 100, usedMiB = 0): SwapArea => ({ path, type: 'partition', sizeBytes: sizeMiB * MiB, usedBytes: usedMiB * MiB, priority });

test('swap priority - above every local area, shared by remote areas', () => {
  assert.equal(chooseSwapPriority([], new Set()), 100);
  assert.equal(chooseSwapPriority([area('/swapfile', -2)], new Set()), 100);
  assert.equal(chooseSwapPriority([area('/dev/vdb', 150), area('/dev/loop3', 250)], new Set(['/dev/loop3'])), 250);
  assert.equal(chooseSwapPriority([area('/dev/vdb', 32760)], new Set()), 32767);
  assert.throws(() => chooseSwapPriority([area('/dev/vdb', 10)], new Set(), 5), /not above local swap/);
});

test('swapoff safety - used pages must fit in MemAvailable plus other swap, minus the margin', () => {
  const remote = area('/dev/loop0', 100, 512, 300);
  assert.equal(swapoffSafety(remote, [], 600 * MiB, 256 * MiB).safe, true);
  const refused = swapoffSafety(remote, [], 500 * MiB, 256 * MiB);
  assert.equal(refused.safe, false);
  assert.match(refused.reason, /swap-off would not fit: 300MiB in use, room for 244MiB/);
  assert.equal(swapoffSafety(remote, [area('/swapfile', -2, 200, 100)], 500 * MiB, 256 * MiB).safe, true);
});

interface Call { file: string; args: string[]; options?: RunOptions }
function recordingRunner(fail?: (call: Call) => boolean): { run: Runner; calls: Call[] } {
  const calls: Call[] = [];
  const run: Runner = async (file, args, options) => {
    const call = { file, args, options };
    calls.push(call);
    if (fail?.(call)) throw new Error(`${file} failed`);
    return { stdout: '', stderr: '', exitCode: 0 };
  };
  return { run, calls };
}

const target = { portal: '198.18.0.11:3260', iqn: 'iqn.2026-11.io.rswap:host-a.l-0123456789ab', lun: 1 };
const chap = { user: 'l-0123456789ab', secret: 'S3cretS3cretS3cret' };

test('kernel initiator - node record with CHAP and replacement timeout, then login, secret redacted', async () => {
  const { run, calls } = recordingRunner();
  const initiator = new KernelInitiator(run, pino({ level: 'silent' }), { initiatorIqn: 'iqn.2026-11.io.rswap:host-b', replacementTimeoutS: 120, deviceWaitMs: 200, seal: false });
  // No iscsi_tcp here, so the by-path link never appears: the login must time out clearly.
  await assert.rejects(initiator.login('l-0123456789ab', target, chap), /neither \/dev\/disk\/by-path\/ip-198\.18\.0\.11:3260-iscsi-iqn\.2026-11\.io\.rswap:host-a\.l-0123456789ab-lun-1 nor the session's disk in sysfs appeared/);
  const lines = calls.map((c) => c.args.join(' '));
  assert.ok(lines.some((l) => l.includes('-m iface -I rswap -o update -n iface.initiatorname -v iqn.2026-11.io.rswap:host-b')));
  assert.ok(lines.some((l) => l.endsWith('-o update -n node.session.auth.authmethod -v CHAP')));
  assert.ok(lines.some((l) => l.endsWith('-n node.session.auth.username -v l-0123456789ab')));
  assert.ok(lines.some((l) => l.endsWith('-n node.session.timeo.replacement_timeout -v 120')));
  const password = calls.find((c) => c.args.includes('node.session.auth.password'));
  assert.deepEqual(password?.options?.secrets, [chap.secret]);
  const login = lines.findIndex((l) => l.endsWith('--login'));
  assert.ok(login > lines.findIndex((l) => l.includes('auth.password')), 'login comes after the credentials');
  assert.ok(calls.every((c) => c.args.join(' ').includes('-I rswap') || c.file !== 'iscsiadm'), 'every iscsiadm call uses the rswap iface');
});

test('kernel initiator - logout and delete tolerate a missing session (exit 21)', async () => {
  const { run, calls } = recordingRunner();
  const initiator = new KernelInitiator(run, pino({ level: 'silent' }), { initiatorIqn: 'iqn.2026-11.io.rswap:host-b', replacementTimeoutS: 120, deviceWaitMs: 200, seal: false });
  await initiator.logout('l-0123456789ab', target);
  const iscsiadm = calls.filter((c) => c.file === 'iscsiadm');
  assert.deepEqual(iscsiadm.map((c) => c.args.at(-1)), ['--logout', 'delete']);
  assert.ok(iscsiadm.every((c) => c.options?.okExitCodes?.includes(21)));
  assert.equal(calls.some((c) => c.file === 'dmsetup' && c.args.includes('remove')), false, 'no mapping listed, none removed');
  assert.equal(byPathLink(target), '/dev/disk/by-path/ip-198.18.0.11:3260-iscsi-iqn.2026-11.io.rswap:host-a.l-0123456789ab-lun-1');
});

test('kernel initiator - a failed credential update stops before login', async () => {
  const { run, calls } = recordingRunner((c) => c.args.includes('node.session.auth.password'));
  const initiator = new KernelInitiator(run, pino({ level: 'silent' }), { initiatorIqn: 'iqn.2026-11.io.rswap:host-b', replacementTimeoutS: 120, deviceWaitMs: 200, seal: false });
  await assert.rejects(initiator.login('l-0123456789ab', target, chap));
  assert.equal(calls.some((c) => c.args.includes('--login')), false);
});

test('kernel initiator - mutual CHAP: the target must prove its own secret (username_in/password_in), before login', async () => {
  const { run, calls } = recordingRunner();
  const initiator = new KernelInitiator(run, pino({ level: 'silent' }), { initiatorIqn: 'iqn.2026-11.io.rswap:host-b', replacementTimeoutS: 120, deviceWaitMs: 100, seal: false });
  const mutual = { ...chap, targetUser: 'l-0123456789ab-target', targetSecret: 'T4rgetT4rgetT4rget' };
  await assert.rejects(initiator.login('l-0123456789ab', target, mutual), /appeared within/);
  const lines = calls.map((c) => c.args.join(' '));
  const userIn = lines.findIndex((l) => l.endsWith('-n node.session.auth.username_in -v l-0123456789ab-target'));
  const passwordIn = calls.findIndex((c) => c.args.includes('node.session.auth.password_in'));
  assert.ok(userIn >= 0 && passwordIn >= 0);
  assert.deepEqual(calls[passwordIn]!.options?.secrets, ['T4rgetT4rgetT4rget']);
  assert.ok(lines.findIndex((l) => l.endsWith('--login')) > Math.max(userIn, passwordIn), 'login comes after');
});

test('kernel initiator - without udev, the LUN\'s disk and the session\'s state are found through sysfs from the session with the same target and portal', async () => {
  const { mkdtemp, mkdir, writeFile, rm } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const { sessionDevice, sessionState } = await import('../../services/attacher/kernel.js');
  const sysfs = await mkdtemp(join(tmpdir(), 'rswap-sysfs-'));
  try {
    const session = async (n: number, iqn: string, address: string, lun: number, disk: string) => {
      const base = join(sysfs, 'class/iscsi_session', `session${n}`);
      await mkdir(join(base, 'device', `target${n}:0:0`, `${n}:0:0:${lun}`, 'block', disk), { recursive: true });
      await writeFile(join(base, 'targetname'), `${iqn}\n`);
      const connection = join(sysfs, 'class/iscsi_connection', `connection${n}:0`);
      await mkdir(connection, { recursive: true });
      await writeFile(join(connection, 'persistent_address'), `${address.split(':')[0]}\n`);
      await writeFile(join(connection, 'persistent_port'), `${address.split(':')[1]}\n`);
    };
    await session(1, 'iqn.2026-11.io.rswap:host-a.l-ffffffffffff', '198.18.0.11:3260', 1, 'sda'); // another lease
    await session(2, target.iqn, '198.18.0.99:3260', 1, 'sdb'); // same name, another portal
    assert.equal(await sessionDevice(target, sysfs), undefined);
    await session(3, target.iqn, target.portal, 1, 'sdc');
    assert.equal(await sessionDevice(target, sysfs), '/dev/sdc');
    assert.equal(await sessionDevice({ ...target, lun: 2 }, sysfs), undefined, 'another LUN');
    // The health check's question: is that session logged in (a slow read is then no lost lender)?
    assert.equal(await sessionState(target, sysfs), undefined, 'a state file is read only when there is one');
    await writeFile(join(sysfs, 'class/iscsi_session/session2/state'), 'LOGGED_IN\n');
    assert.equal(await sessionState(target, sysfs), undefined, 'the session at another portal is not this one');
    await writeFile(join(sysfs, 'class/iscsi_session/session3/state'), 'FAILED\n');
    assert.equal(await sessionState(target, sysfs), 'FAILED');
    await writeFile(join(sysfs, 'class/iscsi_session/session3/state'), 'LOGGED_IN\n');
    assert.equal(await sessionState(target, sysfs), 'LOGGED_IN');
    assert.equal(await sessionState({ ...target, iqn: 'iqn.2026-11.io.rswap:host-a.l-000000000000' }, sysfs), undefined, 'no session at all');
  } finally {
    await rm(sysfs, { recursive: true, force: true });
  }
});

/** A fake sysfs with one session of `target` whose disk is /dev/null (a path that resolves here). */
async function sysfsWithSession(): Promise<{ sysfs: string; cleanup: () => Promise<void> }> {
  const { mkdtemp, mkdir, writeFile, rm } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const sysfs = await mkdtemp(join(tmpdir(), 'rswap-sysfs-'));
  const base = join(sysfs, 'class/iscsi_session/session1');
  await mkdir(join(base, 'device/target1:0:0/1:0:0:1/block/null'), { recursive: true });
  await writeFile(join(base, 'targetname'), `${target.iqn}\n`);
  const connection = join(sysfs, 'class/iscsi_connection/connection1:0');
  await mkdir(connection, { recursive: true });
  await writeFile(join(connection, 'persistent_address'), '198.18.0.11\n');
  await writeFile(join(connection, 'persistent_port'), '3260\n');
  return { sysfs, cleanup: () => rm(sysfs, { recursive: true, force: true }) };
}

test('kernel initiator - sealed: the disk is mapped through dm-crypt with a fresh random key given on stdin, never on a command line, zeroed after', async () => {
  const { sysfs, cleanup } = await sysfsWithSession();
  try {
    const keys: string[] = [];
    for (let i = 0; i < 2; i += 1) {
      const calls: Call[] = [];
      const handed: Array<Uint8Array> = [];
      const run: Runner = async (file, args, options) => {
        // What dmsetup read from stdin, copied as it was then (the attacher zeroes its buffer after).
        if (options?.input instanceof Uint8Array) handed.push(options.input);
        calls.push({ file, args, options: { ...options, ...(options?.input !== undefined ? { input: Buffer.from(options.input).toString() } : {}) } });
        return { stdout: file === 'blockdev' ? '1048576\n' : '', stderr: '', exitCode: 0 };
      };
      const initiator = new KernelInitiator(run, pino({ level: 'silent' }), { initiatorIqn: 'iqn.2026-11.io.rswap:host-b', replacementTimeoutS: 120, deviceWaitMs: 200, sysfs, seal: true, dmControl: '/dev/null' });
      // dmsetup is recorded, not run, so the mapping's node does not exist here: its realpath fails.
      await assert.rejects(initiator.login('l-0123456789ab', target, chap), /ENOENT.*\/dev\/mapper\/rswap-l-0123456789ab/);
      const create = calls.find((c) => c.file === 'dmsetup' && c.args.includes('create'));
      assert.ok(create, 'dmsetup create ran');
      assert.deepEqual(create.args.slice(-2), ['create', 'rswap-l-0123456789ab']);
      const input = String(create.options?.input ?? '');
      const table = /^0 1048576 crypt aes-xts-plain64 ([0-9a-f]{128}) 0 \/dev\/null 0\n$/.exec(input);
      assert.ok(table, `a whole-device aes-xts table on stdin: ${input.replace(/[0-9a-f]{128}/, 'KEY')}`);
      const key = table[1]!;
      assert.ok(calls.every((c) => !c.args.join(' ').includes(key)), 'the key is on no command line');
      assert.ok(handed.length === 1 && handed[0]!.every((b) => b === 0), 'the buffer that held the table is zeroed once dmsetup has it');
      assert.ok(calls.findIndex((c) => c === create) > calls.findIndex((c) => c.args.includes('--login')), 'mapped after login');
      keys.push(key);
    }
    assert.notEqual(keys[0], keys[1], 'every lease gets its own key');
  } finally {
    await cleanup();
  }
});

test('kernel initiator - sealed logout removes the mapping (and its key) before logging out', async () => {
  const calls: Call[] = [];
  const run: Runner = async (file, args, options) => {
    calls.push({ file, args, options });
    return { stdout: file === 'dmsetup' && args.includes('info') ? 'other\nrswap-l-0123456789ab\n' : '', stderr: '', exitCode: 0 };
  };

  // dmControl: a file that exists, standing in for /dev/mapper/control (this machine has no device mapper).
  const initiator = new KernelInitiator(run, pino({ level: 'silent' }), { initiatorIqn: 'iqn.2026-11.io.rswap:host-b', replacementTimeoutS: 120, deviceWaitMs: 200, seal: true, dmControl: '/dev/null' });
  await initiator.logout('l-0123456789ab', target);
  const remove = calls.findIndex((c) => c.file === 'dmsetup' && c.args.includes('remove'));
  assert.ok(remove >= 0 && calls[remove]!.args.at(-1) === 'rswap-l-0123456789ab', 'only our mapping is removed');
  assert.ok(remove < calls.findIndex((c) => c.args.includes('--logout')));
});

test('dm-crypt table - refuses a short or non-hex key or an empty device; hex digits without a string', async () => {
  const { dmCryptTable, hexBuffer } = await import('../../services/attacher/seal.js');
  assert.throws(() => dmCryptTable('/dev/sdb', 2048, Buffer.from('ab')), /64 bytes of hex/);
  assert.throws(() => dmCryptTable('/dev/sdb', 2048, Buffer.from('A'.repeat(128))), /64 bytes of hex/);
  assert.throws(() => dmCryptTable('/dev/sdb', 0, Buffer.from('a'.repeat(128))), /0 sectors/);
  assert.equal(dmCryptTable('/dev/sdb', 2048, Buffer.from('a'.repeat(128))).toString(), `0 2048 crypt aes-xts-plain64 ${'a'.repeat(128)} 0 /dev/sdb 0\n`);
  assert.equal(hexBuffer(Buffer.from([0, 1, 0xab, 0xff])).toString(), '0001abff');
});
