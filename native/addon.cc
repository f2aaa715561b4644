// Entry point of the vfio-migration native addon: syscalls and one hint to V8 (heap.cc), no protocol logic.
#include "common.h"

namespace vfio {

namespace {

// setErrorClass(cls): the one error class every syscall failure is built from.
Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction())
    throw Napi::TypeError::New(info.Env(), "error class must be a function");
  info.Env().GetInstanceData<AddonData>()->error_class = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData(data);
  data->jobs = std::make_unique<AsyncJobs>();
  InitAsyncJobs(env, *data->jobs);
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass, "setErrorClass"));
  InitBuffers(env, exports);
  InitHeap(env, exports);
  InitClock(env, exports);
  InitWait(env, exports);
  InitIo(env, exports);
  InitVfio(env, exports);
  InitMapping(env, exports);
  InitLayout(env, exports);
  InitDma(env, exports);
  return exports;
}

}  // namespace vfio

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return vfio::Init(env, exports); }

NODE_API_MODULE(vfio_native, InitModule)
