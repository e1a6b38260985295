// Host-side helpers shared by the launchers: error checks and cached device properties.
#pragma once

#include "tq/cuda/kernels.h"

namespace tq::cuda {

// Multiprocessors of the current device (queried once per device and cached).
int device_sm_count();
// Compute capability major of the current device (cached likewise): 9 = Hopper.
int device_cc_major();
// Throws tq::Error with the CUDA error string if the last launch failed.
void check_launch(const char* what);
// Throws tq::Error naming the field when a CacheView is inconsistent.
void validate_cache(const CacheView& c);

}  // namespace tq::cuda
