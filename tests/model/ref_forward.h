// Test-only reference forward pass of a Llama-family model over ModelConfig / Weights (a plain,
// slow transcription of the architecture: RMSNorm, RoPE, grouped-query attention, SwiGLU FFN).
// Used to check that loaded weights are oriented and ordered correctly end to end.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "tq/model/model.h"

namespace tq::model::testing {

class RefForward {
 public:
  explicit RefForward(const Model& m)
      : m_(m),
        c_(m.config),
        kc_(size_t(c_.n_layers) * size_t(c_.max_seq) * size_t(c_.kv_dim())),
        vc_(kc_.size()) {}

  // Logits [vocab] for `token` at position `pos` (positions must come in order 0, 1, 2, ...).
  std::vector<float> forward(int token, int pos) {
    const size_t D = size_t(c_.dim), QD = size_t(c_.q_dim()), KVD = size_t(c_.kv_dim()), HD = size_t(c_.head_dim);
    std::vector<float> x(D), xb(D), q(QD), att_out(QD), o(D), g(size_t(c_.hidden_dim)), u(g.size());
    m_.weights.token_embd.dequantize_row(size_t(token), x.data());
    for (size_t l = 0; l < size_t(c_.n_layers); ++l) {
      const LayerWeights& w = m_.weights.layers[l];
      rmsnorm(xb, x, w.attn_norm);
      float* k = &kc_[(l * size_t(c_.max_seq) + size_t(pos)) * KVD];  // [kv_dim] cache rows
      float* v = &vc_[(l * size_t(c_.max_seq) + size_t(pos)) * KVD];
      w.wq.matvec(xb.data(), q.data());
      w.wk.matvec(xb.data(), k);
      w.wv.matvec(xb.data(), v);
      if (w.bq.present()) add(q.data(), w.bq), add(k, w.bk), add(v, w.bv);
      for (size_t h = 0; h < size_t(c_.n_heads); ++h) rope(&q[h * HD], pos);
      for (size_t h = 0; h < size_t(c_.n_kv_heads); ++h) rope(&k[h * HD], pos);
      const size_t group = size_t(c_.n_heads / c_.n_kv_heads);
      for (size_t h = 0; h < size_t(c_.n_heads); ++h) {
        const size_t kvh = h / group;
        std::vector<float> s(size_t(pos) + 1);
        for (size_t t = 0; t <= size_t(pos); ++t) {
          const float* kt = &kc_[(l * size_t(c_.max_seq) + t) * KVD + kvh * HD];
          float dot = 0;
          for (size_t i = 0; i < HD; ++i) dot += q[h * HD + i] * kt[i];
          s[t] = dot / std::sqrt(float(HD));
        }
        const float mx = *std::max_element(s.begin(), s.end());
        float sum = 0;
        for (float& e : s) sum += (e = std::exp(e - mx));
        for (size_t i = 0; i < HD; ++i) {
          float acc = 0;
          for (size_t t = 0; t <= size_t(pos); ++t) acc += s[t] / sum * vc_[(l * size_t(c_.max_seq) + t) * KVD + kvh * HD + i];
          att_out[h * HD + i] = acc;
        }
      }
      w.wo.matvec(att_out.data(), o.data());
      for (size_t i = 0; i < D; ++i) x[i] += o[i];
      rmsnorm(xb, x, w.ffn_norm);
      w.w_gate.matvec(xb.data(), g.data());
      w.w_up.matvec(xb.data(), u.data());
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      w.w_down.matvec(g.data(), o.data());
      for (size_t i = 0; i < D; ++i) x[i] += o[i];
    }
    rmsnorm(xb, x, m_.weights.output_norm);
    std::vector<float> logits(size_t(c_.vocab_size));
    m_.weights.output.matvec(xb.data(), logits.data());
    return logits;
  }

 private:
  void rmsnorm(std::vector<float>& out, const std::vector<float>& x, const TensorRef& w) const {
    const std::vector<float> wf = w.to_f32();
    float ss = 0;
    for (float e : x) ss += e * e;
    const float r = 1.0f / std::sqrt(ss / float(x.size()) + c_.rms_eps);
    for (size_t i = 0; i < x.size(); ++i) out[i] = wf[i] * (r * x[i]);
  }
  static void add(float* y, const TensorRef& b) {
    const std::vector<float> bf = b.to_f32();
    for (size_t i = 0; i < bf.size(); ++i) y[i] += bf[i];
  }
  void rope(float* v, int pos) const {
    const size_t half = size_t(c_.rope_dim) / 2;
    for (size_t i = 0; i < half; ++i) {
      const float freq = 1.0f / std::pow(c_.rope_theta, float(2 * i) / float(c_.rope_dim));
      const float a = float(pos) * freq, cs = std::cos(a), sn = std::sin(a);
      const size_t i0 = c_.rope_style == RopeStyle::AdjacentPairs ? 2 * i : i;
      const size_t i1 = c_.rope_style == RopeStyle::AdjacentPairs ? 2 * i + 1 : i + half;
      const float a0 = v[i0], a1 = v[i1];
      v[i0] = a0 * cs - a1 * sn;
      v[i1] = a0 * sn + a1 * cs;
    }
  }

  const Model& m_;
  const ModelConfig& c_;
  std::vector<float> kc_, vc_;  // [layer][max_seq][kv_dim]
};

}  // namespace tq::model::testing
