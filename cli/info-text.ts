// `vfio-mig info` for a person: regions, IRQs and migration named and decoded, the way lspci -v reads.
import type { Capability, IrqInfo, RegionInfo } from '../lib';
import { formatBytes } from './progress';

// linux/vfio.h: VFIO_DEVICE_FLAGS_*, VFIO_IRQ_INFO_*, and the vfio-pci region and IRQ indexes.
const DEVICE_FLAGS = ['RESET', 'PCI', 'PLATFORM', 'AMBA', 'CCW', 'AP', 'FSL_MC', 'CAPS', 'CDX'];
const IRQ_FLAGS = ['eventfd', 'maskable', 'automasked', 'noresize'];
const PCI_REGIONS = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA'];
const PCI_IRQS = ['INTx', 'MSI', 'MSI-X', 'ERR', 'REQ'];
const VFIO_DEVICE_FLAGS_PCI = 1 << 1;

function flagNames(flags: number, names: readonly string[]): string {
  const out = names.filter((_, bit) => flags & (1 << bit));
  const unknown = flags & ~((1 << names.length) - 1);
  if (unknown) out.push(`0x${unknown.toString(16)}`);
  return out.length ? out.join(' ') : 'none';
}

function hex(n: bigint | number): string {
  return `0x${n.toString(16)}`;
}

function regionName(region: RegionInfo, pci: boolean): string {
  const type = region.capabilities.find((c) => c.kind === 'type');
  if (type && type.kind === 'type') {
    if (type.type === 3 && type.subtype === 1) return 'migration (v1)';
    return `type (${type.type}, ${type.subtype})`;
  }
  return (pci && PCI_REGIONS[region.index]) || `region ${region.index}`;
}

function capabilityText(c: Capability): string {
  switch (c.kind) {
    case 'sparse-mmap':
      return `mmap areas ${c.areas.map((a) => `[${hex(a.offset)}, +${hex(a.size)})`).join(' ') || '(none)'}`;
    case 'type':
      return `type (${c.type}, ${c.subtype})`;
    case 'msix-mappable':
      return 'MSI-X table mmap-able';
    default:
      return `capability ${c.id} v${c.version} (${c.bytes.length} bytes, not decoded)`;
  }
}

export interface InfoFacts {
  name: string;
  kind: string;
  driver: string;
  group: string;
  flags: number;
  regions: RegionInfo[];
  irqs: IrqInfo[];
  migration: {
    protocol: 'v1' | 'v2';
    details: Record<string, unknown>;
    state: string;
    dataSize?: bigint;
  } | null;
  /** What the two dirty trackers offer; absent when not probed. */
  dirty?: DirtyFacts;
}

export interface DirtyFacts {
  /** Device DMA logging (VFIO_DEVICE_FEATURE_PROBE of DMA_LOGGING_START): null when offered, else why not. */
  dmaLoggingMissing: string | null;
  /** The container's type1 IOMMU: its dirty page sizes and bitmap limit, or why there are none. */
  iommu: { pageSizes: bigint; maxBitmapBytes: bigint } | { missing: string };
}

// "4 KiB 2 MiB" from a page-size bitmap (bit n: 2^n bytes).
function pageSizeNames(bitmap: bigint): string {
  const out: string[] = [];
  for (let bit = 0n; bit < 64n; bit++) if (bitmap & (1n << bit)) out.push(formatBytes(1n << bit).replace('.0', ''));
  return out.join(' ') || 'none';
}

function dirtyLines(d: DirtyFacts): string[] {
  return [
    'Dirty tracking:',
    `  device DMA logging: ${d.dmaLoggingMissing === null ? 'offered (VFIO_DEVICE_FEATURE_DMA_LOGGING_*)' : `no: ${d.dmaLoggingMissing}`}`,
    'missing' in d.iommu
      ? `  IOMMU dirty pages: no: ${d.iommu.missing}`
      : `  IOMMU dirty pages: page sizes ${pageSizeNames(d.iommu.pageSizes)}, bitmap up to ${formatBytes(d.iommu.maxBitmapBytes)} per call`,
  ];
}

function migrationLines(m: NonNullable<InfoFacts['migration']>): string[] {
  const lines = [`Migration: ${m.protocol}, state ${m.state}`];
  if (m.protocol === 'v2') {
    const f = (m.details.flags ?? {}) as Record<string, boolean>;
    const names = [f.stopCopy && 'STOP_COPY', f.p2p && 'P2P', f.preCopy && 'PRE_COPY'].filter(Boolean);
    lines.push(`  protocol flags: ${names.join(' ') || 'none'}`);
    lines.push(
      m.dataSize === undefined
        ? '  stop-and-copy size: no estimate (kernel before 6.3 or driver without MIG_DATA_SIZE)'
        : `  stop-and-copy size: about ${formatBytes(m.dataSize)} (the kernel's estimate)`,
    );
  } else {
    const areas = (m.details.mmapAreas ?? []) as unknown[];
    lines.push(
      `  migration region ${String(m.details.regionIndex)}, ${hex(BigInt(String(m.details.regionSize)))} bytes`,
    );
    lines.push(`  data section: ${areas.length ? `${areas.length} mmap-able area(s)` : 'trapped (pread/pwrite only)'}`);
  }
  return lines;
}

/** The human form of `info`; --json prints the facts themselves. */
export function infoText(facts: InfoFacts): string {
  const pci = (facts.flags & VFIO_DEVICE_FLAGS_PCI) !== 0;
  const lines = [
    `${facts.name}: ${facts.kind} device, driver ${facts.driver}, IOMMU group ${facts.group}`,
    `  flags: ${flagNames(facts.flags, DEVICE_FLAGS)}`,
    'Regions:',
  ];
  for (const r of facts.regions) {
    if (r.size === 0n && !r.capabilities.length) continue;
    const access = [r.readable && 'read', r.writable && 'write', r.mmapable && 'mmap'].filter(Boolean).join('/');
    lines.push(
      `  ${regionName(r, pci).padEnd(16)} ${hex(r.size).padStart(12)} bytes at offset ${hex(r.offset)}, ${access || 'no access'}`,
    );
    for (const c of r.capabilities) if (c.kind !== 'type') lines.push(`  ${''.padEnd(16)} ${capabilityText(c)}`);
  }
  const empty = facts.regions.filter((r) => r.size === 0n && !r.capabilities.length).map((r) => regionName(r, pci));
  if (empty.length) lines.push(`  (empty: ${empty.join(', ')})`);
  lines.push('Interrupts:');
  for (const i of facts.irqs) {
    const name = (pci && PCI_IRQS[i.index]) || `IRQ index ${i.index}`;
    lines.push(
      `  ${name.padEnd(16)} ${String(i.count).padStart(4)} vector(s)${i.count ? `, ${flagNames(i.flags, IRQ_FLAGS)}` : ''}`,
    );
  }
  lines.push(...(facts.migration ? migrationLines(facts.migration) : ['Migration: none']));
  if (facts.dirty) lines.push(...dirtyLines(facts.dirty));
  return lines.join('\n');
}
