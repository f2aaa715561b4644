// Native-owned I/O memory (allocBuffer, allocBufferAsync) and the pinned-or-bounced byte ranges async jobs work on.
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include "common.h"

namespace vfio {

// One allocation of I/O memory. Its holders are the Buffer's backing store (through the
// finalizer's shared_ptr, which follows the memory when the ArrayBuffer is transferred) and
// every job working inside it; the memory is freed when the last one lets go, on any thread.
struct IoBlock {
  uint8_t* data;
  size_t size;
  IoBlock(uint8_t* d, size_t n) : data(d), size(n) {}
  ~IoBlock();
};

namespace {

// Live blocks by start address, so a job given any view finds the allocation it lies in. Shared
// by every environment (worker threads); leaked on purpose: a wait thread may still run while
// static destructors do at exit().
struct Registry {
  std::mutex mu;
  std::map<uintptr_t, std::weak_ptr<IoBlock>> blocks;
};
Registry& TheRegistry() {
  static Registry* r = new Registry();
  return *r;
}

std::shared_ptr<IoBlock> FindBlock(const uint8_t* p, size_t length) {
  if (!p) return nullptr;
  Registry& r = TheRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.blocks.upper_bound(reinterpret_cast<uintptr_t>(p));
  if (it == r.blocks.begin()) return nullptr;
  --it;
  std::shared_ptr<IoBlock> block = it->second.lock();
  if (!block || p < block->data) return nullptr;
  size_t at = static_cast<size_t>(p - block->data);
  if (at > block->size || length > block->size - at) return nullptr;
  return block;
}

// A Buffer over `block`'s memory, registered so that jobs given any view of it pin it.
Napi::Value WrapBlock(Napi::Env env, std::shared_ptr<IoBlock> block) {
  uint8_t* p = block->data;
  size_t size = block->size;
  {
    Registry& r = TheRegistry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.blocks[reinterpret_cast<uintptr_t>(p)] = block;
  }
  auto* holder = new std::shared_ptr<IoBlock>(std::move(block));
  try {
    return Napi::Buffer<uint8_t>::New(
        env, p, size, [](Napi::Env, uint8_t*, std::shared_ptr<IoBlock>* h) { delete h; }, holder);
  } catch (const Napi::Error&) {
    // A runtime that forbids external buffers (V8 sandbox): plain memory, bounced by every job.
    delete holder;
    Napi::Buffer<uint8_t> plain = Napi::Buffer<uint8_t>::New(env, size);
    memset(plain.Data(), 0, size);
    return plain;
  }
}

// A zeroed block of `size` (> 0) bytes, or null when memory is short. calloc: large blocks come
// from mmap, already zero, so zeroing costs nothing up front.
std::shared_ptr<IoBlock> NewBlock(size_t size) {
  auto* p = static_cast<uint8_t*>(calloc(size, 1));
  return p ? std::make_shared<IoBlock>(p, size) : nullptr;
}

// allocBuffer(size): a zeroed Buffer over native memory that async jobs can pin.
Napi::Value AllocBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t size = ArgSize(info, 0, "size");
  if (size == 0) return Napi::Buffer<uint8_t>::New(env, 0);
  std::shared_ptr<IoBlock> block = NewBlock(size);
  if (!block) throw SyscallError(env, "calloc", ENOMEM);
  return WrapBlock(env, std::move(block));
}

// allocBufferAsync(size): allocBuffer, with every page written once on the pool. Memory fresh
// from mmap faults on each page's first write, on whichever thread makes it: several ms per MiB
// under emulation. A buffer the JS thread copies into first (a stream reader's carry-over) is
// made with this, so that the faults are a pool thread's and the event loop runs on.
Napi::Value AllocBufferAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t size = ArgSize(info, 0, "size");
  if (size == 0) {
    auto deferred = Napi::Promise::Deferred::New(env);
    deferred.Resolve(Napi::Buffer<uint8_t>::New(env, 0));
    return deferred.Promise();
  }
  // Filled on the pool thread, taken on the JS thread; freed with the job if never taken.
  auto made = std::make_shared<std::shared_ptr<IoBlock>>();
  auto work = [made, size] {
    Outcome out;
    *made = NewBlock(size);
    if (!*made) {
      out.err = ENOMEM;
      return out;
    }
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    volatile uint8_t* bytes = (*made)->data;
    for (size_t at = 0; at < size; at += page) bytes[at] = 0;
    return out;
  };
  auto convert = [made](Napi::Env e, const Outcome&) -> Napi::Value { return WrapBlock(e, std::move(*made)); };
  return RunAsync(env, "calloc", "", work, convert);
}
}  // namespace

bool NativeOwned(const uint8_t* p, size_t length) { return FindBlock(p, length) != nullptr; }

IoBlock::~IoBlock() {
  {
    Registry& r = TheRegistry();
    std::lock_guard<std::mutex> lock(r.mu);
    // Erased before free(): no other block can start at this address while the entry exists.
    r.blocks.erase(reinterpret_cast<uintptr_t>(data));
  }
  free(data);
}

JobBytes::JobBytes(Napi::Uint8Array view, size_t offset, size_t length, Use use, const char* name)
    : use_(use), offset_(offset), length_(length) {
  uint8_t* p = ViewRange(view, offset, length, name);
  owned_ = FindBlock(p, length);
  if (owned_) {
    data_ = p;
    return;
  }
  try {
    bounce_.reset(new uint8_t[length ? length : 1]);
  } catch (const std::bad_alloc&) {
    throw SyscallError(view.Env(), "malloc", ENOMEM);
  }
  data_ = bounce_.get();
  if (use != Use::kTarget && length) memcpy(data_, p, length);
  if (use != Use::kSource) view_ = Napi::Persistent(view);
}

JobBytes::~JobBytes() = default;

void JobBytes::Deliver(Napi::Env env, size_t n) {
  if (!bounce_ || use_ == Use::kSource || n == 0) return;
  Napi::Uint8Array view = view_.Value();
  size_t size = view.ByteLength();
  if (view.ArrayBuffer().IsDetached() || !view.Data() || offset_ > size || n > size - offset_ || n > length_) {
    Napi::Error e =
        Napi::Error::New(env, "the buffer was detached or shrunk while the I/O was in flight: " + std::to_string(n) +
                                  " bytes read could not be delivered");
    e.Set("code", Napi::String::New(env, "ERR_BUFFER_DETACHED"));
    throw e;
  }
  memcpy(static_cast<uint8_t*>(view.Data()) + offset_, data_, n);
}

void InitBuffers(Napi::Env env, Napi::Object exports) {
  exports.Set("allocBuffer", Napi::Function::New(env, AllocBuffer, "allocBuffer"));
  exports.Set("allocBufferAsync", Napi::Function::New(env, AllocBufferAsync, "allocBufferAsync"));
}

}  // namespace vfio
