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
    const size_t stop = std::min(L, end + max);
    return std::vector<int>(text_.begin() + long(end), text_.begin() + long(stop));
  }
  return {};
}

SpeculativeSpec parse_speculative_spec(const std::string& text) {
  SpeculativeSpec s;
  s.text = text;
  bool min_given = false;
  const std::vector<std::string> parts = split(text, ':');
  TQ_CHECK(parts[0] == "ngram", "--spec '{}': unknown draft source '{}' (known: ngram)", text, parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& part = parts[i];
    const size_t eq = part.find('=');
    const std::string name = part.substr(0, eq);
    const std::optional<uint64_t> value = eq == std::string::npos ? std::nullopt : parse_uint(std::string_view(part).substr(eq + 1));
    TQ_CHECK(value.has_value(), "--spec '{}': '{}' is not name=count", text, part);
    const uint64_t v = *value;
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

std::unique_ptr<Drafter> make_drafter(const SpeculativeSpec& s) { return std::make_unique<NgramDrafter>(s.min_ngram, s.max_ngram); }

uint32_t Speculation::length() const { return adaptive ? std::min(current_, max_draft) : max_draft; }

void Speculation::update(uint32_t drafted, uint32_t accepted) {
  if (drafted == 0) return;
  current_ = accepted == drafted ? std::min(length() + 2, max_draft) : std::max(length(), 2u) - 1;
}

}  // namespace tq::engine
