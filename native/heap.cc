// The addon's two hints to V8 for a migration: no major GC while devices are stopped, feedback from first calls.
#include <v8.h>

#include "common.h"

namespace vfio {

namespace {

// V8 11 (Node 20) and 12 up to 12.4 (Node 22) take the hint as a RAIL mode; later V8 renamed it
// (Isolate::SetIsLoading), which this build cannot be compiled against here, so it does nothing.
#if V8_MAJOR_VERSION == 11 || (V8_MAJOR_VERSION == 12 && V8_MINOR_VERSION <= 4)
#define VFIO_HAVE_RAIL_MODE 1
#else
#define VFIO_HAVE_RAIL_MODE 0
#endif

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
#if VFIO_HAVE_RAIL_MODE
  bool on = info[0].As<Napi::Boolean>().Value();
  v8::Isolate::GetCurrent()->SetRAILMode(on ? v8::PERFORMANCE_LOAD : v8::PERFORMANCE_ANIMATION);
#endif
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
  exports.Set("majorGcHint", Napi::Boolean::New(env, VFIO_HAVE_RAIL_MODE != 0));
  exports.Set("eagerFeedback", Napi::Function::New(env, EagerFeedback, "eagerFeedback"));
}

}  // namespace vfio
