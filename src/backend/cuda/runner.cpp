#include "tq/backend/cuda/runner.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "layers.h"
#include "tq/check.h"
#include "tq/cuda/device_format.h"
#include "tq/cuda/kernels.h"
#include "tq/numeric.h"

namespace tq::cuda {
namespace {

using engine::StepSeq;
using layers::bf16_t;
using model::TensorRef;

void check(cudaError_t e, const char* what) { TQ_CHECK(e == cudaSuccess, "CUDA runner: {}: {}", what, cudaGetErrorString(e)); }
void check(cublasStatus_t e, const char* what) { TQ_CHECK(e == CUBLAS_STATUS_SUCCESS, "CUDA runner: {}: cuBLAS status {}", what, int(e)); }

// A device array of n T.
template <class T>
struct Buf {
  DevicePtr p;
  size_t n = 0;
  T* get() const { return static_cast<T*>(p.get()); }
};
template <class T>
Buf<T> alloc(size_t n, const char* what) {
  return Buf<T>{device_alloc(n * sizeof(T), what), n};
}
template <class T>
Buf<T> upload(const std::vector<T>& h, const char* what) {
  Buf<T> b = alloc<T>(h.size(), what);
  check(cudaMemcpy(b.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), what);
  return b;
}
// A weight matrix [rows][cols] as bf16 (dequantized on the host, rounded once).
struct Matrix {
  Buf<bf16_t> w;
  uint32_t rows = 0, cols = 0;
};
Matrix upload_matrix(const TensorRef& t) {
  TQ_CHECK(t.present(), "weight '{}' is absent", t.name);
  const std::vector<float> f = t.to_f32();
  std::vector<bf16_t> b(f.size());
  for (size_t i = 0; i < f.size(); ++i) b[i] = f32_to_bf16(f[i]);
  return Matrix{upload(b, t.name.c_str()), uint32_t(t.n_rows), uint32_t(t.n_cols)};
}
Buf<float> upload_vector(const TensorRef& t) {
  TQ_CHECK(t.present(), "weight '{}' is absent", t.name);
  return upload(t.to_f32(), t.name.c_str());
}

struct Layer {
  Matrix wq, wk, wv, wo, gate, up, down;
  Buf<float> attn_norm, ffn_norm, bq, bk, bv;  // biases: empty when absent
};

class CudaModelRunner : public engine::ModelRunner {
 public:
  CudaModelRunner(const model::Model& m, const KvSpec& spec, const engine::RunnerOptions& o);
  ~CudaModelRunner() override {
    if (blas_) cublasDestroy(blas_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  const model::ModelConfig& config() const override { return cfg_; }
  std::string describe() const override { return describe_; }
  void add_sequence(int) override {}
  std::vector<float> forward(const std::vector<StepSeq>& step) override;
  size_t page_bytes() const override { return page_bytes_; }
  size_t side_bytes() const override { return 0; }

 private:
  // y[n][w.rows] = x[n][w.cols] w^T (bf16 operands, fp32 out).
  void gemm(const Matrix& w, const bf16_t* x, uint32_t n, float* y);
  CacheView view(uint32_t layer) const {
    const uint32_t L = uint32_t(cfg_.n_layers), local = spec_.local_layer(layer, L);
    return spec_.is_edge_layer(layer, L) ? edge_->view(local) : main_->view(local);
  }
  void attend(uint32_t layer, const std::vector<StepSeq>& step);

  model::ModelConfig cfg_;
  KvSpec spec_;
  engine::RunnerOptions opts_;
  std::string describe_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  Matrix embd_;                      // [vocab][dim]
  Matrix output_;                    // [vocab][dim]; empty when tied to the embedding
  bool tied_ = false;
  std::vector<Layer> layers_;
  Buf<float> out_norm_, rope_cos_, rope_sin_;  // [dim], [context][rope_dim / 2] twice
  std::unique_ptr<DeviceKvCache> main_, edge_;  // edge_ only with edge layers; same page ids
  size_t page_bytes_ = 0;
  // Scratch for max_chunk rows.
  Buf<float> x_, q_, k_, v_, att_, o_, g_, u_, logits_;  // [N][dim], [N][q_dim], [N][kv_dim] x2, [N][q_dim], [N][dim], [N][hidden] x2, [N][vocab]
  Buf<bf16_t> hb_;                                      // [N][max(dim, q_dim, hidden)] bf16 operands
  Buf<int32_t> tokens_, pos_, rows_, tables_, lens_;    // [N], [N], [N], [N][max pages], [N]
  Buf<int64_t> slots_;                                  // [N]
  Buf<uint8_t> workspace_;                              // attention, grown as needed
  uint32_t max_pages_ = 0;
};

CudaModelRunner::CudaModelRunner(const model::Model& m, const KvSpec& spec, const engine::RunnerOptions& o)
    : cfg_(m.config), spec_(spec), opts_(o) {
  std::string why;
  TQ_CHECK(can_run(cfg_, spec, &why), "{}", why);
  const auto& c = cfg_;
  const uint32_t L = uint32_t(c.n_layers), N = o.max_chunk, ps = spec.format.page_size;
  // What the device must hold, checked against its free memory before anything is allocated.
  size_t weights = 0;
  const auto count = [&](const TensorRef& t, size_t elem) { weights += t.present() ? t.n_rows * t.n_cols * elem : 0; };
  count(m.weights.token_embd, 2);
  if (m.weights.output.data != m.weights.token_embd.data) count(m.weights.output, 2);
  TQ_CHECK(m.weights.layers.size() == size_t(c.n_layers), "model lists {} layers but has weights for {}", c.n_layers, m.weights.layers.size());
  for (const auto& l : m.weights.layers)
    for (const TensorRef* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) count(*t, 2);
  const uint32_t n_edge = spec.edge_layer_count(L), n_main = L - n_edge;
  std::unique_ptr<CacheFormat> fmain, fedge;
  if (n_main) fmain = std::make_unique<CacheFormat>(n_main, c.n_kv_heads, c.head_dim, spec.layer_format(spec.policy.edge_layers, L));
  if (n_edge) fedge = std::make_unique<CacheFormat>(n_edge, c.n_kv_heads, c.head_dim, spec.layer_format(0, L));
  page_bytes_ = (fmain ? fmain->page_bytes() : 0) + (fedge ? fedge->page_bytes() : 0);
  const size_t pool = page_bytes_ * o.num_pages;
  const size_t scratch = size_t(N) * 4 * (2 * size_t(c.dim) + 2 * size_t(c.q_dim()) + 2 * size_t(c.kv_dim()) + 2 * size_t(c.hidden_dim) + size_t(c.vocab_size));
  size_t free_b = 0, total_b = 0;
  check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  const double gib = double(1ull << 30);
  TQ_CHECK(weights + pool + scratch < free_b, "the model needs {:.2f} GiB of GPU memory (weights {:.2f}, KV pool of {} pages {:.2f}, "
           "scratch {:.2f}) but {:.2f} GiB of {:.2f} are free", (weights + pool + scratch) / gib, weights / gib, o.num_pages, pool / gib,
           scratch / gib, free_b / gib, total_b / gib);

  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  check(cublasCreate(&blas_), "cublasCreate");
  check(cublasSetStream(blas_, stream_), "cublasSetStream");
  // A tied classifier is the embedding table itself: one upload.
  embd_ = upload_matrix(m.weights.token_embd);
  tied_ = m.weights.output.data == m.weights.token_embd.data;
  if (!tied_) output_ = upload_matrix(m.weights.output);
  for (const auto& l : m.weights.layers) {
    Layer y;
    y.wq = upload_matrix(l.wq), y.wk = upload_matrix(l.wk), y.wv = upload_matrix(l.wv), y.wo = upload_matrix(l.wo);
    y.gate = upload_matrix(l.w_gate), y.up = upload_matrix(l.w_up), y.down = upload_matrix(l.w_down);
    y.attn_norm = upload_vector(l.attn_norm), y.ffn_norm = upload_vector(l.ffn_norm);
    if (l.bq.present()) y.bq = upload_vector(l.bq);
    if (l.bk.present()) y.bk = upload_vector(l.bk);
    if (l.bv.present()) y.bv = upload_vector(l.bv);
    layers_.push_back(std::move(y));
  }
  out_norm_ = upload_vector(m.weights.output_norm);
  std::vector<float> cs, sn;  // [context][rope_dim / 2], the CPU runner's tables
  model::rope_angles(c, o.context, cs, sn);
  rope_cos_ = upload(cs, "rope cos");
  rope_sin_ = upload(sn, "rope sin");
  if (fmain) main_ = std::make_unique<DeviceKvCache>(*fmain, o.num_pages);
  if (fedge) edge_ = std::make_unique<DeviceKvCache>(*fedge, o.num_pages);

  max_pages_ = (o.context + ps - 1) / ps;
  x_ = alloc<float>(size_t(N) * c.dim, "x"), o_ = alloc<float>(size_t(N) * c.dim, "o");
  q_ = alloc<float>(size_t(N) * c.q_dim(), "q"), att_ = alloc<float>(size_t(N) * c.q_dim(), "att");
  k_ = alloc<float>(size_t(N) * c.kv_dim(), "k"), v_ = alloc<float>(size_t(N) * c.kv_dim(), "v");
  g_ = alloc<float>(size_t(N) * c.hidden_dim, "g"), u_ = alloc<float>(size_t(N) * c.hidden_dim, "u");
  logits_ = alloc<float>(size_t(N) * c.vocab_size, "logits");
  hb_ = alloc<bf16_t>(size_t(N) * std::max({c.dim, c.q_dim(), c.hidden_dim}), "bf16 operands");
  tokens_ = alloc<int32_t>(N, "tokens"), pos_ = alloc<int32_t>(N, "positions"), rows_ = alloc<int32_t>(N, "rows");
  lens_ = alloc<int32_t>(N, "lengths"), tables_ = alloc<int32_t>(size_t(N) * max_pages_, "block tables");
  slots_ = alloc<int64_t>(N, "slots");
  cudaDeviceProp prop{};
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  describe_ = fmt::format("cuda:{} ({}), weights {:.1f} MiB bf16, KV pool {:.1f} MiB ({} pages)", dev, prop.name, weights / 1048576.0,
                          pool / 1048576.0, o.num_pages);
}

void CudaModelRunner::gemm(const Matrix& w, const bf16_t* x, uint32_t n, float* y) {
  // Row-major y[n][R] = x[n][C] W^T is, in cuBLAS's column-major terms, y (R x n, ld R) =
  // op_T(W seen as C x R, ld C) * x (C x n, ld C).
  const float one = 1.0f, zero = 0.0f;
  check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(n), int(w.cols), &one, w.w.get(), CUDA_R_16BF, int(w.cols), x,
                     CUDA_R_16BF, int(w.cols), &zero, y, CUDA_R_32F, int(w.rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

// Attention of the step's queries, one launch per run of consecutive sequences with the same
// number of new tokens (decode for 1..8, prefill beyond), their block tables already on the device.
void CudaModelRunner::attend(uint32_t layer, const std::vector<StepSeq>& step) {
  const auto& c = cfg_;
  size_t row0 = 0;
  for (size_t i = 0; i < step.size();) {
    size_t j = i + 1;
    while (j < step.size() && step[j].n == step[i].n) ++j;
    DecodeParams p;
    p.cache = view(layer);
    p.q = q_.get() + row0 * c.q_dim();
    p.q_dtype = DType::kF32;
    p.out = att_.get() + row0 * c.q_dim();
    p.out_dtype = DType::kF32;
    p.block_tables = tables_.get() + i * max_pages_;
    p.seq_lens = lens_.get() + i;
    p.num_seqs = uint32_t(j - i);
    p.num_q_tokens = step[i].n;
    p.q_heads = uint32_t(c.n_heads);
    p.max_pages = max_pages_;
    for (size_t s = i; s < j; ++s) p.max_seq_len = std::max(p.max_seq_len, step[s].first + step[s].n);
    const bool prefill = step[i].n > kMaxDecodeQueryTokens;
    const size_t ws = prefill ? prefill_workspace_bytes(p) : decode_workspace_bytes(p);
    if (ws > workspace_.n) {
      check(cudaStreamSynchronize(stream_), "workspace");  // the old buffer may be in use
      workspace_ = alloc<uint8_t>(ws, "attention workspace");
    }
    p.workspace = workspace_.get();
    if (prefill)
      prefill_attention(p, stream_);
    else
      decode_attention(p, stream_);
    for (size_t s = i; s < j; ++s) row0 += step[s].n;
    i = j;
  }
}

std::vector<float> CudaModelRunner::forward(const std::vector<StepSeq>& step) {
  const auto& c = cfg_;
  const uint32_t ps = spec_.format.page_size;
  // Host side of the step: tokens, positions, slots, logits rows, block tables and lengths.
  std::vector<int32_t> tokens, pos, rows, lens, tables(step.size() * max_pages_, 0);
  std::vector<int64_t> slots;
  for (size_t s = 0; s < step.size(); ++s) {
    const StepSeq& it = step[s];
    TQ_CHECK(it.block_table && it.block_table->size() <= max_pages_, "sequence {}: block table of {} pages, beyond the context",
             it.seq, it.block_table ? it.block_table->size() : 0);
    for (uint32_t j = 0; j < it.n; ++j) {
      const uint32_t p = it.first + j;
      if (it.all_logits || j + 1 == it.n) rows.push_back(int32_t(tokens.size()));
      tokens.push_back(it.tokens[j]);
      pos.push_back(int32_t(p));
      slots.push_back(int64_t((*it.block_table)[p / ps]) * ps + p % ps);
    }
    std::copy(it.block_table->begin(), it.block_table->end(), tables.begin() + long(s * max_pages_));
    lens.push_back(int32_t(it.first + it.n));
  }
  const uint32_t N = uint32_t(tokens.size()), R = uint32_t(rows.size());
  TQ_CHECK(N >= 1 && N <= opts_.max_chunk, "a step takes 1..{} tokens, got {}", opts_.max_chunk, N);
  const auto put = [&](auto& buf, const auto& v) {
    check(cudaMemcpyAsync(buf.get(), v.data(), v.size() * sizeof(v[0]), cudaMemcpyHostToDevice, stream_), "upload");
  };
  put(tokens_, tokens), put(pos_, pos), put(rows_, rows), put(lens_, lens), put(tables_, tables), put(slots_, slots);

  const uint32_t D = uint32_t(c.dim), QD = uint32_t(c.q_dim()), KVD = uint32_t(c.kv_dim()), F = uint32_t(c.hidden_dim);
  const bool adjacent = c.rope_style == model::RopeStyle::AdjacentPairs;
  layers::embed(embd_.w.get(), tokens_.get(), N, D, x_.get(), stream_);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& w = layers_[l];
    // The residual add of the previous layer's FFN output is fused into this norm.
    layers::add_rmsnorm(x_.get(), l ? o_.get() : nullptr, nullptr, N, D, w.attn_norm.get(), c.rms_eps, hb_.get(), stream_);
    gemm(w.wq, hb_.get(), N, q_.get());
    gemm(w.wk, hb_.get(), N, k_.get());
    gemm(w.wv, hb_.get(), N, v_.get());
    if (w.bq.n) layers::add_bias(q_.get(), w.bq.get(), N, QD, stream_);
    if (w.bk.n) layers::add_bias(k_.get(), w.bk.get(), N, KVD, stream_);
    if (w.bv.n) layers::add_bias(v_.get(), w.bv.get(), N, KVD, stream_);
    layers::rope(q_.get(), pos_.get(), N, c.n_heads, c.head_dim, c.rope_dim, rope_cos_.get(), rope_sin_.get(), adjacent, stream_);
    layers::rope(k_.get(), pos_.get(), N, c.n_kv_heads, c.head_dim, c.rope_dim, rope_cos_.get(), rope_sin_.get(), adjacent, stream_);
    // Quantize on write (fp32 rows: the codes are those the CPU reference writes for these rows).
    QuantizeStoreParams st;
    st.cache = view(uint32_t(l));
    st.k = k_.get();
    st.v = v_.get();
    st.dtype = DType::kF32;
    st.slot_mapping = slots_.get();
    st.num_tokens = N;
    quantize_store(st, stream_);
    attend(uint32_t(l), step);
    layers::to_bf16(att_.get(), size_t(N) * QD, hb_.get(), stream_);
    gemm(w.wo, hb_.get(), N, o_.get());
    layers::add_rmsnorm(x_.get(), o_.get(), nullptr, N, D, w.ffn_norm.get(), c.rms_eps, hb_.get(), stream_);
    gemm(w.gate, hb_.get(), N, g_.get());
    gemm(w.up, hb_.get(), N, u_.get());
    layers::swiglu(g_.get(), u_.get(), size_t(N) * F, hb_.get(), stream_);
    gemm(w.down, hb_.get(), N, o_.get());
  }
  layers::add_rmsnorm(x_.get(), o_.get(), rows_.get(), R, D, out_norm_.get(), c.rms_eps, hb_.get(), stream_);
  gemm(tied_ ? embd_ : output_, hb_.get(), R, logits_.get());
  check(cudaGetLastError(), "forward");
  std::vector<float> out(size_t(R) * c.vocab_size);
  check(cudaMemcpyAsync(out.data(), logits_.get(), out.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_), "logits");
  check(cudaStreamSynchronize(stream_), "forward");
  return out;
}

}  // namespace

bool device_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    if (why) *why = e != cudaSuccess ? fmt::format("no CUDA device ({})", cudaGetErrorString(e)) : "no CUDA device";
    return false;
  }
  return true;
}

bool can_run(const model::ModelConfig& c, const KvSpec& spec, std::string* why) {
  std::string problem;
  if (c.n_layers < 1 || c.n_heads < 1 || c.n_kv_heads < 1 || c.n_heads % c.n_kv_heads != 0 || c.rope_dim % 2 != 0 || c.rope_dim > c.head_dim)
    problem = fmt::format("the model's shape ({} layers, {} query and {} KV heads, rope dim {} of head dim {}) is not one the runner takes",
                          c.n_layers, c.n_heads, c.n_kv_heads, c.rope_dim, c.head_dim);
  for (const std::string& knob : spec.policy.knobs())
    if (knob.rfind("edge=", 0) != 0 && problem.empty())
      problem = fmt::format("KV spec '{}': the CUDA runner does not implement '{}' yet (the CPU runner does: --device cpu)", spec.text, knob);
  const uint32_t L = uint32_t(std::max(c.n_layers, 0));
  for (uint32_t l = 0; l < L && problem.empty(); ++l) {
    const KvFormat f = spec.layer_format(l, L);
    const std::string p = attention_unsupported(f.k, f.v, uint32_t(c.head_dim));
    if (!p.empty()) problem = fmt::format("KV spec '{}' on this model (layer {}): {}", spec.text, l, p);
  }
  if (problem.empty()) {
    try {
      spec.edge_layer_count(L);
    } catch (const Error& e) {
      problem = e.what();
    }
  }
  if (problem.empty()) device_available(&problem);
  if (why) *why = problem;
  return problem.empty();
}

std::unique_ptr<engine::ModelRunner> make_model_runner(const model::Model& m, const KvSpec& spec, const engine::RunnerOptions& opts) {
  return std::make_unique<CudaModelRunner>(m, spec, opts);
}

}  // namespace tq::cuda
