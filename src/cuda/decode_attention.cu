// Paged decode and chunked-prefill attention over the packed cache: the host side (validation,
// the split plan). The launches are attention_launch.cuh's, compiled one head dim a file
// (attention_d64.cu, ...). docs/cuda.md describes the design.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "attention_launch.cuh"
#include "tq/kv/attention_ref.h"
#include "split_plan.h"

namespace tq::cuda {
namespace {

using namespace attention;  // Plan, Mode, dispatch_dim and the kernels' shapes

// A kernel compiled for the same architectures as the attention kernels (the same CMake target),
// whose attributes say which of them this GPU runs.
__global__ void arch_probe() {}

}  // namespace

int kernels_arch() {
  static std::mutex mu;
  static std::vector<int> archs;  // [device]: -1 until queried, then the PTX version or 0
  int dev = 0;
  TQ_CHECK(cudaGetDevice(&dev) == cudaSuccess, "no CUDA device");
  std::lock_guard<std::mutex> lock(mu);
  if (archs.size() <= size_t(dev)) archs.resize(dev + 1, -1);
  if (archs[dev] < 0) {
    cudaFuncAttributes a{};
    const bool runs = cudaFuncGetAttributes(&a, arch_probe) == cudaSuccess;
    if (!runs) cudaGetLastError();  // no kernel image for this GPU: not an error left for a later check_launch
    archs[dev] = runs ? a.ptxVersion : 0;
  }
  return archs[dev];
}

namespace {
// Blocks resident per SM of the decode kernel a cache gets, on this GPU (residency_dim: as the GPU
// schedules them).
int resident_blocks_of(int D, const CacheView& c, int R) {
  return D == 64 ? residency_dim<64>(c, R) : D == 128 ? residency_dim<128>(c, R) : residency_dim<256>(c, R);
}

// Decode blocks of two 8-row m-tiles (packed caches up to D = 128, more than 8 rows: the GQA
// group times the query tokens) decode each packed tile once for 16 rows rather than once per 8,
// but their prologue prepares twice the queries: it pays when a warp has >= kPairMinTiles tiles
// (on the H200, Llama-3.1-8B shape, 8 query tokens at batch 1: slower at 4K-8K, ~3 and ~6 tiles a
// warp; faster from 16K, ~11; bench/results/2026-12-01-h200-decode-rows.md).
constexpr int kPairMinTiles = 8;
// TQ_DECODE_ROWS=8 or 16 forces 8- or 16-row blocks where both exist, 8 also where blocks of at
// most 4 rows compute with the keys as M (read at every plan, so a test can compare the kernels
// on one cache); a row's result is the same bits either way.
int forced_rows() {
  const char* env = std::getenv("TQ_DECODE_ROWS");
  return env && std::strcmp(env, "8") == 0 ? 8 : env && std::strcmp(env, "16") == 0 ? 16 : 0;
}

// The head dim the kernels run at: TurboQuant rows are padded (e.g. 112 -> 128), float rows not.
int kernel_dim(const CacheView& c) { return int(is_tq(c.k.enc) ? padded_dim(c.head_dim) : c.head_dim); }

// The keys' width parameter (widths.h), as the kernels are instantiated for.
int key_width(const CacheView& c) { return width_param(c.k.enc == Encoding::kTqTcq, int(c.k.bits)); }

// The workspace: per split (and side block) and query row its output and (max, sum), and the
// rotated queries of pl.mtiles 8-row m-tiles per (sequence, KV head).
void size_workspace(Plan& pl, const DecodeParams& p) {
  const size_t slots = size_t(p.num_seqs) * p.num_q_tokens * p.q_heads * (pl.splits + pl.side);
  pl.ws_o_bytes = slots * pl.D * sizeof(float);
  pl.ws_ml_bytes = (slots * sizeof(float2) + 15) / 16 * 16;
  pl.ws_q_bytes = size_t(p.num_seqs) * p.cache.kv_heads * pl.mtiles * kRows * pl.D * sizeof(float);
}
// The split count clamped to [1, tiles], whole tiles of tile_tokens per split (so the last
// split may be shorter, never empty), and the workspace.
void size_splits(Plan& pl, const DecodeParams& p, int tiles, int splits, int tile_tokens, int side_blocks) {
  pl.tokens_per_split = tiles_per_split(tiles, splits) * tile_tokens;
  pl.splits = whole_splits(tiles, splits);
  pl.side = side_blocks;
  size_workspace(pl, p);
}

// The positions a block's splits cover: the longest sequence's, or in a sliding-window layer at
// most its window and the span of the block's query tokens, from the first row's window start
// rounded down to 16 (the kernels' base: decode_kernel.cuh, window_base in decode_side.cuh).
uint32_t span_tokens(const DecodeParams& p, uint32_t block_tokens) {
  if (!p.sliding_window) return p.max_seq_len;
  return uint32_t(std::min<uint64_t>(p.max_seq_len, uint64_t(p.sliding_window) + std::min(block_tokens, p.num_q_tokens) + 15));
}

// A grid's y: `blocks` of a (sequence's) KV heads and row tiles, within CUDA's 65535.
void check_grid_y(uint64_t blocks, const DecodeParams& p, const char* what) {
  TQ_CHECK(blocks <= 65535, "{}: {} blocks of {} KV heads x row tiles ({} query heads, {} query tokens) are more than a grid's 65535",
           what, blocks, p.cache.kv_heads, p.q_heads, p.num_q_tokens);
}

// The decode plan with R m-tiles a block.
Plan make_plan(const DecodeParams& p, int R) {
  Plan pl{};
  pl.D = kernel_dim(p.cache);
  const int rows = int(p.q_heads / p.cache.kv_heads * p.num_q_tokens);
  pl.R = R;
  pl.mtiles = ((rows + kRows - 1) / kRows + R - 1) / R * R;
  if (p.split_tokens > 0) {  // fixed cuts (batch invariance), checked by validate; splits past a sequence's end are empty
    pl.tokens_per_split = int(p.split_tokens), pl.splits = int(p.num_splits), pl.side = side_decode_blocks(p);
    size_workspace(pl, p);
    return pl;
  }
  const int tiles = std::max(1, int((span_tokens(p, p.num_q_tokens) + kTile - 1) / kTile));
  int splits = int(p.num_splits);
  check_grid_y(uint64_t(p.cache.kv_heads) * (pl.mtiles / R), p, "decode_attention");
  if (splits == 0) {  // (blocks in 64 bits: num_seqs x kv_heads x m-tiles passes 2^31; then as many as an int holds, one split)
    const int blocks = int(std::min<uint64_t>(uint64_t(p.num_seqs) * p.cache.kv_heads * (pl.mtiles / R), INT32_MAX)), sms = device_sm_count();
    splits = auto_splits({blocks, resident_blocks_of(pl.D, p.cache, R) * sms, sms, tiles, R, kWarps});
  }
  size_splits(pl, p, tiles, splits, kTile, side_decode_blocks(p));
  return pl;
}

// Keys as M where a block has at most 4 rows and plain keys of 2 or 3 bits, up to D = 128
// (decode_kernel.cuh's KM: half the score work of an 8-row block, the same bits); two m-tiles a
// block where they exist and pay (kPairMinTiles); else one.
Plan make_plan(const DecodeParams& p) {
  const int D = kernel_dim(p.cache), rows = int(p.q_heads / p.cache.kv_heads * p.num_q_tokens);
  const int forced = forced_rows();
  if (keys_as_m(is_tq(p.cache.k.enc), key_width(p.cache), D, rows, forced)) {
    Plan pl = make_plan(p, 1);
    pl.km = true;
    return pl;
  }
  if (!is_tq(p.cache.k.enc) || D > 128 || rows <= kRows) return make_plan(p, 1);
  if (forced) return make_plan(p, forced / kRows);
  const Plan paired = make_plan(p, 2);
  return paired.tokens_per_split >= kPairMinTiles * kWarps * kTile ? paired : make_plan(p, 1);
}

// Chunked prefill: on Hopper blocks of 128 query rows (prefill_ws.cuh), elsewhere of 64
// (prefill_kernel.cuh), whose queries come in 8-row m-tiles (rounded up to whole blocks; dense
// rotations' from prepare_queries' workspace); splits only where the blocks do not fill the GPU, each with >= 4 tiles.
Plan make_prefill_plan(const DecodeParams& p) {
  Plan pl{};
  pl.D = kernel_dim(p.cache);
  pl.ws = pl.D == 64 ? prefill_ws_here<64>() : pl.D == 128 ? prefill_ws_here<128>() : prefill_ws_here<256>();
  pl.block_rows = pl.ws ? prefill::kWsRows : prefill::kBlockRows;
  const bool compact = pl.D == 256 && prefill_compact_here<256>();
  // Hopper runs prefill_kernel's full tiles only in builds that carry them (variants.h): where
  // the warp-specialized kernel does not fit either, say so rather than trap.
  TQ_CHECK(pl.ws || compact || kernels_arch() != 90 || kPortableOnHopper,
           "prefill_attention: {} KB of shared memory a block is too little for Hopper's prefill kernel at head dim {} ({} KB); "
           "builds with -DTQ_CUDA_PORTABLE_ON_HOPPER=ON carry the smaller one",
           device_smem_per_block() / 1024, pl.D,
           (pl.D == 64 ? prefill::ws_smem_bytes<64>() : pl.D == 128 ? prefill::ws_smem_bytes<128>() : prefill::ws_smem_bytes<256>()) / 1024);
  const int rows = int(p.q_heads / p.cache.kv_heads * p.num_q_tokens);  // (bounded by validate_shape)
  const int rtiles = (rows + pl.block_rows - 1) / pl.block_rows;
  pl.mtiles = rtiles * (pl.block_rows / kRows);
  check_grid_y(uint64_t(p.cache.kv_heads) * rtiles, p, "prefill_attention");
  // Hopper's int8 S (the kernels' own rule) takes its own tiles.
  const bool s8 = pl.ws && prefill::ws_s8(pl.D, is_tq(p.cache.k.enc), key_width(p.cache));
  const int T = pl.ws ? prefill::ws_tile_tokens(pl.D, s8) : prefill::tile_tokens(pl.D, compact);
  const int group = int(p.q_heads / p.cache.kv_heads);
  const int tiles = std::max(1, int((span_tokens(p, uint32_t((pl.block_rows + group - 1) / group + 1)) + T - 1) / T));
  int splits = p.split_tokens ? 0 : int(p.num_splits);  // fixed cuts are the decode kernel's
  if (splits == 0) {
    constexpr int kT256 = prefill::tile_tokens(256, true);
    const int resident = pl.ws         ? 1
                         : pl.D == 64  ? resident_blocks_here(prefill::resident_blocks<64>(), prefill::smem_bytes<64>())
                         : pl.D == 128 ? resident_blocks_here(prefill::resident_blocks<128>(), prefill::smem_bytes<128>())
                         : compact     ? resident_blocks_here(prefill::resident_blocks<256, kT256>(), prefill::smem_bytes<256, kT256>())
                                       : resident_blocks_here(prefill::resident_blocks<256>(), prefill::smem_bytes<256>());
    const int want = int(uint64_t(resident) * device_sm_count() / (uint64_t(p.num_seqs) * p.cache.kv_heads * rtiles));
    splits = std::clamp(want, 1, std::max(1, tiles / 4));
  }
  size_splits(pl, p, tiles, splits, T, p.side.active() ? 1 : 0);
  return pl;
}

}  // namespace

size_t attention_smem_bytes(TensorCode k, uint32_t head_dim, size_t limit, int arch) {
  const uint32_t d = is_tq(k.enc) ? padded_dim(head_dim) : head_dim;
  // The variant decode_attention launches (full and compact alike where a kernel has one).
  const auto pick = [&](size_t full, size_t compact) { return choose_compact(arch, full > limit) ? compact : full; };
  const auto at = [&](auto dim) -> size_t {
    constexpr int D = decltype(dim)::value;
    size_t prefill = pick(prefill::smem_bytes<D>(), prefill::smem_bytes<D, prefill::tile_tokens(D, kPrefillHasCompact<D>)>());
    if (arch == 90 && prefill::ws_smem_bytes<D>() <= limit) prefill = prefill::ws_smem_bytes<D>();  // Hopper's prefill_ws.cuh
    switch (k.enc) {
      case Encoding::kFp16:
      case Encoding::kBf16:
        return std::max(prefill, pick(sizeof(Smem<D, Kind::kBf16, 0, 0>), sizeof(Smem<D, Kind::kBf16, 0, 0, 1, kDecodeHasCompact<D, Kind::kBf16>>)));
      case Encoding::kFp8E4M3:
        return std::max(prefill, pick(sizeof(Smem<D, Kind::kFp8, 0, 0>), sizeof(Smem<D, Kind::kFp8, 0, 0, 1, kDecodeHasCompact<D, Kind::kFp8>>)));
      default:  // the largest ring of any widths; blocks of 2 m-tiles hold more query rows
        if constexpr (D <= 128) return std::max({prefill, sizeof(Smem<D, Kind::kTq, 4, 4>), sizeof(Smem<D, Kind::kTq, 4, 4, 2>)});
        return std::max(prefill, sizeof(Smem<D, Kind::kTq, 4, 4>));
    }
  };
  return d == 64 ? at(std::integral_constant<int, 64>{}) : d == 128 ? at(std::integral_constant<int, 128>{}) : at(std::integral_constant<int, 256>{});
}

namespace {
// What a plan divides by: checked by validate_attention (after validate_cache), and by the workspace
// functions after validate_cache_layout (they size before the pages exist: no data pointer needed).
void validate_shape(const DecodeParams& p, const char* name) {
  TQ_CHECK(p.num_seqs >= 1 && p.num_seqs <= 65535, "{}: num_seqs must be 1..65535, got {}", name, p.num_seqs);
  TQ_CHECK(p.num_q_tokens >= 1, "{}: at least one query token per sequence, got 0", name);
  TQ_CHECK(p.q_heads >= p.cache.kv_heads && p.q_heads % p.cache.kv_heads == 0, "{}: {} query heads is not a multiple of {} KV heads",
           name, p.q_heads, p.cache.kv_heads);
  // The rows a (sequence, KV head) holds, and the 8-row m-tiles of all KV heads (a grid's y, 65535
  // at most, in the tiles of either kernel): the plans count them in int.
  const uint64_t rows = uint64_t(p.q_heads / p.cache.kv_heads) * p.num_q_tokens;
  TQ_CHECK(uint64_t(p.cache.kv_heads) * ((rows + kRows - 1) / kRows) <= 65535 * uint64_t(kRows),
           "{}: {} KV heads of {} rows ({} query heads over {} KV heads x {} query tokens) are more than a grid holds", name,
           p.cache.kv_heads, rows, p.q_heads, p.cache.kv_heads, p.num_q_tokens);
  TQ_CHECK(p.max_seq_len <= uint32_t(INT32_MAX), "{}: max_seq_len {} is over 2^31 - 1 (positions are int)", name, p.max_seq_len);
}


void validate_attention(const DecodeParams& p, uint32_t max_q_tokens, const char* name) {
  validate_cache(p.cache);
  const CacheView& c = p.cache;
  const std::string unsupported = attention_unsupported(c.k, c.v, c.head_dim);
  TQ_CHECK(unsupported.empty(), "{}: {}", name, unsupported);
  TQ_CHECK(p.q && p.out && p.block_tables && p.seq_lens, "{}: q, out, block_tables and seq_lens must be set", name);
  for (const auto& [d, what] : {std::pair{p.q_dtype, "q_dtype"}, std::pair{p.out_dtype, "out_dtype"}})
    TQ_CHECK(d == DType::kF32 || d == DType::kF16 || d == DType::kBf16, "{}: {} {} unknown (0 = fp32, 1 = fp16, 2 = bf16)", name, what, int(d));
  validate_shape(p, name);
  TQ_CHECK(p.num_q_tokens <= max_q_tokens, "{}: 1..{} query tokens per sequence, got {}", name, max_q_tokens, p.num_q_tokens);
  TQ_CHECK(p.max_seq_len >= 1 && p.max_seq_len <= uint64_t(p.max_pages) * c.page_size,
           "{}: max_seq_len {} must be 1..max_pages*page_size = {}", name, p.max_seq_len, uint64_t(p.max_pages) * c.page_size);
  const char* sizer = max_q_tokens == kMaxDecodeQueryTokens ? "decode_workspace_bytes" : "prefill_workspace_bytes";
  TQ_CHECK(p.workspace, "{}: workspace is null (size it with {})", name, sizer);
  // float4 and float2 reads of it (the merge, prepare_queries' rows): every allocator gives 256
  TQ_CHECK(reinterpret_cast<uintptr_t>(p.workspace) % 16 == 0, "{}: the workspace must be 16-byte aligned (a slice of one is not)", name);
  TQ_CHECK(attention_scale_valid(p.scale), "{}: scale {} must be 0 (1/sqrt(head_dim)) or positive and finite", name, p.scale);
  TQ_CHECK(p.sliding_window <= uint32_t(INT32_MAX), "{}: sliding_window {} is over 2^31 - 1 (0: no window)", name, p.sliding_window);
  TQ_CHECK(p.split_tokens == 0 || (p.split_tokens % 16 == 0 && p.split_tokens <= (1u << 30) && p.num_splits >= 1 &&
                                    p.num_splits <= 65535 && uint64_t(p.num_splits) * p.split_tokens >= p.max_seq_len),
           "{}: fixed splits of {} positions (a multiple of 16, at most 2^30), {} of them (1..65535), must cover max_seq_len {}", name,
           p.split_tokens, p.num_splits, p.max_seq_len);
  const SideView& s = p.side;
  if (!s.active()) return;
  TQ_CHECK(s.data && s.slots && s.new_k && s.new_v, "{}: a side buffer (sink {}, window {}) needs data, slots, new_k and new_v", name,
           s.sink, s.window);
  TQ_CHECK(s.window == 0 ? s.ring == 0 : s.ring >= s.window, "{}: the side ring of {} positions must hold the window of {} (0 without one)",
           name, s.ring, s.window);
  const uint64_t side_rows = uint64_t(s.sink) + s.ring;  // (in 32 bits the sum wrapped: sink 2^32 - 16 and a ring of 32 were 16)
  TQ_CHECK(side_rows <= uint64_t(INT32_MAX), "{}: sink {} + ring {} rows are over 2^31 - 1", name, s.sink, s.ring);
  TQ_CHECK(s.slot_stride >= side_rows * 2 * c.kv_heads * c.head_dim,
           "{}: side slots of {} elements are smaller than sink + ring = {} rows of {} KV heads x {}", name, s.slot_stride, side_rows,
           c.kv_heads, c.head_dim);
  // Rows are read 8 elements a 16-byte load (side_half8): slots, and the new rows' first elements.
  TQ_CHECK(reinterpret_cast<uintptr_t>(s.data) % 16 == 0 && s.slot_stride % 8 == 0 && reinterpret_cast<uintptr_t>(s.new_k) % 16 == 0 &&
               reinterpret_cast<uintptr_t>(s.new_v) % 16 == 0,
           "{}: the side buffer and the new rows must be 16-byte aligned and slots a multiple of 8 elements apart (slot_stride {})", name,
           s.slot_stride);
  TQ_CHECK(s.new_dtype == DType::kF32 || s.new_dtype == DType::kF16 || s.new_dtype == DType::kBf16, "{}: new rows dtype {} unknown", name,
           int(s.new_dtype));
}
}  // namespace

void validate(const DecodeParams& p) { validate_attention(p, kMaxDecodeQueryTokens, "decode_attention"); }

uint32_t decode_num_splits(const DecodeParams& p) {
  validate_cache_layout(p.cache);
  validate_shape(p, "decode_num_splits");
  return uint32_t(make_plan(p).splits);
}

uint32_t decode_block_rows(const DecodeParams& p) {
  validate_cache_layout(p.cache);
  validate_shape(p, "decode_block_rows");
  const Plan pl = make_plan(p);
  return pl.km ? 4u : uint32_t(pl.R * kRows);
}

size_t decode_workspace_bytes(const DecodeParams& p) {
  validate_cache_layout(p.cache);
  validate_shape(p, "decode_workspace_bytes");
  return make_plan(p).workspace_bytes();
}

size_t prefill_workspace_bytes(const DecodeParams& p) {
  validate_cache_layout(p.cache);
  validate_shape(p, "prefill_workspace_bytes");
  return make_prefill_plan(p).workspace_bytes();
}

namespace {
// The call's plan, its workspace checked against the size given (0: not given). Before anything is
// launched: quantize_store_and_decode refuses a short workspace before its store.
Plan checked_plan(const DecodeParams& p, bool prefill) {
  const Plan pl = prefill ? make_prefill_plan(p) : make_plan(p);
  TQ_CHECK(p.workspace_bytes == 0 || p.workspace_bytes >= pl.workspace_bytes(),
           "{}: a workspace of {} bytes, but this call's plan ({} splits) needs {} ({}_workspace_bytes of these params)",
           prefill ? "prefill_attention" : "decode_attention", p.workspace_bytes, pl.splits, pl.workspace_bytes(), prefill ? "prefill" : "decode");
  return pl;
}

void launch_attention(const DecodeParams& p, const Plan& pl, Mode mode, Stream stream) {
  switch (pl.D) {
    case 64: dispatch_dim<64>(p, pl, mode, stream); break;
    case 128: dispatch_dim<128>(p, pl, mode, stream); break;
    case 256: dispatch_dim<256>(p, pl, mode, stream); break;
  }
  check_launch("attention");
}
}  // namespace

void decode_attention(const DecodeParams& p, Stream stream) {
  validate(p);
  launch_attention(p, checked_plan(p, false), Mode::kDecode, stream);
}

void prefill_attention(const DecodeParams& p, Stream stream) {
  validate_attention(p, kMaxPrefillChunk, "prefill_attention");
  launch_attention(p, checked_plan(p, true), Mode::kPrefill, stream);
}

void quantize_store_and_decode(const QuantizeStoreParams& store, const DecodeParams& p, Stream stream) {
  validate(store);
  validate(p);
  TQ_CHECK(store.cache.data == p.cache.data, "quantize_store_and_decode: the store and the decode must use the same cache");
  const Plan pl = checked_plan(p, false);
  // quantize_store is a plain launch, so whatever wrote the queries had finished before it
  // started, and the decode kernel (a programmatic dependent of it) may read them early. With no
  // rows to store nothing is launched, and the decode must not assume so.
  quantize_store(store, stream);
  launch_attention(p, pl, store.num_tokens > 0 ? Mode::kDecodeAfterStore : Mode::kDecode, stream);
}

}  // namespace tq::cuda
