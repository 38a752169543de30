// Batched attention over the buckets of many sequences (cpu_engine::attend).
//
// For each request: append the new tokens, gather the queries per kv-head,
// list the blocks of every bucket, then run one task per (request, kv-head,
// context split) on the pool; merge the splits' softmax states; finally turn
// the stored scores into probabilities and fold them into importance.
// Long prefill chunks run in waves of rows so the score buffer stays bounded.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "cpu-engine.h"
#include "prefetch.h"
#include "smartkv/kivi.h"

namespace smartkv {


namespace {
constexpr size_t max_score_floats = size_t(1) << 24;  // 64 MiB of scores per request wave
constexpr size_t prefetch_distance = 2;                // blocks ahead
constexpr size_t max_run_blocks = 64;                  // offered to attend_blocks_fast at once

// The bytes attention reads for one kv-head of a block.
void prefetch_head(const block_layout& L, const block_ref& blk, int head) {
    const size_t rows = size_t(blk.n_valid) * size_t(L.row);
    prefetch_l2(blk.data + L.k_codes + L.code_offset(head, 0), rows);
    prefetch_l2(blk.data + L.v_codes + L.code_offset(head, 0), rows);
    const size_t params = size_t(blk.n_valid) * size_t(L.n_params) * sizeof(half_bits);
    if (blk.kind != block_kind::kivi) prefetch_l2(blk.data + L.k_params + L.param_offset(head, 0), params);
    prefetch_l2(blk.data + L.v_params + L.param_offset(head, 0), params);
}
}  // namespace

void cpu_engine::prepare_queries(const attend_request& req, prepared& p) const {
    const int H = cfg_.n_kv_heads, G = cfg_.n_q_heads / cfg_.n_kv_heads, D = cfg_.head_dim;
    const float inv_sqrt_d = 1.f / std::sqrt(float(D));
    const size_t nqh = size_t(H) * p.nq;
    p.q.resize(nqh * D);
    p.q_sum.resize(nqh);
    p.row_pos.resize(size_t(p.n_rows));
    const size_t n_before = p.n_after - size_t(req.n_rows);
    for (int r = 0; r < p.n_rows; ++r) p.row_pos[size_t(r)] = int32_t(n_before + size_t(p.row0 + r));
    if (cfg_.query_int8) {
        p.q8.resize(nqh * D);
        p.q8_scale.resize(nqh);
        p.q8_sum.resize(nqh);
    }
    for (int h = 0; h < H; ++h)
        for (int r = 0; r < p.n_rows; ++r)
            for (int g = 0; g < G; ++g) {
                const size_t qi = size_t(h) * p.nq + size_t(r) * G + g;
                const float* src = req.q + (size_t(p.row0 + r) * cfg_.n_q_heads + size_t(h) * G + g) * D;
                float* dst = &p.q[qi * D];
                float sum = 0.f, absmax = 0.f;
                for (int d = 0; d < D; ++d) {
                    dst[d] = src[d] * inv_sqrt_d;
                    sum += dst[d];
                    absmax = std::max(absmax, std::fabs(dst[d]));
                }
                p.q_sum[qi] = sum;
                if (!cfg_.query_int8) continue;
                const float scale = absmax > 0.f ? absmax / 127.f : 1.f;
                int32_t isum = 0;
                for (int d = 0; d < D; ++d) {
                    const int c = int(std::lrintf(dst[d] / scale));
                    p.q8[qi * D + d] = int8_t(c);
                    isum += c;
                }
                p.q8_scale[qi] = scale;
                p.q8_sum[qi] = isum;
            }
}

void cpu_engine::build_blocks(const layer_store& ls, prepared& p) const {
    p.blocks.clear();
    p.layouts.clear();
    p.slot_pos.resize(p.n_after);
    uint32_t base = 0;
    auto add_block = [&](const uint8_t* data, const block_layout& L, block_kind kind, kv_format f, int fill) {
        p.blocks.push_back({data, kind, f, fill, kind == block_kind::fp16, base});
        p.layouts.push_back(&L);
        const int32_t* pos = reinterpret_cast<const int32_t*>(data + L.pos);
        for (int t = 0; t < fill; ++t) p.slot_pos[base + t] = pos[t];
        base += uint32_t(fill);
    };
    for (size_t g = 0; g < ls.n_groups(); ++g)
        add_block(ls.group(g), ls.group_layout(), block_kind::kivi,
                  kivi_format(ls.kind()), kivi_group);
    for (int f = 0; f < n_formats; ++f) {
        const bucket& b = ls.bucket_of(kv_format(f));
        const block_kind kind = f == int(kv_format::fp16) ? block_kind::fp16 : block_kind::quantized;
        for (size_t i = 0; i < b.n_blocks(); ++i) add_block(b.block(i), b.layout(), kind, kv_format(f), b.block_fill(i));
    }
}

void cpu_engine::run_attention(std::vector<prepared>& wave, size_t n_wave) {
    prepared* const batch_begin = wave.data();
    prepared* const batch_end = wave.data() + n_wave;
    const int H = cfg_.n_kv_heads, G = cfg_.n_q_heads / cfg_.n_kv_heads, D = cfg_.head_dim;
    // Split long contexts so one sequence still gives every thread work. The split count
    // depends on the sequence's own length and the model's shape only, never on the batch
    // or the thread count: the merge order — and so every output bit — is the same whoever
    // shares the call (batch invariance; the evaluation relies on it).
    //
    // A split is a task's stretch of blocks; its first run of blocks starts with nothing
    // fetched ahead (the AVX-512 runs fetch the next run while they compute), so splits are
    // long: 128 blocks, unless the kv-heads alone give fewer than min_tasks tasks, then
    // down to 16 blocks. Paired at 32K, 32 kv-heads (1,024 blocks), int8/int4/int2/mix:
    // 8 splits against the earlier 16 (64 blocks each) 1.05/1.06/1.06/1.05x faster, 4 splits
    // 1.04-1.09x, 8 against 4 1.00-1.03x; one split 0.96-1.00x of four.
    constexpr size_t blocks_per_split = 128, min_blocks_per_split = 16, max_splits = 16, min_tasks = 16;
    struct task { prepared* p; int head, split; };
    std::vector<task> tasks;
    for (prepared* pp = batch_begin; pp != batch_end; ++pp) {
        prepared& p = *pp;
        const size_t nb = p.blocks.size();
        const size_t for_tasks = std::min((min_tasks + size_t(H) - 1) / size_t(H), nb / min_blocks_per_split);
        const size_t splits = std::clamp<size_t>(std::max(nb / blocks_per_split, for_tasks), 1, max_splits);
        p.n_splits = int(splits);
        const size_t states = splits * size_t(H) * p.nq;
        p.m.assign(states, -std::numeric_limits<float>::infinity());
        p.l.assign(states, 0.f);
        p.z.assign(states, 0.f);
        p.acc.assign(states * D, 0.f);
        p.scores.resize(size_t(H) * p.nq * p.n_after);
        for (int h = 0; h < H; ++h)
            for (int s = 0; s < p.n_splits; ++s) tasks.push_back({&p, h, s});
    }
    // int2's blocks are the longest (format_block_tokens)
    const size_t scratch_floats = attend_scratch_floats(D, std::max(format_block_tokens(kv_format::int2, cfg_.block_tokens), kivi_group));
    scratch_.resize(size_t(pool_.size()));
    for (auto& s : scratch_) s.resize(scratch_floats);
    auto& scratch = scratch_;

    pool_.parallel_for(tasks.size(), [&](size_t ti, int thread) {
        const task& t = tasks[ti];
        prepared& p = *t.p;
        const size_t nb = p.blocks.size();
        const size_t b0 = nb * size_t(t.split) / size_t(p.n_splits), b1 = nb * size_t(t.split + 1) / size_t(p.n_splits);
        head_query hq;
        hq.n_rows = p.n_rows;
        hq.group = G;
        hq.head_dim = D;
        const size_t qoff = size_t(t.head) * p.nq;
        hq.q = &p.q[qoff * D];
        hq.q_sum = &p.q_sum[qoff];
        if (cfg_.query_int8) {
            hq.q8 = &p.q8[qoff * D];
            hq.q8_scale = &p.q8_scale[qoff];
            hq.q8_sum = &p.q8_sum[qoff];
        }
        hq.row_pos = p.row_pos.data();
        const size_t soff = (size_t(t.split) * H + size_t(t.head)) * p.nq;
        head_state st{&p.m[soff], &p.l[soff], &p.z[soff], &p.acc[soff * D]};
        const score_sink sink{&p.scores[qoff * p.n_after], p.n_after};
        size_t layout_end = b0;  // blocks [b, layout_end) share p.layouts[b] (found once per bucket)
        for (size_t b = b0; b < b1;) {
            // One kv-head's slice of a block is a few short runs (K rows, V rows,
            // their parameters) far from the previous block's: too short for the
            // hardware prefetcher to ramp up, so fetch two blocks ahead by hand.
            if (b + prefetch_distance < b1) prefetch_head(*p.layouts[b + prefetch_distance], p.blocks[b + prefetch_distance], t.head);
            float* s = scratch[size_t(thread)].data();
            if (!use_fast_) {
                attend_block_ref(*p.layouts[b], cfg_.mode, p.blocks[b], t.head, hq, st, sink, s);
                ++b;
                continue;
            }
            // The fast path may fold a run of the bucket's blocks in one pass
            // (it prefetches inside the run); runs never cross a split, so the
            // result does not depend on the batch.
            if (layout_end <= b)
                for (layout_end = b + 1; layout_end < b1 && p.layouts[layout_end] == p.layouts[b];) ++layout_end;
            const size_t avail = std::min(layout_end - b, max_run_blocks);
            const size_t taken = size_t(attend_blocks_fast(*p.layouts[b], cfg_.mode, &p.blocks[b], int(avail), t.head, hq, st, sink, s));
            b += taken;
            // After a run, the next two blocks may not have been fetched ahead yet (the
            // AVX-512 run fetches the next run from its value pass, but only inside avail).
            for (size_t k = 0; taken > 1 && k < prefetch_distance && b + k < b1; ++k) prefetch_head(*p.layouts[b + k], p.blocks[b + k], t.head);
        }
    });

    // Merge the splits and write the outputs.
    for (prepared* pp = batch_begin; pp != batch_end; ++pp) {
        prepared& p = *pp;
        for (int h = 0; h < H; ++h)
            for (int qi = 0; qi < p.nq; ++qi) {
                const size_t s0 = size_t(h) * p.nq + size_t(qi);
                const size_t stride = size_t(H) * p.nq;
                float M = -std::numeric_limits<float>::infinity();
                for (int s = 0; s < p.n_splits; ++s) M = std::max(M, p.m[s0 + s * stride]);
                float L = 0.f, Z = 0.f;
                float* out = p.req->out + (size_t(p.row0 + qi / G) * cfg_.n_q_heads + size_t(h) * G + qi % G) * D;
                std::fill(out, out + D, 0.f);
                for (int s = 0; s < p.n_splits; ++s) {
                    const size_t si = s0 + s * stride;
                    if (p.l[si] == 0.f) continue;
                    const float w = std::exp(p.m[si] - M);
                    L += w * p.l[si];
                    Z += w * p.z[si];
                    const float* acc = &p.acc[si * D];
                    for (int d = 0; d < D; ++d) out[d] += w * acc[d];
                }
                for (int d = 0; d < D; ++d) out[d] = (out[d] + Z) / L;
                // keep the merged max and sum in split 0 for the importance pass
                p.m[s0] = M;
                p.l[s0] = L;
            }
    }
}

void cpu_engine::update_importance(const attend_request& req, layer_store& ls, prepared& p) {
    const int H = cfg_.n_kv_heads, G = cfg_.n_q_heads / cfg_.n_kv_heads;
    const float gamma = get(req.seq).gamma, inv_heads = 1.f / float(cfg_.n_q_heads);
    const size_t chunk = 2048, n = p.n_after;
    const size_t n_tasks = (n + chunk - 1) / chunk;
    prob_bufs_.resize(size_t(pool_.size()));
    auto& bufs = prob_bufs_;
    pool_.parallel_for(n_tasks, [&](size_t ti, int thread) {
        const size_t j0 = ti * chunk, j1 = std::min(n, j0 + chunk), len = j1 - j0;
        std::vector<float>& a = bufs[size_t(thread)];  // [n_rows][len] probabilities averaged over q-heads
        a.assign(size_t(p.n_rows) * len, 0.f);
        for (int r = 0; r < p.n_rows; ++r)
            for (int h = 0; h < H; ++h)
                for (int g = 0; g < G; ++g) {
                    const size_t qi = size_t(h) * p.nq + size_t(r) * G + g;
                    add_probabilities(&p.scores[qi * n + j0], len, p.m[qi], inv_heads / p.l[qi], &a[size_t(r) * len]);
                }
        for (size_t j = j0; j < j1; ++j) {
            const int32_t pos = p.slot_pos[j];
            float imp = ls.importance(size_t(pos));
            for (int r = 0; r < p.n_rows; ++r) {
                const float ar = a[size_t(r) * len + (j - j0)];
                imp = gamma * imp + (1.f - gamma) * ar;
                if (req.probs) req.probs[size_t(p.row0 + r) * n + size_t(pos)] = ar;
            }
            ls.importance(size_t(pos)) = imp;
        }
    });
}

void cpu_engine::attend(const attend_request* requests, size_t n_requests) {
    std::lock_guard<std::mutex> lock(mutex_);
    // Validate everything and check memory before the first append.
    const std::vector<layer_store*> stores = stores_for_batch(requests, n_requests);
    for (size_t i = 0; i < n_requests; ++i) stores[i]->append(requests[i].n_rows, requests[i].k_new, requests[i].v_new);

    // Rows per wave so that scores stay under max_score_floats per request.
    std::vector<int> done(n_requests, 0);
    for (;;) {
        size_t n_wave = 0;
        for (size_t i = 0; i < n_requests; ++i) {
            const attend_request& r = requests[i];
            if (done[i] >= r.n_rows) continue;
            if (wave_.size() <= n_wave) wave_.emplace_back();
            prepared& p = wave_[n_wave++];
            p.req = &r;
            p.ls = stores[i];
            p.n_after = stores[i]->size();
            const size_t per_row = size_t(cfg_.n_q_heads) * p.n_after;
            const int max_rows = int(std::max<size_t>(1, max_score_floats / per_row));
            p.row0 = done[i];
            p.n_rows = std::min(r.n_rows - done[i], max_rows);
            p.nq = p.n_rows * (cfg_.n_q_heads / cfg_.n_kv_heads);
            done[i] += p.n_rows;
        }
        if (n_wave == 0) break;
        for (size_t w = 0; w < n_wave; ++w) {
            prepare_queries(*wave_[w].req, wave_[w]);
            build_blocks(*wave_[w].ls, wave_[w]);
        }
        run_attention(wave_, n_wave);
        for (size_t w = 0; w < n_wave; ++w) update_importance(*wave_[w].req, *wave_[w].ls, wave_[w]);
    }
    for (size_t i = 0; i < n_requests; ++i) stores[i]->flush_kivi_groups();
}

}  // namespace smartkv
