// Token text for clients: whole UTF-8 characters only, stop strings found across tokens and
// never released in part, on stories260K's SentencePiece vocabulary (byte tokens <0xNN>).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "model/test_data.h"
#include "tq/serve/text_stream.h"

namespace tq::serve {
namespace {

const model::Tokenizer* tok() {
  static const auto t = [] {
    const std::string p = model::testing::shared_data_file("stories260K/tok512.bin");
    return std::filesystem::exists(p) ? model::load_llama2c_tokenizer(p, 512) : nullptr;
  }();
  return t.get();
}
#define REQUIRE_TOKENIZER() \
  if (!tok()) GTEST_SKIP() << "stories260K not found under " << model::testing::shared_data_dir() \
                 << " (the shared data: ../shared/data beside the clone, -DTQ_SHARED_DATA=DIR or $TQ_SHARED_DATA)"

int byte_token(uint8_t b) {
  const int id = tok()->find_token(fmt::format("<0x{:02X}>", b));
  EXPECT_GE(id, 0);
  return id;
}

TEST(Utf8, CompletePrefix) {
  EXPECT_EQ(utf8_complete_prefix(""), 0u);
  EXPECT_EQ(utf8_complete_prefix("abc"), 3u);
  EXPECT_EQ(utf8_complete_prefix("a\xC3"), 1u);              // é cut after its lead byte
  EXPECT_EQ(utf8_complete_prefix("a\xC3\xA9"), 3u);
  EXPECT_EQ(utf8_complete_prefix("\xE2\x82"), 0u);           // € cut after 2 of 3 bytes
  EXPECT_EQ(utf8_complete_prefix("\xF0\x9F\x98\x80"), 4u);   // an emoji, whole
  EXPECT_EQ(utf8_complete_prefix("x\xF0\x9F\x98"), 1u);
  EXPECT_EQ(utf8_complete_prefix("\x80\x80\x80\x80"), 4u);   // stray continuation bytes: nothing to wait for
}

TEST(TextStream, MultiByteCharactersAreReleasedWhole) {
  REQUIRE_TOKENIZER();
  TextStream t(*tok(), tok()->bos_id(), {});
  EXPECT_EQ(t.push(byte_token(0xE2)), "");
  EXPECT_EQ(t.push(byte_token(0x82)), "");
  EXPECT_EQ(t.push(byte_token(0xAC)), "\xE2\x82\xAC");  // €
  EXPECT_EQ(t.push(byte_token(0xC3)), "");
  EXPECT_EQ(t.finish(), "\xEF\xBF\xBD");  // the request ended inside a character
  EXPECT_EQ(t.text(), "\xE2\x82\xAC\xEF\xBF\xBD");
}

TEST(TextStream, StopStringsAcrossTokensAreNeverReleasedInPart) {
  REQUIRE_TOKENIZER();
  const std::vector<int> ids = tok()->encode("Once upon a time there was a dog", true);
  const std::string text = tok()->decode(ids);
  TextStream t(*tok(), ids[0], {"there w", "zzz"});
  std::string out;
  for (size_t i = 1; i < ids.size() && !t.stopped(); ++i) {
    out += t.push(int(ids[i]));
    EXPECT_EQ(out.find("there"), std::string::npos) << "a possible stop string was released: " << out;
  }
  EXPECT_TRUE(t.stopped());
  out += t.finish();
  EXPECT_EQ(out, text.substr(0, text.find("there w")));
  EXPECT_EQ(t.push(ids[3]), "");  // nothing after a stop
}

TEST(TextStream, WithoutAStopEverythingComesOut) {
  REQUIRE_TOKENIZER();
  const std::vector<int> ids = tok()->encode("Lily and Tom", true);
  TextStream t(*tok(), ids[0], {"Tom and"});
  std::string out;
  for (size_t i = 1; i < ids.size(); ++i) out += t.push(ids[i]);
  EXPECT_LT(out.size(), std::string("Lily and Tom").size());  // "Tom" might start "Tom and": held
  out += t.finish();
  EXPECT_EQ(out, "Lily and Tom");
  EXPECT_FALSE(t.stopped());
}

}  // namespace
}  // namespace tq::serve
