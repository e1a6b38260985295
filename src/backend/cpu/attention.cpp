// Causal attention directly over the packed pages of one layer (KvStore::attend).
//
// Per (KV head, block of query tokens), two passes over the sequence's pages:
//   scores  TurboQuant keys: each query is rotated once (prepare) and dotted with the packed rows
//           (dot_fast: codebook lookups, no decoded key). Float keys: the page's rows are read into
//           a page-sized tile. Side-buffer tokens (sink/window): fp16 rows, unrotated query.
//   values  TurboQuant values are accumulated in the rotated domain and un-rotated once per query
//           at the end: with one or two queries through accumulate_rotated; with more, each page's
//           rows are decoded (rotated domain, centroids) into a page tile once and shared by all
//           queries of the block. Both add (weight x norm) x centroid, so a query's output does
//           not depend on how many queries a step carries: speculative verification gives the
//           logits of one-token decoding bit for bit. Float values and side-buffer tokens
//           accumulate directly.
// No full-precision copy of the cache is made: the largest buffers are one page of rows and the
// [queries][positions] score matrix.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "simd.h"
#include "tq/check.h"
#include "tq/cpu_features.h"
#include "tq/kv/online_softmax.h"
#include "tq/backend/cpu/kv_store.h"
#include "tq/backend/cpu/matmul.h"
#include "tq/numeric.h"

namespace tq::cpu {
namespace {

constexpr uint32_t kQueryBlock = 16;  // query tokens per task: bounds the score matrix

ConstRowRef key_row(const BlockLayout& L, const uint8_t* b, uint32_t off) {
  return {reinterpret_cast<const uint32_t*>(b + L.k_codes + off * L.k_row), b + L.k_qjl + off * L.k_qjl_row,
          reinterpret_cast<const uint16_t*>(b + L.k_norms) + off, reinterpret_cast<const uint16_t*>(b + L.k_rnorms) + off};
}
ConstRowRef value_row(const BlockLayout& L, const uint8_t* b, uint32_t off) {
  return {reinterpret_cast<const uint32_t*>(b + L.v_codes + off * L.v_row), nullptr, reinterpret_cast<const uint16_t*>(b + L.v_norms) + off,
          nullptr};
}

// y += w * x: a multiply and an add per element either way, so both give the same bits. `avx2`:
// cpu::has_avx2_fma(), asked once per task rather than per row.
void axpy(bool avx2, float w, const float* x, float* y, uint32_t n) {
  if (avx2) return simd::axpy_avx2(w, x, y, n);
  for (uint32_t i = 0; i < n; ++i) y[i] += w * x[i];
}

}  // namespace

void KvStore::attend(uint32_t layer, const SeqPages& s, uint32_t first, uint32_t nq, uint32_t q_heads, const float* q, float* out,
                     ThreadPool& pool) const {
  const uint32_t H = shape_.kv_heads;
  TQ_CHECK(q_heads >= H && q_heads % H == 0, "query heads ({}) must be a multiple of KV heads ({})", q_heads, H);
  TQ_CHECK(s.block_table != nullptr, "sequence {} has no block table", s.seq);
  const size_t held = s.block_table->size() * size_t(page_size());
  TQ_CHECK(nq >= 1 && size_t(first) + nq <= held, "queries {}..{} are beyond the pages of sequence {} ({} positions)", first, first + nq,
           s.seq, held);
  TQ_CHECK(spec_.policy.window == 0 || nq <= shape_.max_chunk, "{} query tokens at once; the recent-token ring holds chunks of {}", nq,
           shape_.max_chunk);
  const uint32_t blocks = (nq + kQueryBlock - 1) / kQueryBlock;
  pool.parallel_for(size_t(H) * blocks, [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; ++t) {
      const uint32_t h = uint32_t(t % H), b = uint32_t(t / H);
      attend_head(layer, s, h, first, b * kQueryBlock, std::min(nq, (b + 1) * kQueryBlock), q_heads, q, out);
    }
  });
}

void KvStore::attend_head(uint32_t layer, const SeqPages& s, uint32_t h, uint32_t first, uint32_t j0, uint32_t j1, uint32_t q_heads,
                          const float* q, float* out) const {
  uint32_t local = 0;
  const PagedKvCache& cache = cache_of(layer, &local);
  const BlockLayout& L = cache.layout();
  const TurboQuant* kc = cache.format().k_codec(local, h);
  const TurboQuant* vc = cache.format().v_codec(local, h);
  const Encoding kenc = cache.format().format().k.enc, venc = cache.format().format().v.enc;
  const uint32_t H = shape_.kv_heads, D = shape_.head_dim, ps = page_size(), group = q_heads / H;
  const uint32_t nqb = (j1 - j0) * group;  // queries of this task: token-major, then head in group
  const uint32_t span = first + j1;        // positions the last query sees
  const uint32_t pd = vc ? vc->padded_dim() : D;
  const float inv_sqrt = 1.0f / std::sqrt(float(D));
  const size_t row = size_t(H) * D;  // side-buffer row: [2][kv_heads][head_dim]
  const Side* sd = spec_.policy.sink || spec_.policy.window ? &side(s.seq) : nullptr;

  const auto qpos = [&](uint32_t qi) { return first + j0 + qi / group; };
  const auto qvec = [&](uint32_t qi) { return q + (size_t(j0 + qi / group) * q_heads + h * group + qi % group) * D; };
  // fp16 K (value=false) or V row of a side-buffer token, converted into `dst` [D].
  const auto side_row = [&](uint32_t t, bool value, float* dst) {
    const uint32_t sink = spec_.policy.sink;
    const uint16_t* src = t < sink ? &sd->sink[(size_t(layer) * sink + t) * 2 * row] : &sd->recent[(size_t(layer) * ring() + t % ring()) * 2 * row];
    src += (value ? row : 0) + size_t(h) * D;
    load_float_row(Encoding::kFp16, reinterpret_cast<const uint8_t*>(src), D, 1.0f, dst);
  };

  std::vector<TurboQuant::Query> prep(kc ? nqb : 0);
  for (uint32_t qi = 0; qi < prep.size(); ++qi) kc->prepare(qvec(qi), prep[qi]);

  // [nqb][span] scores, then unnormalized weights: every element read is written first, so the
  // thread's buffer is reused without clearing (a prompt block's is hundreds of KB).
  thread_local std::vector<float> S;
  S.resize(std::max(S.size(), size_t(nqb) * span));
  const uint32_t kpd = kc ? kc->padded_dim() : D;
  std::vector<float> tile(size_t(ps) * std::max({pd, kpd, D}));  // [ps][pd or D] one page of rows
  std::vector<float> side(D);                              // [D] one side-buffer row

  // ---- scores
  // TurboQuant keys: each row's centroids decoded once for all the task's queries (a GQA group at
  // least), giving dot_fast's score bit for bit.
  const bool key_tile = kc && kc->can_score_decoded();
  for (uint32_t p0 = 0; p0 < span; p0 += ps) {
    const uint32_t p1 = std::min(span, p0 + ps);
    const uint8_t* blk = cache.block(local, uint32_t((*s.block_table)[p0 / ps]), h);
    if (!kc)
      for (uint32_t t = p0; t < p1; ++t) load_float_row(kenc, blk + L.k_codes + (t - p0) * L.k_row, D, cache.format().k_scale(), &tile[size_t(t - p0) * D]);
    if (key_tile)
      for (uint32_t t = p0; t < p1; ++t) kc->decode_rotated(key_row(L, blk, t - p0), &tile[size_t(t - p0) * kpd]);
    for (uint32_t qi = 0; qi < nqb; ++qi) {
      const uint32_t qp = qpos(qi), end = std::min(p1, qp + 1);
      float* srow = &S[size_t(qi) * span];
      for (uint32_t t = p0; t < end; ++t) {
        float dot;
        if (in_side(t, qp)) {
          side_row(t, false, side.data());
          dot = dot_f32(qvec(qi), side.data(), D);
        } else if (key_tile) {
          dot = kc->dot_decoded(prep[qi], &tile[size_t(t - p0) * kpd], key_row(L, blk, t - p0));
        } else if (kc) {
          dot = kc->dot_fast(prep[qi], key_row(L, blk, t - p0));
        } else {
          dot = dot_f32(qvec(qi), &tile[size_t(t - p0) * D], D);
        }
        srow[t] = dot * inv_sqrt;
      }
    }
  }
  // ---- softmax (unnormalized: the sum divides the output once). The state the kernels share,
  // with the whole row as one block: its max is known before any exponent is taken.
  std::vector<float> inv_sum(nqb);  // [nqb] 1 / sum of the row's weights
  const auto ex = [](float x) { return std::exp(x); };
  for (uint32_t qi = 0; qi < nqb; ++qi) {
    float* srow = &S[size_t(qi) * span];
    const uint32_t n = qpos(qi) + 1;
    SoftmaxState st;
    const SoftmaxState::Step step = st.update(*std::max_element(srow, srow + n), ex);
    for (uint32_t t = 0; t < n; ++t) st.add(srow[t] = ex(srow[t] - step.base));
    inv_sum[qi] = st.inv_sum();
  }
  // ---- values
  std::vector<float> acc_rot(vc ? size_t(nqb) * pd : 0);  // [nqb][pd] TurboQuant values, rotated domain
  std::vector<float> acc(size_t(nqb) * D, 0.0f);          // [nqb][D] float values and side-buffer rows
  const bool use_tile = vc && nqb > 2 && !vc->config().prod;
  const bool avx2 = cpu::has_avx2_fma();  // prod values: accumulate_rotated's own order
  std::vector<float> norms(ps);                                // [ps] the tile's row norms
  for (uint32_t p0 = 0; p0 < span; p0 += ps) {
    const uint32_t p1 = std::min(span, p0 + ps);
    const uint8_t* blk = cache.block(local, uint32_t((*s.block_table)[p0 / ps]), h);
    if (!vc) {
      for (uint32_t t = p0; t < p1; ++t) load_float_row(venc, blk + L.v_codes + (t - p0) * L.v_row, D, cache.format().v_scale(), &tile[size_t(t - p0) * D]);
    } else if (use_tile) {
      for (uint32_t t = p0; t < p1; ++t) {
        const ConstRowRef r = value_row(L, blk, t - p0);
        vc->decode_rotated(r, &tile[size_t(t - p0) * pd]);
        norms[t - p0] = f16_to_f32(*r.norm);
      }
    }
    for (uint32_t qi = 0; qi < nqb; ++qi) {
      const uint32_t qp = qpos(qi), end = std::min(p1, qp + 1);
      const float* w = &S[size_t(qi) * span];
      float* a = &acc[size_t(qi) * D];
      for (uint32_t t = p0; t < end; ++t) {
        if (in_side(t, qp)) {
          side_row(t, true, side.data());
          axpy(avx2, w[t], side.data(), a, D);
        } else if (!vc) {
          axpy(avx2, w[t], &tile[size_t(t - p0) * D], a, D);
        } else if (use_tile) {
          const float wn = w[t] * norms[t - p0];  // as accumulate_rotated: the same products and sums
          if (wn == 0) continue;
          axpy(avx2, wn, &tile[size_t(t - p0) * pd], &acc_rot[size_t(qi) * pd], pd);
        } else {
          vc->accumulate_rotated(value_row(L, blk, t - p0), w[t], &acc_rot[size_t(qi) * pd]);
        }
      }
    }
  }
  // ---- un-rotate once per query, normalize
  std::vector<float> unrot(pd);
  for (uint32_t qi = 0; qi < nqb; ++qi) {
    float* o = out + (size_t(j0 + qi / group) * q_heads + h * group + qi % group) * D;
    const float* a = &acc[size_t(qi) * D];
    const float inv = inv_sum[qi];
    if (vc) {
      vc->rotation().inverse(&acc_rot[size_t(qi) * pd], unrot.data());
      for (uint32_t i = 0; i < D; ++i) o[i] = (a[i] + unrot[i]) * inv;
    } else {
      for (uint32_t i = 0; i < D; ++i) o[i] = a[i] * inv;
    }
  }
}

}  // namespace tq::cpu
