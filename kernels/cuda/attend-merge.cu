// The two passes after attend.cu:
//
// merge_partials: one CTA (D threads) per query slot combines the context
// splits' partial states, out = (sum_s w_s acc_s + sum_s w_s z_s) / sum_s w_s l_s
// with w_s = exp(m_s - M), and keeps the merged max and sum for the next pass.
//
// score_probabilities: one thread per score column (token) turns the raw
// scores into probabilities, averages them over all q-heads, writes them by
// position and folds them into the token's importance row by row, as
// cpu-attend.cc update_importance does.
#include "attend-device.cuh"
#include "cuda-check.h"
#include "kernels.h"

namespace smartkv::cuda {

namespace {

__global__ void merge_partials_kernel(const __grid_constant__ attend_args a) {
    const gpu_request& r = a.reqs[blockIdx.y];
    const int nq = r.n_rows * a.n_q_heads, qi = blockIdx.x, D = a.head_dim;
    if (qi >= nq) return;
    float M = SKV_NEG_INF;
    for (int s = 0; s < r.n_splits; ++s) M = fmaxf(M, a.part_m[r.part0 + int64_t(s) * nq + qi]);
    float L = 0.f, Z = 0.f;
    for (int s = 0; s < r.n_splits; ++s) {
        const int64_t p = r.part0 + int64_t(s) * nq + qi;
        const float l = a.part_l[p];
        if (l == 0.f) continue;
        const float w = expf(a.part_m[p] - M);
        L += w * l;
        Z += w * a.part_z[p];
    }
    const int slots = r.n_rows * a.group, h = qi / slots, li = qi % slots;
    const int row = li / a.group, q_head = h * a.group + li % a.group;
    float* out = r.out + (size_t(row) * a.n_q_heads + q_head) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.f;
        for (int s = 0; s < r.n_splits; ++s) {
            const int64_t p = r.part0 + int64_t(s) * nq + qi;
            const float l = a.part_l[p];
            if (l == 0.f) continue;
            acc += expf(a.part_m[p] - M) * a.part_acc[p * D + d];
        }
        out[d] = L > 0.f ? (acc + Z) / L : 0.f;
    }
    if (threadIdx.x == 0) {
        r.final_m[qi] = M;
        r.final_l[qi] = L;
    }
}

__global__ void score_probabilities_kernel(const __grid_constant__ attend_args a) {
    const gpu_request& r = a.reqs[blockIdx.y];
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (!r.scores || j >= r.n_after) return;
    const int slots = r.n_rows * a.group;
    const int n = r.n_after;
    const int pos = r.col_pos[j];
    const float inv_heads = 1.f / float(a.n_q_heads);
    float imp = r.importance ? r.importance[pos] : 0.f;
    for (int row = 0; row < r.n_rows; ++row) {
        float acc = 0.f;
        for (int h = 0; h < a.n_kv_heads; ++h)
            for (int g = 0; g < a.group; ++g) {
                const int qi = h * slots + row * a.group + g;
                acc += expf(r.scores[size_t(qi) * n + j] - r.final_m[qi]) / r.final_l[qi];
            }
        acc *= inv_heads;
        imp = r.gamma * imp + (1.f - r.gamma) * acc;
        if (r.probs) r.probs[size_t(row) * n + pos] = acc;
    }
    if (r.importance) r.importance[pos] = imp;
}

#if defined(__CUDACC__)  // launchers: nvcc only (gpu-emulate.cc runs the kernels on the host)
void launch_merge(const attend_args& a, int max_slots, cudaStream_t stream) {
    const dim3 grid(unsigned(max_slots), unsigned(a.n_reqs));
    merge_partials_kernel<<<grid, a.head_dim, 0, stream>>>(a);
    SKV_CUDA_CHECK_LAUNCH();
}

void launch_probs(const attend_args& a, int max_n_after, cudaStream_t stream) {
    constexpr int threads = 256;
    const dim3 grid(unsigned((max_n_after + threads - 1) / threads), unsigned(a.n_reqs));
    score_probabilities_kernel<<<grid, threads, 0, stream>>>(a);
    SKV_CUDA_CHECK_LAUNCH();
}

#endif  // __CUDACC__

}  // namespace

#if defined(__CUDACC__)
void merge_partials(const attend_args& a, int max_slots, cudaStream_t stream) {
    if (a.n_reqs <= 0 || max_slots <= 0) return;
    launch_merge(a, max_slots, stream);
}

void score_probabilities(const attend_args& a, int max_n_after, cudaStream_t stream) {
    if (a.n_reqs <= 0 || max_n_after <= 0) return;
    launch_probs(a, max_n_after, stream);
}

#endif  // __CUDACC__

}  // namespace smartkv::cuda
