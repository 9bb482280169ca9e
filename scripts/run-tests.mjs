// Runs every compiled test file: unit first, then the ones on real NATS, then the testbed.
// One file at a time: the testbed owns fixed names (bridge rswap-br0, netns rswap-host-*).
import { readdirSync, existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

const ALL = ['unit', 'integration', 'e2e'];
const only = process.env.RSWAP_TEST_ONLY;
const wanted = only === undefined ? ALL : only.split(',').map((g) => g.trim());
const unknown = wanted.filter((g) => !ALL.includes(g));
// An empty or mistyped selection is refused: node --test given no files would run everything it finds.
if (wanted.length === 0 || wanted.includes('') || unknown.length > 0) {
  console.error(`RSWAP_TEST_ONLY='${only}': choose from ${ALL.join(', ')} (comma-separated)`);
  process.exit(2);
}
const files = ALL.filter((g) => wanted.includes(g)).flatMap((g) => {
  const dir = `dist/test/${g}`;
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.test.js')).sort().map((f) => `${dir}/${f}`) : [];
});
if (files.length === 0) {
  console.error(`no compiled tests under dist/test/{${wanted.join(',')}}: run npm run build first`);
  process.exit(2);
}
const result = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-reporter=spec', ...files], { stdio: 'inherit' });
process.exit(result.status ?? 1);
