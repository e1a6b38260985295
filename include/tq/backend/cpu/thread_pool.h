// A fixed pool of worker threads for the engine's data-parallel loops (matrix products, attention
// heads). One parallel_for at a time; the calling thread takes a share of the work too.
//
// A decode step is a few hundred parallel_for calls of tens of microseconds each, so waking a
// sleeping thread (a futex round trip, several microseconds) per call would cost as much as the
// work. Workers therefore spin on the job counter for a while after each job and only then sleep;
// the caller spins while it waits for the others' shares. (Not when the pool has more threads
// than the machine has cores: then they sleep at once.)
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
  // Splits [0, n) into at most size() contiguous ranges and calls fn(begin, end) on each, in
  // parallel; returns when all are done. The first exception thrown by fn is rethrown here.
  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn);

 private:
  void worker(unsigned index);

  std::vector<std::thread> workers_;
  // The job: written by parallel_for before it bumps generation_ (release), read by the workers
  // after they see the new generation (acquire); rewritten only after every worker is done with it.
  const std::function<void(size_t, size_t)>* job_ = nullptr;
  size_t job_n_ = 0;
  unsigned job_parts_ = 0;  // ranges of the current job; workers with index+1 >= parts sit out
  std::atomic<uint64_t> generation_{0};
  std::atomic<unsigned> pending_{0};  // workers that have not yet finished (or skipped) the current job
  std::atomic<bool> stop_{false};
  bool spin_ = true;  // false when there are more threads than cores
  // Sleeping: a worker that spun without seeing a job waits on wake_ under mu_.
  std::mutex mu_;
  std::condition_variable wake_;
  unsigned sleepers_ = 0;  // guarded by mu_
  std::mutex error_mu_;
  std::exception_ptr error_;
};

}  // namespace tq::cpu
