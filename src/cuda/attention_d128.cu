// The attention kernels at head dim 128 and their launches (attention_launch.cuh says why a file each).
#include "attention_launch.cuh"

namespace tq::cuda::attention {
template void dispatch_dim<128>(const DecodeParams&, const Plan&, Mode, Stream);
template int residency_dim<128>(const CacheView&, int);
}  // namespace tq::cuda::attention
