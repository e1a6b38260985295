// Pre-tokenizer splits of byte-level BPE, hand-coded instead of std::regex (which has no \p{L}):
//
//   gpt2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   smollm: first "\p{N}" (every digit becomes its own piece), then gpt2 inside each piece
//   llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
//           |\s*[\r\n]+|\s+(?!\S)|\s+
//   qwen2:  as llama3 with \p{N} instead of \p{N}{1,3}
//
// These are the patterns llama.cpp's llama-vocab.cpp selects for tokenizer.ggml.pre = "gpt-2",
// "smollm", "llama3"/"llama-bpe", "qwen2"; its unicode.cpp applies a list of patterns in sequence,
// each splitting the pieces of the previous one and keeping unmatched spans as pieces, and treats
// the end of a piece as the end of the text (lookaheads do not see past it). Same here.
//
// Limits: \p{L} / \p{N} / \s come from the range tables below, which cover ASCII, Latin-1, Latin
// Extended A/B + Additional, IPA, Greek, Cyrillic, Armenian, Hebrew, Arabic letters, Devanagari,
// Thai, Georgian, Hangul, kana, CJK ideographs and fullwidth forms, and the common digit blocks, not
// all of Unicode: a letter outside them counts as punctuation ([^\s\p{L}\p{N}]), which changes
// where words split for those scripts. Combining marks (\p{M}) are not letters, as in the regex.
#include <algorithm>
#include <iterator>

#include <fmt/format.h>

#include "tokenizer_impl.h"
#include "tq/common.h"

namespace tq::model {
namespace detail {

namespace {

struct Range {
  uint32_t lo, hi;
};

// \p{L} (approximate, see above). Sorted, non-overlapping.
constexpr Range kLetters[] = {
    {0x41, 0x5A},       {0x61, 0x7A},       {0xAA, 0xAA},       {0xB5, 0xB5},       {0xBA, 0xBA},
    {0xC0, 0xD6},       {0xD8, 0xF6},       {0xF8, 0x2C1},      {0x2C6, 0x2D1},     {0x2E0, 0x2E4},
    {0x2EC, 0x2EC},     {0x2EE, 0x2EE},     {0x370, 0x374},     {0x376, 0x377},     {0x37A, 0x37D},
    {0x37F, 0x37F},     {0x386, 0x386},     {0x388, 0x38A},     {0x38C, 0x38C},     {0x38E, 0x3A1},
    {0x3A3, 0x3F5},     {0x3F7, 0x481},     {0x48A, 0x52F},     {0x531, 0x556},     {0x559, 0x559},
    {0x560, 0x588},     {0x5D0, 0x5EA},     {0x5EF, 0x5F2},     {0x620, 0x64A},     {0x66E, 0x66F},
    {0x671, 0x6D3},     {0x6D5, 0x6D5},     {0x904, 0x939},     {0x93D, 0x93D},     {0x950, 0x950},
    {0x958, 0x961},     {0xE01, 0xE30},     {0xE32, 0xE33},     {0xE40, 0xE46},     {0x10A0, 0x10C5},
    {0x10D0, 0x10FA},   {0x10FC, 0x10FF},   {0x1100, 0x11FF},   {0x1E00, 0x1F15},   {0x1F18, 0x1F1D},
    {0x1F20, 0x1F45},   {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},   {0x1FBE, 0x1FBE},
    {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},   {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},
    {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},   {0x2071, 0x2071},   {0x207F, 0x207F},   {0x2090, 0x209C},
    {0x2102, 0x2102},   {0x2107, 0x2107},   {0x210A, 0x2113},   {0x2115, 0x2115},   {0x2119, 0x211D},
    {0x2124, 0x2124},   {0x2126, 0x2126},   {0x2128, 0x2128},   {0x212A, 0x212D},   {0x212F, 0x2139},
    {0x213C, 0x213F},   {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2CE4},
    {0x3005, 0x3006},   {0x3031, 0x3035},   {0x303B, 0x303C},   {0x3041, 0x3096},   {0x309D, 0x309F},
    {0x30A1, 0x30FA},   {0x30FC, 0x30FF},   {0x3105, 0x312F},   {0x3131, 0x318E},   {0x31A0, 0x31BF},
    {0x31F0, 0x31FF},   {0x3400, 0x4DBF},   {0x4E00, 0x9FFF},   {0xA000, 0xA48C},   {0xAC00, 0xD7A3},
    {0xF900, 0xFA6D},   {0xFB00, 0xFB06},   {0xFF21, 0xFF3A},   {0xFF41, 0xFF5A},   {0xFF66, 0xFFBE},
    {0x20000, 0x2A6DF}, {0x2A700, 0x2EBE0}, {0x30000, 0x3134A},
};

// \p{N}: decimal digits (Nd), letter numbers (Nl) and other numbers (No) of the common blocks.
constexpr Range kNumbers[] = {
    {0x30, 0x39},     {0xB2, 0xB3},     {0xB9, 0xB9},     {0xBC, 0xBE},     {0x660, 0x669},   {0x6F0, 0x6F9},
    {0x966, 0x96F},   {0x9E6, 0x9EF},   {0xE50, 0xE59},   {0x2070, 0x2070}, {0x2074, 0x2079}, {0x2080, 0x2089},
    {0x2150, 0x2182}, {0x2185, 0x2189}, {0x2460, 0x249B}, {0x24EA, 0x24FF}, {0x2776, 0x2793}, {0x3007, 0x3007},
    {0x3021, 0x3029}, {0xFF10, 0xFF19},
};

// \s: the Unicode White_Space property.
constexpr Range kSpaces[] = {
    {0x09, 0x0D}, {0x20, 0x20}, {0x85, 0x85}, {0xA0, 0xA0}, {0x1680, 0x1680}, {0x2000, 0x200A},
    {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000},
};

template <size_t N>
bool in(const Range (&table)[N], uint32_t cp) {
  const Range* it = std::upper_bound(std::begin(table), std::end(table), cp,
                                     [](uint32_t v, const Range& r) { return v < r.lo; });
  return it != std::begin(table) && cp <= std::prev(it)->hi;
}

enum class Pattern { Gpt2, SmolLM, Llama3, Qwen2 };

Pattern pattern_for(std::string_view pre) {
  if (pre == "gpt-2" || pre == "gpt2") return Pattern::Gpt2;
  if (pre == "smollm") return Pattern::SmolLM;
  if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3") return Pattern::Llama3;
  if (pre == "qwen2" || pre == "deepseek-r1-qwen") return Pattern::Qwen2;
  throw Error(fmt::format("unsupported BPE pre-tokenizer '{}' (supported: gpt-2, smollm, llama3/llama-bpe, qwen2)", pre));
}

// One piece [b, e) of code points; `cut` receives the end of each match.
class Matcher {
 public:
  Matcher(const std::vector<uint32_t>& cps, const std::vector<CharClass>& cls, size_t b, size_t e)
      : cp_(cps), cls_(cls), b_(b), e_(e) {}

  template <typename Cut>
  void gpt2(Cut cut) const {
    for (size_t pos = b_; pos < e_;) {
      const uint32_t c = cp_[pos];
      if (size_t n = contraction(pos, false)) {
        cut(pos += n);
        continue;
      }
      // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional space, then a run of one class
      const size_t start = c == ' ' ? pos + 1 : pos;
      const CharClass k = at(start);
      if (start < e_ && k != CharClass::Space) {
        size_t q = start;
        while (q < e_ && at(q) == k) ++q;
        cut(pos = q);
        continue;
      }
      cut(pos = whitespace(pos, false));
    }
  }

  template <typename Cut>
  void llama3(Cut cut, size_t max_digits) const {
    for (size_t pos = b_; pos < e_;) {
      const uint32_t c = cp_[pos];
      if (size_t n = contraction(pos, true)) {
        cut(pos += n);
        continue;
      }
      // [^\r\n\p{L}\p{N}]?\p{L}+
      const bool opt = c != '\r' && c != '\n' && at(pos) != CharClass::Letter && at(pos) != CharClass::Number;
      if (at(pos) == CharClass::Letter || (opt && pos + 1 < e_ && at(pos + 1) == CharClass::Letter)) {
        size_t q = at(pos) == CharClass::Letter ? pos : pos + 1;
        while (q < e_ && at(q) == CharClass::Letter) ++q;
        cut(pos = q);
        continue;
      }
      // \p{N}{1,max}
      if (at(pos) == CharClass::Number) {
        size_t q = pos;
        while (q < e_ && at(q) == CharClass::Number && q - pos < max_digits) ++q;
        cut(pos = q);
        continue;
      }
      // " ?[^\s\p{L}\p{N}]+[\r\n]*"
      const size_t start = c == ' ' ? pos + 1 : pos;
      if (start < e_ && at(start) == CharClass::Other) {
        size_t q = start;
        while (q < e_ && at(q) == CharClass::Other) ++q;
        while (q < e_ && (cp_[q] == '\r' || cp_[q] == '\n')) ++q;
        cut(pos = q);
        continue;
      }
      cut(pos = whitespace(pos, true));
    }
  }

 private:
  CharClass at(size_t i) const { return i < e_ ? cls_[i] : CharClass::Other; }

  // 's 't 're 've 'm 'll 'd (case-insensitive for llama3/qwen2): length matched, or 0
  size_t contraction(size_t pos, bool icase) const {
    if (cp_[pos] != '\'' || pos + 1 >= e_) return 0;
    const auto lower = [&](size_t i) -> uint32_t {
      const uint32_t c = cp_[i];
      return icase && c >= 'A' && c <= 'Z' ? c + 32 : c;
    };
    const uint32_t a = lower(pos + 1);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (pos + 2 >= e_) return 0;
    const uint32_t b = lower(pos + 2);
    return ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) ? 3 : 0;
  }

  // At a position where the word alternatives failed: "\s*[\r\n]+" (llama3 only), "\s+(?!\S)", "\s+",
  // or a single code point when nothing matches (undefined by the patterns; keeps progress).
  size_t whitespace(size_t pos, bool newline_rule) const {
    size_t q = pos;
    while (q < e_ && cls_[q] == CharClass::Space) ++q;
    if (q == pos) return pos + 1;
    if (newline_rule) {
      for (size_t k = q; k > pos; --k)  // \s*[\r\n]+ ends right after the run's last newline
        if (cp_[k - 1] == '\r' || cp_[k - 1] == '\n') return k;
    }
    // \s+(?!\S): when a non-space follows, leave the run's last space to prefix the next word
    return (q - pos > 1 && q < e_) ? q - 1 : q;
  }

  const std::vector<uint32_t>& cp_;
  const std::vector<CharClass>& cls_;
  size_t b_, e_;
};

}  // namespace

CharClass classify(uint32_t cp) {
  if (cp < 0x80) {  // fast path
    if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return CharClass::Letter;
    if (cp >= '0' && cp <= '9') return CharClass::Number;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CharClass::Space;
    return CharClass::Other;
  }
  if (in(kLetters, cp)) return CharClass::Letter;
  if (in(kNumbers, cp)) return CharClass::Number;
  if (in(kSpaces, cp)) return CharClass::Space;
  return CharClass::Other;
}

size_t utf8_len(std::string_view s, size_t i) {
  const auto u = [&](size_t k) { return uint8_t(s[k]); };
  const uint8_t c = u(i);
  size_t n;
  uint32_t min;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) { n = 2; min = 0x80; }
  else if ((c & 0xF0) == 0xE0) { n = 3; min = 0x800; }
  else if ((c & 0xF8) == 0xF0) { n = 4; min = 0x10000; }
  else return 1;  // continuation byte or 0xF8..0xFF: invalid lead
  if (i + n > s.size()) return 1;
  for (size_t k = 1; k < n; ++k)
    if ((u(i + k) & 0xC0) != 0x80) return 1;
  const uint32_t cp = utf8_decode(s, i, n);
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 1;  // overlong / surrogate
  return n;
}

void throw_unencodable_byte(std::string_view text, size_t offset) {
  const uint8_t b = uint8_t(text[offset]);
  size_t start = offset;  // the lead byte of the sequence that may hold text[offset]
  while (start > 0 && offset - start < 3 && (uint8_t(text[start]) & 0xC0) == 0x80) --start;
  const size_t n = utf8_len(text, start);
  const bool valid = b < 0x80 || (n > 1 && start + n > offset);
  if (valid) {
    const uint32_t cp = utf8_decode(text, start, n);
    const std::string shown = cp >= 0x20 && cp != 0x7F ? fmt::format("'{}' ", text.substr(start, n)) : "";
    throw Error(fmt::format("tokenizer: the character {}(U+{:04X}, byte 0x{:02X} at offset {} of the text) has no token in this model's "
                            "vocabulary, nor a byte-fallback token",
                            shown, cp, b, offset));
  }
  throw Error(fmt::format("tokenizer: byte 0x{:02X} at offset {} of the text is not valid UTF-8, and this model's vocabulary has no token "
                          "for it: convert the text to UTF-8 first (e.g. iconv -f latin1 -t utf-8)",
                          b, offset));
}

uint32_t utf8_decode(std::string_view s, size_t i, size_t len) {
  const auto u = [&](size_t k) { return uint32_t(uint8_t(s[k])); };
  switch (len) {
    case 1: return u(i);
    case 2: return ((u(i) & 0x1F) << 6) | (u(i + 1) & 0x3F);
    case 3: return ((u(i) & 0x0F) << 12) | ((u(i + 1) & 0x3F) << 6) | (u(i + 2) & 0x3F);
    default: return ((u(i) & 0x07) << 18) | ((u(i + 1) & 0x3F) << 12) | ((u(i + 2) & 0x3F) << 6) | (u(i + 3) & 0x3F);
  }
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

}  // namespace detail

std::vector<std::string_view> bpe_pre_split(std::string_view text, std::string_view pre) {
  using namespace detail;
  const Pattern pat = pattern_for(pre);
  // Code points with their byte offsets; a byte of invalid UTF-8 is one unit of class Other.
  std::vector<uint32_t> cps;       // [n]
  std::vector<size_t> offs;        // [n + 1] byte offset of each unit
  std::vector<CharClass> classes;  // [n]
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_len(text, i);
    const bool valid = n > 1 || uint8_t(text[i]) < 0x80;
    cps.push_back(valid ? utf8_decode(text, i, n) : 0xFFFFFFFFu);
    classes.push_back(valid ? classify(cps.back()) : CharClass::Other);
    offs.push_back(i);
    i += n;
  }
  offs.push_back(text.size());

  std::vector<std::string_view> out;
  size_t last = 0;  // code point index where the current output piece starts
  const auto cut = [&](size_t end) {
    if (end > last) out.push_back(text.substr(offs[last], offs[end] - offs[last]));
    last = end;
  };
  const auto run_piece = [&](size_t b, size_t e) {
    const Matcher m(cps, classes, b, e);
    switch (pat) {
      case Pattern::Gpt2: case Pattern::SmolLM: m.gpt2(cut); break;
      case Pattern::Llama3: m.llama3(cut, 3); break;
      case Pattern::Qwen2: m.llama3(cut, 1); break;
    }
  };
  if (pat == Pattern::SmolLM) {
    // "\p{N}" first: each number code point is a piece of its own, the spans between are pieces
    size_t b = 0;
    for (size_t i = 0; i < cps.size(); ++i) {
      if (classes[i] != CharClass::Number) continue;
      if (i > b) run_piece(b, i);
      cut(i + 1);
      b = i + 1;
    }
    if (b < cps.size()) run_piece(b, cps.size());
  } else {
    run_piece(0, cps.size());
  }
  return out;
}

}  // namespace tq::model
