// Byte-level BPE: pre-tokenizer splits (expectations derived from the reference regexes with
// Python's `regex` module) and a GGUF "gpt2" tokenizer built in memory.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "tiny_models.h"
#include "test_data.h"
#include "tq/common.h"
#include "tq/model/tokenizer.h"

namespace tq::model {
namespace {

using testing::expect_error;

struct Split {
  std::string pre;
  std::string text;
  std::vector<std::string> pieces;
};

class PreSplit : public ::testing::TestWithParam<Split> {};

TEST_P(PreSplit, MatchesReferenceRegex) {
  const Split& s = GetParam();
  const auto got = bpe_pre_split(s.text, s.pre);
  EXPECT_EQ(std::vector<std::string>(got.begin(), got.end()), s.pieces) << s.pre << " on \"" << s.text << "\"";
}

// gpt2 / llama3: every case; smollm / qwen2: the cases where they differ from those (digits), and one more.
INSTANTIATE_TEST_SUITE_P(Patterns, PreSplit, ::testing::Values(
    Split{"gpt2", "Hello world", {"Hello", " world"}},
    Split{"gpt2", "I'm here, you're there; they'll go.", {"I", "'m", " here", ",", " you", "'re", " there", ";", " they", "'ll", " go", "."}},
    Split{"gpt2", "It'S OK'LL", {"It", "'", "S", " OK", "'", "LL"}},
    Split{"gpt2", "abc123def 4567 89", {"abc", "123", "def", " 4567", " 89"}},
    Split{"gpt2", "  two  spaces  ", {" ", " two", " ", " spaces", "  "}},
    Split{"gpt2", "line\n\nnext\r\n end", {"line", "\n", "\n", "next", "\r\n", " end"}},
    Split{"gpt2", "tab\tx\t\ty", {"tab", "\t", "x", "\t", "\t", "y"}},
    Split{"gpt2", " (hello) [world]!?", {" (", "hello", ")", " [", "world", "]!?"}},
    Split{"gpt2", "café naïve Ωmega ÜBER", {"café", " naïve", " Ωmega", " ÜBER"}},
    Split{"gpt2", "x², ½ and ３", {"x", "²", ",", " ½", " and", " ３"}},
    Split{"gpt2", "a\xc2\xa0""b", {"a", "\xc2\xa0""", "b"}},
    Split{"gpt2", "...---!!!", {"...---!!!"}},
    Split{"gpt2", "don't'", {"don", "'t", "'"}},
    Split{"gpt2", "'", {"'"}},
    Split{"gpt2", " 'quote' ", {" '", "quote", "'", " "}},
    Split{"gpt2", "\n", {"\n"}},
    Split{"gpt2", "   ", {"   "}},
    Split{"gpt2", "hi\n  there", {"hi", "\n ", " there"}},
    Split{"gpt2", "emoji 😀 ok", {"emoji", " 😀", " ok"}},
    Split{"gpt2", "日本語 テキスト", {"日本語", " テキスト"}},
    Split{"gpt2", "end.  ", {"end", ".", "  "}},
    Split{"llama3", "Hello world", {"Hello", " world"}},
    Split{"llama3", "I'm here, you're there; they'll go.", {"I", "'m", " here", ",", " you", "'re", " there", ";", " they", "'ll", " go", "."}},
    Split{"llama3", "It'S OK'LL", {"It", "'S", " OK", "'LL"}},
    Split{"llama3", "abc123def 4567 89", {"abc", "123", "def", " ", "456", "7", " ", "89"}},
    Split{"llama3", "  two  spaces  ", {" ", " two", " ", " spaces", "  "}},
    Split{"llama3", "line\n\nnext\r\n end", {"line", "\n\n", "next", "\r\n", " end"}},
    Split{"llama3", "tab\tx\t\ty", {"tab", "\tx", "\t", "\ty"}},
    Split{"llama3", " (hello) [world]!?", {" (", "hello", ")", " [", "world", "]!?"}},
    Split{"llama3", "café naïve Ωmega ÜBER", {"café", " naïve", " Ωmega", " ÜBER"}},
    Split{"llama3", "x², ½ and ３", {"x", "²", ",", " ", "½", " and", " ", "３"}},
    Split{"llama3", "a\xc2\xa0""b", {"a", "\xc2\xa0""b"}},
    Split{"llama3", "...---!!!", {"...---!!!"}},
    Split{"llama3", "don't'", {"don", "'t", "'"}},
    Split{"llama3", "'", {"'"}},
    Split{"llama3", " 'quote' ", {" '", "quote", "'", " "}},
    Split{"llama3", "\n", {"\n"}},
    Split{"llama3", "   ", {"   "}},
    Split{"llama3", "hi\n  there", {"hi", "\n", " ", " there"}},
    Split{"llama3", "emoji 😀 ok", {"emoji", " 😀", " ok"}},
    Split{"llama3", "日本語 テキスト", {"日本語", " テキスト"}},
    Split{"llama3", "end.  ", {"end", ".", "  "}},
    Split{"smollm", "Hello world", {"Hello", " world"}},
    Split{"smollm", "abc123def 4567 89", {"abc", "1", "2", "3", "def", " ", "4", "5", "6", "7", " ", "8", "9"}},
    Split{"smollm", "x², ½ and ３", {"x", "²", ",", " ", "½", " and", " ", "３"}},
    Split{"qwen2", "Hello world", {"Hello", " world"}},
    Split{"qwen2", "abc123def 4567 89", {"abc", "1", "2", "3", "def", " ", "4", "5", "6", "7", " ", "8", "9"}}
));

TEST(PreSplitProperty, PiecesCoverArbitraryBytes) {
  std::mt19937 rng(3);
  const char* alphabet[] = {"a", "Z", " ", "  ", "\n", "\r", "\t", "'", "'s", "1", "23", ".", "!", "é", "\xe2\x82\xac",
                            "\xf0\x9f\x98\x80", "\xff", "\x80", "\xc3", "日"};
  for (const char* pre : {"gpt-2", "smollm", "llama3", "qwen2"}) {
    for (int rep = 0; rep < 500; ++rep) {
      std::string text;
      const int n = int(rng() % 12);
      for (int i = 0; i < n; ++i) text += alphabet[rng() % std::size(alphabet)];
      std::string joined;
      for (const auto p : bpe_pre_split(text, pre)) {
        EXPECT_FALSE(p.empty());
        joined += p;
      }
      ASSERT_EQ(joined, text) << pre;
    }
  }
  expect_error([] { bpe_pre_split("x", "deepseek-coder"); }, "unsupported BPE pre-tokenizer 'deepseek-coder'");
}

// ---- GGUF "gpt2" tokenizer ----
std::unique_ptr<Tokenizer> bpe(const testing::BpeVocab& v, const std::string& pre = "smollm") {
  testing::GgufWriter w;
  testing::add_bpe_tokenizer(w, v, pre);
  return tokenizer_from_gguf(GgufFile::from_bytes(w.bytes()));
}

TEST(GgufBpe, MergesByRank) {
  const testing::BpeVocab v = testing::small_bpe_vocab(true);
  const auto tok = bpe(v);
  const auto id = [&](const std::string& t) { return v.find(t); };
  EXPECT_EQ(tok->vocab_size(), v.tokens.size());
  EXPECT_EQ(tok->encode("Hello the world", false), (std::vector<int>{id("Hello"), id("Ġthe"), id("Ġworld")}));
  // " then": Ġ+t (rank 0), h+e (1), Ġt+he (2); "n" stays
  EXPECT_EQ(tok->encode(" then", false), (std::vector<int>{id("Ġthe"), id("n")}));
  // three equal-rank l+l pairs: the leftmost merges first
  EXPECT_EQ(tok->encode("lll", false), (std::vector<int>{id("ll"), id("l")}));
  // smollm: digits one by one, the space before them alone
  EXPECT_EQ(tok->encode("a 12", false), (std::vector<int>{id("a"), id("Ġ"), id("1"), id("2")}));
  // BOS on request; special tokens matched literally; '\n' is byte-level 'Ċ'
  const int bos = id("<|endoftext|>"), ims = id("<|im_start|>"), ime = id("<|im_end|>");
  EXPECT_EQ(tok->bos_id(), bos);
  EXPECT_EQ(tok->eos_id(), ime);
  EXPECT_EQ(tok->eot_id(), ime);
  EXPECT_FALSE(tok->add_bos_default());
  EXPECT_EQ(tok->encode("<|im_start|>user\nHello<|im_end|>", true),
            (std::vector<int>{bos, ims, id("u"), id("s"), id("e"), id("r"), id("Ċ"), id("Hello"), ime}));
  EXPECT_EQ(tok->decode(id("Ġworld")), " world");
  EXPECT_EQ(tok->decode(ims), "<|im_start|>");
  const auto ids = tok->encode("<|im_start|>user\nHi there<|im_end|>", false);
  EXPECT_EQ(tok->decode(ids), "user\nHi there");
  EXPECT_EQ(tok->decode(ids, false), "<|im_start|>user\nHi there");  // EOS is dropped either way
}

// llama.cpp's tokenizer_st_partition, one pass per special (longest first, ties in id order):
// the reference split_specials' single scan must give the same fragments. (ids >= 0: specials.)
std::vector<std::pair<int, std::string>> split_one_pass_per_special(const Tokenizer& tok, const std::string& text) {
  std::vector<int> specials;
  for (size_t id = 0; id < tok.vocab_size(); ++id)
    if (tok.is_special(int(id)) && !tok.token_text(int(id)).empty()) specials.push_back(int(id));
  std::stable_sort(specials.begin(), specials.end(), [&](int a, int b) { return tok.token_text(a).size() > tok.token_text(b).size(); });
  std::vector<std::pair<int, std::string>> frags{{-1, text}};
  for (const int id : specials) {
    const std::string& s = tok.token_text(id);
    std::vector<std::pair<int, std::string>> next;
    for (const auto& [fid, ft] : frags) {
      if (fid >= 0) {
        next.push_back({fid, ft});
        continue;
      }
      std::string rest = ft;
      for (size_t at; (at = rest.find(s)) != std::string::npos;) {
        if (at > 0) next.push_back({-1, rest.substr(0, at)});
        next.push_back({id, s});
        rest.erase(0, at + s.size());
      }
      if (!rest.empty()) next.push_back({-1, rest});
    }
    frags = std::move(next);
  }
  return frags;
}

// Specials that overlap, nest and share prefixes (control and user-defined), on random text of
// their bytes: encode gives llama.cpp's partition, each plain fragment encoded on its own.
TEST(GgufBpe, SpecialTokensSplitTheTextAsLlamaCppDoes) {
  std::mt19937 rng(5);
  const std::string alphabet = "ab<>|";
  for (int vocab_round = 0; vocab_round < 20; ++vocab_round) {
    testing::BpeVocab v = testing::small_bpe_vocab(true);
    for (int k = 0; k < 12; ++k) {
      std::string s(2 + rng() % 5, ' ');
      for (char& c : s) c = alphabet[rng() % alphabet.size()];
      v.tokens.push_back(s);
      v.types.push_back(rng() % 2 ? 3 : 4);  // control or user-defined
    }
    const auto tok = bpe(v);
    for (int rep = 0; rep < 50; ++rep) {
      std::string text(rng() % 60, ' ');
      for (char& c : text) c = alphabet[rng() % alphabet.size()];
      std::vector<int> want;
      for (const auto& [id, piece] : split_one_pass_per_special(*tok, text)) {
        if (id >= 0) {
          want.push_back(id);
        } else {
          const std::vector<int> ids = tok->encode(piece, false);
          want.insert(want.end(), ids.begin(), ids.end());
        }
      }
      ASSERT_EQ(tok->encode(text, false), want) << "vocabulary " << vocab_round << ", text '" << text << "'";
    }
  }
}

// Literal spans (a chat message's own text): control tokens there stay text, user-defined ones
// still match, and a control token outside them, even right next to one, is matched.
TEST(GgufBpe, LiteralSpansMatchNoControlToken) {
  testing::BpeVocab v = testing::small_bpe_vocab(true);
  v.tokens.push_back("<b>");
  v.types.push_back(4);  // user-defined
  const auto tok = bpe(v);
  const auto id = [&](const std::string& t) { return v.find(t); };
  const int ims = id("<|im_start|>"), ime = id("<|im_end|>"), b = id("<b>");
  const std::string content = "<|im_end|><b>x<|im_start|>";
  const std::string text = "<|im_start|>" + content + "<|im_end|>";
  const TextSpan span{12, 12 + content.size()};
  const std::vector<int> got = tok->encode(text, false, std::span<const TextSpan>(&span, 1));
  std::vector<int> want{ims};
  for (const std::string_view piece : {"<|im_end|>"}) {
    const std::vector<int> ids = tok->encode(piece, false, std::vector<TextSpan>{{0, piece.size()}});
    EXPECT_EQ(std::count(ids.begin(), ids.end(), ime), 0) << "a control token matched inside a literal span";
    want.insert(want.end(), ids.begin(), ids.end());
  }
  want.push_back(b);
  const std::vector<int> x = tok->encode("x", false);
  want.insert(want.end(), x.begin(), x.end());
  const std::vector<int> tail = tok->encode("<|im_start|>", false, std::vector<TextSpan>{{0, 12}});
  want.insert(want.end(), tail.begin(), tail.end());
  want.push_back(ime);
  EXPECT_EQ(got, want);
  std::string bytes;
  for (const int t : got) bytes += tok->decode(t);
  EXPECT_EQ(bytes, text);  // the same bytes either way
  // Without the span, the same text is five specials and an x.
  EXPECT_EQ(tok->encode(text, false), (std::vector<int>{ims, ime, b, id("x"), ims, ime}));
  // A span that covers only part of a special's text still keeps it from matching.
  EXPECT_EQ(std::count(got.begin(), got.end(), ims), 1);
  const std::vector<int> partial = tok->encode("<|im_end|>", false, std::vector<TextSpan>{{9, 10}});
  EXPECT_NE(partial, std::vector<int>{ime});
}

TEST(GgufBpe, ArbitraryBytesRoundTrip) {
  const auto tok = bpe(testing::small_bpe_vocab(true));
  std::mt19937 rng(11);
  for (int rep = 0; rep < 300; ++rep) {
    std::string s(rng() % 40, '\0');
    for (auto& c : s) c = char(rng() % 4 == 0 ? rng() % 256 : "Hello the world 12'\n"[rng() % 20]);
    ASSERT_EQ(tok->decode(tok->encode(s, false)), s);
  }
}

TEST(GgufBpe, UnencodableByteNamesItsOffset) {
  // Byte-level vocabularies drop bytes that never occur in UTF-8 (SmolLM2's has no 0xFF): the error
  // names the byte and where it is, and says why when the text is not UTF-8 there.
  const auto tok = bpe(testing::small_bpe_vocab(false));
  expect_error([&] { tok->encode("the \xff world", false); }, "byte 0xFF at offset 4 of the text is not valid UTF-8");
  expect_error([&] { tok->encode("<|im_start|>ab\xff", false); }, "byte 0xFF at offset 14 of the text is not valid UTF-8");
  expect_error([&] { tok->encode("caf\xc3\xa9", false); }, "the character '\xc3\xa9' (U+00E9, byte 0xC3 at offset 3 of the text)");
  expect_error([&] { tok->encode("llll\xff", false); }, "byte 0xFF at offset 4");  // after merged symbols
}

TEST(GgufBpe, Llama3TakesWholeWordTokens) {
  testing::BpeVocab v = testing::small_bpe_vocab(true);
  v.tokens.push_back("Ġxyz");  // a token no merge produces
  v.types.push_back(1);
  const int xyz = v.find("Ġxyz");
  EXPECT_EQ(bpe(v, "llama3")->encode("a xyz", false), (std::vector<int>{v.find("a"), xyz}));
  EXPECT_EQ(bpe(v, "gpt-2")->encode(" xyz", false), (std::vector<int>{v.find("Ġ"), v.find("x"), v.find("y"), v.find("z")}));
  EXPECT_TRUE(bpe(v, "llama3")->add_bos_default());
}

TEST(GgufBpe, MetadataErrors) {
  testing::BpeVocab v = testing::small_bpe_vocab(false);
  {
    testing::GgufWriter w;
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string_array("tokenizer.ggml.tokens", v.tokens);
    expect_error([&] { tokenizer_from_gguf(GgufFile::from_bytes(w.bytes())); }, "tokenizer.ggml.pre is missing");
    w.add_string("tokenizer.ggml.pre", "smollm");
    expect_error([&] { tokenizer_from_gguf(GgufFile::from_bytes(w.bytes())); }, "'tokenizer.ggml.merges' is missing");
  }
  v.merges.push_back("nospace");
  expect_error([&] { bpe(v); }, "tokenizer.ggml.merges[14] = 'nospace' is not of the form");
  v.merges.pop_back();
  v.types[0] = 9;
  expect_error([&] { bpe(v); }, "has unknown token type 9");
  v.types[0] = 1;
  expect_error([&] { bpe(v, "tekken"); }, "unsupported BPE pre-tokenizer 'tekken'");
  // a character the vocabulary lacks is reported, not silently dropped (llama.cpp skips it)
  expect_error([&] { bpe(v)->encode("Q", false); }, "the character 'Q' (U+0051, byte 0x51 at offset 0 of the text) has no token");
}

}  // namespace
}  // namespace tq::model
