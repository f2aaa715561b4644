// Shared helpers of the addon: argument conversion, syscall errors, and the off-thread worker.
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace vfio {

// The error class handed over by lib/native.ts at load (one class for every syscall error).
struct AddonData {
  Napi::FunctionReference error_class;
  Napi::FunctionReference mapping_class;
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
// A register's bytes at each access width (1, 2, 4 or 8).
union RegisterBytes {
  uint8_t u8;
  uint16_t u16;
  uint32_t u32;
  uint64_t u64;
};

// One pwrite of exactly `width` bytes: registers must be accessed at their native width.
Outcome WriteRegister(int fd, int64_t offset, unsigned width, uint64_t value);
// Runs the register write of a job whose data part succeeded; records the failure as stage "register".
void RunRegisterWrite(const RegisterWrite& reg, Outcome& out);

// Runs one blocking syscall on the libuv pool and settles a Promise on the JS thread.
// Objects in `keep` (buffers, wrappers) stay referenced until the promise settles.
class SyscallWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<Outcome()>;
  using Convert = std::function<Napi::Value(Napi::Env, const Outcome&)>;
  using Done = std::function<void()>;

  SyscallWorker(Napi::Env env, const char* syscall, std::string detail, Work work, Convert convert,
                const std::vector<Napi::Value>& keep, Done done = nullptr);
  ~SyscallWorker() override;

  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override;
  void OnOK() override;
  void OnError(const Napi::Error& error) override;

 private:
  Napi::Promise::Deferred deferred_;
  const char* syscall_;
  std::string detail_;
  Work work_;
  Convert convert_;
  Done done_;
  std::vector<Napi::ObjectReference> keep_;
  Outcome outcome_;
};

// Queues a worker and returns its promise.
Napi::Promise RunAsync(Napi::Env env, const char* syscall, std::string detail, SyscallWorker::Work work,
                       SyscallWorker::Convert convert, const std::vector<Napi::Value>& keep = {},
                       SyscallWorker::Done done = nullptr);

// Module parts.
void InitIo(Napi::Env env, Napi::Object exports);
void InitVfio(Napi::Env env, Napi::Object exports);
void InitMapping(Napi::Env env, Napi::Object exports);
void InitLayout(Napi::Env env, Napi::Object exports);

}  // namespace vfio
