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
  const initiator = new KernelInitiator(run, pino({ level: 'silent' }), { initiatorIqn: 'iqn.2026-11.io.rswap:host-b', replacementTimeoutS: 120, deviceWaitMs: 200 });
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
  const initiator = new KernelInitiator(run, pino({ level: 'silent' }), { initiatorIqn: 'iqn.2026-11.io.rswap:host-b', replacementTimeoutS: 120, deviceWaitMs: 200 });
  await initiator.logout('l-0123456789ab', target);
  assert.deepEqual(calls.map((c) => c.args.at(-1)), ['--logout', 'delete']);
  assert.ok(calls.every((c) => c.options?.okExitCodes?.includes(21)));
  assert.equal(byPathLink(target), '/dev/disk/by-path/ip-198.18.0.11:3260-iscsi-iqn.2026-11.io.rswap:host-a.l-0123456789ab-lun-1');
});

test('kernel initiator - a failed credential update stops before login', async () => {
  const { run, calls } = recordingRunner((c) => c.args.includes('node.session.auth.password'));
  const initiator = new KernelInitiator(run, pino({ level: 'silent' }), { initiatorIqn: 'iqn.2026-11.io.rswap:host-b', replacementTimeoutS: 120, deviceWaitMs: 200 });
  await assert.rejects(initiator.login('l-0123456789ab', target, chap));
  assert.equal(calls.some((c) => c.args.includes('--login')), false);
});

test('kernel initiator - mutual CHAP: the target must prove its own secret (username_in/password_in), before login', async () => {
  const { run, calls } = recordingRunner();
  const initiator = new KernelInitiator(run, pino({ level: 'silent' }), { initiatorIqn: 'iqn.2026-11.io.rswap:host-b', replacementTimeoutS: 120, deviceWaitMs: 100 });
  const mutual = { ...chap, targetUser: 'l-0123456789ab-target', targetSecret: 'T4rgetT4rgetT4rget' };
  await assert.rejects(initiator.login('l-0123456789ab', target, mutual), /appeared within/);
  const lines = calls.map((c) => c.args.join(' '));
  const userIn = lines.findIndex((l) => l.endsWith('-n node.session.auth.username_in -v l-0123456789ab-target'));
  const passwordIn = calls.findIndex((c) => c.args.includes('node.session.auth.password_in'));
  assert.ok(userIn >= 0 && passwordIn >= 0);
  assert.deepEqual(calls[passwordIn]!.options?.secrets, ['T4rgetT4rgetT4rget']);
  assert.ok(lines.findIndex((l) => l.endsWith('--login')) > Math.max(userIn, passwordIn), 'login comes after');
});

test('kernel initiator - without udev, the LUN\'s disk is found through sysfs from the session with the same target and portal', async () => {
  const { mkdtemp, mkdir, writeFile, rm } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const { sessionDevice } = await import('../../services/attacher/kernel.js');
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
  } finally {
    await rm(sysfs, { recursive: true, force: true });
  }
});
