// Host-side helpers shared by the launchers: error checks, cached device properties and the
// programmatic dependent launch.
#pragma once

#include <cuda_runtime.h>

#include "tq/cuda/kernels.h"

namespace tq::cuda {

// Multiprocessors of the current device (queried once per device and cached).
int device_sm_count();
// Compute capability major of the current device (cached likewise): 9 = Hopper.
int device_cc_major();
// The most shared memory a block may have on the current device (opt-in; cached likewise): 227 KB
// on sm_90 and sm_100, 163 KB on sm_80, 99 KB on sm_86, sm_89 and sm_120. TQ_CUDA_SMEM_KB=N in
// the environment (read at every call) lowers it to N KB, and an SM's to N + 1 KB, as on those
// GPUs: how the tests run the kernels a 99 KB GPU gets (the compact ones) on an H200.
int device_smem_per_block();
// Blocks of a kernel resident per SM on the current device: the count its registers were compiled
// for (__launch_bounds__), or fewer where the SM's shared memory holds fewer blocks of `smem`
// bytes (228 KB an SM on sm_90, 100 KB on sm_86/89/120), at least 1.
int resident_blocks_here(int compiled_for, size_t smem);
// The shared memory to launch a block of `smem` bytes with so that an SM of this GPU holds at most
// `blocks` of them: smem itself where no more fit anyway, else just enough more that one block
// more does not (for kernels whose grids are planned in waves of `blocks` an SM).
size_t smem_holding(int blocks, size_t smem);
// Whether kernels are launched as programmatic dependents (the next kernel in the stream may be
// scheduled while this one drains): on compute capability 9 and later, unless TQ_CUDA_PORTABLE=1
// in the environment asks for the path every other GPU takes (plain launches), which is how the
// tests run that path on a Hopper GPU. Read once per device.
bool dependent_launches();

// Whether prefill takes Hopper's warpgroup MMAs (prefill_ws.cuh, wgmma.cuh): where the GPU runs the
// build's sm_90a code (kernels_arch() == 90; CMake builds sm_90 as sm_90a), unless
// TQ_CUDA_PORTABLE=1 asks for the path every other GPU takes (mma.sync) in a build that carries
// it there (-DTQ_CUDA_PORTABLE_ON_HOPPER=ON, variants.h; other builds ignore the request here).
bool warpgroup_mma();

// kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent launch where
// dependent_launches() allows it, a plain launch otherwise; the launch's error.
template <class... Params, class... Args>
cudaError_t launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute pdl[1];
  pdl[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = pdl;
  cfg.numAttrs = dependent_launches() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, Params(args)...);
}

// The architecture the attention kernels were compiled for, as the current GPU runs them: their
// PTX version (90 for sm_90), the build's target or the PTX a newer GPU compiled (queried once per
// device); 0 when the build has no kernels this GPU runs (attention_unsupported says so). It says
// which variants of the kernels exist there (variants.h).
int kernels_arch();

// The shared memory a block of the decode or the prefill kernel takes for a cache whose keys are
// `k`, at this head dim (64, 128 or 256 once padded), the larger of the two, on a GPU that allows
// `limit` bytes a block, in a build for `arch` (kernels_arch; 0: one carrying every variant): each
// kernel's full variant where it fits, else its compact one, as variants.h's choose_compact says,
// and on Hopper (arch 90) the warp-specialized prefill where it fits (decode_attention.cu).
size_t attention_smem_bytes(TensorCode k, uint32_t head_dim, size_t limit, int arch = 0);

// Throws tq::Error with the CUDA error string if the last launch failed.
void check_launch(const char* what);
// Throws tq::Error naming the field when a CacheView is inconsistent.
void validate_cache(const CacheView& c);
// The same but for the data pointer: what sizing a workspace needs, before the pages exist (the
// torch ops size theirs from a view with no pages).
void validate_cache_layout(const CacheView& c);

}  // namespace tq::cuda
