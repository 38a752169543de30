#include "attend-batch.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cuda-check.h"
#include "kernels.h"
#include "smartkv/kivi.h"

namespace smartkv::cuda {

namespace {
template <typename T>
T* grab(device_buffer& b, size_t n) {
    return static_cast<T*>(b.ensure(std::max<size_t>(n, 1) * sizeof(T)));
}
}  // namespace

attend_batch::attend_batch(const engine_config& cfg, int n_sms, bool host_memory)
    : cfg_(cfg), n_sms_(n_sms), host_(host_memory) {
    if (!host_) return;
    for (device_buffer* b : {&reqs_, &work_, &q_, &qf_, &q8_, &q8s_, &q8sum_, &qsum_, &part_m_, &part_l_,
                             &part_z_, &part_acc_, &scores_, &cols_, &out_, &fin_m_, &fin_l_, &probs_})
        b->use_host_memory();
    stage_.use_host_memory();
}

void attend_batch::copy_in(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
    if (host_) std::memcpy(dst, src, bytes);
    else upload_bytes(dst, src, bytes, stream, stage_);
}

// Device -> pinned staging now (queued), staging -> dst at deliver().
void attend_batch::copy_out(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
    if (host_) {
        std::memcpy(dst, src, bytes);
        return;
    }
    if (bytes == 0) return;
    void* s = stage_.take(bytes);
    SKV_CUDA_CHECK(cudaMemcpyAsync(s, src, bytes, cudaMemcpyDeviceToHost, stream));
    deliveries_.push_back({dst, s, bytes});
}

void attend_batch::build(const std::vector<attend_input>& inputs, cudaStream_t stream) {
    inputs_ = inputs;
    const int Hq = cfg_.n_q_heads, H = cfg_.n_kv_heads, G = Hq / H, D = cfg_.head_dim;
    std::vector<gpu_request> reqs(inputs.size());
    std::vector<float> q;
    kv_bytes_ = score_bytes_ = 0;
    max_slots_ = max_n_after_ = n_qv_ = 0;
    int max_head_slots = 0;
    for (const attend_input& in : inputs) max_head_slots = std::max(max_head_slots, in.n_rows * G);
    q_tile_ = attend_q_tile_size(max_head_slots, D);

    // First pass: blocks, queries, sizes.
    size_t n_scores = 0, n_probs = 0, n_out = 0;
    out_off_.assign(inputs.size(), 0);
    probs_off_.assign(inputs.size(), 0);
    size_t base_ctas = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
        const attend_input& in = inputs[i];
        gpu_request& r = reqs[i];
        const block_list_view list = block_list_update(*in.store, host_, stream, stage_);
        const uint32_t n_cols = list.n_cols;
        r.blocks = list.blocks;
        r.n_blocks = list.n_blocks;
        kv_bytes_ += list.kv_bytes;
        r.n_rows = in.n_rows;
        r.pos0 = in.pos0;
        r.n_after = int(n_cols);
        r.qv0 = n_qv_;
        n_qv_ += in.n_rows * Hq;
        q.insert(q.end(), in.q, in.q + size_t(in.n_rows) * Hq * D);
        n_scores += size_t(in.n_rows) * Hq * n_cols;
        if (in.importance || in.probs) score_bytes_ += size_t(in.n_rows) * Hq * n_cols * sizeof(float);
        out_off_[i] = n_out;
        n_out += size_t(in.n_rows) * Hq * D;
        probs_off_[i] = n_probs;
        if (in.probs) n_probs += size_t(in.n_rows) * n_cols;
        max_slots_ = std::max(max_slots_, in.n_rows * Hq);
        max_n_after_ = std::max(max_n_after_, int(n_cols));
        base_ctas += size_t(H) * size_t((in.n_rows * G + q_tile_ - 1) / q_tile_);
    }
    out_floats_ = n_out;
    probs_floats_ = n_probs;

    // Splits: enough CTAs for a few waves over the SMs, at least 4 blocks each.
    const size_t target = size_t(n_sms_) * 8;
    const size_t want = base_ctas >= target ? 1 : (target + base_ctas - 1) / base_ctas;
    std::vector<gpu_work> work;
    int64_t n_part = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
        gpu_request& r = reqs[i];
        const int splits = int(std::max<size_t>(1, std::min<size_t>(want, size_t(r.n_blocks) / 4)));
        r.n_splits = splits;
        r.part0 = n_part;
        n_part += int64_t(splits) * r.n_rows * Hq;
        const int tiles = (r.n_rows * G + q_tile_ - 1) / q_tile_;
        for (int h = 0; h < H; ++h)
            for (int t = 0; t < tiles; ++t)
                for (int s = 0; s < splits; ++s) work.push_back({int(i), h, t, s});
    }

    // Device scratch and pointers.
    float* scores = grab<float>(scores_, n_scores);
    int32_t* cols = nullptr;
    size_t n_cols_total = 0;
    for (const gpu_request& r : reqs) n_cols_total += size_t(r.n_after);
    cols = grab<int32_t>(cols_, n_cols_total);
    float* out = grab<float>(out_, n_out);
    float* fin_m = grab<float>(fin_m_, size_t(n_qv_));
    float* fin_l = grab<float>(fin_l_, size_t(n_qv_));
    float* probs = grab<float>(probs_, n_probs);
    size_t score_off = 0, col_off = 0, fin_off = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
        gpu_request& r = reqs[i];
        const attend_input& in = inputs[i];
        const bool want_probs = in.importance || in.probs;  // else: outputs only, no score traffic
        r.scores = want_probs ? scores + score_off : nullptr;
        r.col_pos = want_probs ? cols + col_off : nullptr;
        r.out = out + out_off_[i];
        r.final_m = fin_m + fin_off;
        r.final_l = fin_l + fin_off;
        r.importance = in.importance ? in.store->importance() : nullptr;
        r.gamma = in.gamma;
        r.probs = in.probs ? probs + probs_off_[i] : nullptr;
        score_off += size_t(r.n_rows) * Hq * r.n_after;
        col_off += size_t(r.n_after);
        fin_off += size_t(r.n_rows) * Hq;
    }

    attend_args& a = args_;
    a = attend_args();
    for (int f = 0; f < n_formats; ++f)
        a.layout[f] = make_format_layout(kv_format(f), cfg_.mode, D, H, cfg_.block_tokens);
    for (int f = 1; f < n_formats; ++f)  // a batch may mix KIVI-2 and KIVI-4 sequences
        a.kivi_layout[f] = make_block_layout(kv_format(f), quant_mode::asymmetric, D, H, kivi_group, true);
    a.head_dim = D;
    a.n_q_heads = Hq;
    a.n_kv_heads = H;
    a.group = G;
    a.mode = uint8_t(cfg_.mode);
    a.use_q8 = cfg_.query_int8 ? 1 : 0;
    a.n_work = int(work.size());
    a.n_reqs = int(reqs.size());
    a.part_m = grab<float>(part_m_, size_t(n_part));
    a.part_l = grab<float>(part_l_, size_t(n_part));
    a.part_z = grab<float>(part_z_, size_t(n_part));
    a.part_acc = grab<float>(part_acc_, size_t(n_part) * D);
    float* qraw = grab<float>(q_, q.size());
    a.qf = grab<float>(qf_, q.size());
    a.q8 = grab<int8_t>(q8_, q.size());
    a.q8_scale = grab<float>(q8s_, size_t(n_qv_));
    a.q8_sum = grab<int32_t>(q8sum_, size_t(n_qv_));
    a.q_sum = grab<float>(qsum_, size_t(n_qv_));
    a.reqs = upload(reqs_, reqs, stream, stage_);
    a.work = upload(work_, work, stream, stage_);
    if (!q.empty()) copy_in(qraw, q.data(), q.size() * sizeof(float), stream);
}

void attend_batch::run(cudaStream_t stream) {
    if (host_) return;  // the host checks run the kernels themselves
    attend_args& a = args_;
    const int D = cfg_.head_dim;
    prepare_queries(static_cast<const float*>(q_.data()), n_qv_, D, 1.f / std::sqrt(float(D)), a.use_q8 != 0,
                    const_cast<float*>(a.qf), const_cast<int8_t*>(a.q8), const_cast<float*>(a.q8_scale),
                    const_cast<int32_t*>(a.q8_sum), const_cast<float*>(a.q_sum), stream);
    attend_partials(a, q_tile_, stream);
    merge_partials(a, max_slots_, stream);
    score_probabilities(a, max_n_after_, stream);
}

void attend_batch::download(cudaStream_t stream) {
    const size_t per_row = size_t(cfg_.n_q_heads) * cfg_.head_dim;
    const float* out = static_cast<const float*>(out_.data());
    const float* probs = static_cast<const float*>(probs_.data());
    for (size_t i = 0; i < inputs_.size(); ++i) {
        const attend_input& in = inputs_[i];
        copy_out(in.out, out + out_off_[i], size_t(in.n_rows) * per_row * sizeof(float), stream);
        if (in.probs) copy_out(in.probs, probs + probs_off_[i], size_t(in.n_rows) * in.store->size() * sizeof(float), stream);
    }
}

void attend_batch::deliver() {
    for (const delivery& d : deliveries_) std::memcpy(d.dst, d.src, d.bytes);
    deliveries_.clear();
    stage_.reset();
}

void attend_batch::finish(cudaStream_t stream) {
    download(stream);
    if (!host_) SKV_CUDA_CHECK(cudaStreamSynchronize(stream));
    deliver();
}

}  // namespace smartkv::cuda
