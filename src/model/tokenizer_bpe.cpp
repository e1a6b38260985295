// Byte-level BPE (GPT-2 style), GGUF tokenizer.ggml.model = "gpt2".
//
// Encoding, as llama.cpp's llm_tokenizer_bpe_session::tokenize (and HF tokenizers' ByteLevel BPE):
//   1. special tokens (control / user-defined) are matched literally and emitted as they are;
//   2. each remaining span is pre-split into words (bpe_pre_split, by tokenizer.ggml.pre);
//   3. each byte of a word is mapped to a printable code point (GPT-2's bytes_to_unicode: bytes
//      '!'..'~', 0xA1..0xAC and 0xAE..0xFF map to themselves, the other 68 bytes, in increasing
//      order, to U+0100..U+0143, so ' ' becomes 'Ġ' U+0120);
//   4. the word's code points are merged pairwise, always the pair "left right" of lowest rank in
//      tokenizer.ggml.merges (leftmost on ties), until no pair is in the merge list;
//   5. each resulting symbol is a vocabulary token (for llama3 pre-tokenizers a word that is a
//      token as a whole is taken directly: llama.cpp's ignore_merges).
// Decoding maps the code points of a normal token back to bytes.
#include <array>

#include <fmt/format.h>

#include "tokenizer_impl.h"
#include "tq/check.h"

namespace tq::model {
namespace {

struct ByteMap {
  std::array<std::string, 256> enc;  // byte -> UTF-8 of its printable code point
  std::array<int16_t, 512> dec;      // code point -> byte, -1 when not a byte code point
  ByteMap() {
    dec.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? b : next++;
      detail::utf8_append(enc[b], cp);
      dec[cp] = int16_t(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

class BpeTokenizer final : public Tokenizer {
 public:
  using Tokenizer::decode;

  void load(const GgufFile& f) {
    load_gguf_vocab(f, false);
    TQ_CHECK(f.has("tokenizer.ggml.pre"),
             "GGUF '{}': tokenizer.ggml.pre is missing (llama.cpp's 'default' pre-tokenizer is not supported)", f.name());
    pre_ = f.get_string("tokenizer.ggml.pre");
    bpe_pre_split("", pre_);  // throws for an unsupported pre-tokenizer, naming it
    const bool llama3 = pre_ == "llama3" || pre_ == "llama-v3" || pre_ == "llama-bpe" || pre_ == "falcon3";
    ignore_merges_ = llama3;
    add_bos_default_ = f.get_bool_or("tokenizer.ggml.add_bos_token", llama3);
    const std::vector<std::string>& merges = f.get_string_array("tokenizer.ggml.merges");
    ranks_.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      const size_t sp = merges[i].find(' ', 1);
      TQ_CHECK(sp != std::string::npos && sp + 1 < merges[i].size(),
               "GGUF '{}': tokenizer.ggml.merges[{}] = '{}' is not of the form 'left right'", f.name(), i, merges[i]);
      ranks_.emplace(merges[i], int(i));  // first occurrence keeps the lower rank
    }
  }

  using Tokenizer::encode;
  std::vector<int> encode(std::string_view text, bool add_bos, std::span<const TextSpan> literal) const override {
    std::vector<int> out;
    if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
    const ByteMap& bm = byte_map();
    std::string mapped, key;
    std::vector<std::string> syms;  // [symbols of one word] UTF-8 strings
    for (const Fragment& fr : split_specials(text, literal)) {
      if (fr.id >= 0) {
        out.push_back(fr.id);
        continue;
      }
      for (const std::string_view word : bpe_pre_split(fr.text, pre_)) {
        mapped.clear();
        for (const char c : word) mapped += bm.enc[uint8_t(c)];
        if (ignore_merges_) {
          if (const int id = find_token(mapped); id >= 0) {
            out.push_back(id);
            continue;
          }
        }
        syms.clear();
        for (size_t i = 0; i < mapped.size();) {  // mapped is valid UTF-8 by construction
          const size_t n = detail::utf8_len(mapped, i);
          syms.emplace_back(mapped.substr(i, n));
          i += n;
        }
        detail::merge_pairs(syms, [&](const std::string& l, const std::string& r, double* p) {
          key.assign(l).append(1, ' ').append(r);
          const auto it = ranks_.find(key);
          if (it == ranks_.end()) return false;
          *p = double(it->second);
          return true;
        });
        size_t at = size_t(word.data() - text.data());  // offset in text of the symbol's first byte
        for (const std::string& s : syms) {
          const size_t done = emit_symbol(s, out);
          if (done != kAll) detail::throw_unencodable_byte(text, at + done);
          at += code_points(s);  // one code point per byte of the word
        }
      }
    }
    return out;
  }

  std::string decode(int id) const override {
    check_id(id);
    const std::string& t = texts_[size_t(id)];
    if (is_special(id)) return t;
    const ByteMap& bm = byte_map();
    std::string out;
    for (size_t i = 0; i < t.size();) {
      const size_t n = detail::utf8_len(t, i);
      const uint32_t cp = n > 1 || uint8_t(t[i]) < 0x80 ? detail::utf8_decode(t, i, n) : 0xFFFFFFFFu;
      if (cp < bm.dec.size() && bm.dec[cp] >= 0) out += char(bm.dec[cp]);
      else out.append(t, i, n);  // not a byte code point: keep as it is
      i += n;
    }
    return out;
  }

 private:
  static constexpr size_t kAll = ~size_t(0);

  static size_t code_points(std::string_view s) {
    size_t n = 0;
    for (size_t i = 0; i < s.size(); i += detail::utf8_len(s, i)) ++n;
    return n;
  }

  // Appends the token(s) of one merged symbol. Returns kAll, or the index of the code point (= of
  // the word's byte) that has no token, for the caller to name its offset in the text.
  size_t emit_symbol(const std::string& s, std::vector<int>& out) const {
    if (const int id = find_token(s); id >= 0) {
      out.push_back(id);
      return kAll;
    }
    // A merge result that is not a token (inconsistent merges), or one byte whose code point the
    // vocabulary lacks (byte-level vocabularies drop bytes that never occur in UTF-8, such as 0xFF):
    // fall back to the code points.
    size_t k = 0;
    for (size_t i = 0; i < s.size(); ++k) {
      const size_t n = detail::utf8_len(s, i);
      const int id = find_token(std::string_view(s).substr(i, n));
      if (id < 0) return k;
      out.push_back(id);
      i += n;
    }
    return kAll;
  }

  std::string pre_;
  bool ignore_merges_ = false;
  std::unordered_map<std::string, int, StringHash, std::equal_to<>> ranks_;  // "left right" -> rank
};

}  // namespace

namespace detail {
std::unique_ptr<Tokenizer> make_bpe_from_gguf(const GgufFile& f) {
  auto tok = std::make_unique<BpeTokenizer>();
  tok->load(f);
  return tok;
}
}  // namespace detail

}  // namespace tq::model
