// VFIO ioctls on container, group, device and migration data fds; raw structs go back to TypeScript as bytes.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>

#include "common.h"
#include "vfio_uapi.h"

namespace vfio {

namespace {

// Variable-length info structs (with capability chains) are never larger than this; a kernel
// (or a hostile test double) asking for more is refused instead of trusted.
constexpr uint32_t kMaxInfoSize = 64 * 1024;
constexpr int kMaxInfoAttempts = 8;

int RetryIoctl(int fd, unsigned long request, void* arg) {
  int r;
  do {
    r = ioctl(fd, request, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}

int RetryIoctlInt(int fd, unsigned long request, unsigned long arg) {
  int r;
  do {
    r = ioctl(fd, request, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}

[[noreturn]] void ThrowIoctl(Napi::Env env, int err, const char* name) { throw SyscallError(env, "ioctl", err, name); }

Napi::Value GetApiVersion(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "containerFd");
  int r = RetryIoctlInt(fd, VFIO_GET_API_VERSION, 0);
  if (r < 0) ThrowIoctl(info.Env(), errno, "VFIO_GET_API_VERSION");
  return Napi::Number::New(info.Env(), r);
}

Napi::Value CheckExtension(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "containerFd");
  uint32_t ext = ArgU32(info, 1, "extension");
  int r = RetryIoctlInt(fd, VFIO_CHECK_EXTENSION, ext);
  if (r < 0) ThrowIoctl(info.Env(), errno, "VFIO_CHECK_EXTENSION");
  return Napi::Number::New(info.Env(), r);
}

Napi::Value SetIommu(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "containerFd");
  uint32_t type = ArgU32(info, 1, "iommuType");
  if (RetryIoctlInt(fd, VFIO_SET_IOMMU, type) < 0) ThrowIoctl(info.Env(), errno, "VFIO_SET_IOMMU");
  return info.Env().Undefined();
}

Napi::Value GroupGetStatus(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "groupFd");
  struct vfio_group_status status = {};
  status.argsz = sizeof(status);
  if (RetryIoctl(fd, VFIO_GROUP_GET_STATUS, &status) < 0) ThrowIoctl(info.Env(), errno, "VFIO_GROUP_GET_STATUS");
  return Napi::Number::New(info.Env(), status.flags);
}

Napi::Value GroupSetContainer(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "groupFd");
  int container = ArgFd(info, 1, "containerFd");
  if (RetryIoctl(fd, VFIO_GROUP_SET_CONTAINER, &container) < 0)
    ThrowIoctl(info.Env(), errno, "VFIO_GROUP_SET_CONTAINER");
  return info.Env().Undefined();
}

Napi::Value GroupUnsetContainer(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "groupFd");
  if (RetryIoctlInt(fd, VFIO_GROUP_UNSET_CONTAINER, 0) < 0) ThrowIoctl(info.Env(), errno, "VFIO_GROUP_UNSET_CONTAINER");
  return info.Env().Undefined();
}

void EnsureCloexec(int fd) {
  int flags = fcntl(fd, F_GETFD);
  if (flags >= 0 && !(flags & FD_CLOEXEC)) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

Napi::Value GroupGetDeviceFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "groupFd");
  if (info.Length() < 2 || !info[1].IsString()) throw Napi::TypeError::New(env, "device name must be a string");
  std::string name = info[1].As<Napi::String>();
  int device = RetryIoctl(fd, VFIO_GROUP_GET_DEVICE_FD, const_cast<char*>(name.c_str()));
  if (device < 0) ThrowIoctl(env, errno, "VFIO_GROUP_GET_DEVICE_FD");
  EnsureCloexec(device);  // the kernel already sets O_CLOEXEC; this keeps the rule true on any kernel
  return Napi::Number::New(env, device);
}

// Calls an ioctl whose struct starts with argsz and may need more room than its fixed part
// (capability chains): retries with the size the kernel asks for, which may grow between calls.
template <typename Info>
Napi::Value GetVariableInfo(const Napi::CallbackInfo& info, unsigned long request, const char* name,
                            void (*prepare)(Info*, uint32_t), uint32_t index) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "deviceFd");
  std::vector<uint8_t> buf(sizeof(Info));
  for (int attempt = 0; attempt < kMaxInfoAttempts; attempt++) {
    std::fill(buf.begin(), buf.end(), 0);
    Info* head = reinterpret_cast<Info*>(buf.data());
    head->argsz = static_cast<uint32_t>(buf.size());
    prepare(head, index);
    if (RetryIoctl(fd, request, buf.data()) < 0) ThrowIoctl(env, errno, name);
    uint32_t wanted = head->argsz;
    if (wanted <= buf.size()) return Napi::Buffer<uint8_t>::Copy(env, buf.data(), buf.size());
    if (wanted > kMaxInfoSize) {
      throw SyscallError(env, "ioctl", E2BIG, name);
    }
    buf.resize(wanted);
  }
  throw SyscallError(env, "ioctl", EAGAIN, name);  // argsz kept growing
}

void PrepareDeviceInfo(struct vfio_device_info*, uint32_t) {}
void PrepareRegionInfo(struct vfio_region_info* r, uint32_t index) { r->index = index; }

Napi::Value DeviceGetInfo(const Napi::CallbackInfo& info) {
  return GetVariableInfo<struct vfio_device_info>(info, VFIO_DEVICE_GET_INFO, "VFIO_DEVICE_GET_INFO", PrepareDeviceInfo,
                                                  0);
}

Napi::Value DeviceGetRegionInfo(const Napi::CallbackInfo& info) {
  uint32_t index = ArgU32(info, 1, "index");
  return GetVariableInfo<struct vfio_region_info>(info, VFIO_DEVICE_GET_REGION_INFO, "VFIO_DEVICE_GET_REGION_INFO",
                                                  PrepareRegionInfo, index);
}

Napi::Value DeviceGetIrqInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "deviceFd");
  uint32_t index = ArgU32(info, 1, "index");
  struct vfio_irq_info irq = {};
  irq.argsz = sizeof(irq);
  irq.index = index;
  if (RetryIoctl(fd, VFIO_DEVICE_GET_IRQ_INFO, &irq) < 0) ThrowIoctl(env, errno, "VFIO_DEVICE_GET_IRQ_INFO");
  return Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<uint8_t*>(&irq), sizeof(irq));
}

Outcome ResetNow(int fd) {
  Outcome out;
  if (RetryIoctlInt(fd, VFIO_DEVICE_RESET, 0) < 0) out.err = errno;
  return out;
}

Napi::Value DeviceReset(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "deviceFd");
  Outcome out = ResetNow(fd);
  if (out.err) ThrowIoctl(info.Env(), out.err, "VFIO_DEVICE_RESET");
  return info.Env().Undefined();
}

Napi::Value DeviceResetAsync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "deviceFd");
  return RunAsync(
      info.Env(), "ioctl", "VFIO_DEVICE_RESET", [fd] { return ResetNow(fd); }, nullptr);
}

// VFIO_DEVICE_FEATURE on a caller-built struct vfio_device_feature (argsz, flags, data[]), in place.
struct FeatureArgs {
  int fd;
  uint8_t* data;
  size_t length;
};

FeatureArgs ParseFeature(const Napi::CallbackInfo& info, Napi::Uint8Array* view) {
  FeatureArgs a;
  a.fd = ArgFd(info, 0, "deviceFd");
  *view = ArgBytes(info, 1, "feature");
  a.length = view->ByteLength();
  if (a.length < sizeof(struct vfio_device_feature)) {
    throw Napi::RangeError::New(info.Env(), "feature buffer is smaller than struct vfio_device_feature");
  }
  a.data = static_cast<uint8_t*>(view->Data());
  uint32_t argsz;
  memcpy(&argsz, a.data, sizeof(argsz));
  if (argsz > a.length) throw Napi::RangeError::New(info.Env(), "feature argsz is larger than its buffer");
  return a;
}

Outcome FeatureNow(const FeatureArgs& a) {
  Outcome out;
  int r = RetryIoctl(a.fd, VFIO_DEVICE_FEATURE, a.data);
  if (r < 0) {
    out.err = errno;
    return out;
  }
  out.ret = r;
  // A MIG_DEVICE_STATE SET may hand back a data_fd inside the buffer; keep the O_CLOEXEC rule.
  uint32_t flags;
  memcpy(&flags, a.data + offsetof(struct vfio_device_feature, flags), sizeof(flags));
  size_t fd_at = sizeof(struct vfio_device_feature) + offsetof(struct vfio_device_feature_mig_state, data_fd);
  if ((flags & VFIO_DEVICE_FEATURE_SET) && (flags & VFIO_DEVICE_FEATURE_MASK) == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE &&
      a.length >= fd_at + sizeof(int32_t)) {
    int32_t data_fd;
    memcpy(&data_fd, a.data + fd_at, sizeof(data_fd));
    if (data_fd >= 0) EnsureCloexec(data_fd);
  }
  return out;
}

Napi::Value DeviceFeature(const Napi::CallbackInfo& info) {
  Napi::Uint8Array view;
  FeatureArgs a = ParseFeature(info, &view);
  Outcome out = FeatureNow(a);
  if (out.err) ThrowIoctl(info.Env(), out.err, "VFIO_DEVICE_FEATURE");
  return Napi::Number::New(info.Env(), static_cast<double>(out.ret));
}

// The kernel reads and writes the feature buffer from the pool: it is pinned or bounced (JobBytes).
Napi::Value DeviceFeatureAsync(const Napi::CallbackInfo& info) {
  Napi::Uint8Array view;
  FeatureArgs a = ParseFeature(info, &view);
  JobBytesPtr bytes = ArgJobBytes(view, 0, a.length, JobBytes::Use::kBoth, "feature");
  a.data = bytes->data();
  auto deliver = [a, bytes](Napi::Env env, const Outcome& out) -> Napi::Value {
    try {
      bytes->Deliver(env, a.length);
    } catch (const Napi::Error&) {
      // The caller can no longer see a data_fd the kernel handed back: do not leak it.
      uint32_t flags;
      memcpy(&flags, a.data + offsetof(struct vfio_device_feature, flags), sizeof(flags));
      size_t fd_at = sizeof(struct vfio_device_feature) + offsetof(struct vfio_device_feature_mig_state, data_fd);
      if ((flags & VFIO_DEVICE_FEATURE_SET) &&
          (flags & VFIO_DEVICE_FEATURE_MASK) == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE &&
          a.length >= fd_at + sizeof(int32_t)) {
        int32_t data_fd;
        memcpy(&data_fd, a.data + fd_at, sizeof(data_fd));
        if (data_fd >= 0) close(data_fd);
      }
      throw;
    }
    return Napi::Number::New(env, static_cast<double>(out.ret));
  };
  return RunAsync(
      info.Env(), "ioctl", "VFIO_DEVICE_FEATURE", [a, bytes] { return FeatureNow(a); }, deliver);
}

Outcome PrecopyNow(int fd, struct vfio_precopy_info* pi) {
  Outcome out;
  memset(pi, 0, sizeof(*pi));
  pi->argsz = sizeof(*pi);
  if (RetryIoctl(fd, VFIO_MIG_GET_PRECOPY_INFO, pi) < 0) out.err = errno;
  return out;
}

Napi::Value MigGetPrecopyInfo(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "dataFd");
  struct vfio_precopy_info pi;
  Outcome out = PrecopyNow(fd, &pi);
  if (out.err) ThrowIoctl(info.Env(), out.err, "VFIO_MIG_GET_PRECOPY_INFO");
  return Napi::Buffer<uint8_t>::Copy(info.Env(), reinterpret_cast<uint8_t*>(&pi), sizeof(pi));
}

Napi::Value MigGetPrecopyInfoAsync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "dataFd");
  auto pi = std::make_shared<struct vfio_precopy_info>();
  return RunAsync(
      info.Env(), "ioctl", "VFIO_MIG_GET_PRECOPY_INFO", [fd, pi] { return PrecopyNow(fd, pi.get()); },
      [pi](Napi::Env env, const Outcome&) {
        return Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<uint8_t*>(pi.get()), sizeof(*pi));
      });
}

}  // namespace

void InitVfio(Napi::Env env, Napi::Object exports) {
  exports.Set("getApiVersion", Napi::Function::New(env, GetApiVersion, "getApiVersion"));
  exports.Set("checkExtension", Napi::Function::New(env, CheckExtension, "checkExtension"));
  exports.Set("setIommu", Napi::Function::New(env, SetIommu, "setIommu"));
  exports.Set("groupGetStatus", Napi::Function::New(env, GroupGetStatus, "groupGetStatus"));
  exports.Set("groupSetContainer", Napi::Function::New(env, GroupSetContainer, "groupSetContainer"));
  exports.Set("groupUnsetContainer", Napi::Function::New(env, GroupUnsetContainer, "groupUnsetContainer"));
  exports.Set("groupGetDeviceFd", Napi::Function::New(env, GroupGetDeviceFd, "groupGetDeviceFd"));
  exports.Set("deviceGetInfo", Napi::Function::New(env, DeviceGetInfo, "deviceGetInfo"));
  exports.Set("deviceGetRegionInfo", Napi::Function::New(env, DeviceGetRegionInfo, "deviceGetRegionInfo"));
  exports.Set("deviceGetIrqInfo", Napi::Function::New(env, DeviceGetIrqInfo, "deviceGetIrqInfo"));
  exports.Set("deviceReset", Napi::Function::New(env, DeviceReset, "deviceReset"));
  exports.Set("deviceResetAsync", Napi::Function::New(env, DeviceResetAsync, "deviceResetAsync"));
  exports.Set("deviceFeature", Napi::Function::New(env, DeviceFeature, "deviceFeature"));
  exports.Set("deviceFeatureAsync", Napi::Function::New(env, DeviceFeatureAsync, "deviceFeatureAsync"));
  exports.Set("migGetPrecopyInfo", Napi::Function::New(env, MigGetPrecopyInfo, "migGetPrecopyInfo"));
  exports.Set("migGetPrecopyInfoAsync", Napi::Function::New(env, MigGetPrecopyInfoAsync, "migGetPrecopyInfoAsync"));
}

}  // namespace vfio
