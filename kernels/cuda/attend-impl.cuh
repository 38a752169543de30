#pragma once
// Attention over mixed-precision GPU buckets: the partial-state pass
// (template code; attend-d64/128/256.cu instantiate one head_dim each so the
// three compile in parallel, attend.cu dispatches).
//
// One CTA = one work item (request, kv-head, query tile, context split); its
// 4 warps take the split's blocks round-robin, 32 tokens ("a tile") at a time:
//
//   lane = token:  score the token's key against the QT query slots of the
//                  tile (dp4a on u8 codes x s8 q, or float dots), so a key is
//                  unpacked once for its whole GQA group; write raw scores.
//   warp:          online softmax per slot (running max m, lane-partial sum l
//                  and zero-point sum z), p*scale_v per token into shared.
//   lane = dims:   acc[slot][lane's D/32 dims] += p*scale_v * code_v.
//
// The 4 warps merge through shared memory and write one partial state per
// query slot; attend-merge.cu combines the splits (flash-decoding).
//
//   out = (acc + z) / l,  acc = sum_t p_t scale_t code_t,  z = sum_t p_t zero_t
//
// Shared memory (dynamic), offsets from smem_plan below:
//   q    [QT][D] f32 (scaled)     q8 [D/4][QT][4] s8 (dims d..d+3 of every slot
//                                 side by side)     q8_scale, q8_sum, q_sum, row_pos [QT]
//   kw   [NW][QT][D] f32          per-warp KIVI weights q*channel_scale; reused for the merge
//   kc0  [NW][QT] f32             per-warp KIVI constant sum_d q*channel_min
//   pbuf [NW][32][QT] f32         p*scale_v per token of the tile
//   mlz  [3][NW][QT] f32          warp states for the merge
//   vt   [NW][32][2D] u8          per-warp value tile: the tile's V rows
//                                 (32 x R contiguous bytes of the block), copied
//                                 with cp.async while the warp scores its keys
#include <climits>

#include "attend-device.cuh"
#include "cuda-check.h"
#include "kernels.h"

namespace smartkv::cuda::attend_detail {


constexpr int k_warps = 4;
constexpr int k_threads = 32 * k_warps;

constexpr size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

template <int D, int QT>
struct smem_plan {
    static constexpr size_t q = 0;
    static constexpr size_t q8 = q + align16(size_t(QT) * D * 4);
    static constexpr size_t q8_scale = q8 + align16(size_t(QT) * D);
    static constexpr size_t q8_sum = q8_scale + align16(QT * 4);
    static constexpr size_t q_sum = q8_sum + align16(QT * 4);
    static constexpr size_t row_pos = q_sum + align16(QT * 4);
    static constexpr size_t kw = row_pos + align16(QT * 4);
    static constexpr size_t kc0 = kw + align16(size_t(k_warps) * QT * D * 4);
    static constexpr size_t pbuf = kc0 + align16(k_warps * QT * 4);
    static constexpr size_t mlz = pbuf + align16(size_t(k_warps) * 32 * QT * 4);
    static constexpr size_t vt = mlz + align16(3 * k_warps * QT * 4);
    static constexpr size_t vt_warp = size_t(32) * 2 * D;  // the widest row: fp16
    static constexpr size_t bytes = vt + size_t(k_warps) * vt_warp;
};

// Per-warp running state of QT query slots.
template <int D, int QT>
struct warp_state {
    float m[QT], l[QT], z[QT];  // m uniform over the warp; l, z lane partials
    float acc[QT][D / 32];      // this lane's dims
};

struct cta_ctx {
    const attend_args* a;
    const gpu_request* req;
    int head, lane, warp;
    const float* q;       // shared [QT][D]
    const int* q8w;       // shared [D/4][QT] words
    const float* q8_scale;
    const int* q8_sum;
    const float* q_sum;
    const int* row_pos;   // shared [QT], -1 for an inactive slot
    float* kw;            // this warp's [QT][D]
    float* kc0;           // this warp's [QT]
    float* pbuf;          // this warp's [32][QT]
    uint8_t* vt;          // this warp's value tile [32][R]
    int64_t score_base;   // scores offset of slot 0's row; slot j's is + j*n_after
    int n_scored;         // slots whose scores are written (0 without a score buffer)
    bool write_cols;
};

// Where one kv-head's rows and parameters start in a block (slot 0).
struct head_rows {
    const uint8_t* k;          // k rows, row bytes apart
    const uint8_t* v;          // v rows
    const half_bits* kp;       // k params, n_params apart (unused by KIVI)
    const half_bits* vp;       // v params
    const int32_t* pos;        // [T]
    int n_params;
};

__device__ __forceinline__ head_rows rows_of(const block_layout& L, const uint8_t* data, int head) {
    head_rows h;
    h.k = data + L.k_codes + L.code_offset(head, 0);
    h.v = data + L.v_codes + L.code_offset(head, 0);
    h.kp = reinterpret_cast<const half_bits*>(data + L.k_params + L.param_offset(head, 0));
    h.vp = reinterpret_cast<const half_bits*>(data + L.v_params + L.param_offset(head, 0));
    h.pos = reinterpret_cast<const int32_t*>(data + L.pos);
    h.n_params = L.n_params;
    return h;
}

template <int BITS>
__device__ constexpr kv_format format_of_bits() {
    return BITS == 8 ? kv_format::int8 : BITS == 4 ? kv_format::int4 : kv_format::int2;
}

// Scores of the lane's token t for every slot; kind/format known at compile time.
template <int D, int QT, uint8_t KIND, int BITS>
__device__ __forceinline__ void key_scores(const cta_ctx& c, const head_rows& h, int t, float s[QT]) {
    constexpr int R = KIND == blk_fp16 ? 2 * D : D * BITS / 8;
    const uint8_t* row = h.k + size_t(t) * R;
#pragma unroll
    for (int j = 0; j < QT; ++j) s[j] = 0.f;
    if constexpr (KIND == blk_fp16) {
        dot_fp16<D, QT>(row, c.q, s);
    } else if constexpr (KIND == blk_kivi) {
        dot_codes_float<D, BITS, QT>(row, c.kw, s);
#pragma unroll
        for (int j = 0; j < QT; ++j) s[j] += c.kc0[j];
    } else {
        const dequant_params kp = load_params(format_of_bits<BITS>(), quant_mode(c.a->mode), h.kp + t * h.n_params);
        if (c.a->use_q8) {
            int dot[QT];
#pragma unroll
            for (int j = 0; j < QT; ++j) dot[j] = 0;
            dot_codes_int<D, BITS, QT>(row, c.q8w, dot);
#pragma unroll
            for (int j = 0; j < QT; ++j)
                s[j] = c.q8_scale[j] * (kp.scale * float(dot[j]) + kp.zero * float(c.q8_sum[j]));
        } else {
            dot_codes_float<D, BITS, QT>(row, c.q, s);
#pragma unroll
            for (int j = 0; j < QT; ++j) s[j] = kp.scale * s[j] + kp.zero * c.q_sum[j];
        }
    }
}

// KIVI: fold the block's per-channel key parameters into per-warp weights.
template <int D, int QT>
__device__ void kivi_weights(const cta_ctx& c, const block_layout& L, const uint8_t* data) {
    const half_bits* ch = reinterpret_cast<const half_bits*>(data + L.k_params) + size_t(c.head) * D * 2;
    float c0[QT];
#pragma unroll
    for (int j = 0; j < QT; ++j) c0[j] = 0.f;
    for (int d = c.lane; d < D; d += 32) {
        const float cs = h2f(ch[2 * d]), cz = h2f(ch[2 * d + 1]);
#pragma unroll
        for (int j = 0; j < QT; ++j) {
            c.kw[j * D + d] = c.q[j * D + d] * cs;
            c0[j] += c.q[j * D + d] * cz;
        }
    }
#pragma unroll
    for (int j = 0; j < QT; ++j) {
        c0[j] = warp_sum(c0[j]);
        if (c.lane == 0) c.kc0[j] = c0[j];
    }
    __syncwarp();
}

template <int D, int QT, uint8_t KIND, int BITS>
__device__ void fold_block(const cta_ctx& c, const gpu_block& blk, warp_state<D, QT>& st) {
    constexpr int DPL = D / 32;
    constexpr int R = KIND == blk_fp16 ? 2 * D : D * BITS / 8;
    const block_layout& L = KIND == blk_kivi ? c.a->kivi_layout[blk.fmt] : c.a->layout[blk.fmt];
    const head_rows h = rows_of(L, blk.data, c.head);
    if constexpr (KIND == blk_kivi) kivi_weights<D, QT>(c, L, blk.data);
    const quant_mode vmode = KIND == blk_kivi ? quant_mode::asymmetric : quant_mode(c.a->mode);

    for (int t0 = 0; t0 < blk.n_valid; t0 += 32) {
        const int t = t0 + c.lane, n_tile = min(32, blk.n_valid - t0);
        const bool valid = c.lane < n_tile;
        // The tile's value rows (n_tile x R contiguous bytes of this head) go
        // to the warp's shared tile in flight together, overlapping the key
        // pass, instead of one dependent row load per token in the value loop.
        {
            const uint8_t* src = h.v + size_t(t0) * R;
            for (int i = c.lane; i < n_tile * R / 16; i += 32) cp_async16(c.vt + 16 * i, src + 16 * i);
        }
        float s[QT];
        float vscale = 0.f, vzero = 0.f;
        if (valid) {
            const int p = h.pos[t];
            key_scores<D, QT, KIND, BITS>(c, h, t, s);
#pragma unroll
            for (int j = 0; j < QT; ++j)
                if (p > c.row_pos[j]) s[j] = SKV_NEG_INF;  // causal mask (inactive slots: row_pos -1)
            if (c.write_cols) c.req->col_pos[blk.slot_base + t] = p;
            if constexpr (KIND == blk_fp16) {
                vscale = 1.f;
            } else {
                const dequant_params v = load_params(format_of_bits<BITS>(), vmode, h.vp + t * h.n_params);
                vscale = v.scale, vzero = v.zero;
            }
        } else {
#pragma unroll
            for (int j = 0; j < QT; ++j) s[j] = SKV_NEG_INF;
        }
#pragma unroll
        for (int j = 0; j < QT; ++j) {
            if (valid && j < c.n_scored)
                c.req->scores[c.score_base + int64_t(j) * c.req->n_after + blk.slot_base + t] = s[j];
            const float m_new = fmaxf(st.m[j], warp_max(s[j]));
            float alpha = 1.f, p = 0.f;
            if (m_new != SKV_NEG_INF) {
                alpha = __expf(st.m[j] - m_new);
                p = __expf(s[j] - m_new);
            }
            st.m[j] = m_new;
            st.l[j] = st.l[j] * alpha + p;
            st.z[j] = st.z[j] * alpha + p * vzero;
#pragma unroll
            for (int i = 0; i < DPL; ++i) st.acc[j][i] *= alpha;
            c.pbuf[c.lane * QT + j] = p * vscale;
        }
        cp_async_wait_all();
        __syncwarp();  // pbuf and every lane's part of the value tile are visible
        // Values: lanes over dims, tokens in turn, rows from the shared tile;
        // rows per step shrink as the accumulators (QT x D/32 a lane) grow.
#pragma unroll(D * QT >= 512 ? 1 : D * QT >= 256 ? 2 : 4)
        for (int tt = 0; tt < n_tile; ++tt) {
            const uint8_t* vrow = c.vt + size_t(tt) * R;
            float v[DPL];
            if constexpr (KIND == blk_fp16) value_fp16<D>(vrow, c.lane, v);
            else value_codes<D, BITS>(vrow, c.lane, v);
            float pa[QT];
            if constexpr (QT % 4 == 0) {
#pragma unroll
                for (int j = 0; j < QT; j += 4) {
                    const float4 p4 = *reinterpret_cast<const float4*>(c.pbuf + tt * QT + j);
                    pa[j] = p4.x, pa[j + 1] = p4.y, pa[j + 2] = p4.z, pa[j + 3] = p4.w;
                }
            } else {
#pragma unroll
                for (int j = 0; j < QT; ++j) pa[j] = c.pbuf[tt * QT + j];
            }
#pragma unroll
            for (int j = 0; j < QT; ++j)
#pragma unroll
                for (int i = 0; i < DPL; ++i) st.acc[j][i] += pa[j] * v[i];
        }
        __syncwarp();  // pbuf and the value tile are rewritten by the next tile
    }
}

// The warp's next block (K and V rows of this head, their parameters) into L2
// while it works on the current one: its loads then wait on L2, not DRAM.
__device__ __forceinline__ void prefetch_block(const cta_ctx& c, const gpu_block& blk) {
    const block_layout& L = blk.kind == blk_kivi ? c.a->kivi_layout[blk.fmt] : c.a->layout[blk.fmt];
    const head_rows h = rows_of(L, blk.data, c.head);
    const int rows = int(blk.n_valid) * L.row;  // bytes of the head's K rows (and of its V rows)
    for (int o = c.lane * 128; o < rows; o += 32 * 128) {
        prefetch_l2(h.k + o);
        prefetch_l2(h.v + o);
    }
    if (c.lane == 0 && blk.kind != blk_fp16) {
        prefetch_l2(h.kp);
        prefetch_l2(h.vp);
    }
}

template <int D, int QT>
__device__ void fold_any_block(const cta_ctx& c, const gpu_block& blk, warp_state<D, QT>& st) {
    if (blk.kind == blk_fp16) return fold_block<D, QT, blk_fp16, 16>(c, blk, st);
    const kv_format f = kv_format(blk.fmt);
    if (blk.kind == blk_kivi) {
        if (f == kv_format::int4) return fold_block<D, QT, blk_kivi, 4>(c, blk, st);
        return fold_block<D, QT, blk_kivi, 2>(c, blk, st);
    }
    if (f == kv_format::int8) return fold_block<D, QT, blk_quantized, 8>(c, blk, st);
    if (f == kv_format::int4) return fold_block<D, QT, blk_quantized, 4>(c, blk, st);
    return fold_block<D, QT, blk_quantized, 2>(c, blk, st);
}

// Loads the tile's query slots into shared memory (inactive slots: zeros, row_pos -1).
template <int D, int QT>
__device__ void load_queries(const attend_args& a, const gpu_request& r, const gpu_work& w, uint8_t* smem) {
    using P = smem_plan<D, QT>;
    float* q = reinterpret_cast<float*>(smem + P::q);
    int8_t* q8 = reinterpret_cast<int8_t*>(smem + P::q8);
    const int G = a.group, slots = r.n_rows * G;
    for (int i = threadIdx.x; i < QT * D; i += blockDim.x) {
        const int j = i / D, d = i % D, li = w.q_tile * QT + j;
        float x = 0.f;
        int8_t x8 = 0;
        if (li < slots) {
            const size_t qv = size_t(r.qv0) + size_t(li / G) * a.n_q_heads + size_t(w.kv_head) * G + li % G;
            x = a.qf[qv * D + d];
            if (a.use_q8) x8 = a.q8[qv * D + d];
        }
        q[i] = x;
        q8[(d / 4) * QT * 4 + j * 4 + d % 4] = x8;
    }
    if (threadIdx.x < QT) {
        const int j = threadIdx.x, li = w.q_tile * QT + j;
        float* q8_scale = reinterpret_cast<float*>(smem + P::q8_scale);
        int* q8_sum = reinterpret_cast<int*>(smem + P::q8_sum);
        float* q_sum = reinterpret_cast<float*>(smem + P::q_sum);
        int* row_pos = reinterpret_cast<int*>(smem + P::row_pos);
        const bool active = li < slots;
        const size_t qv = active ? size_t(r.qv0) + size_t(li / G) * a.n_q_heads + size_t(w.kv_head) * G + li % G : 0;
        q8_scale[j] = active && a.use_q8 ? a.q8_scale[qv] : 0.f;
        q8_sum[j] = active && a.use_q8 ? a.q8_sum[qv] : 0;
        q_sum[j] = active ? a.q_sum[qv] : 0.f;
        row_pos[j] = active ? r.pos0 + li / G : -1;
    }
}

// Merges the warps' states and writes the CTA's partial state per slot.
template <int D, int QT>
__device__ void write_partials(const attend_args& a, const gpu_request& r, const gpu_work& w, uint8_t* smem,
                               warp_state<D, QT>& st, int warp, int lane) {
    using P = smem_plan<D, QT>;
    constexpr int DPL = D / 32;
    float* acc = reinterpret_cast<float*>(smem + P::kw);  // [NW][QT][D]
    float* mlz = reinterpret_cast<float*>(smem + P::mlz);  // [3][NW][QT]
    __syncthreads();  // every warp is done with kw (KIVI weights)
#pragma unroll
    for (int j = 0; j < QT; ++j) {
        const float l = warp_sum(st.l[j]), z = warp_sum(st.z[j]);
        if (lane == 0) {
            mlz[(0 * k_warps + warp) * QT + j] = st.m[j];
            mlz[(1 * k_warps + warp) * QT + j] = l;
            mlz[(2 * k_warps + warp) * QT + j] = z;
        }
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[(warp * QT + j) * D + lane * DPL + i] = st.acc[j][i];
    }
    __syncthreads();
    const int slots = r.n_rows * a.group, nq = r.n_rows * a.n_q_heads;
    for (int i = threadIdx.x; i < QT * D; i += blockDim.x) {
        const int j = i / D, d = i % D, li = w.q_tile * QT + j;
        if (li >= slots) continue;
        float M = SKV_NEG_INF;
#pragma unroll
        for (int k = 0; k < k_warps; ++k) M = fmaxf(M, mlz[k * QT + j]);
        float out = 0.f, L = 0.f, Z = 0.f;
#pragma unroll
        for (int k = 0; k < k_warps; ++k) {
            const float lk = mlz[(k_warps + k) * QT + j];
            if (lk == 0.f) continue;
            const float wk = expf(mlz[k * QT + j] - M);
            out += wk * acc[(k * QT + j) * D + d];
            L += wk * lk;
            Z += wk * mlz[(2 * k_warps + k) * QT + j];
        }
        const int64_t part = r.part0 + int64_t(w.split) * nq + int64_t(w.kv_head) * slots + li;
        a.part_acc[part * D + d] = out;
        if (d == 0) {
            a.part_m[part] = M;
            a.part_l[part] = L;
            a.part_z[part] = Z;
        }
    }
}

// Up to 168 registers (3 CTAs, 12 warps an SM) where the state fits; the
// largest tiles take what they need instead of spilling (ptx-check.sh
// asserts no spills: D=64 with 8 slots needs 254 registers, 2 CTAs an SM).
template <int D, int QT>
constexpr int partials_min_ctas() { return D * QT <= 512 && !(D == 64 && QT == 8) ? 3 : 1; }

template <int D, int QT>
__global__ void __launch_bounds__(k_threads, partials_min_ctas<D, QT>()) attend_partials_kernel(const __grid_constant__ attend_args a) {
    using P = smem_plan<D, QT>;
    extern __shared__ __align__(16) uint8_t smem[];
    const gpu_work w = a.work[blockIdx.x];
    const gpu_request& r = a.reqs[w.req];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    load_queries<D, QT>(a, r, w, smem);
    __syncthreads();

    cta_ctx c;
    c.a = &a;
    c.req = &r;
    c.head = w.kv_head;
    c.lane = lane;
    c.warp = warp;
    c.q = reinterpret_cast<const float*>(smem + P::q);
    c.q8w = reinterpret_cast<const int*>(smem + P::q8);
    c.q8_scale = reinterpret_cast<const float*>(smem + P::q8_scale);
    c.q8_sum = reinterpret_cast<const int*>(smem + P::q8_sum);
    c.q_sum = reinterpret_cast<const float*>(smem + P::q_sum);
    c.row_pos = reinterpret_cast<const int*>(smem + P::row_pos);
    c.kw = reinterpret_cast<float*>(smem + P::kw) + warp * QT * D;
    c.kc0 = reinterpret_cast<float*>(smem + P::kc0) + warp * QT;
    c.pbuf = reinterpret_cast<float*>(smem + P::pbuf) + warp * 32 * QT;
    c.vt = smem + P::vt + size_t(warp) * P::vt_warp;
    const int slots = r.n_rows * a.group;
    c.score_base = (int64_t(w.kv_head) * slots + int64_t(w.q_tile) * QT) * int64_t(r.n_after);
    c.n_scored = r.scores ? min(QT, slots - w.q_tile * QT) : 0;
    c.write_cols = r.col_pos && w.kv_head == 0 && w.q_tile == 0;

    warp_state<D, QT> st;
#pragma unroll
    for (int j = 0; j < QT; ++j) {
        st.m[j] = SKV_NEG_INF;
        st.l[j] = 0.f;
        st.z[j] = 0.f;
#pragma unroll
        for (int i = 0; i < D / 32; ++i) st.acc[j][i] = 0.f;
    }
    const int b0 = int(int64_t(r.n_blocks) * w.split / r.n_splits);
    const int b1 = int(int64_t(r.n_blocks) * (w.split + 1) / r.n_splits);
    for (int b = b0 + warp; b < b1; b += k_warps) {
        const gpu_block blk = r.blocks[b];
        // (not at D=64 with 8 slots: at 255 registers its addresses would spill; ptx-check.sh)
        if constexpr (!(D == 64 && QT == 8))
            if (b + k_warps < b1) prefetch_block(c, r.blocks[b + k_warps]);
        fold_any_block<D, QT>(c, blk, st);
    }
    write_partials<D, QT>(a, r, w, smem, st, warp, lane);
}

#if defined(__CUDACC__)  // launchers: nvcc only (gpu-emulate.cc runs the kernel bodies on the host)
template <int D, int QT>
void launch_attend(const attend_args& a, cudaStream_t stream) {
    const size_t smem = smem_plan<D, QT>::bytes;
    static bool configured = false;  // the attribute is per function; set once
    if (!configured) {
        SKV_CUDA_CHECK(cudaFuncSetAttribute(attend_partials_kernel<D, QT>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
        configured = true;
    }
    attend_partials_kernel<D, QT><<<a.n_work, k_threads, smem, stream>>>(a);
    SKV_CUDA_CHECK_LAUNCH();
}

template <int D>
void launch_attend_d(const attend_args& a, int qt, cudaStream_t stream) {
    switch (qt) {
        case 1: return launch_attend<D, 1>(a, stream);
        case 2: return launch_attend<D, 2>(a, stream);
        case 4: return launch_attend<D, 4>(a, stream);
        default:
            if constexpr (attend_max_q_tile(D) >= 8) return launch_attend<D, 8>(a, stream);
            else return launch_attend<D, attend_max_q_tile(D)>(a, stream);
    }
}

#endif  // __CUDACC__

}  // namespace smartkv::cuda::attend_detail
