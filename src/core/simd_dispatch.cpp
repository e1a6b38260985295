#include <atomic>

#include "simd.h"

namespace tq::simd {
namespace {
std::atomic<bool> g_enabled{true};
bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}
}  // namespace

bool has_avx2() { return g_enabled.load(std::memory_order_relaxed) && cpu_has_avx2(); }
void set_enabled(bool on) { g_enabled.store(on); }
bool enabled() { return g_enabled.load(); }

}  // namespace tq::simd
