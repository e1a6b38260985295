// The online-softmax state of one attention row, shared by the CUDA kernels (decode, prefill,
// their split merge) and the CPU attention: a running max `m` and a running sum `d` of
// exp(s - m), in the spirit of FlashInfer's state_t.
//
// A row's scores arrive in blocks (a tile of tokens, a warp's share, a split of the sequence).
// Each block either joins the state (`update`: the new max, the factor that rescales what was
// accumulated so far, then `add` the block's sum), or is summarized by a state of its own and
// merged later (`merge`, or `weight` when many partial states are combined against one max).
// The partial outputs O = sum_t exp(s_t - m) v_t scale with the same factors as the sums, so
// the callers apply them to their own accumulators, in whatever register layout they keep.
//
// The exponential is a parameter: the kernels keep scores in the log2 domain (scaled by log2 e)
// and pass 2^x (the fast ex2.approx in their loops, exp2f in the merges), the CPU may pass
// exp. Every function is the same on the host and the device (TQ_HD), so the CPU reference and
// the kernels follow the same rules for the cases that need one:
//   - a row that has seen only masked scores (-inf) keeps m = -inf, d = 0; its exponents use a
//     base of 0 instead of m, so that a masked score gives exp(-inf) = 0, not exp(NaN);
//   - a partial state with m = -inf has weight 0 in a merge (not exp(-inf - -inf) = NaN);
//   - a row whose sum is 0 (nothing visible at all) normalizes to 0, not to 0/0.
// Included by device code: compiles as C++17 (nvcc) and C++20, and includes nothing heavy.
#pragma once

#include <cmath>

#include "tq/common.h"

namespace tq {

// -inf as a constant expression, without <limits>.
inline constexpr float kSoftmaxNegInf = -__builtin_huge_valf();

// max(a, b) as the kernels compute it (fmaxf: a NaN loses to a number).
TQ_HD float softmax_max(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fmaxf(a, b);
#else
  return std::fmax(a, b);
#endif
}

struct SoftmaxState {
  float m = kSoftmaxNegInf;  // the max of the scores seen; -inf while none was visible
  float d = 0.0f;            // the sum of exp(s - m) over them

  // What one block's update implies: `scale` = exp(m_old - m_new) rescales the sum and the
  // output accumulated before it; the block's own exponents are exp(s - base).
  struct Step {
    float scale;
    float base;
  };

  // The base of exponents against a max m: m itself, or 0 while nothing is visible (m = -inf),
  // so that exp(s - base) of a masked score is exp(-inf) = 0 instead of exp(NaN).
  TQ_HD static float base_of(float m) { return m == kSoftmaxNegInf ? 0.0f : m; }

  // A block whose max score is block_max joins the state: m becomes the max of both, and d is
  // rescaled by the returned step's scale. The caller then adds the block's sum of
  // exp(s - step.base) with add(), and rescales its output accumulators by step.scale.
  template <class Exp>
  TQ_HD Step update(float block_max, Exp&& exp) {
    return update(m, d, block_max, exp);
  }
  // The same on a state kept as two floats (a kernel that holds several rows' maxima and sums
  // in arrays of their own, whose register order it keeps).
  template <class Exp>
  TQ_HD static Step update(float& m, float& d, float block_max, Exp&& exp) {
    const float m_new = softmax_max(m, block_max);
    const float base = base_of(m_new);
    const float scale = exp(m - base);
    m = m_new;
    d *= scale;
    return {scale, base};
  }

  // Adds exponents exp(s - base) (one or a block's sum) of the block last passed to update().
  TQ_HD void add(float p) { d += p; }

  // update() leaving d as it is, and add_scaled() to rescale it and add the block's sum in one
  // rounding: for a kernel that must round the two alike whether or not it rescales in a branch
  // (the decode kernel's 4- and 8-row blocks, whose rows get the same bits).
  template <class Exp>
  TQ_HD Step advance(float block_max, Exp&& exp) {
    float kept = d;
    return update(m, kept, block_max, exp);
  }
  TQ_HD void add_scaled(float scale, float p) {
#if defined(__CUDA_ARCH__)
    d = fmaf(d, scale, p);
#else
    d = std::fma(d, scale, p);
#endif
  }

  // The weight of a partial state of max m_part in a combination whose max is m_all (the max
  // over the parts, >= m_part): exp(m_part - m_all), or 0 for a part that saw nothing visible.
  template <class Exp>
  TQ_HD static float weight(float m_part, float m_all, Exp&& exp) {
    return m_part == kSoftmaxNegInf ? 0.0f : exp(m_part - m_all);
  }

  // The sum d_part of a partial state of max m_part, rescaled to the max m_all of a combination:
  // d_part * weight(m_part, m_all), with no product at all for a part that saw nothing visible.
  template <class Exp>
  TQ_HD static float rescaled_sum(float m_part, float d_part, float m_all, Exp&& exp) {
    return m_part != kSoftmaxNegInf ? d_part * exp(m_part - m_all) : 0.0f;
  }

  // The scale factors of two partial outputs when their states merge.
  struct MergeScales {
    float self, other;
  };

  // Merges another partial state (the same row, a disjoint set of scores) into this one.
  // Returns the factors that bring the two partial outputs to the merged state:
  // O = self * O_this + other * O_other. Merging is commutative and associative up to rounding.
  template <class Exp>
  TQ_HD MergeScales merge(const SoftmaxState& o, Exp&& exp) {
    const float m_all = softmax_max(m, o.m);
    const MergeScales f{weight(m, m_all, exp), weight(o.m, m_all, exp)};
    d = d * f.self + o.d * f.other;
    m = m_all;
    return f;
  }

  // The factor that normalizes an output accumulated against this state: 1 / d, or 0 for a
  // row that saw no visible score (d = 0).
  TQ_HD static float inv_sum(float d) { return d > 0 ? 1.0f / d : 0.0f; }
  TQ_HD float inv_sum() const { return inv_sum(d); }
};

}  // namespace tq
