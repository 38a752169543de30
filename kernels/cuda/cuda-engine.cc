#include "cuda-engine.h"

#include <algorithm>
#include <string>
#include <unordered_map>

#include "cuda-check.h"
#include "host-mirror.h"
#include "kernels.h"
#include "smartkv/kivi.h"

namespace smartkv::cuda {

namespace {
[[noreturn]] void fail(error_code c, const std::string& msg) { throw engine_error(c, msg); }
constexpr size_t max_score_floats = size_t(1) << 24;  // per request wave, as on the CPU
}  // namespace

cuda_engine::cuda_engine(const engine_config& cfg) : sequence_engine(cfg) {
    if (!head_dim_supported(cfg.head_dim))
        fail(error_code::invalid_argument,
             "the CUDA backend supports head_dim 64, 128 and 256, not " + std::to_string(cfg.head_dim));
    if (cfg.block_tokens > 0xffff) fail(error_code::invalid_argument, "block_tokens too large for the CUDA backend");
    int device = 0;
    SKV_CUDA_CHECK(cudaGetDevice(&device));
    SKV_CUDA_CHECK(cudaDeviceGetAttribute(&n_sms_, cudaDevAttrMultiProcessorCount, device));
    SKV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    pool_ = std::make_unique<device_pool>(stream_);
    batch_ = std::make_unique<attend_batch>(cfg_, n_sms_);
}

cuda_engine::~cuda_engine() {
    cudaStreamSynchronize(stream_);
    clear_sequences();  // the stores give their blocks back to pool_
    batch_.reset();
    pool_.reset();
    cudaStreamDestroy(stream_);
}

std::unique_ptr<gpu_store> cuda_engine::make_layer(storage_kind kind, bool reversible) {
    return std::make_unique<gpu_store>(cfg_, kind, reversible, *pool_, stream_);
}

void cuda_engine::flush(gpu_ops& ops) {
    const block_layout l16 =
        make_format_layout(kv_format::fp16, cfg_.mode, cfg_.head_dim, cfg_.n_kv_heads, cfg_.block_tokens);
    // Order matters: new rows are written before groups read them, and slot
    // copies (swap-removes) run after every read of the slots they overwrite.
    if (!ops.converts.empty())
        convert_vectors(upload(items_convert_, ops.converts, stream_, stage_), int(ops.converts.size()), cfg_.head_dim,
                        stream_);
    if (!ops.kivi.empty())
        form_kivi_groups(upload(items_kivi_, ops.kivi, stream_, stage_), int(ops.kivi.size()), l16, stream_);
    if (!ops.copies.empty()) {
        block_layout layouts[n_formats];
        for (int f = 0; f < n_formats; ++f)
            layouts[f] = make_format_layout(kv_format(f), cfg_.mode, cfg_.head_dim, cfg_.n_kv_heads, cfg_.block_tokens);
        copy_slots(upload(items_copy_, ops.copies, stream_, stage_), int(ops.copies.size()), layouts, stream_);
    }
    ops.converts.clear();
    ops.kivi.clear();
    ops.copies.clear();
    // No wait: a later upload into the same item buffers is queued after
    // these kernels on the one stream, and freed blocks are cleared (when
    // reused) after them too.
    pool_->commit();
}

void cuda_engine::step_done() {
    SKV_CUDA_CHECK(cudaStreamSynchronize(stream_));
    stage_.reset();
}

void cuda_engine::append_rows(std::vector<gpu_store*>& stores, const std::vector<const float*>& k,
                              const std::vector<const float*>& v, const std::vector<int>& rows) {
    const size_t hd = size_t(cfg_.n_kv_heads) * cfg_.head_dim;
    size_t total = 0;
    for (int r : rows) total += size_t(r) * hd;
    float* kd = static_cast<float*>(stage_k_.ensure(total * sizeof(float)));
    float* vd = static_cast<float*>(stage_v_.ensure(total * sizeof(float)));
    // Device memory first, for all the stores together (they share block
    // sizes): running out throws before anything changed.
    size_t blocks = 0;
    for (size_t i = 0; i < stores.size(); ++i) {
        const gpu_bucket& b = stores[i]->bucket_of(kv_format::fp16);
        blocks += b.blocks_for(b.size() + size_t(rows[i])) - b.n_blocks();
    }
    if (!stores.empty()) pool_->reserve(stores[0]->bucket_of(kv_format::fp16).layout().bytes, blocks);
    for (size_t i = 0; i < stores.size(); ++i) stores[i]->reserve_for_append(rows[i]);
    gpu_ops ops;
    size_t off = 0;
    for (size_t i = 0; i < stores.size(); ++i) {
        const size_t n = size_t(rows[i]) * hd;
        upload_bytes(kd + off, k[i], n * sizeof(float), stream_, stage_);
        upload_bytes(vd + off, v[i], n * sizeof(float), stream_, stage_);
        stores[i]->append(rows[i], kd + off, vd + off, k[i], v[i], ops);
        off += n;
    }
    flush(ops);
}

void cuda_engine::append(uint32_t seq, int layer, int n_rows, const float* k, const float* v) {
    std::lock_guard<std::mutex> lock(mutex_);
    gpu_store& s = store_for_append(seq, layer, n_rows);
    std::vector<gpu_store*> stores{&s};
    append_rows(stores, {k}, {v}, {n_rows});
    gpu_ops ops;
    s.flush_kivi_groups(ops);
    flush(ops);
    step_done();
}

void cuda_engine::attend(const attend_request* requests, size_t n_requests) {
    std::lock_guard<std::mutex> lock(mutex_);
    // Validate everything and check memory before the first append.
    std::vector<gpu_store*> stores = stores_for_batch(requests, n_requests);
    std::vector<const float*> ks(n_requests), vs(n_requests);
    std::vector<int> rows(n_requests);
    for (size_t i = 0; i < n_requests; ++i) {
        ks[i] = requests[i].k_new;
        vs[i] = requests[i].v_new;
        rows[i] = requests[i].n_rows;
    }
    append_rows(stores, ks, vs, rows);

    // Waves of rows so that scores stay under max_score_floats per request.
    const size_t qrow = size_t(cfg_.n_q_heads) * cfg_.head_dim;
    std::vector<int> done(n_requests, 0);
    for (;;) {
        std::vector<attend_input> wave;
        for (size_t i = 0; i < n_requests; ++i) {
            const attend_request& r = requests[i];
            if (done[i] >= r.n_rows) continue;
            const size_t n_after = stores[i]->size();
            const size_t per_row = size_t(cfg_.n_q_heads) * n_after;
            const int max_rows = int(std::max<size_t>(1, max_score_floats / per_row));
            attend_input in;
            in.store = stores[i];
            in.gamma = get(r.seq).gamma;
            in.n_rows = std::min(r.n_rows - done[i], max_rows);
            in.pos0 = int(n_after) - r.n_rows + done[i];
            in.q = r.q + size_t(done[i]) * qrow;
            in.out = r.out + size_t(done[i]) * qrow;
            in.probs = r.probs ? r.probs + size_t(done[i]) * n_after : nullptr;
            done[i] += in.n_rows;
            wave.push_back(in);
        }
        if (wave.empty()) break;
        batch_->build(wave, stream_);
        batch_->run(stream_);
        batch_->download(stream_);  // into pinned staging; delivered after the step's sync
    }
    gpu_ops ops;
    for (gpu_store* s : stores) s->flush_kivi_groups(ops);
    flush(ops);
    step_done();
    batch_->deliver();
}

void cuda_engine::move_layer(gpu_store& s, const uint32_t* positions, const uint8_t* formats, size_t n,
                             move_result& r) {
    // Rounds: the k-th occurrence of a position goes in round k, so a plan that
    // names a token twice acts in order, as on the CPU.
    std::unordered_map<uint32_t, size_t> seen;
    std::vector<std::vector<std::pair<uint32_t, kv_format>>> rounds;
    for (size_t i = 0; i < n; ++i) {
        const size_t k = seen[positions[i]]++;
        if (rounds.size() <= k) rounds.resize(k + 1);
        rounds[k].emplace_back(positions[i], kv_format(formats[i]));
    }
    for (const auto& round : rounds) {
        size_t changed = 0;
        for (const auto& [pos, to] : round)
            if (s.where(pos).fmt != to) ++changed;
        if (changed == 0) continue;
        const std::vector<half_bits> master = s.master_rows(round);
        const half_bits* master_dev = upload(stage_master_, master, stream_, stage_);
        gpu_ops ops;
        r.bytes_moved += s.move_round(round, master_dev, ops);
        r.tokens_changed += changed;
        flush(ops);
    }
}

move_result cuda_engine::apply_plan(uint32_t seq, int layer, const uint32_t* positions, const uint8_t* formats,
                                    size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    sequence& s = get(seq);
    // Upgrades checked against the formats simulated in plan order: moves run in it (in rounds).
    const layer_span span = check_plan(s, seq, layer, positions, formats, n, plan_order::as_given);
    move_result r;
    for (int l = span.first; l < span.last; ++l) move_layer(*s.layers[size_t(l)], positions, formats, n, r);
    step_done();
    return r;
}

void cuda_engine::report(uint32_t seq, int layer, const token_report& out) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const gpu_store& ls = get_layer(seq, layer);
    const size_t n = ls.size();
    if (out.importance && n)
        SKV_CUDA_CHECK(cudaMemcpyAsync(out.importance, ls.importance(), n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    SKV_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (out.format)
        for (size_t pos = 0; pos < n; ++pos) out.format[pos] = uint8_t(ls.where(pos).fmt);
    if (!out.sq_error) return;
    const host_mirror mirror(ls, cfg_, stream_);
    const int D = cfg_.head_dim, H = cfg_.n_kv_heads;
    const bool rotated = stores_rotated(cfg_, get(seq).kind);  // clipped 2-bit scales
    const kv_format levels[3] = {kv_format::int8, kv_format::int4, kv_format::int2};
    std::vector<float> k(static_cast<size_t>(D)), v(static_cast<size_t>(D));
    for (size_t pos = 0; pos < n; ++pos) {
        const slot_ref s = ls.where(pos);
        float err[3] = {0.f, 0.f, 0.f};
        for (int h = 0; h < H; ++h) {
            float range_k, range_v;
            if (s.fmt == kv_format::fp16 || ls.in_group(pos)) {
                mirror.read(pos, h, k.data(), v.data());
                float klo = k[0], khi = k[0], vlo = v[0], vhi = v[0];
                for (int d = 1; d < D; ++d) {
                    klo = std::min(klo, k[size_t(d)]), khi = std::max(khi, k[size_t(d)]);
                    vlo = std::min(vlo, v[size_t(d)]), vhi = std::max(vhi, v[size_t(d)]);
                }
                const bool sym = cfg_.mode == quant_mode::symmetric;
                range_k = sym ? 2.f * std::max(-klo, khi) : khi - klo;
                range_v = sym ? 2.f * std::max(-vlo, vhi) : vhi - vlo;
            } else {
                range_k = stored_range(s.fmt, mirror.k_params(s, h));
                range_v = stored_range(s.fmt, mirror.v_params(s, h));
            }
            for (int i = 0; i < 3; ++i) {
                const kv_format f =
                    (!ls.reversible() && format_bits(levels[i]) > format_bits(s.fmt)) ? s.fmt : levels[i];
                err[i] += modelled_sq_error_from(f, s.fmt, range_k, cfg_.mode, rotated, D) +
                          modelled_sq_error_from(f, s.fmt, range_v, cfg_.mode, rotated, D);
            }
        }
        for (int i = 0; i < 3; ++i) out.sq_error[pos * 3 + size_t(i)] = err[i];
    }
}

void cuda_engine::read_kv(uint32_t seq, int layer, float* k, float* v) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const gpu_store& ls = get_layer(seq, layer);
    const host_mirror mirror(ls, cfg_, stream_);
    const size_t D = size_t(cfg_.head_dim), H = size_t(cfg_.n_kv_heads);
    for (size_t pos = 0; pos < ls.size(); ++pos)
        for (size_t h = 0; h < H; ++h) mirror.read(pos, int(h), k + (pos * H + h) * D, v + (pos * H + h) * D);
}

}  // namespace smartkv::cuda

namespace smartkv {
std::unique_ptr<kv_backend> make_cuda_backend(const engine_config& cfg) {
    return std::make_unique<cuda::cuda_engine>(cfg);
}
}  // namespace smartkv
