#include "tq/backend/cpu/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace tq::cpu {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// How long an idle worker keeps spinning before it sleeps: longer than the gaps between the
// products of one step and between the steps of a generation (sampling), short enough that an idle
// engine stops using the cores at once.
constexpr auto kSpin = std::chrono::microseconds(2000);

}  // namespace

ThreadPool::ThreadPool(unsigned n_threads) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  if (n_threads == 0) n_threads = cores;
  // More threads than cores: a spinning thread would take the core another one needs.
  spin_ = n_threads <= cores;
  for (unsigned i = 0; i + 1 < n_threads; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lk(mu_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  const unsigned parts = unsigned(std::min<size_t>(size(), n));
  if (parts == 1) {
    fn(0, n);
    return;
  }
  job_ = &fn;
  job_n_ = n;
  job_parts_ = parts;
  error_ = nullptr;
  // Every worker acknowledges every job, those it does not need too: the job's fields may only be
  // rewritten for the next job once no worker can still be reading them.
  pending_.store(unsigned(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  {
    // A worker about to sleep checks generation_ under mu_, so taking mu_ here orders this
    // notification after its check: no lost wake-up.
    std::lock_guard lk(mu_);
    if (sleepers_ > 0) wake_.notify_all();
  }
  std::exception_ptr mine;
  try {
    fn(0, n / parts);  // part 0: [0, n/parts)
  } catch (...) {
    mine = std::current_exception();
  }
  for (unsigned spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spin_ && spins < 4096)
      cpu_relax();
    else
      std::this_thread::yield();  // a worker was descheduled: let it run
  }
  job_ = nullptr;
  if (mine) std::rethrow_exception(mine);
  if (error_) std::rethrow_exception(error_);
}

void ThreadPool::worker(unsigned index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin for a new job, then sleep until one comes.
    const auto spin_until = std::chrono::steady_clock::now() + kSpin;
    uint64_t g;
    for (unsigned spins = 0;; ++spins) {
      g = generation_.load(std::memory_order_acquire);
      if (g != seen || stop_.load(std::memory_order_relaxed)) break;
      cpu_relax();
      if (!spin_ || ((spins & 255) == 255 && std::chrono::steady_clock::now() > spin_until)) {
        std::unique_lock lk(mu_);
        ++sleepers_;
        wake_.wait(lk, [&] { return stop_.load() || generation_.load(std::memory_order_acquire) != seen; });
        --sleepers_;
      }
    }
    if (stop_.load()) return;
    seen = g;
    const unsigned part = index + 1;
    if (part < job_parts_) {  // else not needed for this job
      const size_t n = job_n_, parts = job_parts_;
      try {
        (*job_)(n * part / parts, n * (part + 1) / parts);
      } catch (...) {
        std::lock_guard lk(error_mu_);
        if (!error_) error_ = std::current_exception();
      }
    }
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace tq::cpu
