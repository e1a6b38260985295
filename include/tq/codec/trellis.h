// Trellis-coded quantization (Marcellin and Fischer, "Trellis coded quantization of memoryless and
// Gauss-Markov sources", IEEE Trans. Commun. 38(1), 1990) of a rotated unit row: the scalar
// reference of the kTqTcq encoding (format.h says what a code means).
//
// The union codebook has 2^(bits+1) levels in four interleaved subsets (level m in subset m mod 4);
// a 4-state trellis lets each coordinate pick from one subset, chosen by the two previous branch
// bits, so `bits` bits a coordinate address twice the levels. The encoder is a Viterbi search for
// the tail-biting path of least squared error; the decoder needs no search (tcq_level_index).
#pragma once

#include <cstdint>

namespace tq {

// codes[i] (b-bit trellis codes, format.h) of y[0..n) for the tail-biting path (it ends in the
// state it starts in) with the least squared error (ties: the lower start state, then the lower
// state, then the lower level). levels: the union, [2^(bits+1)] ascending; bits 1..7; n <= 1024.
// Returns the squared error of that path.
double tcq_encode(const float* y, uint32_t n, const float* levels, uint32_t bits, uint8_t* codes);

// out[i] = levels[tcq_level_index(codes[i], branch i-1, branch i-2)] for i < n, the indices of
// the branches taken around the row (branch -1 is branch n-1's).
void tcq_decode(const uint8_t* codes, uint32_t n, const float* levels, uint32_t bits, float* out);

}  // namespace tq
