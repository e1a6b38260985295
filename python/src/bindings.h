// The parts of the turboquant._C module, each bound in its own file; module.cpp calls them.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <string>

#include "tq/codec/turboquant.h"
#include "tq/kv/paged_cache.h"
#include "tq/kv/spec.h"

namespace tq::py {

namespace nb = nanobind;

// "default" (tq run's spec) or a KV spec; throws tq::Error (ValueError in Python) naming the bad part.
KvSpec parse_spec(const std::string& text);
// A TurboQuant configuration from the Python arguments; rotation "auto" is the KV format's choice.
TqConfig tq_config(uint32_t dim, uint32_t bits, bool prod, const std::string& rotation, uint64_t seed, bool norm_correction);

// Throws tq::Error naming the spec and `who` when it has a fractional width: their outlier channels
// come from the prompt in the engine (KvStore::calibrate), which the module's pages do not have.
void refuse_split(const KvSpec& spec, const char* who);

// Checks slots (int64 [tokens]; -1 skips) and k, v (float32 [tokens, kv_heads, head_dim]) for
// `cache`, every slot before any row is written, then quantizes the rows into `layer` (over
// `threads` threads, 1: the caller's), all or nothing: a row the format cannot store leaves every
// slot as it was. KvCache.write and the torch ops' CPU quantize_store.
void store_rows(const char* fn, PagedKvCache& cache, uint32_t layer, const nb::ndarray<>& slots, const nb::ndarray<>& k,
                const nb::ndarray<>& v, unsigned threads);

// Checks the entries of one sequence's block table that hold positions from .. to - 1 against the
// cache's pages, naming the entry and its value (a -1 was read as page 4294967295 and named so).
void check_block_table(const char* fn, const int32_t* row, size_t seq, uint32_t from, uint32_t to, uint32_t page_size, uint32_t num_pages);

void bind_spec(nb::module_& m);    // KvSpec, kv_size, distortion_row
void bind_codec(nb::module_& m);   // Quantizer, KvCache (CPU pages, reference attention)
void bind_engine(nb::module_& m);  // Engine (model, tokenizer, generation)
void bind_cuda(nb::module_& m);    // CudaFormat and the kernels, where the build has CUDA
void bind_cpu_ops(nb::module_& m);  // CpuFormat: the torch ops' CPU kernels (host pages tensor)

}  // namespace tq::py
