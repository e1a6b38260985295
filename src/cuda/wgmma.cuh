// Hopper's warpgroup MMA (wgmma.mma_async, sm_90a only): the 4 warps of a warpgroup multiply a
// 64-row A by a B read from shared memory once for all of them, where mma.sync has each warp read
// its own B fragments (prefill_kernel.cuh, whose tiles bound it by shared-memory bandwidth). Used by
// prefill_ws.cuh, Hopper's prefill.
//
// Operands in shared memory are described by a 64-bit descriptor and must be in the canonical
// "128-byte swizzle" layout: 64 16-bit elements (128 bytes) a row, rows of one 64-element block
// contiguous, 16-byte chunk c of row r stored at chunk c ^ (r & 7), blocks of 8 rows (1 KB)
// starting 1 KB-aligned (prefill::tile_chunk writes it). Such a layout serves as a K-major operand
// (the rows are M or N, the 64 elements K: Q and the key tile of S = Q K^T) and as an MN-major one
// (the rows are K, the elements N: the value tile of O += P V, transposed by the instruction).
//
// Accumulators: a warp of the warpgroup holds rows 16 w .. 16 w + 15 of the 64 and, for every 8
// columns j, the same 4 registers as an mma.sync m16n8 accumulator (rows g, g + 8 of the warp,
// columns 8 j + 2t, +1), so d[j][0..3] here is what prefill_kernel's s[j] and o[j] already are.
// A from registers is an mma.sync m16n8k16 A fragment of the warp's 16 rows.
//
// Every function compiles to nothing but a trap outside sm_90a: the callers are instantiated
// for every architecture and launched only where kernels_arch() == 90 (launch_common.h).
#pragma once

#include <cstdint>

namespace tq::cuda::wg {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TQ_WGMMA 1
#else
#define TQ_WGMMA 0
#endif

// A descriptor of a 128-byte-swizzled operand starting at shared address `addr`, as its two 32-bit
// halves: the start address (addr / 16, 14 bits) and the leading byte offset in `lo`, the stride
// byte offset and the swizzle mode in `hi`. Both offsets are 1 KB: the step between 8-row groups,
// along M/N for a K-major operand and along K for an MN-major one. The other stride (between
// 64-element blocks of an MN-major operand along N) is never used, since every B here is one
// 64-element block wide, so one value serves both readings of which field holds which.
struct Desc {
  uint32_t lo, hi;
};
__device__ __forceinline__ Desc desc_sw128(uint32_t addr) {
  constexpr uint32_t k1K = 1024 >> 4;
  return {((addr & 0x3FFFF) >> 4) | k1K << 16, k1K | 1u << 30};
}
// The descriptor of the same layout `bytes` further on (a multiple of 16 within the shared window,
// so the start address field cannot carry into the next): one 32-bit add.
__device__ __forceinline__ Desc operator+(Desc d, uint32_t bytes) { return {d.lo + (bytes >> 4), d.hi}; }

// Orders this thread's earlier generic-proxy writes to shared memory (st.shared, cp.async) before
// later wgmma reads of them (the async proxy); then a barrier publishes them to the warpgroup.
__device__ __forceinline__ void fence_proxy_async() {
#if TQ_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Before a batch of wgmma: the accumulators' and A's registers are written.
__device__ __forceinline__ void arrive() {
#if TQ_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void commit() {
#if TQ_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most N committed batches are in flight.
template <int N>
__device__ __forceinline__ void wait() {
#if TQ_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Pins accumulator registers in program order around the asynchronous MMAs: the compiler may not
// move reads of them above a wait(), nor their writes below an arrive().
template <int J>
__device__ __forceinline__ void fence_regs(float (&d)[J][4]) {
#pragma unroll
  for (int j = 0; j < J; ++j) asm volatile("" : "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])::"memory");
}

#define TQ_WG_D4(c, j) c(d[J0 + j][0]), c(d[J0 + j][1]), c(d[J0 + j][2]), c(d[J0 + j][3])
#define TQ_WG_D16(c) TQ_WG_D4(c, 0), TQ_WG_D4(c, 1), TQ_WG_D4(c, 2), TQ_WG_D4(c, 3)
#define TQ_WG_D32(c) TQ_WG_D16(c), TQ_WG_D4(c, 4), TQ_WG_D4(c, 5), TQ_WG_D4(c, 6), TQ_WG_D4(c, 7)
#define TQ_WG_D48(c) TQ_WG_D32(c), TQ_WG_D4(c, 8), TQ_WG_D4(c, 9), TQ_WG_D4(c, 10), TQ_WG_D4(c, 11)
#define TQ_WG_R16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define TQ_WG_R32                                                                                                             \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, " \
  "%26, %27, %28, %29, %30, %31}"
#define TQ_WG_R48                                                                                                             \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, " \
  "%26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}"
// The instruction after its accumulators: the descriptors' halves (operands A0..A1, B0..B1) joined
// into 64-bit registers, and scale-d, false (D = A B, the accumulators' old values unread) when
// ZERO is "1".
#define TQ_WG_SS(N, TYPE, R, A0, A1, B0, B1, ZERO)                                                                      \
  "{.reg .pred p; .reg .b64 da, db; setp.ne.b32 p, " ZERO ", 1; mov.b64 da, {" A0 ", " A1 "}; mov.b64 db, {" B0 ", " B1 \
  "};\nwgmma.mma_async.sync.aligned.m64n" N "k16.f32." TYPE "." TYPE " " R ", da, db, p, 1, 1, 0, 0;}\n"

// The instruction CASE(n, register list, A0, A1, B0, B1, scale-d's ZERO, accumulator constraints)
// for N (32, 64, 96) and ZERO, with accumulators d[J0 ..] of constraint letter C ("f", "r").
#define TQ_WG_BY_N(CASE, C)                                                           \
  if constexpr (N == 96 && ZERO) {                                                    \
    CASE(96, TQ_WG_R48, "%48", "%49", "%50", "%51", "1", TQ_WG_D48("=" C));          \
  } else if constexpr (N == 96) {                                                     \
    CASE(96, TQ_WG_R48, "%48", "%49", "%50", "%51", "0", TQ_WG_D48("+" C));          \
  } else if constexpr (N == 64 && ZERO) {                                             \
    CASE(64, TQ_WG_R32, "%32", "%33", "%34", "%35", "1", TQ_WG_D32("=" C));          \
  } else if constexpr (N == 64) {                                                     \
    CASE(64, TQ_WG_R32, "%32", "%33", "%34", "%35", "0", TQ_WG_D32("+" C));          \
  } else if constexpr (ZERO) {                                                        \
    CASE(32, TQ_WG_R16, "%16", "%17", "%18", "%19", "1", TQ_WG_D16("=" C));          \
  } else {                                                                            \
    CASE(32, TQ_WG_R16, "%16", "%17", "%18", "%19", "0", TQ_WG_D16("+" C));          \
  }

// d[J0 .. J0 + N/8) = A B (ZERO) or += A B, m64nNk16: A (64 x 16, K-major) and B (N x 16, K-major)
// in shared memory. BF16: bf16 operands, else fp16. N: 32, 64 or 96. ZERO: the first of a sum,
// whose accumulators need no initial value.
template <int N, bool BF16, bool ZERO = false, int J0 = 0, int J>
__device__ __forceinline__ void mma_ss(float (&d)[J][4], Desc a, Desc b) {
  static_assert(J0 + N / 8 <= J, "accumulator columns");
  static_assert(N == 96 || N == 64 || N == 32, "N: 32, 64 or 96");
#if TQ_WGMMA
  constexpr bool kBf = BF16;
#define TQ_WG_CASE(n, regs, a0, a1, b0, b1, zero, dc)                                                                 \
  if constexpr (kBf)                                                                                                  \
    asm volatile(TQ_WG_SS(#n, "bf16", regs, a0, a1, b0, b1, zero) : dc : "r"(a.lo), "r"(a.hi), "r"(b.lo), "r"(b.hi)); \
  else                                                                                                                \
    asm volatile(TQ_WG_SS(#n, "f16", regs, a0, a1, b0, b1, zero) : dc : "r"(a.lo), "r"(a.hi), "r"(b.lo), "r"(b.hi))
  TQ_WG_BY_N(TQ_WG_CASE, "f");
#undef TQ_WG_CASE
#else
  __trap();
#endif
}

// The same for int8 operands (int32 accumulators), m64nNk32: A (64 x 32, K-major) and B (N x 32,
// K-major) in shared memory, rows of 128 int8 in the layout above (one 128-byte row holds 128
// elements, so a k-step moves 32 bytes as fp16's does). N: 32 or 64. Integer MMAs take no scale
// or transpose arguments.
template <int N, bool ZERO = false, int J>
__device__ __forceinline__ void mma_ss_s8(int (&d)[J][4], Desc a, Desc b) {
  static_assert(N / 8 == J, "accumulator columns");
  static_assert(N == 64 || N == 32, "N: 32 or 64");
#if TQ_WGMMA
#define TQ_WG_S8(n, regs, a0, a1, b0, b1, zero, dc)                                                                  \
  asm volatile("{.reg .pred p; .reg .b64 da, db; setp.ne.b32 p, " zero ", 1; mov.b64 da, {" a0 ", " a1 "}; "        \
               "mov.b64 db, {" b0 ", " b1 "};\nwgmma.mma_async.sync.aligned.m64n" #n "k32.s32.s8.s8 " regs ", da, db, p;}\n" \
               : dc                                                                                                  \
               : "r"(a.lo), "r"(a.hi), "r"(b.lo), "r"(b.hi))
  constexpr int J0 = 0;
  TQ_WG_BY_N(TQ_WG_S8, "r");
#undef TQ_WG_S8
#else
  __trap();
#endif
}
// Pins int32 accumulator registers in program order around the asynchronous MMAs (fence_regs).
template <int J>
__device__ __forceinline__ void fence_regs(int (&d)[J][4]) {
#pragma unroll
  for (int j = 0; j < J; ++j) asm volatile("" : "+r"(d[j][0]), "+r"(d[j][1]), "+r"(d[j][2]), "+r"(d[j][3])::"memory");
}

// d[J0 .. J0 + 8) += A B, m64n64k16: A from registers (the warp's m16n8k16 A fragment), B
// (16 x 64) MN-major in shared memory (the instruction transposes it).
template <bool BF16, int J0, int J>
__device__ __forceinline__ void mma_rs(float (&d)[J][4], const uint32_t (&a)[4], Desc b) {
  static_assert(J0 + 8 <= J, "accumulator columns");
#if TQ_WGMMA
  if constexpr (!BF16)
    asm volatile(
        "{.reg .pred p; .reg .b64 db; setp.ne.b32 p, 1, 0; mov.b64 db, {%36, %37};\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " TQ_WG_R32 ", {%32, %33, %34, %35}, db, p, 1, 1, 1;}\n"
        : TQ_WG_D32("+f")
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.lo), "r"(b.hi));
  else
    asm volatile(
        "{.reg .pred p; .reg .b64 db; setp.ne.b32 p, 1, 0; mov.b64 db, {%36, %37};\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " TQ_WG_R32 ", {%32, %33, %34, %35}, db, p, 1, 1, 1;}\n"
        : TQ_WG_D32("+f")
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.lo), "r"(b.hi));
#else
  __trap();
#endif
}

#undef TQ_WG_D4
#undef TQ_WG_D16
#undef TQ_WG_D32
#undef TQ_WG_D48
#undef TQ_WG_R16
#undef TQ_WG_R32
#undef TQ_WG_R48
#undef TQ_WG_SS
#undef TQ_WG_BY_N

}  // namespace tq::cuda::wg
