// The attention kernels at head dim 64 and their launches (attention_launch.cuh says why a file each).
#include "attention_launch.cuh"

namespace tq::cuda::attention {
template void dispatch_dim<64>(const DecodeParams&, const Plan&, Mode, Stream);
template int residency_dim<64>(const CacheView&, int);
}  // namespace tq::cuda::attention
