// The addon's two hints to V8 for a migration: no major GC while devices are stopped, feedback from first calls.
#include <dlfcn.h>

#include "common.h"

namespace vfio {

namespace {

// The hints are V8 C++ calls, and the addon is otherwise pure Node-API. It includes no V8 header
// and links to no V8 symbol: it finds the running Node's own entry points with dlsym, by their
// mangled names, once. Why:
// - V8's C++ API is not stable across Node releases. Built for Node 20 and run by Node 24, a
//   call compiled in for the headers' V8 ended the process at a migration's first stop
//   ("undefined symbol: v8::Isolate::SetRAILMode").
// - Node 24's V8 headers need C++20: including them, the addon did not build for Node 24 or 26
//   at all (npm install failed).
// The loading hint has had two forms: Isolate::SetRAILMode(PERFORMANCE_LOAD) up to V8 12.4 (Node
// 20 and 22), Isolate::SetIsLoading(true) after it (Node 24 and 26). Both are non-virtual
// members, called with the isolate as their first argument (the Itanium C++ ABI).
using GetCurrentIsolateFn = void* (*)();
using SetIsLoadingFn = void (*)(void* isolate, bool loading);
using SetRailModeFn = void (*)(void* isolate, unsigned mode);
using SetFlagsFromStringFn = void (*)(const char* flags);
// v8::RAILMode's values (v8-isolate.h up to V8 12.4): PERFORMANCE_ANIMATION 1, PERFORMANCE_LOAD 3.
constexpr unsigned kRailAnimation = 1;
constexpr unsigned kRailLoad = 3;

template <typename Fn>
Fn Lookup(const char* mangled) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, mangled));
}

struct V8Entries {
  GetCurrentIsolateFn getCurrent;
  SetIsLoadingFn setIsLoading;
  SetRailModeFn setRailMode;
  SetFlagsFromStringFn setFlags;
  bool gcHint() const { return getCurrent != nullptr && (setIsLoading != nullptr || setRailMode != nullptr); }
};

const V8Entries& RunningV8() {
  static const V8Entries entries{
      Lookup<GetCurrentIsolateFn>("_ZN2v87Isolate10GetCurrentEv"),
      Lookup<SetIsLoadingFn>("_ZN2v87Isolate12SetIsLoadingEb"),
      Lookup<SetRailModeFn>("_ZN2v87Isolate11SetRAILModeENS_8RAILModeE"),
      Lookup<SetFlagsFromStringFn>("_ZN2v82V818SetFlagsFromStringEPKc"),
  };
  return entries;
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
  const V8Entries& entries = RunningV8();
  if (!entries.gcHint()) return info.Env().Undefined();
  void* isolate = entries.getCurrent();
  if (entries.setIsLoading != nullptr) {
    entries.setIsLoading(isolate, on);
  } else {
    entries.setRailMode(isolate, on ? kRailLoad : kRailAnimation);
  }
  return info.Env().Undefined();
}

// eagerFeedback(on): with on, V8 gives every function its feedback vector (the inline caches)
// at its first call; with off, only once it has run a while, V8's default
// (--lazy-feedback-allocation). V8 reads the flag as a function is first called, so it changes
// nothing for functions that have run already. Node's v8.setFlagsFromString does the same;
// the addon does it so that a command need not load node:v8. Where the running Node has no
// V8::SetFlagsFromString (feedbackHint false), nothing.
//
// Why: most of a migration's downtime is code that runs there once per device (the stop-copy
// pass, the trailer, the end of a stream, the messages), so it ran without inline caches, each
// property access a generic lookup. In the test guest (cold CLI, live 64 MiB v2 devices) one
// device's downtime went 19 -> 15 ms and four devices' 33 -> 27 ms.
Napi::Value EagerFeedback(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsBoolean()) throw Napi::TypeError::New(info.Env(), "on must be a boolean");
  SetFlagsFromStringFn setFlags = RunningV8().setFlags;
  if (setFlags != nullptr) {
    setFlags(info[0].As<Napi::Boolean>().Value() ? "--no-lazy-feedback-allocation" : "--lazy-feedback-allocation");
  }
  return info.Env().Undefined();
}

}  // namespace

void InitHeap(Napi::Env env, Napi::Object exports) {
  exports.Set("deferMajorGc", Napi::Function::New(env, DeferMajorGc, "deferMajorGc"));
  exports.Set("majorGcHint", Napi::Boolean::New(env, RunningV8().gcHint()));
  exports.Set("eagerFeedback", Napi::Function::New(env, EagerFeedback, "eagerFeedback"));
  exports.Set("feedbackHint", Napi::Boolean::New(env, RunningV8().setFlags != nullptr));
}

}  // namespace vfio
