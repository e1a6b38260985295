#include "cuda_test_util.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>

#include "tq/codec/turboquant.h"
#include "tq/numeric.h"

namespace tq::test {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::string attention_case_name(const std::string& spec, uint32_t head_dim, uint32_t gqa, uint32_t ntok, const std::vector<int32_t>& lens,
                                uint32_t splits, bool prefill) {
  std::string s = spec;  // appended piece by piece (GCC 12 warns, wrongly, on a chain of + here: -Wrestrict)
  for (const auto& [tag, v] : {std::pair{"_d", head_dim}, {"_g", gqa}, {"_t", ntok}}) s.append(tag).append(std::to_string(v));
  s.append("_L");
  for (int32_t l : lens) s.append(std::to_string(l)).append("_");
  s.append("s").append(std::to_string(splits)).append(prefill ? "_prefill" : "");
  for (char& ch : s)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

int clear_argmax(const float* logits, size_t n, float gap) {
  std::vector<float> top(logits, logits + n);
  std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<>());
  const float lowest = *std::min_element(logits, logits + n);
  if (!(top[0] - top[1] > gap * (top[0] - lowest))) return -1;
  return int(std::max_element(logits, logits + n) - logits);
}

double worst_row_error(const std::vector<float>& got, const std::vector<float>& ref, uint32_t d) {
  double worst = 0;
  for (size_t row = 0; row < got.size() / d; ++row) {
    double e = 0, n = 0;
    for (uint32_t i = 0; i < d; ++i) {
      e += std::pow(double(got[row * d + i]) - ref[row * d + i], 2);
      n += std::pow(double(ref[row * d + i]), 2);
    }
    const double r = std::sqrt(e / n);
    worst = std::isnan(r) || std::isnan(worst) ? NAN : std::max(worst, r);
  }
  return worst;
}

float to_f16(float x) { return f16_to_f32(f32_to_f16(x)); }
float to_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

namespace {

// One (layer, KV head)'s rows of a sequence as the kernels compute with them: float caches
// dequantized (the kernels read them exactly); TurboQuant rows in the rotated, padded domain, each
// coordinate norm x fp16(centroid x sqrt(pd)) / sqrt(pd) (for int8 keys that table entry is the
// kernel's int8 operand / 32 exactly: the format's grid).
struct Rows {
  uint32_t dim = 0;                  // d, or the padded dim of TurboQuant rows
  std::vector<float> k, v, v_norm;   // [len][dim], [len][dim], [len] (TurboQuant values: the unit rows and their norms)
};

Rows rows_of(const PagedKvCache& cache, uint32_t layer, uint32_t head, const int32_t* table, int32_t len) {
  const uint32_t d = cache.shape().head_dim, ps = cache.page_size();
  const BlockLayout& L = cache.layout();
  const TurboQuant* kc = cache.format().k_codec(layer, head);
  const TurboQuant* vc = cache.format().v_codec(layer, head);
  Rows r;
  r.dim = kc ? kc->padded_dim() : d;
  r.k.resize(size_t(len) * r.dim), r.v.resize(size_t(len) * r.dim), r.v_norm.assign(len, 1.0f);
  std::vector<float> kd(size_t(cache.shape().kv_heads) * d), vd(kd.size()), unit(r.dim);
  const float root = std::sqrt(float(r.dim));
  for (int32_t t = 0; t < len; ++t) {
    const uint32_t page = uint32_t(table[t / ps]), off = uint32_t(t % ps);
    if (!kc) {
      cache.read(layer, int64_t(page) * ps + off, kd.data(), vd.data());
      std::copy_n(&kd[size_t(head) * d], d, &r.k[size_t(t) * r.dim]);
      std::copy_n(&vd[size_t(head) * d], d, &r.v[size_t(t) * r.dim]);
      continue;
    }
    const uint8_t* b = cache.block(layer, page, head);
    const ConstRowRef kr{reinterpret_cast<const uint32_t*>(b + L.k_codes + off * L.k_row), nullptr,
                         reinterpret_cast<const uint16_t*>(b + L.k_norms) + off, nullptr};
    const ConstRowRef vr{reinterpret_cast<const uint32_t*>(b + L.v_codes + off * L.v_row), nullptr,
                         reinterpret_cast<const uint16_t*>(b + L.v_norms) + off, nullptr};
    kc->decode_rotated(kr, unit.data());
    const float kn = f16_to_f32(*kr.norm);
    for (uint32_t i = 0; i < r.dim; ++i) r.k[size_t(t) * r.dim + i] = to_f16(unit[i] * root) / root * kn;
    vc->decode_rotated(vr, unit.data());
    r.v_norm[t] = f16_to_f32(*vr.norm);
    for (uint32_t i = 0; i < r.dim; ++i) r.v[size_t(t) * r.dim + i] = to_f16(unit[i] * root) / root;
  }
  return r;
}

}  // namespace

std::vector<float> same_precision_attention(const PagedKvCache& cache, uint32_t layer, const AttentionBatch& a, const SideRows* side,
                                            double* max_log2_logit) {
  double largest = 0;
  const uint32_t d = cache.shape().head_dim, hkv = cache.shape().kv_heads, group = a.q_heads / hkv;
  const KvFormat& f = cache.format().format();
  const bool tq = is_tq(f.k.enc), bf = f.k.enc == Encoding::kBf16, int8_keys = tq && f.k.bits <= 3;
  const auto one = [bf](float x) { return bf ? to_bf16(x) : to_f16(x); };
  const auto two_parts = [&](float x) {  // a high and a low part, as the kernels split Q (and bf16's P)
    const float hi = one(x);
    return hi + one(x - hi);
  };
  const float scale = a.scale > 0 ? a.scale : 1.0f / std::sqrt(float(d));
  std::vector<float> out(size_t(a.num_seqs) * a.num_q_tokens * a.q_heads * d);
  for (uint32_t s = 0; s < a.num_seqs; ++s) {
    const int32_t len = a.seq_lens[s];
    for (uint32_t kvh = 0; kvh < hkv; ++kvh) {
      const Rows r = rows_of(cache, layer, kvh, a.block_tables + size_t(s) * a.max_pages, len);
      const TurboQuant* kc = cache.format().k_codec(layer, kvh);
      const TurboQuant* vc = cache.format().v_codec(layer, kvh);
      for (uint32_t j = 0; j < a.num_q_tokens; ++j) {
        const int32_t visible = len - int32_t(a.num_q_tokens) + int32_t(j) + 1, t0 = window_start(visible, a.sliding_window);
        for (uint32_t h = kvh * group; h < (kvh + 1) * group; ++h) {
          const size_t row = (size_t(s) * a.num_q_tokens + j) * a.q_heads + h;
          std::vector<float> q(r.dim, 0.0f);  // [dim]: rotated and padded for TurboQuant keys
          std::copy_n(a.q + row * d, d, q.begin());
          if (kc) kc->rotation().forward(q.data(), q.data());
          if (int8_keys) {
            float mx = 0;
            for (float x : q) mx = std::max(mx, std::abs(x));
            const float step = mx / 32639.0f;
            if (step > 0)
              for (float& x : q) x = std::nearbyint(x / step) * step;
          } else {
            for (float& x : q) x = two_parts(x);
          }
          // Side positions (sink, and within the window of this row) in fp32 over fp16 rows, as the
          // side blocks compute them; the packed ones with the packed kernels' roundings.
          const auto on_side = [&](int32_t t) { return side && (t < int32_t(side->sink) || t >= visible - int32_t(side->window)); };
          const float* qs = a.q + row * d;  // the side blocks take the query as it is
          std::vector<float> p(visible);  // scores, then weights (of positions t0 .. visible - 1)
          float m = -INFINITY;
          for (int32_t t = t0; t < visible; ++t) {
            float dot = 0;
            if (on_side(t)) {
              const float* k = side->k(s, uint32_t(t)) + size_t(kvh) * d;
              for (uint32_t i = 0; i < d; ++i) dot += qs[i] * k[i];
            } else {
              for (uint32_t i = 0; i < r.dim; ++i) dot += q[i] * r.k[size_t(t) * r.dim + i];
            }
            m = std::max(m, p[t] = dot * scale);
            largest = std::max(largest, std::abs(double(p[t])) * 1.4426950408889634);
          }
          float sum = 0;
          for (int32_t t = t0; t < visible; ++t) {
            const float w = std::exp(p[t] - m);
            sum += w;
            if (on_side(t))
              p[t] = w;
            else  // TurboQuant: the value norm goes with P
              p[t] = bf ? two_parts(w * r.v_norm[t]) : to_f16(w * r.v_norm[t]);
          }
          std::vector<float> o(r.dim, 0.0f), o_side(d, 0.0f);
          for (int32_t t = t0; t < visible; ++t) {
            if (on_side(t)) {
              const float* v = side->v(s, uint32_t(t)) + size_t(kvh) * d;
              for (uint32_t i = 0; i < d; ++i) o_side[i] += p[t] * v[i];
            } else {
              for (uint32_t i = 0; i < r.dim; ++i) o[i] += p[t] * r.v[size_t(t) * r.dim + i];
            }
          }
          if (vc) vc->rotation().inverse(o.data(), o.data());
          for (uint32_t i = 0; i < d; ++i) out[row * d + i] = (o[i] + o_side[i]) / sum;
        }
      }
    }
  }
  if (max_log2_logit) *max_log2_logit = largest;
  return out;
}

}  // namespace tq::test
