/** The exporter's iSCSI parameter setting: parsed, checked, and tuned by default. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_ISCSI_PARAMS, ExporterConfig, IscsiParams } from '../../services/exporter/index.js';

const base = { nats: 'nats://127.0.0.1:4222', host: 'host-a', address: '198.18.0.11' };

test('exporter config - iSCSI parameters: the measured defaults, tgt\'s own with "", checked names and values', () => {
  assert.deepEqual(ExporterConfig.parse(base).iscsiParams, IscsiParams.parse(DEFAULT_ISCSI_PARAMS));
  assert.equal(ExporterConfig.parse(base).iscsiParams.InitialR2T, 'No');
  assert.deepEqual(ExporterConfig.parse({ ...base, iscsiParams: '' }).iscsiParams, {});
  assert.deepEqual(IscsiParams.parse(' InitialR2T=Yes , MaxBurstLength=262144 '), { InitialR2T: 'Yes', MaxBurstLength: '262144' });
  for (const bad of ['Foo=1', 'InitialR2T=maybe', 'MaxBurstLength=', 'MaxBurstLength=1e9', 'HeaderDigest', 'DataDigest=MD5']) {
    const result = ExporterConfig.safeParse({ ...base, iscsiParams: bad });
    assert.equal(result.success, false, bad);
    assert.match(String(result.error?.issues[0]?.message), /not a settable iSCSI parameter/);
  }
});
