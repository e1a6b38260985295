// The packed paged-KV format, defined once for the CPU and the CUDA paths.
//
// docs/format.md describes every byte and says why the layout is what it is; this header is the
// normative definition: sizes are constexpr, pack/unpack are __host__ __device__, and the CPU
// reference, the SIMD paths and the CUDA kernels all read and write through it.
//
// The cache is an array of blocks, one per (layer, page, kv_head), in that order:
//   block index = (layer * num_pages + page) * kv_heads + kv_head
//   block bytes = BlockLayout::bytes (a multiple of 16)
// Inside a block, sections are 16-byte aligned, each holding page_size rows:
//   K codes | K QJL signs (prod keys only) | V codes | K norms | K residual norms (prod) | V norms
// Fractional widths (kTqSplit, "k2.5"): a row's codes are the outlier part's then the rest's, and
// its norm entry is two fp16 norms (outliers, rest). Trellis-coded rows (kTqTcq, "k3t") are laid
// out as MSE rows of the same width: only what a code means differs (tcq_level_index below).
#pragma once

#include <cstdint>

#include "tq/common.h"

namespace tq {

// How one of K or V is stored.
enum class Encoding : uint8_t {
  kFp32 = 0,
  kFp16 = 1,
  kBf16 = 2,
  kFp8E4M3 = 3,  // with one scale per tensor, kept in the cache's metadata, not in the blocks
  kTqMse = 4,    // TurboQuant-MSE: fp16 norm + `bits` per coordinate of the rotated unit vector
  kTqProd = 5,   // TurboQuant-prod: MSE at bits-1, then 1 QJL sign per coordinate + fp16 residual norm
  // A fractional width, bits + 0.5 (the paper's outlier split): the head's channels are split into
  // split_outliers(head_dim) outlier channels and the rest, each part its own TurboQuant-MSE
  // instance (own rotation, codebook and fp16 norm): outliers at bits + 1, the rest at `bits`.
  kTqSplit = 6,
  // Trellis-coded TurboQuant-MSE at `bits` (1..7) per coordinate (Marcellin and Fischer's 4-state
  // trellis-coded quantization over the rotated unit vector): the same rotation, fp16 norm and row
  // size as kTqMse, but a coordinate's level is drawn from the (bits + 1)-bit codebook, one of its
  // four interleaved subsets chosen by the trellis state (tcq_level_index below).
  kTqTcq = 7,
};

struct TensorCode {
  Encoding enc = Encoding::kFp16;
  uint8_t bits = 16;  // tq encodings: 1..8 bits per coordinate in total (split: 1..7, the rest's width; tcq: 1..7); floats: their width
};

// Coordinates are packed in groups of 32: a group of b-bit codes is exactly b 32-bit words, so no
// code straddles a word and a row is a whole number of words. Head dims that are not a multiple of
// 32 are zero-padded before the rotation (the rotation is over the padded dimension), so every
// stored coordinate carries information.
inline constexpr uint32_t kGroup = 32;
inline constexpr uint32_t kAlign = 16;  // section alignment: one 16-byte load / bulk copy unit
inline constexpr uint32_t kMaxHeadDim = 1024;
inline constexpr uint32_t kMaxLayers = 1024;  // a model's, so a cache's (KV specs name layers up to it)
inline constexpr uint32_t kMaxPageSize = 1024;
inline constexpr uint32_t kNormBytes = 2;  // a token's fp16 norm in each norm section

TQ_HD constexpr uint32_t padded_dim(uint32_t head_dim) { return (head_dim + kGroup - 1) / kGroup * kGroup; }
TQ_HD constexpr uint32_t align_up(uint32_t n, uint32_t a = kAlign) { return (n + a - 1) / a * a; }

TQ_HD constexpr bool is_tq(Encoding e) {
  return e == Encoding::kTqMse || e == Encoding::kTqProd || e == Encoding::kTqSplit || e == Encoding::kTqTcq;
}

// Whether a tensor's codes index uniform levels (codebook.h uniform_codebook: c - 1.5 in z-units)
// instead of the Lloyd-Max codebook: values in plain 2-bit MSE rows (k3v2's V). Their squared
// error is 1% higher; the GPU's decode builds them from the code bits without a table.
TQ_HD constexpr bool value_levels_uniform(bool value, TensorCode c) { return value && c.enc == Encoding::kTqMse && c.bits == 2; }

TQ_HD constexpr uint32_t float_bytes(Encoding e) {
  return e == Encoding::kFp32 ? 4 : e == Encoding::kFp8E4M3 ? 1 : 2;
}

// Bits of code per coordinate: all of them for MSE and trellis-coded rows, all but the QJL bit for
// prod, the rest's for split (its outlier part has one more).
TQ_HD constexpr uint32_t mse_bits(TensorCode c) {
  return c.enc == Encoding::kTqMse || c.enc == Encoding::kTqSplit || c.enc == Encoding::kTqTcq ? c.bits
         : c.enc == Encoding::kTqProd                                                          ? c.bits - 1u
                                                                                               : 0u;
}

// ---- Trellis-coded rows (kTqTcq) -----------------------------------------------------------------
//
// A b-bit code of coordinate i is its branch bit t_i (the code's top bit, bit b - 1) and the index
// j_i of its level within a subset (the low b - 1 bits). The union codebook is the (b + 1)-bit
// Lloyd-Max codebook of the row's padded dim; subset s (0..3) holds its levels s, s + 4, s + 8, ...
// The trellis's state before coordinate i is its two previous branch bits, and the level of
// coordinate i is
//   union[4 j_i + t_{i-1} + 2 (t_{i-2} xor t_i)],
// a lookup on a window of b + 2 bits with no walk along the row: any coordinate decodes alone.
// The trellis is tail-biting: the indices wrap around the row of n coordinates (t_{-1} = t_{n-1},
// t_{-2} = t_{n-2}), so the first coordinates read the row's last branch bits and the path's end
// state is its start state. A row started in a fixed state biased its first coordinate (2t: ~0.02
// of a z-unit low, the same for every row; docs/kv-specs.md); a tail-biting one adds no bits.
TQ_HD constexpr uint32_t tcq_level_index(uint32_t code, uint32_t prev1, uint32_t prev2, uint32_t bits) {
  const uint32_t t = code >> (bits - 1);
  return 4u * (code & ((1u << (bits - 1)) - 1u)) + (prev1 & 1u) + 2u * ((prev2 ^ t) & 1u);
}
// The branch bit of a b-bit trellis code.
TQ_HD constexpr uint32_t tcq_branch(uint32_t code, uint32_t bits) { return code >> (bits - 1); }

// Bytes of one row of b-bit codes for a head of `head_dim` coordinates.
TQ_HD constexpr uint32_t code_row_bytes(uint32_t head_dim, uint32_t bits) {
  return padded_dim(head_dim) / kGroup * bits * 4;
}

// Channels of the outlier part of a split (fractional-width) row of `head_dim` channels: half of
// them rounded up to whole groups of 32, so that at head dims 64, 128 and 256 both parts pad to
// nothing; half rounded up where that leaves no rest (head dims up to 32). Needs head_dim >= 2.
TQ_HD constexpr uint32_t split_outliers(uint32_t head_dim) {
  const uint32_t groups = kGroup * ((head_dim + 2 * kGroup - 1) / (2 * kGroup));
  return groups < head_dim ? groups : (head_dim + 1) / 2;
}
// Bytes of the outlier part's codes at the front of a split row of rest width `bits`.
TQ_HD constexpr uint32_t split_outlier_bytes(uint32_t head_dim, uint32_t bits) { return code_row_bytes(split_outliers(head_dim), bits + 1); }
TQ_HD constexpr uint32_t split_row_bytes(uint32_t head_dim, uint32_t bits) {
  return split_outlier_bytes(head_dim, bits) + code_row_bytes(head_dim - split_outliers(head_dim), bits);
}

// Bytes of the first section's row: codes for tq encodings, raw elements for floats.
TQ_HD constexpr uint32_t main_row_bytes(TensorCode c, uint32_t head_dim) {
  return c.enc == Encoding::kTqSplit ? split_row_bytes(head_dim, c.bits)
         : is_tq(c.enc)              ? code_row_bytes(head_dim, mse_bits(c))
                                     : head_dim * float_bytes(c.enc);
}

// Bytes per token of a norm section: one fp16 norm for tq rows, two for split rows, none for floats.
TQ_HD constexpr uint32_t norm_row_bytes(TensorCode c) {
  return c.enc == Encoding::kTqSplit ? 2 * kNormBytes : is_tq(c.enc) ? kNormBytes : 0u;
}

// Byte offsets of the sections of one (layer, page, kv_head) block. Absent sections have size 0
// and the offset of the next section.
struct BlockLayout {
  uint32_t k_row = 0;      // bytes per token in the K codes / K elements section
  uint32_t k_qjl_row = 0;  // bytes per token of QJL signs (prod keys), padded_dim / 8
  uint32_t v_row = 0;      // bytes per token in the V section
  uint32_t k_norm_row = 0;  // bytes per token in the K norm section: 2, 4 for split keys, 0 for floats
  uint32_t v_norm_row = 0;  // the same for V
  uint32_t k_codes = 0;    // [page_size][k_row]
  uint32_t k_qjl = 0;      // [page_size][k_qjl_row]
  uint32_t v_codes = 0;    // [page_size][v_row]
  uint32_t k_norms = 0;    // [page_size] fp16 ||k|| (tq keys); split keys: [page_size][2] (outliers, rest)
  uint32_t k_rnorms = 0;   // [page_size] fp16 ||residual|| (prod keys)
  uint32_t v_norms = 0;    // [page_size] fp16 ||v|| (tq values); split values: [page_size][2]
  uint32_t bytes = 0;      // total, a multiple of kAlign
};

TQ_HD constexpr BlockLayout block_layout(TensorCode k, TensorCode v, uint32_t head_dim, uint32_t page_size) {
  BlockLayout L{};
  L.k_row = main_row_bytes(k, head_dim);
  L.k_qjl_row = k.enc == Encoding::kTqProd ? padded_dim(head_dim) / 8 : 0;
  L.v_row = main_row_bytes(v, head_dim);
  L.k_norm_row = norm_row_bytes(k);
  L.v_norm_row = norm_row_bytes(v);
  uint32_t off = 0;
  L.k_codes = off;
  off = align_up(off + page_size * L.k_row);
  L.k_qjl = off;
  off = align_up(off + page_size * L.k_qjl_row);
  L.v_codes = off;
  off = align_up(off + page_size * L.v_row);
  L.k_norms = off;
  off = align_up(off + page_size * L.k_norm_row);
  L.k_rnorms = off;
  off = align_up(off + (k.enc == Encoding::kTqProd ? page_size * kNormBytes : 0));
  L.v_norms = off;
  off = align_up(off + page_size * L.v_norm_row);
  L.bytes = off;
  return L;
}

// Exact bytes per token per KV head, padding included, when pages are full.
TQ_HD constexpr double bytes_per_token_head(TensorCode k, TensorCode v, uint32_t head_dim, uint32_t page_size) {
  return double(block_layout(k, v, head_dim, page_size).bytes) / page_size;
}

// ---- Bit layout of one group of 32 codes -------------------------------------------------------
//
// A width b is split into planes of 4, 2 and 1 bits (its binary digits, widest first; b = 8 is one
// byte plane). The planes hold the code's bits from the lowest up: for b = 3, plane 0 (2 bits wide,
// 2 words) holds bits 0-1 and plane 1 (1 bit, 1 word) holds bit 2. Words follow in plane order.
//
// Inside a plane of width w in {1, 2, 4}, coordinate i (0..31) sits in
//   word  i * w / 32,   octet o = (i % (32 / w)) / 8,   k = i % 8,   bit 4k + w*o  (w bits).
// So octet o of a word is spread over the 8 nibbles: one shift by w*o and one AND turn it into
// 8 nibbles = 8 consecutive coordinates, which is the selector format of the GPU's byte-permute
// (PRMT) instruction, a 3-bit code indexes an 8-entry table held in two registers. For w = 8 the
// code is byte i % 4 of word i / 4.

TQ_HD constexpr uint32_t plane_count(uint32_t bits) {
  return bits == 8 ? 1u : ((bits >> 2) & 1u) + ((bits >> 1) & 1u) + (bits & 1u);
}
// Width of plane p (0-based) of a b-bit code; planes are the binary digits of b, widest first.
TQ_HD constexpr uint32_t plane_width(uint32_t bits, uint32_t p) {
  if (bits == 8) return 8;
  uint32_t seen = 0;
  for (uint32_t w = 4; w >= 1; w >>= 1) {
    if (bits & w) {
      if (seen == p) return w;
      ++seen;
    }
  }
  return 0;
}

// Words (= bytes / 4) of one group of 32 b-bit codes: b.
TQ_HD constexpr uint32_t group_words(uint32_t bits) { return bits; }
TQ_HD constexpr uint32_t group_bytes(uint32_t bits) { return 4 * group_words(bits); }

// First word of plane p within its group, which is also the first code bit the plane holds:
// a plane of width w is w words and w bits, so both are the widths of the planes before it.
TQ_HD constexpr uint32_t plane_word0(uint32_t bits, uint32_t p) {
  uint32_t word0 = 0;
  for (uint32_t q = 0; q < p; ++q) word0 += plane_width(bits, q);
  return word0;
}

// Where coordinate i (0..31) of a group sits in a plane of width w (1, 2, 4, or 8 for the byte
// plane of 8-bit codes): its word within the plane (i w / 32) and its lowest bit in that word.
TQ_HD constexpr uint32_t plane_word(uint32_t w, uint32_t i) { return i / (32 / w); }
TQ_HD constexpr uint32_t plane_bit(uint32_t w, uint32_t i) { return w == 8 ? 8 * (i % 4) : 4 * (i % 8) + w * ((i % (32 / w)) / 8); }

// Packs 32 codes (each < 2^bits) into `bits` words. out: [bits] words.
TQ_HD void pack_group(const uint8_t* codes, uint32_t bits, uint32_t* out) {
  for (uint32_t i = 0; i < bits; ++i) out[i] = 0;
  for (uint32_t p = 0, n = plane_count(bits); p < n; ++p) {
    const uint32_t w = plane_width(bits, p), mask = (1u << w) - 1u, word0 = plane_word0(bits, p);
    for (uint32_t i = 0; i < 32; ++i) {
      const uint32_t field = (uint32_t(codes[i]) >> word0) & mask;  // word0 = the plane's first code bit
      out[word0 + plane_word(w, i)] |= field << plane_bit(w, i);
    }
  }
}

// Inverse of pack_group. in: [bits] words; codes: [32].
TQ_HD void unpack_group(const uint32_t* in, uint32_t bits, uint8_t* codes) {
  for (uint32_t i = 0; i < 32; ++i) codes[i] = 0;
  for (uint32_t p = 0, n = plane_count(bits); p < n; ++p) {
    const uint32_t w = plane_width(bits, p), mask = (1u << w) - 1u, word0 = plane_word0(bits, p);
    for (uint32_t i = 0; i < 32; ++i) {
      const uint32_t field = (in[word0 + plane_word(w, i)] >> plane_bit(w, i)) & mask;
      codes[i] = uint8_t(codes[i] | (field << word0));
    }
  }
}

// Packs a row of padded_dim codes. codes: [padded_dim(head_dim)], out: [code_row_bytes / 4] words.
TQ_HD void pack_row(const uint8_t* codes, uint32_t head_dim, uint32_t bits, uint32_t* out) {
  if (bits == 0) return;
  for (uint32_t g = 0, n = padded_dim(head_dim) / kGroup; g < n; ++g) pack_group(codes + g * kGroup, bits, out + g * bits);
}
TQ_HD void unpack_row(const uint32_t* in, uint32_t head_dim, uint32_t bits, uint8_t* codes) {
  if (bits == 0) return;
  for (uint32_t g = 0, n = padded_dim(head_dim) / kGroup; g < n; ++g) unpack_group(in + g * bits, bits, codes + g * kGroup);
}

// Trellis-coded groups read as plain ones (kTqTcq): the (bits + 1)-bit group of union indices
// (tcq_level_index) of a group of 32 trellis codes `in` ([bits] words), t1 and t2 the branch bits
// of the two coordinates before the group (at a row's start, those of its last two: tcq_last_branch
// of its last group). out: [bits + 1] words, laid out as
// any group of that width, so that a reader of plain (bits + 1)-bit codes, given the union as its
// table, reads the trellis row's levels. The reference of the readers' octet-at-a-time transcode
// (tcq_octet_index below: the CPU's AVX2 decode, the GPU kernels).
TQ_HD void tcq_index_group(const uint32_t* in, uint32_t bits, uint32_t t1, uint32_t t2, uint32_t* out) {
  uint8_t codes[32], index[32];
  unpack_group(in, bits, codes);
  for (uint32_t i = 0; i < 32; ++i) {
    index[i] = uint8_t(tcq_level_index(codes[i], t1, t2, bits));
    t2 = t1;
    t1 = tcq_branch(codes[i], bits);
  }
  pack_group(index, bits + 1, out);
}
// Where a group of b-bit trellis codes keeps octet o's branch bits (the codes' top bit: the top bit
// of the last plane): word tcq_branch_word(b, o) of the group, shifted down by tcq_branch_shift(b, o),
// holds coordinate 8o + k's at bit 4k. (Widths 1..7: the last plane is 1, 2 or 4 bits wide.)
TQ_HD constexpr uint32_t tcq_branch_word(uint32_t bits, uint32_t o) {
  const uint32_t p = plane_count(bits) - 1;
  return plane_word0(bits, p) + plane_word(plane_width(bits, p), 8 * o);
}
TQ_HD constexpr uint32_t tcq_branch_shift(uint32_t bits, uint32_t o) {
  const uint32_t p = plane_count(bits) - 1;
  return plane_bit(plane_width(bits, p), 8 * o) + (bits - 1 - plane_word0(bits, p));
}
// The branch bits of a group's coordinates 31 and 30: the next group's t1 and t2 (the last
// group's: the row's first group's, tail-biting).
TQ_HD constexpr uint32_t tcq_last_branch(const uint32_t* in, uint32_t bits, uint32_t back) {
  return (in[tcq_branch_word(bits, 3)] >> (tcq_branch_shift(bits, 3) + 4 * (7 - back))) & 1u;
}
// The branch word carried into octet og0 of the group at `group` (tcq_octet_index's prev), in a
// row of `groups` groups of `bits` words: octet og0 - 1's, or for og0 = 0 octet 3's of the group
// before, which for the row's first group (`first`) is its last group (tail-biting). What a reader
// that starts mid-row (a GPU thread) carries in.
TQ_HD constexpr uint32_t tcq_carry_into(const uint32_t* group, uint32_t og0, bool first, uint32_t groups, uint32_t bits) {
  const uint32_t po = (og0 + 3) % 4;
  const int at = (og0 == 0 ? (first ? int((groups - 1) * bits) : -int(bits)) : 0) + int(tcq_branch_word(bits, po));
  return group[at] >> tcq_branch_shift(bits, po);
}
// The branch word carried into a row's first octet: its last octet's (row: the row's words).
TQ_HD constexpr uint32_t tcq_row_carry(const uint32_t* row, uint32_t groups, uint32_t bits) {
  return tcq_carry_into(row, 0, true, groups, bits);
}

// One octet's union indices, word-parallel: t holds the octet's branch bits (coordinate k's at bit
// 4k), j their subset indices (coordinate k's in nibble k), last and before the branch bits of the
// two coordinates before the octet (0 or 1). Returns coordinate k's tcq_level_index in nibble k
// (an index < 16: widths up to 3 bits), the GPU's selector format (octet_selector). The branch
// bits of coordinates k - 1 and k - 2 are t shifted up one and two nibbles, the carries in
// nibbles 0 and 1.
TQ_HD constexpr uint32_t tcq_index_nibbles(uint32_t t, uint32_t j, uint32_t last, uint32_t before) {
  const uint32_t p1 = (t << 4) | last, p2 = (t << 8) | (last << 4) | before;
  return p1 | ((p2 ^ t) << 1) | (j << 2);
}

// tcq_index_nibbles from an octet's codes as the GPU's selectors hold them (coordinate k's b-bit
// code in nibble k, b <= 3: octet_selector). prev: the branch word of the octet before it (bit
// 28: coordinate 7's branch bit, bit 24: coordinate 6's; other bits ignored), that is the previous
// call's, or one read from a group's words (tcq_branch_word and _shift; at a row's start,
// tcq_row_carry); it becomes this octet's.
TQ_HD uint32_t tcq_octet_index(uint32_t codes, uint32_t bits, uint32_t& prev) {
  const uint32_t t = (codes >> (bits - 1)) & 0x11111111u, j = codes & (0x11111111u * ((1u << (bits - 1)) - 1u));
  const uint32_t idx = tcq_index_nibbles(t, j, (prev >> 28) & 1u, (prev >> 24) & 1u);
  prev = t;
  return idx;
}

// QJL signs: bit i of the row (byte i / 8, bit i % 8) is 1 where (S r)_i >= 0.

// ---- Compile-time checks of the layout ---------------------------------------------------------
namespace detail {
inline constexpr TensorCode kK3{Encoding::kTqMse, 3}, kV2{Encoding::kTqMse, 2};
// K3/V2 at head dim 128, 16-token pages: 48 + 32 code bytes + 2 + 2 norm bytes per token.
static_assert(block_layout(kK3, kV2, 128, 16).bytes == 16 * (48 + 32 + 2 + 2));
static_assert(bytes_per_token_head(kK3, kV2, 128, 16) == 84.0);
static_assert(block_layout(TensorCode{Encoding::kFp16, 16}, TensorCode{Encoding::kFp16, 16}, 128, 16).bytes == 16 * 512);
static_assert(code_row_bytes(80, 3) == 36);  // 80 pads to 96
static_assert(plane_count(3) == 2 && plane_width(3, 0) == 2 && plane_width(3, 1) == 1);
static_assert(plane_count(7) == 3 && plane_width(7, 2) == 1);
static_assert(plane_count(8) == 1 && plane_width(8, 0) == 8 && plane_word0(8, 0) == 0);
static_assert(plane_word0(7, 1) == 4 && plane_word0(7, 2) == 6 && plane_word0(3, 1) == 2);
static_assert(group_bytes(3) == 12 && code_row_bytes(128, 3) == 4 * group_bytes(3));
// docs/format.md's example: b = 3, coordinate 9 is bits 6-7 of word 0 (2-bit plane) and bit 5 of
// word 2 (1-bit plane).
static_assert(plane_word(2, 9) == 0 && plane_bit(2, 9) == 6 && plane_word0(3, 1) + plane_word(1, 9) == 2 && plane_bit(1, 9) == 5);
// Coordinates 8 + k of a 2-bit plane share nibble k with coordinate k (bits 2-3); the 1-bit
// plane's nibble k holds k, 8 + k, 16 + k, 24 + k; bytes of the 8-bit plane follow the coordinates.
static_assert(plane_bit(2, 8 + 5) == plane_bit(2, 5) + 2 && plane_word(2, 16) == 1 && plane_bit(2, 16) == 0);
static_assert(plane_bit(1, 24 + 3) == 4 * 3 + 3 && plane_word(1, 31) == 0 && plane_word(4, 8) == 1 && plane_bit(4, 7) == 28);
static_assert(plane_word(8, 13) == 3 && plane_bit(8, 13) == 8);
static_assert(block_layout(TensorCode{Encoding::kTqProd, 3}, kV2, 128, 16).bytes == 16 * (32 + 16 + 32 + 2 + 2 + 2));
static_assert(block_layout(kK3, kV2, 64, 1).bytes % kAlign == 0);
// Split rows (k2.5v2.5) at head dim 128: 64 outlier channels at 3 bits (24 bytes) and 64 at 2 bits
// (16 bytes), two fp16 norms: 44 bytes per token each of K and V, 2.75 bits per element.
inline constexpr TensorCode kS2{Encoding::kTqSplit, 2};
static_assert(split_outliers(128) == 64 && split_outliers(64) == 32 && split_outliers(80) == 64 && split_outliers(32) == 16 &&
              split_outliers(2) == 1);
static_assert(block_layout(kS2, kS2, 128, 16).bytes == 16 * (40 + 40 + 4 + 4));
static_assert(split_row_bytes(80, 2) == 24 + 8 && split_row_bytes(64, 3) == 16 + 12);
}  // namespace detail

}  // namespace tq
