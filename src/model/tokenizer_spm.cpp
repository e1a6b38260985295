// SentencePiece-style tokenizer: vocabulary strings with scores, merged greedily.
//
// Encoding, as llama2.c's run.c encode() (and llama.cpp's llm_tokenizer_spm for GGUF "llama"):
//   1. a "dummy prefix" space is put in front of the text (sentencepiece's add_dummy_prefix);
//   2. the text is cut into UTF-8 code points (a lead byte plus at most 3 continuation bytes; a
//      stray continuation byte starts its own unit, as in run.c); each unit is its vocabulary token
//      or, when absent, one <0xXX> byte token per byte (byte fallback);
//   3. repeatedly, the adjacent pair whose concatenated string is in the vocabulary with the highest
//      score is merged (leftmost on ties), until no pair merges.
// run.c rescans all pairs after each merge (O(n^2)); a heap of candidates gives the same result.
// Flavours: llama2.c's tokenizer.bin stores spaces as ' ' and has no special-token parsing (BOS = 1,
// EOS = 2, bytes at 3..258); GGUF stores spaces as U+2581 "▁" and matches control/user-defined
// tokens literally, adding the prefix space at the start and after each special token (llama.cpp).
#include <array>
#include <cstring>

#include <fmt/format.h>

#include "tokenizer_impl.h"
#include "tq/check.h"

namespace tq::model {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581, sentencepiece's space

// "<0xHH>" -> HH, or -1.
int parse_byte_token(std::string_view s) {
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return -1;
  const auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(s[3]), lo = hex(s[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

class SpmTokenizer final : public Tokenizer {
 public:
  enum class Flavor { Llama2c, Gguf };

  explicit SpmTokenizer(Flavor fl) : flavor_(fl) {}
  using Tokenizer::decode;

  void set_vocab(std::vector<std::string> texts, std::vector<float> scores) {
    texts_ = std::move(texts);
    scores_ = std::move(scores);
  }
  void load_from_gguf(const GgufFile& f) { load_gguf_vocab(f, true); }

  // After texts_/scores_/types_ are set: lookups and the byte-fallback table.
  void finish() {
    if (flavor_ == Flavor::Llama2c) {
      types_.assign(texts_.size(), TokenType::Normal);
      for (size_t i = 0; i < texts_.size(); ++i)
        if (parse_byte_token(texts_[i]) >= 0) types_[i] = TokenType::Byte;
      if (!texts_.empty()) types_[0] = TokenType::Unknown;  // <unk>
      if (bos_id_ >= 0) types_[size_t(bos_id_)] = TokenType::Control;
      if (eos_id_ >= 0) types_[size_t(eos_id_)] = TokenType::Control;
    }
    build_lookup();
    byte_ids_.fill(-1);
    for (int b = 0; b < 256; ++b) byte_ids_[size_t(b)] = find_token(fmt::format("<0x{:02X}>", b));
    dummy_prefix_ = add_space_prefix_;
  }

  void set_space_prefix(bool on) { add_space_prefix_ = on; }
  void set_add_bos(bool on) { add_bos_default_ = on; }
  void set_special_ids(int bos, int eos) {
    bos_id_ = bos;
    eos_id_ = eos;
  }

  using Tokenizer::encode;
  std::vector<int> encode(std::string_view text, bool add_bos, std::span<const TextSpan> literal) const override {
    std::vector<int> out;
    if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
    if (text.empty()) return out;
    if (flavor_ == Flavor::Llama2c) {
      const std::string s = std::string(add_space_prefix_ ? " " : "") + std::string(text);
      if (const size_t bad = encode_piece(s, out); bad < s.size()) {
        const size_t prefix = add_space_prefix_ ? 1 : 0;
        TQ_CHECK(bad >= prefix, "tokenizer: the vocabulary has no token for the space put before the text");
        detail::throw_unencodable_byte(text, bad - prefix);
      }
      return out;
    }
    bool prev_special = true;  // the start counts as "after a special token" for the prefix space
    for (const Fragment& fr : split_specials(text, literal)) {
      if (fr.id >= 0) {
        out.push_back(fr.id);
        prev_special = true;
        continue;
      }
      std::string s;
      if (add_space_prefix_ && prev_special) s += kSpaceMark;
      for (const char c : fr.text) {
        if (c == ' ') s += kSpaceMark;
        else s += c;
      }
      if (const size_t bad = encode_piece(s, out); bad < s.size()) {
        // map the offset in s back to fr.text: the prefix mark and each space became kSpaceMark
        const size_t mark = add_space_prefix_ && prev_special ? kSpaceMark.size() : 0;
        TQ_CHECK(bad >= mark, "tokenizer: the vocabulary has no token for the space (U+2581) put before the text, nor byte-fallback "
                              "tokens for its bytes");
        size_t at = mark, k = 0;
        for (; at < bad; ++k) at += fr.text[k] == ' ' ? kSpaceMark.size() : 1;
        if (at > bad && k > 0) --k;  // inside the mark of the space fr.text[k - 1]
        detail::throw_unencodable_byte(text, size_t(fr.text.data() - text.data()) + k);
      }
      prev_special = false;
    }
    return out;
  }

  std::string decode(int id) const override {
    check_id(id);
    const std::string& t = texts_[size_t(id)];
    const TokenType ty = types_[size_t(id)];
    if (ty == TokenType::Byte || (flavor_ == Flavor::Llama2c && parse_byte_token(t) >= 0)) {
      const int b = parse_byte_token(t);
      if (b >= 0) return std::string(1, char(b));
    }
    if (flavor_ == Flavor::Gguf && ty == TokenType::Normal) {
      std::string s;  // "▁" -> ' '
      for (size_t i = 0; i < t.size();) {
        if (t.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
          s += ' ';
          i += kSpaceMark.size();
        } else {
          s += t[i++];
        }
      }
      return s;
    }
    return t;
  }

 private:
  // Tokenizes one plain fragment (spaces already in vocabulary form), appending to out. Returns
  // s.size(), or the offset in s of a byte that has neither a token nor a byte-fallback token.
  size_t encode_piece(std::string_view s, std::vector<int>& out) const {
    std::vector<std::string> syms;  // [units] vocabulary strings
    for (size_t i = 0; i < s.size();) {
      size_t n = 1;  // run.c: a byte, then following continuation bytes, at most 4 bytes in all
      while (i + n < s.size() && (uint8_t(s[i + n]) & 0xC0) == 0x80 && n < 4) ++n;
      const std::string_view unit = s.substr(i, n);
      if (find_token(unit) >= 0) {
        syms.emplace_back(unit);
      } else {
        for (const char& c : unit) {
          const int id = byte_ids_[uint8_t(c)];
          if (id < 0) return i + size_t(&c - unit.data());
          syms.push_back(texts_[size_t(id)]);
        }
      }
      i += n;
    }
    std::string cat;
    detail::merge_pairs(syms, [&](const std::string& l, const std::string& r, double* p) {
      cat.assign(l).append(r);
      const int id = find_token(cat);
      // run.c starts its best score at -1e10: lower scores never merge
      if (id < 0 || !(scores_[size_t(id)] > -1e10f)) return false;
      *p = -double(scores_[size_t(id)]);
      return true;
    });
    for (const std::string& sym : syms) out.push_back(find_token(sym));
    return s.size();
  }

  Flavor flavor_;
  bool add_space_prefix_ = true;
  std::array<int, 256> byte_ids_{};
};

}  // namespace

namespace detail {

std::unique_ptr<Tokenizer> make_spm_from_gguf(const GgufFile& f) {
  auto tok = std::make_unique<SpmTokenizer>(SpmTokenizer::Flavor::Gguf);
  tok->load_from_gguf(f);
  tok->set_space_prefix(f.get_bool_or("tokenizer.ggml.add_space_prefix", true));
  tok->set_add_bos(f.get_bool_or("tokenizer.ggml.add_bos_token", true));
  tok->finish();
  return tok;
}

}  // namespace detail

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& path, int vocab_size) {
  return load_llama2c_tokenizer(ByteSource::map_file(path), vocab_size);
}

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(std::shared_ptr<const ByteSource> src, int vocab_size) {
  const std::string& name = src->name();
  TQ_CHECK(vocab_size >= 0, "llama2.c tokenizer '{}': invalid vocab_size {}", name, vocab_size);
  const uint8_t* p = src->data();
  const size_t size = src->size();
  TQ_CHECK(size >= 4, "llama2.c tokenizer '{}': {} bytes, too small for the header", name, size);
  TQ_CHECK(std::memcmp(p, "GGUF", 4) != 0, "llama2.c tokenizer '{}' is a GGUF file: a GGUF model carries its own tokenizer (give it with -m, "
           "without --tokenizer)", name);
  int32_t max_len;
  std::memcpy(&max_len, p, 4);
  TQ_CHECK(max_len > 0, "llama2.c tokenizer '{}': invalid max_token_length {}", name, max_len);
  auto tok = std::make_unique<SpmTokenizer>(SpmTokenizer::Flavor::Llama2c);
  std::vector<std::string> texts;
  std::vector<float> scores;
  size_t pos = 4;
  while (vocab_size > 0 ? texts.size() < size_t(vocab_size) : pos < size) {
    const size_t i = texts.size();
    TQ_CHECK(size - pos >= 8, "llama2.c tokenizer '{}': truncated at token {} (offset {}, {} bytes left){}", name, i, pos,
             size - pos, vocab_size > 0 ? fmt::format(", expected {} tokens", vocab_size) : "");
    float score;
    int32_t len;
    std::memcpy(&score, p + pos, 4);
    std::memcpy(&len, p + pos + 4, 4);
    pos += 8;
    TQ_CHECK(len >= 0 && size_t(len) <= size - pos, "llama2.c tokenizer '{}': token {} has length {} at offset {} ({} bytes left)",
             name, i, len, pos - 4, size - pos);
    texts.emplace_back(reinterpret_cast<const char*>(p + pos), size_t(len));
    scores.push_back(score);
    pos += size_t(len);
  }
  TQ_CHECK(pos == size, "llama2.c tokenizer '{}': {} trailing bytes after {} tokens", name, size - pos, texts.size());
  TQ_CHECK(texts.size() >= 3, "llama2.c tokenizer '{}': only {} tokens (needs <unk>, <s>, </s> at least)", name,
           texts.size());
  tok->set_vocab(std::move(texts), std::move(scores));
  tok->set_special_ids(1, 2);  // run.c: BOS = 1, EOS = 2
  tok->set_add_bos(true);
  tok->set_space_prefix(true);
  tok->finish();
  return tok;
}

}  // namespace tq::model
