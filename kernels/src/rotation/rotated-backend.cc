// The rotate_keys option as a wrapper over any backend (CPU or CUDA): queries
// and new keys of SmartKV-format sequences are rotated on the host before
// they reach the backend, so the backend stores, quantises and scores
// rotated keys without knowing it. Attention output and probabilities are
// unchanged up to rounding (q·k = Rq·Rk); values are never rotated.
//
// KIVI sequences are passed through untouched: KIVI quantises keys per
// channel precisely because channels differ, and the baseline should be the
// method as published.
#include <mutex>
#include <unordered_set>

#include "smartkv/engine.h"
#include "smartkv/key-rotation.h"

namespace smartkv {

namespace {

class rotated_keys_backend final : public kv_backend {
public:
    explicit rotated_keys_backend(std::unique_ptr<kv_backend> inner)
        : inner_(std::move(inner)), rotation_(inner_->config().head_dim) {}

    const engine_config& config() const override { return inner_->config(); }
    const char* name() const override { return inner_->name(); }

    using kv_backend::create_sequence;
    uint32_t create_sequence(storage_kind kind, float gamma) override {
        const uint32_t seq = inner_->create_sequence(kind, gamma);
        if (kind != storage_kind::mixed) {
            std::lock_guard<std::mutex> lock(mutex_);
            unrotated_.insert(seq);
        }
        return seq;
    }
    void free_sequence(uint32_t seq) override {
        inner_->free_sequence(seq);
        std::lock_guard<std::mutex> lock(mutex_);
        unrotated_.erase(seq);
    }
    bool has_sequence(uint32_t seq) const override { return inner_->has_sequence(seq); }
    size_t sequence_length(uint32_t seq, int layer) const override { return inner_->sequence_length(seq, layer); }

    void append(uint32_t seq, int layer, int n_rows, const float* k, const float* v) override {
        if (!rotated(seq) || n_rows <= 0 || !k) return inner_->append(seq, layer, n_rows, k, v);
        const size_t n = size_t(n_rows) * size_t(config().n_kv_heads);
        std::vector<float> k_rot(k, k + n * size_t(config().head_dim));  // [n_rows][H][D]
        rotation_.rotate(k_rot.data(), n);
        inner_->append(seq, layer, n_rows, k_rot.data(), v);
    }

    void attend(const attend_request* requests, size_t n_requests) override {
        const engine_config& c = config();
        const size_t D = size_t(c.head_dim);
        // One scratch buffer for every rotated q and k of the call, sized
        // first so the pointers handed to the backend stay valid.
        size_t floats = 0;
        for (size_t i = 0; i < n_requests; ++i)
            if (requests[i].n_rows > 0 && rotated(requests[i].seq))
                floats += size_t(requests[i].n_rows) * size_t(c.n_q_heads + c.n_kv_heads) * D;
        if (floats == 0) return inner_->attend(requests, n_requests);
        thread_local std::vector<float> scratch;   // [Σ rows·(Hq + H)·D] rotated q then k, per request
        thread_local std::vector<attend_request> rewritten;
        scratch.resize(floats);
        rewritten.assign(requests, requests + n_requests);
        float* cursor = scratch.data();
        for (attend_request& r : rewritten) {
            if (r.n_rows <= 0 || !r.q || !r.k_new || !rotated(r.seq)) continue;
            const size_t nq = size_t(r.n_rows) * size_t(c.n_q_heads), nk = size_t(r.n_rows) * size_t(c.n_kv_heads);
            std::copy(r.q, r.q + nq * D, cursor);
            rotation_.rotate(cursor, nq);
            r.q = cursor;
            cursor += nq * D;
            std::copy(r.k_new, r.k_new + nk * D, cursor);
            rotation_.rotate(cursor, nk);
            r.k_new = cursor;
            cursor += nk * D;
        }
        inner_->attend(rewritten.data(), rewritten.size());
    }

    move_result apply_plan(uint32_t seq, int layer, const uint32_t* positions, const uint8_t* formats,
                           size_t n) override {
        return inner_->apply_plan(seq, layer, positions, formats, n);
    }
    void report(uint32_t seq, int layer, const token_report& out) const override { inner_->report(seq, layer, out); }
    memory_stats stats(uint32_t seq) const override { return inner_->stats(seq); }
    size_t total_held_bytes() const override { return inner_->total_held_bytes(); }

    // Keys come back in the caller's coordinates.
    void read_kv(uint32_t seq, int layer, float* k, float* v) const override {
        inner_->read_kv(seq, layer, k, v);
        if (rotated(seq) && k)
            rotation_.unrotate(k, inner_->sequence_length(seq, layer) * size_t(config().n_kv_heads));
    }

private:
    bool rotated(uint32_t seq) const {
        std::lock_guard<std::mutex> lock(mutex_);
        return unrotated_.count(seq) == 0;
    }

    std::unique_ptr<kv_backend> inner_;
    key_rotation rotation_;
    mutable std::mutex mutex_;              // guards unrotated_
    std::unordered_set<uint32_t> unrotated_;  // KIVI sequences: stored as given
};

}  // namespace

std::unique_ptr<kv_backend> with_rotated_keys(std::unique_ptr<kv_backend> inner) {
    return std::make_unique<rotated_keys_backend>(std::move(inner));
}

}  // namespace smartkv
