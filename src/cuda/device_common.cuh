// Device helpers shared by the kernels: tensor-core MMA wrappers, byte-permute (PRMT) codebook
// lookups on the packed format of docs/format.md, and small conversions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "tq/codec/codebook.h"
#include "tq/format.h"

namespace tq::cuda::dev {

// D = A B + D, m16n8k16, fp32 accumulate. Fragment ownership for lane = 4g + t:
//   a[0]: A[g][2t..2t+1]  a[1]: A[g+8][2t..2t+1]  a[2]: A[g][2t+8..2t+9]  a[3]: A[g+8][2t+8..2t+9]
//   b[0]: B[2t..2t+1][g]  b[1]: B[2t+8..2t+9][g]
//   d[0..1]: D[g][2t..2t+1]  d[2..3]: D[g+8][2t..2t+1]
__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A B + D, m16n8k32, int8 operands, int32 accumulate. Lane = 4g + t owns
//   a[0]: A[g][4t..4t+3]  a[1]: A[g+8][4t..4t+3]  a[2]: A[g][4t+16..4t+19]  a[3]: A[g+8][4t+16..4t+19]
//   b[0]: B[4t..4t+3][g]  b[1]: B[4t+16..4t+19][g]   d: as mma_f16
__device__ __forceinline__ void mma_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// f(std::integral_constant<int, I>{}) for I = 0 .. N-1: a loop whose index is a compile-time
// constant (a template argument, e.g. which accumulator columns an MMA writes).
template <class F, int... I>
__device__ __forceinline__ void static_for_impl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, class F>
__device__ __forceinline__ void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

// Operand element type of the MMAs: fp16, or bf16 for bf16 caches.
template <bool BF16>
struct Operand;
template <>
struct Operand<false> {
  __device__ static uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ static float round(float x) { return __half2float(__float2half_rn(x)); }
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) { mma_f16(d, a, b0, b1); }
};
template <>
struct Operand<true> {
  __device__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ static float round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) { mma_bf16(d, a, b0, b1); }
};
// A pair as two 16-bit operand pairs: the values rounded (hi) and what the rounding left (lo), so
// that an MMA of each keeps ~22 bits of the pair.
template <bool BF>
__device__ __forceinline__ void split_pair(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  using Op = Operand<BF>;
  const float h0 = Op::round(x0), h1 = Op::round(x1);
  hi = Op::pack(h0, h1);
  lo = Op::pack(x0 - h0, x1 - h1);
}

// An 8-entry table of 16-bit values held in four registers for PRMT lookups: the low bytes of
// the eight values in lo[0..1], the high bytes in hi[0..1].
struct Lut8 {
  uint32_t lo0, lo1, hi0, hi1;
};
// b[0..7]: the low bytes of entries 0..7, b[8..15] their high bytes.
__device__ __forceinline__ Lut8 lut8_from_bytes(const uint32_t (&b)[16]) {
  Lut8 l;
  l.lo0 = b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24;
  l.lo1 = b[4] | b[5] << 8 | b[6] << 16 | b[7] << 24;
  l.hi0 = b[8] | b[9] << 8 | b[10] << 16 | b[11] << 24;
  l.hi1 = b[12] | b[13] << 8 | b[14] << 16 | b[15] << 24;
  // Opaque to the compiler from here: it otherwise keeps the (uniform) table in uniform registers
  // and copies it back into a vector register before every PRMT, one wasted move a lookup.
  asm volatile("" : "+r"(l.lo0), "+r"(l.lo1), "+r"(l.hi0), "+r"(l.hi1));
  return l;
}
// An 8-entry table of bytes (int8 operands) in two registers, entries 0-3 in t0 and 4-7 in t1:
// one PRMT looks up four entries.
struct ByteLut8 {
  uint32_t t0, t1;
};
__device__ __forceinline__ ByteLut8 byte_lut8(const uint32_t (&b)[8]) {  // b: the bytes (0..255)
  ByteLut8 l{b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24, b[4] | b[5] << 8 | b[6] << 16 | b[7] << 24};
  asm volatile("" : "+r"(l.t0), "+r"(l.t1));  // in vector registers, as lut8_from_bytes explains
  return l;
}

__device__ __forceinline__ Lut8 make_lut8(const __half* table) {  // table: [8] fp16 (unused entries 0)
  uint32_t b[16];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const uint16_t u = __half_as_ushort(table[j]);
    b[j] = u & 0xffu;
    b[8 + j] = u >> 8;
  }
  return lut8_from_bytes(b);
}

// f folded over r[0 .. K) as a tree (pairs, then pairs of pairs): log2(K) dependent steps where a
// running fold takes K (the softmax's row max and sum, decode's tile sum of P). r is overwritten.
template <int K, typename F>
__device__ __forceinline__ float tree_fold(float (&r)[K], F f) {
#pragma unroll
  for (int w = 1; w < K; w *= 2)
#pragma unroll
    for (int i = 0; i + w < K; i += 2 * w) r[i] = f(r[i], r[i + w]);
  return r[0];
}

// A query row's int16 fixed point for int8 keys (decode and Hopper's prefill): step = max|q| /
// kQ16Max, so that every element's int16 keeps split_i16's high byte within int8.
inline constexpr float kQ16Max = 32639.0f;  // 127 * 256 + 127

// An int16 value v as two int8 operands: v = 256 hi + lo with lo the signed low byte (so hi
// stays in int8 for |v| <= kQ16Max). Returned as their bytes (0..255).
__device__ __forceinline__ void split_i16(int v, uint32_t& hi, uint32_t& lo) {
  const int l8 = int(int8_t(v & 0xff));
  lo = uint32_t(l8 & 0xff);
  hi = uint32_t(((v - l8) >> 8) & 0xff);
}
// x[0..3] in a row's int16 fixed point (x * inv, rounded to nearest; |x| * inv <= kQ16Max), split:
// their high bytes in `hi` and their low bytes in `lo`, x[e] at byte e of each.
__device__ __forceinline__ void split_i16x4(const float* x, float inv, uint32_t& hi, uint32_t& lo) {
  hi = lo = 0;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    uint32_t h8, l8;
    split_i16(__float2int_rn(x[e] * inv), h8, l8);
    hi |= h8 << (8 * e);
    lo |= l8 << (8 * e);
  }
}

// PRMT without the `& 0x7777` that __byte_perm adds to its selector: every selector built here
// has bit 3 of each nibble clear (codes < 8), so the mask would be one wasted instruction a lookup.
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// The 16 int8 levels of a 4-bit union (trellis-coded 3-bit keys, widths.h): two 8-byte halves.
// A lookup is a PRMT in each half (a selector nibble's bit 3 must be clear there: PRMT reads it as
// its sign-replicate mode) and a third that takes each byte from the half bit 3 names.
struct ByteLut16 {
  ByteLut8 lo, hi;
};
// Four int8 levels for the four selector nibbles in sel's low 16 bits (codes < 16).
__device__ __forceinline__ uint32_t lookup16_s8(const ByteLut16& l, uint32_t sel) {
  const uint32_t s = sel & 0x7777u;
  const uint32_t a = prmt(l.lo.t0, l.lo.t1, s), b = prmt(l.hi.t0, l.hi.t1, s);
  return prmt(a, b, 0x3210u | ((sel >> 1) & 0x4444u));  // byte i: a's (i) or, where bit 3 is set, b's (4 + i)
}

// Four int8 levels for the four selector nibbles in sel's low 16 bits, from an 8- or a 16-level
// table.
__device__ __forceinline__ uint32_t lookup_s8(const ByteLut8& l, uint32_t sel) { return prmt(l.t0, l.t1, sel); }
__device__ __forceinline__ uint32_t lookup_s8(const ByteLut16& l, uint32_t sel) { return lookup16_s8(l, sel); }

// The int8 key table of a width whose levels are on the 1/32 grid (widths.h int8_keys): the fp16
// centroids table (z-units x sqrt(D)) times kCentroidGrid, exact; 16 levels (K16: a trellis-coded
// 3-bit union) as two 8-byte halves.
template <bool K16>
__device__ __forceinline__ std::conditional_t<K16, ByteLut16, ByteLut8> int8_key_table(const __half* table) {
  uint32_t b[16];
#pragma unroll
  for (int c = 0; c < (K16 ? 16 : 8); ++c) b[c] = uint32_t(__float2int_rn(__half2float(table[c]) * float(kCentroidGrid))) & 0xffu;
  const uint32_t lo[8] = {b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]};
  if constexpr (K16) {
    const uint32_t hi[8] = {b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]};
    return ByteLut16{byte_lut8(lo), byte_lut8(hi)};
  } else {
    return byte_lut8(lo);
  }
}

// Two uniform 2-bit values (format.h: the 2-bit value codebook, c - 1.5 in z-units) as the fp16
// subnormal pair c 2^(p - 24): the codes at bits p, p + 1 of each 16-bit half of y (p even,
// 0..6; c 2^p < 2^10 keeps the exponent field 0), masked in place: one LOP3 a register. The
// tensor cores multiply subnormal fp16 inputs exactly; the decode kernel scales its sums of P c
// 2^(p - 24) by 2^(24 - p) and takes off 1.5 times its sum of P (subnormal2_unplace). (Taking
// the offset off in fp32 at the end costs ~2 of fp32's 24 bits to cancellation; from the
// magic-number values 1024 + c 2^p it would cost ~9 bits.)
__device__ __forceinline__ uint32_t subnormal2_pair(uint32_t y, int p) { return y & (0x00030003u << p); }
// 2^(24 - p) of the thread's local value coordinate k (0 .. D/8 - 1) as subnormal2_pair placed it:
// p = 2 (jj + 2 odd), jj = whether it is in the upper 8 of its word's 16, odd = k's parity.
__host__ __device__ constexpr float subnormal2_unplace(int k) {
  const int p = 2 * ((k % 16 >= 8 ? 1 : 0) + 2 * (k % 2));
  return float(1 << (24 - p));
}

// The least scale of scores kept in a query's int16 fixed point (int8 keys), which the softmax
// applies with its max subtracted in one FFMA: a zero query row's step would be 0, and a masked
// score's -inf times 0 is NaN. Any score times it is still 0 there (|S| < 2^31).
inline constexpr float kMinScoreScale = 1e-30f;

// 2^x with flush-to-zero and no range fix-ups (exp2f adds a compare and two multiplies for
// denormal results; softmax weights that small do not matter). ex2(-inf) = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

// The exponentials the online softmax (tq/kv/online_softmax.h) is given: fast_exp2 in the
// attention loops, exp2f (denormal results kept) where partial states are combined.
struct FastExp2 {
  __device__ float operator()(float x) const { return fast_exp2(x); }
};
struct Exp2 {
  __device__ float operator()(float x) const { return exp2f(x); }
};

// Eight codes < 8, one per nibble of `sel`, to four half2 (nibbles 0-1, 2-3, 4-5, 6-7):
// 2 PRMTs look up the low and high bytes of four codes, 2 more interleave them into half2.
__device__ __forceinline__ void lookup8(uint32_t sel, const Lut8& l, uint32_t (&h)[4]) {
  const uint32_t sel_hi = sel >> 16;
  const uint32_t lo_a = prmt(l.lo0, l.lo1, sel), hi_a = prmt(l.hi0, l.hi1, sel);
  const uint32_t lo_b = prmt(l.lo0, l.lo1, sel_hi), hi_b = prmt(l.hi0, l.hi1, sel_hi);
  h[0] = prmt(lo_a, hi_a, 0x5140);
  h[1] = prmt(lo_a, hi_a, 0x7362);
  h[2] = prmt(lo_b, hi_b, 0x5140);
  h[3] = prmt(lo_b, hi_b, 0x7362);
}

// Two 8-nibble selectors of tokens A and B (the same 8 coordinates) interleaved, so that each
// lookup8 result pairs the two tokens at one coordinate, as the k = token layout of an MMA
// operand wants: even[i] = (A, B) at coordinate 2i of the octet, odd[i] at coordinate 2i + 1.
// Two shifts and two LOP3s replace the four PRMTs a pairing after the lookup would cost.
__device__ __forceinline__ void mix_tokens(uint32_t sel_a, uint32_t sel_b, uint32_t& even, uint32_t& odd) {
  even = (sel_a & 0x0f0f0f0fu) | ((sel_b << 4) & 0xf0f0f0f0u);
  odd = ((sel_a >> 4) & 0x0f0f0f0fu) | (sel_b & 0xf0f0f0f0u);
}

// w[i] for a run-time i < N without indexing a register array at run time (which would move the
// array to local memory): a chain of selects.
template <int N>
__device__ __forceinline__ uint32_t pick(const uint32_t (&w)[N], int i) {
  uint32_t r = w[0];
#pragma unroll
  for (int k = 1; k < N; ++k) r = i == k ? w[k] : r;
  return r;
}

// Octet `og` (0..3, may be a run-time value) of a group of 32 b-bit codes (b <= 3) as 8 nibbles:
// the format's one shift and one AND per plane (docs/format.md, "Why this layout").
template <int B>
__device__ __forceinline__ uint32_t octet_selector(const uint32_t (&w)[B], int og) {
  static_assert(B >= 1 && B <= 3, "PRMT lookups need codes < 8");
  if constexpr (B == 1) {
    return (w[0] >> og) & 0x11111111u;
  } else if constexpr (B == 2) {
    return (pick(w, og >> 1) >> (2 * (og & 1))) & 0x33333333u;
  } else {
    const uint32_t w01[2] = {w[0], w[1]};
    return ((pick(w01, og >> 1) >> (2 * (og & 1))) & 0x33333333u) | (((w[2] >> og) & 0x11111111u) << 2);
  }
}

// Any width 1..8: the 8 codes of octet og, for the generic (table-in-shared-memory) path.
template <int B>
__device__ __forceinline__ void octet_codes(const uint32_t (&w)[B], int og, uint32_t (&c)[8]) {
#pragma unroll
  for (int k = 0; k < 8; ++k) c[k] = 0;
  if constexpr (B == 8) {
    const uint32_t lo = pick(w, 2 * og), hi = pick(w, 2 * og + 1);
#pragma unroll
    for (int k = 0; k < 8; ++k) c[k] = ((k < 4 ? lo : hi) >> (8 * (k % 4))) & 0xffu;
  } else {
    int word0 = 0, shift = 0;
#pragma unroll
    for (int wd = 4; wd >= 1; wd >>= 1) {
      if (!(B & wd)) continue;
      const uint32_t word = pick(w, word0 + og * wd / 4), o = og % (4 / wd), mask = (1u << wd) - 1u;
#pragma unroll
      for (int k = 0; k < 8; ++k) c[k] |= ((word >> (4 * k + wd * o)) & mask) << shift;
      word0 += wd;
      shift += wd;
    }
  }
}

__device__ __forceinline__ uint32_t pack_half2(__half a, __half b) {
  return uint32_t(__half_as_ushort(a)) | uint32_t(__half_as_ushort(b)) << 16;
}

// Two e4m3 bytes (low half of x) to a half2 without the conversion instruction of sm_89 and later
// (exact: every e4m3 value is an fp16 value). Each byte's exponent and mantissa go to the top of
// the fp16 fields, which reads as the value times 2^-8 (fp16's exponent bias is 15, e4m3's 7),
// subnormals included; one fp16 multiply by 2^8 is then exact. NaN (S.1111.111) becomes fp16's
// canonical NaN 0x7FFF, as cuda_fp8.h's conversion does; its own fallback for GPUs before sm_89
// normalizes subnormals in a loop, a byte at a time (tests/cuda/test_fp8_convert.cpp checks the two
// agree on all 65536 inputs).
__device__ __forceinline__ uint32_t e4m3x2_to_half2_soft(uint16_t x) {
  const uint32_t w = (x & 0xFFu) | uint32_t(x & 0xFF00u) << 8;  // byte i in the low 8 bits of half i
  const uint32_t mag = w & 0x007F007Fu;
  const uint32_t scaled = (mag << 7) | (w & 0x00800080u) << 8;  // sign, exponent and mantissa in place
  const __half2 v = __hmul2(__halves2half2(__ushort_as_half(uint16_t(scaled)), __ushort_as_half(uint16_t(scaled >> 16))),
                            __half2half2(__ushort_as_half(0x5C00u)));  // * 2^8
  const uint32_t nan = __vcmpeq2(mag, 0x007F007Fu);  // 0xFFFF in each NaN half
  return (pack_half2(__low2half(v), __high2half(v)) & ~nan) | (nan & 0x7FFF7FFFu);
}

__device__ __forceinline__ uint32_t e4m3x2_to_half2(uint16_t x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(x), __NV_E4M3);
  return uint32_t(r.x) | uint32_t(r.y) << 16;
#else
  return e4m3x2_to_half2_soft(x);
#endif
}

// Programmatic dependent launch (Hopper): a kernel lets the next one in the stream be scheduled
// (launch_dependents); the next one, launched with the programmatic-serialization attribute,
// waits for this grid's completion and memory (wait_prerequisites) before it reads its results.
// No-ops before sm_90, where the launch attribute is not set either.
__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_prerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// c + a b, the product widened to 64 bits: a widening multiply-add (written as C++, the compiler
// kept an add of the zero high part of a 32-bit stride widened; ptxas may still share one product
// between several calls with the same a and b: SASS).
__device__ __forceinline__ const uint8_t* mad_wide(uint32_t a, uint32_t b, const uint8_t* c) {
  uint64_t r;
  asm("mad.wide.u32 %0, %1, %2, %3;" : "=l"(r) : "r"(a), "r"(b), "l"(reinterpret_cast<uint64_t>(c)));
  return reinterpret_cast<const uint8_t*>(r);
}

// wait_prerequisites() when a > b, for a loop's hot path: a predicated wait in PTX (ptxas still
// branches around the ACQBULK: ~4 instructions an iteration; a wait after the prerequisites have
// completed returns at once).
__device__ __forceinline__ void wait_prerequisites_if_greater(int a, int b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n\t.reg .pred p;\n\tsetp.gt.s32 p, %0, %1;\n\t@p griddepcontrol.wait;\n\t}" ::"r"(a), "r"(b)
      : "memory");
#endif
}

}  // namespace tq::cuda::dev
