// File-descriptor syscalls: open/close, width-exact register pread/pwrite, bulk pread/pwrite and read/write.
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "common.h"

namespace vfio {

namespace {

std::string ShortDetail(const char* what, ssize_t got, unsigned width) {
  return std::string(what) + " (" + std::to_string(got) + " of " + std::to_string(width) + " bytes)";
}

// One pread of exactly `width` bytes: registers must be accessed at their native width.
Outcome ReadRegister(int fd, int64_t offset, unsigned width) {
  Outcome out;
  uint64_t value = 0;
  RegisterBytes reg{};
  ssize_t n = RetryEintr([&] { return pread(fd, &reg, width, offset); });
  if (n < 0) {
    out.err = errno;
    return out;
  }
  if (n != static_cast<ssize_t>(width)) {
    out.err = EIO;
    out.ret = n;
    return out;
  }
  switch (width) {
    case 1: value = reg.u8; break;
    case 2: value = reg.u16; break;
    case 4: value = reg.u32; break;
    default: value = reg.u64; break;
  }
  out.value = value;
  out.ret = n;
  return out;
}

Outcome Done(ssize_t n) {
  Outcome out;
  if (n < 0) out.err = errno;
  out.ret = n;
  return out;
}

Napi::Value ThrowIfFailed(Napi::Env env, const char* syscall, const Outcome& out, const std::string& detail = "") {
  if (out.err) throw SyscallError(env, syscall, out.err, detail.empty() ? nullptr : detail.c_str());
  return env.Undefined();
}

// A register access that moved fewer bytes than its width is reported as EIO with the counts.
std::string RegisterDetail(const char* what, const Outcome& out, unsigned width) {
  return out.err == EIO && out.ret >= 0 ? ShortDetail(what, out.ret, width) : "";
}

// open(path, flags): O_CLOEXEC is always added.
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  std::string path = info[0].As<Napi::String>();
  int flags = static_cast<int>(ArgU32(info, 1, "flags"));
  int fd = open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    Napi::Error e = SyscallError(env, "open", err);
    e.Set("path", Napi::String::New(env, path));
    e.Set("message",
          Napi::String::New(env, "open " + path + " " + e.Get("code").ToString().Utf8Value() + ": " + strerror(err)));
    throw e;
  }
  return Napi::Number::New(env, fd);
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  // Linux releases the fd even when close() reports EINTR, so never retry.
  if (close(fd) < 0 && errno != EINTR) throw SyscallError(info.Env(), "close", errno);
  return info.Env().Undefined();
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "name must be a string");
  std::string name = info[0].As<Napi::String>();
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) throw SyscallError(env, "memfd_create", errno);
  return Napi::Number::New(env, fd);
}

Napi::Value PreadWidth(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  int64_t offset = ArgOffset(info, 1, "offset");
  unsigned width = ArgWidth(info, 2);
  Outcome out = ReadRegister(fd, offset, width);
  ThrowIfFailed(info.Env(), "pread", out, RegisterDetail("short read", out, width));
  return RegisterToJs(info.Env(), out.value, width);
}

Napi::Value PreadWidthAsync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  int64_t offset = ArgOffset(info, 1, "offset");
  unsigned width = ArgWidth(info, 2);
  return RunAsync(
      info.Env(), "pread", "", [=] { return ReadRegister(fd, offset, width); },
      [=](Napi::Env env, const Outcome& out) { return RegisterToJs(env, out.value, width); });
}

Napi::Value PwriteWidth(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  int64_t offset = ArgOffset(info, 1, "offset");
  unsigned width = ArgWidth(info, 2);
  uint64_t value = ArgRegisterValue(info, 3, width);
  Outcome out = WriteRegister(fd, offset, width, value);
  return ThrowIfFailed(info.Env(), "pwrite", out, RegisterDetail("short write", out, width));
}

Napi::Value PwriteWidthAsync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  int64_t offset = ArgOffset(info, 1, "offset");
  unsigned width = ArgWidth(info, 2);
  uint64_t value = ArgRegisterValue(info, 3, width);
  return RunAsync(
      info.Env(), "pwrite", "", [=] { return WriteRegister(fd, offset, width, value); }, nullptr);
}

// Bulk transfers: (fd, buffer, bufferOffset, length[, position]); one syscall, EINTR retried.
enum class Bulk { kPread, kPwrite, kRead, kWrite };

struct BulkArgs {
  Bulk op;
  int fd;
  uint8_t* data;
  size_t length;
  int64_t position;
};

const char* BulkName(Bulk op) {
  switch (op) {
    case Bulk::kPread: return "pread";
    case Bulk::kPwrite: return "pwrite";
    case Bulk::kRead: return "read";
    default: return "write";
  }
}

Outcome BulkNow(const BulkArgs& a) {
  return Done(RetryEintr([&]() -> ssize_t {
    switch (a.op) {
      case Bulk::kPread: return pread(a.fd, a.data, a.length, a.position);
      case Bulk::kPwrite: return pwrite(a.fd, a.data, a.length, a.position);
      case Bulk::kRead: return read(a.fd, a.data, a.length);
      default: return write(a.fd, a.data, a.length);
    }
  }));
}

Napi::Value BytesResult(Napi::Env env, const Outcome& out) {
  return Napi::Number::New(env, static_cast<double>(out.ret));
}

// Resolves the byte count of a read after delivering a bounced target into the caller's view.
SyscallWorker::Convert DeliverBytes(JobBytesPtr bytes) {
  return [bytes](Napi::Env env, const Outcome& out) {
    bytes->Deliver(env, static_cast<size_t>(out.ret));
    return BytesResult(env, out);
  };
}

// One entry point per (syscall, sync/async): the same argument checks, the same syscall. An
// async call works on memory it pins or bounces (JobBytes), never on the bare view.
template <Bulk op, bool async>
Napi::Value BulkCall(const Napi::CallbackInfo& info) {
  const bool positioned = op == Bulk::kPread || op == Bulk::kPwrite;
  const bool fills = op == Bulk::kPread || op == Bulk::kRead;
  BulkArgs a;
  a.op = op;
  a.fd = ArgFd(info, 0, "fd");
  Napi::Uint8Array view = ArgBytes(info, 1, "buffer");
  size_t offset = ArgSize(info, 2, "bufferOffset");
  a.length = ArgSize(info, 3, "length");
  a.data = ViewRange(view, offset, a.length, "buffer");
  a.position = positioned ? ArgOffset(info, 4, "position") : -1;
  if (async) {
    JobBytesPtr bytes =
        ArgJobBytes(view, offset, a.length, fills ? JobBytes::Use::kTarget : JobBytes::Use::kSource, "buffer");
    a.data = bytes->data();
    return RunAsync(
        info.Env(), BulkName(op), "", [a, bytes] { return BulkNow(a); }, DeliverBytes(bytes));
  }
  Outcome out = BulkNow(a);
  ThrowIfFailed(info.Env(), BulkName(op), out);
  return BytesResult(info.Env(), out);
}

// pwriteAllAsync(fd, buffer, bufferOffset, length, position[, registerFd, registerPosition,
// width, value]): writes the whole range (short writes continued, a write of 0 is EIO), then the
// optional register, all in one pool job: a data window and its doorbell cost one thread hop.
Napi::Value PwriteAllAsync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  Napi::Uint8Array view = ArgBytes(info, 1, "buffer");
  size_t offset = ArgSize(info, 2, "bufferOffset");
  size_t length = ArgSize(info, 3, "length");
  int64_t position = ArgOffset(info, 4, "position");
  RegisterWrite reg = ArgRegisterWrite(info, 5);
  JobBytesPtr bytes = ArgJobBytes(view, offset, length, JobBytes::Use::kSource, "buffer");
  uint8_t* data = bytes->data();
  // `bytes` is captured by name: it keeps the pinned or bounced memory alive until the job ends.
  auto work = [fd, data, length, position, reg, bytes] {
    Outcome out;
    size_t done = 0;
    while (done < length) {
      ssize_t n =
          RetryEintr([&] { return pwrite(fd, data + done, length - done, position + static_cast<int64_t>(done)); });
      if (n <= 0) {
        out.err = n < 0 ? errno : EIO;
        out.stage = "data";
        return out;
      }
      done += static_cast<size_t>(n);
    }
    out.ret = static_cast<int64_t>(done);
    RunRegisterWrite(reg, out);
    return out;
  };
  return RunAsync(info.Env(), "pwrite", "", work, nullptr);
}

// Waits until a non-blocking fd is ready: on the pool, never on the JS thread.
int AwaitReady(int fd, short events) {
  pollfd p{fd, events, 0};
  return RetryEintr([&] { return poll(&p, 1, -1); }) < 0 ? -1 : 0;
}

// readAtLeastAsync(fd, buffer, bufferOffset, min, max[, cancelId]): resolves the byte count,
// below min only at the end of input. A regular file or block device is read on the pool; any
// other fd (pipe, socket, terminal) may wait forever, so it is waited for on a thread of its own
// (wait.cc), cancellable through cancelReads(cancelId) and at environment teardown.
Napi::Value ReadAtLeastAsync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  Napi::Uint8Array view = ArgBytes(info, 1, "buffer");
  size_t offset = ArgSize(info, 2, "bufferOffset");
  size_t min = ArgSize(info, 3, "min");
  size_t max = ArgSize(info, 4, "max");
  if (min > max) throw Napi::RangeError::New(info.Env(), "min must not be larger than max");
  int64_t cancel_id = info.Length() > 5 && !info[5].IsUndefined() ? ArgU32(info, 5, "cancelId") : -1;
  JobBytesPtr bytes = ArgJobBytes(view, offset, max, JobBytes::Use::kTarget, "buffer");
  struct stat st;
  if (fstat(fd, &st) < 0) throw SyscallError(info.Env(), "fstat", errno);
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) return WaitRead(info.Env(), fd, bytes, min, max, cancel_id);
  uint8_t* data = bytes->data();
  return RunAsync(
      info.Env(), "read", "", [=] { return ReadAtLeast(fd, data, min, max); }, DeliverBytes(bytes));
}

}  // namespace

// Reads into [data, data+max) until at least `min` bytes arrived or the input ended: one job for
// what a pipe hands over in many short reads.
Outcome ReadAtLeast(int fd, uint8_t* data, size_t min, size_t max, int cancel_fd) {
  Outcome out;
  size_t got = 0;
  while (got < min) {
    if (cancel_fd >= 0) {
      // A read after poll() said readable does not block, so a cancel is seen before each read.
      pollfd p[2] = {{fd, POLLIN, 0}, {cancel_fd, POLLIN, 0}};
      if (RetryEintr([&] { return poll(p, 2, -1); }) < 0) {
        out.err = errno;
        return out;
      }
      if (p[1].revents) {
        out.err = ECANCELED;
        return out;
      }
      if (p[0].revents & POLLNVAL) {
        out.err = EBADF;
        return out;
      }
    }
    ssize_t n = RetryEintr([&] { return read(fd, data + got, max - got); });
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (cancel_fd >= 0 || AwaitReady(fd, POLLIN) == 0) continue;
    }
    if (n < 0) {
      out.err = errno;
      return out;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  out.ret = static_cast<int64_t>(got);
  return out;
}

void InitIo(Napi::Env env, Napi::Object exports) {
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("preadWidth", Napi::Function::New(env, PreadWidth, "preadWidth"));
  exports.Set("preadWidthAsync", Napi::Function::New(env, PreadWidthAsync, "preadWidthAsync"));
  exports.Set("pwriteWidth", Napi::Function::New(env, PwriteWidth, "pwriteWidth"));
  exports.Set("pwriteWidthAsync", Napi::Function::New(env, PwriteWidthAsync, "pwriteWidthAsync"));
  exports.Set("pread", Napi::Function::New(env, BulkCall<Bulk::kPread, false>, "pread"));
  exports.Set("preadAsync", Napi::Function::New(env, BulkCall<Bulk::kPread, true>, "preadAsync"));
  exports.Set("pwrite", Napi::Function::New(env, BulkCall<Bulk::kPwrite, false>, "pwrite"));
  exports.Set("pwriteAsync", Napi::Function::New(env, BulkCall<Bulk::kPwrite, true>, "pwriteAsync"));
  exports.Set("pwriteAllAsync", Napi::Function::New(env, PwriteAllAsync, "pwriteAllAsync"));
  exports.Set("read", Napi::Function::New(env, BulkCall<Bulk::kRead, false>, "read"));
  exports.Set("readAsync", Napi::Function::New(env, BulkCall<Bulk::kRead, true>, "readAsync"));
  exports.Set("readAtLeastAsync", Napi::Function::New(env, ReadAtLeastAsync, "readAtLeastAsync"));
  exports.Set("write", Napi::Function::New(env, BulkCall<Bulk::kWrite, false>, "write"));
  exports.Set("writeAsync", Napi::Function::New(env, BulkCall<Bulk::kWrite, true>, "writeAsync"));
}

}  // namespace vfio
