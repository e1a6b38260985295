// The backend boundary of the engine. A step is schedule -> run -> sample -> append (vLLM v1's
// scheduler / model runner / sampler, nano-vllm's llm_engine.step): the engine schedules (which
// sequences, which new tokens, which pages: the block manager), a ModelRunner runs the model over
// them, the Sampler picks the next tokens. A runner owns the weights, the forward pass and the KV
// storage, built from the KV spec in its own memory (host or device); it never allocates pages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tq/engine/sampler.h"
#include "tq/kv/spec.h"
#include "tq/model/model.h"

namespace tq::engine {

// One sequence's part of a step.
struct StepSeq {
  int seq = 0;                                        // block manager id
  const int* tokens = nullptr;                        // [n] new tokens
  uint32_t n = 0;
  uint32_t first = 0;                                 // position of tokens[0]
  const std::vector<int32_t>* block_table = nullptr;  // pages covering positions [0, first + n)
  bool all_logits = false;                            // logits of every new token, or of the last only
};

// How the CUDA runner multiplies by the weights in steps of few rows (beyond 16, cuBLAS).
enum class GpuProducts : uint8_t {
  kAuto,    // the GEMV kernel for one-row steps, gemm_rows for 2..16 rows (the default)
  kGemv,    // the GEMV kernel for one-row steps, cuBLAS from two rows (for comparison)
  kRows,    // gemm_rows for steps of 1..16 rows: tensor cores, batch-invariant
  kCublas,  // every product through cuBLAS (for comparison)
};

// What a runner was built for: the page pool and the largest step.
struct RunnerOptions {
  uint32_t context = 0;     // most positions per sequence (the model's when 0)
  uint32_t num_pages = 1;   // pages of the pool, indexed by the block manager's page ids
  uint32_t max_chunk = 64;  // most new tokens per step, all sequences together
  uint32_t max_seqs = 1;    // GPU runners: sequence ids 0 .. max_seqs-1 get side buffers (sink, window)
  unsigned threads = 0;     // CPU threads (0: all cores)
  bool exact_products = false;  // CPU runner: products in fp32 on dequantized weights instead of on
                                // 8-bit activations (the reference of the fast path; slower)
  bool eager = false;       // GPU runners: launch every kernel of every step (no CUDA graphs)
  GpuProducts products = GpuProducts::kAuto;  // CUDA runner: the kernels of the matrix products
  // CUDA runner: a position's logits are the same bits whatever else its step holds (up to 16 rows
  // a step and 9 tokens a sequence): products through gemm_rows, decode attention cut at fixed
  // positions. Greedy speculative decoding then gives plain decoding's text exactly. Specs
  // without sink/window only (their side blocks are cut by the step's shape).
  bool batch_invariant = false;
  // CUDA runner: a step's whole prompts (sequences from position 0, beyond 9 tokens) attend their
  // own rows densely in bf16 by cuDNN's fused attention (tq/cuda/dense_prompt.h) instead of their
  // quantized rows through the packed kernel; what they store is the same. Later chunks and decode
  // read the cache as always. Specs without sink/window; sliding-window layers keep the packed path.
  bool dense_prompts = false;
  double gpu_memory = 0;    // GPU runners: fraction of the device's memory for weights, scratch and
                            // the pool, which gets what is left (num_pages is then ignored); 0: off
  uint32_t prefix_tails = 0;  // specs with sink/window, models with window rings: tail slots for prefix caching (save_tail); 0: none
  // Key centre (KvPolicy::key_centre): the positions its mean RoPE turn is taken over; 0: context.
  uint32_t centre_span = 0;
  uint32_t centre_positions() const { return centre_span ? centre_span : context; }
  // Sliding-window layers keep every position in the pool (llama.cpp's --swa-full) instead of
  // the positions their queries can still see in per-sequence window rings (kv/window_ring.h).
  bool swa_full = false;
};

// Logits rows of a step: n for an all_logits sequence, 1 for the others.
size_t sampled_rows(const std::vector<StepSeq>& step);

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;

  virtual const model::ModelConfig& config() const = 0;
  virtual const KvSpec& spec() const = 0;
  // "cpu, 2 threads", "cuda:0 (NVIDIA H200)": for the commands' status lines.
  virtual std::string describe() const = 0;

  // A sequence id the block manager handed out: per-sequence KV state (side buffers).
  virtual void add_sequence(int seq) = 0;

  // Runs the step's new tokens through the model: their K/V rows go to the pages of their block
  // tables, attention reads them. Returns logits, sequence by sequence: [n or 1][vocab].
  virtual std::vector<float> forward(const std::vector<StepSeq>& step) = 0;

  // forward(), then a token from each logits row (one row per sequence, every new token's of an
  // all_logits sequence: a verification of drafted tokens): what Sampler::sample(row, u) picks
  // for args[r] = {params, u}, rows in the step's order. Returns [rows] token ids, -1 for a row
  // that holds a NaN or +inf or only -inf (nothing to sample: that sequence's failure, not the
  // step's). Throws tq::Error, before the step runs, on one args entry per row missing, invalid
  // parameters or u outside [0, 1).
  // Checks the arguments, then runs sample_step().
  std::vector<int> forward_sample(const std::vector<StepSeq>& step, const std::vector<SampleArgs>& args);
  // forward_sample() with greedy sampling: the argmax, ties to the lowest id.
  std::vector<int> forward_greedy(const std::vector<StepSeq>& step) {
    return forward_sample(step, std::vector<SampleArgs>(sampled_rows(step)));
  }

  // Pages of the pool (RunnerOptions::num_pages, or what gpu_memory left for it).
  virtual uint32_t num_pages() const = 0;
  // Most new tokens a step takes, all sequences together (RunnerOptions::max_chunk).
  virtual uint32_t max_chunk() const = 0;
  // KV bytes: one page of the pool over its layers, one sequence's fixed side buffers (sink,
  // window), and one sequence's window rings (the sliding-window layers' pages when they are not
  // in the pool: kv/window_ring.h; sequence ids 0 .. max_seqs-1 have one).
  virtual size_t page_bytes() const = 0;
  virtual size_t side_bytes() const = 0;
  virtual size_t ring_bytes() const { return 0; }
  virtual size_t ring_page_bytes() const { return 0; }  // one page of the window rings over their layers

  // Prefix caching for specs with side buffers (sink, window) and models with window rings. A
  // sequence that starts from P cached positions (P a page boundary) must read, as a cold run would,
  // the fp16 rows of the sink and of the window before P, and the sliding-window layers' rows
  // before P, which the pool's pages do not carry. A tail is a snapshot of them: the sink rows,
  // the rows of positions [P - window, P) and the window rings, in one of RunnerOptions::prefix_tails
  // slots fixed at construction (the block manager says which slot belongs to which cached page).
  // With tails on, the side ring and the window rings keep a page more than the runner needs for its
  // steps, so that the rows before the last page boundary P <= len are still there when a sequence
  // ends.
  uint32_t tail_slots() const { return tails_; }
  virtual size_t tail_bytes() const { return 0; }  // one tail slot
  // Copies the sequence's side rows for a cached prefix of `end` positions (a page boundary at
  // most its length) into `slot`. Returns false, copying nothing, when its ring no longer holds
  // them (a sequence taken back further than the ring allows).
  virtual bool save_tail(int seq, uint32_t end, uint32_t slot);
  // Fills the side rows of `seq` (just added, holding `end` cached positions) from `slot`.
  virtual void restore_tail(uint32_t slot, int seq, uint32_t end);

 protected:
  // forward_sample() on checked arguments. Device runners sample on the device and copy back the
  // ids only; this default samples forward()'s logits on the host.
  virtual std::vector<int> sample_step(const std::vector<StepSeq>& step, const std::vector<SampleArgs>& args);

  uint32_t tails_ = 0;  // tail slots this runner holds (set by runners that implement tails)
};

}  // namespace tq::engine
