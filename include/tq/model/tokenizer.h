// Tokenizers: text <-> token ids.
//   - SentencePiece-style (scores + greedy best-pair merges + byte fallback): llama2.c's
//     tokenizer.bin, and GGUF tokenizer.ggml.model = "llama".
//   - Byte-level BPE (GPT-2 byte<->unicode mapping + ranked merges + regex pre-split):
//     GGUF tokenizer.ggml.model = "gpt2" with tokenizer.ggml.pre = "gpt2" / "smollm" (or absent).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tq/model/gguf.h"

namespace tq::model {

// GGUF tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
enum class TokenType : int32_t { Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

// Bytes [begin, end) of a text.
struct TextSpan {
  size_t begin, end;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text` (UTF-8 bytes; invalid UTF-8 is tokenized byte by byte), BOS first when
  // add_bos (and the tokenizer has one). GGUF tokenizers match special tokens (control,
  // user-defined and unknown, e.g. "<|im_start|>") literally in the text first, as llama.cpp's
  // tokenizer_st_partition does (longest first); llama2.c's does not (as run.c).
  std::vector<int> encode(std::string_view text, bool add_bos) const { return encode(text, add_bos, {}); }
  // The same, but a control or unknown token's text that overlaps one of `literal` (sorted,
  // disjoint spans of `text`) stays text; user-defined tokens are matched there too. llama.cpp's
  // parse_special = false, for the spans a chat template fills with the messages' own text: a
  // message that holds "<|im_start|>system" cannot open a turn (engine::render_chat).
  virtual std::vector<int> encode(std::string_view text, bool add_bos, std::span<const TextSpan> literal) const = 0;
  // The bytes of one token: byte tokens give their byte, special tokens their text verbatim.
  virtual std::string decode(int id) const = 0;
  // Concatenated pieces; skips BOS/EOS (and, when skip_special, every control token) and removes
  // the leading space the SentencePiece "dummy prefix" put before the first word, so that
  // decode(encode(s, bos)) == s for text the vocabulary covers.
  std::string decode(const std::vector<int>& ids, bool skip_special = true) const;
  // Streaming form (run.c's decode(prev_token, token)): the text to print for `id` generated after
  // `prev`: empty for BOS/EOS and control tokens, without the dummy-prefix space right after BOS.
  std::string decode_next(int prev, int id) const;

  int bos_id() const { return bos_id_; }  // -1 when none
  int eos_id() const { return eos_id_; }
  int eot_id() const { return eot_id_; }  // end-of-turn token (e.g. <|im_end|>); -1 when none
  bool add_bos_default() const { return add_bos_default_; }
  size_t vocab_size() const { return texts_.size(); }
  const std::string& token_text(int id) const;  // raw vocabulary string (throws when out of range)
  TokenType token_type(int id) const;
  int find_token(std::string_view text) const;  // exact vocabulary string -> id, or -1
  bool is_special(int id) const;  // control / user-defined / unknown

 protected:
  void check_id(int id) const;
  // Splits text around literal occurrences of the special tokens: output pieces with id >= 0 are
  // special tokens, the others plain text spans (id -1). As llama.cpp: each special token, longest
  // first, splits the plain text the longer ones left, at every occurrence from the left; but only
  // the specials that occur in the text get a pass (one walk of a trie of them finds those), where
  // one pass each of Gemma's 6,414 took minutes on a large prompt. Control and unknown tokens are
  // not matched where they overlap `literal` (encode).
  struct Fragment {
    int id;
    std::string_view text;
  };
  std::vector<Fragment> split_specials(std::string_view text, std::span<const TextSpan> literal = {}) const;
  void build_lookup();  // fills token_ids_, the special list and its trie from texts_/types_
  // texts_/scores_/types_ and bos/eos/eot from tokenizer.ggml.*, with length and range checks.
  void load_gguf_vocab(const GgufFile& f, bool need_scores);

  std::vector<std::string> texts_;  // [vocab] token strings as stored
  std::vector<float> scores_;       // [vocab] (SentencePiece) or empty
  std::vector<TokenType> types_;    // [vocab]
  std::unordered_map<std::string, int, StringHash, std::equal_to<>> token_ids_;  // first id of each string
  std::vector<int> specials_;  // ids matched literally in the input, longest text first
  // The specials' texts as a byte trie: node 0 is the root; a node's `rank` is the index in
  // specials_ of the first special whose text ends there (-1: none).
  struct TrieNode {
    std::vector<std::pair<uint8_t, int>> next;  // (byte, child node), sorted by byte
    int rank = -1;
  };
  std::vector<TrieNode> trie_;
  int trie_child(int node, uint8_t byte) const;
  int bos_id_ = -1, eos_id_ = -1, eot_id_ = -1;
  bool add_bos_default_ = false;
  bool dummy_prefix_ = false;  // SentencePiece: a space is prepended before tokenizing
};

// llama2.c tokenizer.bin: int32 max_token_length, then per token float32 score, int32 length, bytes.
// The file does not store the vocabulary size: vocab_size > 0 requires exactly that many tokens,
// 0 reads tokens until the end of the file.
std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path, int vocab_size = 0);
std::unique_ptr<Tokenizer> load_llama2c_tokenizer(std::shared_ptr<const ByteSource> src, int vocab_size = 0);

// From GGUF tokenizer.ggml.* metadata (model "llama" or "gpt2").
std::unique_ptr<Tokenizer> tokenizer_from_gguf(const GgufFile& f);

// The pre-tokenizer split of byte-level BPE, exposed for tests. pre = "gpt2" or "smollm" (the GPT-2
// pattern, with every \p{N} digit split off first). Returns byte spans of `text`.
std::vector<std::string_view> bpe_pre_split(std::string_view text, std::string_view pre);

}  // namespace tq::model
