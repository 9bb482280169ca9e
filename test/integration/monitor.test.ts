/**
 * The monitor's kernel wake-ups on this machine's real kernel: a memory cgroup under reclaim must
 * wake the waiter (cgroup v1 memory.pressure_level or v2 PSI trigger), and a quiet one must not.
 * Run as root (cgroups).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { execa } from 'execa';
import { createMemoryCgroup, type MemoryCgroup } from '../../shared/cgroup.js';
import { openSource } from '../../services/monitor/sources.js';
import { openWaker, psiWaker } from '../../services/monitor/notify.js';

const MiB = 1024 ** 2;
const FILE = `/var/tmp/rswap-waker-test-${process.pid}`;
let cgroup: MemoryCgroup;

before(async () => {
  cgroup = await createMemoryCgroup(`rswap-test-waker-${process.pid}`, 32 * MiB);
});

after(async () => {
  await rm(FILE, { force: true });
  await cgroup.remove();
});

test('monitor - a cgroup under reclaim wakes the monitor; a quiet one does not', async () => {
  const source = await openSource(`cgroup:${cgroup.path}`);
  const { waker, reason } = await openWaker(source, 100);
  assert.ok(waker, `a waker for ${source.scope}: ${reason}`);
  try {
    assert.equal(await waker.wait(300), false, 'no signal while nothing runs in the cgroup');
    const reading = await source.read();
    assert.equal(reading.limitBytes, 32 * MiB);
    // Reading 128 MiB (written around the page cache) from inside a 32 MiB cgroup fills its page
    // cache past the limit: the kernel reclaims there. Clean cache is always reclaimable: no OOM.
    await execa('dd', ['if=/dev/zero', `of=${FILE}`, 'bs=1M', 'count=128', 'oflag=direct', 'status=none']);
    const command = cgroup.wrap(['dd', `if=${FILE}`, 'of=/dev/null', 'bs=1M', 'status=none']);
    const reader = execa(command[0]!, command.slice(1));
    let woke = false;
    for (let i = 0; i < 50 && !woke; i += 1) woke = await waker.wait(100);
    await reader;
    assert.ok(woke, `the ${waker.kind} fired`);
  } finally {
    waker.close();
  }
});

test('monitor - a PSI trigger can be armed on the machine, and a window the kernel refuses is an error', async () => {
  const waker = await psiWaker('/proc/pressure/memory', 100, 2_000);
  try {
    assert.equal(typeof (await waker.wait(50)), 'boolean');
  } finally {
    waker.close();
  }
  await assert.rejects(psiWaker('/proc/pressure/memory', 100, 20_000), /EINVAL|invalid/i, 'a window over 10 s is refused by every kernel: an error, not a silent no-op');
});
