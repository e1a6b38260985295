#include "tq/cpu_features.h"

#include <atomic>

namespace tq::cpu {
namespace {
std::atomic<bool> g_enabled{true};
bool hardware_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}
}  // namespace

bool has_avx2_fma() { return g_enabled.load(std::memory_order_relaxed) && hardware_avx2_fma(); }
void set_simd_enabled(bool on) { g_enabled.store(on); }
bool simd_enabled() { return g_enabled.load(); }

}  // namespace tq::cpu
