// KIVI group formation: 32 fp16 residual tokens of one (sequence, layer)
// become one group block (kivi.h). One CTA per (group, kv-head):
//
//   smem x     [32][D+1] f32   keys, then values, of the 32 tokens
//   smem codes [32][D]   u8    key codes, channel by channel
//
// Keys: one thread per channel finds the channel's minimum and range and
// picks codes (kivi_quantize_keys' arithmetic, line for line); then one
// thread per packed byte assembles the planar rows. Values: one thread per
// token runs quantize_vector (asymmetric). --fmad=false keeps it bit-exact.
#include "cuda-check.h"
#include "kernels.h"
#include "smartkv/kivi.h"

namespace smartkv::cuda {

namespace {

constexpr int k_kivi_threads = 128;

__device__ void load_rows(const kivi_group_item& it, const block_layout& L16, size_t section, int head, int D,
                          float* x) {
    for (int i = threadIdx.x; i < kivi_group * D; i += blockDim.x) {
        const int t = i / D, d = i % D;
        const half_bits* row =
            reinterpret_cast<const half_bits*>(it.src_block[t] + section + L16.code_offset(head, it.src_slot[t]));
        x[t * (D + 1) + d] = half_to_float(row[d]);
    }
}

__global__ void __launch_bounds__(k_kivi_threads) kivi_groups_kernel(const kivi_group_item* items, block_layout L16) {
    extern __shared__ float smem[];
    const kivi_group_item& it = items[blockIdx.x];
    const kv_format fmt = kv_format(it.fmt);
    const block_layout KL = make_block_layout(fmt, quant_mode::asymmetric, L16.head_dim, L16.n_kv_heads, kivi_group, true);
    const int D = KL.head_dim, head = blockIdx.y;
    float* x = smem;                                                        // [32][D+1]
    uint8_t* codes = reinterpret_cast<uint8_t*>(smem + kivi_group * (D + 1));  // [32][D]
    const int max_code = format_max_code(fmt);

    load_rows(it, L16, L16.k_codes, head, D, x);
    __syncthreads();
    half_bits* ch = reinterpret_cast<half_bits*>(it.dst_group + KL.k_params) + size_t(head) * D * 2;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float lo = x[d], hi = x[d];
        for (int t = 1; t < kivi_group; ++t) {
            lo = fminf(lo, x[t * (D + 1) + d]);
            hi = fmaxf(hi, x[t * (D + 1) + d]);
        }
        ch[2 * d] = float_to_half(hi > lo ? (hi - lo) / float(max_code) : 1.f);
        ch[2 * d + 1] = float_to_half(lo);
        const float scale = half_to_float(ch[2 * d]);
        const float zero = half_to_float(ch[2 * d + 1]);
        for (int t = 0; t < kivi_group; ++t) {
            float c = rintf((x[t * (D + 1) + d] - zero) / scale);
            c = fminf(fmaxf(c, 0.f), float(max_code));
            codes[t * D + d] = uint8_t(c);
        }
    }
    __syncthreads();
    // Planar packing: byte j of a row holds dims j + s*R for planes s (formats.h).
    const int bits = format_bits(fmt), R = KL.row, planes = 8 / bits;
    for (int i = threadIdx.x; i < kivi_group * R; i += blockDim.x) {
        const int t = i / R, j = i % R;
        int byte = 0;
        for (int s = 0; s < planes; ++s) byte |= int(codes[t * D + s * R + j]) << (bits * s);
        it.dst_group[KL.k_codes + KL.code_offset(head, t) + j] = uint8_t(byte);
    }
    __syncthreads();  // x is reused for the values
    load_rows(it, L16, L16.v_codes, head, D, x);
    __syncthreads();
    if (threadIdx.x < kivi_group) {
        const int t = threadIdx.x;
        quantize_vector(fmt, quant_mode::asymmetric, x + t * (D + 1), D,
                        it.dst_group + KL.v_codes + KL.code_offset(head, t),
                        reinterpret_cast<half_bits*>(it.dst_group + KL.v_params + KL.param_offset(head, t)));
        if (head == 0) reinterpret_cast<int32_t*>(it.dst_group + KL.pos)[t] = it.pos0 + t;
    }
}

#if defined(__CUDACC__)  // launchers: nvcc only (gpu-emulate.cc runs the kernels on the host)
void launch_kivi(const kivi_group_item* items, int n_items, const block_layout& L16, cudaStream_t stream) {
    const size_t smem = size_t(kivi_group) * (L16.head_dim + 1) * sizeof(float) + size_t(kivi_group) * L16.head_dim;
    const dim3 grid(unsigned(n_items), unsigned(L16.n_kv_heads));
    kivi_groups_kernel<<<grid, k_kivi_threads, smem, stream>>>(items, L16);
    SKV_CUDA_CHECK_LAUNCH();
}

#endif  // __CUDACC__

}  // namespace

#if defined(__CUDACC__)
void form_kivi_groups(const kivi_group_item* items, int n_items, const block_layout& fp16_layout, cudaStream_t stream) {
    if (n_items <= 0) return;
    launch_kivi(items, n_items, fp16_layout, stream);
}

#endif  // __CUDACC__

}  // namespace smartkv::cuda
