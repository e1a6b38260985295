// The CUDA kernels for the torch ops (python/turboquant/torch_ops.py): filled in where the build has CUDA.
#include "bindings.h"

namespace tq::py {

#ifndef TQ_WITH_CUDA
void bind_cuda(nb::module_&) {}  // a CPU build: turboquant.torch_ops says the kernels are absent
#endif

}  // namespace tq::py
