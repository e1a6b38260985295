#include "tq/backend/cpu/runner.h"

#include <algorithm>
#include <cmath>

#include "tq/backend/cpu/matmul.h"
#include "tq/check.h"

namespace tq::cpu {

using engine::StepSeq;
using model::TensorRef;

namespace {

// The KV shape of a model, after the checks that make it a model this runner can run.
KvShape kv_shape(const model::ModelConfig& c, const engine::RunnerOptions& o, uint32_t page_size) {
  TQ_CHECK(c.n_layers >= 1 && c.dim >= 1 && c.n_heads >= 1 && c.n_kv_heads >= 1 && c.head_dim >= 1 && c.vocab_size >= 1,
           "model has an empty shape ({} layers, dim {}, {} heads, {} KV heads, head dim {})", c.n_layers, c.dim, c.n_heads,
           c.n_kv_heads, c.head_dim);
  TQ_CHECK(c.n_heads % c.n_kv_heads == 0, "query heads ({}) must be a multiple of KV heads ({})", c.n_heads, c.n_kv_heads);
  TQ_CHECK(c.rope_dim % 2 == 0 && c.rope_dim <= c.head_dim, "rope dim {} must be even and <= head dim {}", c.rope_dim, c.head_dim);
  TQ_CHECK(o.max_chunk >= 1 && o.context >= 1, "max_chunk and context must be at least 1");
  // A sequence's chunk, which the side and window rings hold beyond the window: a step may be
  // larger (many sequences), one sequence's part never more than the context.
  const uint32_t seq_chunk = std::min(o.max_chunk, o.context);
  KvShape shape{uint32_t(c.n_layers), uint32_t(c.n_kv_heads), uint32_t(c.head_dim), o.num_pages, seq_chunk, o.prefix_tails,
                c.local_layers()};
  shape.sliding_window = uint32_t(std::max(c.sliding_window, 0));
  shape.max_seqs = o.max_seqs;
  if (!o.swa_full) shape.ring = WindowRing::make(shape.sliding_window, o.context, seq_chunk, page_size, o.prefix_tails > 0);
  return shape;
}

}  // namespace

CpuModelRunner::CpuModelRunner(const model::Model& m, const KvSpec& spec, const engine::RunnerOptions& opts)
    : model_(m), cfg_(m.config), opts_(opts), pool_(opts.threads), kv_(kv_shape(m.config, opts, spec.format.page_size), spec) {
  tails_ = kv_.tail_slots();
  TQ_CHECK(!opts.dense_prompts, "dense prompts are a CUDA runner option (cuDNN's fused attention): the CPU runner attends the cache");
  const auto& c = cfg_;
  const auto norm = [](const TensorRef& t) {
    TQ_CHECK(t.present(), "weight '{}' is absent", t.name);
    return t.to_f32();
  };
  for (const auto& l : m.weights.layers) {
    attn_norm_.push_back(norm(l.attn_norm));
    ffn_norm_.push_back(norm(l.ffn_norm));
    if (c.qk_norm) q_norm_.push_back(norm(l.q_norm)), k_norm_.push_back(norm(l.k_norm));
    if (c.post_norms) attn_post_norm_.push_back(norm(l.attn_post_norm)), ffn_post_norm_.push_back(norm(l.ffn_post_norm));
    for (const TensorRef* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      TQ_CHECK(t->present(), "weight '{}' is absent", t->name);
      model::ggml_check_dequantizable(t->type, t->name);
    }
  }
  TQ_CHECK(m.weights.layers.size() == size_t(c.n_layers), "model lists {} layers but has weights for {}", c.n_layers,
           m.weights.layers.size());
  out_norm_ = norm(m.weights.output_norm);
  TQ_CHECK(m.weights.output.present() && m.weights.token_embd.present(), "model lacks its token embedding or output matrix");
  model::ggml_check_dequantizable(m.weights.output.type, m.weights.output.name);

  model::rope_angles(c, opts_.context, rope_cos_, rope_sin_);
  if (c.sliding_window > 0) model::rope_angles_local(c, opts_.context, rope_cos_local_, rope_sin_local_);
  // The key centre's map over the positions of its span, the runner's context unless told
  // (model::rope_centre).
  if (spec.policy.key_centre && c.rope_dim >= 2) {
    const uint32_t span = opts_.centre_positions();
    model::rope_mean_rotation(c, span, false, centre_a_, centre_b_, &rope_cos_, &rope_sin_);
    if (c.sliding_window > 0) model::rope_mean_rotation(c, span, true, centre_a_local_, centre_b_local_, &rope_cos_local_, &rope_sin_local_);
  }
}

std::vector<float> CpuModelRunner::key_centre(const float* k, const uint32_t* pos, size_t n, bool local) const {
  const size_t H = size_t(cfg_.n_kv_heads), HD = size_t(cfg_.head_dim);
  size_t used = 0;
  for (size_t r = 0; r < n; ++r) used += pos[r] != 0;
  const bool all = used == 0;  // only position 0: take it rather than nothing
  if (all) used = n;
  std::vector<float> out(H * HD);
  std::vector<double> m(HD);
  for (size_t h = 0; h < H; ++h) {
    std::fill(m.begin(), m.end(), 0.0);
    for (size_t r = 0; r < n; ++r)
      if (all || pos[r] != 0)
        for (size_t i = 0; i < HD; ++i) m[i] += k[(r * H + h) * HD + i];
    for (double& x : m) x /= double(used);
    const auto& a = local ? centre_a_local_ : centre_a_;
    const auto& b = local ? centre_b_local_ : centre_b_;
    model::rope_centre(cfg_, a.data(), b.data(), m.data(), &out[h * HD]);
  }
  return out;
}

std::string CpuModelRunner::describe() const {
  std::string d = "cpu, " + std::to_string(pool_.size()) + " threads";
  const KvShape& k = kv_.shape();
  if (kv_.ring_bytes())
    d += fmt::format(", window rings {:.1f} MiB ({} sequences of {} pages)", double(kv_.ring_bytes()) * k.max_seqs / 1048576.0, k.max_seqs,
                     k.ring.pages);
  return d;
}

void CpuModelRunner::rmsnorm(const float* x, const std::vector<float>& w, float* out) const {
  const size_t n = w.size();
  float ss = 0;
  for (size_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / float(n) + cfg_.rms_eps);
  for (size_t i = 0; i < n; ++i) out[i] = w[i] * (r * x[i]);
}

void CpuModelRunner::rope(float* v, uint32_t pos, bool local) const {
  const size_t half = size_t(cfg_.rope_dim) / 2;
  const float* cs = &(local ? rope_cos_local_ : rope_cos_)[pos * half];
  const float* sn = &(local ? rope_sin_local_ : rope_sin_)[pos * half];
  const bool adjacent = cfg_.rope_style == model::RopeStyle::AdjacentPairs;
  for (size_t i = 0; i < half; ++i) {
    const size_t i0 = adjacent ? 2 * i : i, i1 = adjacent ? 2 * i + 1 : i + half;
    const float a0 = v[i0], a1 = v[i1];
    v[i0] = a0 * cs[i] - a1 * sn[i];
    v[i1] = a0 * sn[i] + a1 * cs[i];
  }
}

std::vector<float> CpuModelRunner::forward(const std::vector<StepSeq>& step) {
  const auto& c = cfg_;
  const auto& W = model_.weights;
  size_t N = 0;
  for (const StepSeq& it : step) N += it.n;
  const size_t D = size_t(c.dim), QD = size_t(c.q_dim()), KVD = size_t(c.kv_dim()), HD = size_t(c.head_dim), F = size_t(c.hidden_dim);
  std::vector<float> x(N * D), xb(N * D), o(N * D);  // [N][dim] residual stream, normed input, projection output
  std::vector<float> q(N * QD), att(N * QD);          // [N][q_dim]
  std::vector<float> k(N * KVD), v(N * KVD);          // [N][kv_dim]
  std::vector<float> g(N * F), u(N * F);              // [N][hidden]
  std::vector<uint32_t> pos(N);                       // [N] position of each row
  {
    std::vector<KvStore::StepSpan> spans;
    for (const StepSeq& it : step) spans.push_back({it.seq, it.first, it.n});
    kv_.begin_step(spans);
  }
  {
    size_t r = 0;
    for (const StepSeq& it : step)
      for (uint32_t j = 0; j < it.n; ++j, ++r) {
        W.token_embd.dequantize_row(size_t(it.tokens[j]), &x[r * D]);
        pos[r] = it.first + j;
      }
    if (c.embed_scale != 1.0f)
      for (float& e : x) e *= c.embed_scale;
  }
  const auto add_bias = [&](const TensorRef& bias, std::vector<float>& y, size_t width) {
    if (!bias.present()) return;
    const std::vector<float> bf = bias.to_f32();
    for (size_t r = 0; r < N; ++r)
      for (size_t i = 0; i < width; ++i) y[r * width + i] += bf[i];
  };
  for (size_t l = 0; l < size_t(c.n_layers); ++l) {
    const model::LayerWeights& w = W.layers[l];
    for (size_t r = 0; r < N; ++r) rmsnorm(&x[r * D], attn_norm_[l], &xb[r * D]);
    {
      const TensorRef* qkv[3] = {&w.wq, &w.wk, &w.wv};
      float* out[3] = {q.data(), k.data(), v.data()};
      matmul_many(qkv, xb.data(), N, out, pool_, opts_.exact_products);  // one wait for the threads, not three
    }
    add_bias(w.bq, q, QD);
    add_bias(w.bk, k, KVD);
    add_bias(w.bv, v, KVD);
    if (c.qk_norm)  // in place: rmsnorm reads each element before it writes it
      for (size_t r = 0; r < N; ++r) {
        for (size_t h = 0; h < size_t(c.n_heads); ++h) rmsnorm(&q[r * QD + h * HD], q_norm_[l], &q[r * QD + h * HD]);
        for (size_t h = 0; h < size_t(c.n_kv_heads); ++h) rmsnorm(&k[r * KVD + h * HD], k_norm_[l], &k[r * KVD + h * HD]);
      }
    const bool local = c.layer_is_local(int(l));
    // The layer's first step fixes its key centre: from the keys before RoPE, which share one offset.
    std::vector<float> centre;  // [kv_heads][head_dim]
    if (kv_.spec().policy.key_centre && !kv_.fixed(uint32_t(l))) centre = key_centre(k.data(), pos.data(), N, local);
    for (size_t r = 0; r < N; ++r) {
      for (size_t h = 0; h < size_t(c.n_heads); ++h) rope(&q[r * QD + h * HD], pos[r], local);
      for (size_t h = 0; h < size_t(c.n_kv_heads); ++h) rope(&k[r * KVD + h * HD], pos[r], local);
    }
    // Fractional-width formats take their outlier channels from the first rows the layer sees.
    kv_.calibrate(uint32_t(l), N, pos.data(), k.data(), v.data(), centre.empty() ? nullptr : centre.data());
    // Quantize on write, then attend: a chunk's queries see the chunk's own keys (causal).
    size_t r0 = 0;
    // A sliding-window layer in the rings takes a sequence's tokens in sub-steps (kv/window_ring.h).
    const uint32_t sub = kv_.in_ring(uint32_t(l)) ? kv_.shape().ring.step : UINT32_MAX;
    for (const StepSeq& it : step) {
      const SeqPages s{it.seq, it.block_table};
      for (uint32_t j0 = 0; j0 < it.n; j0 += std::min(sub, it.n)) {
        const uint32_t j1 = std::min(it.n, j0 + std::min(sub, it.n));
        for (size_t j = j0; j < j1; ++j) kv_.write(uint32_t(l), s, pos[r0 + j], &k[(r0 + j) * KVD], &v[(r0 + j) * KVD]);
        kv_.attend(uint32_t(l), s, it.first + j0, j1 - j0, uint32_t(c.n_heads), &q[(r0 + j0) * QD], &att[(r0 + j0) * QD], pool_,
                   c.attn_scale, uint32_t(c.layer_window(int(l))));
      }
      r0 += it.n;
    }
    matmul(w.wo, att.data(), N, o.data(), pool_, opts_.exact_products);
    if (c.post_norms)
      for (size_t r = 0; r < N; ++r) rmsnorm(&o[r * D], attn_post_norm_[l], &o[r * D]);
    for (size_t i = 0; i < N * D; ++i) x[i] += o[i];
    for (size_t r = 0; r < N; ++r) rmsnorm(&x[r * D], ffn_norm_[l], &xb[r * D]);
    matmul_swiglu(w.w_gate, w.w_up, xb.data(), N, g.data(), u.data(), pool_, opts_.exact_products, c.ffn_act);  // g = act(gate) * up
    matmul(w.w_down, g.data(), N, o.data(), pool_, opts_.exact_products);
    if (c.post_norms)
      for (size_t r = 0; r < N; ++r) rmsnorm(&o[r * D], ffn_post_norm_[l], &o[r * D]);
    for (size_t i = 0; i < N * D; ++i) x[i] += o[i];
  }
  // Final norm and classifier only for the rows whose logits are wanted.
  std::vector<size_t> rows;
  {
    size_t r0 = 0;
    for (const StepSeq& it : step) {
      if (it.all_logits)
        for (size_t j = 0; j < it.n; ++j) rows.push_back(r0 + j);
      else
        rows.push_back(r0 + it.n - 1);
      r0 += it.n;
    }
  }
  std::vector<float> xn(rows.size() * D);  // [rows][dim]
  for (size_t i = 0; i < rows.size(); ++i) rmsnorm(&x[rows[i] * D], out_norm_, &xn[i * D]);
  std::vector<float> logits(rows.size() * size_t(c.vocab_size));
  matmul(W.output, xn.data(), rows.size(), logits.data(), pool_, opts_.exact_products);
  return logits;
}

}  // namespace tq::cpu
