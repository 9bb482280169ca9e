// Runs every compiled test file: unit first, then the ones on real NATS, then the testbed.
// One file at a time: the testbed owns fixed names (bridge rswap-br0, netns rswap-host-*).
import { readdirSync, existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

const groups = ['unit', 'integration', 'e2e'].filter((g) => !process.env.RSWAP_TEST_ONLY || process.env.RSWAP_TEST_ONLY.split(',').includes(g));
const files = groups.flatMap((g) => {
  const dir = `dist/test/${g}`;
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.test.js')).sort().map((f) => `${dir}/${f}`) : [];
});
const result = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-reporter=spec', ...files], { stdio: 'inherit' });
process.exit(result.status ?? 1);
