/* The C API of the turboquant CUDA kernels (libtq_capi.so): one layer of packed paged-KV pages on
 * the device, and the kernels of include/tq/cuda/kernels.h over it, on raw device pointers.
 * Every int function returns 0 on success, or -1 with a message (naming the bad value) in err.
 * dtype / q_dtype / out_dtype: 0 = fp32, 1 = fp16, 2 = bf16. stream: a cudaStream_t or NULL. */
#ifndef TQ_CAPI_H
#define TQ_CAPI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What this header declares is what libtq_capi.so exports; the library is built with hidden
 * visibility otherwise (bindings/c/CMakeLists.txt says why). */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

/* The version of this interface: 2 since tq_decode, tq_prefill and tq_store_and_decode take the
 * workspace's size (version 1, before tq_capi_version existed, did not); 3 since tq_dense_prompt.
 * Callers loading the library at run time (ctypes) ask tq_capi_version() for what it has. */
#define TQ_CAPI_VERSION 3
uint32_t tq_capi_version(void);

/* num_pages pages of one layer of `kv_heads` heads of `head_dim`, in the format of the KV spec
 * (docs/kv-specs.md). The spec's policy knobs (edge, sink, window, ksim) belong to the engine and
 * are refused by name. Returns NULL with the message in err on failure. */
void* tq_cache_create(uint32_t kv_heads, uint32_t head_dim, uint32_t num_pages, const char* spec, char* err, int errlen);
void tq_cache_destroy(void* cache);
uint64_t tq_cache_bytes(void* cache);       /* 0 for a null cache */
uint32_t tq_cache_block_bytes(void* cache); /* 0 for a null cache */

/* k, v: [num_tokens][kv_heads][head_dim]; slots: [num_tokens] device int64 (page * page_size +
 * offset, -1 = skip), distinct apart from -1. A row the format cannot store (a NaN or Inf element,
 * a norm past fp16's 65504, an fp16/bf16 element its cache would turn into infinity) is not
 * written, and its slot keeps its bytes: the kernel finds it on the device, where no error can
 * reach err without a sync (the engine's CUDA runner reads a flag back with each step instead). */
int tq_quantize_store(void* cache, const void* k, const void* v, int dtype, const int64_t* slots, uint32_t num_tokens, void* stream,
                      char* err, int errlen);

/* Workspace bytes of tq_decode / tq_prefill for this shape (splits 0: chosen from the shape); 0 for
 * a shape they refuse (zero sequences or query heads, a null cache: tq_decode then says why). */
uint64_t tq_decode_workspace(void* cache, uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len,
                             uint32_t splits);
uint64_t tq_prefill_workspace(void* cache, uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len,
                              uint32_t splits);

/* q, out: [num_seqs][ntok][q_heads][head_dim]; block_tables: [num_seqs][max_pages] int32;
 * seq_lens: [num_seqs] int32 (the queries are each sequence's last ntok tokens, 1..9: a token and
 * up to 8 drafts). workspace: 16-byte aligned, of workspace_bytes bytes, at least
 * tq_decode_workspace() for the same cache, shape and splits (tq_prefill: tq_prefill_workspace());
 * a smaller one (or workspace_bytes 0) is refused, naming both sizes, before any launch. Page ids,
 * lengths and slots are device data the kernels trust: every page id < num_pages, every seq_len <=
 * max_seq_len <= max_pages * page size. */
int tq_decode(void* cache, const void* q, int q_dtype, void* out, int out_dtype, const int32_t* block_tables, const int32_t* seq_lens,
              uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len, uint32_t splits, void* workspace,
              uint64_t workspace_bytes, void* stream, char* err, int errlen);
/* The same arguments; a chunk of ntok new queries per sequence (chunked prefill). */
int tq_prefill(void* cache, const void* q, int q_dtype, void* out, int out_dtype, const int32_t* block_tables, const int32_t* seq_lens,
               uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len, uint32_t splits, void* workspace,
               uint64_t workspace_bytes, void* stream, char* err, int errlen);
/* tq_quantize_store of num_tokens new rows, then tq_decode, as one overlapped step. */
int tq_store_and_decode(void* cache, const void* k, const void* v, int dtype, const int64_t* slots, uint32_t num_tokens, const void* q,
                        int q_dtype, void* out, int out_dtype, const int32_t* block_tables, const int32_t* seq_lens, uint32_t num_seqs,
                        uint32_t ntok, uint32_t q_heads, uint32_t max_pages, uint32_t max_seq_len, uint32_t splits, void* workspace,
                        uint64_t workspace_bytes, void* stream, char* err, int errlen);

/* Whole prompts attended densely (include/tq/cuda/dense_prompt.h): the causal self-attention of
 * num_seqs sequences of ntok tokens, each from position 0, over their own K/V rows, by cuDNN's
 * fused attention. q, out: [num_seqs][ntok][q_heads][head_dim]; k, v: [num_seqs][ntok][kv_heads]
 * [head_dim]; dtype 1 (fp16) or 2 (bf16) for all four; scale 0: 1/sqrt(head_dim).
 * tq_dense_prompt_available: 1, or 0 with the reason in err (no cuDNN in the build or on the
 * machine, an older GPU). tq_dense_prompt_workspace: the bytes tq_dense_prompt's workspace needs
 * (building cuDNN's plan for the shape on first use); -1 with the message in err where cuDNN has none. */
int tq_dense_prompt_available(char* err, int errlen);
int64_t tq_dense_prompt_workspace(uint32_t num_seqs, uint32_t ntok, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim, int dtype,
                                  float scale, char* err, int errlen);
int tq_dense_prompt(const void* q, const void* k, const void* v, void* out, int dtype, uint32_t num_seqs, uint32_t ntok, uint32_t q_heads,
                    uint32_t kv_heads, uint32_t head_dim, float scale, void* workspace, uint64_t workspace_bytes, void* stream, char* err,
                    int errlen);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif /* TQ_CAPI_H */
