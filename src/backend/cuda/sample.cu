// Sampling on the device: one block a row of logits picks the token engine::Sampler picks for the
// same parameters and draw u (sampler.h), so only the ids cross to the host.
//
// The filters keep a prefix of the tokens in rank order (larger logit first, lower id first on
// ties): top-k and top-p each end it at a "cut" (a rank key and the last id kept at that key),
// found by radix selection over the keys, 8 bits a pass, with a histogram of counts (top-k) or of
// softmax mass (top-p); min-p keeps the tokens whose weight reaches min_p of the largest. The draw
// then walks the kept tokens in id order, each thread a contiguous chunk of ids, its start from a
// block-wide prefix sum. Masses are fixed-point integers (weight * 2^40), so every sum is exact
// and the same in any order: a seed picks the same token on every run.
#include <cmath>
#include <cstdint>

#include "layers.h"

namespace tq::cuda::layers {
namespace {

constexpr int kThreads = 1024;
constexpr double kFixedOne = 0x1.0p40;  // weight 1 in fixed point; vocab * 2^40 stays below 2^64 for vocab < 2^24

// Larger logit, larger key (the IEEE order as an unsigned one; -0 is +0, as it compares equal);
// -inf maps to 0x007fffff.
__device__ __forceinline__ uint32_t rank_key(float v) {
  const uint32_t b = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) { return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }

// A row and the filters applied so far.
struct Row {
  const float* x = nullptr;  // [n] logits
  uint32_t n = 0;
  float mx = 0, t = 1, min_p = 0;  // largest logit, temperature, min-p (0 until top-p is done: it comes last)
  uint32_t cut_key = 0;            // kept: rank_key > cut_key, or == cut_key with id <= cut_id
  uint32_t cut_id = 0xffffffffu;

  __device__ float weight(float v) const { return expf((v - mx) / t); }  // in (0, 1]; exp(0) = 1 at the largest
  __device__ uint64_t mass(float v) const { return uint64_t(double(weight(v)) * kFixedOne); }
  __device__ bool kept(uint32_t i, float v) const {
    if (!(v > -INFINITY)) return false;
    const uint32_t k = rank_key(v);
    if (k < cut_key || (k == cut_key && i > cut_id)) return false;
    return min_p == 0.0f || weight(v) >= min_p;
  }
  // The ids [lo, hi) of this thread's contiguous chunk (the ordered passes).
  __device__ void chunk(uint32_t* lo, uint32_t* hi) const {
    const uint32_t c = (n + kThreads - 1) / kThreads;
    *lo = min(threadIdx.x * c, n), *hi = min(*lo + c, n);
  }
};

struct Shared {
  unsigned long long hist[256];  // radix bins: counts or masses
  unsigned long long warp[32];   // per-warp partial sums
  unsigned long long above;      // measure of the tokens ranked above the selected bin
  uint32_t bin, id;
  float best;
  int32_t at, bad;
  uint32_t finite;
};

__device__ __forceinline__ unsigned long long warp_inclusive_scan(unsigned long long v) {
  const unsigned lane = threadIdx.x & 31;
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long u = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= unsigned(o)) v += u;
  }
  return v;
}

// The sum of v over the threads before this one (thread order); *total: over all threads.
__device__ unsigned long long block_exclusive_scan(unsigned long long v, Shared& sh, unsigned long long* total) {
  const unsigned lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const unsigned long long incl = warp_inclusive_scan(v);
  if (lane == 31) sh.warp[w] = incl;
  __syncthreads();
  if (w == 0) {
    const unsigned long long s = warp_inclusive_scan(sh.warp[lane]);  // kThreads / 32 == 32 warps
    sh.warp[lane] = s;
  }
  __syncthreads();
  const unsigned long long before = (w ? sh.warp[w - 1] : 0) + incl - v;
  *total = sh.warp[31];
  __syncthreads();  // sh.warp is reused by the next call
  return before;
}

// The id of the nth (1-based) kept token at rank key `key`, in id order.
__device__ uint32_t nth_at_key(const Row& r, uint32_t key, unsigned long long nth, Shared& sh) {
  uint32_t lo, hi;
  r.chunk(&lo, &hi);
  unsigned long long mine = 0, total = 0;
  for (uint32_t i = lo; i < hi; ++i) mine += r.kept(i, r.x[i]) && rank_key(r.x[i]) == key;
  const unsigned long long before = block_exclusive_scan(mine, sh, &total);
  if (before < nth && nth <= before + mine) {
    unsigned long long c = before;
    for (uint32_t i = lo; i < hi; ++i)
      if (r.kept(i, r.x[i]) && rank_key(r.x[i]) == key && ++c == nth) {
        sh.id = i;
        break;
      }
  }
  __syncthreads();
  const uint32_t id = sh.id;
  __syncthreads();  // every thread has read sh.id before anyone writes it again
  return id;
}

// Ends the kept prefix at the token where the measure of the kept tokens, summed in rank order,
// first reaches `target` (1 <= target <= their total): a count (top-k) or a mass (top-p).
__device__ void select_cut(Row& r, unsigned long long target, bool by_mass, Shared& sh) {
  uint32_t prefix = 0, mask = 0;
  unsigned long long above = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (uint32_t b = threadIdx.x; b < 256; b += kThreads) sh.hist[b] = 0;
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < r.n; i += kThreads) {
      const float v = r.x[i];
      if (!r.kept(i, v) || (rank_key(v) & mask) != prefix) continue;
      atomicAdd(&sh.hist[(rank_key(v) >> shift) & 255u], by_mass ? r.mass(v) : 1ull);
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // lane l sums bins 255 - 8l down to 248 - 8l: the warp's scan is in rank order
      const unsigned lane = threadIdx.x;
      unsigned long long seg = 0;
      for (unsigned j = 0; j < 8; ++j) seg += sh.hist[255 - 8 * lane - j];
      const unsigned long long incl = warp_inclusive_scan(seg);
      const unsigned crossing = __ballot_sync(0xffffffffu, above + incl >= target);
      if (lane == unsigned(__ffs(crossing) - 1)) {
        unsigned long long acc = above + incl - seg;
        uint32_t b = 255 - 8 * lane;
        for (unsigned j = 0; j < 7 && acc + sh.hist[b] < target; ++j) acc += sh.hist[b--];
        sh.bin = b, sh.above = acc;
      }
    }
    __syncthreads();
    prefix |= sh.bin << shift, mask |= 255u << shift, above = sh.above;
    __syncthreads();  // before the next pass clears the histogram
  }
  // The tokens at the cut key weigh the same: the first `need` of them in id order are kept.
  const unsigned long long each = by_mass ? r.mass(key_value(prefix)) : 1ull;
  const unsigned long long need = (target - above + each - 1) / each;
  const uint32_t id = nth_at_key(r, prefix, need, sh);
  r.cut_key = prefix, r.cut_id = id;
}

// The largest logit (lowest id on ties), whether any is NaN or +inf, and how many are finite.
__device__ void scan_row(const Row& r, Shared& sh) {
  float best = -INFINITY;
  int32_t at = -1;
  bool bad = false;
  uint32_t finite = 0;
  for (uint32_t i = threadIdx.x; i < r.n; i += kThreads) {
    const float v = r.x[i];
    bad |= !(v < INFINITY);
    finite += v > -INFINITY;
    if (at < 0 || v > best) best = v, at = int32_t(i);
  }
  const auto better = [](float v, int32_t i, float bv, int32_t bi) { return bi < 0 || (i >= 0 && (v > bv || (v == bv && i < bi))); };
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, best, o);
    const int32_t i = __shfl_xor_sync(0xffffffffu, at, o);
    if (better(v, i, best, at)) best = v, at = i;
    finite += __shfl_xor_sync(0xffffffffu, finite, o);
  }
  bad = __any_sync(0xffffffffu, bad);
  __shared__ float sv[32];
  __shared__ int32_t si[32];
  if (threadIdx.x == 0) sh.bad = 0, sh.finite = 0;
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    sv[threadIdx.x >> 5] = best, si[threadIdx.x >> 5] = at;
    if (bad) sh.bad = 1;
    atomicAdd(&sh.finite, finite);
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    best = sv[threadIdx.x], at = si[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) {
      const float v = __shfl_xor_sync(0xffffffffu, best, o);
      const int32_t i = __shfl_xor_sync(0xffffffffu, at, o);
      if (better(v, i, best, at)) best = v, at = i;
    }
    if (threadIdx.x == 0) sh.best = best, sh.at = at;
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* __restrict__ logits, uint32_t vocab, const SampleRow* __restrict__ args,
                                                          int32_t* __restrict__ ids) {
  __shared__ Shared sh;
  const SampleRow a = args[blockIdx.x];
  Row r;
  r.x = logits + size_t(blockIdx.x) * vocab;
  r.n = vocab;
  scan_row(r, sh);
  if (sh.bad || !(sh.best > -INFINITY)) {  // nothing to sample from: the host names the sequence
    if (threadIdx.x == 0) ids[blockIdx.x] = -1;
    return;
  }
  if (a.temperature == 0.0f) {
    if (threadIdx.x == 0) ids[blockIdx.x] = sh.at;
    return;
  }
  r.mx = sh.best, r.t = a.temperature;
  if (a.top_k > 0 && uint32_t(a.top_k) < sh.finite) select_cut(r, uint64_t(a.top_k), false, sh);
  if (a.top_p < 1.0f) {
    unsigned long long part = 0, total = 0;
    for (uint32_t i = threadIdx.x; i < r.n; i += kThreads)
      if (r.kept(i, r.x[i])) part += r.mass(r.x[i]);
    block_exclusive_scan(part, sh, &total);
    const double want = ceil(double(a.top_p) * double(total));
    select_cut(r, want < 1.0 ? 1ull : want > double(total) ? total : (unsigned long long)want, true, sh);
  }
  r.min_p = a.min_p;
  // The draw: the first kept token, in id order, whose cumulative mass exceeds u * total.
  uint32_t lo, hi;
  r.chunk(&lo, &hi);
  if (threadIdx.x == 0) sh.id = 0xffffffffu;  // stays so (id -1) only if the walk below had a bug
  unsigned long long mine = 0, total = 0;
  for (uint32_t i = lo; i < hi; ++i)
    if (r.kept(i, r.x[i])) mine += r.mass(r.x[i]);
  const unsigned long long before = block_exclusive_scan(mine, sh, &total);
  unsigned long long target = (unsigned long long)(a.u * double(total));  // total >= 2^40: the largest logit is kept
  if (target >= total) target = total - 1;
  if (before <= target && target < before + mine) {
    unsigned long long acc = before;
    for (uint32_t i = lo; i < hi; ++i) {
      if (!r.kept(i, r.x[i])) continue;
      acc += r.mass(r.x[i]);
      if (target < acc) {
        sh.id = i;
        break;
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) ids[blockIdx.x] = int32_t(sh.id);
}

}  // namespace

void sample(const float* logits, uint32_t rows, uint32_t vocab, const SampleRow* args, int32_t* ids, Stream s) {
  sample_kernel<<<rows, kThreads, 0, s>>>(logits, vocab, args, ids);
}

}  // namespace tq::cuda::layers
