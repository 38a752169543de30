// Attention partials for head_dim 64 (see attend-impl.cuh).
#include "attend-impl.cuh"

namespace smartkv::cuda::attend_detail {
template void launch_attend_d<64>(const attend_args&, int, cudaStream_t);
}  // namespace smartkv::cuda::attend_detail
