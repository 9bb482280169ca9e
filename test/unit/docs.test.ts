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
      if (['nats', 'creds', 'insecure'].includes(key)) continue; // common to all, described once above the tables
      const flag = `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
      if (!section.includes(`\`${flag}\``)) missing.push(`${role} ${flag}`);
    }
  }
  assert.deepEqual(missing, []);
});

test('docs - every file a doc links to or names in backquotes is in the repository, and the README lists every doc', async () => {
  const { readdir, access } = await import('node:fs/promises');
  const docs = ['README.md', ...(await readdir(resolve(ROOT, 'docs'))).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
  const missing: string[] = [];
  for (const doc of docs) {
    const text = await readFile(resolve(ROOT, doc), 'utf8');
    const base = resolve(ROOT, doc, '..');
    const links = [...text.matchAll(/\]\(([^)#\s]+)(#[^)]*)?\)/g)].map((m) => m[1]!).filter((l) => !/^[a-z]+:/.test(l));
    for (const link of links) await access(resolve(base, link)).catch(() => missing.push(`${doc} -> ${link}`));
    // Source files named in backquotes (`services/broker/reconciler.ts`), from the repository root.
    for (const [, path] of text.matchAll(/`((?:services|shared|cli|bench|test|deploy|scripts)\/[\w./-]+\.(?:ts|sh|service|mjs))`/g)) {
      await access(resolve(ROOT, path!)).catch(() => missing.push(`${doc} -> ${path}`));
    }
  }
  assert.deepEqual(missing, []);
  const readme = await readFile(resolve(ROOT, 'README.md'), 'utf8');
  assert.deepEqual(docs.filter((d) => d !== 'README.md' && !readme.includes(`(${d})`)), [], 'the README links every doc');
});
