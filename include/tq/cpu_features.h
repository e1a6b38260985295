// What the CPU can do, checked once, and the switch that tests and benchmarks use to run the
// scalar references through the same API. Every SIMD path of the project asks here.
#pragma once

namespace tq::cpu {

// True when the CPU has AVX2, FMA and F16C (every AVX2 CPU has F16C) and SIMD has not been
// switched off.
bool has_avx2_fma();
void set_simd_enabled(bool on);
bool simd_enabled();

}  // namespace tq::cpu
