// Struct sizes, field offsets and constants straight from the C compiler, so TS decoders can be checked against the
// header.
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>

#include <cstddef>

#include "common.h"
#include "vfio_uapi.h"

namespace vfio {

namespace {

struct LayoutBuilder {
  Napi::Env env;
  Napi::Object structs;
  Napi::Object current;

  void Struct(const char* name, size_t size) {
    current = Napi::Object::New(env);
    current.Set("size", Napi::Number::New(env, static_cast<double>(size)));
    current.Set("fields", Napi::Object::New(env));
    structs.Set(name, current);
  }
  void Field(const char* name, size_t offset, size_t size) {
    Napi::Object f = Napi::Object::New(env);
    f.Set("offset", Napi::Number::New(env, static_cast<double>(offset)));
    f.Set("size", Napi::Number::New(env, static_cast<double>(size)));
    current.Get("fields").As<Napi::Object>().Set(name, f);
  }
};

#define STRUCT(s) b.Struct(#s, sizeof(struct s))
#define FIELD(s, f) b.Field(#f, offsetof(struct s, f), sizeof(((struct s*)nullptr)->f))
#define CONST(c) constants.Set(#c, Napi::Number::New(env, static_cast<double>(c)))

}  // namespace

void InitLayout(Napi::Env env, Napi::Object exports) {
  LayoutBuilder b{env, Napi::Object::New(env), Napi::Object()};

  STRUCT(vfio_group_status);
  FIELD(vfio_group_status, argsz);
  FIELD(vfio_group_status, flags);

  STRUCT(vfio_device_info);
  FIELD(vfio_device_info, argsz);
  FIELD(vfio_device_info, flags);
  FIELD(vfio_device_info, num_regions);
  FIELD(vfio_device_info, num_irqs);
  FIELD(vfio_device_info, cap_offset);

  STRUCT(vfio_region_info);
  FIELD(vfio_region_info, argsz);
  FIELD(vfio_region_info, flags);
  FIELD(vfio_region_info, index);
  FIELD(vfio_region_info, cap_offset);
  FIELD(vfio_region_info, size);
  FIELD(vfio_region_info, offset);

  STRUCT(vfio_info_cap_header);
  FIELD(vfio_info_cap_header, id);
  FIELD(vfio_info_cap_header, version);
  FIELD(vfio_info_cap_header, next);

  STRUCT(vfio_region_sparse_mmap_area);
  FIELD(vfio_region_sparse_mmap_area, offset);
  FIELD(vfio_region_sparse_mmap_area, size);

  STRUCT(vfio_region_info_cap_sparse_mmap);
  FIELD(vfio_region_info_cap_sparse_mmap, header);
  FIELD(vfio_region_info_cap_sparse_mmap, nr_areas);
  FIELD(vfio_region_info_cap_sparse_mmap, reserved);
  b.Field("areas", offsetof(struct vfio_region_info_cap_sparse_mmap, areas), 0);

  STRUCT(vfio_region_info_cap_type);
  FIELD(vfio_region_info_cap_type, header);
  FIELD(vfio_region_info_cap_type, type);
  FIELD(vfio_region_info_cap_type, subtype);

  STRUCT(vfio_irq_info);
  FIELD(vfio_irq_info, argsz);
  FIELD(vfio_irq_info, flags);
  FIELD(vfio_irq_info, index);
  FIELD(vfio_irq_info, count);

  STRUCT(vfio_device_feature);
  FIELD(vfio_device_feature, argsz);
  FIELD(vfio_device_feature, flags);
  b.Field("data", offsetof(struct vfio_device_feature, data), 0);

  STRUCT(vfio_device_feature_migration);
  FIELD(vfio_device_feature_migration, flags);

  STRUCT(vfio_device_feature_mig_state);
  FIELD(vfio_device_feature_mig_state, device_state);
  FIELD(vfio_device_feature_mig_state, data_fd);

  STRUCT(vfio_device_feature_mig_data_size);
  FIELD(vfio_device_feature_mig_data_size, stop_copy_length);

  STRUCT(vfio_precopy_info);
  FIELD(vfio_precopy_info, argsz);
  FIELD(vfio_precopy_info, flags);
  FIELD(vfio_precopy_info, initial_bytes);
  FIELD(vfio_precopy_info, dirty_bytes);

  STRUCT(vfio_device_migration_info);
  FIELD(vfio_device_migration_info, device_state);
  FIELD(vfio_device_migration_info, reserved);
  FIELD(vfio_device_migration_info, pending_bytes);
  FIELD(vfio_device_migration_info, data_offset);
  FIELD(vfio_device_migration_info, data_size);

  STRUCT(vfio_iommu_type1_info);
  FIELD(vfio_iommu_type1_info, argsz);
  FIELD(vfio_iommu_type1_info, flags);
  FIELD(vfio_iommu_type1_info, iova_pgsizes);
  FIELD(vfio_iommu_type1_info, cap_offset);

  STRUCT(vfio_iommu_type1_info_cap_migration);
  FIELD(vfio_iommu_type1_info_cap_migration, header);
  FIELD(vfio_iommu_type1_info_cap_migration, flags);
  FIELD(vfio_iommu_type1_info_cap_migration, pgsize_bitmap);
  FIELD(vfio_iommu_type1_info_cap_migration, max_dirty_bitmap_size);

  STRUCT(vfio_iommu_type1_info_cap_iova_range);
  FIELD(vfio_iommu_type1_info_cap_iova_range, header);
  FIELD(vfio_iommu_type1_info_cap_iova_range, nr_iovas);
  b.Field("iova_ranges", offsetof(struct vfio_iommu_type1_info_cap_iova_range, iova_ranges), 0);

  STRUCT(vfio_iova_range);
  FIELD(vfio_iova_range, start);
  FIELD(vfio_iova_range, end);

  STRUCT(vfio_iommu_type1_info_dma_avail);
  FIELD(vfio_iommu_type1_info_dma_avail, header);
  FIELD(vfio_iommu_type1_info_dma_avail, avail);

  STRUCT(vfio_device_feature_dma_logging_control);
  FIELD(vfio_device_feature_dma_logging_control, page_size);
  FIELD(vfio_device_feature_dma_logging_control, num_ranges);
  FIELD(vfio_device_feature_dma_logging_control, ranges);

  STRUCT(vfio_device_feature_dma_logging_range);
  FIELD(vfio_device_feature_dma_logging_range, iova);
  FIELD(vfio_device_feature_dma_logging_range, length);

  STRUCT(vfio_device_feature_dma_logging_report);
  FIELD(vfio_device_feature_dma_logging_report, iova);
  FIELD(vfio_device_feature_dma_logging_report, length);
  FIELD(vfio_device_feature_dma_logging_report, page_size);
  FIELD(vfio_device_feature_dma_logging_report, bitmap);

  exports.Set("structs", b.structs);

  Napi::Object constants = Napi::Object::New(env);
  CONST(VFIO_API_VERSION);
  CONST(VFIO_TYPE1_IOMMU);
  CONST(VFIO_TYPE1v2_IOMMU);
  CONST(VFIO_GROUP_FLAGS_VIABLE);
  CONST(VFIO_GROUP_FLAGS_CONTAINER_SET);
  CONST(VFIO_DEVICE_FLAGS_RESET);
  CONST(VFIO_DEVICE_FLAGS_PCI);
  CONST(VFIO_DEVICE_FLAGS_CAPS);
  CONST(VFIO_REGION_INFO_FLAG_READ);
  CONST(VFIO_REGION_INFO_FLAG_WRITE);
  CONST(VFIO_REGION_INFO_FLAG_MMAP);
  CONST(VFIO_REGION_INFO_FLAG_CAPS);
  CONST(VFIO_REGION_INFO_CAP_SPARSE_MMAP);
  CONST(VFIO_REGION_INFO_CAP_TYPE);
  CONST(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE);
  CONST(VFIO_REGION_TYPE_MIGRATION_DEPRECATED);
  CONST(VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED);
  CONST(VFIO_IRQ_INFO_EVENTFD);
  CONST(VFIO_IRQ_INFO_MASKABLE);
  CONST(VFIO_IRQ_INFO_AUTOMASKED);
  CONST(VFIO_IRQ_INFO_NORESIZE);
  CONST(VFIO_PCI_BAR0_REGION_INDEX);
  CONST(VFIO_PCI_CONFIG_REGION_INDEX);
  CONST(VFIO_PCI_NUM_REGIONS);
  CONST(VFIO_PCI_NUM_IRQS);
  CONST(VFIO_DEVICE_FEATURE_MASK);
  CONST(VFIO_DEVICE_FEATURE_GET);
  CONST(VFIO_DEVICE_FEATURE_SET);
  CONST(VFIO_DEVICE_FEATURE_PROBE);
  CONST(VFIO_DEVICE_FEATURE_MIGRATION);
  CONST(VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE);
  CONST(VFIO_DEVICE_FEATURE_MIG_DATA_SIZE);
  CONST(VFIO_MIGRATION_STOP_COPY);
  CONST(VFIO_MIGRATION_P2P);
  CONST(VFIO_MIGRATION_PRE_COPY);
  CONST(VFIO_DEVICE_STATE_ERROR);
  CONST(VFIO_DEVICE_STATE_STOP);
  CONST(VFIO_DEVICE_STATE_RUNNING);
  CONST(VFIO_DEVICE_STATE_STOP_COPY);
  CONST(VFIO_DEVICE_STATE_RESUMING);
  CONST(VFIO_DEVICE_STATE_RUNNING_P2P);
  CONST(VFIO_MIG_STATE_PRE_COPY);
  CONST(VFIO_MIG_STATE_PRE_COPY_P2P);
  CONST(VFIO_DEVICE_STATE_V1_STOP);
  CONST(VFIO_DEVICE_STATE_V1_RUNNING);
  CONST(VFIO_DEVICE_STATE_V1_SAVING);
  CONST(VFIO_DEVICE_STATE_V1_RESUMING);
  CONST(VFIO_DEVICE_STATE_MASK);
  CONST(VFIO_IOMMU_INFO_PGSIZES);
  CONST(VFIO_IOMMU_INFO_CAPS);
  CONST(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
  CONST(VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION);
  CONST(VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL);
  CONST(VFIO_DMA_MAP_FLAG_READ);
  CONST(VFIO_DMA_MAP_FLAG_WRITE);
  CONST(VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP);
  CONST(VFIO_IOMMU_DIRTY_PAGES_FLAG_START);
  CONST(VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP);
  CONST(VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP);
  CONST(VFIO_DEVICE_FEATURE_DMA_LOGGING_START);
  CONST(VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP);
  CONST(VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT);
  CONST(O_RDONLY);
  CONST(O_WRONLY);
  CONST(O_RDWR);
  CONST(O_NONBLOCK);
  CONST(PROT_READ);
  CONST(PROT_WRITE);
  CONST(POLLIN);
  CONST(POLLOUT);
  CONST(POLLERR);
  CONST(POLLHUP);
  CONST(POLLNVAL);
  exports.Set("constants", constants);
}

}  // namespace vfio
