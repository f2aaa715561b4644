// Mapping: an mmap of a device region with width-exact volatile accessors and a zero-copy ArrayBuffer view.
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "common.h"
#include "vfio_uapi.h"

namespace vfio {

namespace {

const napi_type_tag kMappingTag = {0x7f1a3c5e9b2d4a61ULL, 0x8c0e4f2a6d1b3e59ULL};

// The mapped memory outlives whichever of its holders goes last: the wrapper, the ArrayBuffer
// views (which may survive the wrapper) and in-flight async copies. All fields are touched on
// the JS thread only; async copies read `addr` on a worker while `inflight` pins it.
struct MapState {
  uint8_t* addr = nullptr;
  size_t length = 0;
  int holders = 0;   // wrapper + live views
  int inflight = 0;  // async copies running
  // DMA mappings of this memory in a VFIO container (VFIO_IOMMU_MAP_DMA): the kernel may write
  // it through the IOVA until the matching unmap, so munmap waits for those too. A wrapper
  // collected with DMA mappings still live leaks the memory rather than freeing it under the device.
  int dma_holds = 0;
  bool unmap_requested = false;

  void UnmapIfIdle() {
    if (unmap_requested && inflight == 0 && dma_holds == 0 && addr) {
      munmap(addr, length);
      addr = nullptr;
    }
  }
  void Release() {
    if (--holders == 0) {
      unmap_requested = true;
      UnmapIfIdle();
      if (inflight == 0) delete this;
    }
  }
};

class Mapping : public Napi::ObjectWrap<Mapping> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Mapping",
                       {
                           InstanceMethod<&Mapping::Read>("read"),
                           InstanceMethod<&Mapping::Write>("write"),
                           InstanceMethod<&Mapping::ReadInto>("readInto"),
                           InstanceMethod<&Mapping::WriteFrom>("writeFrom"),
                           InstanceMethod<&Mapping::Unmap>("unmap"),
                           InstanceMethod<&Mapping::DmaMap>("dmaMap"),
                           InstanceMethod<&Mapping::DmaUnmap>("dmaUnmap"),
                           InstanceMethod<&Mapping::DmaRelease>("dmaRelease"),
                           InstanceAccessor<&Mapping::GetBuffer>("buffer"),
                           InstanceAccessor<&Mapping::GetLength>("length"),
                           InstanceAccessor<&Mapping::GetMapped>("mapped"),
                           InstanceAccessor<&Mapping::GetWritable>("writable"),
                       });
  }

  // new Mapping(fd, offset, length, prot): prot is PROT_READ or PROT_READ|PROT_WRITE; always MAP_SHARED.
  // Other values are refused: PROT_NONE (or PROT_WRITE alone on some CPUs) maps memory that any access,
  // even read(), would fault on.
  explicit Mapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Mapping>(info) {
    Napi::Env env = info.Env();
    int fd = ArgFd(info, 0, "fd");
    int64_t offset = ArgOffset(info, 1, "offset");
    size_t length = ArgSize(info, 2, "length");
    uint32_t prot = ArgU32(info, 3, "prot");
    if (length == 0) throw Napi::RangeError::New(env, "length must be greater than 0");
    if (prot != PROT_READ && prot != (PROT_READ | PROT_WRITE))
      throw Napi::RangeError::New(env, "prot must be PROT_READ or PROT_READ | PROT_WRITE");
    void* addr = mmap(nullptr, length, static_cast<int>(prot), MAP_SHARED, fd, offset);
    if (addr == MAP_FAILED) throw SyscallError(env, "mmap", errno);
    state_ = new MapState();
    state_->addr = static_cast<uint8_t*>(addr);
    state_->length = length;
    state_->holders = 1;
    writable_ = (prot & PROT_WRITE) != 0;
    info.This().As<Napi::Object>().TypeTag(&kMappingTag);
  }

  ~Mapping() override {
    if (state_) state_->Release();  // safety net only: unmap() is the contract
  }

 private:
  MapState* state_ = nullptr;
  bool writable_ = false;
  Napi::Reference<Napi::ArrayBuffer> view_;

  static void CheckReceiver(const Napi::CallbackInfo& info) {
    if (!info.This().IsObject() || !info.This().As<Napi::Object>().CheckTypeTag(&kMappingTag)) {
      throw Napi::TypeError::New(info.Env(), "receiver is not a Mapping");
    }
  }

  uint8_t* Check(const Napi::CallbackInfo& info, size_t offset, size_t length) {
    Napi::Env env = info.Env();
    CheckReceiver(info);
    if (!state_ || state_->unmap_requested) throw Napi::Error::New(env, "mapping is unmapped");
    if (offset > state_->length || length > state_->length - offset) {
      throw Napi::RangeError::New(env, "range [" + std::to_string(offset) + ", +" + std::to_string(length) +
                                           ") is outside the mapping of " + std::to_string(state_->length) + " bytes");
    }
    return state_->addr + offset;
  }

  // A store into a mapping without PROT_WRITE is a SIGSEGV (on a pool thread for writeFrom): refuse it first.
  uint8_t* CheckWritable(const Napi::CallbackInfo& info, size_t offset, size_t length, const char* what) {
    uint8_t* p = Check(info, offset, length);
    if (!writable_) {
      throw Napi::TypeError::New(
          info.Env(), std::string("mapping is read-only (mapped without PROT_WRITE): ") + what + " is not allowed");
    }
    return p;
  }

  Napi::Value Read(const Napi::CallbackInfo& info) {
    size_t offset = ArgSize(info, 0, "offset");
    unsigned width = ArgWidth(info, 1);
    if (offset % width) throw Napi::RangeError::New(info.Env(), "offset is not aligned to the access width");
    uint8_t* p = Check(info, offset, width);
    uint64_t v =
        WithWidth(width, [p](auto zero) -> uint64_t { return *reinterpret_cast<volatile decltype(zero)*>(p); });
    return RegisterToJs(info.Env(), v, width);
  }

  Napi::Value Write(const Napi::CallbackInfo& info) {
    size_t offset = ArgSize(info, 0, "offset");
    unsigned width = ArgWidth(info, 1);
    uint64_t v = ArgRegisterValue(info, 2, width);
    if (offset % width) throw Napi::RangeError::New(info.Env(), "offset is not aligned to the access width");
    uint8_t* p = CheckWritable(info, offset, width, "write()");
    WithWidth(width, [p, v](auto zero) {
      using T = decltype(zero);
      *reinterpret_cast<volatile T*>(p) = static_cast<T>(v);
    });
    return info.Env().Undefined();
  }

  // Bulk copies run on the libuv pool: a large data section must not stall the event loop.
  // writeFrom takes an optional register write (fd, position, width, value) done after the copy
  // in the same job: a data window and its doorbell cost one thread hop.
  Napi::Value Copy(const Napi::CallbackInfo& info, bool from_mapping) {
    size_t offset = ArgSize(info, 0, "offset");
    Napi::Uint8Array view = ArgBytes(info, 1, from_mapping ? "target" : "source");
    size_t view_offset = ArgSize(info, 2, "bufferOffset");
    size_t length = ArgSize(info, 3, "length");
    RegisterWrite reg = from_mapping ? RegisterWrite{} : ArgRegisterWrite(info, 4);
    // readInto(..., checksum): the CRC-32 of the bytes copied, computed by the same pool job.
    bool checksum = from_mapping && info.Length() > 4 && info[4].ToBoolean();
    uint8_t* mapped = from_mapping ? Check(info, offset, length) : CheckWritable(info, offset, length, "writeFrom()");
    // The JS side of the copy is pinned or bounced (JobBytes): the view itself may lose its memory.
    JobBytesPtr job_bytes = ArgJobBytes(view, view_offset, length,
                                        from_mapping ? JobBytes::Use::kTarget : JobBytes::Use::kSource, "buffer");
    uint8_t* bytes = job_bytes->data();
    MapState* state = state_;
    state->inflight++;
    auto work = [=] {
      Outcome out;
      if (from_mapping) {
        memcpy(bytes, mapped, length);
        if (checksum) out.value = Crc32(bytes, length);
      } else {
        memcpy(mapped, bytes, length);
      }
      RunRegisterWrite(reg, out);
      return out;
    };
    auto deliver = [job_bytes, length, checksum](Napi::Env env, const Outcome& out) -> Napi::Value {
      job_bytes->Deliver(env, length);
      return checksum ? Napi::Number::New(env, static_cast<double>(out.value)) : env.Undefined();
    };
    auto done = [state] {
      state->inflight--;
      state->UnmapIfIdle();
      if (state->holders == 0 && state->inflight == 0) delete state;
    };
    return RunAsync(info.Env(), reg.present ? "pwrite" : "memcpy", "", work, deliver, {info.This()}, done);
  }

  Napi::Value ReadInto(const Napi::CallbackInfo& info) { return Copy(info, true); }
  Napi::Value WriteFrom(const Napi::CallbackInfo& info) { return Copy(info, false); }

  // Explicit and idempotent: detaches the view now; the munmap waits for in-flight copies.
  Napi::Value Unmap(const Napi::CallbackInfo& info) {
    CheckReceiver(info);
    if (state_ && !state_->unmap_requested) {
      if (!view_.IsEmpty()) {
        Napi::ArrayBuffer ab = view_.Value();
        if (!ab.IsEmpty() && !ab.IsDetached()) ab.Detach();
        view_.Reset();
      }
      state_->unmap_requested = true;
      state_->UnmapIfIdle();
    }
    return info.Env().Undefined();
  }

  void CheckTag(const Napi::CallbackInfo& info) {
    if (!info.This().IsObject() || !info.This().As<Napi::Object>().CheckTypeTag(&kMappingTag)) {
      throw Napi::TypeError::New(info.Env(), "receiver is not a Mapping");
    }
  }

  // dmaMap(containerFd, offset, length, iova, flags): VFIO_IOMMU_MAP_DMA of [offset, +length) of
  // this mapping at iova. The address never leaves native code; the memory stays mapped until
  // every DMA mapping of it is released (dmaUnmap or dmaRelease).
  Napi::Value DmaMap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = ArgFd(info, 0, "containerFd");
    size_t offset = ArgSize(info, 1, "offset");
    size_t length = ArgSize(info, 2, "length");
    int64_t iova = ArgOffset(info, 3, "iova");
    uint32_t flags = ArgU32(info, 4, "flags");
    if (length == 0) throw Napi::RangeError::New(env, "length must be greater than 0");
    uint8_t* p = Check(info, offset, length);
    if ((flags & VFIO_DMA_MAP_FLAG_WRITE) && !writable_) {
      throw Napi::TypeError::New(env, "mapping is read-only: the device cannot be given write access to it");
    }
    struct vfio_iommu_type1_dma_map map = {};
    map.argsz = sizeof(map);
    map.flags = flags;
    map.vaddr = reinterpret_cast<uintptr_t>(p);
    map.iova = static_cast<uint64_t>(iova);
    map.size = length;
    if (RetryEintr([&] { return ioctl(fd, VFIO_IOMMU_MAP_DMA, &map); }) < 0) {
      throw SyscallError(env, "ioctl", errno, "VFIO_IOMMU_MAP_DMA");
    }
    state_->dma_holds++;
    return env.Undefined();
  }

  // dmaUnmap(containerFd, iova, size, bitmap?, pgsize?): VFIO_IOMMU_UNMAP_DMA, with
  // VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP when a bitmap is given (synchronous: the kernel writes
  // the caller's bytes on this thread). Releases one DMA hold on success; returns the bytes unmapped.
  Napi::Value DmaUnmap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckTag(info);
    int fd = ArgFd(info, 0, "containerFd");
    int64_t iova = ArgOffset(info, 1, "iova");
    int64_t size = ArgOffset(info, 2, "size");
    bool with_bitmap = info.Length() > 3 && !info[3].IsUndefined();
    if (!state_ || state_->dma_holds == 0) throw Napi::Error::New(env, "mapping has no DMA mapping to unmap");
    std::vector<uint8_t> arg(sizeof(struct vfio_iommu_type1_dma_unmap) +
                             (with_bitmap ? sizeof(struct vfio_bitmap) : 0));
    auto* unmap = reinterpret_cast<struct vfio_iommu_type1_dma_unmap*>(arg.data());
    unmap->argsz = static_cast<uint32_t>(arg.size());
    unmap->iova = static_cast<uint64_t>(iova);
    unmap->size = static_cast<uint64_t>(size);
    if (with_bitmap) {
      Napi::Uint8Array view = ArgBytes(info, 3, "bitmap");
      int64_t pgsize = ArgOffset(info, 4, "pgsize");
      struct vfio_bitmap bm = {};
      bm.pgsize = static_cast<uint64_t>(pgsize);
      bm.size = view.ByteLength();
      bm.data = reinterpret_cast<__u64*>(ViewRange(view, 0, view.ByteLength(), "bitmap"));
      memcpy(arg.data() + sizeof(struct vfio_iommu_type1_dma_unmap), &bm, sizeof(bm));
      unmap->flags = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
    }
    if (RetryEintr([&] { return ioctl(fd, VFIO_IOMMU_UNMAP_DMA, arg.data()); }) < 0) {
      throw SyscallError(env, "ioctl", errno, "VFIO_IOMMU_UNMAP_DMA");
    }
    uint64_t unmapped = unmap->size;
    state_->dma_holds--;
    state_->UnmapIfIdle();
    return Napi::BigInt::New(env, unmapped);
  }

  // dmaRelease(): drops one DMA hold without an ioctl, for a mapping the kernel already dropped
  // (its container was closed).
  Napi::Value DmaRelease(const Napi::CallbackInfo& info) {
    CheckTag(info);
    if (state_ && state_->dma_holds > 0) {
      state_->dma_holds--;
      state_->UnmapIfIdle();
    }
    return info.Env().Undefined();
  }

  // A read-only mapping has no view: an ArrayBuffer cannot be made read-only, and a store through it
  // would kill the process.
  Napi::Value GetBuffer(const Napi::CallbackInfo& info) {
    Check(info, 0, 0);
    if (!writable_) {
      throw Napi::TypeError::New(info.Env(),
                                 "mapping is read-only: it has no buffer view (a store through it would crash the "
                                 "process); use read() or readInto()");
    }
    if (!view_.IsEmpty()) {
      Napi::ArrayBuffer existing = view_.Value();
      if (!existing.IsEmpty()) return existing;
    }
    MapState* state = state_;
    state->holders++;
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(
        info.Env(), state->addr, state->length, [](Napi::Env, void*, MapState* s) { s->Release(); }, state);
    view_ = Napi::Weak(ab);
    return ab;
  }

  Napi::Value GetLength(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), state_ ? static_cast<double>(state_->length) : 0);
  }

  Napi::Value GetMapped(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), state_ && !state_->unmap_requested);
  }

  Napi::Value GetWritable(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), writable_); }
};

}  // namespace

void InitMapping(Napi::Env env, Napi::Object exports) { exports.Set("Mapping", Mapping::Define(env)); }

}  // namespace vfio
