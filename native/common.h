// Shared helpers of the addon: argument conversion, syscall errors, and the off-thread worker.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cerrno>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace vfio {

struct WaitState;  // wait.cc

// The error class handed over by lib/native.ts at load (one class for every syscall error).
struct AsyncJobs;
struct AddonData {
  Napi::FunctionReference error_class;
  std::unique_ptr<AsyncJobs> jobs;   // InitAsyncJobs
  std::shared_ptr<WaitState> waits;  // created with the first wait
};

// Builds the error for a failed syscall: code ('EINVAL'), errno (negative), syscall, and the
// ioctl's name in the message when there is one.
Napi::Error SyscallError(Napi::Env env, const char* syscall, int err, const char* detail = nullptr);

// Argument checks: a TypeError/RangeError thrown before any syscall.
int ArgFd(const Napi::CallbackInfo& info, size_t i, const char* name);
uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name);
int64_t ArgOffset(const Napi::CallbackInfo& info, size_t i, const char* name);  // number or bigint, >= 0, lossless
size_t ArgSize(const Napi::CallbackInfo& info, size_t i, const char* name);     // number, >= 0, safe integer
unsigned ArgWidth(const Napi::CallbackInfo& info, size_t i);                    // 1, 2, 4 or 8
uint64_t ArgRegisterValue(const Napi::CallbackInfo& info, size_t i, unsigned width);
Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name);
// Checks [offset, offset+length) lies inside the byte view and returns its base pointer.
uint8_t* ViewRange(Napi::Uint8Array view, size_t offset, size_t length, const char* name);

Napi::Value RegisterToJs(Napi::Env env, uint64_t value, unsigned width);

// Calls f with a zero of the unsigned type that is `width` bytes wide (1, 2, 4 or 8): the addon's one
// width switch, for register accesses through pread/pwrite and through a mapping alike.
template <typename F>
decltype(auto) WithWidth(unsigned width, F&& f) {
  switch (width) {
    case 1: return f(uint8_t{});
    case 2: return f(uint16_t{});
    case 4: return f(uint32_t{});
    default: return f(uint64_t{});
  }
}

// Runs a syscall again while it fails with EINTR (the one retry loop of the addon).
template <typename F>
auto RetryEintr(F call) -> decltype(call()) {
  decltype(call()) r;
  do {
    r = call();
  } while (r < 0 && errno == EINTR);
  return r;
}

// The caller's byte range of an async job (buffers.cc). A pool or wait thread must never touch
// memory the JS side can free under it: detaching an ArrayBuffer (transfer, postMessage) hands
// its memory to a new owner that may be collected while the job runs, and a reference to the
// view does not prevent that. So a job only ever uses memory it holds a reference to:
// - a range inside native-owned I/O memory (allocBuffer) pins that allocation for the job;
// - any other range is bounced: a job that reads the caller's bytes copies them at submission,
//   a job that fills the range fills job-owned memory that Deliver() copies into the view on
//   the JS thread, after checking that the view is still attached and long enough.
struct IoBlock;
class JobBytes {
 public:
  // The job reads the bytes (write), fills them (read), or both (an ioctl argument).
  enum class Use { kSource, kTarget, kBoth };
  // Checks [offset, +length) lies inside the view (RangeError) and pins or bounces it.
  JobBytes(Napi::Uint8Array view, size_t offset, size_t length, Use use, const char* name);
  ~JobBytes();
  JobBytes(const JobBytes&) = delete;
  JobBytes& operator=(const JobBytes&) = delete;

  // The job's memory: valid on any thread for the job's life.
  uint8_t* data() const { return data_; }
  size_t length() const { return length_; }
  bool bounced() const { return bounce_ != nullptr; }
  // JS thread, after a kTarget/kBoth job succeeded: copies the first `n` bytes into the caller's view.
  // Throws an Error with code ERR_BUFFER_DETACHED when the view lost its memory meanwhile.
  void Deliver(Napi::Env env, size_t n);

 private:
  std::shared_ptr<IoBlock> owned_;
  std::unique_ptr<uint8_t[]> bounce_;
  uint8_t* data_ = nullptr;
  Use use_;
  Napi::Reference<Napi::Uint8Array> view_;
  size_t offset_;
  size_t length_;
};
using JobBytesPtr = std::shared_ptr<JobBytes>;
// Whether [p, p+length) lies inside native-owned I/O memory (allocBuffer): a job can pin it
// instead of bouncing it.
bool NativeOwned(const uint8_t* p, size_t length);
inline JobBytesPtr ArgJobBytes(Napi::Uint8Array view, size_t offset, size_t length, JobBytes::Use use,
                               const char* name) {
  return std::make_shared<JobBytes>(view, offset, length, use, name);
}

// What a syscall run off the JS thread left behind: errno captured on that thread.
struct Outcome {
  int err = 0;
  int64_t ret = 0;
  uint64_t value = 0;
  // For a job of several syscalls: which one failed ("data", "register"), set as the error's `stage`.
  const char* stage = nullptr;
};

// A register write that follows a bulk write in the same pool job (a doorbell such as the v1
// data_size): optional trailing arguments (fd, position, width, value) of the bulk writes.
struct RegisterWrite {
  bool present = false;
  int fd = -1;
  int64_t position = 0;
  unsigned width = 0;
  uint64_t value = 0;
};
RegisterWrite ArgRegisterWrite(const Napi::CallbackInfo& info, size_t first);

// One pwrite of exactly `width` bytes: registers must be accessed at their native width.
Outcome WriteRegister(int fd, int64_t offset, unsigned width, uint64_t value);
// Runs the register write of a job whose data part succeeded; records the failure as stage "register".
void RunRegisterWrite(const RegisterWrite& reg, Outcome& out);

// The parts of a pool job (RunAsync): the syscall run on a libuv pool thread, the conversion of
// its Outcome into the promise's value on the JS thread, and what runs at its end either way.
//
// A job is a plain uv_work_t, not a Napi::AsyncWorker: an AsyncWorker makes a resource object, a
// name string and an async resource (a V8 global, an async id) for every call, about a quarter
// of the ~115 us of JS-thread time an async call took in the test guest (89 us without); a
// migration's downtime makes several per device. The jobs of one addon instance share one async
// context (AsyncJobs), whose callback scope runs the microtasks and ticks that settling a
// promise queued, as MakeCallback does.
namespace PoolJob {
using Work = std::function<Outcome()>;
using Convert = std::function<Napi::Value(Napi::Env, const Outcome&)>;
using Done = std::function<void()>;
// The JS value of a call made of parts, from each part's outcome (by index).
using ConvertParts = std::function<Napi::Value(Napi::Env, const std::vector<Outcome>&)>;
}  // namespace PoolJob

// The async jobs of one addon instance (one per Node environment: the main thread, each worker).
// The environment's teardown waits (an async cleanup hook) until no job is on the pool, since a
// loop cannot close with work in flight; jobs that end during teardown settle nothing.
struct AsyncJobs {
  napi_env env = nullptr;
  uv_loop_t* loop = nullptr;
  napi_ref resource = nullptr;
  napi_async_context context = nullptr;
  size_t in_flight = 0;
  napi_async_cleanup_hook_handle teardown = nullptr;
  bool stopping = false;
};
// Sets up the instance's AsyncJobs (addon init).
void InitAsyncJobs(Napi::Env env, AsyncJobs& jobs);

// Queues a job on the libuv pool and returns its promise. Objects in `keep` (buffers, wrappers)
// stay referenced until the promise settles.
Napi::Promise RunAsync(Napi::Env env, const char* syscall, std::string detail, PoolJob::Work work,
                       PoolJob::Convert convert, const std::vector<Napi::Value>& keep = {},
                       PoolJob::Done done = nullptr);

// Queues one job per part, to run at once on the pool (as many as it has threads), and returns the
// call's one promise: it settles when the last part ends, so the JS thread runs once for all of
// them. Each part's outcome reaches `convert` by index; a part libuv refuses ends with its error.
Napi::Promise RunAsyncParts(Napi::Env env, const char* syscall, std::string detail, std::vector<PoolJob::Work> parts,
                            PoolJob::ConvertParts convert, const std::vector<Napi::Value>& keep = {});

// One syscall offered twice, as `name` on the JS thread and as `nameAsync` on the libuv pool. An Op
// holds what the call needs:
//   static constexpr const char* kSyscall;             the error's syscall ("pread", "ioctl")
//   Op(const Napi::CallbackInfo&, bool async);         argument checks; an async Op pins or bounces
//                                                      the caller's memory (JobBytes)
//   Outcome Run();                                      the syscall, on whichever thread
//   Napi::Value Result(Napi::Env, const Outcome&);      the JS value (an async read delivers here)
//   std::string Detail(const Outcome&) const;           the error's detail (the ioctl's name)
template <typename Op, bool async>
Napi::Value Twin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!async) {
    Op op(info, false);
    Outcome out = op.Run();
    if (out.err) throw SyscallError(env, Op::kSyscall, out.err, op.Detail(out).c_str());
    return op.Result(env, out);
  }
  auto op = std::make_shared<Op>(info, true);
  return RunAsync(
      env, Op::kSyscall, op->Detail(Outcome{}), [op] { return op->Run(); },
      [op](Napi::Env e, const Outcome& out) { return op->Result(e, out); });
}

// Exports an Op's two entry points, `name` and `nameAsync`.
template <typename Op>
void ExportTwin(Napi::Env env, Napi::Object exports, const std::string& name) {
  exports.Set(name, Napi::Function::New(env, Twin<Op, false>, name));
  exports.Set(name + "Async", Napi::Function::New(env, Twin<Op, true>, name + "Async"));
}

// Reads into [data, data+max) until at least `min` bytes came or the input ended. With a
// `cancel_fd` (an eventfd) every read is preceded by a poll() on both, and a wake-up of
// cancel_fd ends the job with ECANCELED. Without one (a regular file or block device, read on the
// pool) nothing is waited for: EAGAIN is an error, so no pool thread ever blocks in poll().
Outcome ReadAtLeast(int fd, uint8_t* data, size_t min, size_t max, int cancel_fd = -1);

// Starts ReadAtLeast on a thread of its own (wait.cc) for an fd that may never become ready:
// resolves the byte count, or rejects with ECANCELED after cancelReads(cancelId) (-1: none).
Napi::Promise WaitRead(Napi::Env env, int fd, JobBytesPtr bytes, size_t min, size_t max, int64_t cancel_id);

// CRC-32 (zlib's, the stream format's) of a range of any length.
uint32_t Crc32(const uint8_t* data, size_t length, uint32_t running = 0);

// Module parts.
void InitBuffers(Napi::Env env, Napi::Object exports);
void InitHeap(Napi::Env env, Napi::Object exports);
void InitClock(Napi::Env env, Napi::Object exports);
void InitWait(Napi::Env env, Napi::Object exports);
void InitIo(Napi::Env env, Napi::Object exports);
void InitVfio(Napi::Env env, Napi::Object exports);
void InitMapping(Napi::Env env, Napi::Object exports);
void InitLayout(Napi::Env env, Napi::Object exports);
void InitDma(Napi::Env env, Napi::Object exports);

}  // namespace vfio
