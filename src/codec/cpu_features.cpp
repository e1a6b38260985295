#include "tq/cpu_features.h"

#include <atomic>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace tq::cpu {
namespace {
std::atomic<bool> g_enabled{true};
bool hardware_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  // F16C from CPUID leaf 1 (ECX bit 29): clang before 15 has no "f16c" for __builtin_cpu_supports.
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && [] {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
  }();
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
