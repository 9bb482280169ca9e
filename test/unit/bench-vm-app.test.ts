import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { jobScript, parseVmAppArgs, rowOf, swapAreas, swapOffScript, swapOnScript, VM_DEFAULT_DEVICES, VM_DIAGNOSIS, VM_LABELS } from '../../bench/vm-app.js';
import { swapBytes } from '../../bench/app/run.js';
import { qemuCommand } from '../../cli/testbed/vm.js';

const MiB = 1024 ** 2;

test('vm app bench - options: disk, zram and the sealed lease by default, 5 runs at 2x; smoke is small; bad input refused with the reason', () => {
  const full = parseVmAppArgs([]);
  assert.deepEqual(full.devices, ['vm-disk', 'vm-zram', 'vm-rswap']);
  assert.deepEqual(VM_DEFAULT_DEVICES, full.devices);
  assert.equal(full.runs, 5);
  assert.deepEqual(full.ratios, [2]);
  assert.deepEqual(full.apps, ['redis', 'touch']);
  assert.equal(full.limitBytes, 128 * MiB);
  const smoke = parseVmAppArgs(['--smoke']);
  assert.equal(smoke.runs, 1);
  assert.equal(smoke.limitBytes, 64 * MiB);
  assert.ok(smoke.ops < full.ops);
  assert.throws(() => parseVmAppArgs(['--devices', 'vm-zram,local']), /unknown device 'local'/);
  assert.throws(() => parseVmAppArgs(['--apps', 'sort']), /unknown app 'sort'/);
  assert.throws(() => parseVmAppArgs(['--ratios', '4']), /ratios must be in/);
  assert.throws(() => parseVmAppArgs(['--runs', '0']), /--runs/);
  assert.throws(() => parseVmAppArgs(['--ops', 'x']), /--ops/);
});

test('vm app bench - the unsealed lease is asked for by name, with other devices but never with the sealed one (one attacher setting per VM)', () => {
  assert.deepEqual(parseVmAppArgs(['--devices', 'vm-disk,vm-rswap-unsealed']).devices, ['vm-disk', 'vm-rswap-unsealed']);
  assert.throws(() => parseVmAppArgs(['--devices', 'vm-rswap,vm-rswap-unsealed']), /separate runs: sealing is the VM attacher's own setting/);
  assert.match(VM_LABELS['vm-rswap-unsealed'], /\(unsealed\)/);
  assert.match(VM_LABELS['vm-rswap'], /\(sealed\)/);
});

test('vm app bench - every device is sized for the largest dataset with room: 2x of 128 MiB gives 384 MiB, within a test lease', () => {
  assert.equal(swapBytes({ ratios: [2], limitBytes: 128 * MiB }), 384 * MiB);
  assert.equal(swapBytes({ ratios: [1.5, 2], limitBytes: 64 * MiB }), 224 * MiB);
});

test('vm app bench - the VM swaps on exactly the device under test, and puts it back', () => {
  assert.match(swapOnScript('vm-disk', 384 * MiB), /mkswap \/dev\/vda[^]*swapon -p 100 \/dev\/vda/);
  assert.match(swapOnScript('vm-zram', 384 * MiB), new RegExp(`echo ${384 * MiB} > /sys/block/zram0/disksize[^]*swapon -p 100 /dev/zram0`));
  assert.equal(swapOffScript('vm-disk'), 'swapoff /dev/vda');
  assert.match(swapOffScript('vm-zram'), /swapoff \/dev\/zram0\necho 1 > \/sys\/block\/zram0\/reset/);
  const procSwaps = 'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/dm-0                               partition\t393212\t\t0\t\t100\n';
  assert.deepEqual(swapAreas(procSwaps), ['/dev/dm-0']);
  assert.deepEqual(swapAreas('Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n'), []);
});

test('vm app bench - a run in the VM is the host bench\'s own measurement in a cgroup v2, and its row is its last JSON line', () => {
  const script = jobScript('redis', 'vm-zram', 2, 3, { limitBytes: 128 * MiB, ops: 100, valueBytes: 4096 });
  assert.match(script, /mount -t cgroup2/);
  assert.match(script, /echo \+memory > \/sys\/fs\/cgroup\/cgroup.subtree_control/);
  assert.match(script, /app\/run\.js --one --app redis --device vm-zram --ratio 2 --round 3 --limit 134217728 --ops 100 --value 4096$/);
  const row = rowOf('warning: something\n{"round":1,"app":"redis","device":"vm-zram","outcome":"ok","getOps":10}\n');
  assert.equal(row.getOps, 10);
  assert.throws(() => rowOf('Error: redis-server exited\n'), /no result from the run in the VM: Error: redis-server exited/);
});

test('vm app bench - what a failure asks the VM is one shell script that parses and runs through, whatever the VM lacks', () => {
  // It runs only when something already went wrong, so a quoting slip would lose the evidence.
  execFileSync('sh', ['-n', '-c', VM_DIAGNOSIS]);
  // On this machine (no iSCSI sessions, maybe no SCSI devices) every part still prints its heading.
  const out = execFileSync('sh', ['-c', VM_DIAGNOSIS], { encoding: 'utf8' });
  for (const heading of ['uptime: ', '--- dmesg, last lines', '--- iSCSI sessions', '--- SCSI devices', '--- swap', '--- iscsid: ']) {
    assert.ok(out.includes(heading), `${heading} in:\n${out.slice(0, 2000)}`);
  }
  assert.match(out, /^uptime: \d+\.\d+ s$/m);
});

test('vm - a VM with a disk of its own gets it as a virtio drive that bypasses the host page cache; without one, no drive', () => {
  const image = { version: '6.1', kernel: '/k', initrd: '/i' };
  const vm = { name: 'host-b', share: '/run/x/host-b', tap: 't', mac: '52:54:00:00:00:01', memoryMiB: 1024 };
  assert.ok(!qemuCommand(image, vm, 'tcg').includes('-drive'));
  const withDisk = qemuCommand(image, { ...vm, disk: '/var/tmp/rswap-x-host-b.disk' }, 'tcg');
  assert.equal(withDisk[withDisk.indexOf('-drive') + 1], 'file=/var/tmp/rswap-x-host-b.disk,format=raw,if=virtio,cache=none');
});
