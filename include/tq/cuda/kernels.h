// C++ API of the CUDA kernels: raw device pointers and plain params structs, no framework types.
// Build with TQ_CUDA; every launch is asynchronous on the given stream, allocates nothing and never
// synchronizes with the host, so it can be captured in a CUDA graph.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "tq/common.h"
#include "tq/format.h"

struct CUstream_st;

namespace tq::cuda {

using Stream = CUstream_st*;  // cudaStream_t

enum class DType : uint8_t { kF32 = 0, kF16 = 1, kBf16 = 2 };

// The per-layer tables a TurboQuant-encoded tensor needs on the device (see DeviceCodecs).
struct CodecTables {
  const float* centroids = nullptr;   // [2^bits]; trellis-coded rows: the union, [2^(bits + 1)]
  const float* boundaries = nullptr;  // [2^bits - 1]; trellis-coded rows: [2^(bits + 1) - 1]
  const float* signs = nullptr;       // [kv_heads][pd] +-1, Hadamard rotation (else null)
  const float* matrix = nullptr;      // [kv_heads][pd][pd] row-major R, dense rotation (else null)
  uint32_t bits = 0;
  bool norm_correction = false;
  bool norm_unbiased = false;  // ip: the stored norm is ||x|| / <c, u> (TqConfig::norm_unbiased)
  bool tcq = false;            // trellis-coded rows (format.h kTqTcq): quantize_store only, the attention kernels refuse them
};

// One layer of a paged cache in device memory, in the format of docs/format.md.
struct CacheView {
  uint8_t* data = nullptr;  // [num_pages][kv_heads][layout.bytes]
  uint32_t num_pages = 0, kv_heads = 0, head_dim = 0, page_size = 0;
  TensorCode k, v;
  BlockLayout layout;
  float k_scale = 1, v_scale = 1;  // fp8 per-tensor scales
  CodecTables kt, vt;              // TurboQuant tensors only
  float fwht_scale = 0;            // float(1 / sqrt(padded_dim)), the normalization of the FWHT
};

// quantize_store: new K and V rows -> rotated, quantized, packed into their slots.
struct QuantizeStoreParams {
  CacheView cache;
  const void* k = nullptr;             // [num_tokens][kv_heads][head_dim]
  const void* v = nullptr;             // [num_tokens][kv_heads][head_dim]
  DType dtype = DType::kF16;           // of k and v: fp16 or bf16 (fp32 for tests)
  const int64_t* slot_mapping = nullptr;  // [num_tokens], slot = page * page_size + offset; -1 = skip
  uint32_t num_tokens = 0;
  int32_t* error_flag = nullptr;       // optional [1]: set to 1 if a row had NaN/Inf or a norm beyond fp16 (nothing stored),
                                       // 2 if a slot was past the cache's pages (its row skipped)
};
void quantize_store(const QuantizeStoreParams& p, Stream stream);

// The KV policy's full-precision side buffer (KvPolicy sink and window, docs/kv-specs.md), one
// layer of it: a query at position q reads positions t < sink, and (q - window, q], from here in
// fp16 instead of from the pages. Each sequence's buffer is a slot of
//   [sink + ring][2 (K, V)][kv_heads][head_dim] fp16
// rows 0 .. sink-1 hold positions 0 .. sink-1, row sink + t % ring position t >= sink (the ring
// holds the last `ring` positions, ring >= window; ring - window positions may be rolled back).
// The step's own tokens (the last num_q_tokens of each sequence) are read from new_k / new_v, the
// rows quantize_store got; once every query has read them, the attention call writes them into
// the slots (sink rows, and the ring for the last `ring` positions).
struct SideView {
  uint16_t* data = nullptr;          // fp16 bits of slot 0; slot i at data + i * slot_stride
  const int32_t* slots = nullptr;    // [num_seqs] each sequence's slot
  size_t slot_stride = 0;            // elements between slots (>= (sink + ring) * 2 * kv_heads * head_dim)
  uint32_t sink = 0, window = 0, ring = 0;
  const void* new_k = nullptr;       // [num_seqs][num_q_tokens][kv_heads][head_dim]
  const void* new_v = nullptr;       // [num_seqs][num_q_tokens][kv_heads][head_dim]
  DType new_dtype = DType::kF32;
  TQ_HD bool active() const { return sink > 0 || window > 0; }
};

// decode_attention: queries of num_seqs sequences against their pages. Sequence s has seq_lens[s]
// tokens; its num_q_tokens queries (1..9) are its last tokens, causal among themselves. Query head
// h reads KV head h / (q_heads / kv_heads).
struct DecodeParams {
  CacheView cache;
  const void* q = nullptr;       // [num_seqs][num_q_tokens][q_heads][head_dim]
  DType q_dtype = DType::kF16;
  void* out = nullptr;           // [num_seqs][num_q_tokens][q_heads][head_dim]
  DType out_dtype = DType::kF16;
  const int32_t* block_tables = nullptr;  // [num_seqs][max_pages]
  const int32_t* seq_lens = nullptr;      // [num_seqs]
  uint32_t num_seqs = 0, num_q_tokens = 1, q_heads = 0, max_pages = 0;
  uint32_t max_seq_len = 0;  // an upper bound of seq_lens, known on the host: sets the split count
  float scale = 0;           // softmax scale; 0: 1/sqrt(head_dim)
  uint32_t num_splits = 0;   // 0: chosen from the shape to fill the GPU
  // Decode only. > 0: splits of exactly this many positions (a multiple of 16), num_splits of them
  // (num_splits * split_tokens >= max_seq_len), whatever the step: with the split count fixed too,
  // a query's output is then the same bits in any step that holds it (batch invariance).
  uint32_t split_tokens = 0;
  // > 0: a sliding-window layer (Gemma 3's local layers): a query at position q sees only the
  // positions t with q - t < sliding_window, itself included (the CPU's attend_pages). The splits
  // then cover the window alone (with split_tokens: the fixed cuts, those before it empty).
  uint32_t sliding_window = 0;
  void* workspace = nullptr; // decode_workspace_bytes(...) bytes (prefill: prefill_workspace_bytes)
  size_t workspace_bytes = 0; // the workspace's size when set: a call whose plan needs more throws before any launch
  SideView side;             // sink / window: off unless side.active()
};
// prefill_attention (chunked prefill): the same, with a chunk of up to kMaxPrefillChunk new queries
// per sequence whose K/V rows are already in the cache (quantize_store them first): each attends
// to the packed prefix and, causally, to the chunk. Its own kernel: blocks of 64 query rows share
// each tile of the prefix, decoded once into shared memory (prefill_kernel.cuh). Its workspace:
// prefill_workspace_bytes.
inline constexpr uint32_t kMaxDecodeQueryTokens = 9;  // a token and up to 8 drafts
inline constexpr uint32_t kMaxPrefillChunk = 2048;
void prefill_attention(const DecodeParams& p, Stream stream);

// One decode step: quantize_store of the step's new rows, then decode_attention, launched so that
// they overlap: the decode kernel reads the queries, sequence lengths and codebooks, and copies
// the pages of tiles before the new rows, while the store runs; it waits for the store before it
// reads a tile that holds a new row (dense rotations: before any page). So the store must write
// only the decode's new rows, positions [seq_len - num_q_tokens, seq_len) of its sequences (or
// sequences the decode does not read). The queries must be complete when this is called in
// stream order, as for decode_attention.
void quantize_store_and_decode(const QuantizeStoreParams& store, const DecodeParams& p, Stream stream);

// Splits the decode launch will use, and the workspace decode_attention (prefill_attention) needs
// (computed on the host, no device calls except a cached device-property query on first use).
uint32_t decode_num_splits(const DecodeParams& p);
// The query rows a decode block holds: 4 where its rows (GQA group x query tokens) are at most 4
// and the keys are plain TurboQuant of 2 or 3 bits, up to head dim 128 (the tile's tokens are then
// the score MMA's M: half an 8-row block's score work, the same bits); else 8, or 16 (packed
// caches with more than 8 rows where a warp has enough tiles). TQ_DECODE_ROWS=8 forces 8-row
// blocks, 16 two m-tiles a block where there are more than 8 rows.
uint32_t decode_block_rows(const DecodeParams& p);
size_t decode_workspace_bytes(const DecodeParams& p);
size_t prefill_workspace_bytes(const DecodeParams& p);
void decode_attention(const DecodeParams& p, Stream stream);

// Why the attention kernels have no path for caches of these encodings at this head dim, or ""
// when they have one (host code: the model runner asks before it allocates anything).
std::string attention_unsupported(TensorCode k, TensorCode v, uint32_t head_dim);

// Throws tq::Error naming the problem when a params struct is inconsistent (shapes, encodings this
// build has no kernel for, missing pointers). Called by the launchers before any launch.
void validate(const DecodeParams& p);
void validate(const QuantizeStoreParams& p);

}  // namespace tq::cuda
