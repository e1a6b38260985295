// The decode grid's split count (src/cuda/split_plan.h): host arithmetic, so these run without a
// GPU. The counts below are the H200's (132 SMs; k3v2 at head dim 128: 4 blocks of one m-tile an
// SM, 3 of two) for the shapes the bench/results files timed, so a change to the rules that moves
// a timed shape shows here.
#include <gtest/gtest.h>

#include <random>

#include "split_plan.h"
#include "widths.h"

namespace tq::cuda::attention {
namespace {

constexpr int kSms = 132, kSlots = 4 * kSms, kSlotsPaired = 3 * kSms, kWarpsABlock = 4;

// The split count of `seqs` sequences of `tokens` tokens with 8 KV heads (one 8-row m-tile each).
int splits_at(int seqs, int tokens, int kv_heads = 8) {
  const int tiles = (tokens + 15) / 16;
  return whole_splits(tiles, auto_splits({seqs * kv_heads, kSlots, kSms, tiles, 1, kWarpsABlock}));
}

TEST(SplitPlan, BatchOneTakesTheTimedCounts) {
  // bench/results/2026-12-02-h200-decode-batch1-splits.md: 8 at 1K and 16 at 2K are the best of
  // the sweep; 16 beat 32 at 4K; 32 beat 16 at 8K.
  EXPECT_EQ(splits_at(1, 1024), 8);
  EXPECT_EQ(splits_at(1, 2048), 16);
  EXPECT_EQ(splits_at(1, 4096), 16);
  EXPECT_EQ(splits_at(1, 8192), 32);
  // 2026-12-01-h200-decode-batch1-fixed-cost.md: 32 (not 64) at 16K; 66 at 128K.
  EXPECT_EQ(splits_at(1, 16384), 32);
  EXPECT_EQ(splits_at(1, 131072), 66);
}

TEST(SplitPlan, OneBlockAnSmOnlyWhereItFillsTheSms) {
  // Two sequences at 2K: half the slots would give each warp 2 tiles, so one block an SM (8
  // splits x 16 blocks = 128 of 132 SMs).
  EXPECT_EQ(splits_at(2, 2048), 8);
  // Six at 1K: one block an SM would be 2 splits (96 blocks, 73% of the SMs): half the slots
  // instead (5 splits).
  EXPECT_EQ(splits_at(6, 1024), 5);
  // 2026-12-03-h200-decode-split-rule.md: fewer KV heads gained from one block an SM (one KV
  // head at 32K: 128 splits, not 256; two at 16K: 64; four at 8K: 32), while 3-8 sequences at
  // 0.5-2K lost with 2-5 splits: they keep half the slots.
  EXPECT_EQ(splits_at(1, 32768, 1), 128);
  EXPECT_EQ(splits_at(1, 16384, 2), 64);
  EXPECT_EQ(splits_at(1, 8192, 4), 32);
  EXPECT_EQ(splits_at(3, 1024), 8);
  EXPECT_EQ(splits_at(3, 2048), 11);
  EXPECT_EQ(splits_at(4, 1024), 8);
  EXPECT_EQ(splits_at(5, 512), 4);
  EXPECT_EQ(splits_at(5, 1024), 6);
  EXPECT_EQ(splits_at(8, 512), 4);
}

TEST(SplitPlan, ServingBatchesTakeAboutFourWaves) {
  // 2026-12-02-h200-decode-serving-splits.md: 55 sequences of 32K are 440 blocks on 528 slots;
  // one split each would leave 17% of the wave idle.
  EXPECT_EQ(splits_at(55, 32768), 5);
  EXPECT_EQ(splits_at(16, 32768), 4);  // 128 blocks: a whole wave of 4 splits
}

TEST(SplitPlan, PairedBlocksTakeTheSplitsThatWasteTheLeast) {
  // 256 blocks of two m-tiles on 396 slots: 1 split leaves a third idle, 3 fill 2 waves (97%).
  EXPECT_EQ(auto_splits({256, kSlotsPaired, kSms, 2048, 2, kWarpsABlock}), 3);
}

TEST(SplitPlan, EverySplitHasTilesAndNoneIsEmpty) {
  std::mt19937 rng(7);
  for (int i = 0; i < 20000; ++i) {
    const int blocks = 1 + int(rng() % 2000), tiles = 1 + int(rng() % 20000), r = 1 + int(rng() % 2);
    const int asked = auto_splits({blocks, kSlots, kSms, tiles, r, kWarpsABlock});
    ASSERT_GE(asked, 1);
    ASSERT_LE(asked, std::max(1, tiles / (2 * kWarpsABlock))) << "blocks " << blocks << " tiles " << tiles;  // >= 2 tiles a warp
    const int per = tiles_per_split(tiles, asked), splits = whole_splits(tiles, asked);
    ASSERT_LE(splits, asked);
    ASSERT_GE(per * splits, tiles);        // every tile in a split
    ASSERT_LT(per * (splits - 1), tiles);  // the last split not empty
  }
}

// The residency padding: k3v2's D 256 decode block (42 368 bytes of shared memory, 2 blocks an SM
// compiled) fits 5 on an sm_90 SM of 228 KB; padded, 2 and never 3. Where no more fit anyway (100
// KB SMs) or the padding would pass a block's limit, the size is kept; and for any size and count
// the padded size holds exactly the blocks asked, or the size is what it was.
TEST(SplitPlan, PaddingHoldsAnSmToTheBlocksAsked) {
  constexpr size_t kSm90 = 228 * 1024, kSm89 = 100 * 1024, kOptIn90 = 227 * 1024, kOptIn89 = 99 * 1024;
  EXPECT_EQ(blocks_fitting(kSm90, 42368), 5);
  const size_t padded = smem_holding_in(kSm90, 2, 42368, kOptIn90);
  EXPECT_GT(padded, 42368u);
  EXPECT_EQ(blocks_fitting(kSm90, padded), 2);
  EXPECT_EQ(smem_holding_in(kSm89, 2, 42368, kOptIn89), 42368u);  // 2 fit there, 3 do not
  EXPECT_EQ(smem_holding_in(kSm90, 2, 42368, 60 * 1024), 42368u);  // the padding (75 KB) past the limit
  std::mt19937 rng(11);
  for (int i = 0; i < 20000; ++i) {
    const size_t sm = (64 + rng() % 200) * 1024, smem = 1 + rng() % (sm / 2), limit = sm - 1024 - rng() % 4096;
    const int blocks = 1 + int(rng() % 8);
    const size_t s = smem_holding_in(sm, blocks, smem, limit);
    if (s == smem) {
      ASSERT_TRUE(blocks_fitting(sm, smem) <= blocks || sm / (blocks + 1) + 1 - kBlockReserve > limit)
          << sm << " " << blocks << " " << smem;
    } else {
      ASSERT_GT(s, smem);
      ASSERT_LE(s, limit);
      ASSERT_EQ(blocks_fitting(sm, s), blocks) << sm << " " << blocks << " " << smem;
    }
  }
}

// Blocks of at most 4 rows compute with the keys as M where the keys are int8 operands of plain
// codes (2 or 3 bits) up to head dim 128; TQ_DECODE_ROWS=8 turns them off, 16 does not (no
// block of 4 rows has two m-tiles).
TEST(SplitPlan, KeysAsMWhereABlockHasAtMostFourRowsOfPlainTwoOrThreeBitKeys) {
  EXPECT_TRUE(keys_as_m(true, 3, 128, 4, 0));  // k3v2, 32 query / 8 KV heads, one query token
  EXPECT_TRUE(keys_as_m(true, 2, 64, 3, 0));   // k2v*, 9 / 3 heads (SmolLM2-135M)
  EXPECT_TRUE(keys_as_m(true, 3, 64, 1, 0));
  EXPECT_TRUE(keys_as_m(true, 3, 128, 4, 16));
  EXPECT_FALSE(keys_as_m(true, 3, 128, 4, 8));           // 8-row blocks forced
  EXPECT_FALSE(keys_as_m(true, 3, 128, 5, 0));           // 5 rows: 8-row blocks
  EXPECT_FALSE(keys_as_m(true, 3, 128, 8, 0));           // 4 heads x 2 query tokens
  EXPECT_FALSE(keys_as_m(true, 4, 128, 4, 0));           // 4-bit keys: fp16 MMAs
  EXPECT_FALSE(keys_as_m(true, 3, 256, 4, 0));           // no D 256 instance
  EXPECT_FALSE(keys_as_m(true, width_param(true, 2), 128, 4, 0));  // trellis-coded keys
  EXPECT_FALSE(keys_as_m(false, 0, 128, 4, 0));          // float caches
}

}  // namespace
}  // namespace tq::cuda::attention
