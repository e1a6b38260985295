// The width parameters (KB, VB) of the attention kernels' templates: a TurboQuant tensor's code
// width in bits, plus kTcq where its rows are trellis-coded (format.h kTqTcq). A trellis-coded
// b-bit row is read as the plain (b + 1)-bit row of its union indices (tcq_index_nibbles): the
// kernels transcode each octet of codes as they load it, then run the (b + 1)-bit paths with the
// union codebook as their table. So storage (Staging, the loads) takes a width's stored bits, and
// the arithmetic (tables, KeyOps, the value paths) its read bits. Host and device code alike; no
// CUDA headers.
#pragma once

namespace tq::cuda {

inline constexpr int kTcq = 16;  // added to a width parameter: trellis-coded rows of that width

constexpr int stored_bits(int w) { return w % kTcq; }
constexpr bool tcq_width(int w) { return w >= kTcq; }
// The width the kernels' tables and lookups read: a trellis code's union index has one more bit.
constexpr int read_bits(int w) { return stored_bits(w) + (tcq_width(w) ? 1 : 0); }
// Keys whose levels are int8 operands of the int8 MMAs (m16n8k32): plain 2- and 3-bit codebooks,
// and the unions of trellis-coded 2 and 3 bits (3- and 4-bit unions, on the format's 1/32 grid:
// tcq_codebook); wider codebooks are not on that grid and go through fp16.
constexpr bool int8_keys(int kb) { return tcq_width(kb) ? read_bits(kb) <= 4 : kb <= 3; }
// The width parameter of a tensor stored in `bits` bits a coordinate, trellis-coded or not (the
// host's side of the kernels' dispatch).
constexpr int width_param(bool tcq, int bits) { return bits + (tcq ? kTcq : 0); }

}  // namespace tq::cuda
