// What the CPU can do, checked once, and the switch that tests and benchmarks use to run the
// slower paths through the same API. Every SIMD path of the project asks here.
#pragma once

namespace tq::cpu {

// The instruction sets a kernel may use, in order: each level includes the ones before it.
//   kPortable  plain C++ (what the compiler makes of it for the build's target)
//   kAvx2      AVX2 + FMA + F16C
//   kAvx512    AVX-512 F + BW + VL on top of AVX2 (the quantized dot products; VNNI where present)
enum class SimdLevel { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

// The level in use: the highest the CPU has, capped by set_simd_level. The cap starts from the
// environment variable TQ_SIMD (portable, avx2 or avx512; unset: no cap), so a whole run (tq, a
// test binary, a benchmark) can be held to the AVX2 or the portable paths of an AVX-512 machine.
SimdLevel simd_level();
void set_simd_level(SimdLevel cap);
// The highest level this CPU has, whatever the cap.
SimdLevel hardware_simd_level();

// True when the level in use is at least kAvx2.
bool has_avx2_fma();
// True when the level in use is kAvx512.
bool has_avx512();
// True when the level in use is kAvx512 and the CPU has AVX-512 VNNI (vpdpbusd).
bool has_avx512_vnni();
// set_simd_enabled(false): the portable paths (cap kPortable); true: back to TQ_SIMD's cap (none when unset).
void set_simd_enabled(bool on);
bool simd_enabled();

}  // namespace tq::cpu
