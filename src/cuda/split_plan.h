// How many splits of the sequence the decode grid takes when the caller leaves it to the library
// (make_plan in decode_attention.cu): arithmetic on counts alone, so that tests run it without a
// GPU (tests/cuda/test_split_plan.cpp). docs/cuda.md ("Splits and merge") explains the rules;
// the measurements behind each constant are in the bench/results files named below.
// Host code; no CUDA headers.
#pragma once

#include <algorithm>
#include <cstddef>

namespace tq::cuda::attention {

// Tiles a warp below which a split is not worth its prologue once half the resident slots are
// filled (on the H200, k3v2 at batch 1: 32 splits beat 64 at 8K and 16K;
// bench/results/2026-12-01-h200-decode-batch1-fixed-cost.md).
constexpr int kMinTilesPerWarp = 8;
// Tiles a warp below which a second block an SM is not worth its splits' prologues and merge
// (on the H200, k3v2 at batch 1: 4K takes 16 splits, one block an SM, not 32;
// bench/results/2026-12-02-h200-decode-batch1-splits.md).
constexpr int kMinSharedTiles = 4;
// Splits under which one block an SM loses to half the resident slots all the same (on the H200,
// 8 KV heads: 2 x 2K gained with 8 splits, 3-8 sequences at 0.5-2K lost 1-7% with 2-5;
// bench/results/2026-12-03-h200-decode-split-rule.md).
constexpr int kMinSmSplits = 8;
// The decode grid's fill: a split plan that leaves more than a tenth of its waves' block slots
// idle, with blocks enough for half a wave, is replaced by one of about kFillWaves waves
// (bench/results/2026-12-02-h200-decode-serving-splits.md).
constexpr double kMinWaveFill = 0.9;
constexpr int kFillWaves = 4;

struct SplitShape {
  int blocks;  // blocks of one split: sequences x KV heads x (m-tiles / r)
  int slots;   // decode blocks the GPU holds at once (resident blocks an SM x SMs)
  int sms;     // SMs
  int tiles;   // 16-token tiles of the longest sequence (>= 1)
  int r;       // m-tiles a block (1 or 2)
  int warps;   // warps a block, each taking every warps-th tile of its split
};

// The split count make_plan asks for; whole_splits gives the count the grid then has.
inline int auto_splits(const SplitShape& s) {
  // As many splits as fit one wave of resident blocks (Nsight Compute showed too few eligible
  // warps at 2 per SM for packed caches). Rounding down matters: 640 blocks on 528 slots leave a
  // second, mostly empty wave that costs almost a whole block time. Each split keeps >= 2 tiles
  // per warp: shorter splits cost more (query fragments, merge work) than they give.
  int want = s.slots / s.blocks;
  if (s.r == 2 && want == 1) {
    // One split a block may leave a third of the slots idle (256 blocks on 396 at batch 16): then
    // more splits in whole waves (3: 768 blocks in 2 waves), the split count that wastes least.
    double best = double(s.blocks) / s.slots;
    for (int n = 2; n <= 4; ++n) {
      const int waves = (s.blocks * n + s.slots - 1) / s.slots;
      const double used = double(s.blocks) * n / (double(waves) * s.slots);
      if (used > best + 0.05) best = used, want = n;
    }
  }
  // A wave of short splits loses to fewer, longer ones where the blocks outnumber the SMs
  // (batch 1 at 4K-16K): every split's block pays the prologue (the query's rotation and
  // fragments, the tables) once, and at 4 blocks an SM those prologues take as many issue slots
  // as the tiles. So: half the resident slots filled, unless a warp would then have fewer than
  // kMinSharedTiles tiles; then a block on every SM (where whole splits fill nine tenths of them
  // and number kMinSmSplits or more), whose warps' two steps and, at 16 partials or fewer, the
  // warp-a-row merge beat a second block an SM; and beyond that no split under kMinTilesPerWarp
  // tiles a warp.
  // (Blocks of two m-tiles keep the whole-wave choice above, measured on its own.)
  if (s.r == 1) {
    const int half_wave = std::max(1, s.slots / 2 / s.blocks);
    const int sms = std::min(s.slots / 2, s.sms), sm_wave = std::max(1, sms / s.blocks);
    const bool few_tiles = (s.tiles + half_wave - 1) / half_wave < kMinSharedTiles * s.warps;  // a warp's, at half_wave splits
    const bool sm_filled = s.blocks * sm_wave >= kMinWaveFill * sms && sm_wave >= kMinSmSplits;
    const int filled = few_tiles && sm_filled ? sm_wave : half_wave;
    const int long_splits = s.tiles / (kMinTilesPerWarp * s.warps);  // splits of kMinTilesPerWarp tiles a warp
    want = std::min(want, std::max(filled, long_splits));
    // Where the blocks alone fill half the slots or more (serving batches: 55 x 32K for k3v2 is
    // 440 blocks on the H200's 528 slots), one split a block leaves the tail of its wave idle:
    // then splits enough for about kFillWaves waves of smaller blocks, which the SMs take in turn,
    // none under kMinTilesPerWarp tiles a warp (short contexts keep what they had).
    want = std::max(want, 1);
    const int waves = (s.blocks * want + s.slots - 1) / s.slots;
    if (s.blocks >= s.slots / 2 && double(s.blocks) * want < kMinWaveFill * waves * s.slots)
      want = std::max(want, std::min((kFillWaves * s.slots + s.blocks - 1) / s.blocks, long_splits));
  }
  return std::clamp(want, 1, std::max(1, s.tiles / (2 * s.warps)));
}

// A split's tiles when `splits` are asked for over `tiles` tiles: whole tiles each (so the last
// split may be shorter, never empty), the count clamped to [1, tiles]; whole_splits: how many
// splits that makes.
inline int tiles_per_split(int tiles, int splits) {
  splits = std::clamp(splits, 1, tiles);
  return (tiles + splits - 1) / splits;
}
inline int whole_splits(int tiles, int splits) {
  const int t = tiles_per_split(tiles, splits);
  return (tiles + t - 1) / t;
}

// Residency: the blocks of `smem` bytes of shared memory an SM of `sm_bytes` holds (each block
// also takes the 1 KB the driver reserves), and the shared memory to launch such a block with so
// that the SM holds at most `blocks` of them: smem itself where no more fit anyway, or where the
// padded size would pass `max_block` (a block's limit), else just enough that blocks + 1 do not
// fit (decode_smem: packed decode kernels held to the blocks their registers are compiled for;
// blocks_fitting is also the compile-time count of decode_tiles.cuh's staging and resident_blocks).
constexpr size_t kBlockReserve = 1024;
constexpr int blocks_fitting(size_t sm_bytes, size_t smem) { return int(sm_bytes / (smem + kBlockReserve)); }
inline size_t smem_holding_in(size_t sm_bytes, int blocks, size_t smem, size_t max_block) {
  const size_t more = sm_bytes / size_t(blocks + 1) + 1;  // (blocks + 1) x more > sm_bytes
  if (smem + kBlockReserve >= more || more - kBlockReserve > max_block) return smem;
  return more - kBlockReserve;
}

// Where make_plan takes blocks of at most 4 query rows that compute with the keys as the MMA's
// M (decode_kernel.cuh's KM, the same bits as 8-row blocks): packed caches whose keys are plain
// TurboQuant of 2 or 3 bits (key_width: widths.h's parameter, trellis-coded ones are >= kTcq), at
// kernel head dims up to 128, blocks of at most 4 rows (the GQA group times the query tokens),
// unless TQ_DECODE_ROWS forces 8-row blocks (forced_rows: 8, 16, or 0 when not set).
constexpr int kKeysAsMRows = 4;
constexpr bool keys_as_m(bool packed, int key_width, int D, int rows, int forced_rows) {
  return packed && key_width >= 2 && key_width <= 3 && D <= 128 && rows <= kKeysAsMRows && forced_rows != 8;
}

}  // namespace tq::cuda::attention
