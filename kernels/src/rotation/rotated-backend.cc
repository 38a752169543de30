// The rotate_kv option as a wrapper over any backend (CPU or CUDA): queries,
// keys and values of SmartKV-format sequences are rotated on the host before
// they reach the backend, and attention outputs are rotated back, so the
// backend stores, quantises and attends over rotated vectors without knowing
// it. Scores, probabilities and importance are unchanged (Rq·Rk = q·k), and
// so is the output up to rounding (Rᵀ Σ p·Rv = Σ p·v).
//
// KIVI sequences are passed through untouched: KIVI quantises keys per
// channel precisely because channels differ, and the baseline should be the
// method as published.
#include <mutex>
#include <unordered_set>

#include "smartkv/engine.h"
#include "smartkv/kv-rotation.h"

namespace smartkv {

namespace {

class rotated_kv_backend final : public kv_backend {
public:
    explicit rotated_kv_backend(std::unique_ptr<kv_backend> inner)
        : inner_(std::move(inner)), rotation_(inner_->config().head_dim) {}

    const engine_config& config() const override { return inner_->config(); }
    const char* name() const override { return inner_->name(); }

    using kv_backend::create_sequence;
    uint32_t create_sequence(storage_kind kind, float gamma, precision_mode mode) override {
        const uint32_t seq = inner_->create_sequence(kind, gamma, mode);
        if (!stores_rotated(config(), kind)) {
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
        if (!rotated(seq) || n_rows <= 0 || !k || !v) return inner_->append(seq, layer, n_rows, k, v);
        const size_t n = size_t(n_rows) * size_t(config().n_kv_heads), len = n * size_t(config().head_dim);
        std::vector<float> kv(2 * len);  // [2][n_rows][H][D]: rotated k, then rotated v
        std::copy(k, k + len, kv.begin());
        std::copy(v, v + len, kv.begin() + std::ptrdiff_t(len));
        rotation_.rotate(kv.data(), 2 * n);
        inner_->append(seq, layer, n_rows, kv.data(), kv.data() + len);
    }

    void attend(const attend_request* requests, size_t n_requests) override {
        const engine_config& c = config();
        const size_t D = size_t(c.head_dim);
        // Which requests to rotate, decided once; then one scratch buffer for
        // every rotated q, k and v of the call, sized first so the pointers
        // handed to the backend stay valid.
        thread_local std::vector<char> rotate;     // [n_requests] this wrapper rotates the request's rows
        thread_local std::vector<float> scratch;   // per rotated request: [rows][Hq][D] q, [rows][H][D] k, [rows][H][D] v
        thread_local std::vector<attend_request> rewritten;
        rotate.resize(n_requests);
        size_t floats = 0;
        for (size_t i = 0; i < n_requests; ++i) {
            rotate[i] = rewritable(requests[i]);
            if (rotate[i]) floats += size_t(requests[i].n_rows) * size_t(c.n_q_heads + 2 * c.n_kv_heads) * D;
        }
        if (floats == 0) return inner_->attend(requests, n_requests);
        scratch.resize(floats);
        rewritten.assign(requests, requests + n_requests);
        float* cursor = scratch.data();
        auto rotated_copy = [&](const float* src, size_t n_vectors) {
            float* dst = cursor;
            std::copy(src, src + n_vectors * D, dst);
            rotation_.rotate(dst, n_vectors);
            cursor += n_vectors * D;
            return dst;
        };
        for (size_t i = 0; i < n_requests; ++i) {
            if (!rotate[i]) continue;
            attend_request& r = rewritten[i];
            const size_t rows = size_t(r.n_rows);
            r.q = rotated_copy(r.q, rows * size_t(c.n_q_heads));
            r.k_new = rotated_copy(r.k_new, rows * size_t(c.n_kv_heads));
            r.v_new = rotated_copy(r.v_new, rows * size_t(c.n_kv_heads));
        }
        inner_->attend(rewritten.data(), rewritten.size());
        // The backend wrote Σ p·Rv: rotate each output vector back.
        for (size_t i = 0; i < n_requests; ++i)
            if (rotate[i]) rotation_.unrotate(rewritten[i].out, size_t(rewritten[i].n_rows) * size_t(c.n_q_heads));
    }

    move_result apply_plan(uint32_t seq, int layer, const uint32_t* positions, const uint8_t* formats,
                           size_t n) override {
        return inner_->apply_plan(seq, layer, positions, formats, n);
    }
    void report(uint32_t seq, int layer, const token_report& out) const override { inner_->report(seq, layer, out); }
    memory_stats stats(uint32_t seq) const override { return inner_->stats(seq); }
    size_t total_held_bytes() const override { return inner_->total_held_bytes(); }

    // K and V come back in the caller's coordinates.
    void read_kv(uint32_t seq, int layer, float* k, float* v) const override {
        inner_->read_kv(seq, layer, k, v);
        if (!rotated(seq)) return;
        const size_t n = inner_->sequence_length(seq, layer) * size_t(config().n_kv_heads);
        if (k) rotation_.unrotate(k, n);
        if (v) rotation_.unrotate(v, n);
    }

private:
    bool rotated(uint32_t seq) const {
        std::lock_guard<std::mutex> lock(mutex_);
        return unrotated_.count(seq) == 0;
    }
    // A request whose rows this wrapper rotates; anything malformed goes to
    // the backend as it is, which names what is wrong.
    bool rewritable(const attend_request& r) const {
        return r.n_rows > 0 && r.q && r.k_new && r.v_new && r.out && rotated(r.seq);
    }

    std::unique_ptr<kv_backend> inner_;
    kv_rotation rotation_;
    mutable std::mutex mutex_;                // guards unrotated_
    std::unordered_set<uint32_t> unrotated_;  // KIVI sequences: stored as given
};

}  // namespace

std::unique_ptr<kv_backend> with_rotated_kv(std::unique_ptr<kv_backend> inner) {
    return std::make_unique<rotated_kv_backend>(std::move(inner));
}

}  // namespace smartkv
