// The addon's one hint to V8 itself: hold off major garbage collections while a migration's devices are stopped.
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

}  // namespace

void InitHeap(Napi::Env env, Napi::Object exports) {
  exports.Set("deferMajorGc", Napi::Function::New(env, DeferMajorGc, "deferMajorGc"));
  exports.Set("majorGcHint", Napi::Boolean::New(env, VFIO_HAVE_RAIL_MODE != 0));
}

}  // namespace vfio
