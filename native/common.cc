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

namespace {

// What settles one async call's promise, and what it keeps alive until then. A call is one job
// on the pool, or several parts (RunAsyncParts) that run at once and settle it together.
struct Settlement {
  napi_env env;
  napi_deferred deferred = nullptr;
  const char* syscall;
  std::string detail;
  PoolJob::Convert convert;             // one job
  PoolJob::ConvertParts convert_parts;  // parts
  PoolJob::Done done;
  std::vector<Napi::ObjectReference> keep;
  std::vector<Outcome> outcomes = std::vector<Outcome>(1);  // each job's, by part (one job: [0])
  size_t pending = 1;                                       // jobs not yet ended
};

// One job on the pool: its work and outcome, and the call it belongs to.
struct Job {
  uv_work_t req{};
  AsyncJobs* jobs;
  PoolJob::Work work;
  Outcome outcome;
  size_t part = 0;
  std::shared_ptr<Settlement> settlement;
};

// The environment is being torn down: once no job is on the pool, let the teardown go on.
void FinishTeardownIfIdle(AsyncJobs* jobs) {
  if (!jobs->stopping || jobs->in_flight != 0 || jobs->teardown == nullptr) return;
  napi_async_cleanup_hook_handle handle = jobs->teardown;
  jobs->teardown = nullptr;
  // The shared async context dies with its environment: no job will settle in it again.
  napi_async_destroy(jobs->env, jobs->context);
  napi_delete_reference(jobs->env, jobs->resource);
  napi_remove_async_cleanup_hook(handle);
}

void OnTeardown(napi_async_cleanup_hook_handle handle, void* arg) {
  auto* jobs = static_cast<AsyncJobs*>(arg);
  jobs->stopping = true;
  FinishTeardownIfIdle(jobs);
}

void ExecuteJob(uv_work_t* req) {
  Job* job = static_cast<Job*>(req->data);
  job->outcome = job->work();
}

// Settles the promise with the outcome (JS thread, inside a handle scope and callback scope).
void Settle(Settlement& s) {
  Napi::Env env(s.env);
  napi_value settled;
  // A call of parts hands every outcome, failed or not, to its convert; one job fails as a whole.
  const Outcome& one = s.outcomes[0];
  bool ok = s.convert_parts || one.err == 0;
  try {
    if (!ok) {
      Napi::Error error = SyscallError(env, s.syscall, one.err, s.detail.c_str());
      if (one.stage) error.Set("stage", Napi::String::New(env, one.stage));
      settled = error.Value();
    } else if (s.convert_parts) {
      settled = s.convert_parts(env, s.outcomes);
    } else {
      settled = s.convert ? s.convert(env, one) : env.Undefined();
    }
  } catch (const Napi::Error& e) {
    ok = false;
    settled = e.Value();
  }
  if (ok) {
    napi_resolve_deferred(s.env, s.deferred, settled);
  } else {
    napi_reject_deferred(s.env, s.deferred, settled);
  }
}

// The end of a call's last job: settles its promise in the shared async context.
void SettleInScope(AsyncJobs* jobs, Settlement& s) {
  if (s.done) s.done();
  if (jobs->stopping) {
    // No JS during teardown: the promise stays pending with its environment.
    s.keep.clear();
    FinishTeardownIfIdle(jobs);
    return;
  }
  napi_handle_scope handles;
  if (napi_open_handle_scope(s.env, &handles) != napi_ok) return;  // the environment is gone
  napi_value resource;
  napi_callback_scope scope;
  // Closing the callback scope runs the microtasks and ticks the settlement queued, as
  // MakeCallback does: the awaiting code resumes now, not at the next unrelated callback.
  if (napi_get_reference_value(s.env, jobs->resource, &resource) == napi_ok &&
      napi_open_callback_scope(s.env, resource, jobs->context, &scope) == napi_ok) {
    Settle(s);
    napi_close_callback_scope(s.env, scope);
  }
  napi_close_handle_scope(s.env, handles);
}

void AfterJob(uv_work_t* req, int status) {
  std::unique_ptr<Job> job(static_cast<Job*>(req->data));
  AsyncJobs* jobs = job->jobs;
  jobs->in_flight--;
  Settlement& s = *job->settlement;
  s.outcomes[job->part] = job->outcome;
  // A part that ends before the others costs this thread no JS, and the others are still in
  // flight (so no teardown can finish here): only the last one settles.
  if (--s.pending > 0) return;
  SettleInScope(jobs, s);
}

// A call's settlement, its promise made; `keep` referenced until it settles.
std::shared_ptr<Settlement> NewSettlement(Napi::Env env, AsyncJobs* jobs, const char* syscall, std::string detail,
                                          const std::vector<Napi::Value>& keep, PoolJob::Done done,
                                          napi_value* promise) {
  if (jobs->stopping) throw Napi::Error::New(env, "the environment is shutting down");
  auto s = std::make_shared<Settlement>();
  s->env = env;
  s->syscall = syscall;
  s->detail = std::move(detail);
  s->done = std::move(done);
  s->keep.reserve(keep.size());
  for (const Napi::Value& v : keep) {
    if (v.IsObject()) s->keep.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  if (napi_create_promise(env, &s->deferred, promise) != napi_ok) throw Napi::Error::New(env);
  return s;
}

// Queues one job of a call; false (and nothing queued) when libuv refuses it.
bool QueueJob(AsyncJobs* jobs, std::shared_ptr<Settlement> s, size_t part, PoolJob::Work work, int* err) {
  auto job = std::make_unique<Job>();
  job->jobs = jobs;
  job->work = std::move(work);
  job->part = part;
  job->settlement = std::move(s);
  job->req.data = job.get();
  *err = uv_queue_work(jobs->loop, &job->req, ExecuteJob, AfterJob);
  if (*err != 0) return false;
  jobs->in_flight++;
  job.release();
  return true;
}

}  // namespace

void InitAsyncJobs(Napi::Env env, AsyncJobs& jobs) {
  jobs.env = env;
  if (napi_get_uv_event_loop(env, &jobs.loop) != napi_ok) throw Napi::Error::New(env, "no event loop");
  Napi::Object resource = Napi::Object::New(env);
  napi_create_reference(env, resource, 1, &jobs.resource);
  napi_async_init(env, resource, Napi::String::New(env, "vfio-migration:syscall"), &jobs.context);
  napi_add_async_cleanup_hook(env, OnTeardown, &jobs, &jobs.teardown);
}

Napi::Promise RunAsync(Napi::Env env, const char* syscall, std::string detail, PoolJob::Work work,
                       PoolJob::Convert convert, const std::vector<Napi::Value>& keep, PoolJob::Done done) {
  AsyncJobs* jobs = env.GetInstanceData<AddonData>()->jobs.get();
  napi_value promise;
  std::shared_ptr<Settlement> s = NewSettlement(env, jobs, syscall, std::move(detail), keep, std::move(done), &promise);
  s->convert = std::move(convert);
  int err;
  if (!QueueJob(jobs, s, 0, std::move(work), &err)) {
    // Nothing queued: settle the promise here (it is still unobserved, so reject is safe).
    napi_reject_deferred(env, s->deferred,
                         Napi::Error::New(env, std::string("uv_queue_work: ") + uv_strerror(err)).Value());
    if (s->done) s->done();
  }
  return Napi::Promise(env, promise);
}

Napi::Promise RunAsyncParts(Napi::Env env, const char* syscall, std::string detail, std::vector<PoolJob::Work> parts,
                            PoolJob::ConvertParts convert, const std::vector<Napi::Value>& keep) {
  AsyncJobs* jobs = env.GetInstanceData<AddonData>()->jobs.get();
  napi_value promise;
  std::shared_ptr<Settlement> s = NewSettlement(env, jobs, syscall, std::move(detail), keep, nullptr, &promise);
  s->convert_parts = std::move(convert);
  s->outcomes.resize(parts.size());
  // The parts still to end, and one for this call itself, dropped once every part is queued: if
  // libuv refused them all, nothing else would ever settle the call.
  s->pending = parts.size() + 1;
  for (size_t i = 0; i < parts.size(); i++) {
    int err;
    if (!QueueJob(jobs, s, i, std::move(parts[i]), &err)) {
      // A part libuv refused ran nothing: it ends here with libuv's error as its outcome.
      s->outcomes[i].err = -err;
      s->pending--;
    }
  }
  // Every part refused: settle here, in the caller's own scope (the promise is still unobserved).
  if (--s->pending == 0) Settle(*s);
  return Napi::Promise(env, promise);
}

}  // namespace vfio
