#include "tq/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace tq::cpu {
namespace {

struct Hardware {
  SimdLevel level = SimdLevel::kPortable;
  bool vnni = false;
};

const Hardware& hardware() {
  static const Hardware hw = [] {
    Hardware h;
#if defined(__x86_64__) || defined(__i386__)
    // F16C from CPUID leaf 1 (ECX bit 29): clang before 15 has no "f16c" for __builtin_cpu_supports.
    // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
    unsigned a, b, c, d;
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) {
      h.level = SimdLevel::kAvx2;
      if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
        h.level = SimdLevel::kAvx512;
        h.vnni = __builtin_cpu_supports("avx512vnni");
      }
    }
#endif
    return h;
  }();
  return hw;
}

SimdLevel cap_from_env() {
  const char* e = std::getenv("TQ_SIMD");
  if (!e || !*e) return SimdLevel::kAvx512;
  if (!std::strcmp(e, "portable")) return SimdLevel::kPortable;
  if (!std::strcmp(e, "avx2")) return SimdLevel::kAvx2;
  return SimdLevel::kAvx512;  // "avx512", or anything else: no cap
}

// Function-local statics: the first use may come from another file's static initializer.
SimdLevel env_cap() {
  static const SimdLevel c = cap_from_env();
  return c;
}
std::atomic<int>& cap() {
  static std::atomic<int> c{int(env_cap())};
  return c;
}

}  // namespace

SimdLevel hardware_simd_level() { return hardware().level; }
SimdLevel simd_level() {
  const int hw = int(hardware().level), c = cap().load(std::memory_order_relaxed);
  return SimdLevel(hw < c ? hw : c);
}
void set_simd_level(SimdLevel c) { cap().store(int(c)); }

bool has_avx2_fma() { return simd_level() >= SimdLevel::kAvx2; }
bool has_avx512() { return simd_level() >= SimdLevel::kAvx512; }
bool has_avx512_vnni() { return has_avx512() && hardware().vnni; }
void set_simd_enabled(bool on) { set_simd_level(on ? env_cap() : SimdLevel::kPortable); }
bool simd_enabled() { return cap().load() > int(SimdLevel::kPortable); }

}  // namespace tq::cpu
