// The engine: sequences over one shared page pool, and the step that runs their new tokens
// through a model runner. It schedules (checks the step, reserves the sequences' pages in the
// block manager, all or nothing) and hands the step to the runner (runner.h); callers sample the
// next tokens from the logits it returns (sampler.h, generation.h).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tq/engine/runner.h"
#include "tq/kv/block_manager.h"
#include "tq/kv/spec.h"
#include "tq/model/model.h"

namespace tq::engine {

enum class Device { kCpu, kCuda };

// "cpu", "cuda" or "auto". auto is cuda where this build has CUDA, a GPU is present and the CUDA
// runner implements the model and every spec (else cpu; *note then says why, when a GPU is
// present). cuda throws tq::Error with the reason when that does not hold; other names too.
Device choose_device(const std::string& name, const model::ModelConfig& c, const std::vector<KvSpec>& specs, std::string* note = nullptr);
const char* device_name(Device d);

struct EngineOptions {
  Device device = Device::kCpu;
  unsigned threads = 0;     // CPU threads; 0: all hardware threads, and more are capped to them
  uint32_t context = 0;     // most tokens per sequence; 0: the model's training context
  uint32_t max_seqs = 1;    // sequences at once: the page pool's size (when num_pages is 0), GPU side buffers
  uint32_t num_pages = 0;   // pages in the pool; 0: max_seqs * ceil(context / page size)
  uint32_t max_chunk = 64;  // most tokens per forward() call, all sequences together
  bool eager = false;       // CUDA: no graphs (RunnerOptions::eager)
  GpuProducts products = GpuProducts::kAuto;  // CUDA: the products' kernels (RunnerOptions::products)
  bool batch_invariant = false;               // CUDA: RunnerOptions::batch_invariant
  bool dense_prompts = false;                 // CUDA: RunnerOptions::dense_prompts
  double gpu_memory = 0;    // CUDA: fraction of the GPU's memory to use, the pool sized by it (RunnerOptions)
  bool exact_products = false;  // CPU: fp32 products (RunnerOptions::exact_products)
  uint32_t prefix_tails = 0;    // specs with sink/window, models with window rings: tail slots for prefix caching (RunnerOptions)
  bool swa_full = false;        // sliding-window layers keep every position in the pool (RunnerOptions)
  // Key centre: the positions its mean RoPE turn is taken over (RunnerOptions); 0: context. A
  // command that sizes `context` by the run (tq run: prompt + -n) passes the context the user
  // asked for, so that the centre, and the text, do not change with -n. At most 2^20.
  uint32_t centre_span = 0;
};

// The runner of o.device for `m`, built for Engine::resolve'd options (what Engine builds).
std::unique_ptr<ModelRunner> make_runner(const model::Model& m, const KvSpec& spec, const EngineOptions& resolved);
// A runner over random weights of the shape `c` from `seed` (model/shapes.h): the CUDA runner's
// benchmark model. Throws tq::Error on the CPU or in a build without CUDA.
std::unique_ptr<ModelRunner> make_random_runner(const model::ModelConfig& c, const KvSpec& spec, const EngineOptions& resolved,
                                                uint64_t seed);

// New tokens of one sequence in a batch.
struct BatchItem {
  int seq = 0;
  std::vector<int> tokens;
  bool all_logits = false;  // logits of every token (perplexity) or of the last one only
};

class Engine {
 public:
  // On the runner of opts.device. Keeps a reference to `m` (must outlive the engine). Throws
  // tq::Error on an unsupported model (head dim, missing tensors, weight types that cannot be
  // dequantized), a bad KV spec, or one the device's runner does not implement.
  // A spec with a key centre (centre) is calibrated here: the engine's first step is a sequence of
  // key_centre_tokens(&m) (key_centre.h), removed again, which fixes the centres for its life. It
  // takes kCentreTokens (or the context, when shorter) whatever opts.max_chunk, so that the centre,
  // and the text, are the same on every engine of the model and spec: the runner is built for a
  // step of that many (runner_options), forward() still takes max_chunk tokens at most.
  Engine(const model::Model& m, const KvSpec& spec, const EngineOptions& opts = {});
  // On any runner, built for resolve(runner's config, page size, opts); the pool is the runner's.
  // The key centre's step reads key_centre_tokens(nullptr, vocab) (the runner has no tokenizer)
  // and takes as many as the runner's step (at most kCentreTokens). Throws tq::Error when
  // opts.max_chunk is over the runner's step.
  Engine(std::unique_ptr<ModelRunner> runner, uint32_t page_size, const EngineOptions& opts);
  // The options with the defaults filled in: the model's context, the pool for max_seqs of it.
  static EngineOptions resolve(const model::ModelConfig& c, uint32_t page_size, EngineOptions opts);
  // A runner's options for the resolved engine options: a spec with a key centre gets a step of
  // min(kCentreTokens, context) tokens at least, for its calibration step.
  static RunnerOptions runner_options(const EngineOptions& resolved, const KvSpec& spec);

  const model::ModelConfig& config() const { return runner_->config(); }
  const EngineOptions& options() const { return opts_; }
  const ModelRunner& runner() const { return *runner_; }
  const BlockManager& blocks() const { return blocks_; }

  int add_sequence();             // a new empty sequence; returns its id
  // A new sequence that starts with the cached pages of the longest prefix of tokens[0, limit)
  // (BlockManager::match_prefix); seq_len() says how many positions it got. Without prefix
  // caching, an empty sequence.
  int add_sequence(std::span<const int> tokens, uint32_t limit);
  // The same with the pages blocks().match_prefix() just found (BlockManager::add_cached_sequence);
  // with tails, its side rows come from the last page's tail.
  int add_cached_sequence(std::span<const int32_t> pages);
  // Turns prefix caching on (BlockManager, keyed by the KV spec). A spec that keeps tokens outside
  // the pool's pages (sink and window side buffers, window rings) needs tails (runner.h):
  // prefix_tails slots of them.
  // Returns why it cannot be, and leaves it off, when such a spec has none; "" when it is on.
  std::string enable_prefix_cache();
  // Caches the sequence's full pages: tokens, at least its seq_len() first, are its tokens.
  void cache_pages(int seq, std::span<const int> tokens) { blocks_.cache_full_pages(seq, tokens); }
  // cache_pages(), and with tails, a tail for the page that ends at the last page boundary within
  // the sequence's length and `upto`, so that a sequence with the same tokens up to there can start
  // from it. Call it where prefixes are worth keeping (a prompt computed, a sequence ending): each
  // tail takes a slot. Returns whether it kept a new tail (not: no tails, the page had one already,
  // or the runner no longer held the rows).
  bool cache_prefix(int seq, std::span<const int> tokens, uint32_t upto = UINT32_MAX);
  void remove_sequence(int seq);  // its pages go back to the pool
  void reset_sequence(int seq);   // empty again (pages released)
  // Takes the sequence back to its first `len` positions (rejected draft tokens); pages past them
  // go back to the pool. The runners keep nothing past a sequence's length that a later step reads
  // (the CPU's recent-token ring holds a chunk more than the window; the CUDA runner's ring
  // kSideRollback positions more, and its next step refuses a sequence taken back further; the
  // window rings of sliding-window layers hold a sub-step more, min(max_chunk, kRingStep), and both
  // runners refuse the same way: kv/window_ring.h).
  void truncate(int seq, uint32_t len) { blocks_.truncate(seq, len); }
  uint32_t seq_len(int seq) const { return blocks_.len(seq); }
  size_t kv_bytes(int seq) const;  // pages + side buffers + window rings held by the sequence
  // Bits per K/V element of the pages over all layers (edge layers included), from the runner's
  // page bytes; full pages, side buffers excluded.
  double bits_per_element() const;

  // Runs the batch (total tokens <= max_chunk) and appends the tokens to their sequences.
  // Returns logits, item by item: [n_tokens or 1][vocab]. Throws tq::Error (before changing any
  // sequence) when a sequence would exceed the context, a token id is out of range, a sequence
  // appears twice, or the page pool is exhausted.
  std::vector<float> forward(const std::vector<BatchItem>& batch);
  // The same step, sampled by the runner (on its device): a token id per logits row (the last
  // token's of an item, every token's of an all_logits item), as Sampler::sample(row, u) picks it
  // for args[row]. Same errors as forward(), and those of ModelRunner::forward_sample (a failed
  // step leaves no trace either); a row the runner cannot sample (its logits hold a NaN or +inf)
  // throws naming the sequence, or with `rows_may_fail` comes back as -1 (the scheduler ends that
  // request alone: the step's rows are written).
  std::vector<int> forward_sample(const std::vector<BatchItem>& batch, const std::vector<SampleArgs>& args, bool rows_may_fail = false);
  std::vector<int> forward_greedy(const std::vector<BatchItem>& batch);
  // One sequence, tokens in chunks of max_chunk: logits of the last token [vocab], or of every
  // token [n][vocab] when all_logits.
  std::vector<float> prefill(int seq, const std::vector<int>& tokens, bool all_logits = false);

 private:
  Engine(std::unique_ptr<ModelRunner> runner, uint32_t page_size, const EngineOptions& opts, const model::Model* m);
  // The key centre's calibration step (a no-op for specs without centre).
  void calibrate_centre(const model::Model* m);
  // Checks the batch (at most `most` tokens) and reserves its pages (all or nothing): the runner's step.
  std::vector<StepSeq> schedule(const std::vector<BatchItem>& batch, uint32_t most);
  // Runs fn(step); a failed step leaves no trace (the positions it reserved are given back).
  template <class Fn>
  auto run(const std::vector<BatchItem>& batch, Fn&& fn, uint32_t most = 0);

  EngineOptions opts_;
  std::unique_ptr<ModelRunner> runner_;
  BlockManager blocks_;  // over the runner's pages
};

}  // namespace tq::engine
