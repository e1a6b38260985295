#include "tq/engine/speculative.h"

#include <algorithm>

#include "tq/check.h"
#include "tq/text.h"

namespace tq::engine {

NgramDrafter::NgramDrafter(uint32_t min_ngram, uint32_t max_ngram) : min_n_(min_ngram), max_n_(max_ngram), last_(max_ngram + 1) {
  TQ_CHECK(min_ngram >= 1 && min_ngram <= max_ngram && max_ngram <= 8, "n-gram sizes {}..{}: want 1 <= min <= n <= 8", min_ngram,
           max_ngram);
}

uint64_t NgramDrafter::key(size_t end, uint32_t n) const {
  uint64_t h = 0x9e3779b97f4a7c15ull * n;
  for (size_t i = end - n; i < end; ++i) {
    h ^= uint64_t(uint32_t(text_[i])) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  }
  return h;
}

void NgramDrafter::extend(std::span<const int> tokens) {
  for (int t : tokens) {
    // The n-grams ending at the old last token become matchable now that a token follows them.
    const size_t end = text_.size();
    for (uint32_t n = min_n_; n <= max_n_ && n <= end; ++n) last_[n][key(end, n)] = uint32_t(end);
    text_.push_back(t);
  }
}

std::vector<int> NgramDrafter::draft(uint32_t max) {
  const size_t L = text_.size();
  for (uint32_t n = std::min<size_t>(max_n_, L); n >= min_n_ && n >= 1; --n) {
    const auto it = last_[n].find(key(L, n));
    if (it == last_[n].end()) continue;
    const size_t end = it->second;  // one past the earlier occurrence; end < L
    if (!std::equal(text_.begin() + long(end - n), text_.begin() + long(end), text_.begin() + long(L - n))) continue;  // a hash collision
    // What followed the earlier occurrence, up to the end of the text; past it, the same again: an
    // occurrence that overlaps the suffix (a repeating stretch, period L - end) goes on repeating.
    std::vector<int> draft(text_.begin() + long(end), text_.begin() + long(std::min(L, end + max)));
    for (size_t period = L - end; draft.size() < max;) draft.push_back(draft[draft.size() - period]);
    return draft;
  }
  return {};
}

ModelDrafter::ModelDrafter(Engine& e) : e_(e), seq_(e.add_sequence()) {}

ModelDrafter::~ModelDrafter() { e_.remove_sequence(seq_); }

void ModelDrafter::extend(std::span<const int> tokens) { text_.insert(text_.end(), tokens.begin(), tokens.end()); }

std::vector<int> ModelDrafter::draft(uint32_t max) {
  if (text_.empty()) return {};
  // Keep the cached tokens the text still starts with; at least the last token is fed again, for
  // the logits of what follows it.
  const size_t keep = std::min<size_t>(std::mismatch(fed_.begin(), fed_.end(), text_.begin(), text_.end()).first - fed_.begin(),
                                       text_.size() - 1);
  e_.truncate(seq_, uint32_t(keep));
  fed_.resize(keep);
  // Every drafted token but the last is fed (for the one after it): the text and room - 1 more fit.
  const size_t context = e_.options().context;
  if (max == 0 || text_.size() > context) return {};
  const uint32_t room = uint32_t(std::min<size_t>(max, context - text_.size() + 1));
  std::vector<int> drafts;
  for (size_t at = keep; at < text_.size();) {  // the text not in the cache, in chunks; the last chunk's id is the first draft
    const size_t n = std::min<size_t>(text_.size() - at, e_.options().max_chunk);
    BatchItem item{seq_, std::vector<int>(text_.begin() + long(at), text_.begin() + long(at + n)), false};
    const int id = e_.forward_greedy({item})[0];
    fed_.insert(fed_.end(), item.tokens.begin(), item.tokens.end());
    at += n;
    if (at == text_.size()) drafts.push_back(id);
  }
  while (drafts.size() < room) {
    const int last = drafts.back();
    drafts.push_back(e_.forward_greedy({BatchItem{seq_, {last}, false}})[0]);
    fed_.push_back(last);
  }
  return drafts;
}

void check_draft_vocabulary(const model::Tokenizer& target, const model::Tokenizer& draft) {
  TQ_CHECK(target.vocab_size() == draft.vocab_size(), "the draft model's vocabulary has {} tokens, the target's {}: a draft model must "
           "share the target's tokenizer", draft.vocab_size(), target.vocab_size());
  for (int i = 0; i < int(target.vocab_size()); ++i)
    TQ_CHECK(target.token_text(i) == draft.token_text(i), "token {} is '{}' for the target and '{}' for the draft model: a draft model "
             "must share the target's tokenizer", i, target.token_text(i), draft.token_text(i));
}

SpeculativeSpec parse_speculative_spec(const std::string& text) {
  SpeculativeSpec s;
  s.text = text;
  bool min_given = false;
  const std::vector<std::string> parts = split(text, ':');
  TQ_CHECK(parts[0] == "ngram" || parts[0] == "draft", "--spec '{}': unknown draft source '{}' (known: ngram, draft)", text, parts[0]);
  if (parts[0] == "draft") s.source = SpeculativeSpec::Source::kDraftModel;
  std::vector<std::string> seen;  // option names: one given twice is refused (which one wins is no guess to make)
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& part = parts[i];
    const size_t eq = part.find('=');
    const std::string name = part.substr(0, eq);
    const std::optional<uint64_t> value = eq == std::string::npos ? std::nullopt : parse_uint(std::string_view(part).substr(eq + 1));
    TQ_CHECK(value.has_value(), "--spec '{}': '{}' is not name=count", text, part);
    TQ_CHECK(std::find(seen.begin(), seen.end(), name) == seen.end(), "--spec '{}': {}= given twice", text, name);
    seen.push_back(name);
    const uint64_t v = *value;
    TQ_CHECK(s.source == SpeculativeSpec::Source::kNgram || (name != "n" && name != "min"),
             "--spec '{}': {}= is an option of ngram (the draft model has none such)", text, name);
    if (name == "k") {
      TQ_CHECK(v >= 1 && v <= 8, "--spec '{}': k={} drafted tokens per step, want 1..8", text, v);
      s.max_draft = uint32_t(v);
    } else if (name == "n") {
      TQ_CHECK(v >= 1 && v <= 8, "--spec '{}': n={} (longest n-gram matched), want 1..8", text, v);
      s.max_ngram = uint32_t(v);
    } else if (name == "min") {
      TQ_CHECK(v >= 1 && v <= 8, "--spec '{}': min={} (shortest n-gram matched), want 1..8", text, v);
      s.min_ngram = uint32_t(v), min_given = true;
    } else if (name == "fixed") {
      TQ_CHECK(v <= 1, "--spec '{}': fixed={}, want 0 or 1", text, v);
      s.adaptive = v == 0;
    } else {
      TQ_CHECK(false, "--spec '{}': unknown option '{}' (known: k, n, min, fixed)", text, name);
    }
  }
  if (!min_given) s.min_ngram = std::min(s.min_ngram, s.max_ngram);
  TQ_CHECK(s.min_ngram <= s.max_ngram, "--spec '{}': min={} (shortest n-gram matched), want 1..n={}", text, s.min_ngram, s.max_ngram);
  return s;
}

std::unique_ptr<Drafter> make_drafter(const SpeculativeSpec& s) {
  TQ_CHECK(s.source == SpeculativeSpec::Source::kNgram, "--spec '{}': a draft model's drafter is built from its engine", s.text);
  return std::make_unique<NgramDrafter>(s.min_ngram, s.max_ngram);
}

namespace {

// A token from p[vocab] (sums to 1) without `skip`, renormalized: u in [0, 1) falls in the
// cumulative mass of the other tokens in id order.
int sample_without(const std::vector<float>& p, int skip, double u) {
  double rest = 0;
  for (size_t i = 0; i < p.size(); ++i) rest += int(i) == skip ? 0.0 : double(p[i]);
  const double target = u * rest;
  double acc = 0;
  int last = -1;
  for (size_t i = 0; i < p.size(); ++i) {
    if (int(i) == skip || p[i] <= 0) continue;
    acc += double(p[i]), last = int(i);
    if (acc > target) return int(i);
  }
  return last >= 0 ? last : skip;  // rounding left u * rest at the very end; or p is one-hot at skip
}

}  // namespace

Verdict verify_greedy(std::span<const int> ids, std::span<const int> drafts) {
  TQ_CHECK(ids.size() == drafts.size() + 1, "{} ids for {} drafts: want one per draft and one more", ids.size(), drafts.size());
  Verdict v;
  while (v.kept < drafts.size() && ids[v.kept] == drafts[v.kept]) ++v.kept;
  v.next = ids[v.kept];
  return v;
}

Verdict verify_sampled(std::span<const float> logits, std::span<const int> drafts, Sampler& sampler) {
  TQ_CHECK(logits.size() % (drafts.size() + 1) == 0, "{} logits are not {} rows", logits.size(), drafts.size() + 1);
  const size_t V = logits.size() / (drafts.size() + 1);
  std::vector<float> p;
  Verdict v;
  for (; v.kept < drafts.size(); ++v.kept) {
    const int d = drafts[v.kept];
    sampler.probabilities(logits.subspan(v.kept * V, V), p);
    if (!(sampler.draw() < double(p[size_t(d)]))) {
      v.next = sample_without(p, d, sampler.draw());
      return v;
    }
  }
  v.next = sampler.sample(logits.subspan(v.kept * V, V));
  return v;
}

uint32_t Speculation::length() const { return adaptive ? std::min(current_, max_draft) : max_draft; }

void Speculation::update(uint32_t drafted, uint32_t accepted) {
  if (drafted == 0) return;
  current_ = accepted == drafted ? std::min(length() + 2, max_draft) : std::max(length(), 2u) - 1;
}

}  // namespace tq::engine
