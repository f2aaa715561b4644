// Shared helpers of the addon: argument conversion, syscall errors, and the off-thread worker.
#include "common.h"

#include <unistd.h>

#include <cmath>
#include <cstring>

namespace vfio {

namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;

std::string ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name ? std::string(name) : "E" + std::to_string(err);
}

}  // namespace

Napi::Error SyscallError(Napi::Env env, const char* syscall, int err, const char* detail) {
  std::string code = ErrnoName(err);
  std::string message = syscall;
  if (detail && *detail) {
    message += " ";
    message += detail;
  }
  message += " " + code + ": " + strerror(err);

  AddonData* data = env.GetInstanceData<AddonData>();
  Napi::Object error;
  if (data && !data->error_class.IsEmpty()) {
    error = data->error_class.New({Napi::String::New(env, message)});
  } else {
    error = Napi::Error::New(env, message).Value();
  }
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  if (detail && *detail) error.Set("ioctl", Napi::String::New(env, detail));
  return Napi::Error(env, error);
}

static double ArgNumber(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(v) || std::floor(v) != v) {
    throw Napi::RangeError::New(info.Env(), std::string(name) + " must be an integer");
  }
  return v;
}

int ArgFd(const Napi::CallbackInfo& info, size_t i, const char* name) {
  double v = ArgNumber(info, i, name);
  if (v < 0 || v > 0x7fffffff) throw Napi::RangeError::New(info.Env(), std::string(name) + " is not a valid fd");
  return static_cast<int>(v);
}

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  double v = ArgNumber(info, i, name);
  if (v < 0 || v > 4294967295.0) throw Napi::RangeError::New(info.Env(), std::string(name) + " must fit in 32 bits");
  return static_cast<uint32_t>(v);
}

int64_t ArgOffset(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i < info.Length() && info[i].IsBigInt()) {
    bool lossless = false;
    int64_t v = info[i].As<Napi::BigInt>().Int64Value(&lossless);
    if (!lossless || v < 0) throw Napi::RangeError::New(info.Env(), std::string(name) + " is out of range");
    return v;
  }
  if (i < info.Length() && !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number or bigint");
  }
  double v = ArgNumber(info, i, name);
  if (v < 0 || v > kMaxSafeInteger) throw Napi::RangeError::New(info.Env(), std::string(name) + " is out of range");
  return static_cast<int64_t>(v);
}

size_t ArgSize(const Napi::CallbackInfo& info, size_t i, const char* name) {
  double v = ArgNumber(info, i, name);
  if (v < 0 || v > kMaxSafeInteger) throw Napi::RangeError::New(info.Env(), std::string(name) + " is out of range");
  return static_cast<size_t>(v);
}

unsigned ArgWidth(const Napi::CallbackInfo& info, size_t i) {
  double v = ArgNumber(info, i, "width");
  if (v != 1 && v != 2 && v != 4 && v != 8) throw Napi::RangeError::New(info.Env(), "width must be 1, 2, 4 or 8");
  return static_cast<unsigned>(v);
}

uint64_t ArgRegisterValue(const Napi::CallbackInfo& info, size_t i, unsigned width) {
  Napi::Env env = info.Env();
  if (width == 8) {
    if (i >= info.Length() || !info[i].IsBigInt()) throw Napi::TypeError::New(env, "a 64-bit value must be a bigint");
    bool lossless = false;
    uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(env, "value does not fit in 64 bits");
    return v;
  }
  double v = ArgNumber(info, i, "value");
  double limit = static_cast<double>((uint64_t{1} << (width * 8)) - 1);
  if (v < 0 || v > limit)
    throw Napi::RangeError::New(env, "value does not fit in " + std::to_string(width * 8) + " bits");
  return static_cast<uint64_t>(v);
}

Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a Buffer or Uint8Array");
  }
  return info[i].As<Napi::Uint8Array>();
}

uint8_t* ViewRange(Napi::Uint8Array view, size_t offset, size_t length, const char* name) {
  size_t size = view.ByteLength();
  if (offset > size || length > size - offset) {
    throw Napi::RangeError::New(view.Env(), std::string(name) + " range is outside the buffer");
  }
  return static_cast<uint8_t*>(view.Data()) + offset;
}

Napi::Value RegisterToJs(Napi::Env env, uint64_t value, unsigned width) {
  if (width == 8) return Napi::BigInt::New(env, value);
  return Napi::Number::New(env, static_cast<double>(value));
}

SyscallWorker::SyscallWorker(Napi::Env env, const char* syscall, std::string detail, Work work, Convert convert,
                             const std::vector<Napi::Value>& keep, Done done)
    : Napi::AsyncWorker(env, "vfio-migration:syscall"),
      deferred_(Napi::Promise::Deferred::New(env)),
      syscall_(syscall),
      detail_(std::move(detail)),
      work_(std::move(work)),
      convert_(std::move(convert)),
      done_(std::move(done)) {
  for (const Napi::Value& v : keep) {
    if (v.IsObject()) keep_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
}

SyscallWorker::~SyscallWorker() = default;

void SyscallWorker::Execute() { outcome_ = work_(); }

void SyscallWorker::OnOK() {
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  if (done_) done_();
  if (outcome_.err != 0) {
    Napi::Error error = SyscallError(env, syscall_, outcome_.err, detail_.c_str());
    if (outcome_.stage) error.Set("stage", Napi::String::New(env, outcome_.stage));
    deferred_.Reject(error.Value());
    return;
  }
  try {
    deferred_.Resolve(convert_ ? convert_(env, outcome_) : env.Undefined());
  } catch (const Napi::Error& e) {
    deferred_.Reject(e.Value());
  }
}

void SyscallWorker::OnError(const Napi::Error& error) {
  if (done_) done_();
  deferred_.Reject(error.Value());
}

RegisterWrite ArgRegisterWrite(const Napi::CallbackInfo& info, size_t first) {
  RegisterWrite reg;
  if (info.Length() <= first || info[first].IsUndefined()) return reg;
  reg.present = true;
  reg.fd = ArgFd(info, first, "registerFd");
  reg.position = ArgOffset(info, first + 1, "registerPosition");
  reg.width = ArgWidth(info, first + 2);
  reg.value = ArgRegisterValue(info, first + 3, reg.width);
  return reg;
}

Outcome WriteRegister(int fd, int64_t offset, unsigned width, uint64_t value) {
  Outcome out;
  ssize_t n = WithWidth(width, [&](auto zero) -> ssize_t {
    auto reg = static_cast<decltype(zero)>(value);
    return RetryEintr([&] { return pwrite(fd, &reg, sizeof reg, offset); });
  });
  if (n < 0) {
    out.err = errno;
  } else if (n != static_cast<ssize_t>(width)) {
    out.err = EIO;
    out.ret = n;
  }
  return out;
}

void RunRegisterWrite(const RegisterWrite& reg, Outcome& out) {
  if (!reg.present || out.err != 0) return;
  Outcome r = WriteRegister(reg.fd, reg.position, reg.width, reg.value);
  if (r.err != 0) {
    out.err = r.err;
    out.stage = "register";
  }
}

Napi::Promise RunAsync(Napi::Env env, const char* syscall, std::string detail, SyscallWorker::Work work,
                       SyscallWorker::Convert convert, const std::vector<Napi::Value>& keep, SyscallWorker::Done done) {
  auto* worker =
      new SyscallWorker(env, syscall, std::move(detail), std::move(work), std::move(convert), keep, std::move(done));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace vfio
