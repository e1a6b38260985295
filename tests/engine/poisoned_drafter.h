// A drafter for rollback tests: it knows the text plain decoding gives
// (`truth`) and drafts, at each step, a random number of its next tokens
// (some_right) or none, then tokens that are surely wrong. Every step thus has
// rejected drafts whose K/V rows were written and must be taken back.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "tq/engine/speculative.h"

namespace tq::testing {

class PoisonedDrafter : public engine::Drafter {
public:
  PoisonedDrafter(std::vector<int> truth, size_t prompt_len, int vocab,
                  bool some_right)
      : truth_(std::move(truth)), prompt_len_(prompt_len), vocab_(vocab),
        some_right_(some_right) {}
  void extend(std::span<const int> t) override { len_ += t.size(); }
  std::vector<int> draft(uint32_t max) override {
    std::vector<int> d;
    const size_t at =
        len_ -
        prompt_len_; // tokens generated so far: the next one is truth_[at]
    const uint32_t right = some_right_ ? uint32_t(rng_() % (max + 1)) : 0;
    for (uint32_t i = 0; i < right && at + i < truth_.size(); ++i)
      d.push_back(truth_[at + i]);
    while (d.size() < max) {
      int t = int(rng_() % uint32_t(vocab_));
      if (at + d.size() < truth_.size() && t == truth_[at + d.size()])
        t = (t + 1) % vocab_; // surely wrong
      d.push_back(t);
    }
    return d;
  }

private:
  std::vector<int> truth_;
  size_t prompt_len_, len_ = 0;
  int vocab_;
  bool some_right_;
  std::mt19937 rng_{7};
};

} // namespace tq::testing
