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
  return RetryEintr([&] { return ioctl(fd, request, arg); });
}

int RetryIoctlInt(int fd, unsigned long request, unsigned long arg) {
  return RetryEintr([&] { return ioctl(fd, request, arg); });
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

// deviceReset[Async](deviceFd): VFIO_DEVICE_RESET.
struct ResetOp {
  static constexpr const char* kSyscall = "ioctl";
  int fd;

  ResetOp(const Napi::CallbackInfo& info, bool) : fd(ArgFd(info, 0, "deviceFd")) {}
  Outcome Run() const {
    Outcome out;
    if (RetryIoctlInt(fd, VFIO_DEVICE_RESET, 0) < 0) out.err = errno;
    return out;
  }
  Napi::Value Result(Napi::Env env, const Outcome&) const { return env.Undefined(); }
  std::string Detail(const Outcome&) const { return "VFIO_DEVICE_RESET"; }
};

// The data_fd a MIG_DEVICE_STATE SET handed back inside a feature buffer, or -1.
int32_t HandedDataFd(const uint8_t* data, size_t length) {
  uint32_t flags;
  memcpy(&flags, data + offsetof(struct vfio_device_feature, flags), sizeof(flags));
  size_t fd_at = sizeof(struct vfio_device_feature) + offsetof(struct vfio_device_feature_mig_state, data_fd);
  if (!(flags & VFIO_DEVICE_FEATURE_SET) ||
      (flags & VFIO_DEVICE_FEATURE_MASK) != VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE || length < fd_at + sizeof(int32_t)) {
    return -1;
  }
  int32_t data_fd;
  memcpy(&data_fd, data + fd_at, sizeof(data_fd));
  return data_fd;
}

// deviceFeature[Async](deviceFd, feature): VFIO_DEVICE_FEATURE on a caller-built struct
// vfio_device_feature (argsz, flags, data[]), in place. Async, the kernel reads and writes the
// buffer from the pool: it is pinned or bounced (JobBytes).
struct FeatureOp {
  static constexpr const char* kSyscall = "ioctl";
  int fd;
  uint8_t* data;
  size_t length;
  JobBytesPtr bytes;  // async only

  FeatureOp(const Napi::CallbackInfo& info, bool async)
      : FeatureOp(info.Env(), ArgFd(info, 0, "deviceFd"), ArgBytes(info, 1, "feature"), async) {}
  // One device's call of deviceFeaturesAsync: the same checks, before any ioctl of the batch.
  FeatureOp(Napi::Env env, int device_fd, Napi::Uint8Array view, bool async) : fd(device_fd) {
    length = view.ByteLength();
    if (length < sizeof(struct vfio_device_feature)) {
      throw Napi::RangeError::New(env, "feature buffer is smaller than struct vfio_device_feature");
    }
    data = static_cast<uint8_t*>(view.Data());
    uint32_t argsz;
    memcpy(&argsz, data, sizeof(argsz));
    if (argsz > length) throw Napi::RangeError::New(env, "feature argsz is larger than its buffer");
    if (async) {
      bytes = ArgJobBytes(view, 0, length, JobBytes::Use::kBoth, "feature");
      data = bytes->data();
    }
  }
  Outcome Run() const {
    Outcome out;
    int r = RetryIoctl(fd, VFIO_DEVICE_FEATURE, data);
    if (r < 0) {
      out.err = errno;
      return out;
    }
    out.ret = r;
    // Keep the O_CLOEXEC rule for a data_fd handed back inside the buffer.
    int32_t data_fd = HandedDataFd(data, length);
    if (data_fd >= 0) EnsureCloexec(data_fd);
    return out;
  }
  Napi::Value Result(Napi::Env env, const Outcome& out) const {
    if (bytes) {
      try {
        bytes->Deliver(env, length);
      } catch (const Napi::Error&) {
        // The caller can no longer see a data_fd the kernel handed back: do not leak it.
        int32_t data_fd = HandedDataFd(data, length);
        if (data_fd >= 0) close(data_fd);
        throw;
      }
    }
    return Napi::Number::New(env, static_cast<double>(out.ret));
  }
  std::string Detail(const Outcome&) const { return "VFIO_DEVICE_FEATURE"; }
};

// deviceFeaturesAsync(deviceFds, features): VFIO_DEVICE_FEATURE on every device at once, one pool
// job each (RunAsyncParts), settled together: the same state change of several devices (a
// migration's downtime) wakes the JS thread once, not once per device, and takes as long as the
// slowest device's ioctl, not their sum (a real device's arc is firmware work: quiesce, save,
// load). Every ioctl runs whatever the others did; the promise resolves one entry per device:
// the ioctl's return value, or the error it failed with.
Napi::Value DeviceFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray() || !info[1].IsArray())
    throw Napi::TypeError::New(env, "deviceFds and features must be arrays");
  Napi::Array fd_list = info[0].As<Napi::Array>();
  Napi::Array feature_list = info[1].As<Napi::Array>();
  uint32_t count = fd_list.Length();
  if (count != feature_list.Length()) throw Napi::RangeError::New(env, "deviceFds and features differ in length");
  // Each device is a FeatureOp (its checks, its ioctl, its delivery); its ioctl is a part of its own.
  auto entries = std::make_shared<std::vector<FeatureOp>>();
  entries->reserve(count);
  std::vector<Napi::Value> keep;
  for (uint32_t i = 0; i < count; i++) {
    Napi::Value fd = fd_list[i];
    if (!fd.IsNumber()) throw Napi::TypeError::New(env, "deviceFds must hold numbers");
    int32_t n = fd.As<Napi::Number>().Int32Value();
    if (n < 0 || static_cast<double>(n) != fd.As<Napi::Number>().DoubleValue())
      throw Napi::RangeError::New(env, "deviceFds must hold fds (integers >= 0)");
    Napi::Value v = feature_list[i];
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Napi::TypeError::New(env, "features must hold Buffers or Uint8Arrays");
    entries->push_back(FeatureOp(env, n, v.As<Napi::Uint8Array>(), true));
    keep.push_back(v);
  }
  std::vector<PoolJob::Work> parts;
  parts.reserve(count);
  for (uint32_t i = 0; i < count; i++) parts.push_back([entries, i] { return (*entries)[i].Run(); });
  auto convert = [entries](Napi::Env e, const std::vector<Outcome>& outcomes) -> Napi::Value {
    // Every buffer is delivered before any result is handed out. A delivery that fails (its
    // memory was detached) closes its own data_fd; then the promise rejects, so no data_fd of
    // the others may stay open unseen either.
    Napi::Array results = Napi::Array::New(e, entries->size());
    bool delivered = true;
    for (uint32_t i = 0; i < entries->size(); i++) {
      const FeatureOp& op = (*entries)[i];
      const Outcome& out = outcomes[i];
      if (out.err) {
        results[i] = SyscallError(e, FeatureOp::kSyscall, out.err, op.Detail(out).c_str()).Value();
        continue;
      }
      try {
        results[i] = op.Result(e, out);
      } catch (const Napi::Error&) {
        delivered = false;
        results[i] = e.Undefined();
      }
    }
    if (!delivered) {
      for (uint32_t i = 0; i < entries->size(); i++) {
        const FeatureOp& op = (*entries)[i];
        Napi::Value r = results[i];
        int32_t data_fd = r.IsNumber() ? HandedDataFd(op.data, op.length) : -1;
        if (data_fd >= 0) close(data_fd);
      }
      throw Napi::Error::New(e, "deviceFeaturesAsync: a feature buffer was detached while its ioctl ran");
    }
    return results;
  };
  return RunAsyncParts(env, "ioctl", "VFIO_DEVICE_FEATURE", std::move(parts), convert, keep);
}

// migGetPrecopyInfo[Async](dataFd): VFIO_MIG_GET_PRECOPY_INFO, the struct as bytes.
struct PrecopyInfoOp {
  static constexpr const char* kSyscall = "ioctl";
  int fd;
  struct vfio_precopy_info pi = {};

  PrecopyInfoOp(const Napi::CallbackInfo& info, bool) : fd(ArgFd(info, 0, "dataFd")) {}
  Outcome Run() {
    Outcome out;
    memset(&pi, 0, sizeof(pi));
    pi.argsz = sizeof(pi);
    if (RetryIoctl(fd, VFIO_MIG_GET_PRECOPY_INFO, &pi) < 0) out.err = errno;
    return out;
  }
  Napi::Value Result(Napi::Env env, const Outcome&) const {
    return Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(&pi), sizeof(pi));
  }
  std::string Detail(const Outcome&) const { return "VFIO_MIG_GET_PRECOPY_INFO"; }
};

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
  ExportTwin<ResetOp>(env, exports, "deviceReset");
  ExportTwin<FeatureOp>(env, exports, "deviceFeature");
  exports.Set("deviceFeaturesAsync", Napi::Function::New(env, DeviceFeatures, "deviceFeaturesAsync"));
  ExportTwin<PrecopyInfoOp>(env, exports, "migGetPrecopyInfo");
}

}  // namespace vfio
