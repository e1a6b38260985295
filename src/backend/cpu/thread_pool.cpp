#include "tq/backend/cpu/thread_pool.h"

#include <algorithm>

namespace tq::cpu {

ThreadPool::ThreadPool(unsigned n_threads) {
  if (n_threads == 0) n_threads = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i + 1 < n_threads; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  const unsigned parts = unsigned(std::min<size_t>(size(), n));
  if (parts == 1) {
    fn(0, n);
    return;
  }
  {
    std::lock_guard lk(mu_);
    job_ = &fn;
    job_n_ = n;
    job_parts_ = parts;
    pending_ = parts - 1;
    error_ = nullptr;
    ++generation_;
  }
  start_cv_.notify_all();
  std::exception_ptr mine;
  try {
    fn(0, n / parts);  // part 0: [0, n/parts)
  } catch (...) {
    mine = std::current_exception();
  }
  std::unique_lock lk(mu_);
  done_cv_.wait(lk, [this] { return pending_ == 0; });
  job_ = nullptr;
  if (mine) std::rethrow_exception(mine);
  if (error_) std::rethrow_exception(error_);
}

void ThreadPool::worker(unsigned index) {
  uint64_t seen = 0;
  for (;;) {
    std::unique_lock lk(mu_);
    start_cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    const unsigned part = index + 1;
    if (part >= job_parts_) continue;  // not needed for this job (and not counted in pending_)
    const auto* fn = job_;
    const size_t n = job_n_, parts = job_parts_;
    lk.unlock();
    std::exception_ptr err;
    try {
      (*fn)(n * part / parts, n * (part + 1) / parts);
    } catch (...) {
      err = std::current_exception();
    }
    lk.lock();
    if (err && !error_) error_ = err;
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

}  // namespace tq::cpu
