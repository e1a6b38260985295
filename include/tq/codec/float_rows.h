// Rows of the float encodings of the cache format (fp32, fp16, bf16, fp8 E4M3 with a per-tensor
// scale): what the pages hold where K or V is not TurboQuant-coded.
#pragma once

#include <cstdint>

#include "tq/format.h"

namespace tq {

// Writes n values of x at dst in encoding e (fp8: stored value = x / scale). Throws tq::Error on a
// non-finite value or one beyond fp16's range, naming the element.
void store_float_row(Encoding e, const float* x, uint32_t n, float scale, uint8_t* dst);
// Reads n values of encoding e at src into out (fp8: value * scale).
void load_float_row(Encoding e, const uint8_t* src, uint32_t n, float scale, float* out);

}  // namespace tq
