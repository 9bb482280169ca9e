/** What an e2e test checks is gone from the machine once its leases have ended. */
import assert from 'node:assert/strict';
import type { Runner } from '../../shared/runner.js';
import { readMounts, readSwaps } from '../../shared/procfs.js';
import { loopDevicesUnder, type Testbed, testbedBus, tgtadmOn } from '../../cli/testbed/testbed.js';
import { listHosts } from '../../cli/operator.js';
import { reservedBytes } from '../../services/broker/policy.js';
import { waitFor } from '../../shared/wait.js';

/** Every attached loop device on the machine, whoever made it. */
export async function attachedLoops(run: Runner): Promise<string[]> {
  const { stdout } = await run('losetup', ['--list', '--noheadings', '--output', 'NAME']);
  return stdout.split('\n').map((l) => l.trim()).filter(Boolean).sort();
}

/**
 * No loop device (ours by name, or any beyond those attached before the test: one whose FUSE
 * export died no longer names its file), no mount under the testbed, no remote swap area, no
 * target on any host; with `reservations`, no capacity still promised on any host.
 */
export async function assertNothingLeft(tb: Testbed, run: Runner, loopsBefore: string[], options: { reservations?: boolean } = {}): Promise<void> {
  assert.deepEqual(await loopDevicesUnder(run, tb.dir), [], 'no loop device');
  assert.deepEqual((await attachedLoops(run)).filter((d) => !loopsBefore.includes(d)), [], 'no loop device beyond those attached before the test');
  assert.deepEqual((await readMounts()).filter((m) => m.target.startsWith(tb.dir + '/host-')), [], 'no ramfs or FUSE mount');
  assert.deepEqual((await readSwaps()).filter((a) => a.path.startsWith('/dev/loop')), [], 'no remote swap area');
  for (const h of tb.hosts) {
    const targets = await tgtadmOn(run, tb, h, ['--mode', 'target', '--op', 'show']);
    assert.equal(targets.stdout.trim(), '', `no target on ${h.name}`);
  }
  if (options.reservations) {
    // A lender's bytes go back when it reports that it no longer serves the lease (its announce
    // right after it removes a target): wait for that, not for a time.
    await waitFor('no capacity still promised on any host', async () => (await listHosts(testbedBus(tb))).every((h) => reservedBytes(h) === 0), { timeoutMs: 30_000, intervalMs: 250 }).catch(async (error: Error) => {
      throw new Error(`${error.message}: ${JSON.stringify((await listHosts(testbedBus(tb))).map((h) => [h.host, h.reservations, h.exporter?.serving]))}`);
    });
  }
}
