// The calling thread's CPU clock: how much of a span of wall time was this thread's own work.
#include <time.h>

#include "common.h"

namespace vfio {

namespace {

// threadCpuNs(): nanoseconds the calling thread has spent on a CPU (user and kernel), or
// undefined where the clock is missing. CLOCK_THREAD_CPUTIME_ID, not /proc/thread-self/schedstat:
// the kernel brings a running thread's count up to date for this clock, while schedstat shows
// it as of the scheduler's last tick (a 1 ms busy loop read 0.008 ms there, and a 49 ms downtime
// held 52.2 ms of work).
Napi::Value ThreadCpuNs(const Napi::CallbackInfo& info) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return info.Env().Undefined();
  uint64_t ns = static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
  return Napi::BigInt::New(info.Env(), ns);
}

}  // namespace

void InitClock(Napi::Env env, Napi::Object exports) {
  exports.Set("threadCpuNs", Napi::Function::New(env, ThreadCpuNs, "threadCpuNs"));
}

}  // namespace vfio
