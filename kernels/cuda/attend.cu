// Attention partials: dispatch to the per-head_dim instantiations
// (attend-d64.cu, attend-d128.cu, attend-d256.cu; the kernel is in
// attend-impl.cuh).
#include <string>

#include "cuda-check.h"
#include "kernels.h"

namespace smartkv::cuda {

namespace attend_detail {
template <int D>
void launch_attend_d(const attend_args& a, int qt, cudaStream_t stream);
extern template void launch_attend_d<64>(const attend_args&, int, cudaStream_t);
extern template void launch_attend_d<128>(const attend_args&, int, cudaStream_t);
extern template void launch_attend_d<256>(const attend_args&, int, cudaStream_t);
}  // namespace attend_detail

int attend_q_tile_size(int max_slots_per_head, int head_dim) {
    const int qt = max_slots_per_head <= 1 ? 1 : max_slots_per_head <= 2 ? 2 : max_slots_per_head <= 4 ? 4 : 8;
    return qt < attend_max_q_tile(head_dim) ? qt : attend_max_q_tile(head_dim);
}

void attend_partials(const attend_args& a, int q_tile_size, cudaStream_t stream) {
    if (a.n_work <= 0) return;
    switch (a.head_dim) {
        case 64: return attend_detail::launch_attend_d<64>(a, q_tile_size, stream);
        case 128: return attend_detail::launch_attend_d<128>(a, q_tile_size, stream);
        case 256: return attend_detail::launch_attend_d<256>(a, q_tile_size, stream);
        default:
            throw engine_error(error_code::invalid_argument,
                               "CUDA attention supports head_dim 64, 128 and 256, not " + std::to_string(a.head_dim));
    }
}

}  // namespace smartkv::cuda
