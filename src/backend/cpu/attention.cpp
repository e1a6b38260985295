// Causal attention directly over the packed pages of one layer (attend_pages; KvStore::attend on its own pages).
//
// Per (KV head, block of query tokens), two passes over the sequence's pages:
//   scores  TurboQuant keys: each query is rotated once (prepare) and dotted with the packed rows
//           (dot_fast: codebook lookups, no decoded key). Float keys (AVX2): a token's GQA group
//           meets each row of the page in one pass (simd::dot_rows_avx2), the row converted in
//           registers once for the group; without AVX2, or for fp8, the page's rows are first
//           converted into a page-sized tile. Side-buffer tokens (sink/window): fp16 rows,
//           unrotated query.
//   values  TurboQuant values are accumulated in the rotated domain and un-rotated once per query
//           at the end: with one query through accumulate_rotated; with more, each page's
//           rows are decoded (rotated domain, centroids) into a page tile once and shared by all
//           queries of the block. Both add (weight x norm) x centroid, so a query's output does
//           not depend on how many queries a step carries: speculative verification gives the
//           logits of one-token decoding bit for bit. Float values and side-buffer tokens
//           accumulate directly (AVX2: a GQA group per row read, converted in registers).
// The next pages' rows are prefetched: pages lie anywhere in the pool, out of the hardware
// prefetcher's reach (how far ahead: bench/results/2026-11-30-cpu-vs-llama-cpp.md).
// The positions are cut into parts of kPartPositions (fixed, whole pages): each (KV head, query
// block, part) is a task with its own softmax state, and the parts of a query merge in order at
// the end (FlashDecoding's split). A decode step with few KV heads thus feeds every thread, and
// since the cuts do not depend on the number of queries or threads, a query's output is the same
// bits in a one-token step, a verification step or a prompt chunk, on any thread count.
// No full-precision copy of the cache is made: the largest buffers are one page of rows and the
// [queries][part positions] score matrix.
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

constexpr uint32_t kQueryBlock = 16;      // query tokens per task: bounds the score matrix
constexpr uint32_t kPartPositions = 512;  // positions per part (rounded up to whole pages)
constexpr uint32_t kPrefetchPages = 4;    // how far ahead the rows of the next pages are asked for

ConstRowRef key_row(const BlockLayout& L, const uint8_t* b, uint32_t off) {
  return {reinterpret_cast<const uint32_t*>(b + L.k_codes + off * L.k_row), b + L.k_qjl + off * L.k_qjl_row,
          reinterpret_cast<const uint16_t*>(b + L.k_norms + off * L.k_norm_row), reinterpret_cast<const uint16_t*>(b + L.k_rnorms) + off};
}
ConstRowRef value_row(const BlockLayout& L, const uint8_t* b, uint32_t off) {
  return {reinterpret_cast<const uint32_t*>(b + L.v_codes + off * L.v_row), nullptr, reinterpret_cast<const uint16_t*>(b + L.v_norms + off * L.v_norm_row),
          nullptr};
}

using simd::axpy;  // y += w x, AVX2 or not (the same bits); `avx2` asked once per task

// One task of attend_pages: KV head h, the queries of tokens j0..j1-1, the positions c0..c1-1.
// part: [queries][m, d, acc [head_dim], acc_rot [padded dim]] its softmax state and unnormalized
// outputs (acc_rot: TurboQuant values, still rotated). swa > 0: a query at qp sees only the
// positions t with qp - t < swa (a sliding-window layer); the pages wholly before the task's first
// query's window are not read.
void attend_part(const PagedKvCache& cache, uint32_t local, std::span<const int32_t> block_table, const SideRows& side_rows, uint32_t h,
                 uint32_t first, uint32_t j0, uint32_t j1, uint32_t c0, uint32_t c1, uint32_t q_heads, float scale, uint32_t swa,
                 const float* q, float* part) {
  const BlockLayout& L = cache.layout();
  const TurboQuant* kc = cache.format().k_codec(local, h);
  const TurboQuant* vc = cache.format().v_codec(local, h);
  const Encoding kenc = cache.format().format().k.enc, venc = cache.format().format().v.enc;
  const uint32_t H = cache.shape().kv_heads, D = cache.shape().head_dim, ps = cache.page_size(), group = q_heads / H;
  const uint32_t nqb = (j1 - j0) * group;  // queries of this task: token-major, then head in group
  const uint32_t span = std::min(c1, first + j1) - c0;  // positions of the part the last query sees: c0 .. c0 + span - 1
  const uint32_t pd = vc ? vc->padded_dim() : D;
  const size_t row = size_t(H) * D;  // side-buffer row: [2][kv_heads][head_dim]
  const SideRows* sd = side_rows.active() ? &side_rows : nullptr;
  const auto in_side = [&](uint32_t t, uint32_t qp) { return sd && sd->holds(t, qp); };

  const auto qpos = [&](uint32_t qi) { return first + j0 + qi / group; };
  // The first position a query at qp sees; the queries come in position order, so the task's
  // first query has the smallest, and the pages before it (whole pages: c0 is one) are skipped.
  const auto qlo = [&](uint32_t qp) { return swa && qp + 1 > swa ? qp + 1 - swa : 0u; };
  const uint32_t pstart = std::max(c0, qlo(first + j0) / ps * ps);
  const auto qvec = [&](uint32_t qi) { return q + (size_t(j0 + qi / group) * q_heads + h * group + qi % group) * D; };
  // fp16 K (value=false) or V row of a side-buffer token, converted into `dst` [D].
  const auto side_row = [&](uint32_t t, bool value, float* dst) {
    const uint16_t* src;
    if (t >= sd->new_first) {
      src = (value ? sd->new_v : sd->new_k) + (size_t(t - sd->new_first) * H + h) * D;
    } else {
      src = t < sd->sink ? sd->sink_rows + size_t(t) * 2 * row : sd->ring_rows + size_t(t % sd->ring) * 2 * row;
      src += (value ? row : 0) + size_t(h) * D;
    }
    load_float_row(Encoding::kFp16, reinterpret_cast<const uint8_t*>(src), D, 1.0f, dst);
  };
  const auto block_of_page = [&](uint32_t p0) { return cache.block(local, uint32_t(block_table[p0 / ps]), h); };
  // Asks for the `bytes` at `off` of the page kPrefetchPages on from p0 while p0 is computed: a
  // sequence's pages lie anywhere in the pool, so the hardware prefetcher does not cross to the next.
  const auto prefetch = [&](uint32_t p0, uint32_t off, size_t bytes) {
    const uint32_t pn = p0 + kPrefetchPages * ps;
    if (pn >= c0 + span) return;
    const uint8_t* b = block_of_page(pn) + off;
    for (size_t i = 0; i < bytes; i += 64) __builtin_prefetch(b + i);
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
  // Float keys with AVX2: a token's GQA group scores each row in one pass (dot_rows_avx2, straight
  // from the page but for fp8, which goes through the tile); every score is dot_f32's bits, so the
  // result is the loop's below.
  const bool key_rows = !kc && cpu::has_avx2_fma() && D % 8 == 0;
  const bool key_in_page = kenc == Encoding::kFp32 || kenc == Encoding::kFp16 || kenc == Encoding::kBf16;
  for (uint32_t p0 = pstart; p0 < c0 + span; p0 += ps) {
    const uint32_t p1 = std::min(c0 + span, p0 + ps);
    const uint8_t* blk = block_of_page(p0);
    prefetch(p0, L.k_codes, size_t(ps) * L.k_row);
    if (!kc && !(key_rows && key_in_page))
      for (uint32_t t = p0; t < p1; ++t) load_float_row(kenc, blk + L.k_codes + (t - p0) * L.k_row, D, cache.format().k_scale(), &tile[size_t(t - p0) * D]);
    if (key_rows) {
      const uint8_t* rows = key_in_page ? blk + L.k_codes : reinterpret_cast<const uint8_t*>(tile.data());
      const size_t stride = key_in_page ? L.k_row : D * sizeof(float);
      const Encoding enc = key_in_page ? kenc : Encoding::kFp32;
      const uint32_t sink = sd ? sd->sink : 0, window = sd ? sd->window : 0;
      for (uint32_t qi0 = 0; qi0 < nqb; qi0 += group) {
        const uint32_t qp = qpos(qi0), end = std::min(p1, qp + 1), start = std::max(p0, qlo(qp));
        if (end <= start) continue;
        float* srow = &S[size_t(qi0) * span];
        // [start, lo): sink rows, [lo, hi): page rows, [hi, end): window rows (in_side)
        const uint32_t lo = std::max(start, std::min(sink, end));
        const uint32_t hi = window ? std::max(lo, std::min(end, qp + 1 > window ? qp + 1 - window : 0u)) : end;
        const auto side_rows_of = [&](uint32_t t0, uint32_t t1) {
          for (uint32_t t = t0; t < t1; ++t) {
            side_row(t, false, side.data());
            for (uint32_t g = 0; g < group; ++g) srow[g * span + t - c0] = dot_f32(qvec(qi0 + g), side.data(), D) * scale;
          }
        };
        side_rows_of(start, lo);
        simd::dot_rows_avx2(group, qvec(qi0), D, rows + (lo - p0) * stride, stride, enc, hi - lo, D, scale, srow + lo - c0, span);
        side_rows_of(hi, end);
      }
      continue;
    }
    if (key_tile)
      for (uint32_t t = p0; t < p1; ++t) kc->decode_rotated(key_row(L, blk, t - p0), &tile[size_t(t - p0) * kpd]);
    for (uint32_t qi = 0; qi < nqb; ++qi) {
      const uint32_t qp = qpos(qi), end = std::min(p1, qp + 1);
      float* srow = &S[size_t(qi) * span];  // [span]: position c0 + i at i
      for (uint32_t t = std::max(p0, qlo(qp)); t < end; ++t) {
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
        srow[t - c0] = dot * scale;
      }
    }
  }
  // ---- softmax (unnormalized: the merge divides by the sum of the parts once). The state the
  // kernels share, with the part as one block: its max is known before any exponent is taken. A
  // query before the part sees none of it: m = -inf, d = 0, and the merge gives it weight 0.
  const auto ex = [](float x) { return std::exp(x); };
  const size_t per_query = 2 + D + pd;  // part: [nqb][m, d, acc [D], acc_rot [pd]]
  for (uint32_t qi = 0; qi < nqb; ++qi) {
    // the positions it sees: [a, b) of the part, at srow[a - c0 .. b - c0)
    const uint32_t b = std::min(c0 + span, qpos(qi) + 1), a = std::max(c0, std::min(b, qlo(qpos(qi))));
    float* srow = &S[size_t(qi) * span] + (a - c0);
    const uint32_t n = b > a ? b - a : 0;
    SoftmaxState st;
    if (n > 0) {
      const SoftmaxState::Step step = st.update(*std::max_element(srow, srow + n), ex);
      for (uint32_t i = 0; i < n; ++i) st.add(srow[i] = ex(srow[i] - step.base));
    }
    part[qi * per_query] = st.m;
    part[qi * per_query + 1] = st.d;
  }
  // ---- values
  // acc [D]: float values and side-buffer rows; acc_rot [pd]: TurboQuant values, rotated domain
  for (uint32_t qi = 0; qi < nqb; ++qi) std::fill_n(&part[qi * per_query + 2], D + pd, 0.0f);
  const bool use_tile = vc && nqb >= 2 && !vc->config().prod;
  const bool avx2 = cpu::has_avx2_fma();  // prod values: accumulate_rotated's own order
  // Float values but fp8 are read from the page and converted in registers (exactly, as the tile's).
  const bool value_in_page = !vc && (venc == Encoding::kFp32 || venc == Encoding::kFp16 || venc == Encoding::kBf16);
  std::vector<float> norms(ps);                                // [ps] the tile's row norms
  for (uint32_t p0 = pstart; p0 < c0 + span; p0 += ps) {
    const uint32_t p1 = std::min(c0 + span, p0 + ps);
    const uint8_t* blk = block_of_page(p0);
    prefetch(p0, L.v_codes, size_t(ps) * L.v_row);
    if (!vc && !(avx2 && value_in_page)) {
      for (uint32_t t = p0; t < p1; ++t) load_float_row(venc, blk + L.v_codes + (t - p0) * L.v_row, D, cache.format().v_scale(), &tile[size_t(t - p0) * D]);
    } else if (use_tile) {
      for (uint32_t t = p0; t < p1; ++t) {
        const ConstRowRef r = value_row(L, blk, t - p0);
        vc->decode_rotated(r, &tile[size_t(t - p0) * pd]);
        norms[t - p0] = vc->split() ? 1.0f : f16_to_f32(*r.norm);  // split rows come decoded with their parts' norms
      }
    }
    if (!vc && avx2) {
      // Float values: a token's GQA group sees the same rows, so they are read once for the
      // group; per element the same products and sums in the same order as the loop below.
      const uint32_t sink = sd ? sd->sink : 0, window = sd ? sd->window : 0;
      for (uint32_t qi0 = 0; qi0 < nqb; qi0 += group) {
        const uint32_t qp = qpos(qi0), end = std::min(p1, qp + 1), start = std::max(p0, qlo(qp));
        if (end <= start) continue;
        // [start, lo): sink rows, [lo, hi): page rows, [hi, end): window rows (in_side)
        const uint32_t lo = std::max(start, std::min(sink, end));
        const uint32_t hi = window ? std::max(lo, std::min(end, qp + 1 > window ? qp + 1 - window : 0u)) : end;
        const auto side_rows_of = [&](uint32_t t0, uint32_t t1) {
          for (uint32_t t = t0; t < t1; ++t) {
            side_row(t, true, side.data());
            for (uint32_t g = 0; g < group; ++g)
              simd::axpy_avx2(S[size_t(qi0 + g) * span + t - c0], side.data(), &part[(qi0 + g) * per_query + 2], D);
          }
        };
        side_rows_of(start, lo);
        if (value_in_page)
          simd::axpy_rows_avx2(group, &S[size_t(qi0) * span + lo - c0], span, blk + L.v_codes + (lo - p0) * L.v_row, L.v_row, venc, hi - lo,
                               &part[qi0 * per_query + 2], per_query, D);
        else
          simd::axpy_rows_avx2(group, &S[size_t(qi0) * span + lo - c0], span, &tile[size_t(lo - p0) * D], D, hi - lo,
                               &part[qi0 * per_query + 2], per_query, D);
        side_rows_of(hi, end);
      }
      continue;
    }
    for (uint32_t qi = 0; qi < nqb; ++qi) {
      const uint32_t qp = qpos(qi), end = std::min(p1, qp + 1);
      const float* w = &S[size_t(qi) * span];  // position c0 + i at i
      float* a = &part[qi * per_query + 2];
      float* a_rot = a + D;
      for (uint32_t t = std::max(p0, qlo(qp)); t < end; ++t) {
        if (in_side(t, qp)) {
          side_row(t, true, side.data());
          axpy(avx2, w[t - c0], side.data(), a, D);
        } else if (!vc) {
          axpy(avx2, w[t - c0], &tile[size_t(t - p0) * D], a, D);
        } else if (use_tile) {
          const float wn = w[t - c0] * norms[t - p0];  // as accumulate_rotated: the same products and sums, no shortcut for 0
          axpy(avx2, wn, &tile[size_t(t - p0) * pd], a_rot, pd);
        } else {
          vc->accumulate_rotated(value_row(L, blk, t - p0), w[t - c0], a_rot);
        }
      }
    }
  }
}

}  // namespace

void attend_pages(const PagedKvCache& cache, uint32_t local, std::span<const int32_t> block_table, const SideRows& side, uint32_t first,
                  uint32_t nq, uint32_t q_heads, float scale, const float* q, float* out, ThreadPool& pool, uint32_t sliding_window) {
  const uint32_t H = cache.shape().kv_heads;
  TQ_CHECK(local < cache.shape().layers, "layer {} is outside the cache ({} layers)", local, cache.shape().layers);
  TQ_CHECK(q_heads >= H && q_heads % H == 0, "query heads ({}) must be a multiple of KV heads ({})", q_heads, H);
  const size_t held = block_table.size() * size_t(cache.page_size());
  TQ_CHECK(nq >= 1 && size_t(first) + nq <= held, "queries {}..{} are beyond the sequence's pages ({} positions)", first, first + nq, held);
  TQ_CHECK(!side.active() || ((side.sink == 0 || side.sink_rows) && (side.window == 0 || (side.ring >= side.window && side.ring_rows))),
           "side rows of sink {} and window {} need their buffers and a ring of at least the window (ring {})", side.sink, side.window,
           side.ring);
  const TurboQuant* vc0 = cache.format().v_codec(local, 0);
  const uint32_t D = cache.shape().head_dim, pd = vc0 ? vc0->padded_dim() : D, group = q_heads / H, ps = cache.page_size();
  const uint32_t part = (kPartPositions + ps - 1) / ps * ps;
  if (scale == 0) scale = 1.0f / std::sqrt(float(D));

  // Work items: (KV head, query block) pairs, each of parts of `part` positions. Block b's queries
  // see the positions before first + its last token + 1. Part p of a block keeps its results at
  // p * nqb * per_query of the block's buffer: [parts][queries][m, d, acc [D], acc_rot [pd]].
  const uint32_t blocks = (nq + kQueryBlock - 1) / kQueryBlock;
  const size_t per_query = 2 + D + pd;
  const auto block_of = [&](size_t hb, uint32_t* j0, uint32_t* j1, uint32_t* nqb, uint32_t* n_parts) {
    *j0 = uint32_t(hb % blocks) * kQueryBlock;
    *j1 = std::min(nq, *j0 + kQueryBlock);
    *nqb = (*j1 - *j0) * group;
    *n_parts = (first + *j1 + part - 1) / part;
  };
  // Merges block hb's parts for each query in part order, un-rotates once, normalizes.
  const auto merge = [&](size_t hb, const float* base, float* a, float* a_rot, float* unrot) {
    uint32_t j0, j1, nqb, n_parts;
    block_of(hb, &j0, &j1, &nqb, &n_parts);
    const uint32_t h = uint32_t(hb / blocks);
    const TurboQuant* vc = cache.format().v_codec(local, h);
    const auto ex = [](float x) { return std::exp(x); };
    for (uint32_t qi = 0; qi < nqb; ++qi) {
      const auto part_of = [&](uint32_t p) { return base + (size_t(p) * nqb + qi) * per_query; };
      float m_all = kSoftmaxNegInf;
      for (uint32_t p = 0; p < n_parts; ++p) m_all = softmax_max(m_all, part_of(p)[0]);
      float sum = 0.0f;
      std::fill_n(a, D, 0.0f);
      std::fill_n(a_rot, pd, 0.0f);
      for (uint32_t p = 0; p < n_parts; ++p) {
        const float* r = part_of(p);
        const float w = SoftmaxState::weight(r[0], m_all, ex);
        if (w == 0) continue;  // a part after the query's position, or with nothing visible
        sum += r[1] * w;
        for (uint32_t i = 0; i < D; ++i) a[i] += r[2 + i] * w;
        if (vc)
          for (uint32_t i = 0; i < pd; ++i) a_rot[i] += r[2 + D + i] * w;
      }
      float* o = out + (size_t(j0 + qi / group) * q_heads + h * group + qi % group) * D;
      const float inv = SoftmaxState::inv_sum(sum);
      if (vc) {
        vc->unrotate(a_rot, unrot);
        for (uint32_t i = 0; i < D; ++i) o[i] = (a[i] + unrot[i]) * inv;
      } else {
        for (uint32_t i = 0; i < D; ++i) o[i] = a[i] * inv;
      }
    }
  };
  const auto run_part = [&](size_t hb, uint32_t p, float* base) {
    uint32_t j0, j1, nqb, n_parts;
    block_of(hb, &j0, &j1, &nqb, &n_parts);
    attend_part(cache, local, block_table, side, uint32_t(hb / blocks), first, j0, j1, p * part, (p + 1) * part, q_heads, scale,
                sliding_window, q, base + size_t(p) * nqb * per_query);
  };

  const size_t pairs = size_t(H) * blocks;
  if (pairs >= 2 * size_t(pool.size())) {
    // Enough pairs for every thread (a prompt chunk): a pair is one task, its parts one after the
    // other in the thread's buffer, so memory is per thread, not per pair and part.
    pool.parallel_for(pairs, [&](size_t t0, size_t t1) {
      thread_local std::vector<float> buf;
      std::vector<float> a(D), a_rot(pd), unrot(pd);
      for (size_t hb = t0; hb < t1; ++hb) {
        uint32_t j0, j1, nqb, n_parts;
        block_of(hb, &j0, &j1, &nqb, &n_parts);
        buf.resize(std::max(buf.size(), size_t(n_parts) * nqb * per_query));
        for (uint32_t p = 0; p < n_parts; ++p) run_part(hb, p, buf.data());
        merge(hb, buf.data(), a.data(), a_rot.data(), unrot.data());
      }
    });
    return;
  }
  // Few pairs (a decode step): every part is a task, so that the threads share a long sequence.
  std::vector<std::pair<size_t, uint32_t>> tasks;  // (pair, part)
  std::vector<size_t> base(pairs + 1, 0);          // [pair] offset of its parts in part_buf
  for (size_t hb = 0; hb < pairs; ++hb) {
    uint32_t j0, j1, nqb, n_parts;
    block_of(hb, &j0, &j1, &nqb, &n_parts);
    for (uint32_t p = 0; p < n_parts; ++p) tasks.emplace_back(hb, p);
    base[hb + 1] = base[hb] + size_t(n_parts) * nqb * per_query;
  }
  thread_local std::vector<float> part_buf;  // the calling thread's, reused
  part_buf.resize(std::max(part_buf.size(), base[pairs]));
  float* const parts = part_buf.data();  // the lambdas run on other threads: not part_buf there
  pool.parallel_for(tasks.size(), [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; ++t) run_part(tasks[t].first, tasks[t].second, parts + base[tasks[t].first]);
  });
  pool.parallel_for(pairs, [&](size_t t0, size_t t1) {
    std::vector<float> a(D), a_rot(pd), unrot(pd);
    for (size_t hb = t0; hb < t1; ++hb) merge(hb, parts + base[hb], a.data(), a_rot.data(), unrot.data());
  });
}


void KvStore::attend(uint32_t layer, const SeqPages& s, uint32_t first, uint32_t nq, uint32_t q_heads, const float* q, float* out,
                     ThreadPool& pool, float scale, uint32_t sliding_window) const {
  TQ_CHECK(s.block_table != nullptr, "sequence {} has no block table", s.seq);
  TQ_CHECK(spec_.policy.window == 0 || nq <= shape_.max_chunk, "{} query tokens at once; the recent-token ring holds chunks of {}", nq,
           shape_.max_chunk);
  uint32_t local = 0;
  const PagedKvCache& cache = cache_of(layer, &local);
  SideRows side;
  if (spec_.policy.sink || spec_.policy.window) {
    // This store writes every token into its side rows before it attends (write()), so nothing
    // is read from new rows.
    const Side& sd = this->side(s.seq);
    const size_t row = size_t(2) * shape_.kv_heads * shape_.head_dim;
    side.sink = spec_.policy.sink, side.window = spec_.policy.window, side.ring = uint32_t(ring());
    side.sink_rows = sd.sink.data() + size_t(layer) * side.sink * row;
    side.ring_rows = sd.recent.data() + size_t(layer) * ring() * row;
  }
  if (in_ring(layer)) {  // the ring's pages, in the block table's place (kv/window_ring.h)
    TQ_CHECK(sliding_window >= 1 && sliding_window <= shape_.sliding_window && nq <= shape_.ring.step,
             "layer {} keeps a window ring for windows of {} and steps of {}: attention over a window of {} for {} queries", layer,
             shape_.sliding_window, shape_.ring.step, sliding_window, nq);
    std::vector<int32_t> table;  // [pages of first + nq positions]
    shape_.ring.table(s.seq, first + nq, table);
    return attend_pages(cache, local, table, side, first, nq, q_heads, scale, q, out, pool, sliding_window);
  }
  attend_pages(cache, local, *s.block_table, side, first, nq, q_heads, scale, q, out, pool, sliding_window);
}

}  // namespace tq::cpu
