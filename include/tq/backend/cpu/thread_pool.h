// A fixed pool of worker threads for the engine's data-parallel loops (matrix products, attention
// heads). One parallel_for at a time; the calling thread takes a share of the work too.
#pragma once

#include <condition_variable>
#include <cstddef>
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
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(size_t, size_t)>* job_ = nullptr;
  size_t job_n_ = 0;
  unsigned job_parts_ = 0;  // ranges of the current job; workers with index+1 >= parts sit out
  uint64_t generation_ = 0;
  unsigned pending_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace tq::cpu
