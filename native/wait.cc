// Reads that may wait forever (pipes, sockets, terminals), each on a thread of its own, cancellable.
//
// A libuv pool thread blocked in read() on a silent pipe is lost to device I/O and fs, ignores
// every signal, and makes process.exit() hang joining it. So, as node-pty does for waitpid, such
// a read runs on a dedicated thread that waits in poll() on the fd and on an eventfd of its own:
// cancelReads(id), and the environment's cleanup hook, write that eventfd. The thread works on a
// dup of the fd, so a close() of the caller's fd number never makes it read a reused number, and
// the promise settles only after the thread was joined: by then it has let go of the fd.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "common.h"

namespace vfio {

struct WaitJob {
  int fd = -1;         // the thread's dup, closed after the join
  int cancel_fd = -1;  // eventfd
  int64_t cancel_id = -1;
  size_t min = 0;
  size_t max = 0;
  size_t already = 0;  // read on the JS thread before the wait (ReadReady)
  JobBytesPtr bytes;
  Napi::Promise::Deferred deferred;
  Outcome out;
  std::thread thread;

  explicit WaitJob(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
  ~WaitJob() {
    if (fd >= 0) close(fd);
    if (cancel_fd >= 0) close(cancel_fd);
  }
  void Cancel() const {
    uint64_t one = 1;
    RetryEintr([&] { return write(cancel_fd, &one, sizeof one); });
  }
};

// Per environment. `jobs` (every job not yet settled) is touched on the JS thread only;
// `finished` is filled by the wait threads, under `mu`, and drained on the JS thread.
struct WaitState {
  std::vector<WaitJob*> jobs;
  std::mutex mu;
  std::vector<WaitJob*> finished;
  Napi::ThreadSafeFunction wake;  // ref'd while a job is pending: a pending read keeps the loop alive
  bool torn_down = false;
};
using WaitStatePtr = std::shared_ptr<WaitState>;

namespace {

WaitStatePtr& StateOf(Napi::Env env) { return env.GetInstanceData<AddonData>()->waits; }

void Settle(Napi::Env env, WaitJob* job) {
  Napi::HandleScope scope(env);
  if (job->out.err != 0) {
    job->deferred.Reject(SyscallError(env, "read", job->out.err).Value());
    return;
  }
  try {
    job->bytes->Deliver(env, static_cast<size_t>(job->out.ret));
    job->deferred.Resolve(Napi::Number::New(env, static_cast<double>(job->out.ret)));
  } catch (const Napi::Error& e) {
    job->deferred.Reject(e.Value());
  }
}

// JS thread: settles every finished job once its thread is joined.
void Drain(Napi::Env env, WaitState* state) {
  if (!env || state->torn_down) return;  // the cleanup hook owns the jobs then
  std::vector<WaitJob*> finished;
  {
    std::lock_guard<std::mutex> lock(state->mu);
    finished.swap(state->finished);
  }
  for (WaitJob* job : finished) {
    job->thread.join();
    state->jobs.erase(std::remove(state->jobs.begin(), state->jobs.end(), job), state->jobs.end());
    Settle(env, job);
    delete job;
  }
  if (state->jobs.empty()) state->wake.Unref(env);
}

// Environment teardown (worker exit, process exit through FreeEnvironment): wakes every wait,
// joins its thread, and drops the jobs without settling them (JS can no longer run).
void TearDown(WaitStatePtr* holder) {
  WaitState* state = holder->get();
  state->torn_down = true;
  for (WaitJob* job : state->jobs) job->Cancel();
  for (WaitJob* job : state->jobs) {
    job->thread.join();
    delete job;
  }
  state->jobs.clear();
  {
    std::lock_guard<std::mutex> lock(state->mu);
    state->finished.clear();
  }
  state->wake.Abort();
  delete holder;
}

WaitState* EnsureState(Napi::Env env) {
  WaitStatePtr& state = StateOf(env);
  if (state) return state.get();
  state = std::make_shared<WaitState>();
  // The context keeps the state alive until the function is finalized, whichever comes last of
  // it and the cleanup hook.
  auto* context = new WaitStatePtr(state);
  state->wake = Napi::ThreadSafeFunction::New(
      env, Napi::Function(), "vfio-migration:wait", 0, 1, context, [](Napi::Env, void*, WaitStatePtr* c) { delete c; },
      static_cast<void*>(nullptr));
  state->wake.Unref(env);
  // Registered after the function was created, so it runs before the function's own teardown.
  env.AddCleanupHook(TearDown, new WaitStatePtr(state));
  return state.get();
}

void RunJob(WaitJob* job, WaitStatePtr state) {
  job->out = ReadAtLeast(job->fd, job->bytes->data() + job->already, job->min - job->already, job->max - job->already,
                         job->cancel_fd);
  if (job->out.err == 0) job->out.ret += static_cast<int64_t>(job->already);
  {
    std::lock_guard<std::mutex> lock(state->mu);
    state->finished.push_back(job);
  }
  // Fails only when the environment is going away; the cleanup hook then joins this thread.
  state->wake.NonBlockingCall([state](Napi::Env env, Napi::Function) { Drain(env, state.get()); });
}

// cancelReads(cancelId): every read started with this id rejects with ECANCELED.
Napi::Value CancelReads(const Napi::CallbackInfo& info) {
  int64_t id = ArgU32(info, 0, "cancelId");
  WaitStatePtr& state = StateOf(info.Env());
  if (state) {
    for (WaitJob* job : state->jobs) {
      if (job->cancel_id == id) job->Cancel();
    }
  }
  return info.Env().Undefined();
}

}  // namespace

namespace {

// What is already in the pipe, read on the JS thread without waiting: poll() with no timeout says
// whether a read() would return at once, and nothing else reads this fd. Returns the bytes read
// (stopping once `min` arrived, at the end of input, or when the next read would wait), or -errno.
int64_t ReadReady(int fd, uint8_t* data, size_t min, size_t max, bool* ended) {
  size_t got = 0;
  *ended = false;
  while (got < min) {
    pollfd p = {fd, POLLIN, 0};
    int r = RetryEintr([&] { return poll(&p, 1, 0); });
    if (r < 0) return -errno;
    if (r == 0 || !(p.revents & (POLLIN | POLLHUP))) break;
    ssize_t n = RetryEintr([&] { return read(fd, data + got, max - got); });
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? static_cast<int64_t>(got) : -errno;
    if (n == 0) {
      *ended = true;
      break;
    }
    got += static_cast<size_t>(n);
  }
  return static_cast<int64_t>(got);
}

}  // namespace

Napi::Promise WaitRead(Napi::Env env, int fd, JobBytesPtr bytes, size_t min, size_t max, int64_t cancel_id) {
  // The fast path: when the writer is ahead (a pipe from save or ssh, with 1 MiB of capacity), the
  // bytes are there already and a thread of its own per read would cost more than the copy.
  bool ended = false;
  int64_t ready = ReadReady(fd, bytes->data(), min, max, &ended);
  if (ready < 0) throw SyscallError(env, "read", static_cast<int>(-ready));
  if (static_cast<size_t>(ready) >= min || ended) {
    auto deferred = Napi::Promise::Deferred::New(env);
    bytes->Deliver(env, static_cast<size_t>(ready));
    deferred.Resolve(Napi::Number::New(env, static_cast<double>(ready)));
    return deferred.Promise();
  }
  WaitState* state = EnsureState(env);
  auto job = std::make_unique<WaitJob>(env);
  job->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (job->fd < 0) throw SyscallError(env, "fcntl", errno, "F_DUPFD_CLOEXEC");
  job->cancel_fd = eventfd(0, EFD_CLOEXEC);
  if (job->cancel_fd < 0) throw SyscallError(env, "eventfd", errno);
  job->cancel_id = cancel_id;
  job->min = min;
  job->max = max;
  job->already = static_cast<size_t>(ready);
  job->bytes = std::move(bytes);
  Napi::Promise promise = job->deferred.Promise();
  try {
    job->thread = std::thread(RunJob, job.get(), StateOf(env));
  } catch (const std::system_error& e) {
    throw SyscallError(env, "pthread_create", e.code().value());
  }
  if (state->jobs.empty()) state->wake.Ref(env);
  state->jobs.push_back(job.release());
  return promise;
}

void InitWait(Napi::Env env, Napi::Object exports) {
  exports.Set("cancelReads", Napi::Function::New(env, CancelReads, "cancelReads"));
}

}  // namespace vfio
