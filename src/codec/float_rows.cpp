#include "tq/codec/float_rows.h"

#include <cmath>
#include <cstring>

#include "simd.h"
#include "tq/check.h"
#include "tq/cpu_features.h"
#include "tq/numeric.h"

namespace tq {

void store_float_row(Encoding e, const float* x, uint32_t n, float scale, uint8_t* dst) {
  for (uint32_t i = 0; i < n; ++i) {
    TQ_CHECK(std::isfinite(x[i]), "cannot store a non-finite value in the KV cache: element {} is {}", i, x[i]);
    switch (e) {
      case Encoding::kFp32: std::memcpy(dst + 4 * i, x + i, 4); break;
      case Encoding::kFp16: {
        TQ_CHECK(std::abs(x[i]) <= kF16Max, "element {} is {}, beyond the fp16 range of the cache", i, x[i]);
        const uint16_t h = f32_to_f16(x[i]);
        std::memcpy(dst + 2 * i, &h, 2);
        break;
      }
      case Encoding::kBf16: {
        const uint16_t h = f32_to_bf16(x[i]);
        // rounding to 8 bits of mantissa carries the largest floats (from about 3.3961e38) to inf
        TQ_CHECK((h & 0x7FFFu) != 0x7F80u, "element {} is {}, which bf16 rounds to infinity", i, x[i]);
        std::memcpy(dst + 2 * i, &h, 2);
        break;
      }
      case Encoding::kFp8E4M3: dst[i] = f32_to_e4m3(x[i] / scale); break;
      default: throw Error("store_float_row: not a float encoding");
    }
  }
}

void load_float_row(Encoding e, const uint8_t* src, uint32_t n, float scale, float* out) {
  uint16_t h;
  switch (e) {
    case Encoding::kFp32: std::memcpy(out, src, size_t(n) * 4); return;
    case Encoding::kFp16:
      if (cpu::has_avx2_fma()) return simd::load_f16_avx2(src, n, out);
      for (uint32_t i = 0; i < n; ++i) std::memcpy(&h, src + 2 * i, 2), out[i] = f16_to_f32(h);
      return;
    case Encoding::kBf16:
      for (uint32_t i = 0; i < n; ++i) std::memcpy(&h, src + 2 * i, 2), out[i] = bf16_to_f32(h);
      return;
    case Encoding::kFp8E4M3:
      for (uint32_t i = 0; i < n; ++i) out[i] = e4m3_to_f32(src[i]) * scale;
      return;
    default: throw Error("load_float_row: not a float encoding");
  }
}

}  // namespace tq
