import { test } from 'node:test';
import assert from 'node:assert/strict';
import { kernelSpeaks, longestHungTaskS } from '../../cli/testbed/vm.js';

test('vm watchdog - the longest blocked time the kernel reports on the console, and nothing from other lines', () => {
  const console = [
    '[  953.277555] INFO: task kswapd0:38 blocked for more than 30 seconds.',
    '[  953.289314] INFO: task qemu-storage-da:4083 blocked for more than 30 seconds.',
    '[  984.006933] INFO: task kswapd0:38 blocked for more than 61 seconds.',
    '[  984.011563] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.',
    'rswap-vm: agents started',
  ].join('\n');
  assert.equal(longestHungTaskS(console), 61);
  assert.equal(longestHungTaskS('[  637.906589] Out of memory: Killed process 930 (node)\n'), 0);
  assert.equal(longestHungTaskS(''), 0);
});

test('vm accelerator probe - KVM counts only when the guest kernel prints its banner: not on silence after the BIOS, nor on an exit without it', async () => {
  assert.equal(await kernelSpeaks(['sh', '-c', 'echo "Booting from ROM..."; echo "[    0.000000] Linux version 6.1.0-57-amd64"; sleep 30']), true);
  // Seen on this machine: /dev/kvm present, the guest silent after "Booting from ROM...".
  assert.equal(await kernelSpeaks(['sh', '-c', 'echo "Booting from ROM..."; exec sleep 30'], 300), false);
  assert.equal(await kernelSpeaks(['sh', '-c', 'echo "failed to set MSR" >&2; exit 1']), false);
});
