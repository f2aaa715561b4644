// Host test of the dirty-tracking lines of `vfio-mig info` (cli/info-text.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { infoText, type InfoFacts } from '../../cli/info-text';

const base: InfoFacts = {
  name: 'dev',
  kind: 'mdev',
  driver: 'x',
  group: '1',
  flags: 0,
  regions: [],
  irqs: [],
  migration: null,
};

test('info: dirty tracking lines name what each tracker offers, and why one is missing', () => {
  assert.doesNotMatch(infoText(base), /Dirty tracking/, 'absent when not probed');
  const offered = infoText({
    ...base,
    dirty: { dmaLoggingMissing: null, iommu: { pageSizes: 0x201000n, maxBitmapBytes: 1n << 27n } },
  });
  assert.match(offered, /^Dirty tracking:\n {2}device DMA logging: offered/m);
  assert.match(offered, /IOMMU dirty pages: page sizes 4 KiB 2 MiB, bitmap up to 128.0 MiB per call/);
  const missing = infoText({
    ...base,
    dirty: { dmaLoggingMissing: 'no vfio_log_ops', iommu: { missing: 'no container' } },
  });
  assert.match(missing, /device DMA logging: no: no vfio_log_ops/);
  assert.match(missing, /IOMMU dirty pages: no: no container/);
});
