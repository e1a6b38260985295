// A fixed pool of worker threads for the engine's data-parallel loops (matrix products, attention
// heads). One parallel_for at a time; the calling thread takes a share of the work too.
//
// A decode step is a few hundred parallel_for calls of tens of microseconds each, so waking a
// sleeping thread (a futex round trip, several microseconds) per call would cost as much as the
// work: workers spin on the job word for a while after each job and only then sleep. A job is cut
// into a few chunks per thread, which the threads claim one at a time; the caller claims too, so
// when a worker is not running (the machine is busy with other processes) the caller does its
// chunks instead of waiting for it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tq::cpu {

class ThreadPool {
 public:
  // n_threads 0: std::thread::hardware_concurrency().
  explicit ThreadPool(unsigned n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  unsigned size() const { return unsigned(workers_.size()) + 1; }
  // Splits [0, n) into contiguous ranges (at most 4 per thread) and calls fn(begin, end) on each,
  // in parallel; returns when all are done. The first exception thrown by fn is rethrown here.
  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn);

 private:
  using Fn = std::function<void(size_t, size_t)>;
  void worker();
  // Claims and runs chunks of job `generation` until none is left.
  void run_chunks(uint32_t generation);

  std::vector<std::thread> workers_;
  // The job word: generation << 32 | next chunk to claim. A chunk is claimed by a compare-exchange
  // that also checks the generation, so a thread that read a later job's fields while the word
  // moved on claims nothing. The fields are atomics for the same reason: a late reader may see
  // them being rewritten, and then discards what it read.
  std::atomic<uint64_t> word_{0};
  std::atomic<const Fn*> fn_{nullptr};
  std::atomic<size_t> n_{0}, chunks_{0};
  std::atomic<size_t> done_{0};  // chunks of the current job finished
  uint32_t generation_ = 0;      // the caller's count of jobs
  std::atomic<bool> stop_{false};
  bool spin_ = true;  // false when there are more threads than cores: a spinning thread would take a needed core
  // Sleeping: a worker that spun without seeing a job waits on wake_ under mu_.
  std::mutex mu_;
  std::condition_variable wake_;
  unsigned sleepers_ = 0;  // guarded by mu_
  std::mutex error_mu_;
  std::exception_ptr error_;  // guarded by error_mu_
};

}  // namespace tq::cpu
