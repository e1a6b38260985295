#include "tq/engine/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "tq/check.h"
#include "tq/backend/cpu/matmul.h"

namespace tq::engine {

using model::TensorRef;

Engine::Engine(const model::Model& m, const KvSpec& spec, const EngineOptions& opts)
    : model_(m), cfg_(m.config), opts_(opts), pool_(opts.threads) {
  const auto& c = cfg_;
  TQ_CHECK(c.n_layers >= 1 && c.dim >= 1 && c.n_heads >= 1 && c.n_kv_heads >= 1 && c.head_dim >= 1 && c.vocab_size >= 1,
           "model has an empty shape ({} layers, dim {}, {} heads, {} KV heads, head dim {})", c.n_layers, c.dim, c.n_heads,
           c.n_kv_heads, c.head_dim);
  TQ_CHECK(c.n_heads % c.n_kv_heads == 0, "query heads ({}) must be a multiple of KV heads ({})", c.n_heads, c.n_kv_heads);
  TQ_CHECK(c.rope_dim % 2 == 0 && c.rope_dim <= c.head_dim, "rope dim {} must be even and <= head dim {}", c.rope_dim, c.head_dim);
  if (opts_.context == 0) opts_.context = uint32_t(std::max(1, c.max_seq));
  TQ_CHECK(opts_.max_chunk >= 1 && opts_.max_seqs >= 1, "max_chunk and max_seqs must be at least 1");
  const uint32_t ps = spec.page_size;
  KvShape shape;
  shape.layers = uint32_t(c.n_layers);
  shape.kv_heads = uint32_t(c.n_kv_heads);
  shape.head_dim = uint32_t(c.head_dim);
  shape.max_chunk = opts_.max_chunk;
  shape.num_pages = opts_.num_pages ? opts_.num_pages : opts_.max_seqs * ((opts_.context + ps - 1) / ps);
  kv_ = std::make_unique<KvStore>(shape, spec);

  const auto norm = [](const TensorRef& t) {
    TQ_CHECK(t.present(), "weight '{}' is absent", t.name);
    return t.to_f32();
  };
  for (const auto& l : m.weights.layers) {
    attn_norm_.push_back(norm(l.attn_norm));
    ffn_norm_.push_back(norm(l.ffn_norm));
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

  // RoPE angles as run.c computes them: theta_i = pos * rope_theta^(-2i/rope_dim), in float.
  const size_t half = size_t(c.rope_dim) / 2;
  rope_cos_.resize(size_t(opts_.context) * half);
  rope_sin_.resize(rope_cos_.size());
  for (uint32_t p = 0; p < opts_.context; ++p)
    for (size_t i = 0; i < half; ++i) {
      const float freq = 1.0f / std::pow(c.rope_theta, float(2 * i) / float(c.rope_dim));
      const float a = float(p) * freq;
      rope_cos_[p * half + i] = std::cos(a);
      rope_sin_[p * half + i] = std::sin(a);
    }
}

int Engine::add_sequence() {
  auto s = std::make_unique<SeqKv>();
  kv_->init_sequence(*s);
  for (size_t i = 0; i < seqs_.size(); ++i)
    if (!seqs_[i]) {
      seqs_[i] = std::move(s);
      return int(i);
    }
  seqs_.push_back(std::move(s));
  return int(seqs_.size() - 1);
}

SeqKv& Engine::seq(int id) {
  TQ_CHECK(id >= 0 && size_t(id) < seqs_.size() && seqs_[size_t(id)], "no sequence {}", id);
  return *seqs_[size_t(id)];
}
const SeqKv& Engine::seq(int id) const { return const_cast<Engine*>(this)->seq(id); }

void Engine::remove_sequence(int id) {
  kv_->release_sequence(seq(id));
  seqs_[size_t(id)].reset();
}
void Engine::reset_sequence(int id) { kv_->release_sequence(seq(id)); }
uint32_t Engine::seq_len(int id) const { return seq(id).len; }
size_t Engine::kv_bytes(int id) const { return kv_->bytes_used(seq(id)); }

void Engine::rmsnorm(const float* x, const std::vector<float>& w, float* out) const {
  const size_t n = w.size();
  float ss = 0;
  for (size_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / float(n) + cfg_.rms_eps);
  for (size_t i = 0; i < n; ++i) out[i] = w[i] * (r * x[i]);
}

void Engine::rope(float* v, uint32_t pos) const {
  const size_t half = size_t(cfg_.rope_dim) / 2;
  const float* cs = &rope_cos_[pos * half];
  const float* sn = &rope_sin_[pos * half];
  const bool adjacent = cfg_.rope_style == model::RopeStyle::AdjacentPairs;
  for (size_t i = 0; i < half; ++i) {
    const size_t i0 = adjacent ? 2 * i : i, i1 = adjacent ? 2 * i + 1 : i + half;
    const float a0 = v[i0], a1 = v[i1];
    v[i0] = a0 * cs[i] - a1 * sn[i];
    v[i1] = a0 * sn[i] + a1 * cs[i];
  }
}

std::vector<float> Engine::forward(const std::vector<BatchItem>& batch) {
  const auto& c = cfg_;
  const auto& W = model_.weights;
  size_t N = 0;
  for (const BatchItem& it : batch) {
    const SeqKv& s = seq(it.seq);
    TQ_CHECK(!it.tokens.empty(), "sequence {}: empty batch item", it.seq);
    TQ_CHECK(size_t(s.len) + it.tokens.size() <= opts_.context,
             "sequence {} would reach {} tokens, beyond the context of {} (shorten the prompt or raise --ctx)", it.seq,
             size_t(s.len) + it.tokens.size(), opts_.context);
    for (int t : it.tokens) TQ_CHECK(t >= 0 && t < c.vocab_size, "token id {} is outside the vocabulary ({})", t, c.vocab_size);
    N += it.tokens.size();
  }
  TQ_CHECK(N >= 1 && N <= opts_.max_chunk, "a forward pass takes 1..{} tokens, got {}", opts_.max_chunk, N);
  // Reserve positions (pages) for every item; undo on failure so no sequence changes.
  std::vector<uint32_t> first(batch.size());  // [items] position of each item's first new token
  for (size_t b = 0; b < batch.size(); ++b) {
    SeqKv& s = seq(batch[b].seq);
    first[b] = s.len;
    try {
      kv_->reserve(s, uint32_t(batch[b].tokens.size()));
    } catch (...) {
      for (size_t i = 0; i < b; ++i) seq(batch[i].seq).len = first[i];
      throw;
    }
  }
  const size_t D = size_t(c.dim), QD = size_t(c.q_dim()), KVD = size_t(c.kv_dim()), HD = size_t(c.head_dim), F = size_t(c.hidden_dim);
  std::vector<float> x(N * D), xb(N * D), o(N * D);  // [N][dim] residual stream, normed input, projection output
  std::vector<float> q(N * QD), att(N * QD);          // [N][q_dim]
  std::vector<float> k(N * KVD), v(N * KVD);          // [N][kv_dim]
  std::vector<float> g(N * F), u(N * F);              // [N][hidden]
  std::vector<uint32_t> pos(N);                       // [N] position of each row
  {
    size_t r = 0;
    for (size_t b = 0; b < batch.size(); ++b)
      for (size_t j = 0; j < batch[b].tokens.size(); ++j, ++r) {
        W.token_embd.dequantize_row(size_t(batch[b].tokens[j]), &x[r * D]);
        pos[r] = first[b] + uint32_t(j);
      }
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
    matmul(w.wq, xb.data(), N, q.data(), pool_);
    matmul(w.wk, xb.data(), N, k.data(), pool_);
    matmul(w.wv, xb.data(), N, v.data(), pool_);
    add_bias(w.bq, q, QD);
    add_bias(w.bk, k, KVD);
    add_bias(w.bv, v, KVD);
    for (size_t r = 0; r < N; ++r) {
      for (size_t h = 0; h < size_t(c.n_heads); ++h) rope(&q[r * QD + h * HD], pos[r]);
      for (size_t h = 0; h < size_t(c.n_kv_heads); ++h) rope(&k[r * KVD + h * HD], pos[r]);
    }
    // Quantize on write, then attend: a chunk's queries see the chunk's own keys (causal).
    size_t r0 = 0;
    for (size_t b = 0; b < batch.size(); ++b) {
      SeqKv& s = seq(batch[b].seq);
      const size_t n = batch[b].tokens.size();
      for (size_t j = 0; j < n; ++j) kv_->write(uint32_t(l), s, pos[r0 + j], &k[(r0 + j) * KVD], &v[(r0 + j) * KVD]);
      kv_->attend(uint32_t(l), s, first[b], uint32_t(n), uint32_t(c.n_heads), &q[r0 * QD], &att[r0 * QD], pool_);
      r0 += n;
    }
    matmul(w.wo, att.data(), N, o.data(), pool_);
    for (size_t i = 0; i < N * D; ++i) x[i] += o[i];
    for (size_t r = 0; r < N; ++r) rmsnorm(&x[r * D], ffn_norm_[l], &xb[r * D]);
    matmul(w.w_gate, xb.data(), N, g.data(), pool_);
    matmul(w.w_up, xb.data(), N, u.data(), pool_);
    for (size_t i = 0; i < N * F; ++i) g[i] = g[i] * (1.0f / (1.0f + std::exp(-g[i]))) * u[i];  // SwiGLU
    matmul(w.w_down, g.data(), N, o.data(), pool_);
    for (size_t i = 0; i < N * D; ++i) x[i] += o[i];
  }
  // Final norm and classifier only for the rows whose logits are wanted.
  std::vector<size_t> rows;
  {
    size_t r0 = 0;
    for (const BatchItem& it : batch) {
      if (it.all_logits)
        for (size_t j = 0; j < it.tokens.size(); ++j) rows.push_back(r0 + j);
      else
        rows.push_back(r0 + it.tokens.size() - 1);
      r0 += it.tokens.size();
    }
  }
  std::vector<float> xn(rows.size() * D);  // [rows][dim]
  for (size_t i = 0; i < rows.size(); ++i) rmsnorm(&x[rows[i] * D], out_norm_, &xn[i * D]);
  std::vector<float> logits(rows.size() * size_t(c.vocab_size));
  matmul(W.output, xn.data(), rows.size(), logits.data(), pool_);
  return logits;
}

std::vector<float> Engine::prefill(int s, const std::vector<int>& tokens, bool all_logits) {
  TQ_CHECK(!tokens.empty(), "nothing to prefill");
  TQ_CHECK(size_t(seq(s).len) + tokens.size() <= opts_.context, "the prompt ({} tokens) is longer than the context ({} tokens)",
           size_t(seq(s).len) + tokens.size(), opts_.context);
  std::vector<float> out;
  for (size_t i = 0; i < tokens.size(); i += opts_.max_chunk) {
    BatchItem it;
    it.seq = s;
    it.tokens.assign(tokens.begin() + long(i), tokens.begin() + long(std::min(tokens.size(), i + opts_.max_chunk)));
    it.all_logits = all_logits;
    std::vector<float> l = forward({it});
    if (all_logits)
      out.insert(out.end(), l.begin(), l.end());
    else
      out = std::move(l);
  }
  return out;
}

}  // namespace tq::engine
