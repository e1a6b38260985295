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
constexpr size_t kChunksPerThread = 4;

inline uint32_t generation_of(uint64_t word) { return uint32_t(word >> 32); }
// The chunk field of a job's word while its fields are being written: nothing can be claimed.
constexpr uint32_t kClosed = 0xFFFFFFFFu;

}  // namespace

ThreadPool::ThreadPool(unsigned n_threads) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  if (n_threads == 0) n_threads = cores;
  spin_ = n_threads <= cores;
  for (unsigned i = 0; i + 1 < n_threads; ++i) workers_.emplace_back([this] { worker(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lk(mu_);
    stop_.store(true);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_chunks(uint32_t generation) {
  for (;;) {
    uint64_t word = word_.load(std::memory_order_acquire);
    if (generation_of(word) != generation) return;
    if (uint32_t(word) == kClosed) {  // the job's fields are being written: they come in a moment
      cpu_relax();
      continue;
    }
    // Acquire: a field of a later job read here means that job closed the word first (below), so
    // the claim of this word fails.
    const size_t chunk = size_t(uint32_t(word)), chunks = chunks_.load(std::memory_order_acquire);
    const size_t n = n_.load(std::memory_order_acquire);
    const Fn* fn = fn_.load(std::memory_order_acquire);
    if (chunk >= chunks) return;
    if (!word_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel)) continue;
    try {
      (*fn)(n * chunk / chunks, n * (chunk + 1) / chunks);
    } catch (...) {
      std::lock_guard lk(error_mu_);
      if (!error_) error_ = std::current_exception();
    }
    done_.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  if (workers_.empty() || n == 1) {
    fn(0, n);
    return;
  }
  const size_t chunks = std::min(n, kChunksPerThread * size());
  error_ = nullptr;  // no worker touches it between jobs
  const uint32_t g = ++generation_;
  // Close the last job's word before its fields change. A worker may have read that word, then be
  // descheduled, then read this job's fields: its claim of the old word must fail. Without this it
  // could succeed (the old word was still current), run a chunk of this job that is claimed again
  // below and count it twice, and this call then waited for ever (seen under two busy processes
  // on two cores).
  word_.store((uint64_t(g) << 32) | kClosed, std::memory_order_release);
  fn_.store(&fn, std::memory_order_release);
  n_.store(n, std::memory_order_release);
  chunks_.store(chunks, std::memory_order_release);
  done_.store(0, std::memory_order_relaxed);
  word_.store(uint64_t(g) << 32, std::memory_order_release);
  {
    // A worker about to sleep checks the word under mu_, so taking mu_ here orders this
    // notification after its check: no lost wake-up.
    std::lock_guard lk(mu_);
    if (sleepers_ > 0) wake_.notify_all();
  }
  run_chunks(g);
  // What is left are chunks other threads claimed and are running.
  for (unsigned spins = 0; done_.load(std::memory_order_acquire) != chunks; ++spins) {
    if (spin_ && spins < 4096)
      cpu_relax();
    else
      std::this_thread::yield();
  }
  std::lock_guard lk(error_mu_);
  if (error_) std::rethrow_exception(error_);
}

void ThreadPool::worker() {
  uint32_t seen = 0;
  for (;;) {
    // Spin for a new job, then sleep until one comes.
    const auto spin_until = std::chrono::steady_clock::now() + kSpin;
    uint32_t g = seen;
    for (unsigned spins = 0;; ++spins) {
      g = generation_of(word_.load(std::memory_order_acquire));
      if (g != seen || stop_.load(std::memory_order_relaxed)) break;
      cpu_relax();
      if (!spin_ || ((spins & 255) == 255 && std::chrono::steady_clock::now() > spin_until)) {
        std::unique_lock lk(mu_);
        ++sleepers_;
        wake_.wait(lk, [&] { return stop_.load() || generation_of(word_.load(std::memory_order_acquire)) != seen; });
        --sleepers_;
      }
    }
    if (stop_.load()) return;
    seen = g;
    run_chunks(g);
  }
}

}  // namespace tq::cpu
