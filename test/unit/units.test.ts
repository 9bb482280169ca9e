import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatBytes, parseBytes, roundUpToMiB } from '../../shared/units.js';

test('units - parses binary sizes with and without units', () => {
  assert.equal(parseBytes('512MiB'), 512 * 1024 ** 2);
  assert.equal(parseBytes('1GiB'), 1024 ** 3);
  assert.equal(parseBytes('64M'), 64 * 1024 ** 2);
  assert.equal(parseBytes('1.5g'), 1.5 * 1024 ** 3);
  assert.equal(parseBytes('4096'), 4096);
  assert.equal(parseBytes(123), 123);
});

test('units - rejects sizes that are not sizes, quoting them', () => {
  assert.throws(() => parseBytes('-1GiB'), /invalid size: '-1GiB'/);
  assert.throws(() => parseBytes('12 parsecs'), /invalid size/);
  assert.throws(() => parseBytes(''), /invalid size/);
  assert.throws(() => parseBytes(-5), /invalid size/);
  assert.throws(() => parseBytes('99999999999TiB'), /out of range/);
});

test('units - formats with the largest whole unit', () => {
  assert.equal(formatBytes(512 * 1024 ** 2), '512MiB');
  assert.equal(formatBytes(1536), '1.5KiB');
  assert.equal(formatBytes(0), '0B');
  assert.equal(roundUpToMiB(1), 1024 ** 2);
  assert.equal(roundUpToMiB(1024 ** 2), 1024 ** 2);
});
