// The VFIO uapi as this addon sees it: the installed header plus, in this one place, what 6.1's header lacks.
#pragma once

#include <linux/types.h>
#include <linux/vfio.h>

// Added to linux/vfio.h in 6.2 (PRE_COPY, PRECOPY_INFO) and 6.3 (MIG_DATA_SIZE);
// the values are fixed by the uapi, so defining them here is safe on every kernel.
#ifndef VFIO_MIGRATION_PRE_COPY
#define VFIO_MIGRATION_PRE_COPY (1 << 2)
#endif

#define VFIO_MIG_STATE_PRE_COPY 6
#define VFIO_MIG_STATE_PRE_COPY_P2P 7

#ifndef VFIO_MIG_GET_PRECOPY_INFO
struct vfio_precopy_info {
  __u32 argsz;
  __u32 flags;
  __aligned_u64 initial_bytes;
  __aligned_u64 dirty_bytes;
};
#define VFIO_MIG_GET_PRECOPY_INFO _IO(VFIO_TYPE, VFIO_BASE + 21)
#endif

#ifndef VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
struct vfio_device_feature_mig_data_size {
  __aligned_u64 stop_copy_length;
};
#define VFIO_DEVICE_FEATURE_MIG_DATA_SIZE 9
#endif

// The v1 region type was renamed ..._DEPRECATED in 5.18; same numbers.
#ifndef VFIO_REGION_TYPE_MIGRATION_DEPRECATED
#define VFIO_REGION_TYPE_MIGRATION_DEPRECATED 3
#endif
#ifndef VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED
#define VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED 1
#endif
