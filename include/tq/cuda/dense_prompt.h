// Dense attention for whole prompts: the causal self-attention of sequences that have no prefix in
// the cache yet, over their own fresh K/V rows in bf16 or fp16, by cuDNN's fused attention
// (cudnn-frontend's SDPA graph) instead of the packed-cache prefill kernel. A prompt's own tokens
// then attend the exact rows, not the quantized ones; what they store (quantize_store) is the same,
// so every later token reads the same cache. The engine takes it where RunnerOptions::dense_prompts
// asks (docs/cuda.md, "Whole prompts").
//
// cuDNN is loaded at run time (dlopen of libcudnn.so.9, or the file TQ_CUDNN_LIBRARY names): a
// build with it (TQ_CUDNN) runs without it, and dense_prompt_available() says why it cannot.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tq/cuda/kernels.h"

namespace tq::cuda {

struct DensePromptParams {
  // Each sequence's rows back to back (ragged: lens[i] rows each; else ntok rows each):
  const void* q = nullptr;     // [rows][q_heads][head_dim]
  const void* k = nullptr;     // [rows][kv_heads][head_dim]
  const void* v = nullptr;     // [rows][kv_heads][head_dim]
  void* out = nullptr;         // [rows][q_heads][head_dim]
  DType dtype = DType::kBf16;  // of all four: bf16 or fp16
  uint32_t num_seqs = 0;       // sequences, all starting at position 0
  uint32_t ntok = 0;           // tokens of each sequence (ragged: of the longest, or more)
  // Sequences of different lengths in one call (a step's whole prompts): the device copy of
  // dense_prompt_ragged(lens, ...), [3 num_seqs + 2] int32. Ragged shapes share cuDNN plans: one
  // per (num_seqs, ntok rounded up to a power of two from 64), so prompts of every length build
  // a few plans, not one each. nullptr: every sequence has ntok rows (a plan per ntok).
  const int32_t* ragged = nullptr;
  uint32_t q_heads = 0, kv_heads = 0, head_dim = 0;  // q_heads a multiple of kv_heads (GQA)
  float scale = 0;                                   // of the logits; 0: 1 / sqrt(head_dim)
  void* workspace = nullptr;                         // dense_prompt_workspace_bytes(p) bytes (may be 0)
  uint64_t workspace_bytes = 0;
};

// The ragged description of sequences of lens[i] rows (1..2^31) back to back, host side (copy it
// to the device for DensePromptParams::ragged): the lengths [n], then the first element of each
// sequence's q (and out) rows, then of its k (and v) rows, each [n + 1] (cuDNN's ragged offsets,
// in elements). Throws if the rows' elements reach 2^31.
std::vector<int32_t> dense_prompt_ragged(const std::vector<uint32_t>& lens, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim);

// The tokens a ragged call's plan is built for: ntok rounded up to a power of two, at least 64.
uint32_t dense_prompt_ragged_rows(uint32_t ntok);

// Whether dense_prompt_attention can run in this process: built with cuDNN, its library loaded,
// a GPU of compute capability 8.0 or newer. If not, *why (when given) says which is missing.
bool dense_prompt_available(std::string* why = nullptr);

// The workspace cuDNN's plan for this shape needs. Builds the plan on a shape's first call (cuDNN
// may compile a kernel then; its time is not yet measured), cached per device and shape after;
// throws tq::Error naming the shape and cuDNN's message where cuDNN refuses it.
uint64_t dense_prompt_workspace_bytes(const DensePromptParams& p);

// Enqueues the attention on `stream` (no sync, no allocation once the shape's plan exists; it can
// be captured in a CUDA graph). Throws on bad params, naming them, before anything runs.
void dense_prompt_attention(const DensePromptParams& p, Stream stream);

}  // namespace tq::cuda
