import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseMeminfo, parseMounts, parseSwaps } from '../../shared/procfs.js';
import { parseTargets } from '../../services/exporter/tgt.js';

test('procfs - meminfo fields in bytes', () => {
  const info = parseMeminfo('MemTotal:       24683620 kB\nMemAvailable:   24395816 kB\nHugePages_Total:       0\n');
  assert.equal(info.get('MemAvailable'), 24395816 * 1024);
  assert.equal(info.get('HugePages_Total'), 0);
});

test('procfs - swaps with escaped paths', () => {
  const areas = parseSwaps('Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/loop0                              partition\t65532\t\t12\t\t100\n/swap\\040file  file  1024  0  -2\n');
  assert.deepEqual(areas[0], { path: '/dev/loop0', type: 'partition', sizeBytes: 65532 * 1024, usedBytes: 12 * 1024, priority: 100 });
  assert.equal(areas[1]?.path, '/swap file');
  assert.equal(areas[1]?.priority, -2);
});

test('procfs - mounts', () => {
  const mounts = parseMounts('rswap-l-0123456789ab /run/rswap/x/leases/l-0123456789ab ramfs rw,relatime,mode=700 0 0\n');
  assert.deepEqual(mounts[0], { source: 'rswap-l-0123456789ab', target: '/run/rswap/x/leases/l-0123456789ab', fstype: 'ramfs', options: 'rw,relatime,mode=700' });
});

// Captured from tgtadm 1.0.85 (Debian 12) with one initiator logged in.
const SHOW = `Target 1: iqn.2026-11.io.rswap:host-a.l-0123456789ab
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 1
            Initiator: iqn.2026-11.io.rswap:host-b alias: none
            Connection: 0
                IP Address: 198.18.0.12
    LUN information:
        LUN: 0
            Type: controller
            Backing store type: null
            Backing store path: None
        LUN: 1
            Type: disk
            Size: 67 MB, Block size: 512
            Backing store type: rdwr
            Backing store path: /run/rswap/x/leases/l-0123456789ab/image
    Account information:
        l-0123456789ab
    ACL information:
        198.18.0.12
Target 2: iqn.2026-11.io.rswap:host-a.l-ba9876543210
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
    Account information:
    ACL information:
`;

test('tgt - parses targets, LUN backing stores, sessions, accounts and ACLs', () => {
  const targets = parseTargets(SHOW);
  assert.equal(targets.length, 2);
  assert.deepEqual(targets[0], {
    tid: 1,
    iqn: 'iqn.2026-11.io.rswap:host-a.l-0123456789ab',
    backingStores: ['/run/rswap/x/leases/l-0123456789ab/image'],
    accounts: ['l-0123456789ab'],
    acl: ['198.18.0.12'],
    sessions: ['198.18.0.12'],
  });
  assert.deepEqual(targets[1]?.sessions, []);
  assert.deepEqual(parseTargets(''), []);
});

test('tgt - a new target gets its CHAP accounts (the borrower\'s, and its own for mutual CHAP) before the address that admits the borrower', async () => {
  const { Tgt } = await import('../../services/exporter/tgt.js');
  const pino = (await import('pino')).default;
  const calls: string[][] = [];
  const run = async (_file: string, args: string[]) => {
    calls.push(args);
    return { stdout: '', stderr: '', exitCode: 0 };
  };
  const tgt = new Tgt(run, pino({ level: 'silent' }), 3300, '198.18.0.11:3260', '/nonexistent');
  await tgt.create('iqn.2026-11.io.rswap:host-a.l-0123456789ab', '/x/image', '198.18.0.12', { user: 'l-0123456789ab', secret: 'S3cretS3cretS3cret', targetUser: 'l-0123456789ab-target', targetSecret: 'T4rgetT4rgetT4rget' }, []);
  const ops = calls.map((a) => a.slice(a.indexOf('--mode') + 1).join(' '));
  const at = (re: RegExp) => ops.findIndex((o) => re.test(o));
  const address = at(/^target --op bind .*--initiator-address 198\.18\.0\.12/);
  assert.ok(address > 0);
  assert.ok(at(/^account --op bind --tid 1 --user l-0123456789ab$/) < address, 'the borrower\'s account first');
  assert.ok(at(/^account --op bind --tid 1 --user l-0123456789ab-target --outgoing$/) < address, 'the target\'s own account first');
  assert.equal(address, ops.length - 1, 'the address is the last step');
});
