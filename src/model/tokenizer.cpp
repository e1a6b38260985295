// Tokenizer base: vocabulary lookups, special-token splitting, sequence decoding, GGUF dispatch.
#include "tq/model/tokenizer.h"

#include <algorithm>

#include <fmt/format.h>

#include "tokenizer_impl.h"
#include "tq/check.h"

namespace tq::model {

void Tokenizer::check_id(int id) const {
  TQ_CHECK(id >= 0 && size_t(id) < texts_.size(), "token id {} is out of range (vocabulary of {})", id, texts_.size());
}

const std::string& Tokenizer::token_text(int id) const {
  check_id(id);
  return texts_[size_t(id)];
}

TokenType Tokenizer::token_type(int id) const {
  check_id(id);
  return types_[size_t(id)];
}

int Tokenizer::find_token(std::string_view text) const {
  const auto it = token_ids_.find(text);
  return it == token_ids_.end() ? -1 : it->second;
}

bool Tokenizer::is_special(int id) const {
  const TokenType t = token_type(id);
  return t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown;
}

void Tokenizer::build_lookup() {
  token_ids_.clear();
  token_ids_.reserve(texts_.size());
  for (size_t i = 0; i < texts_.size(); ++i) token_ids_.emplace(texts_[i], int(i));  // first id wins
  specials_.clear();
  for (size_t i = 0; i < texts_.size(); ++i)
    if (!texts_[i].empty() && is_special(int(i))) specials_.push_back(int(i));
  // longest first, so that "<|im_start|>" wins over a shorter special that is its prefix
  std::stable_sort(specials_.begin(), specials_.end(),
                   [&](int a, int b) { return texts_[size_t(a)].size() > texts_[size_t(b)].size(); });
}

std::vector<Tokenizer::Fragment> Tokenizer::split_specials(std::string_view text) const {
  std::vector<Fragment> frags{{-1, text}};
  // As llama.cpp's tokenizer_st_partition: each special token (longest first) splits the plain
  // fragments that remain.
  for (const int id : specials_) {
    const std::string& s = texts_[size_t(id)];
    std::vector<Fragment> next;
    for (const Fragment& f : frags) {
      if (f.id >= 0 || f.text.find(s) == std::string_view::npos) {
        next.push_back(f);
        continue;
      }
      std::string_view rest = f.text;
      for (size_t at; (at = rest.find(s)) != std::string_view::npos;) {
        if (at > 0) next.push_back({-1, rest.substr(0, at)});
        next.push_back({id, rest.substr(at, s.size())});
        rest.remove_prefix(at + s.size());
      }
      if (!rest.empty()) next.push_back({-1, rest});
    }
    frags = std::move(next);
  }
  return frags;
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special) const {
  std::string out;
  bool first = true;
  for (const int id : ids) {
    check_id(id);
    if (id == bos_id_ || id == eos_id_) continue;
    if (skip_special && types_[size_t(id)] == TokenType::Control) continue;
    std::string piece = decode(id);
    // SentencePiece's dummy prefix: the space added in front of the text is not part of it
    if (first && dummy_prefix_ && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    first = false;
    out += piece;
  }
  return out;
}

void Tokenizer::load_gguf_vocab(const GgufFile& f, bool need_scores) {
  texts_ = f.get_string_array("tokenizer.ggml.tokens");
  const size_t n = texts_.size();
  TQ_CHECK(n > 0 && n <= size_t(1) << 30, "GGUF '{}': tokenizer.ggml.tokens has {} entries", f.name(), n);
  if (need_scores || f.has("tokenizer.ggml.scores")) {
    scores_ = f.get_f32_array("tokenizer.ggml.scores");
    TQ_CHECK(scores_.size() == n, "GGUF '{}': tokenizer.ggml.scores has {} entries, tokens {}", f.name(),
             scores_.size(), n);
  }
  types_.assign(n, TokenType::Normal);
  if (f.has("tokenizer.ggml.token_type")) {
    const std::vector<int64_t> t = f.get_int_array("tokenizer.ggml.token_type");
    TQ_CHECK(t.size() == n, "GGUF '{}': tokenizer.ggml.token_type has {} entries, tokens {}", f.name(), t.size(), n);
    for (size_t i = 0; i < n; ++i) {
      TQ_CHECK(t[i] >= 0 && t[i] <= 6, "GGUF '{}': token {} ('{}') has unknown token type {}", f.name(), i, texts_[i],
               t[i]);
      types_[i] = TokenType(t[i]);
    }
  }
  const auto id_key = [&](const char* key) -> int {
    if (!f.has(key)) return -1;
    const int64_t id = f.get_int(key);
    TQ_CHECK(id >= 0 && uint64_t(id) < n, "GGUF '{}': {} = {} is outside the vocabulary ({} tokens)", f.name(), key, id,
             n);
    return int(id);
  };
  bos_id_ = id_key("tokenizer.ggml.bos_token_id");
  eos_id_ = id_key("tokenizer.ggml.eos_token_id");
  eot_id_ = id_key("tokenizer.ggml.eot_token_id");
  build_lookup();
  if (eot_id_ < 0) {  // chat models mark the end of a turn with one of these
    for (const char* s : {"<|im_end|>", "<|eot_id|>", "<end_of_turn>"})
      if (const int id = find_token(s); id >= 0 && eot_id_ < 0) eot_id_ = id;
  }
}

std::string Tokenizer::decode_next(int prev, int id) const {
  check_id(id);
  if (id == bos_id_ || id == eos_id_ || types_[size_t(id)] == TokenType::Control) return {};
  std::string piece = decode(id);
  if (dummy_prefix_ && prev == bos_id_ && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
  return piece;
}

std::unique_ptr<Tokenizer> tokenizer_from_gguf(const GgufFile& f) {
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model == "llama") return detail::make_spm_from_gguf(f);
  if (model == "gpt2") return detail::make_bpe_from_gguf(f);
  throw Error(fmt::format("GGUF '{}': unsupported tokenizer.ggml.model '{}' (supported: llama, gpt2)", f.name(), model));
}

}  // namespace tq::model
