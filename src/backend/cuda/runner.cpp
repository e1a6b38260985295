#include "tq/backend/cuda/runner.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <utility>

#include "layers.h"
#include "tq/check.h"
#include "tq/cuda/dense_prompt.h"
#include "tq/cuda/device_format.h"
#include "tq/cuda/kernels.h"
#include "tq/kv/window_ring.h"
#include "tq/model/shapes.h"
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
// Matrices of the same width stacked by rows (q, k, v; gate, up): one product reads them all.
Matrix upload_matrix(std::initializer_list<const TensorRef*> parts) {
  std::vector<bf16_t> b;
  uint32_t rows = 0, cols = uint32_t((*parts.begin())->n_cols);
  for (const TensorRef* t : parts) {
    TQ_CHECK(t->present(), "weight '{}' is absent", t->name);
    TQ_CHECK(t->n_cols == cols, "weight '{}' has {} columns, {} expected", t->name, t->n_cols, cols);
    for (float x : t->to_f32()) b.push_back(f32_to_bf16(x));
    rows += uint32_t(t->n_rows);
  }
  return Matrix{upload(b, (*parts.begin())->name.c_str()), rows, cols};
}
Buf<float> upload_vector(std::initializer_list<const TensorRef*> parts) {
  std::vector<float> f;
  for (const TensorRef* t : parts) {
    TQ_CHECK(t->present(), "weight '{}' is absent", t->name);
    const std::vector<float> x = t->to_f32();
    f.insert(f.end(), x.begin(), x.end());
  }
  return upload(f, (*parts.begin())->name.c_str());
}

struct Layer {
  Matrix wqkv, wo, gate_up, down;  // wqkv: [q_dim + 2 kv_dim][dim]; gate_up: [2 hidden][dim]
  Buf<float> attn_norm, ffn_norm, bqkv;  // bqkv: [q_dim + 2 kv_dim], empty when the model has no biases
  Buf<float> q_norm, k_norm;             // [head_dim] each: qwen3's and gemma3's per-head q/k RMSNorm, empty without
  Buf<float> attn_post_norm, ffn_post_norm;  // [dim] each: gemma3's norms of the attention and FFN outputs, empty without
};

// Pinned host memory for the sampled ids (an asynchronous copy needs it).
struct HostFree {
  void operator()(void* p) const { cudaFreeHost(p); }
};

// Decode and verification steps (1..9 new tokens a sequence, as many for each) are replayed from
// CUDA graphs captured per (tokens a sequence, tokens, logits rows, length bucket): the bucket is
// the bound on sequence lengths the attention launch was planned for (its split count).
// Batch-invariant mode's decode splits: about what the tuned plan gives batch 1 at 32K on an H200;
// shorter cuts were slower (bench/results/2026-11-30-h200-batch-invariant.md). Their
// count follows the step's length bound: the splits a longer bound adds are empty for shorter
// sequences, and the merge adds their zero weights exactly, so the count does not change bits
// (without side blocks, whose partials come after the splits'; the mode refuses sink/window).
constexpr uint32_t kInvariantSplitTokens = 512;

// dense_prompts: int32s of a step's ragged descriptions (dense_prompt_ragged: 3 n + 2 a run of n
// prompts). A whole prompt on the dense path has more than kMaxDecodeQueryTokens tokens, so a
// step of n_rows rows holds at most n_rows / 10 of them, and each run is at least one.
size_t dense_meta_ints(uint32_t n_rows) { return 5 * size_t(n_rows / (kMaxDecodeQueryTokens + 1) + 1); }

uint32_t length_bucket(uint32_t max_len, uint32_t context) {
  uint32_t b = 256;
  while (b < max_len) b *= 2;
  return std::min(b, context);
}

class CudaModelRunner : public engine::ModelRunner {
 public:
  // Weights from `m`, or (m null) random weights of the shape `c` from `seed`.
  CudaModelRunner(const model::ModelConfig& c, const model::Model* m, const KvSpec& spec, const engine::RunnerOptions& o, uint64_t seed);
  ~CudaModelRunner() override {
    for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  }
  const model::ModelConfig& config() const override { return cfg_; }
  const KvSpec& spec() const override { return spec_; }
  std::string describe() const override { return describe_; }
  void add_sequence(int seq) override {
    TQ_CHECK(seq >= 0 && ((!side_.n && !ring_.on()) || uint32_t(seq) < opts_.max_seqs),
             "sequence id {} has no {}: the CUDA runner was built for {} sequences (max_seqs)", seq,
             side_.n ? "side buffer" : "window ring", opts_.max_seqs);
    if (side_.n) side_written_[size_t(seq)] = 0;
    if (ring_.on()) ring_written_[size_t(seq)] = 0;
  }
  std::vector<float> forward(const std::vector<StepSeq>& step) override;
  std::vector<int> sample_step(const std::vector<StepSeq>& step, const std::vector<engine::SampleArgs>& args) override;
  uint32_t num_pages() const override { return num_pages_; }
  uint32_t max_chunk() const override { return opts_.max_chunk; }
  size_t page_bytes() const override { return page_bytes_; }
  size_t side_bytes() const override { return side_slot_ * sizeof(uint16_t); }
  size_t ring_bytes() const override { return ring_page_bytes_ * ring_.pages; }
  size_t ring_page_bytes() const override { return ring_page_bytes_; }
  size_t tail_bytes() const override { return tail_slot_ * sizeof(uint16_t) + (tails_ ? ring_bytes() : 0); }
  bool save_tail(int seq, uint32_t end, uint32_t slot) override;
  void restore_tail(uint32_t slot, int seq, uint32_t end) override;

 private:
  // A run of consecutive sequences with the same number of new tokens: one attention launch.
  struct Group {
    uint32_t seq0 = 0, count = 0, ntok = 0, max_len = 0;
    size_t row0 = 0;  // first token row
    int32_t len_at = -1;  // a ring sub-step: its length in sub_lens_[len_at] (else lens_ from seq0)
    int32_t run = -1;     // dense_prompts: whole prompts, of dense_runs_[run]
    bool run_head = false;  // the run's first group (which attends the whole run)
  };
  // dense_prompts: consecutive whole prompts of a step (of any lengths), attended in one ragged
  // cuDNN call on the layers without a sliding window.
  struct DenseRun {
    size_t row0 = 0;        // first token row
    uint32_t count = 0;     // sequences
    uint32_t max_n = 0;     // tokens of the longest
    size_t rows = 0;        // tokens of all
    size_t meta_at = 0;     // its dense_prompt_ragged description in dense_meta_ from here
  };
  // y[n][w.rows] = x[n][w.cols] w^T (bf16 operands, fp32 out).
  void gemm(const Matrix& w, const bf16_t* x, uint32_t n, float* y);
  CacheView view(uint32_t layer) const {
    const uint32_t L = uint32_t(cfg_.n_layers), local = spec_.local_layer(layer, L);
    return spec_.is_edge_layer(layer, L) ? edge_->view(local) : main_->view(local);
  }
  bool in_ring(uint32_t layer) const { return !ring_layer_.empty() && ring_layer_[layer]; }
  DecodeParams attention_params(uint32_t layer, const Group& g) const;
  // RunnerOptions::dense_prompts: a group of whole prompts (of a DenseRun) on a layer without a
  // sliding window is attended by cuDNN over its own rows (tq/cuda/dense_prompt.h), with its run.
  bool dense_group(uint32_t layer, const Group& g) const { return g.run >= 0 && g.len_at < 0 && cfg_.layer_window(int(layer)) == 0; }
  // dense_'s q, k and v rows from token row `row` on: [N][q_dim], then [N][kv_dim] twice.
  struct DenseRows {
    bf16_t *q, *k, *v;
  };
  DenseRows dense_rows(size_t row) const {
    const size_t Q = size_t(cfg_.q_dim()), KV = size_t(cfg_.kv_dim()), N = opts_.max_chunk;
    return {dense_.get() + row * Q, dense_.get() + N * Q + row * KV, dense_.get() + N * (Q + KV) + row * KV};
  }
  DensePromptParams dense_params(const DenseRun& r) const;
  // quantize_store and attention of one layer's step; on a window-ring layer, sequences of more than
  // ring_.step new tokens in sub-steps of ring_.step (kv/window_ring.h).
  void layer_attention(uint32_t layer, const std::vector<Group>& groups, uint32_t N);
  void ensure_workspace(const std::vector<Group>& groups);
  // Uploads the step's tokens, positions, slots, block tables and logits rows (every token's of
  // an all_logits sequence, the last token's of the others); returns the groups and the number of
  // logits rows.
  std::vector<Group> upload_step(const std::vector<StepSeq>& step, uint32_t* n_tokens, uint32_t* n_rows);
  // Notes how far the step writes each sequence's side slot and window ring: called once nothing
  // before the kernels can fail (upload_step checked the step, ensure_workspace allocated).
  void mark_written(const std::vector<StepSeq>& step);
  // Every kernel of the step, on stream_: logits_ [R][vocab], and ids_ [R] when sampling (from sample_args_).
  void enqueue(uint32_t N, uint32_t R, const std::vector<Group>& groups, bool sample);
  // After the first step of a spec with a key centre (the stream synchronized): the centres it
  // fixed are kept if finite; else tq::Error, and the next step fixes them again.
  void settle_centre();

  model::ModelConfig cfg_;
  KvSpec spec_;
  engine::RunnerOptions opts_;
  std::string describe_;
  // Owned by the members below, so that a constructor that throws after creating them (a weight
  // that is absent, an allocation) destroys them too: a destructor's body does not run then.
  struct StreamDestroy {
    void operator()(CUstream_st* s) const { cudaStreamDestroy(s); }
  };
  struct BlasDestroy {
    void operator()(cublasContext* b) const { cublasDestroy(b); }
  };
  struct EventDestroy {
    void operator()(CUevent_st* e) const { cudaEventDestroy(e); }
  };
  std::unique_ptr<CUstream_st, StreamDestroy> stream_owner_, store_stream_owner_;  // destroyed after the handles below
  std::unique_ptr<CUevent_st, EventDestroy> fork_owner_, join_owner_;
  std::unique_ptr<cublasContext, BlasDestroy> blas_owner_;
  cudaStream_t stream_ = nullptr;
  // dense_prompts: a layer whose every group is attended densely stores its rows on store_stream_
  // beside the attention (neither reads what the other writes), forked from stream_ at fork_ (after
  // the rows' bf16 copies) and joined back at join_ before the layer's output projection.
  cudaStream_t store_stream_ = nullptr;
  cudaEvent_t fork_ = nullptr, join_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  Matrix embd_;                      // [vocab][dim]
  Matrix output_;                    // [vocab][dim]; empty when tied to the embedding
  bool tied_ = false;
  std::vector<Layer> layers_;
  Buf<float> out_norm_, rope_cos_, rope_sin_;  // [dim], [context][rope_dim / 2] twice
  Buf<float> rope_cos_local_, rope_sin_local_;  // the sliding-window layers' (model::rope_angles_local), empty without
  std::unique_ptr<DeviceKvCache> main_, edge_;  // edge_ only with edge layers; same page ids
  // The policy's side buffer (sink, window): one slot a sequence id, [max_seqs][layers][side rows]
  // [2][kv_heads][head_dim] fp16, side rows = sink + ring (SideView in tq/cuda/kernels.h).
  Buf<uint16_t> side_;
  uint32_t side_ring_ = 0;
  size_t side_layer_ = 0, side_slot_ = 0;  // elements of one layer's rows of a slot, of a slot
  std::vector<uint32_t> side_written_;     // [max_seqs] the end of the positions each slot's last step wrote
  // Prefix tails (runner.h): [tails][layers][sink + window][2][kv_heads][head_dim] fp16, the sink
  // rows, then window row w holding position end - window + w.
  Buf<uint16_t> tails_buf_;
  size_t tail_layer_ = 0, tail_slot_ = 0;  // elements of one layer's rows of a tail, of a tail
  // Copies the side rows of a prefix of `end` positions, and the window rings, between a sequence
  // and a tail.
  void copy_tail(int seq, uint32_t end, uint32_t slot, bool save);
  // The sliding-window layers' pages in per-sequence rings (kv/window_ring.h), unless swa_full.
  WindowRing ring_;
  std::vector<bool> ring_layer_;        // [layers] kept in the rings (empty: none)
  size_t ring_page_bytes_ = 0;          // one page of every ring layer
  std::vector<uint32_t> ring_written_;  // [max_seqs] the end of the positions each sequence's steps wrote
  Buf<uint8_t> ring_tails_;             // [tails][ring layers][ring pages][kv_heads][block bytes]
  // Key centres (KvPolicy::key_centre): [layers][kv_heads][head_dim] fp32, fixed by the first step
  // (layers::key_centre, from the keys before RoPE), then subtracted from every key by qkv_rope.
  Buf<float> centre_;
  Buf<double> centre_a_, centre_b_;  // [rope_dim / 2] model::rope_mean_rotation over the context
  Buf<double> centre_a_local_, centre_b_local_;  // the same over the sliding-window layers' angles
  bool centre_fixed_ = false;
  bool has_window_layers_ = false;  // sliding-window layers (their prompts keep the packed path)
  size_t page_bytes_ = 0;
  uint32_t num_pages_ = 0;
  // Scratch for max_chunk rows.
  Buf<float> x_, qkv_, q_, k_, v_, o_, gu_, logits_;  // [N][dim], [N][q_dim + 2 kv_dim], [N][q_dim], [N][kv_dim] x2, [N][dim], [N][2 hidden], [N][vocab]
  Buf<bf16_t> hb_;                                      // [N][max(dim, q_dim, hidden)] bf16 operands
  Buf<bf16_t> dense_;                                   // dense_prompts: [N][q_dim + 2 kv_dim] the step's q, k, v rows in bf16
  Buf<int32_t> dense_meta_;                             // dense_prompts: [dense_meta_ints(N)] the runs' ragged descriptions
  std::vector<DenseRun> dense_runs_;                    // the step's runs of whole prompts
  Buf<int32_t> tokens_, pos_, rows_, tables_, lens_, ids_, seq_ids_;  // [N], [N], [N], [N][max pages], [N], [N], [N]
  Buf<int64_t> slots_;                                  // [N]
  Buf<int32_t> ring_tables_;                            // [N][max pages] the window rings' block tables (with rings)
  Buf<int64_t> ring_slots_;                             // [N] the rings' slots (with rings)
  Buf<int64_t> ring_batch_slots_;                       // [N] the same, -1 for the tokens written in sub-steps
  Buf<int32_t> sub_lens_;                               // [N] each sub-step's length (its end position + 1)
  std::vector<Group> subs_;                             // the step's ring sub-steps: one sequence each, in order
  Buf<layers::SampleRow> sample_args_;                  // [N]
  Buf<uint8_t> workspace_, blas_workspace_;             // attention (grown as needed), cuBLAS (fixed: graphs)
  std::unique_ptr<int32_t, HostFree> host_ids_;         // [N + 1] pinned: the sampled ids, then the store's error flag
  // quantize_store's error_flag: set by a row it refused (NaN/Inf, a norm or element beyond fp16),
  // which it does not write; read with each step's results, and the step refused as the CPU runner
  // refuses it (it was silently left unwritten).
  Buf<int32_t> store_error_;  // [1]
  bool store_error_set_ = false;     // it may be set: a step ran its stores and failed, or refused its rows
  void arm_store_flag();             // before a step's stores: clears what a step before left
  int32_t* host_store_flag() const { return host_ids_.get() + opts_.max_chunk; }  // where each step copies it
  void check_stored();
  uint32_t max_pages_ = 0;
  using GraphKey = std::array<uint32_t, 4>;  // tokens a sequence, tokens, logits rows, length bucket
  std::map<GraphKey, cudaGraphExec_t> graphs_;  // -> the step's graph
};

CudaModelRunner::CudaModelRunner(const model::ModelConfig& cfg, const model::Model* m, const KvSpec& spec, const engine::RunnerOptions& o,
                                 uint64_t seed)
    : cfg_(cfg), spec_(spec), opts_(o) {
  std::string why;
  TQ_CHECK(can_run(cfg_, spec, &why), "{}", why);
  const auto& c = cfg_;
  TQ_CHECK(o.max_chunk >= 1 && o.context >= 1, "max_chunk and context must be at least 1");
  TQ_CHECK(c.vocab_size >= 1 && c.vocab_size < (1 << 24), "a vocabulary of {} tokens: the CUDA runner takes 1 .. 2^24 - 1", c.vocab_size);
  TQ_CHECK(o.gpu_memory >= 0 && o.gpu_memory <= 1, "--gpu-memory is a fraction of the GPU's memory in (0, 1], got {}", o.gpu_memory);
  if (m) {
    TQ_CHECK(m->weights.layers.size() == size_t(c.n_layers), "model lists {} layers but has weights for {}", c.n_layers,
             m->weights.layers.size());
    tied_ = m->weights.output.data == m->weights.token_embd.data;
    cfg_.tied_embeddings = tied_;
    cfg_.has_qkv_bias = !m->weights.layers.empty() && m->weights.layers[0].bq.present();
  } else {
    tied_ = c.tied_embeddings;
  }
  const uint32_t L = uint32_t(c.n_layers), N = o.max_chunk, ps = spec.format.page_size;
  // What the device must hold, checked against its memory before anything is allocated.
  const size_t weights = model::weight_bytes_bf16(cfg_);
  const uint32_t n_edge = spec.edge_layer_count(L), n_main = L - n_edge;
  std::unique_ptr<CacheFormat> fmain, fedge;
  const std::vector<bool> sliding = c.local_layers();
  has_window_layers_ = std::find(sliding.begin(), sliding.end(), true) != sliding.end();
  if (n_main) fmain = std::make_unique<CacheFormat>(n_main, c.n_kv_heads, c.head_dim, spec.main_format(), spec.cache_layers(sliding, false));
  if (n_edge) fedge = std::make_unique<CacheFormat>(n_edge, c.n_kv_heads, c.head_dim, spec.edge_format(), spec.cache_layers(sliding, true));
  page_bytes_ = (fmain ? fmain->page_bytes() : 0) + (fedge ? fedge->page_bytes() : 0);
  max_pages_ = (o.context + ps - 1) / ps;
  if (!o.swa_full && std::find(sliding.begin(), sliding.end(), true) != sliding.end())
    ring_ = WindowRing::make(uint32_t(c.sliding_window), o.context, N, ps, o.prefix_tails > 0);
  if (ring_.on()) {
    TQ_CHECK(o.max_seqs >= 1, "max_seqs must be at least 1");
    TQ_CHECK(uint64_t(o.max_seqs) * ring_.pages <= uint64_t(INT32_MAX),
             "{} sequences of {} window-ring pages are more pages than a cache can number (2^31 - 1)", o.max_seqs, ring_.pages);
    ring_layer_ = sliding;
    for (uint32_t l = 0; l < L; ++l)
      if (sliding[l]) ring_page_bytes_ += (spec.is_edge_layer(l, L) ? fedge : fmain)->layer_page_bytes();
    page_bytes_ -= ring_page_bytes_;
  }
  const size_t rings = ring_page_bytes_ * ring_.pages * o.max_seqs;
  constexpr size_t kBlasWorkspace = size_t(32) << 20;
  const bool has_side = spec.policy.sink || spec.policy.window;
  TQ_CHECK(!o.batch_invariant || !has_side,
           "KV spec '{}': batch-invariant mode covers specs without sink and window only (their side blocks are cut by the step's shape)",
           spec.text);
  TQ_CHECK(!has_side || o.max_seqs >= 1, "max_seqs must be at least 1");
  if (o.dense_prompts) {
    // The dense path reads the step's own rows only: the side buffer's rows (which the packed
    // kernels write as they attend) would be left unwritten.
    TQ_CHECK(!has_side, "dense prompts: KV spec '{}' keeps sink/window rows in a side buffer, which the dense path does not write; "
                        "use a spec without sink and window, or leave dense prompts off", spec.text);
    TQ_CHECK(c.head_dim % 8 == 0 && c.head_dim <= 256, "dense prompts: head dim {} (cuDNN's fused attention takes multiples of 8 up to 256)",
             c.head_dim);
    std::string why_not;
    TQ_CHECK(dense_prompt_available(&why_not), "dense prompts: {}", why_not);
  }
  // With prefix tails, the ring keeps a page more: the rows before a sequence's last page boundary
  // are still there when it ends (save_tail).
  tails_ = has_side || ring_.on() ? o.prefix_tails : 0;
  const uint32_t ring_extra = kSideRollback + (tails_ ? ps : 0);
  side_ring_ = spec.policy.window ? spec.policy.window + ring_extra : 0;
  side_layer_ = size_t(spec.policy.side_tokens(ring_extra)) * 2 * size_t(c.kv_dim());  // sink + ring rows
  side_slot_ = side_layer_ * L;
  tail_layer_ = size_t(spec.policy.sink + spec.policy.window) * 2 * size_t(c.kv_dim());
  tail_slot_ = tails_ ? tail_layer_ * L : 0;
  const size_t side_total = has_side ? (side_slot_ * o.max_seqs + tail_slot_ * tails_) * sizeof(uint16_t) : 0;
  const size_t ring_total = rings + ring_bytes() * tails_;
  const size_t centre_total = spec.policy.key_centre ? size_t(L) * c.kv_dim() * sizeof(float) : 0;
  const size_t scratch = size_t(N) * 4 * (2 * size_t(c.dim) + 2 * size_t(c.q_dim()) + 4 * size_t(c.kv_dim()) + 2 * size_t(c.hidden_dim) +
                                          size_t(c.vocab_size)) +
                         size_t(N) * 2 * std::max({c.dim, c.q_dim(), c.hidden_dim}) + size_t(N) * (4 * (7 + max_pages_) + sizeof(layers::SampleRow)) +
                         (o.dense_prompts ? size_t(N) * 2 * (size_t(c.q_dim()) + 2 * size_t(c.kv_dim())) + 4 * dense_meta_ints(N) : 0) +
                         (ring_.on() ? size_t(N) * (4 * max_pages_ + 20) : 0) + kBlasWorkspace +
                         side_total + ring_total + centre_total;
  size_t free_b = 0, total_b = 0;
  check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  const double gib = double(1ull << 30);
  num_pages_ = o.num_pages;
  if (o.gpu_memory > 0 && page_bytes_ == 0) {  // every layer in the rings: the pool's pages hold nothing
    num_pages_ = o.max_seqs * max_pages_;
  } else if (o.gpu_memory > 0) {
    // vLLM's --gpu-memory-utilization: the pool gets what the fraction leaves after the rest.
    const double left = o.gpu_memory * double(total_b) - double(weights + scratch);
    TQ_CHECK(left >= double(page_bytes_) * max_pages_,
             "--gpu-memory {}: {:.2f} of the GPU's {:.2f} GiB leave {:.2f} GiB for the KV pool after the weights ({:.2f}) and scratch, side buffers and window rings "
             "({:.2f}), less than one sequence of {} tokens needs ({:.3f} GiB)",
             o.gpu_memory, o.gpu_memory * total_b / gib, total_b / gib, std::max(left, 0.0) / gib, weights / gib, scratch / gib, o.context,
             double(page_bytes_) * max_pages_ / gib);
    num_pages_ = uint32_t(std::min(left / double(page_bytes_), double(INT32_MAX)));
  }
  TQ_CHECK(num_pages_ >= 1, "the KV pool needs at least one page");
  const size_t pool = page_bytes_ * num_pages_;
  TQ_CHECK(weights + pool + scratch < free_b, "the model needs {:.2f} GiB of GPU memory (weights {:.2f}, KV pool of {} pages {:.2f}, "
           "scratch, side buffers and window rings {:.2f}) but {:.2f} GiB of {:.2f} are free", (weights + pool + scratch) / gib, weights / gib, num_pages_, pool / gib,
           scratch / gib, free_b / gib, total_b / gib);

  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  stream_owner_.reset(stream_);
  if (o.dense_prompts) {
    check(cudaStreamCreateWithFlags(&store_stream_, cudaStreamNonBlocking), "cudaStreamCreate (stores beside dense prompts)");
    store_stream_owner_.reset(store_stream_);
    check(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming), "cudaEventCreate");
    fork_owner_.reset(fork_);
    check(cudaEventCreateWithFlags(&join_, cudaEventDisableTiming), "cudaEventCreate");
    join_owner_.reset(join_);
  }
  check(cublasCreate(&blas_), "cublasCreate");
  blas_owner_.reset(blas_);
  check(cublasSetStream(blas_, stream_), "cublasSetStream");
  // A fixed cuBLAS workspace: nothing is allocated while a graph is captured.
  blas_workspace_ = alloc<uint8_t>(kBlasWorkspace, "cuBLAS workspace");
  check(cublasSetWorkspace(blas_, blas_workspace_.get(), kBlasWorkspace), "cublasSetWorkspace");
  const size_t D = size_t(c.dim), Q = size_t(c.q_dim()), KV = size_t(c.kv_dim()), F = size_t(c.hidden_dim), V = size_t(c.vocab_size);
  uint64_t stream_of_seeds = seed;
  // Random weights keep the activations of the order of one: matrices uniform in +-1/sqrt(cols),
  // norms 1 (the values do not change the speed; they must stay finite).
  const auto random_matrix = [&](size_t rows, size_t cols, float scale) {
    Matrix w{alloc<bf16_t>(rows * cols, "random weights"), uint32_t(rows), uint32_t(cols)};
    layers::fill_uniform(w.w.get(), rows * cols, scale, stream_of_seeds++, stream_);
    return w;
  };
  const auto matrix = [&](std::initializer_list<const TensorRef*> t, size_t rows, size_t cols) {
    return m ? upload_matrix(t) : random_matrix(rows, cols, float(1.0 / std::sqrt(double(cols))));
  };
  const auto vector = [&](std::initializer_list<const TensorRef*> t, size_t n, bool bias) {
    if (m) return upload_vector(t);
    Buf<float> b = alloc<float>(n, "random weights");
    if (bias)
      layers::fill_uniform(b.get(), n, 0.1f, stream_of_seeds++, stream_);
    else
      layers::fill(b.get(), n, 1.0f, stream_);
    return b;
  };
  // A tied classifier is the embedding table itself: one upload.
  embd_ = m ? upload_matrix({&m->weights.token_embd}) : random_matrix(V, D, 1.0f);
  if (!tied_) output_ = matrix({m ? &m->weights.output : nullptr}, V, D);
  static const model::LayerWeights none;  // random weights: the tensors are not read
  for (uint32_t l = 0; l < L; ++l) {
    const model::LayerWeights& w = m ? m->weights.layers[l] : none;
    Layer y;
    y.wqkv = matrix({&w.wq, &w.wk, &w.wv}, Q + 2 * KV, D);
    y.wo = matrix({&w.wo}, D, Q);
    y.gate_up = matrix({&w.w_gate, &w.w_up}, 2 * F, D);
    y.down = matrix({&w.w_down}, D, F);
    y.attn_norm = vector({&w.attn_norm}, D, false), y.ffn_norm = vector({&w.ffn_norm}, D, false);
    if (cfg_.has_qkv_bias) y.bqkv = vector({&w.bq, &w.bk, &w.bv}, Q + 2 * KV, true);
    if (cfg_.qk_norm) y.q_norm = vector({&w.q_norm}, size_t(c.head_dim), false), y.k_norm = vector({&w.k_norm}, size_t(c.head_dim), false);
    if (cfg_.post_norms) y.attn_post_norm = vector({&w.attn_post_norm}, D, false), y.ffn_post_norm = vector({&w.ffn_post_norm}, D, false);
    layers_.push_back(std::move(y));
  }
  out_norm_ = vector({m ? &m->weights.output_norm : nullptr}, D, false);
  std::vector<float> cs, sn;  // [context][rope_dim / 2], the CPU runner's tables
  model::rope_angles(c, o.context, cs, sn);
  rope_cos_ = upload(cs, "rope cos");
  rope_sin_ = upload(sn, "rope sin");
  std::vector<float> cs_local, sn_local;
  if (c.sliding_window > 0) {
    model::rope_angles_local(c, o.context, cs_local, sn_local);
    rope_cos_local_ = upload(cs_local, "rope cos (sliding-window layers)");
    rope_sin_local_ = upload(sn_local, "rope sin (sliding-window layers)");
  }
  // A ring layer holds max_seqs rings instead of the pool's pages.
  const auto pages = [&](bool edge) {
    std::vector<uint32_t> n;
    for (uint32_t l = 0; l < L; ++l)
      if (spec.is_edge_layer(l, L) == edge) n.push_back(in_ring(l) ? o.max_seqs * ring_.pages : num_pages_);
    return n;
  };
  if (fmain) main_ = std::make_unique<DeviceKvCache>(*fmain, pages(false));
  if (fedge) edge_ = std::make_unique<DeviceKvCache>(*fedge, pages(true));
  if (ring_.on()) {
    ring_written_.assign(o.max_seqs, 0);
    ring_tables_ = alloc<int32_t>(size_t(N) * max_pages_, "window ring tables");
    ring_slots_ = alloc<int64_t>(N, "window ring slots");
    ring_batch_slots_ = alloc<int64_t>(N, "window ring slots");
    sub_lens_ = alloc<int32_t>(N, "window ring sub-step lengths");
    if (tails_) ring_tails_ = alloc<uint8_t>(ring_bytes() * tails_, "prefix tails (window rings)");
  }

  x_ = alloc<float>(size_t(N) * D, "x"), o_ = alloc<float>(size_t(N) * D, "o");
  qkv_ = alloc<float>(size_t(N) * (Q + 2 * KV), "qkv"), q_ = alloc<float>(size_t(N) * Q, "q");
  k_ = alloc<float>(size_t(N) * KV, "k"), v_ = alloc<float>(size_t(N) * KV, "v");
  gu_ = alloc<float>(size_t(N) * 2 * F, "gate and up");
  logits_ = alloc<float>(size_t(N) * V, "logits");
  hb_ = alloc<bf16_t>(size_t(N) * std::max({D, Q, F}), "bf16 operands");
  if (o.dense_prompts) {
    dense_ = alloc<bf16_t>(size_t(N) * (Q + 2 * KV), "dense prompt rows");
    dense_meta_ = alloc<int32_t>(dense_meta_ints(N), "dense prompt lengths and offsets");
    // cuDNN's ragged plan for a short prompt now: a cuDNN that cannot build one is refused here,
    // naming it, rather than at the first prompt (the plan is kept for prompts up to 64 tokens).
    DensePromptParams probe;
    probe.num_seqs = 1, probe.ntok = 64, probe.ragged = dense_meta_.get();
    probe.q_heads = uint32_t(c.n_heads), probe.kv_heads = uint32_t(c.n_kv_heads), probe.head_dim = uint32_t(c.head_dim);
    probe.scale = c.attn_scale;
    (void)dense_prompt_workspace_bytes(probe);
  }
  tokens_ = alloc<int32_t>(N, "tokens"), pos_ = alloc<int32_t>(N, "positions"), rows_ = alloc<int32_t>(N, "rows");
  lens_ = alloc<int32_t>(N, "lengths"), tables_ = alloc<int32_t>(size_t(N) * max_pages_, "block tables");
  ids_ = alloc<int32_t>(N, "sampled ids"), seq_ids_ = alloc<int32_t>(N, "sequence ids");
  if (has_side) side_ = alloc<uint16_t>(side_slot_ * o.max_seqs, "side buffers"), side_written_.assign(o.max_seqs, 0);
  if (tails_ && tail_slot_) tails_buf_ = alloc<uint16_t>(tail_slot_ * tails_, "prefix tails");
  if (centre_total) {
    centre_ = alloc<float>(size_t(L) * KV, "key centres");
    if (c.rope_dim >= 2) {
      std::vector<double> a, b;
      model::rope_mean_rotation(c, o.centre_positions(), false, a, b, &cs, &sn);
      centre_a_ = upload(a, "key centre map"), centre_b_ = upload(b, "key centre map");
      if (c.sliding_window > 0) {
        model::rope_mean_rotation(c, o.centre_positions(), true, a, b, &cs_local, &sn_local);
        centre_a_local_ = upload(a, "key centre map"), centre_b_local_ = upload(b, "key centre map");
      }
    }
  }
  slots_ = alloc<int64_t>(N, "slots");
  sample_args_ = alloc<layers::SampleRow>(N, "sampling arguments");
  void* pinned = nullptr;
  check(cudaMallocHost(&pinned, size_t(N + 1) * sizeof(int32_t)), "cudaMallocHost");
  host_ids_.reset(static_cast<int32_t*>(pinned));
  store_error_ = alloc<int32_t>(1, "store error flag");
  check(cudaMemsetAsync(store_error_.get(), 0, sizeof(int32_t), stream_), "store error flag");
  check(cudaStreamSynchronize(stream_), "weights");
  cudaDeviceProp prop{};
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  describe_ = fmt::format("cuda:{} ({}), weights {:.1f} MiB bf16{}, KV pool {:.1f} MiB ({} pages of {} tokens), scratch {:.1f} MiB{}", dev,
                          prop.name, weights / 1048576.0, m ? "" : " (random)", pool / 1048576.0, num_pages_, ps, scratch / 1048576.0,
                          o.eager ? ", eager" : ", CUDA graphs for decode");
  if (o.dense_prompts) describe_ += ", prompts' first steps attended densely by cuDNN";
  if (o.batch_invariant) describe_ += fmt::format(", batch-invariant (products of up to {} rows on gemm_rows, attention cut every {} positions)",
                                                  layers::kGemmRowsMax, kInvariantSplitTokens);
  else if (o.products == engine::GpuProducts::kRows) describe_ += ", products of up to 16 rows through gemm_rows";
  else if (o.products == engine::GpuProducts::kAuto) describe_ += ", products: GEMV kernel for one row, gemm_rows for 2..16";
  else if (o.products == engine::GpuProducts::kGemv) describe_ += ", products of one-row steps through the GEMV kernel";
  else if (o.products == engine::GpuProducts::kCublas) describe_ += ", every product through cuBLAS";
  if (ring_.on())
    describe_ += fmt::format(", window rings {:.1f} MiB ({} sequences of {} pages)", rings / 1048576.0, o.max_seqs, ring_.pages);
  if (side_total)
    describe_ += fmt::format(", side buffers {:.1f} MiB ({} sequences, sink {} + ring {}{})", side_total / 1048576.0, o.max_seqs,
                             spec.policy.sink, side_ring_, tails_ ? fmt::format(", {} prefix tails", tails_) : "");
}

bool CudaModelRunner::save_tail(int seq, uint32_t end, uint32_t slot) {
  TQ_CHECK(seq >= 0 && uint32_t(seq) < opts_.max_seqs && (side_.n || ring_.on()), "sequence id {} has no side buffer or window ring", seq);
  if (side_.n) {
    // The ring holds positions [written - ring, written): the window before `end` must be among them
    // (sink rows stay once written).
    const uint32_t written = side_written_[size_t(seq)], window = spec_.policy.window;
    if (written < end || (window && written - end > side_ring_ - window)) return false;
  }
  if (ring_.on() && !ring_.holds_tail(ring_written_[size_t(seq)], end, uint32_t(cfg_.sliding_window))) return false;
  copy_tail(seq, end, slot, true);
  return true;
}

void CudaModelRunner::restore_tail(uint32_t slot, int seq, uint32_t end) {
  copy_tail(seq, end, slot, false);
  // As if its own steps had written positions [0, end); the rings as if up to a sub-step past end:
  // they hold the rows before end for a step from end on, nothing older (holds() refuses a step
  // from before end).
  if (side_.n) side_written_[size_t(seq)] = end;
  if (ring_.on()) ring_written_[size_t(seq)] = end + ring_.rollback;
}

void CudaModelRunner::copy_tail(int seq, uint32_t end, uint32_t slot, bool save) {
  TQ_CHECK(slot < tails_, "tail slot {} is outside the {} this runner holds", slot, tails_);
  TQ_CHECK(seq >= 0 && uint32_t(seq) < opts_.max_seqs, "sequence id {} has no side buffer (max_seqs {})", seq, opts_.max_seqs);
  TQ_CHECK(end % spec_.format.page_size == 0, "a prefix tail ends at a page boundary, not at {}", end);
  const uint32_t sink = spec_.policy.sink, window = spec_.policy.window, L = uint32_t(cfg_.n_layers);
  if (ring_.on()) {  // each ring layer's ring of the sequence whole: its pages are contiguous
    uint8_t* tail = ring_tails_.get() + size_t(slot) * ring_bytes();
    for (uint32_t l = 0; l < L; ++l) {
      if (!in_ring(l)) continue;
      const DeviceKvCache& cache = spec_.is_edge_layer(l, L) ? *edge_ : *main_;
      uint8_t* ring = cache.layer_data(spec_.local_layer(l, L), uint32_t(ring_.page(seq, 0)));
      const size_t n = cache.format().layer_page_bytes() * ring_.pages;
      check(cudaMemcpyAsync(save ? tail : ring, save ? ring : tail, n, cudaMemcpyDeviceToDevice, stream_), "prefix tail copy (window rings)");
      tail += n;
    }
  }
  if (!side_.n) return;
  const size_t row = 2 * size_t(cfg_.kv_dim());  // elements of one position's K and V
  uint16_t* side = side_.get() + size_t(seq) * side_slot_;
  uint16_t* tail = tails_buf_.get() + size_t(slot) * tail_slot_;
  // rows [side_row, +n) of every layer of the slot <-> rows [tail_row, +n) of every layer of the tail
  const auto copy = [&](size_t side_row, size_t tail_row, size_t n) {
    uint16_t* a = side + side_row * row;
    uint16_t* b = tail + tail_row * row;
    const size_t sp = side_layer_ * sizeof(uint16_t), tp = tail_layer_ * sizeof(uint16_t), w = n * row * sizeof(uint16_t);
    check(save ? cudaMemcpy2DAsync(b, tp, a, sp, w, L, cudaMemcpyDeviceToDevice, stream_)
               : cudaMemcpy2DAsync(a, sp, b, tp, w, L, cudaMemcpyDeviceToDevice, stream_),
          "prefix tail copy");
  };
  // The sink rows whole: those at or past `end` are the saver's later tokens, but every position's
  // row is written before a query reads it, so restoring them changes nothing.
  if (sink) copy(0, 0, sink);
  // Positions t >= sink of the window before `end`, at slot row sink + t % ring: two runs at most.
  for (uint32_t t = std::max(sink, end > window ? end - window : 0u); t < end;) {
    const uint32_t r = t % side_ring_, n = std::min(end - t, side_ring_ - r);
    copy(sink + r, sink + window - (end - t), n);
    t += n;
  }
}

void CudaModelRunner::gemm(const Matrix& w, const bf16_t* x, uint32_t n, float* y) {
  using engine::GpuProducts;
  const GpuProducts how = opts_.batch_invariant ? GpuProducts::kRows : opts_.products;
  if ((how == GpuProducts::kAuto || how == GpuProducts::kGemv) && layers::gemv_takes(n, w.cols))
    return layers::gemv(w.w.get(), w.rows, w.cols, x, y, stream_);
  if ((how == GpuProducts::kAuto || how == GpuProducts::kRows) && layers::gemm_rows_takes(n, w.cols))
    return layers::gemm_rows(w.w.get(), w.rows, w.cols, x, n, y, stream_);
  // Row-major y[n][R] = x[n][C] W^T is, in cuBLAS's column-major terms, y (R x n, ld R) =
  // op_T(W seen as C x R, ld C) * x (C x n, ld C).
  const float one = 1.0f, zero = 0.0f;
  check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(n), int(w.cols), &one, w.w.get(), CUDA_R_16BF, int(w.cols), x,
                     CUDA_R_16BF, int(w.cols), &zero, y, CUDA_R_32F, int(w.rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

DecodeParams CudaModelRunner::attention_params(uint32_t layer, const Group& g) const {
  const auto& c = cfg_;
  DecodeParams p;
  p.cache = view(layer);
  p.q = q_.get() + g.row0 * c.q_dim();
  p.q_dtype = DType::kF32;
  p.out = hb_.get() + g.row0 * c.q_dim();  // bf16: the operand of the output projection
  p.out_dtype = DType::kBf16;
  p.block_tables = (in_ring(layer) ? ring_tables_ : tables_).get() + size_t(g.seq0) * max_pages_;
  p.seq_lens = g.len_at >= 0 ? sub_lens_.get() + g.len_at : lens_.get() + g.seq0;
  p.num_seqs = g.count;
  p.num_q_tokens = g.ntok;
  p.q_heads = uint32_t(c.n_heads);
  p.max_pages = max_pages_;
  p.max_seq_len = g.max_len;
  p.scale = c.attn_scale;  // 0: 1/sqrt(head_dim)
  p.sliding_window = uint32_t(c.layer_window(int(layer)));
  p.workspace = workspace_.get();
  p.workspace_bytes = workspace_.n;  // sized by ensure_workspace: a plan that needs more throws instead of overrunning it
  if (opts_.batch_invariant && g.ntok <= kMaxDecodeQueryTokens) {  // the same cuts in every decode and verification step
    p.split_tokens = kInvariantSplitTokens;
    p.num_splits = (g.max_len + kInvariantSplitTokens - 1) / kInvariantSplitTokens;
  }
  if (side_.n) {  // sink / window: this layer's rows of each sequence's slot, and the step's new rows
    p.side.data = side_.get() + layer * side_layer_;
    p.side.slots = seq_ids_.get() + g.seq0;
    p.side.slot_stride = side_slot_;
    p.side.sink = spec_.policy.sink;
    p.side.window = spec_.policy.window;
    p.side.ring = side_ring_;
    p.side.new_k = k_.get() + g.row0 * c.kv_dim();
    p.side.new_v = v_.get() + g.row0 * c.kv_dim();
    p.side.new_dtype = DType::kF32;
  }
  return p;
}

DensePromptParams CudaModelRunner::dense_params(const DenseRun& run) const {
  const auto& c = cfg_;
  const DenseRows r = dense_rows(run.row0);  // the run's rows of each: [rows][heads][head_dim], prompt after prompt
  DensePromptParams p;
  p.q = r.q, p.k = r.k, p.v = r.v;
  p.out = hb_.get() + run.row0 * c.q_dim();  // bf16: the operand of the output projection, as attention_params'
  p.dtype = DType::kBf16;
  p.num_seqs = run.count;
  p.ntok = run.max_n;
  p.ragged = dense_meta_.get() + run.meta_at;
  p.q_heads = uint32_t(c.n_heads);
  p.kv_heads = uint32_t(c.n_kv_heads);
  p.head_dim = uint32_t(c.head_dim);
  p.scale = c.attn_scale;  // 0: 1/sqrt(head_dim), as the kernels'
  p.workspace = workspace_.get();
  p.workspace_bytes = workspace_.n;
  return p;
}

void CudaModelRunner::ensure_workspace(const std::vector<Group>& groups) {
  size_t need = 0;
  // One layer of each kind whose plans differ: of each cache (the edge and the main cache's
  // layouts, wherever edge= or layers= puts them), global and sliding-window (whose splits cover
  // the window only: fewer of them).
  const uint32_t L = uint32_t(cfg_.n_layers);
  std::vector<uint32_t> kinds;  // a layer of each (edge, window) pair
  for (uint32_t l = 0; l < L; ++l) {
    const auto same = [&](uint32_t k) {
      return spec_.is_edge_layer(k, L) == spec_.is_edge_layer(l, L) && cfg_.layer_window(int(k)) == cfg_.layer_window(int(l));
    };
    if (std::none_of(kinds.begin(), kinds.end(), same)) kinds.push_back(l);
  }
  for (uint32_t layer : kinds)
    for (const std::vector<Group>* gs : {&groups, static_cast<const std::vector<Group>*>(&subs_)})
      for (const Group& g : *gs) {
        if (dense_group(layer, g)) {  // (a whole prompt past kMaxPrefillChunk has no packed plan)
          if (g.run_head) need = std::max(need, dense_prompt_workspace_bytes(dense_params(dense_runs_[size_t(g.run)])));
          continue;
        }
        const DecodeParams p = attention_params(layer, g);
        need = std::max(need, g.ntok > kMaxDecodeQueryTokens ? prefill_workspace_bytes(p) : decode_workspace_bytes(p));
      }
  if (need <= workspace_.n) return;
  check(cudaStreamSynchronize(stream_), "workspace");  // the old buffer may be in use
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);  // they point at the old buffer
  graphs_.clear();
  workspace_ = alloc<uint8_t>(need, "attention workspace");
}

std::vector<CudaModelRunner::Group> CudaModelRunner::upload_step(const std::vector<StepSeq>& step, uint32_t* n_tokens,
                                                            uint32_t* n_rows) {
  const uint32_t ps = spec_.format.page_size;
  std::vector<int32_t> tokens, pos, rows, lens, seq_ids, tables(step.size() * max_pages_, 0);
  std::vector<int32_t> ring_tables(ring_.on() ? tables.size() : 0, 0), ring_table, sub_lens;
  std::vector<int64_t> slots, ring_slots, ring_batch_slots;
  subs_.clear();
  dense_runs_.clear();
  std::vector<Group> groups;
  std::vector<uint32_t> run_lens;  // the prompts' lengths, run after run
  bool prev_dense = false;         // whether the step's previous sequence was a dense whole prompt
  for (size_t s = 0; s < step.size(); ++s) {
    const StepSeq& it = step[s];
    TQ_CHECK(it.block_table && it.block_table->size() <= max_pages_, "sequence {}: block table of {} pages, beyond the context",
             it.seq, it.block_table ? it.block_table->size() : 0);
    // A whole prompt that every layer attends densely takes one step of any length (up to max_chunk);
    // the packed prefill kernel takes kMaxPrefillChunk new tokens at most.
    const bool whole = opts_.dense_prompts && it.first == 0 && !has_window_layers_;
    TQ_CHECK(it.n >= 1 && (it.n <= kMaxPrefillChunk || whole), "sequence {}: {} new tokens in one step (1..{}{})", it.seq, it.n,
             kMaxPrefillChunk, opts_.dense_prompts ? "; a whole prompt of a model without sliding-window layers: up to max_chunk" : "");
    // (the Engine checks both; tq bench and the bindings drive the runner directly: a position past
    // the context reads past the RoPE tables, one past the block table past its vector)
    TQ_CHECK(uint64_t(it.first) + it.n <= opts_.context, "sequence {}: positions {}..{} reach past the runner's context of {}", it.seq,
             it.first, uint64_t(it.first) + it.n - 1, opts_.context);
    TQ_CHECK((uint64_t(it.first) + it.n + ps - 1) / ps <= it.block_table->size(),
             "sequence {}: positions up to {} need {} pages of {}; its block table has {}", it.seq, uint64_t(it.first) + it.n - 1,
             (uint64_t(it.first) + it.n + ps - 1) / ps, ps, it.block_table->size());
    TQ_CHECK(it.tokens != nullptr, "sequence {}: no tokens", it.seq);
    TQ_CHECK(!side_.n || (it.seq >= 0 && uint32_t(it.seq) < opts_.max_seqs), "sequence id {} has no side buffer (max_seqs {})", it.seq,
             opts_.max_seqs);
    // The ring holds the window and kSideRollback positions more: a sequence taken back further
    // (after a step that wrote its rows, then failed) has lost window rows it would read.
    TQ_CHECK(!side_.n || !spec_.policy.window || it.first == 0 || it.first + kSideRollback >= side_written_[size_t(it.seq)],
             "sequence {}: taken back from position {} to {}, further than the {} positions its recent-token ring keeps beyond the "
             "window; reset it and prefill it again",
             it.seq, side_written_[size_t(it.seq)], it.first, kSideRollback);
    if (ring_.on()) {
      TQ_CHECK(it.seq >= 0 && uint32_t(it.seq) < opts_.max_seqs, "sequence id {} has no window ring (max_seqs {})", it.seq, opts_.max_seqs);
      TQ_CHECK(ring_.holds(ring_written_[size_t(it.seq)], it.first),
               "sequence {}: taken back from position {} to {}, further than the {} positions its window ring keeps beyond the window; "
               "reset it and prefill it again",
               it.seq, ring_written_[size_t(it.seq)], it.first, ring_.rollback);
      ring_.table(it.seq, it.first + it.n, ring_table);
      std::copy(ring_table.begin(), ring_table.end(), ring_tables.begin() + long(s * max_pages_));
      const bool sub = it.n > ring_.step;  // written and attended in sub-steps
      for (uint32_t j = 0; j < it.n; ++j) {
        ring_slots.push_back(ring_.slot(it.seq, it.first + j));
        ring_batch_slots.push_back(sub ? -1 : ring_slots.back());
      }
      for (uint32_t j = 0; sub && j < it.n; j += ring_.step) {
        const uint32_t n = std::min(ring_.step, it.n - j);
        subs_.push_back(Group{uint32_t(s), 1, n, it.first + j + n, tokens.size() + j, int32_t(sub_lens.size())});
        sub_lens.push_back(int32_t(it.first + j + n));
      }
    }
    // dense_prompts: a whole prompt (from position 0, beyond what decode takes) is attended densely;
    // its group holds only such prompts, and consecutive ones (of any lengths) make one run.
    const bool dense = opts_.dense_prompts && it.first == 0 && it.n > kMaxDecodeQueryTokens;
    if (groups.empty() || groups.back().ntok != it.n || (groups.back().run >= 0) != dense) {
      groups.push_back(Group{uint32_t(s), 0, it.n, 0, tokens.size()});
      if (dense) {
        if (!prev_dense) {
          dense_runs_.push_back(DenseRun{tokens.size()});
          groups.back().run_head = true;
        }
        groups.back().run = int32_t(dense_runs_.size() - 1);
      }
    }
    if (dense) {
      DenseRun& r = dense_runs_.back();
      r.count++, r.max_n = std::max(r.max_n, it.n), r.rows += it.n;
      run_lens.push_back(it.n);
    }
    prev_dense = dense;
    groups.back().count++;
    groups.back().max_len = std::max(groups.back().max_len, it.first + it.n);
    for (uint32_t j = 0; j < it.n; ++j) {
      const uint32_t p = it.first + j;
      if (it.all_logits || j + 1 == it.n) rows.push_back(int32_t(tokens.size()));
      tokens.push_back(it.tokens[j]);
      pos.push_back(int32_t(p));
      slots.push_back(int64_t((*it.block_table)[p / ps]) * ps + p % ps);
    }
    std::copy(it.block_table->begin(), it.block_table->end(), tables.begin() + long(s * max_pages_));
    lens.push_back(int32_t(it.first + it.n));
    seq_ids.push_back(int32_t(it.seq));
  }
  const uint32_t N = uint32_t(tokens.size());
  TQ_CHECK(N >= 1 && N <= opts_.max_chunk, "a step takes 1..{} tokens, got {}", opts_.max_chunk, N);
  const auto put = [&](auto& buf, const auto& v) {
    check(cudaMemcpyAsync(buf.get(), v.data(), v.size() * sizeof(v[0]), cudaMemcpyHostToDevice, stream_), "upload");
  };
  put(tokens_, tokens), put(pos_, pos), put(rows_, rows), put(lens_, lens), put(tables_, tables), put(slots_, slots), put(seq_ids_, seq_ids);
  if (ring_.on()) put(ring_tables_, ring_tables), put(ring_slots_, ring_slots), put(ring_batch_slots_, ring_batch_slots);
  if (!sub_lens.empty()) put(sub_lens_, sub_lens);
  if (!dense_runs_.empty()) {
    std::vector<int32_t> meta;
    size_t at = 0;
    for (DenseRun& r : dense_runs_) {
      r.meta_at = meta.size();
      const std::vector<int32_t> m = dense_prompt_ragged(std::vector<uint32_t>(run_lens.begin() + long(at), run_lens.begin() + long(at + r.count)),
                                                         uint32_t(cfg_.n_heads), uint32_t(cfg_.n_kv_heads), uint32_t(cfg_.head_dim));
      meta.insert(meta.end(), m.begin(), m.end());
      at += r.count;
    }
    TQ_CHECK(meta.size() <= dense_meta_.n, "dense prompts: {} ints of lengths and offsets, room for {}", meta.size(), dense_meta_.n);
    put(dense_meta_, meta);
  }
  *n_tokens = N;
  *n_rows = uint32_t(rows.size());
  return groups;
}

void CudaModelRunner::mark_written(const std::vector<StepSeq>& step) {
  for (const StepSeq& it : step) {
    if (side_.n) side_written_[size_t(it.seq)] = it.first + it.n;  // the step's kernels write these rows into the side slots
    if (ring_.on()) {
      uint32_t& written = ring_written_[size_t(it.seq)];
      written = it.first == 0 ? it.first + it.n : std::max(written, it.first + it.n);
    }
  }
}

// One layer's attention: quantize-on-write of the step's K and V rows (fp32 rows: the codes are
// those the CPU reference writes for these rows), then decode for 1..8 new tokens a sequence and
// prefill beyond. A window-ring layer stores and attends a sequence's chunk of more than a ring step
// in sub-steps (subs_), after the rest of the batch, so that no row overwrites a ring slot a query of
// the same sub-step still reads.
void CudaModelRunner::layer_attention(uint32_t layer, const std::vector<Group>& groups, uint32_t N) {
  const size_t KV = size_t(cfg_.kv_dim());
  const bool ring = in_ring(layer);
  const auto store = [&](const int64_t* slots, size_t row0, uint32_t n, cudaStream_t stream) {
    QuantizeStoreParams st;
    st.cache = view(layer);
    st.k = k_.get() + row0 * KV;
    st.v = v_.get() + row0 * KV;
    st.dtype = DType::kF32;
    st.slot_mapping = slots + row0;
    st.num_tokens = n;
    st.error_flag = store_error_.get();
    quantize_store(st, stream);
  };
  // A dense run's q, k and v rows rounded to bf16 (dense_), which its attention reads.
  const auto to_dense = [&](const DenseRun& run) {
    const size_t Q = size_t(cfg_.q_dim());
    const DenseRows r = dense_rows(run.row0);
    layers::to_bf16(q_.get() + run.row0 * Q, run.rows * Q, r.q, stream_);
    layers::to_bf16(k_.get() + run.row0 * KV, run.rows * KV, r.k, stream_);
    layers::to_bf16(v_.get() + run.row0 * KV, run.rows * KV, r.v, stream_);
  };
  const auto attend = [&](const Group& g) {
    if (dense_group(layer, g)) {
      if (!g.run_head) return;  // attended with its run's first group
      const DenseRun& run = dense_runs_[size_t(g.run)];
      to_dense(run);
      return dense_prompt_attention(dense_params(run), stream_);
    }
    const DecodeParams p = attention_params(layer, g);
    if (g.ntok > kMaxDecodeQueryTokens)
      prefill_attention(p, stream_);
    else
      decode_attention(p, stream_);
  };
  if (store_stream_ && !ring && !groups.empty() &&
      std::all_of(groups.begin(), groups.end(), [&](const Group& g) { return dense_group(layer, g); })) {
    // Every group dense: the bf16 copies first, then cuDNN's attention enqueued before the store on
    // store_stream_ (the faster order of the two when both are ready), joined before what follows.
    for (const Group& g : groups)
      if (g.run_head) to_dense(dense_runs_[size_t(g.run)]);
    check(cudaEventRecord(fork_, stream_), "fork");
    for (const Group& g : groups)
      if (g.run_head) dense_prompt_attention(dense_params(dense_runs_[size_t(g.run)]), stream_);
    check(cudaStreamWaitEvent(store_stream_, fork_), "fork");
    try {
      store(slots_.get(), 0, N, store_stream_);
      check(cudaEventRecord(join_, store_stream_), "join");
      check(cudaStreamWaitEvent(stream_, join_), "join");
    } catch (...) {
      // A launch check may throw with the store enqueued: nothing is enqueued on stream_ (the next
      // step's uploads and K/V rows) before it has finished reading the rows and slots.
      cudaStreamSynchronize(store_stream_);
      throw;
    }
    return;
  }
  // ring_batch_slots_ has -1 for the sub-stepped rows; ring groups longer than a step are those rows.
  store(!ring ? slots_.get() : subs_.empty() ? ring_slots_.get() : ring_batch_slots_.get(), 0, N, stream_);
  for (const Group& g : groups)
    if (!ring || g.ntok <= ring_.step) attend(g);
  if (!ring) return;
  for (const Group& sub : subs_) {
    store(ring_slots_.get(), sub.row0, sub.ntok, stream_);
    attend(sub);
  }
}

void CudaModelRunner::enqueue(uint32_t N, uint32_t R, const std::vector<Group>& groups, bool sample) {
  const auto& c = cfg_;
  const uint32_t D = uint32_t(c.dim), F = uint32_t(c.hidden_dim);
  const bool adjacent = c.rope_style == model::RopeStyle::AdjacentPairs;
  layers::embed(embd_.w.get(), tokens_.get(), N, D, c.embed_scale, x_.get(), stream_);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& w = layers_[l];
    // The residual add of the previous layer's FFN output is fused into this norm.
    layers::add_rmsnorm(x_.get(), l ? o_.get() : nullptr, nullptr, N, D, w.attn_norm.get(), c.rms_eps, hb_.get(), stream_);
    gemm(w.wqkv, hb_.get(), N, qkv_.get());
    if (w.q_norm.n)  // qwen3: each q and k head normed before the centre and RoPE see it (can_run: no biases then)
      layers::qk_norm(qkv_.get(), N, c.n_heads, c.n_kv_heads, c.head_dim, w.q_norm.get(), w.k_norm.get(), c.rms_eps, stream_);
    // Keys less their centre; the first step fixes it from its own keys before RoPE. Sliding-window
    // layers turn by their own angles (Gemma 3: another base, unscaled).
    const bool local = c.layer_is_local(int(l));
    float* mu = centre_.n ? centre_.get() + l * size_t(c.kv_dim()) : nullptr;
    const float* bias = w.bqkv.n ? w.bqkv.get() : nullptr;
    if (mu && !centre_fixed_)
      layers::key_centre(qkv_.get(), bias, pos_.get(), N, c.n_heads, c.n_kv_heads, c.head_dim, c.rope_dim, adjacent,
                         (local ? centre_a_local_ : centre_a_).get(), (local ? centre_b_local_ : centre_b_).get(), mu, stream_);
    layers::qkv_rope(qkv_.get(), bias, pos_.get(), N, c.n_heads, c.n_kv_heads, c.head_dim, c.rope_dim,
                     (local ? rope_cos_local_ : rope_cos_).get(), (local ? rope_sin_local_ : rope_sin_).get(), adjacent, mu, q_.get(), k_.get(),
                     v_.get(), stream_);
    layer_attention(uint32_t(l), groups, N);
    gemm(w.wo, hb_.get(), N, o_.get());
    if (w.attn_post_norm.n) layers::rmsnorm_rows(o_.get(), N, D, w.attn_post_norm.get(), c.rms_eps, stream_);
    layers::add_rmsnorm(x_.get(), o_.get(), nullptr, N, D, w.ffn_norm.get(), c.rms_eps, hb_.get(), stream_);
    gemm(w.gate_up, hb_.get(), N, gu_.get());
    layers::gated_ffn(gu_.get(), N, F, c.ffn_act == model::FfnAct::GeluTanh, hb_.get(), stream_);
    gemm(w.down, hb_.get(), N, o_.get());
    if (w.ffn_post_norm.n) layers::rmsnorm_rows(o_.get(), N, D, w.ffn_post_norm.get(), c.rms_eps, stream_);
  }
  layers::add_rmsnorm(x_.get(), o_.get(), rows_.get(), R, D, out_norm_.get(), c.rms_eps, hb_.get(), stream_);
  gemm(tied_ ? embd_ : output_, hb_.get(), R, logits_.get());
  if (sample) layers::sample(logits_.get(), R, uint32_t(c.vocab_size), sample_args_.get(), ids_.get(), stream_);
  check(cudaGetLastError(), "forward");
}

std::vector<float> CudaModelRunner::forward(const std::vector<StepSeq>& step) {
  uint32_t N = 0, R = 0;
  const std::vector<Group> groups = upload_step(step, &N, &R);
  ensure_workspace(groups);
  mark_written(step);
  arm_store_flag();
  enqueue(N, R, groups, false);
  std::vector<float> out(size_t(R) * cfg_.vocab_size);
  check(cudaMemcpyAsync(out.data(), logits_.get(), out.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_), "logits");
  check(cudaMemcpyAsync(host_store_flag(), store_error_.get(), sizeof(int32_t), cudaMemcpyDeviceToHost, stream_), "store flag");
  check(cudaStreamSynchronize(stream_), "forward");
  check_stored();
  settle_centre();
  return out;
}

void CudaModelRunner::arm_store_flag() {
  if (store_error_set_) check(cudaMemsetAsync(store_error_.get(), 0, sizeof(int32_t), stream_), "store error flag");
  store_error_set_ = true;  // until check_stored reads it clear
}

void CudaModelRunner::check_stored() {
  const int32_t flag = *host_store_flag();
  store_error_set_ = flag != 0;  // a set flag is cleared by the next step's arm_store_flag
  if (!store_error_set_) return;
  TQ_CHECK(flag != 2, "a K/V row of this step had a slot past the cache's pages: the runner's block tables are wrong (a bug: please report it)");
  throw Error("a K/V row of this step has a non-finite element, a norm beyond fp16's 65504, or an element its cache format turns "
              "into infinity: the cache cannot store it (as on the CPU)");
}

void CudaModelRunner::settle_centre() {
  if (!centre_.n || centre_fixed_) return;
  std::vector<float> mu(centre_.n);
  check(cudaMemcpy(mu.data(), centre_.get(), mu.size() * sizeof(float), cudaMemcpyDeviceToHost), "key centres");
  const size_t H = size_t(cfg_.n_kv_heads), D = size_t(cfg_.head_dim);
  for (size_t i = 0; i < mu.size(); ++i)
    TQ_CHECK(std::isfinite(mu[i]), "layer {} KV head {}: the key centre of channel {} is {} (the first keys written are not all finite)",
             i / (H * D), i / D % H, i % D, mu[i]);
  centre_fixed_ = true;
}

std::vector<int> CudaModelRunner::sample_step(const std::vector<StepSeq>& step, const std::vector<engine::SampleArgs>& args) {
  std::vector<layers::SampleRow> rows;  // checked by forward_sample
  for (const engine::SampleArgs& a : args) rows.push_back({a.params.temperature, a.params.top_k, a.params.top_p, a.params.min_p, a.u});
  uint32_t N = 0, R = 0;
  std::vector<Group> groups = upload_step(step, &N, &R);
  check(cudaMemcpyAsync(sample_args_.get(), rows.data(), rows.size() * sizeof(rows[0]), cudaMemcpyHostToDevice, stream_), "upload");
  // A step of 1..8 new tokens for every sequence (decode, or verification of drafts) is replayed
  // from its graph (captured on first use), planned for the bucket's length bound rather than the
  // step's.
  // (Not the step that fixes the key centres: later steps would fix them again.)
  if (!opts_.eager && groups.size() == 1 && groups[0].ntok <= kMaxDecodeQueryTokens && (!centre_.n || centre_fixed_)) {
    groups[0].max_len = length_bucket(groups[0].max_len, opts_.context);
    ensure_workspace(groups);
    const GraphKey key{groups[0].ntok, N, R, groups[0].max_len};
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
      try {
        enqueue(N, R, groups, true);
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      check(cudaStreamEndCapture(stream_, &graph), "cudaStreamEndCapture");
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      check(e, "cudaGraphInstantiate");
      it = graphs_.emplace(key, exec).first;
    }
    mark_written(step);
    arm_store_flag();
    check(cudaGraphLaunch(it->second, stream_), "cudaGraphLaunch");
  } else {
    ensure_workspace(groups);
    mark_written(step);
    arm_store_flag();
    enqueue(N, R, groups, true);
  }
  check(cudaMemcpyAsync(host_ids_.get(), ids_.get(), R * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_), "sampled ids");
  check(cudaMemcpyAsync(host_store_flag(), store_error_.get(), sizeof(int32_t), cudaMemcpyDeviceToHost, stream_), "store flag");
  check(cudaStreamSynchronize(stream_), "forward");
  check_stored();
  settle_centre();
  return std::vector<int>(host_ids_.get(), host_ids_.get() + R);  // -1 where a row holds nothing to sample (sample.cu)
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
  // What the CUDA layers do not compute: q/k norms after a q/k bias (no such model known: the norm
  // is applied in place before qkv_rope adds the bias).
  if (c.qk_norm && c.has_qkv_bias)
    problem = fmt::format("architecture '{}' is not implemented in the CUDA runner with q/k/v biases before its q/k norms: use --device cpu",
                          model::arch_name(c.arch));
  if (!spec.policy.key_sim.empty())
    problem = fmt::format("KV spec '{}': ksim={} is a CPU simulation of another format; the CUDA runner has no such cache (--device cpu)",
                          spec.text, spec.policy.key_sim);
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
  return std::make_unique<CudaModelRunner>(m.config, &m, spec, opts, 0);
}

std::unique_ptr<engine::ModelRunner> make_random_model_runner(const model::ModelConfig& c, const KvSpec& spec,
                                                              const engine::RunnerOptions& opts, uint64_t seed) {
  return std::make_unique<CudaModelRunner>(c, nullptr, spec, opts, seed);
}

}  // namespace tq::cuda
