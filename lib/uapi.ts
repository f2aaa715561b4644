// VFIO uapi constants and struct layouts used by the TypeScript decoders (checked against the C header by the unit tests).

export const VFIO_API_VERSION = 0;
export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_TYPE1v2_IOMMU = 3;

export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
export const VFIO_DEVICE_FLAGS_CAPS = 1 << 7;

export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;

export const VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;
export const VFIO_REGION_INFO_CAP_TYPE = 2;
export const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3;

export const VFIO_REGION_TYPE_MIGRATION_DEPRECATED = 3;
export const VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED = 1;

export const VFIO_IRQ_INFO_EVENTFD = 1 << 0;
export const VFIO_IRQ_INFO_MASKABLE = 1 << 1;
export const VFIO_IRQ_INFO_AUTOMASKED = 1 << 2;
export const VFIO_IRQ_INFO_NORESIZE = 1 << 3;

export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
export const VFIO_PCI_NUM_REGIONS = 9;
export const VFIO_PCI_NUM_IRQS = 5;

export const VFIO_DEVICE_FEATURE_MASK = 0xffff;
export const VFIO_DEVICE_FEATURE_GET = 1 << 16;
export const VFIO_DEVICE_FEATURE_SET = 1 << 17;
export const VFIO_DEVICE_FEATURE_PROBE = 1 << 18;
export const VFIO_DEVICE_FEATURE_MIGRATION = 1;
export const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2;
/** Kernel 6.3+. */
export const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9;

export const VFIO_MIGRATION_STOP_COPY = 1 << 0;
export const VFIO_MIGRATION_P2P = 1 << 1;
/** Kernel 6.2+. */
export const VFIO_MIGRATION_PRE_COPY = 1 << 2;

/** v2 states (enum vfio_device_mig_state). */
export const VFIO_DEVICE_STATE_ERROR = 0;
export const VFIO_DEVICE_STATE_STOP = 1;
export const VFIO_DEVICE_STATE_RUNNING = 2;
export const VFIO_DEVICE_STATE_STOP_COPY = 3;
export const VFIO_DEVICE_STATE_RESUMING = 4;
export const VFIO_DEVICE_STATE_RUNNING_P2P = 5;
export const VFIO_DEVICE_STATE_PRE_COPY = 6;
export const VFIO_DEVICE_STATE_PRE_COPY_P2P = 7;

/** v1 device_state bits. */
export const VFIO_DEVICE_STATE_V1_STOP = 0;
export const VFIO_DEVICE_STATE_V1_RUNNING = 1 << 0;
export const VFIO_DEVICE_STATE_V1_SAVING = 1 << 1;
export const VFIO_DEVICE_STATE_V1_RESUMING = 1 << 2;
export const VFIO_DEVICE_STATE_MASK = 0b111;

/** Type1 IOMMU info, DMA mapping and dirty page tracking. */
export const VFIO_IOMMU_INFO_PGSIZES = 1 << 0;
export const VFIO_IOMMU_INFO_CAPS = 1 << 1;
export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
export const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2;
export const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;
export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;
export const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0;
export const VFIO_IOMMU_DIRTY_PAGES_FLAG_START = 1 << 0;
export const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP = 1 << 1;
export const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP = 1 << 2;

/** Device DMA logging (VFIO_DEVICE_FEATURE; the uapi since 6.1). */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8;

export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
/** poll() events (<poll.h>), for what the checker asks of a data fd. */
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
export const POLLNVAL = 0x20;

/** Struct layouts (x86-64 and every Linux ABI: the uapi structs have no implicit padding). */
export const layout = {
  vfio_group_status: { size: 8, fields: { argsz: 0, flags: 4 } },
  vfio_device_info: { size: 20, fields: { argsz: 0, flags: 4, num_regions: 8, num_irqs: 12, cap_offset: 16 } },
  vfio_region_info: { size: 32, fields: { argsz: 0, flags: 4, index: 8, cap_offset: 12, size: 16, offset: 24 } },
  vfio_info_cap_header: { size: 8, fields: { id: 0, version: 2, next: 4 } },
  vfio_region_sparse_mmap_area: { size: 16, fields: { offset: 0, size: 8 } },
  vfio_region_info_cap_sparse_mmap: { size: 16, fields: { header: 0, nr_areas: 8, reserved: 12, areas: 16 } },
  vfio_region_info_cap_type: { size: 16, fields: { header: 0, type: 8, subtype: 12 } },
  vfio_irq_info: { size: 16, fields: { argsz: 0, flags: 4, index: 8, count: 12 } },
  vfio_device_feature: { size: 8, fields: { argsz: 0, flags: 4, data: 8 } },
  vfio_device_feature_migration: { size: 8, fields: { flags: 0 } },
  vfio_device_feature_mig_state: { size: 8, fields: { device_state: 0, data_fd: 4 } },
  vfio_device_feature_mig_data_size: { size: 8, fields: { stop_copy_length: 0 } },
  vfio_precopy_info: { size: 24, fields: { argsz: 0, flags: 4, initial_bytes: 8, dirty_bytes: 16 } },
  vfio_iommu_type1_info: { size: 24, fields: { argsz: 0, flags: 4, iova_pgsizes: 8, cap_offset: 16 } },
  vfio_iommu_type1_info_cap_migration: {
    size: 32,
    fields: { header: 0, flags: 8, pgsize_bitmap: 16, max_dirty_bitmap_size: 24 },
  },
  vfio_iommu_type1_info_cap_iova_range: { size: 16, fields: { header: 0, nr_iovas: 8, iova_ranges: 16 } },
  vfio_iova_range: { size: 16, fields: { start: 0, end: 8 } },
  vfio_iommu_type1_info_dma_avail: { size: 12, fields: { header: 0, avail: 8 } },
  vfio_device_feature_dma_logging_control: { size: 24, fields: { page_size: 0, num_ranges: 8, ranges: 16 } },
  vfio_device_feature_dma_logging_range: { size: 16, fields: { iova: 0, length: 8 } },
  vfio_device_feature_dma_logging_report: { size: 32, fields: { page_size: 16, iova: 0, length: 8, bitmap: 24 } },
  vfio_device_migration_info: {
    size: 32,
    fields: { device_state: 0, reserved: 4, pending_bytes: 8, data_offset: 16, data_size: 24 },
  },
} as const;
