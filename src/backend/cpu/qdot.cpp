// Activation quantization and the scalar reference of the quantized dot products (qdot.h). The
// weight layouts are those of src/model/ggml_quants.cpp, which documents them block by block.
#include "tq/backend/cpu/qdot.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "qdot_avx2.h"
#include "qdot_avx512.h"
#include "qdot_portable.h"
#include "tq/check.h"
#include "tq/cpu_features.h"
#include "tq/numeric.h"

namespace tq::cpu {

using model::GgmlType;

namespace {

inline float rd_f16(const uint8_t* p) { return f16_to_f32(uint16_t(p[0] | (p[1] << 8))); }

// 8-bit codes of n elements with one scale: d = max|x| / 127, q = round(x / d).
float quantize_block_scalar(const float* x, size_t n, int8_t* q) {
  float amax = 0;
  bool finite = true;
  for (size_t i = 0; i < n; ++i) {
    finite &= std::isfinite(x[i]);
    amax = std::max(amax, std::fabs(x[i]));
  }
  if (!finite) {
    std::fill(q, q + n, int8_t(0));
    return std::numeric_limits<float>::quiet_NaN();
  }
  if (amax == 0) {
    std::fill(q, q + n, int8_t(0));
    return 0;
  }
  const float inv = 127.0f / amax;
  for (size_t i = 0; i < n; ++i) q[i] = int8_t(std::clamp(std::lrintf(x[i] * inv), -127L, 127L));
  return amax / 127.0f;
}

float quantize_block(const float* x, size_t n, int8_t* q) {
  return has_avx2_fma() ? detail::quantize_block_avx2(x, n, q) : quantize_block_scalar(x, n, q);
}

// Accumulates one float term of the reference: scale * isum, where the integer sum's products have
// magnitudes adding up to iabs.
inline void add(DotRef& r, double scale, int64_t isum, int64_t iabs) {
  r.value += scale * double(isum);
  r.abs_sum += std::fabs(scale) * double(iabs);
}

DotRef ref_q8x32(GgmlType t, const uint8_t* w, const ActQ8x32* a, size_t nb) {
  const size_t bytes = model::ggml_type_info(t).block_bytes;
  DotRef r;
  for (size_t b = 0; b < nb; ++b, w += bytes, ++a) {
    int64_t isum = 0, iabs = 0;
    const auto mac = [&](int q, int x) { isum += q * x, iabs += std::abs(q * x); };
    // q5_0 / q5_1: the nibbles at qs with their fifth bits from the little-endian word at qh
    const auto mac5 = [&](const uint8_t* qs, const uint8_t* qhp) {
      const uint32_t qh = uint32_t(qhp[0]) | uint32_t(qhp[1]) << 8 | uint32_t(qhp[2]) << 16 | uint32_t(qhp[3]) << 24;
      for (size_t j = 0; j < 16; ++j)
        mac(int((qs[j] & 15) | ((qh >> j) & 1) << 4), a->q[j]), mac(int((qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4), a->q[j + 16]);
    };
    switch (t) {
      case GgmlType::Q8_0:
        for (size_t j = 0; j < 32; ++j) mac(int8_t(w[2 + j]), a->q[j]);
        add(r, double(rd_f16(w)) * a->d, isum, iabs);
        break;
      case GgmlType::Q4_0:  // x = d * (q - 8)
        for (size_t j = 0; j < 16; ++j) mac(w[2 + j] & 15, a->q[j]), mac(w[2 + j] >> 4, a->q[j + 16]);
        add(r, double(rd_f16(w)) * a->d, isum, iabs);
        add(r, double(rd_f16(w)) * a->d, -8 * a->sum, std::abs(8 * a->sum));
        break;
      case GgmlType::Q4_1:  // x = d * q + m
        for (size_t j = 0; j < 16; ++j) mac(w[4 + j] & 15, a->q[j]), mac(w[4 + j] >> 4, a->q[j + 16]);
        add(r, double(rd_f16(w)) * a->d, isum, iabs);
        add(r, double(rd_f16(w + 2)) * a->d, a->sum, std::abs(a->sum));
        break;
      case GgmlType::Q5_0:  // x = d * (q - 16), the 5th bits at w + 2
        mac5(w + 6, w + 2);
        add(r, double(rd_f16(w)) * a->d, isum, iabs);
        add(r, double(rd_f16(w)) * a->d, -16 * a->sum, std::abs(16 * a->sum));
        break;
      case GgmlType::Q5_1:  // x = d * q + m, q in 0..31 (the 5th bits at w + 4)
        mac5(w + 8, w + 4);
        add(r, double(rd_f16(w)) * a->d, isum, iabs);
        add(r, double(rd_f16(w + 2)) * a->d, a->sum, std::abs(a->sum));
        break;
      case GgmlType::IQ4_NL:  // x = d * level[q]
        for (size_t j = 0; j < 16; ++j) mac(model::kIq4Levels[w[2 + j] & 15], a->q[j]), mac(model::kIq4Levels[w[2 + j] >> 4], a->q[j + 16]);
        add(r, double(rd_f16(w)) * a->d, isum, iabs);
        break;
      default: TQ_CHECK(false, "vec_dot: ggml type {} has no 32-element integer dot", model::ggml_type_name(t));
    }
  }
  return r;
}

DotRef ref_q8x256(GgmlType t, const uint8_t* w, const ActQ8x256* a, size_t nb) {
  const size_t bytes = model::ggml_type_info(t).block_bytes;
  DotRef r;
  for (size_t b = 0; b < nb; ++b, w += bytes, ++a) {
    int64_t isum = 0, iabs = 0, osum = 0, oabs = 0;
    if (t == GgmlType::Q4_K || t == GgmlType::Q5_K) {  // x = d*sc[s]*q - dmin*m[s], s = i / 32
      const uint8_t* scales = w + 4;
      const uint8_t* qh = w + 16;                               // q5_K only
      const uint8_t* qs = w + (t == GgmlType::Q4_K ? 16 : 48);  // [128]: byte l of group g = elements 64g+l, 64g+32+l
      for (size_t i = 0; i < 256; ++i) {
        const size_t g = i / 64, l = i % 32, s = i / 32;
        const bool high = (i % 64) >= 32;
        int q = high ? qs[32 * g + l] >> 4 : qs[32 * g + l] & 15;
        if (t == GgmlType::Q5_K) q += ((qh[l] >> (2 * g + (high ? 1 : 0))) & 1) * 16;
        int sc, m;
        model::ggml_scale_min_k4(s, scales, sc, m);
        isum += int64_t(sc) * q * a->q[i], iabs += std::abs(int64_t(sc) * q * a->q[i]);
        if (i % 16 == 0) osum += int64_t(m) * a->bsums[i / 16], oabs += std::abs(int64_t(m) * a->bsums[i / 16]);
      }
      add(r, double(rd_f16(w)) * a->d, isum, iabs);
      add(r, -double(rd_f16(w + 2)) * a->d, osum, oabs);
    } else if (t == GgmlType::Q6_K) {  // x = d * sc[i/16] * (q - 32)
      const uint8_t* ql = w;
      const uint8_t* qh = w + 128;
      const int8_t* sc = reinterpret_cast<const int8_t*>(w + 192);
      for (size_t i = 0; i < 256; ++i) {
        const size_t h = i / 128, k = (i % 128) / 32, l = i % 32;  // k: which quarter of the half
        const uint8_t lo = ql[64 * h + l + (k & 1) * 32];
        const int q = ((k < 2 ? lo & 15 : lo >> 4) | (((qh[32 * h + l] >> (2 * k)) & 3) << 4));
        isum += int64_t(sc[i / 16]) * q * a->q[i], iabs += std::abs(int64_t(sc[i / 16]) * q * a->q[i]);
        if (i % 16 == 0) osum += int64_t(sc[i / 16]) * a->bsums[i / 16], oabs += std::abs(int64_t(sc[i / 16]) * a->bsums[i / 16]);
      }
      add(r, double(rd_f16(w + 208)) * a->d, isum - 32 * osum, iabs + 32 * oabs);
    } else if (t == GgmlType::Q2_K || t == GgmlType::Q3_K) {
      // Element i = 128h + 32j + l: bits 2j..2j+1 of qs[32h + l], sub-block i / 16. q2_K: x =
      // d*(sc & 15)*q - dmin*(sc >> 4); q3_K: x = d*scale*(q - (hmask bit 4h + j of byte l ? 0 : 4)).
      const bool three = t == GgmlType::Q3_K;
      const uint8_t* qs = w + (three ? 32 : 16);
      for (size_t i = 0; i < 256; ++i) {
        const size_t h = i / 128, j = (i % 128) / 32, l = i % 32, s = i / 16;
        int q = (qs[32 * h + l] >> (2 * j)) & 3;
        if (three && !((w[l] >> (4 * h + j)) & 1)) q -= 4;
        const int sc = three ? model::ggml_q3k_scale(s, w + 96) : w[s] & 15;
        isum += int64_t(sc) * q * a->q[i], iabs += std::abs(int64_t(sc) * q * a->q[i]);
        if (!three && i % 16 == 0) osum += int64_t(w[s] >> 4) * a->bsums[s], oabs += std::abs(int64_t(w[s] >> 4) * a->bsums[s]);
      }
      add(r, double(rd_f16(w + (three ? 108 : 80))) * a->d, isum, iabs);
      if (!three) add(r, -double(rd_f16(w + 82)) * a->d, osum, oabs);
    } else if (t == GgmlType::IQ4_XS) {  // x = d * scale[i / 32] * level[q]; byte 8 + 16(i / 32) + i % 16
      for (size_t i = 0; i < 256; ++i) {
        const size_t ib = i / 32, j = i % 32;
        const uint8_t byte = w[8 + 16 * ib + j % 16];
        const int q = model::kIq4Levels[j < 16 ? byte & 15 : byte >> 4], sc = model::ggml_iq4xs_scale(ib, w);
        isum += int64_t(sc) * q * a->q[i], iabs += std::abs(int64_t(sc) * q * a->q[i]);
      }
      add(r, double(rd_f16(w)) * a->d, isum, iabs);
    } else {
      TQ_CHECK(false, "vec_dot: ggml type {} has no 256-element integer dot", model::ggml_type_name(t));
    }
  }
  return r;
}

}  // namespace

ActFormat act_format(GgmlType w) {
  switch (w) {
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::IQ4_NL: return ActFormat::kQ8x32;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::IQ4_XS: return ActFormat::kQ8x256;
    default: return ActFormat::kF32;
  }
}

size_t act_row_bytes(ActFormat f, size_t n) {
  switch (f) {
    case ActFormat::kQ8x32:
      TQ_CHECK(n % 32 == 0, "activation row of {} elements is not a multiple of 32", n);
      return n / 32 * sizeof(ActQ8x32);
    case ActFormat::kQ8x256:
      TQ_CHECK(n % 256 == 0, "activation row of {} elements is not a multiple of 256", n);
      return n / 256 * sizeof(ActQ8x256);
    case ActFormat::kF32: return n * sizeof(float);
  }
  return 0;
}

void quantize_act_row(ActFormat f, const float* x, size_t n, void* out) {
  act_row_bytes(f, n);  // checks n
  if (f == ActFormat::kF32) {
    std::memcpy(out, x, n * sizeof(float));
  } else if (f == ActFormat::kQ8x32) {
    auto* a = static_cast<ActQ8x32*>(out);
    for (size_t b = 0; b < n / 32; ++b, x += 32, ++a) {
      a->d = quantize_block(x, 32, a->q);
      a->sum = 0;
      for (int8_t q : a->q) a->sum += q;
    }
  } else {
    auto* a = static_cast<ActQ8x256*>(out);
    for (size_t b = 0; b < n / 256; ++b, x += 256, ++a) {
      a->d = quantize_block(x, 256, a->q);
      for (size_t i = 0; i < 16; ++i) {
        int s = 0;
        for (size_t j = 0; j < 16; ++j) s += a->q[16 * i + j];
        a->bsums[i] = int16_t(s);
      }
    }
  }
}

DotRef vec_dot_ref(GgmlType w, const uint8_t* row, const void* act, size_t n) {
  switch (act_format(w)) {
    case ActFormat::kQ8x32: return ref_q8x32(w, row, static_cast<const ActQ8x32*>(act), n / 32);
    case ActFormat::kQ8x256: return ref_q8x256(w, row, static_cast<const ActQ8x256*>(act), n / 256);
    case ActFormat::kF32: break;
  }
  TQ_CHECK(false, "vec_dot: ggml type {} is not quantized", model::ggml_type_name(w));
  return {};
}

namespace {
template <float (*F)(const uint8_t*, const ActQ8x32*, size_t, bool), bool kVnni>
float avx512_one(const uint8_t* row, const void* act, size_t n) {
  return F(row, static_cast<const ActQ8x32*>(act), n / 32, kVnni);
}
template <float (*F)(const uint8_t*, const ActQ8x256*, size_t, bool), bool kVnni>
float avx512_k(const uint8_t* row, const void* act, size_t n) {
  return F(row, static_cast<const ActQ8x256*>(act), n / 256, kVnni);
}
template <class A, float (*F)(const uint8_t*, const A*, size_t)>
float avx2_one(const uint8_t* row, const void* act, size_t n) {
  return F(row, static_cast<const A*>(act), n / (sizeof(A) == sizeof(ActQ8x32) ? 32 : 256));
}
template <void (*F)(const uint8_t*, const ActQ8x32* const*, size_t, float*)>
void four(const uint8_t* row, const void* const act[4], size_t n, float out[4]) {
  F(row, reinterpret_cast<const ActQ8x32* const*>(act), n / 32, out);
}
template <void (*F)(const uint8_t*, const ActQ8x256* const*, size_t, float*)>
void four_k(const uint8_t* row, const void* const act[4], size_t n, float out[4]) {
  F(row, reinterpret_cast<const ActQ8x256* const*>(act), n / 256, out);
}
template <GgmlType T>
float portable_one(const uint8_t* row, const void* act, size_t n) {
  if constexpr (T == GgmlType::Q8_0 || T == GgmlType::Q4_0 || T == GgmlType::Q4_1 || T == GgmlType::Q5_0 || T == GgmlType::Q5_1 ||
                T == GgmlType::IQ4_NL)
    return detail::dot_q8x32_portable(T, row, static_cast<const ActQ8x32*>(act), n / 32);
  else
    return detail::dot_q8x256_portable(T, row, static_cast<const ActQ8x256*>(act), n / 256);
}
}  // namespace

DotFn dot_kernel(GgmlType w) {
  const bool vnni = has_avx512_vnni();
  if (has_avx512()) {
    switch (w) {
      case GgmlType::Q8_0: return vnni ? avx512_one<detail::dot_q8_0_avx512, true> : avx512_one<detail::dot_q8_0_avx512, false>;
      case GgmlType::Q4_0: return vnni ? avx512_one<detail::dot_q4_0_avx512, true> : avx512_one<detail::dot_q4_0_avx512, false>;
      case GgmlType::Q4_1: return vnni ? avx512_one<detail::dot_q4_1_avx512, true> : avx512_one<detail::dot_q4_1_avx512, false>;
      case GgmlType::Q5_0: return vnni ? avx512_one<detail::dot_q5_0_avx512, true> : avx512_one<detail::dot_q5_0_avx512, false>;
      case GgmlType::Q4_K: return vnni ? avx512_k<detail::dot_q4_K_avx512, true> : avx512_k<detail::dot_q4_K_avx512, false>;
      case GgmlType::Q5_K: return vnni ? avx512_k<detail::dot_q5_K_avx512, true> : avx512_k<detail::dot_q5_K_avx512, false>;
      case GgmlType::Q6_K: return vnni ? avx512_k<detail::dot_q6_K_avx512, true> : avx512_k<detail::dot_q6_K_avx512, false>;
      case GgmlType::Q5_1: return vnni ? avx512_one<detail::dot_q5_1_avx512, true> : avx512_one<detail::dot_q5_1_avx512, false>;
      case GgmlType::IQ4_NL: return vnni ? avx512_one<detail::dot_iq4_nl_avx512, true> : avx512_one<detail::dot_iq4_nl_avx512, false>;
      case GgmlType::Q2_K: return vnni ? avx512_k<detail::dot_q2_K_avx512, true> : avx512_k<detail::dot_q2_K_avx512, false>;
      case GgmlType::Q3_K: return vnni ? avx512_k<detail::dot_q3_K_avx512, true> : avx512_k<detail::dot_q3_K_avx512, false>;
      default: break;
    }
  }
  if (has_avx2_fma()) {
    switch (w) {
      case GgmlType::Q8_0: return avx2_one<ActQ8x32, detail::dot_q8_0_avx2>;
      case GgmlType::Q4_0: return avx2_one<ActQ8x32, detail::dot_q4_0_avx2>;
      case GgmlType::Q4_1: return avx2_one<ActQ8x32, detail::dot_q4_1_avx2>;
      case GgmlType::Q5_0: return avx2_one<ActQ8x32, detail::dot_q5_0_avx2>;
      case GgmlType::Q4_K: return avx2_one<ActQ8x256, detail::dot_q4_K_avx2>;
      case GgmlType::Q5_K: return avx2_one<ActQ8x256, detail::dot_q5_K_avx2>;
      case GgmlType::Q6_K: return avx2_one<ActQ8x256, detail::dot_q6_K_avx2>;
      case GgmlType::Q5_1: return avx2_one<ActQ8x32, detail::dot_q5_1_avx2>;
      case GgmlType::IQ4_NL: return avx2_one<ActQ8x32, detail::dot_iq4_nl_avx2>;
      case GgmlType::Q2_K: return avx2_one<ActQ8x256, detail::dot_q2_K_avx2>;
      case GgmlType::Q3_K: return avx2_one<ActQ8x256, detail::dot_q3_K_avx2>;
      case GgmlType::IQ4_XS: return avx2_one<ActQ8x256, detail::dot_iq4_xs_avx2>;  // also under AVX-512 (qdot_avx512.cpp)
      default: break;
    }
  }
  switch (w) {
    case GgmlType::Q5_0: return portable_one<GgmlType::Q5_0>;
    case GgmlType::Q8_0: return portable_one<GgmlType::Q8_0>;
    case GgmlType::Q4_0: return portable_one<GgmlType::Q4_0>;
    case GgmlType::Q4_1: return portable_one<GgmlType::Q4_1>;
    case GgmlType::Q4_K: return portable_one<GgmlType::Q4_K>;
    case GgmlType::Q5_K: return portable_one<GgmlType::Q5_K>;
    case GgmlType::Q6_K: return portable_one<GgmlType::Q6_K>;
    case GgmlType::Q5_1: return portable_one<GgmlType::Q5_1>;
    case GgmlType::IQ4_NL: return portable_one<GgmlType::IQ4_NL>;
    case GgmlType::Q2_K: return portable_one<GgmlType::Q2_K>;
    case GgmlType::Q3_K: return portable_one<GgmlType::Q3_K>;
    case GgmlType::IQ4_XS: return portable_one<GgmlType::IQ4_XS>;
    default: break;
  }
  TQ_CHECK(false, "vec_dot: ggml type {} is not quantized", model::ggml_type_name(w));
  return nullptr;
}

Dot4Fn dot4_kernel(GgmlType w) {
  if (has_avx512_vnni()) {  // without VNNI the 512-bit four-token form measured slower than AVX2's
    switch (w) {
      case GgmlType::Q8_0: return four<detail::dot4_q8_0_avx512vnni>;
      case GgmlType::Q4_0: return four<detail::dot4_q4_0_avx512vnni>;
      case GgmlType::Q4_1: return four<detail::dot4_q4_1_avx512vnni>;
      case GgmlType::Q5_0: return four<detail::dot4_q5_0_avx512vnni>;
      case GgmlType::Q5_1: return four<detail::dot4_q5_1_avx512vnni>;
      case GgmlType::IQ4_NL: return four<detail::dot4_iq4_nl_avx512vnni>;
      default: break;
    }
  }
  if (has_avx2_fma()) {
    switch (w) {
      case GgmlType::Q8_0: return four<detail::dot4_q8_0_avx2>;
      case GgmlType::Q4_0: return four<detail::dot4_q4_0_avx2>;
      case GgmlType::Q4_1: return four<detail::dot4_q4_1_avx2>;
      case GgmlType::Q5_0: return four<detail::dot4_q5_0_avx2>;
      case GgmlType::Q4_K: return four_k<detail::dot4_q4_K_avx2>;  // also under AVX-512: no 512-bit four-token K-quant kernel
      case GgmlType::Q5_K: return four_k<detail::dot4_q5_K_avx2>;
      case GgmlType::Q6_K: return four_k<detail::dot4_q6_K_avx2>;
      case GgmlType::Q5_1: return four<detail::dot4_q5_1_avx2>;
      case GgmlType::IQ4_NL: return four<detail::dot4_iq4_nl_avx2>;
      case GgmlType::Q2_K: return four_k<detail::dot4_q2_K_avx2>;
      case GgmlType::Q3_K: return four_k<detail::dot4_q3_K_avx2>;
      case GgmlType::IQ4_XS: return four_k<detail::dot4_iq4_xs_avx2>;
      default: break;
    }
  }
  return nullptr;  // vec_dot4 runs the one-token kernel four times
}

float vec_dot(GgmlType w, const uint8_t* row, const void* act, size_t n) { return dot_kernel(w)(row, act, n); }

void vec_dot4(GgmlType w, const uint8_t* row, const void* const act[4], size_t n, float out[4]) {
  if (const Dot4Fn f = dot4_kernel(w)) return f(row, act, n, out);
  const DotFn f = dot_kernel(w);
  for (int j = 0; j < 4; ++j) out[j] = f(row, act[j], n);
}

}  // namespace tq::cpu
