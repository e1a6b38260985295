#include <gtest/gtest.h>

#include <vector>

#include "tq/format.h"
#include "tq/rng.h"

namespace tq {
namespace {

class PackWidth : public ::testing::TestWithParam<uint32_t> {};

std::vector<uint8_t> roundtrip(const std::vector<uint8_t>& codes, uint32_t dim, uint32_t bits) {
  std::vector<uint32_t> words(code_row_bytes(dim, bits) / 4, 0xDEADBEEFu);  // poisoned
  pack_row(codes.data(), dim, bits, words.data());
  std::vector<uint8_t> back(codes.size(), 0xAB);
  unpack_row(words.data(), dim, bits, back.data());
  return back;
}

TEST_P(PackWidth, RandomCodesRoundTripBitExact) {
  const uint32_t b = GetParam();
  for (uint32_t dim : {8u, 32u, 64u, 80u, 128u, 256u}) {
    Rng r(b * 1000 + dim);
    std::vector<uint8_t> codes(padded_dim(dim));
    for (auto& c : codes) c = uint8_t(r.next() & ((1u << b) - 1));
    EXPECT_EQ(roundtrip(codes, dim, b), codes) << "dim " << dim;
  }
}

TEST_P(PackWidth, AllZeroAndAllMaxCodes) {
  const uint32_t b = GetParam();
  std::vector<uint8_t> zeros(128, 0), maxes(128, uint8_t((1u << b) - 1));
  EXPECT_EQ(roundtrip(zeros, 128, b), zeros);
  EXPECT_EQ(roundtrip(maxes, 128, b), maxes);
  // All-max codes set every bit of every word: the layout has no holes.
  std::vector<uint32_t> words(code_row_bytes(128, b) / 4);
  pack_row(maxes.data(), 128, b, words.data());
  for (uint32_t w : words) EXPECT_EQ(w, 0xFFFFFFFFu);
  pack_row(zeros.data(), 128, b, words.data());
  for (uint32_t w : words) EXPECT_EQ(w, 0u);
}

TEST_P(PackWidth, EachCodeBitLandsInExactlyOneWordBit) {
  // Setting one code to 2^j - 1 for one coordinate must set exactly the code's bits somewhere,
  // distinct for every (coordinate, bit) pair: the map is a bijection onto the group's words.
  const uint32_t b = GetParam();
  std::vector<uint32_t> seen(b, 0);
  for (uint32_t i = 0; i < 32; ++i)
    for (uint32_t j = 0; j < b; ++j) {
      uint8_t codes[32] = {0};
      codes[i] = uint8_t(1u << j);
      uint32_t words[8];
      pack_group(codes, b, words);
      int set = 0;
      for (uint32_t w = 0; w < b; ++w) {
        set += __builtin_popcount(words[w]);
        EXPECT_EQ(seen[w] & words[w], 0u) << "coordinate " << i << " bit " << j << " collides";
        seen[w] |= words[w];
      }
      EXPECT_EQ(set, 1);
    }
}
INSTANTIATE_TEST_SUITE_P(Bits, PackWidth, ::testing::Range(1u, 9u));

TEST(PackLayout, ThreeBitGoldenPositions) {
  // docs/format.md: b = 3 is a 2-bit plane (words 0-1) and a 1-bit plane (word 2). Coordinate 9
  // (octet 1 of word 0, nibble 1) keeps bits 0-1 at word 0 bits 6-7, bit 2 at word 2 bit 4*1+1 = 5.
  uint8_t codes[32] = {0};
  codes[9] = 0b101;
  uint32_t w[3];
  pack_group(codes, 3, w);
  EXPECT_EQ(w[0], 1u << 6);
  EXPECT_EQ(w[1], 0u);
  EXPECT_EQ(w[2], 1u << 5);
  // Coordinate 16 opens word 1 of the 2-bit plane; coordinate 31 is the last nibble of octet 3.
  uint8_t c2[32] = {0};
  c2[16] = 0b011;
  c2[31] = 0b100;
  pack_group(c2, 3, w);
  EXPECT_EQ(w[0], 0u);
  EXPECT_EQ(w[1], 0b11u);
  EXPECT_EQ(w[2], 1u << (4 * 7 + 3));
}

TEST(PackLayout, OctetIsOneShiftAndMaskAway) {
  // The property the GPU relies on: octet o of a 2-bit plane word, shifted right by 2o and masked
  // with 0x33333333, holds coordinates 8o..8o+7 in nibbles 0..7.
  Rng r(7);
  uint8_t codes[32];
  for (auto& c : codes) c = uint8_t(r.next() & 3);
  uint32_t w[2];
  pack_group(codes, 2, w);
  for (uint32_t og = 0; og < 4; ++og) {
    const uint32_t sel = (w[og / 2] >> (2 * (og % 2))) & 0x33333333u;
    for (uint32_t k = 0; k < 8; ++k) EXPECT_EQ((sel >> (4 * k)) & 0xF, codes[8 * og + k]);
  }
}

TEST(BlockLayout, SectionsAlignedAndSized) {
  for (uint32_t page : {1u, 3u, 16u, 17u, 64u})
    for (uint32_t d : {8u, 64u, 80u, 128u, 256u})
      for (auto k : {TensorCode{Encoding::kTqMse, 3}, TensorCode{Encoding::kTqProd, 4}, TensorCode{Encoding::kFp16, 16},
                     TensorCode{Encoding::kFp8E4M3, 8}})
        for (auto v : {TensorCode{Encoding::kTqMse, 2}, TensorCode{Encoding::kBf16, 16}}) {
          const BlockLayout L = block_layout(k, v, d, page);
          for (uint32_t off : {L.k_codes, L.k_qjl, L.v_codes, L.k_norms, L.k_rnorms, L.v_norms, L.bytes}) EXPECT_EQ(off % kAlign, 0u);
          EXPECT_GE(L.k_qjl, L.k_codes + page * L.k_row);
          EXPECT_GE(L.v_codes, L.k_qjl + page * L.k_qjl_row);
          EXPECT_GE(L.k_norms, L.v_codes + page * L.v_row);
          EXPECT_LT(L.bytes - (L.v_norms + (is_tq(v.enc) ? 2 * page : 0)), kAlign);
        }
}

TEST(BlockLayout, BytesPerTokenKnownValues) {
  const TensorCode k3{Encoding::kTqMse, 3}, v2{Encoding::kTqMse, 2}, k4{Encoding::kTqMse, 4};
  EXPECT_EQ(bytes_per_token_head(k3, v2, 128, 16), 84.0);    // 48 + 32 + 2 + 2
  EXPECT_EQ(bytes_per_token_head(k4, k4, 128, 16), 132.0);   // 64 + 64 + 2 + 2
  EXPECT_EQ(bytes_per_token_head(k3, v2, 64, 16), 44.0);     // 24 + 16 + 2 + 2
  EXPECT_EQ(bytes_per_token_head(k3, v2, 8, 16), 24.0);      // 8 pads to 32: 12 + 8 + 2 + 2
  // A page of one token still rounds each section to 16 bytes.
  EXPECT_EQ(block_layout(k3, v2, 128, 1).bytes, 48u + 32u + 16u + 16u);
}

}  // namespace
}  // namespace tq
