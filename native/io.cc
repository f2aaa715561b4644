// File-descriptor syscalls: open/close, width-exact register pread/pwrite, bulk pread/pwrite and read/write.
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
// Node's own zlib (its headers and its exported symbols): the same CRC-32 as zlib.crc32 in JS.
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>

#include "common.h"

namespace vfio {

namespace {

// One pread of exactly `width` bytes: registers must be accessed at their native width.
Outcome ReadRegister(int fd, int64_t offset, unsigned width) {
  Outcome out;
  ssize_t n = WithWidth(width, [&](auto zero) -> ssize_t {
    decltype(zero) reg = 0;
    ssize_t r = RetryEintr([&] { return pread(fd, &reg, sizeof reg, offset); });
    out.value = reg;
    return r;
  });
  if (n < 0) {
    out.err = errno;
    return out;
  }
  if (n != static_cast<ssize_t>(width)) out.err = EIO;
  out.ret = n;
  return out;
}

Outcome Done(ssize_t n) {
  Outcome out;
  if (n < 0) out.err = errno;
  out.ret = n;
  return out;
}

// A register access that moved fewer bytes than its width is reported as EIO with the counts.
std::string RegisterDetail(const char* what, const Outcome& out, unsigned width) {
  if (out.err != EIO || out.ret < 0) return "";
  return std::string(what) + " (" + std::to_string(out.ret) + " of " + std::to_string(width) + " bytes)";
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

// isatty(fd): whether fd is a terminal. The CLI asks it for stderr's progress bar, where Node's
// own answer (the tty module) would load net and the stream modules into every command.
Napi::Value IsATTY(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  return Napi::Boolean::New(info.Env(), isatty(fd) == 1);
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "name must be a string");
  std::string name = info[0].As<Napi::String>();
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) throw SyscallError(env, "memfd_create", errno);
  return Napi::Number::New(env, fd);
}

// preadWidth[Async](fd, offset, width): one register read.
struct PreadWidthOp {
  static constexpr const char* kSyscall = "pread";
  int fd;
  int64_t offset;
  unsigned width;

  PreadWidthOp(const Napi::CallbackInfo& info, bool)
      : fd(ArgFd(info, 0, "fd")), offset(ArgOffset(info, 1, "offset")), width(ArgWidth(info, 2)) {}
  Outcome Run() const { return ReadRegister(fd, offset, width); }
  Napi::Value Result(Napi::Env env, const Outcome& out) const { return RegisterToJs(env, out.value, width); }
  std::string Detail(const Outcome& out) const { return RegisterDetail("short read", out, width); }
};

// pwriteWidth[Async](fd, offset, width, value): one register write.
struct PwriteWidthOp {
  static constexpr const char* kSyscall = "pwrite";
  int fd;
  int64_t offset;
  unsigned width;
  uint64_t value;

  PwriteWidthOp(const Napi::CallbackInfo& info, bool)
      : fd(ArgFd(info, 0, "fd")),
        offset(ArgOffset(info, 1, "offset")),
        width(ArgWidth(info, 2)),
        value(ArgRegisterValue(info, 3, width)) {}
  Outcome Run() const { return WriteRegister(fd, offset, width, value); }
  Napi::Value Result(Napi::Env env, const Outcome&) const { return env.Undefined(); }
  std::string Detail(const Outcome& out) const { return RegisterDetail("short write", out, width); }
};

// Bulk transfers: (fd, buffer, bufferOffset, length[, position]); one syscall, EINTR retried.
enum class Bulk { kPread, kPwrite, kRead, kWrite };

constexpr const char* BulkName(Bulk op) {
  return op == Bulk::kPread ? "pread" : op == Bulk::kPwrite ? "pwrite" : op == Bulk::kRead ? "read" : "write";
}

Napi::Value BytesResult(Napi::Env env, const Outcome& out) {
  return Napi::Number::New(env, static_cast<double>(out.ret));
}

// Resolves the byte count of a read after delivering a bounced target into the caller's view.
PoolJob::Convert DeliverBytes(JobBytesPtr bytes) {
  return [bytes](Napi::Env env, const Outcome& out) {
    bytes->Deliver(env, static_cast<size_t>(out.ret));
    return BytesResult(env, out);
  };
}

// A checksummed read's result: the bytes delivered, then { bytes, crc } (the CRC in out.value).
PoolJob::Convert DeliverBytesAndCrc(JobBytesPtr bytes) {
  return [bytes](Napi::Env env, const Outcome& out) -> Napi::Value {
    bytes->Deliver(env, static_cast<size_t>(out.ret));
    Napi::Object result = Napi::Object::New(env);
    result.Set("bytes", Napi::Number::New(env, static_cast<double>(out.ret)));
    result.Set("crc", Napi::Number::New(env, static_cast<double>(out.value)));
    return result;
  };
}

// pread, pwrite, read and write, each sync and async: the same argument checks, the same syscall. An
// async call works on memory it pins or bounces (JobBytes), never on the bare view.
template <Bulk kOp>
struct BulkOp {
  static constexpr const char* kSyscall = BulkName(kOp);
  static constexpr bool kPositioned = kOp == Bulk::kPread || kOp == Bulk::kPwrite;
  static constexpr bool kFills = kOp == Bulk::kPread || kOp == Bulk::kRead;
  int fd;
  uint8_t* data;
  size_t length;
  int64_t position;
  JobBytesPtr bytes;  // async only

  BulkOp(const Napi::CallbackInfo& info, bool async) {
    fd = ArgFd(info, 0, "fd");
    Napi::Uint8Array view = ArgBytes(info, 1, "buffer");
    size_t offset = ArgSize(info, 2, "bufferOffset");
    length = ArgSize(info, 3, "length");
    data = ViewRange(view, offset, length, "buffer");
    position = kPositioned ? ArgOffset(info, 4, "position") : -1;
    if (async) {
      bytes = ArgJobBytes(view, offset, length, kFills ? JobBytes::Use::kTarget : JobBytes::Use::kSource, "buffer");
      data = bytes->data();
    }
  }
  Outcome Run() const {
    return Done(RetryEintr([this]() -> ssize_t {
      switch (kOp) {
        case Bulk::kPread: return pread(fd, data, length, position);
        case Bulk::kPwrite: return pwrite(fd, data, length, position);
        case Bulk::kRead: return read(fd, data, length);
        default: return write(fd, data, length);
      }
    }));
  }
  Napi::Value Result(Napi::Env env, const Outcome& out) const {
    if (bytes) bytes->Deliver(env, static_cast<size_t>(out.ret));
    return BytesResult(env, out);
  }
  std::string Detail(const Outcome&) const { return ""; }
};

// pwriteAllAsync(fd, buffer, bufferOffset, length, position[, registerFd, registerPosition,
// width, value]): writes the whole range (short writes continued, a write of 0 is EIO), then the
// optional register, all in one pool job: a data window and its doorbell cost one thread hop.
Napi::Value PwriteAllAsync(const Napi::CallbackInfo& info) {
  // The op holds the pinned or bounced bytes: the job keeps them alive until it has run.
  auto op = std::make_shared<BulkOp<Bulk::kPwrite>>(info, true);
  RegisterWrite reg = ArgRegisterWrite(info, 5);
  auto work = [op, reg] {
    Outcome out;
    size_t done = 0;
    while (done < op->length) {
      ssize_t n = RetryEintr([&] {
        return pwrite(op->fd, op->data + done, op->length - done, op->position + static_cast<int64_t>(done));
      });
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

// The arguments the readAtLeast calls share: (fd, buffer, bufferOffset, min, max), checked, the
// target range pinned or bounced, and whether the fd is a regular file or block device (which a
// pool thread may read: it never waits indefinitely).
struct ReadAtLeastArgs {
  int fd;
  JobBytesPtr bytes;
  size_t min;
  size_t max;
  bool seekable;
};

ReadAtLeastArgs ArgReadAtLeast(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  Napi::Uint8Array view = ArgBytes(info, 1, "buffer");
  size_t offset = ArgSize(info, 2, "bufferOffset");
  size_t min = ArgSize(info, 3, "min");
  size_t max = ArgSize(info, 4, "max");
  if (min > max) throw Napi::RangeError::New(info.Env(), "min must not be larger than max");
  JobBytesPtr bytes = ArgJobBytes(view, offset, max, JobBytes::Use::kTarget, "buffer");
  struct stat st;
  if (fstat(fd, &st) < 0) throw SyscallError(info.Env(), "fstat", errno);
  return {fd, bytes, min, max, S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)};
}

// readAtLeastAsync(fd, buffer, bufferOffset, min, max[, cancelId]): resolves the byte count,
// below min only at the end of input. A regular file or block device is read on the pool; any
// other fd (pipe, socket, terminal) may wait forever, so it is waited for on a thread of its own
// (wait.cc), cancellable through cancelReads(cancelId) and at environment teardown.
Napi::Value ReadAtLeastAsync(const Napi::CallbackInfo& info) {
  ReadAtLeastArgs a = ArgReadAtLeast(info);
  int64_t cancel_id = info.Length() > 5 && !info[5].IsUndefined() ? ArgU32(info, 5, "cancelId") : -1;
  if (!a.seekable) return WaitRead(info.Env(), a.fd, a.bytes, a.min, a.max, cancel_id);
  return RunAsync(
      info.Env(), "read", "", [a] { return ReadAtLeast(a.fd, a.bytes->data(), a.min, a.max); }, DeliverBytes(a.bytes));
}

// readAtLeastChecksummedAsync(fd, buffer, bufferOffset, min, max, crcLength): readAtLeastAsync
// for a regular file or block device (on the pool), then the CRC-32 of the first crcLength bytes
// read (of fewer, if fewer came) on the same pool thread, while they are still in its cache.
// Resolves { bytes, crc }: a load from a file reads and checks a record's payload in one job.
Napi::Value ReadAtLeastChecksummedAsync(const Napi::CallbackInfo& info) {
  ReadAtLeastArgs a = ArgReadAtLeast(info);
  size_t crc_length = ArgSize(info, 5, "crcLength");
  if (crc_length > a.max) throw Napi::RangeError::New(info.Env(), "crcLength must not be larger than max");
  // A pipe could block a pool thread for ever: those are read by readAtLeastAsync's wait thread.
  if (!a.seekable)
    throw SyscallError(info.Env(), "read", EINVAL,
                       "readAtLeastChecksummedAsync reads regular files and block devices only");
  auto work = [a, crc_length] {
    uint8_t* data = a.bytes->data();
    Outcome out = ReadAtLeast(a.fd, data, a.min, a.max);
    if (!out.err) out.value = Crc32(data, std::min(crc_length, static_cast<size_t>(out.ret)));
    return out;
  };
  return RunAsync(info.Env(), "read", "", work, DeliverBytesAndCrc(a.bytes));
}

// readChecksummedAsync(fd, buffer, bufferOffset, length, position): one read (position -1: a
// data_fd, where each read is one chunk of the device's choosing), or preads continued until
// `length` bytes or the end (a region's data window: one pool job per transaction); then the
// CRC-32 of the bytes read, on the same pool thread while they are still in its cache. Resolves
// { bytes, crc }: the stream's payload checksum is off the JS thread.
Napi::Value ReadChecksummedAsync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  Napi::Uint8Array view = ArgBytes(info, 1, "buffer");
  size_t offset = ArgSize(info, 2, "bufferOffset");
  size_t length = ArgSize(info, 3, "length");
  ViewRange(view, offset, length, "buffer");
  bool positioned = !(info[4].IsNumber() && info[4].As<Napi::Number>().Int64Value() == -1);
  int64_t position = positioned ? ArgOffset(info, 4, "position") : -1;
  JobBytesPtr bytes = ArgJobBytes(view, offset, length, JobBytes::Use::kTarget, "buffer");
  uint8_t* data = bytes->data();
  auto work = [=] {
    Outcome out = Done(RetryEintr(
        [&]() -> ssize_t { return positioned ? pread(fd, data, length, position) : read(fd, data, length); }));
    if (!out.err) out.value = Crc32(data, static_cast<size_t>(out.ret));
    return out;
  };
  return RunAsync(info.Env(), positioned ? "pread" : "read", "", work, DeliverBytesAndCrc(bytes));
}

// writevAllAsync(fd, buffers): writes the buffers in order at the fd's offset, short writes
// continued (a write of 0 is EIO), in one pool job: a record header and its payload go out
// together, the payload from the buffer it was read into. For files and block devices only: a
// pool thread must not wait on a pipe that nobody drains.
Napi::Value WritevAllAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "buffers must be an array");
  Napi::Array list = info[1].As<Napi::Array>();
  if (list.Length() == 0 || list.Length() > IOV_MAX) throw Napi::RangeError::New(env, "buffers: 1 to IOV_MAX views");
  std::vector<JobBytesPtr> parts;
  size_t total = 0;
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value v = list[i];
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Napi::TypeError::New(env, "buffers must hold Buffers or Uint8Arrays");
    Napi::Uint8Array view = v.As<Napi::Uint8Array>();
    parts.push_back(ArgJobBytes(view, 0, view.ByteLength(), JobBytes::Use::kSource, "buffer"));
    total += view.ByteLength();
  }
  struct stat st;
  if (fstat(fd, &st) < 0) throw SyscallError(env, "fstat", errno);
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    throw Napi::TypeError::New(env, "writevAllAsync writes regular files and block devices only");
  auto work = [fd, parts, total] {
    std::vector<iovec> iov;
    for (const JobBytesPtr& p : parts) iov.push_back({p->data(), p->length()});
    Outcome out;
    size_t done = 0;
    size_t first = 0;
    while (done < total) {
      ssize_t n = RetryEintr([&] { return writev(fd, iov.data() + first, static_cast<int>(iov.size() - first)); });
      if (n <= 0) {
        out.err = n < 0 ? errno : EIO;
        return out;
      }
      done += static_cast<size_t>(n);
      // Skip what went out: whole iovecs, then the written part of the next one.
      size_t left = static_cast<size_t>(n);
      while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
      if (first < iov.size()) {
        iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
      }
    }
    out.ret = static_cast<int64_t>(done);
    return out;
  };
  return RunAsync(env, "writev", "", work, BytesResult);
}

// crc32Async(buffer, bufferOffset, length): the CRC-32 of a range, computed on the pool (a
// loaded record's payload is checked there, not on the JS thread between two device writes).
// JS-owned memory would have to be copied first to be safe on the pool: its CRC is computed here
// instead, which costs less than that copy, and the promise is settled already.
Napi::Value Crc32Async(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Uint8Array view = ArgBytes(info, 0, "buffer");
  size_t offset = ArgSize(info, 1, "bufferOffset");
  size_t length = ArgSize(info, 2, "length");
  uint8_t* p = ViewRange(view, offset, length, "buffer");
  if (!NativeOwned(p, length)) {
    auto deferred = Napi::Promise::Deferred::New(env);
    deferred.Resolve(Napi::Number::New(env, static_cast<double>(Crc32(p, length))));
    return deferred.Promise();
  }
  JobBytesPtr bytes = ArgJobBytes(view, offset, length, JobBytes::Use::kSource, "buffer");
  auto work = [bytes, length] {
    Outcome out;
    out.value = Crc32(bytes->data(), length);
    return out;
  };
  auto convert = [](Napi::Env env, const Outcome& out) -> Napi::Value {
    return Napi::Number::New(env, static_cast<double>(out.value));
  };
  return RunAsync(info.Env(), "crc32", "", work, convert);
}

// crc32(buffer, running): the CRC-32 of the whole view continued from `running`, at once. For
// headers and small payloads; it spares every command the load of node:zlib (~25 ms in the guest).
Napi::Value Crc32Sync(const Napi::CallbackInfo& info) {
  Napi::Uint8Array view = ArgBytes(info, 0, "buffer");
  uint32_t running = ArgU32(info, 1, "running");
  uint8_t* p = view.ByteLength() == 0 ? nullptr : view.Data();
  return Napi::Number::New(info.Env(), static_cast<double>(Crc32(p, view.ByteLength(), running)));
}

// setPipeSize(fd, bytes): F_SETPIPE_SZ; returns the pipe's capacity after the call. A larger pipe
// lets a 1 MiB record cross in one write instead of sixteen wake-ups of the other end.
Napi::Value SetPipeSize(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  uint32_t size = ArgU32(info, 1, "bytes");
  int r = fcntl(fd, F_SETPIPE_SZ, static_cast<int>(size > INT_MAX ? INT_MAX : size));
  if (r < 0) throw SyscallError(info.Env(), "fcntl", errno, "F_SETPIPE_SZ");
  return Napi::Number::New(info.Env(), r);
}

// The (fd, events, timeoutMs) of pollAsync and pollWakeAsync, checked.
struct PollArgs {
  int fd;
  short events;
  int timeout_ms;
};

PollArgs ArgPoll(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  uint32_t events = ArgU32(info, 1, "events");
  if (events > 0x7fff) throw Napi::RangeError::New(info.Env(), "events must fit in a short");
  uint32_t timeout = ArgU32(info, 2, "timeoutMs");
  if (timeout > 60000) throw Napi::RangeError::New(info.Env(), "timeoutMs must be at most 60000");
  return {fd, static_cast<short>(events), static_cast<int>(timeout)};
}

// pollAsync(fd, events, timeoutMs): one poll() of fd for events on the pool (a driver's poll op
// may take the device's lock, and a wait must not hold the JS thread), waiting at most timeoutMs
// (0: not at all; at most 60 s, a pool thread waits): resolves the revents, 0 when none came.
// The conformance checker asks what a data_fd's poll says, at once or after a bounded wait.
Napi::Value PollAsync(const Napi::CallbackInfo& info) {
  PollArgs args = ArgPoll(info);
  auto work = [args] {
    Outcome out;
    pollfd p = {args.fd, args.events, 0};
    // EINTR restarts the whole wait: a signal can only make it longer than asked, never shorter.
    int r = RetryEintr([&] { return poll(&p, 1, args.timeout_ms); });
    if (r < 0)
      out.err = errno;
    else
      out.ret = r == 0 ? 0 : static_cast<uint16_t>(p.revents);
    return out;
  };
  return RunAsync(info.Env(), "poll", "", work, BytesResult);
}

// pollWakeAsync(fd, events, timeoutMs): whether a wait that begins with nothing pending wakes. One
// pool job polls at once and, only when nothing is pending, waits at most timeoutMs. Resolves
// { readyBefore, revents, waitedMs }: readyBefore when the events were already there (no wait
// began; revents are those), else what the wait ended with (0: the time ran out) and how long it
// took on the pool thread's monotonic clock. Two separate pollAsync calls leave a window between
// the quiet check and the wait, where data that comes makes the wait return at once: the
// checker's wake rule would count that as a wake, which it is not.
Napi::Value PollWakeAsync(const Napi::CallbackInfo& info) {
  PollArgs args = ArgPoll(info);
  constexpr int64_t kReadyBefore = 1 << 16;  // above any revents (a short)
  auto work = [args] {
    Outcome out;
    pollfd p = {args.fd, args.events, 0};
    int r = RetryEintr([&] { return poll(&p, 1, 0); });
    if (r != 0) {
      if (r < 0)
        out.err = errno;
      else
        out.ret = kReadyBefore | static_cast<uint16_t>(p.revents);
      return out;
    }
    auto started = std::chrono::steady_clock::now();
    p.revents = 0;
    r = RetryEintr([&] { return poll(&p, 1, args.timeout_ms); });
    auto waited = std::chrono::steady_clock::now() - started;
    if (r < 0) {
      out.err = errno;
      return out;
    }
    out.ret = r == 0 ? 0 : static_cast<uint16_t>(p.revents);
    out.value = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(waited).count());
    return out;
  };
  auto result = [](Napi::Env env, const Outcome& out) -> Napi::Value {
    Napi::Object o = Napi::Object::New(env);
    o.Set("readyBefore", Napi::Boolean::New(env, (out.ret & kReadyBefore) != 0));
    o.Set("revents", Napi::Number::New(env, static_cast<double>(out.ret & 0xffff)));
    o.Set("waitedMs", Napi::Number::New(env, static_cast<double>(out.value) / 1000));
    return o;
  };
  return RunAsync(info.Env(), "poll", "", work, result);
}

}  // namespace

// zlib takes a uInt length, so long ranges go in pieces.
uint32_t Crc32(const uint8_t* data, size_t length, uint32_t running) {
  uLong crc = running;
  while (length > 0) {
    uInt piece = length > UINT_MAX / 2 ? UINT_MAX / 2 : static_cast<uInt>(length);
    crc = crc32(crc, data, piece);
    data += piece;
    length -= piece;
  }
  return static_cast<uint32_t>(crc);
}

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
    // Only the wait thread (cancel_fd) may wait for readiness: a pool thread never blocks in poll().
    if (n < 0 && cancel_fd >= 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
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
  exports.Set("isatty", Napi::Function::New(env, IsATTY, "isatty"));
  ExportTwin<PreadWidthOp>(env, exports, "preadWidth");
  ExportTwin<PwriteWidthOp>(env, exports, "pwriteWidth");
  ExportTwin<BulkOp<Bulk::kPread>>(env, exports, "pread");
  ExportTwin<BulkOp<Bulk::kPwrite>>(env, exports, "pwrite");
  ExportTwin<BulkOp<Bulk::kRead>>(env, exports, "read");
  ExportTwin<BulkOp<Bulk::kWrite>>(env, exports, "write");
  exports.Set("pwriteAllAsync", Napi::Function::New(env, PwriteAllAsync, "pwriteAllAsync"));
  exports.Set("readAtLeastAsync", Napi::Function::New(env, ReadAtLeastAsync, "readAtLeastAsync"));
  exports.Set("readAtLeastChecksummedAsync",
              Napi::Function::New(env, ReadAtLeastChecksummedAsync, "readAtLeastChecksummedAsync"));
  exports.Set("readChecksummedAsync", Napi::Function::New(env, ReadChecksummedAsync, "readChecksummedAsync"));
  exports.Set("writevAllAsync", Napi::Function::New(env, WritevAllAsync, "writevAllAsync"));
  exports.Set("crc32", Napi::Function::New(env, Crc32Sync, "crc32"));
  exports.Set("crc32Async", Napi::Function::New(env, Crc32Async, "crc32Async"));
  exports.Set("setPipeSize", Napi::Function::New(env, SetPipeSize, "setPipeSize"));
  exports.Set("pollAsync", Napi::Function::New(env, PollAsync, "pollAsync"));
  exports.Set("pollWakeAsync", Napi::Function::New(env, PollWakeAsync, "pollWakeAsync"));
}

}  // namespace vfio
