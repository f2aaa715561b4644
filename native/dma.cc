// DMA and dirty tracking ioctls: type1 IOMMU info and dirty pages on the container, device DMA logging.
#include <sys/ioctl.h>

#include <cstring>

#include "common.h"
#include "vfio_uapi.h"

namespace vfio {

namespace {

// VFIO_IOMMU_GET_INFO with its capability chain is a few dozen bytes; more is refused, not trusted.
constexpr uint32_t kMaxIommuInfoSize = 64 * 1024;
constexpr int kMaxInfoAttempts = 8;
// The core copies at most a page of ranges (LOG_MAX_RANGES); a caller's list is checked in TS,
// this bounds what native allocates for it.
constexpr size_t kMaxLoggingRanges = 1 << 16;

[[noreturn]] void ThrowIoctl(Napi::Env env, int err, const char* name) { throw SyscallError(env, "ioctl", err, name); }

uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<uint64_t>(ArgOffset(info, i, name));
}

// iommuGetInfo(containerFd): struct vfio_iommu_type1_info and its capability chain, as bytes.
Napi::Value IommuGetInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "containerFd");
  std::vector<uint8_t> buf(sizeof(struct vfio_iommu_type1_info));
  for (int attempt = 0; attempt < kMaxInfoAttempts; attempt++) {
    std::fill(buf.begin(), buf.end(), 0);
    auto* head = reinterpret_cast<struct vfio_iommu_type1_info*>(buf.data());
    head->argsz = static_cast<uint32_t>(buf.size());
    if (RetryEintr([&] { return ioctl(fd, VFIO_IOMMU_GET_INFO, buf.data()); }) < 0) {
      ThrowIoctl(env, errno, "VFIO_IOMMU_GET_INFO");
    }
    uint32_t wanted = head->argsz;
    if (wanted <= buf.size()) return Napi::Buffer<uint8_t>::Copy(env, buf.data(), buf.size());
    if (wanted > kMaxIommuInfoSize) ThrowIoctl(env, E2BIG, "VFIO_IOMMU_GET_INFO");
    buf.resize(wanted);
  }
  ThrowIoctl(env, EAGAIN, "VFIO_IOMMU_GET_INFO");  // argsz kept growing
}

// iommuDirtyPages(containerFd, flags): VFIO_IOMMU_DIRTY_PAGES with _START or _STOP.
Napi::Value IommuDirtyPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "containerFd");
  uint32_t flags = ArgU32(info, 1, "flags");
  if (flags != VFIO_IOMMU_DIRTY_PAGES_FLAG_START && flags != VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP) {
    throw Napi::RangeError::New(env, "flags must be VFIO_IOMMU_DIRTY_PAGES_FLAG_START or _STOP");
  }
  struct vfio_iommu_type1_dirty_bitmap db = {};
  db.argsz = sizeof(db);
  db.flags = flags;
  if (RetryEintr([&] { return ioctl(fd, VFIO_IOMMU_DIRTY_PAGES, &db); }) < 0) {
    ThrowIoctl(env, errno, "VFIO_IOMMU_DIRTY_PAGES");
  }
  return env.Undefined();
}

// iommuDirtyBitmap(containerFd, iova, size, pgsize, bitmap): VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP
// into the caller's bytes. Synchronous: the type1 driver only copies its own bitmap, and the
// caller's memory is written on this thread.
Napi::Value IommuDirtyBitmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "containerFd");
  uint64_t iova = ArgU64(info, 1, "iova");
  uint64_t size = ArgU64(info, 2, "size");
  uint64_t pgsize = ArgU64(info, 3, "pgsize");
  Napi::Uint8Array view = ArgBytes(info, 4, "bitmap");
  uint8_t* data = ViewRange(view, 0, view.ByteLength(), "bitmap");
  std::vector<uint8_t> arg(sizeof(struct vfio_iommu_type1_dirty_bitmap) +
                           sizeof(struct vfio_iommu_type1_dirty_bitmap_get));
  auto* db = reinterpret_cast<struct vfio_iommu_type1_dirty_bitmap*>(arg.data());
  db->argsz = static_cast<uint32_t>(arg.size());
  db->flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
  struct vfio_iommu_type1_dirty_bitmap_get get = {};
  get.iova = iova;
  get.size = size;
  get.bitmap.pgsize = pgsize;
  get.bitmap.size = view.ByteLength();
  get.bitmap.data = reinterpret_cast<__u64*>(data);
  memcpy(arg.data() + sizeof(struct vfio_iommu_type1_dirty_bitmap), &get, sizeof(get));
  if (RetryEintr([&] { return ioctl(fd, VFIO_IOMMU_DIRTY_PAGES, arg.data()); }) < 0) {
    ThrowIoctl(env, errno, "VFIO_IOMMU_DIRTY_PAGES");
  }
  return env.Undefined();
}

// deviceDmaLoggingStart(deviceFd, pageSize, ranges): VFIO_DEVICE_FEATURE_DMA_LOGGING_START for
// ranges given as a BigUint64Array of (iova, length) pairs; returns the page size the driver chose.
Napi::Value DeviceDmaLoggingStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "deviceFd");
  uint64_t page_size = ArgU64(info, 1, "pageSize");
  if (info.Length() < 3 || !info[2].IsTypedArray() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) {
    throw Napi::TypeError::New(env, "ranges must be a BigUint64Array of (iova, length) pairs");
  }
  Napi::BigUint64Array pairs = info[2].As<Napi::BigUint64Array>();
  size_t n = pairs.ElementLength();
  if (n % 2 != 0 || n / 2 > kMaxLoggingRanges) throw Napi::RangeError::New(env, "ranges: bad number of elements");
  std::vector<struct vfio_device_feature_dma_logging_range> ranges(n / 2 ? n / 2 : 1);
  for (size_t i = 0; i < n / 2; i++) {
    ranges[i].iova = pairs[2 * i];
    ranges[i].length = pairs[2 * i + 1];
  }
  std::vector<uint8_t> arg(sizeof(struct vfio_device_feature) + sizeof(struct vfio_device_feature_dma_logging_control));
  auto* feature = reinterpret_cast<struct vfio_device_feature*>(arg.data());
  feature->argsz = static_cast<uint32_t>(arg.size());
  feature->flags = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START;
  struct vfio_device_feature_dma_logging_control control = {};
  control.page_size = page_size;
  control.num_ranges = static_cast<uint32_t>(n / 2);
  control.ranges = reinterpret_cast<uintptr_t>(ranges.data());
  memcpy(feature->data, &control, sizeof(control));
  if (RetryEintr([&] { return ioctl(fd, VFIO_DEVICE_FEATURE, arg.data()); }) < 0) {
    ThrowIoctl(env, errno, "VFIO_DEVICE_FEATURE");
  }
  memcpy(&control, feature->data, sizeof(control));
  return Napi::BigInt::New(env, static_cast<uint64_t>(control.page_size));
}

// deviceDmaLoggingReportAsync(deviceFd, iova, length, pageSize, bitmap): VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT
// off the JS thread (a device may take long to read its log). The driver only sets bits, so the
// bitmap is pinned, or bounced with its current bits both ways (JobBytes kBoth).
Napi::Value DeviceDmaLoggingReportAsync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "deviceFd");
  uint64_t iova = ArgU64(info, 1, "iova");
  uint64_t length = ArgU64(info, 2, "length");
  uint64_t page_size = ArgU64(info, 3, "pageSize");
  Napi::Uint8Array view = ArgBytes(info, 4, "bitmap");
  size_t n = view.ByteLength();
  JobBytesPtr bytes = ArgJobBytes(view, 0, n, JobBytes::Use::kBoth, "bitmap");
  uint8_t* data = bytes->data();
  auto work = [fd, iova, length, page_size, data, n, bytes] {
    Outcome out;
    std::vector<uint8_t> arg(sizeof(struct vfio_device_feature) +
                             sizeof(struct vfio_device_feature_dma_logging_report));
    auto* feature = reinterpret_cast<struct vfio_device_feature*>(arg.data());
    feature->argsz = static_cast<uint32_t>(arg.size());
    feature->flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT;
    struct vfio_device_feature_dma_logging_report report = {};
    report.iova = iova;
    report.length = length;
    report.page_size = page_size;
    report.bitmap = reinterpret_cast<uintptr_t>(data);
    memcpy(feature->data, &report, sizeof(report));
    (void)n;  // the size was checked against the view; the kernel sizes the bitmap from length/page_size
    if (RetryEintr([&] { return ioctl(fd, VFIO_DEVICE_FEATURE, arg.data()); }) < 0) out.err = errno;
    return out;
  };
  auto deliver = [bytes, n](Napi::Env env, const Outcome&) -> Napi::Value {
    bytes->Deliver(env, n);
    return env.Undefined();
  };
  return RunAsync(info.Env(), "ioctl", "VFIO_DEVICE_FEATURE", work, deliver, {view});
}

}  // namespace

void InitDma(Napi::Env env, Napi::Object exports) {
  exports.Set("iommuGetInfo", Napi::Function::New(env, IommuGetInfo, "iommuGetInfo"));
  exports.Set("iommuDirtyPages", Napi::Function::New(env, IommuDirtyPages, "iommuDirtyPages"));
  exports.Set("iommuDirtyBitmap", Napi::Function::New(env, IommuDirtyBitmap, "iommuDirtyBitmap"));
  exports.Set("deviceDmaLoggingStart", Napi::Function::New(env, DeviceDmaLoggingStart, "deviceDmaLoggingStart"));
  exports.Set("deviceDmaLoggingReportAsync",
              Napi::Function::New(env, DeviceDmaLoggingReportAsync, "deviceDmaLoggingReportAsync"));
}

}  // namespace vfio
