#include "tq/engine/eval.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <utility>

#include "tq/check.h"
#include "tq/engine/engine.h"
#include "tq/engine/generation.h"
#include "tq/engine/sampler.h"

namespace tq::engine {
namespace {

// log-softmax of one row of logits, in double. out: [n]
void log_softmax(const float* x, size_t n, std::vector<double>& out) {
  out.resize(n);
  const double mx = *std::max_element(x, x + n);
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += std::exp(double(x[i]) - mx);
  const double lse = mx + std::log(s);
  for (size_t i = 0; i < n; ++i) out[i] = double(x[i]) - lse;
}

struct Acc {
  double nll = 0, kl = 0;
  size_t top1 = 0, n = 0;
  size_t bytes = 0;
};

PerplexityRow finish(const KvSpec& s, const Engine& e, const Acc& a, double ref_ppl) {
  PerplexityRow r;
  r.kv = s.text;
  r.bits_per_element = e.bits_per_element();
  r.kv_mib = double(a.bytes) / (1024.0 * 1024.0);
  r.ppl = std::exp(a.nll / double(std::max<size_t>(1, a.n)));
  r.delta_pct = ref_ppl > 0 ? 100.0 * (r.ppl / ref_ppl - 1.0) : 0.0;
  r.kl = a.kl / double(std::max<size_t>(1, a.n));
  r.top1 = double(a.top1) / double(std::max<size_t>(1, a.n));
  return r;
}

}  // namespace

PerplexityResult evaluate_perplexity(const model::Model& m, const std::vector<int>& tokens, const std::vector<KvSpec>& specs,
                                     const PerplexityOptions& o, const std::function<void(size_t, size_t)>& progress) {
  TQ_CHECK(o.ctx >= 2, "--ctx must be at least 2 tokens, got {}", o.ctx);
  TQ_CHECK(tokens.size() >= 2, "the text has {} tokens; perplexity needs at least 2", tokens.size());
  // A window holds at most the whole text: the pools are sized by that, not by a --ctx the text never fills.
  const uint32_t window = uint32_t(std::min<size_t>(o.ctx, tokens.size()));
  EngineOptions eo{.device = o.device, .threads = o.threads, .context = window, .max_seqs = 1, .num_pages = 0, .max_chunk = o.chunk,
                   .gpu_memory = o.gpu_memory / double(specs.size() + 1),  // each engine holds its own weights
                   .exact_products = o.exact_products};
  const KvSpec ref_spec = parse_kv_spec(o.reference);
  std::vector<std::unique_ptr<Engine>> engines;  // [0] reference, then one per spec
  try {
    engines.push_back(std::make_unique<Engine>(m, ref_spec, eo));
    for (const KvSpec& s : specs) engines.push_back(std::make_unique<Engine>(m, s, eo));
  } catch (const Error& e) {
    if (o.gpu_memory == 0) throw;
    throw Error(fmt::format("--gpu-memory {} is shared by {} engines (the reference and each spec): {}", o.gpu_memory, specs.size() + 1,
                            e.what()));
  }
  std::vector<Acc> acc(engines.size());
  const size_t V = size_t(m.config.vocab_size);
  std::vector<double> lp_ref, lp;
  std::vector<int> seqs;
  for (auto& e : engines) seqs.push_back(e->add_sequence());

  const size_t total = tokens.size();
  for (size_t w0 = 0; w0 + 1 < total; w0 += o.ctx) {
    const size_t w1 = std::min(total, w0 + o.ctx);  // window [w0, w1)
    for (size_t i = 0; i < engines.size(); ++i) engines[i]->reset_sequence(seqs[i]);
    for (size_t c0 = w0; c0 < w1; c0 += o.chunk) {
      const size_t c1 = std::min(w1, c0 + o.chunk);
      BatchItem item{0, std::vector<int>(tokens.begin() + long(c0), tokens.begin() + long(c1)), true};
      if (c0 == w0 && o.bos >= 0) item.tokens[0] = o.bos;  // the window's first token is context only: BOS in its place
      std::vector<std::vector<float>> logits(engines.size());  // [engines][c1-c0][V]
      for (size_t i = 0; i < engines.size(); ++i) {
        BatchItem it = item;
        it.seq = seqs[i];
        logits[i] = engines[i]->forward({it});
      }
      for (size_t t = std::max(c0, w0 + o.score_from); t < c1 && t + 1 < w1; ++t) {  // position t predicts token t+1 of the window
        const size_t r = t - c0;
        log_softmax(&logits[0][r * V], V, lp_ref);
        const int target = tokens[t + 1];
        const size_t ref_top = size_t(std::max_element(lp_ref.begin(), lp_ref.end()) - lp_ref.begin());
        for (size_t i = 0; i < engines.size(); ++i) {
          Acc& a = acc[i];
          const std::vector<double>* l = &lp_ref;
          if (i > 0) {
            log_softmax(&logits[i][r * V], V, lp);
            l = &lp;
            double kl = 0;
            for (size_t j = 0; j < V; ++j) kl += std::exp(lp_ref[j]) * (lp_ref[j] - lp[j]);
            a.kl += kl;
            a.top1 += size_t(std::max_element(lp.begin(), lp.end()) - lp.begin()) == ref_top;
          } else {
            a.top1 += 1;
          }
          a.nll -= (*l)[size_t(target)];
          a.n += 1;
        }
      }
      if (progress) progress(c1, total);
    }
    for (size_t i = 0; i < engines.size(); ++i) acc[i].bytes = std::max(acc[i].bytes, engines[i]->kv_bytes(seqs[i]));
  }
  PerplexityResult res;
  res.reference = finish(ref_spec, *engines[0], acc[0], 0);
  for (size_t i = 0; i < specs.size(); ++i) res.rows.push_back(finish(specs[i], *engines[i + 1], acc[i + 1], res.reference.ppl));
  res.scored = acc[0].n;
  return res;
}

namespace {

// The filler of one prompt: about `tokens` tokens of the classic sentences, or of the haystack
// from a random sentence start; the needle goes in at `depth` of it, at a sentence boundary.
class Filler {
 public:
  Filler(const model::Tokenizer& tok, std::string haystack) : haystack_(std::move(haystack)) {
    const std::string sample = haystack_.empty() ? kSentences : haystack_.substr(0, 20000);
    chars_per_token_ = double(sample.size()) / double(std::max<size_t>(1, tok.encode(sample, false).size()));
  }
  // About how many tokens the haystack holds (0 without one: the sentences repeat as needed).
  size_t haystack_tokens() const { return size_t(double(haystack_.size()) / chars_per_token_); }
  // `scale` < 1 shortens the text (a prompt that came out longer than allowed is rebuilt so).
  std::string text(size_t tokens, double depth, const std::string& needle, std::mt19937_64& rng, double scale) const {
    if (haystack_.empty()) {
      const size_t per = std::max<size_t>(1, size_t(std::lround(double(kSentences.size()) / chars_per_token_)));
      const size_t n = std::max<size_t>(1, size_t(double(tokens) * scale) / per);
      const size_t at = size_t(std::lround(depth * double(n)));
      std::string t;
      for (size_t i = 0; i < n; ++i) t += (i == at ? needle : "") + kSentences;
      if (at >= n) t += needle;
      return t;
    }
    const size_t chars = size_t(double(tokens) * scale * chars_per_token_);
    TQ_CHECK(chars + 1 < haystack_.size(), "--haystack: the text holds about {} tokens, fewer than the {} a prompt of these --lengths needs",
             size_t(double(haystack_.size()) / chars_per_token_), tokens);
    size_t start = rng() % (haystack_.size() - chars);
    const size_t dot = haystack_.find(". ", start);
    if (dot != std::string::npos && dot + 2 + chars <= haystack_.size()) start = dot + 2;
    std::string t = haystack_.substr(start, chars);
    size_t at = size_t(depth * double(t.size()));
    const size_t boundary = t.find(". ", at);  // the needle is a sentence of its own
    at = depth >= 1.0 ? t.size() : boundary == std::string::npos ? t.size() : boundary + 2;
    return t.substr(0, at) + (at == t.size() ? " " : "") + needle + t.substr(at);
  }

 private:
  static inline const std::string kSentences = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
  std::string haystack_;
  double chars_per_token_ = 4;
};

// Whether `text` holds the number `key` on its own: "12345" in "is 12345." but not in "123456".
bool says_number(const std::string& text, const std::string& key) {
  const auto digit = [&](size_t i) { return std::isdigit(static_cast<unsigned char>(text[i])) != 0; };
  for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + 1))
    if ((at == 0 || !digit(at - 1)) && (at + key.size() == text.size() || !digit(at + key.size()))) return true;
  return false;
}

}  // namespace

std::vector<PasskeyRow> evaluate_passkey(const model::Model& m, const model::Tokenizer& tok, const std::vector<KvSpec>& specs,
                                         const PasskeyOptions& o, const std::function<void(const std::string&)>& progress) {
  TQ_CHECK(!o.lengths.empty() && !o.depths.empty(), "passkey needs at least one length and one depth");
  TQ_CHECK(o.trials >= 1, "--trials {}: at least one key per length and depth", o.trials);
  for (double d : o.depths)  // NaN fails both
    TQ_CHECK(d >= 0.0 && d <= 1.0, "--depths {}: a depth is a fraction of the filler, in [0, 1]", d);
  // A cell is found by its (length, depth): a value given twice would count its trials twice.
  for (size_t i = 0; i < o.depths.size(); ++i)
    for (size_t j = 0; j < i; ++j) TQ_CHECK(o.depths[i] != o.depths[j], "--depths: {} is given twice", o.depths[i]);
  for (size_t i = 0; i < o.lengths.size(); ++i)
    for (size_t j = 0; j < i; ++j) TQ_CHECK(o.lengths[i] != o.lengths[j], "--lengths: {} is given twice", o.lengths[i]);
  const auto too_long = [&](uint64_t tokens) { return o.max_context && tokens + o.answer_tokens > o.max_context; };
  for (uint32_t len : o.lengths) {
    TQ_CHECK(len >= 1, "--lengths {}: a prompt length is at least 1 token", len);
    TQ_CHECK(!too_long(len), "--lengths {}: with the {} answer tokens, beyond the model's training context of {} tokens; pass "
             "--allow-long-context to run anyway", len, o.answer_tokens, o.max_context);
  }
  const std::string intro =
      "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about "
      "the pass key.\n";
  const std::string question = "\nWhat is the pass key? The pass key is";
  const Filler filler(tok, o.haystack);
  // A haystack shorter than the longest prompt: said with the lengths asked for (the probe below
  // would otherwise name its own one token).
  const uint32_t most = *std::max_element(o.lengths.begin(), o.lengths.end());
  TQ_CHECK(o.haystack.empty() || filler.haystack_tokens() > most, "--haystack: the text holds about {} tokens, fewer than the {} of the "
           "longest --lengths", filler.haystack_tokens(), most);
  const auto needle_of = [](const std::string& key) { return fmt::format("The pass key is {}. Remember it. {} is the pass key. ", key, key); };
  // The shortest prompt: the intro, the key and the question around the least filler (one round of the
  // sentences, a few characters of the haystack); a shorter length asked for would silently get it.
  std::mt19937_64 pick_shortest(0);
  const size_t shortest =
      prompt_tokens(m, tok, intro + filler.text(1, 0.0, needle_of("10000"), pick_shortest, 1.0) + question, false).size();
  for (uint32_t len : o.lengths)
    TQ_CHECK(len >= shortest, "--lengths {}: the shortest pass-key prompt is {} tokens with this model (the instructions, the key and "
             "the question around the least filler); give lengths of at least {}", len, shortest, shortest);
  std::mt19937_64 rng(o.seed);
  // Prompts first (the same prompts for every spec).
  struct Trial {
    uint32_t length;
    double depth;
    std::string key;
    std::vector<int> prompt;
  };
  std::vector<Trial> trials;
  size_t longest = 0;
  for (uint32_t len : o.lengths)
    for (double d : o.depths)
      for (uint32_t i = 0; i < o.trials; ++i) {
        const std::string key = std::to_string(10000 + rng() % 90000);
        const std::string needle = needle_of(key);
        const size_t fill = len > 80 ? len - 80 : 1;  // ~80 tokens of intro, needle and question
        std::vector<int> prompt;
        const uint64_t stretch = o.haystack.empty() ? 0 : rng();  // (the classic filler keeps its keys of earlier versions)
        // A haystack's stretch may tokenize denser than its sample: shorten it until the prompt fits.
        for (double scale = 1.0;; scale *= 0.95) {
          std::mt19937_64 pick(stretch);
          prompt = prompt_tokens(m, tok, intro + filler.text(fill, d, needle, pick, scale) + question, false);
          if (!too_long(prompt.size()) || o.haystack.empty() || scale < 0.5) break;
        }
        // (the intro and the question can make it longer than asked)
        TQ_CHECK(!too_long(prompt.size()), "--lengths {}: its prompt has {} tokens; with the {} answer tokens, beyond the model's "
                 "training context of {} tokens; pass --allow-long-context to run anyway", len, prompt.size(), o.answer_tokens, o.max_context);
        longest = std::max(longest, prompt.size());
        trials.push_back({len, d, key, std::move(prompt)});
      }
  Sampler greedy({});  // temperature 0: the argmax, no random numbers
  std::vector<PasskeyRow> rows;
  for (const KvSpec& s : specs) {
    // One engine a spec, sized for the longest prompt; each trial a sequence of its own.
    Engine e(m, s, {.device = o.device, .threads = o.threads, .context = uint32_t(longest + o.answer_tokens), .gpu_memory = o.gpu_memory});
    for (uint32_t len : o.lengths)
      for (size_t di = 0; di < (o.by_depth ? o.depths.size() : 1); ++di) {
        PasskeyRow row{s.text, 0, len, o.by_depth ? o.depths[di] : -1.0, 0, 0};
        for (const Trial& t : trials) {
          if (t.length != len || (o.by_depth && t.depth != o.depths[di])) continue;
          row.length = std::max(row.length, uint32_t(t.prompt.size()));
          const int seq = e.add_sequence();
          std::string answer;
          int prev = t.prompt.back();
          generate(e, seq, e.prefill(seq, t.prompt), greedy, m, tok, {.max_tokens = o.answer_tokens}, [&](int next) {
            answer += tok.decode_next(prev, next);
            prev = next;
          });
          e.remove_sequence(seq);
          row.correct += says_number(answer, t.key);
          row.trials += 1;
          if (progress) progress(fmt::format("{} len {} depth {}: key {} -> '{}'", s.text, t.prompt.size(), t.depth, t.key, answer));
        }
        rows.push_back(row);
      }
  }
  return rows;
}

}  // namespace tq::engine
