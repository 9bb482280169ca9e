import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execIn, hierarchyOf, parseHierarchies, stillInside } from '../../shared/hierarchies.js';

// /proc/self/mountinfo of this project's test machines (Debian 12, hybrid: v1 controllers and v2).
const HYBRID = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
52 24 0:32 / /mnt/memory\\040again rw,relatime - cgroup cgroup rw,memory`;

test('hierarchies - every mounted hierarchy once, v1 with its controllers, v2 unified', () => {
  const found = parseHierarchies(HYBRID);
  assert.deepEqual(found.map((h) => [h.mountPoint, h.version, h.controllers.join(',')]), [
    ['/sys/fs/cgroup/cpu', 1, 'cpu'],
    ['/sys/fs/cgroup/cpuset', 1, 'cpuset'],
    ['/sys/fs/cgroup/memory', 1, 'memory'],
    ['/sys/fs/cgroup/freezer', 1, 'freezer'],
    ['/sys/fs/cgroup/systemd', 1, 'name=systemd'],
    ['/sys/fs/cgroup/unified', 2, ''],
  ], 'the tmpfs is none, the memory hierarchy mounted twice is one');
  assert.equal(hierarchyOf(found, '/sys/fs/cgroup/memory/rswap-host-a')?.mountPoint, '/sys/fs/cgroup/memory');
  assert.equal(hierarchyOf(found, '/sys/fs/cgroup/memoryx/a'), undefined);
});

test('hierarchies - a pure v2 machine is one hierarchy; a sub-tree mount (a private namespace) is kept as such, the whole one preferred', () => {
  assert.deepEqual(parseHierarchies('30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate'), [{ mountPoint: '/sys/fs/cgroup', version: 2, controllers: [], root: '/' }]);
  const sub = '30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw';
  assert.equal(parseHierarchies(sub)[0]!.root, '/docker/abc');
  assert.equal(parseHierarchies(`${sub}\n31 23 0:26 / /host/cgroup rw - cgroup2 cgroup2 rw`)[0]!.mountPoint, '/host/cgroup');
});

test('hierarchies - execIn moves the shell into each folder before it execs, with a code of its own for a failed move', () => {
  const command = execIn(['/sys/fs/cgroup/cpu/rswap.datapath/tgtd-3260', '/sys/fs/cgroup/memory/rswap-host-a'], ['tgtd', '-f', '--iscsi', 'portal=10.0.0.1:3260'], 125);
  assert.deepEqual(command.slice(3), ['sh', 'tgtd', '-f', '--iscsi', 'portal=10.0.0.1:3260'], 'the command is passed as arguments, never in the script');
  assert.equal(command[2], `for f in '/sys/fs/cgroup/cpu/rswap.datapath/tgtd-3260/cgroup.procs' '/sys/fs/cgroup/memory/rswap-host-a/cgroup.procs'; do echo $$ > "$f" || exit 125; done; exec "$@"`);
  assert.throws(() => execIn(["/sys/fs/cgroup/it's"], ['true'], 125), /a cgroup folder with a quote/);
});

test('hierarchies - a mount covered by a later one at its path or above is not used: a container that binds the host\'s /sys under its runtime\'s own cgroup mounts', () => {
  // runc on a cgroup v1 host: the host's /sys bound (its hierarchies whole), then a tmpfs at
  // /sys/fs/cgroup with only the container's own folder of each hierarchy on it.
  const docker = `100 90 0:40 / /sys rw - sysfs sysfs rw
101 100 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
102 100 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
110 90 0:50 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
111 110 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
112 110 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu`;
  const seen = parseHierarchies(docker);
  assert.deepEqual(seen.map((h) => [h.mountPoint, h.root]), [['/sys/fs/cgroup/memory', '/docker/abc'], ['/sys/fs/cgroup/cpu', '/docker/abc']], 'the sub-trees, which a path reaches, not the covered whole mounts');
  // Mounted again whole (fullViews), the whole view wins.
  const viewed = parseHierarchies(`${docker}\n120 90 0:32 / /run/rswap/cgroup/memory rw - cgroup cgroup rw,memory`);
  assert.deepEqual(viewed.find((h) => h.controllers.includes('memory')), { mountPoint: '/run/rswap/cgroup/memory', version: 1, controllers: ['memory'], root: '/' });
});

test('hierarchies - stillInside names the hierarchies where a daemon is in the agent\'s cgroup or below it, never where the agent is at the root', () => {
  const agent = new Map([['4:memory', '/docker/abc'], ['1:cpu', '/'], ['0:', '/system.slice/docker-abc.scope']]);
  assert.deepEqual(stillInside(agent, new Map([['4:memory', '/rswap.datapath/tgtd-3260'], ['1:cpu', '/rswap.datapath/tgtd-3260'], ['0:', '/rswap.datapath/tgtd-3260']])), []);
  assert.deepEqual(stillInside(agent, new Map([['4:memory', '/docker/abc/rswap.datapath/tgtd-3260'], ['1:cpu', '/rswap.datapath/tgtd-3260'], ['0:', '/system.slice/docker-abc.scope']])), ['4:memory', '0:']);
  assert.deepEqual(stillInside(agent, new Map([['4:memory', '/docker/abcdef']])), [], 'a sibling whose name starts the same is not inside');
});
