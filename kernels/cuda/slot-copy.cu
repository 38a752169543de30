// Whole-slot copies within a bucket: what swap-remove does on the CPU
// (bucket.cc copy_slot), for a batch of removals resolved on the host so that
// no copy reads a slot another copy writes. One warp per slot.
#include "cuda-check.h"
#include "kernels.h"

namespace smartkv::cuda {

namespace {

struct layouts4 {
    block_layout l[4];
};

__device__ void copy_bytes(const uint8_t* src, uint8_t* dst, size_t n, int lane) {
    for (size_t b = size_t(lane); b < n; b += 32) dst[b] = src[b];
}

__global__ void copy_slots_kernel(const slot_copy_item* items, int n_items, layouts4 layouts) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (warp >= n_items) return;
    const slot_copy_item it = items[warp];
    const block_layout& L = layouts.l[it.fmt];
    const size_t param_bytes = size_t(L.n_params) * sizeof(half_bits);
    for (int h = 0; h < L.n_kv_heads; ++h) {
        copy_bytes(it.src_block + L.k_codes + L.code_offset(h, it.src_slot),
                   it.dst_block + L.k_codes + L.code_offset(h, it.dst_slot), size_t(L.row), lane);
        copy_bytes(it.src_block + L.v_codes + L.code_offset(h, it.src_slot),
                   it.dst_block + L.v_codes + L.code_offset(h, it.dst_slot), size_t(L.row), lane);
        if (param_bytes) {
            copy_bytes(it.src_block + L.k_params + L.param_offset(h, it.src_slot),
                       it.dst_block + L.k_params + L.param_offset(h, it.dst_slot), param_bytes, lane);
            copy_bytes(it.src_block + L.v_params + L.param_offset(h, it.src_slot),
                       it.dst_block + L.v_params + L.param_offset(h, it.dst_slot), param_bytes, lane);
        }
    }
    if (lane == 0)
        reinterpret_cast<int32_t*>(it.dst_block + L.pos)[it.dst_slot] =
            reinterpret_cast<const int32_t*>(it.src_block + L.pos)[it.src_slot];
}

#if defined(__CUDACC__)  // launchers: nvcc only (gpu-emulate.cc runs the kernels on the host)
void launch_copy_slots(const slot_copy_item* items, int n_items, const layouts4& l, cudaStream_t stream) {
    constexpr int threads = 128;
    const int grid = (n_items * 32 + threads - 1) / threads;
    copy_slots_kernel<<<grid, threads, 0, stream>>>(items, n_items, l);
    SKV_CUDA_CHECK_LAUNCH();
}

#endif  // __CUDACC__

}  // namespace

#if defined(__CUDACC__)
void copy_slots(const slot_copy_item* items, int n_items, const block_layout* layouts, cudaStream_t stream) {
    if (n_items <= 0) return;
    layouts4 l;
    for (int f = 0; f < 4; ++f) l.l[f] = layouts[f];
    launch_copy_slots(items, n_items, l, stream);
}

#endif  // __CUDACC__

}  // namespace smartkv::cuda
