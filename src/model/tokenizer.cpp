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
  trie_.assign(1, TrieNode{});
  for (size_t r = 0; r < specials_.size(); ++r) {
    int node = 0;
    for (const char c : texts_[size_t(specials_[r])]) {
      const uint8_t b = uint8_t(c);
      int child = trie_child(node, b);
      if (child < 0) {
        child = int(trie_.size());
        trie_.emplace_back();  // (invalidates references into trie_: none held here)
        auto& next = trie_[size_t(node)].next;
        next.insert(std::lower_bound(next.begin(), next.end(), std::pair<uint8_t, int>{b, -1}), {b, child});
      }
      node = child;
    }
    if (trie_[size_t(node)].rank < 0) trie_[size_t(node)].rank = int(r);  // a duplicate text: the first one is the one matched
  }
}

int Tokenizer::trie_child(int node, uint8_t byte) const {
  const auto& next = trie_[size_t(node)].next;
  const auto it = std::lower_bound(next.begin(), next.end(), std::pair<uint8_t, int>{byte, -1});
  return it != next.end() && it->first == byte ? it->second : -1;
}

std::vector<Tokenizer::Fragment> Tokenizer::split_specials(std::string_view text, std::span<const TextSpan> literal) const {
  std::vector<Fragment> frags{{-1, text}};
  if (specials_.empty() || text.empty()) return frags;
  // Which specials occur at all: the trie walked from every byte. Only those get a pass below.
  // (Storing every occurrence instead cost Gemma's 30 whitespace-run specials 500 MB a MB of spaces.)
  std::vector<char> present(specials_.size(), 0);
  for (size_t i = 0; i < text.size(); ++i)
    for (size_t j = i, node = 0; j < text.size();) {
      const int next = trie_child(int(node), uint8_t(text[j++]));
      if (next < 0) break;
      node = size_t(next);
      if (trie_[node].rank >= 0) present[size_t(trie_[node].rank)] = 1;
    }
  // llama.cpp's tokenizer_st_partition: each special, longest first, splits the plain fragments the
  // longer ones left, at each occurrence from the left. An occurrence of a control or unknown token
  // that overlaps a literal span is passed over (the search goes on from its next byte).
  const auto in_literal = [&](size_t at, size_t n) {  // [at, at + n) of text overlaps a literal span
    const auto it = std::upper_bound(literal.begin(), literal.end(), at, [](size_t a, const TextSpan& sp) { return a < sp.end; });
    return it != literal.end() && it->begin < at + n;
  };
  std::vector<Fragment> next;
  for (size_t r = 0; r < specials_.size(); ++r) {
    if (!present[r]) continue;
    const int id = specials_[r];
    const std::string& sp = texts_[size_t(id)];
    const bool literal_blocks = types_[size_t(id)] != TokenType::UserDefined && !literal.empty();
    next.clear();
    for (const Fragment& f : frags) {
      if (f.id >= 0) {
        next.push_back(f);
        continue;
      }
      const size_t base = size_t(f.text.data() - text.data());
      size_t from = 0, cut = 0;  // search from `from`; the plain text not yet emitted starts at `cut`
      for (size_t at; (at = f.text.find(sp, from)) != std::string_view::npos;) {
        if (literal_blocks && in_literal(base + at, sp.size())) {
          from = at + 1;
          continue;
        }
        if (at > cut) next.push_back({-1, f.text.substr(cut, at - cut)});
        next.push_back({id, f.text.substr(at, sp.size())});
        from = cut = at + sp.size();
      }
      if (cut < f.text.size()) next.push_back({-1, f.text.substr(cut)});
    }
    frags.swap(next);
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
