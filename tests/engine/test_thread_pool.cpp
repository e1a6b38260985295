// The CPU backend's thread pool: every index of every job exactly once, with more threads than
// ranges, back to back (workers spinning) and after idle gaps (workers asleep), and errors.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
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
