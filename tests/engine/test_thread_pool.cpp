// The CPU backend's thread pool: every index of every job exactly once, with more threads than
// ranges, back to back (workers spinning) and after idle gaps (workers asleep), and errors.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>
#include <vector>

#include "tq/backend/cpu/thread_pool.h"

namespace tq::cpu {
namespace {

void expect_each_index_once(ThreadPool& pool, size_t n) {
  std::vector<std::atomic<int>> hits(n);
  pool.parallel_for(n, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
  });
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "index " << i << " of " << n;
}

TEST(ThreadPool, EveryIndexOnceBackToBack) {
  for (unsigned threads : {1u, 2u, 5u}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    // Jobs smaller than the pool (some workers sit out) alternate with larger ones, with no pause:
    // a worker left out of one job must not run a share of the next one twice.
    for (int round = 0; round < 2000; ++round) expect_each_index_once(pool, size_t(1 + (round * 7) % 13));
  }
}

// Back-to-back jobs of changing sizes while other threads take the cores: workers are descheduled
// in the middle of a claim, as under a second busy process. A worker that read the last job's word
// and then this job's fields could run a chunk twice, and parallel_for then waited for ever (a
// test process hung so, its only worker asleep). The window is a few instructions wide: this test
// did not hit it in 3 runs of the old code, but it checks every index under contention and turns
// a hang into a failure (the watchdog).
TEST(ThreadPool, EveryIndexOnceUnderContention) {
  std::atomic<bool> stop{false}, finished{false};
  std::vector<std::thread> hogs;
  for (unsigned i = 0; i < std::max(2u, std::thread::hardware_concurrency()); ++i)
    hogs.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  std::thread watchdog([&] {
    for (int i = 0; i < 1200 && !finished.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!finished.load()) {
      std::fprintf(stderr, "ThreadPool.EveryIndexOnceUnderContention: no progress in 120 s: parallel_for hangs\n");
      std::abort();
    }
  });
  {
    ThreadPool pool(2);
    for (int round = 0; round < 20000 && !HasFatalFailure(); ++round) expect_each_index_once(pool, size_t(1 + (round * 5) % 11));
  }
  finished.store(true);
  stop.store(true);
  for (auto& t : hogs) t.join();
  watchdog.join();
}

TEST(ThreadPool, WakesSleepingWorkers) {
  ThreadPool pool(3);
  for (int round = 0; round < 4; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // longer than the spin: workers sleep
    expect_each_index_once(pool, 100);
  }
}

TEST(ThreadPool, ErrorsReachTheCallerAndThePoolGoesOn) {
  ThreadPool pool(3);
  for (size_t bad : {0, 50, 99}) {  // the caller's share, and workers' shares
    EXPECT_THROW(pool.parallel_for(100, [&](size_t b, size_t e) {
      if (bad >= b && bad < e) throw std::runtime_error("boom");
    }),
                 std::runtime_error);
    expect_each_index_once(pool, 100);
  }
}

}  // namespace
}  // namespace tq::cpu
