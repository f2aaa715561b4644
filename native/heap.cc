// The addon's two hints to V8 for a migration: no major GC while devices are stopped, feedback from first calls.
#include <dlfcn.h>
#include <v8.h>

#include "common.h"

namespace vfio {

namespace {

// V8's hint that the process is loading has had two forms: Isolate::SetRAILMode(PERFORMANCE_LOAD)
// up to V8 12.4 (Node 20 and 22) and Isolate::SetIsLoading(true) after it (Node 24 on). The addon
// is built against one Node's headers but loaded by whichever Node runs it (Node-API is stable
// across versions; V8's C++ API is not): built for Node 20 and run by Node 24, a call compiled in
// for the form of the headers ended the process at a migration's first stop ("undefined symbol:
// v8::Isolate::SetRAILMode"). So the running Node's own form is looked up, once, by its mangled
// name; both are non-virtual members, called with the isolate as their first argument.
using SetIsLoadingFn = void (*)(v8::Isolate*, bool);
using SetRailModeFn = void (*)(v8::Isolate*, unsigned);
// v8::RAILMode's values (v8-isolate.h up to V8 12.4): PERFORMANCE_ANIMATION 1, PERFORMANCE_LOAD 3.
constexpr unsigned kRailAnimation = 1;
constexpr unsigned kRailLoad = 3;

struct LoadingHint {
  SetIsLoadingFn setIsLoading;
  SetRailModeFn setRailMode;
  bool available() const { return setIsLoading != nullptr || setRailMode != nullptr; }
};

const LoadingHint& RunningNodeHint() {
  static const LoadingHint hint{
      reinterpret_cast<SetIsLoadingFn>(dlsym(RTLD_DEFAULT, "_ZN2v87Isolate12SetIsLoadingEb")),
      reinterpret_cast<SetRailModeFn>(dlsym(RTLD_DEFAULT, "_ZN2v87Isolate11SetRAILModeENS_8RAILModeE")),
  };
  return hint;
}

// deferMajorGc(on): with on, V8 treats the process as loading: an old generation that reaches its
// allocation limit grows instead of being collected at once (up to a margin, and for at most a
// few seconds, both V8's own bounds). With off, V8's usual heuristics again; a collection that
// was held off is scheduled then. Where V8 takes no such hint (majorGcHint false), nothing.
//
// Why: V8 counts the I/O buffers' native memory against its old-generation limit, so a process
// moving several devices reaches that limit with a few MiB of JS heap and runs a full
// mark-compact, whose 24-75 ms (in the test guest) landed in four devices' downtime.
Napi::Value DeferMajorGc(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsBoolean()) throw Napi::TypeError::New(info.Env(), "on must be a boolean");
  bool on = info[0].As<Napi::Boolean>().Value();
  const LoadingHint& hint = RunningNodeHint();
  if (hint.setIsLoading != nullptr) {
    hint.setIsLoading(v8::Isolate::GetCurrent(), on);
  } else if (hint.setRailMode != nullptr) {
    hint.setRailMode(v8::Isolate::GetCurrent(), on ? kRailLoad : kRailAnimation);
  }
  return info.Env().Undefined();
}

// eagerFeedback(on): with on, V8 gives every function its feedback vector (the inline caches)
// at its first call; with off, only once it has run a while, V8's default
// (--lazy-feedback-allocation). V8 reads the flag as a function is first called, so it changes
// nothing for functions that have run already. Node's v8.setFlagsFromString does the same;
// the addon does it so that a command need not load node:v8.
//
// Why: most of a migration's downtime is code that runs there once per device (the stop-copy
// pass, the trailer, the end of a stream, the messages), so it ran without inline caches, each
// property access a generic lookup. In the test guest (cold CLI, live 64 MiB v2 devices) one
// device's downtime went 19 -> 15 ms and four devices' 33 -> 27 ms.
Napi::Value EagerFeedback(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsBoolean()) throw Napi::TypeError::New(info.Env(), "on must be a boolean");
  v8::V8::SetFlagsFromString(info[0].As<Napi::Boolean>().Value() ? "--no-lazy-feedback-allocation"
                                                                 : "--lazy-feedback-allocation");
  return info.Env().Undefined();
}

}  // namespace

void InitHeap(Napi::Env env, Napi::Object exports) {
  exports.Set("deferMajorGc", Napi::Function::New(env, DeferMajorGc, "deferMajorGc"));
  exports.Set("majorGcHint", Napi::Boolean::New(env, RunningNodeHint().available()));
  exports.Set("eagerFeedback", Napi::Function::New(env, EagerFeedback, "eagerFeedback"));
}

}  // namespace vfio
