import { test } from 'node:test';
import assert from 'node:assert/strict';
import { longestHungTaskS } from '../../cli/testbed/vm.js';

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
