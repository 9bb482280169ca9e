/** The docs stay true to the code: every setting of every service is in the reference. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BrokerConfig } from '../../services/broker/index.js';
import { ExporterConfig } from '../../services/exporter/index.js';
import { AttacherConfig } from '../../services/attacher/index.js';
import { MonitorConfig } from '../../services/monitor/index.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');

test('docs - docs/operations.md lists every setting of every service as a flag', async () => {
  const doc = await readFile(resolve(ROOT, 'docs/operations.md'), 'utf8');
  const missing: string[] = [];
  for (const [role, schema] of Object.entries({ broker: BrokerConfig, exporter: ExporterConfig, attacher: AttacherConfig, monitor: MonitorConfig })) {
    const start = doc.indexOf(`### ${role}\n`);
    assert.ok(start >= 0, `a '### ${role}' section`);
    const ends = ['\n### ', '\n## '].map((h) => doc.indexOf(h, start + 1)).filter((i) => i > 0);
    const section = doc.slice(start, Math.min(...ends));
    for (const key of Object.keys((schema as unknown as { shape: object }).shape)) {
      if (key === 'nats') continue; // common to all, described once above the tables
      const flag = `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
      if (!section.includes(`\`${flag}\``)) missing.push(`${role} ${flag}`);
    }
  }
  assert.deepEqual(missing, []);
});
