// SentencePiece-style tokenizers: llama2.c's tok512.bin (against run.c's encode) and GGUF "llama".
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

#include "gguf_writer.h"
#include "test_data.h"
#include "tiny_models.h"
#include "tq/common.h"
#include "tq/model/tokenizer.h"

namespace tq::model {
namespace {

using testing::expect_error;

std::string tok512_path() { return testing::shared_data_file("stories260K/tok512.bin"); }

// ---- tok512 vs run.c: ids printed by run.c's encode(t, text, bos=1, eos=0, ...) ----
struct Case {
  const char* name;
  std::string text;
  std::vector<int> ids;
};

class Tok512Encode : public ::testing::TestWithParam<Case> {};

TEST_P(Tok512Encode, MatchesRunC) {
  TQ_REQUIRE_SHARED(tok512_path());
  const auto tok = load_llama2c_tokenizer(tok512_path(), 512);
  EXPECT_EQ(tok->encode(GetParam().text, true), GetParam().ids);
  std::vector<int> no_bos(GetParam().ids.begin() + 1, GetParam().ids.end());
  EXPECT_EQ(tok->encode(GetParam().text, false), no_bos);
}

INSTANTIATE_TEST_SUITE_P(
    RunC, Tok512Encode,
    ::testing::Values(
        Case{"Sentence", "Once upon a time, there was a little girl named Lily.",
             {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426}},
        Case{"HelloWorld", "Hello world", {1, 346, 306, 414, 263, 304, 341}},
        Case{"Utf8ByteFallback", "h\xc3\xa9llo \xe2\x88\x91 \xf0\x9f\x98\x80",  // "héllo ∑ 😀"
             {1, 270, 485, 306, 414, 410, 229, 139, 148, 410, 243, 162, 155, 131}},
        Case{"Empty", "", {1}},
        Case{"Spaces", "  two  spaces", {1, 410, 410, 259, 424, 414, 410, 262, 427, 412, 331, 419}},
        Case{"Quotes", "Lily's mom said, \"Let's go!\"",
             {1, 317, 439, 419, 357, 336, 432, 313, 438, 316, 439, 419, 298, 414, 443, 436}},
        Case{"ControlBytes", "tab\there\nnewline", {1, 259, 412, 430, 12, 260, 276, 13, 416, 411, 424, 421, 271, 411}}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(Tok512, Vocabulary) {
  TQ_REQUIRE_SHARED(tok512_path());
  const auto tok = load_llama2c_tokenizer(tok512_path());  // size from the file
  EXPECT_EQ(tok->vocab_size(), 512u);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_TRUE(tok->add_bos_default());
  EXPECT_EQ(tok->token_type(3), TokenType::Byte);
  EXPECT_EQ(tok->decode(3 + 0x41), "A");  // <0x41>
  EXPECT_EQ(tok->decode(403), " Once");
  EXPECT_EQ(tok->find_token(" Once"), 403);
  EXPECT_EQ(tok->decode_next(1, 403), "Once");  // run.c drops the space right after BOS
  EXPECT_EQ(tok->decode_next(403, 407), " upon");
  EXPECT_EQ(tok->decode_next(403, 2), "");
  EXPECT_EQ(tok->decode({1, 403, 407, 2}), "Once upon");
  expect_error([&] { tok->decode(512); }, "token id 512 is out of range");
}

TEST(Tok512, RoundTrip) {
  TQ_REQUIRE_SHARED(tok512_path());
  const auto tok = load_llama2c_tokenizer(tok512_path(), 512);
  for (const std::string s : {"Once upon a time, there was a little girl named Lily.",
                              "The cat sat on the mat.  Then it ran away!\n\"Why?\" asked Tom.",
                              "Ünïcödé bytes: \xe2\x82\xac 100 \xf0\x9f\x90\xb1 and a tab\tend", " leading space", "x"}) {
    EXPECT_EQ(tok->decode(tok->encode(s, true)), s);
    EXPECT_EQ(tok->decode(tok->encode(s, false)), s);
  }
}

// A whole novel (if the shared texts are present): round trip, and fast enough for perplexity runs.
TEST(Tok512, RoundTripNovel) {
  const std::string path = testing::shared_data_file("text/emma.txt");
  TQ_REQUIRE_SHARED(tok512_path());
  TQ_REQUIRE_SHARED(path);
  const auto tok = load_llama2c_tokenizer(tok512_path(), 512);
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int> ids = tok->encode(text, true);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 10.0);
  EXPECT_LT(ids.size(), text.size() * 2 / 3);  // merges happened (a 512-token vocabulary)
  EXPECT_EQ(tok->decode(ids), text);
}

TEST(Tok512, FileErrors) {
  TQ_REQUIRE_SHARED(tok512_path());
  expect_error([] { load_llama2c_tokenizer(tok512_path(), 600); }, "truncated at token 512");
  expect_error([] { load_llama2c_tokenizer(tok512_path(), 100); }, "trailing bytes after 100 tokens");
  std::ifstream in(tok512_path(), std::ios::binary);
  std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto bad = b;
  const int32_t huge = 1 << 30;
  std::memcpy(bad.data() + 4 + 4, &huge, 4);  // length of token 0
  expect_error([&] { load_llama2c_tokenizer(ByteSource::from_vector(bad, "tok.bin")); }, "token 0 has length 1073741824");
  bad = b;
  bad.resize(101);  // inside token 7's record
  expect_error([&] { load_llama2c_tokenizer(ByteSource::from_vector(bad, "tok.bin")); }, "tok.bin");
  expect_error([&] { load_llama2c_tokenizer(ByteSource::from_vector({1, 0}, "tiny.bin")); }, "too small");
}

// ---- GGUF "llama" (SentencePiece with ▁ for spaces) ----
// without_byte >= 0: the byte-fallback token of that byte is replaced by an ordinary one.
std::vector<uint8_t> spm_gguf(bool space_prefix, int without_byte = -1) {
  testing::GgufWriter w;
  testing::add_spm_tokenizer(w,
                             {{"\xe2\x96\x81", -20}, {"h", -21}, {"e", -21}, {"l", -21}, {"o", -21}, {"w", -21}, {"r", -21},
                              {"d", -21}, {"\xe2\x96\x81h", -1}, {"he", -2}, {"ll", -3}, {"\xe2\x96\x81he", -4}, {"llo", -5},
                              {"\xe2\x96\x81hello", -6}, {"\xe2\x96\x81w", -7}, {"or", -8}, {"ld", -9}, {"\xe2\x96\x81wor", -10},
                              {"\xe2\x96\x81world", -11}},
                             {"<|im_start|>", "<|im_end|>"}, space_prefix, without_byte);
  return w.bytes();
}

TEST(GgufSpm, EncodeDecode) {
  const GgufFile f = GgufFile::from_bytes(spm_gguf(true));
  const auto tok = tokenizer_from_gguf(f);
  const int hello = tok->find_token("\xe2\x96\x81hello"), world = tok->find_token("\xe2\x96\x81world");
  const int im_start = tok->find_token("<|im_start|>"), im_end = tok->find_token("<|im_end|>");
  ASSERT_GE(hello, 0);
  EXPECT_EQ(tok->encode("hello world", true), (std::vector<int>{1, hello, world}));
  // special tokens are whole tokens; the prefix space comes back after each of them (llama.cpp)
  EXPECT_EQ(tok->encode("<|im_start|>hello<|im_end|>", false), (std::vector<int>{im_start, hello, im_end}));
  EXPECT_TRUE(tok->is_special(im_start));
  EXPECT_EQ(tok->eot_id(), im_end);
  // byte fallback for what the vocabulary lacks: 'é' = C3 A9
  const std::vector<int> ids = tok->encode("h\xc3\xa9", false);
  EXPECT_EQ(ids, (std::vector<int>{tok->find_token("\xe2\x96\x81h"), 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(tok->decode(ids), "h\xc3\xa9");
  EXPECT_EQ(tok->decode(hello), " hello");
  EXPECT_EQ(tok->decode(tok->encode("hello world", true)), "hello world");
  EXPECT_EQ(tok->decode(im_start), "<|im_start|>");
  EXPECT_EQ(tok->decode({im_start, hello}, false), "<|im_start|> hello");
  EXPECT_EQ(tok->encode("", true), (std::vector<int>{1}));
}

TEST(GgufSpm, UnencodableByteNamesItsOffset) {
  const auto tok = tokenizer_from_gguf(GgufFile::from_bytes(spm_gguf(true, 0xFF)));
  EXPECT_EQ(tok->encode("h\xfe", false).size(), 2u);  // 0xFE still falls back to its byte token
  // the spaces before the byte became 3-byte marks: the offset is still the text's
  expect_error([&] { tok->encode("hello  w\xff", false); }, "byte 0xFF at offset 8 of the text is not valid UTF-8");
  expect_error([&] { tok->encode("<|im_start|>h \xff", false); }, "byte 0xFF at offset 14 of the text");
}

// A vocabulary with a token for "A" but none for the space mark (U+2581) put before the text, nor
// byte tokens for its bytes: the error names the mark, not the text's first character.
TEST(GgufSpm, MissingPrefixMarkIsNamed) {
  testing::GgufWriter w;
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "A"});
  w.add_f32_array("tokenizer.ggml.scores", {0.0f, 0.0f, 0.0f, 0.0f});
  const auto tok = tokenizer_from_gguf(GgufFile::from_bytes(w.bytes()));
  expect_error([&] { tok->encode("A", false); }, "no token for the space (U+2581) put before the text");
}

TEST(GgufSpm, NoSpacePrefix) {
  const auto tok = tokenizer_from_gguf(GgufFile::from_bytes(spm_gguf(false)));
  EXPECT_EQ(tok->encode("hello", false), (std::vector<int>{tok->find_token("he"), tok->find_token("llo")}));
}

TEST(GgufSpm, MetadataErrors) {
  testing::GgufWriter w;
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string_array("tokenizer.ggml.tokens", {"a", "b"});
  w.add_f32_array("tokenizer.ggml.scores", {0.0f});
  expect_error([&] { tokenizer_from_gguf(GgufFile::from_bytes(w.bytes())); }, "tokenizer.ggml.scores has 1 entries");
  testing::GgufWriter w2;
  w2.add_string("tokenizer.ggml.model", "llama");
  w2.add_string_array("tokenizer.ggml.tokens", {"a", "b"});
  w2.add_f32_array("tokenizer.ggml.scores", {0.0f, 0.0f});
  w2.add_u32("tokenizer.ggml.bos_token_id", 7);
  expect_error([&] { tokenizer_from_gguf(GgufFile::from_bytes(w2.bytes())); }, "bos_token_id = 7 is outside");
  testing::GgufWriter w3;
  w3.add_string("tokenizer.ggml.model", "bert");
  expect_error([&] { tokenizer_from_gguf(GgufFile::from_bytes(w3.bytes())); }, "unsupported tokenizer.ggml.model 'bert'");
}

}  // namespace
}  // namespace tq::model
