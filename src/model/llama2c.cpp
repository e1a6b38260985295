// llama2.c legacy checkpoint (karpathy/llama2.c run.c, read_checkpoint + memory_map_weights):
//
//   header: int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//           (vocab_size < 0: the classifier is stored separately, not shared with the embedding)
//   then float32 arrays, in this order:
//     token_embedding [vocab][dim]
//     rms_att         [layer][dim]
//     wq              [layer][q_dim][dim]      q_dim  = n_heads * head_size (== dim)
//     wk              [layer][kv_dim][dim]     kv_dim = n_kv_heads * head_size
//     wv              [layer][kv_dim][dim]
//     wo              [layer][dim][q_dim]
//     rms_ffn         [layer][dim]
//     w1              [layer][hidden][dim]
//     w2              [layer][dim][hidden]
//     w3              [layer][hidden][dim]
//     rms_final       [dim]
//     freq_cis_real   [seq_len][head_size/2]   (legacy RoPE tables, unused: skipped)
//     freq_cis_imag   [seq_len][head_size/2]
//     wcls            [vocab][dim]             (only when vocab_size < 0)
//
// Matrix orientation: run.c's comments list wq as "(layer, dim, n_heads * head_size)", but its
// matmul(xout, x, w, n, d) computes xout[i] = sum_j w[i*n + j] x[j] for i < d, and is called as
// matmul(q, xb, wq, dim, dim), matmul(k, xb, wk, dim, kv_dim), matmul(hb, xb, w1, dim, hidden),
// matmul(xb, hb, w2, hidden, dim): every matrix is [out][in] row-major, as in PyTorch's
// nn.Linear.weight, which export.py writes as is. That is the TensorRef convention.
// RoPE in run.c rotates adjacent pairs (2i, 2i+1) of each head with theta 10000; rmsnorm eps 1e-5.
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "tq/check.h"
#include "tq/format.h"
#include "tq/model/model.h"

namespace tq::model {

namespace {

uint64_t mul(uint64_t a, uint64_t b, const std::string& what) {
  uint64_t r;
  TQ_CHECK(!__builtin_mul_overflow(a, b, &r), "llama2.c checkpoint '{}': size overflows", what);
  return r;
}

}  // namespace

Model load_llama2c(const std::string& path) { return load_llama2c(ByteSource::map_file(path)); }

Model load_llama2c(std::shared_ptr<const ByteSource> src) {
  const std::string& fname = src->name();
  constexpr size_t kHeader = 7 * sizeof(int32_t);
  TQ_CHECK(src->size() >= kHeader, "llama2.c checkpoint '{}': {} bytes, smaller than the 28-byte header", fname,
           src->size());
  int32_t h[7];
  std::memcpy(h, src->data(), kHeader);
  // The newer export formats (export.py "version 1/2") start with the magic "ak42".
  TQ_CHECK(uint32_t(h[0]) != 0x616b3432u,
           "llama2.c checkpoint '{}': the 'ak42' export format (version {}) is not supported, only the legacy one",
           fname, h[1]);
  const int32_t dim = h[0], hidden = h[1], n_layers = h[2], n_heads = h[3], n_kv = h[4], vocab_raw = h[5],
                seq_len = h[6];
  const auto bad = [&](const char* field, int32_t v) {
    return fmt::format("llama2.c checkpoint '{}': invalid header field {} = {}", fname, field, v);
  };
  TQ_CHECK(dim > 0, "{}", bad("dim", dim));
  TQ_CHECK(hidden > 0, "{}", bad("hidden_dim", hidden));
  TQ_CHECK(n_layers > 0 && uint32_t(n_layers) <= kMaxLayers, "{} (1..{} layers)", bad("n_layers", n_layers), kMaxLayers);
  TQ_CHECK(n_heads > 0 && dim % n_heads == 0, "{} (must divide dim {})", bad("n_heads", n_heads), dim);
  TQ_CHECK(n_kv > 0 && n_heads % n_kv == 0, "{} (must divide n_heads {})", bad("n_kv_heads", n_kv), n_heads);
  TQ_CHECK(vocab_raw != 0 && vocab_raw != std::numeric_limits<int32_t>::min(), "{}", bad("vocab_size", vocab_raw));
  TQ_CHECK(seq_len > 0, "{}", bad("seq_len", seq_len));
  const int32_t head_size = dim / n_heads;
  TQ_CHECK(head_size % 2 == 0, "llama2.c checkpoint '{}': head size {} (dim {} / n_heads {}) is odd: RoPE needs pairs",
           fname, head_size, dim, n_heads);
  const bool shared = vocab_raw > 0;
  const uint64_t vocab = uint64_t(shared ? vocab_raw : -int64_t(vocab_raw));

  Model m;
  m.storage = src;
  ModelConfig& cfg = m.config;
  cfg.source = WeightSource::Llama2c;
  cfg.arch = Arch::Llama;
  cfg.n_layers = n_layers;
  cfg.dim = dim;
  cfg.hidden_dim = hidden;
  cfg.n_heads = n_heads;
  cfg.n_kv_heads = n_kv;
  cfg.head_dim = head_size;
  cfg.vocab_size = int(vocab);
  cfg.max_seq = seq_len;
  cfg.rope_dim = head_size;
  cfg.rope_theta = 10000.0f;
  cfg.rms_eps = 1e-5f;
  cfg.rope_style = RopeStyle::AdjacentPairs;
  cfg.tied_embeddings = shared;
  cfg.has_qkv_bias = false;
  cfg.bos_id = 1;  // llama2.c's encode(): BOS = 1, EOS = 2
  cfg.eos_id = 2;
  cfg.chat_template = ChatTemplate::None;

  // Offsets in floats of each array, with overflow-checked sizes.
  const uint64_t L = uint64_t(n_layers), D = uint64_t(dim), H = uint64_t(hidden);
  const uint64_t QD = uint64_t(n_heads) * uint64_t(head_size), KVD = uint64_t(n_kv) * uint64_t(head_size);
  uint64_t off = 0;
  const auto take = [&](uint64_t n) {
    const uint64_t at = off;
    TQ_CHECK(!__builtin_add_overflow(off, n, &off), "llama2.c checkpoint '{}': size overflows", fname);
    return at;
  };
  const uint64_t o_emb = take(mul(vocab, D, fname));
  const uint64_t o_rms_att = take(mul(L, D, fname));
  const uint64_t o_wq = take(mul(mul(L, QD, fname), D, fname));
  const uint64_t o_wk = take(mul(mul(L, KVD, fname), D, fname));
  const uint64_t o_wv = take(mul(mul(L, KVD, fname), D, fname));
  const uint64_t o_wo = take(mul(mul(L, D, fname), QD, fname));
  const uint64_t o_rms_ffn = take(mul(L, D, fname));
  const uint64_t o_w1 = take(mul(mul(L, H, fname), D, fname));
  const uint64_t o_w2 = take(mul(mul(L, D, fname), H, fname));
  const uint64_t o_w3 = take(mul(mul(L, H, fname), D, fname));
  const uint64_t o_rms_final = take(D);
  take(mul(uint64_t(seq_len), uint64_t(head_size / 2), fname) * 2);  // freq_cis_real + freq_cis_imag
  const uint64_t o_wcls = shared ? o_emb : take(mul(vocab, D, fname));
  const uint64_t expected_bytes = mul(off, 4, fname) + kHeader;
  TQ_CHECK(expected_bytes == src->size(),
           "llama2.c checkpoint '{}': file has {} bytes but the header (dim {}, hidden {}, layers {}, heads {}, kv heads "
           "{}, vocab {}{}, seq_len {}) implies {}",
           fname, src->size(), dim, hidden, n_layers, n_heads, n_kv, vocab, shared ? "" : " unshared", seq_len,
           expected_bytes);

  const uint8_t* base = src->data() + kHeader;  // float arrays: 4-byte aligned (mmap is page aligned)
  const auto ref = [&](std::string name, uint64_t float_off, uint64_t rows, uint64_t cols) {
    TensorRef t;
    t.name = std::move(name);
    t.type = GgmlType::F32;
    t.data = base + float_off * 4;
    t.n_rows = size_t(rows);
    t.n_cols = size_t(cols);
    t.check_finite(fmt::format("llama2.c checkpoint '{}': weight", fname));
    return t;
  };
  Weights& w = m.weights;
  w.token_embd = ref("token_embedding", o_emb, vocab, D);
  w.layers.resize(size_t(L));
  for (uint64_t l = 0; l < L; ++l) {
    LayerWeights& lw = w.layers[size_t(l)];
    const std::string sfx = fmt::format("[{}]", l);
    lw.attn_norm = ref("rms_att" + sfx, o_rms_att + l * D, 1, D);
    lw.wq = ref("wq" + sfx, o_wq + l * QD * D, QD, D);
    lw.wk = ref("wk" + sfx, o_wk + l * KVD * D, KVD, D);
    lw.wv = ref("wv" + sfx, o_wv + l * KVD * D, KVD, D);
    lw.wo = ref("wo" + sfx, o_wo + l * D * QD, D, QD);
    lw.ffn_norm = ref("rms_ffn" + sfx, o_rms_ffn + l * D, 1, D);
    lw.w_gate = ref("w1" + sfx, o_w1 + l * H * D, H, D);
    lw.w_down = ref("w2" + sfx, o_w2 + l * D * H, D, H);
    lw.w_up = ref("w3" + sfx, o_w3 + l * H * D, H, D);
  }
  w.output_norm = ref("rms_final", o_rms_final, 1, D);
  w.output = shared ? w.token_embd : ref("wcls", o_wcls, vocab, D);
  return m;
}

}  // namespace tq::model
