// What the CPU and CUDA backends share: the sequence registry (ids, one store
// per layer, owned here), the checks every call makes before it changes
// anything (arguments, plans, batches, the memory limit), and the byte
// accounting. A backend derives from sequence_engine<Store> with its per-layer
// store (cpu: layer_store, cuda: gpu_store) and supplies make_layer(); the
// data path (append, attend, moves, report, read_kv) stays its own.
//
// A Store provides: size(), held() (a held_split), growth_for_append(n_rows),
// growth_for_moves(positions, formats, n), where(pos).fmt, reversible(),
// bucket_of(format).size() and n_groups().
//
// Locking: the public kv_backend calls below take mutex_; the protected
// helpers expect the caller to hold it (every backend call holds it whole).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "smartkv/engine.h"
#include "smartkv/formats.h"
#include "smartkv/kivi.h"

namespace smartkv {

// One sequence: how it stores KV, its importance EMA factor, its layers.
template <class Store>
struct engine_sequence {
    storage_kind kind;
    float gamma;
    std::vector<std::unique_ptr<Store>> layers;  // [n_layers]
};

// How a backend applies a plan, which decides what an upgrade is judged
// against when the plan is validated:
//   losers_first: tokens that lose bits move first, then those that gain
//                 (CPU); each entry is judged against the stored format.
//   as_given:     in plan order, a token named twice in rounds (CUDA); each
//                 entry is judged against the format the plan has left it in.
enum class plan_order { losers_first, as_given };

// Layers [first, last) of a call.
struct layer_span {
    int first = 0, last = 0;
};

// Argument checks shared by both backends (sequence-engine.cc); each throws
// engine_error naming what is wrong.
void check_sequence_args(storage_kind kind, float gamma);
void check_layer_index(int layer, int n_layers);
void check_append_rows(int n_rows);
void check_attend_request(size_t index, const attend_request& r);
[[noreturn]] void fail_repeated_request(const attend_request& r);
// limit 0: no limit. resource_exhausted when held + extra would pass it.
void check_memory_limit(size_t limit, size_t held, size_t extra);
// Whole-plan checks: KIVI sequences take no plans; layer in [-1, n_layers).
layer_span check_plan_target(storage_kind kind, uint32_t seq, int layer, int n_layers);
// One plan entry against a layer holding n_held tokens.
void check_plan_entry(size_t n_held, int layer, uint32_t pos, uint8_t format);
[[noreturn]] void fail_needs_master(uint32_t pos, kv_format from, kv_format to);

template <class Store>
class sequence_engine : public kv_backend {
public:
    const engine_config& config() const override { return cfg_; }
    using kv_backend::create_sequence;
    uint32_t create_sequence(storage_kind kind, float gamma, precision_mode mode) override;
    void free_sequence(uint32_t seq) override;
    bool has_sequence(uint32_t seq) const override;
    size_t sequence_length(uint32_t seq, int layer) const override;
    memory_stats stats(uint32_t seq) const override;
    size_t total_held_bytes() const override;

protected:
    using sequence = engine_sequence<Store>;

    // The config is validated before anything else is built from it.
    explicit sequence_engine(const engine_config& cfg) : cfg_((validate_config(cfg), cfg)) {}

    // One layer's store for a new sequence. reversible: keep the FP16 master
    // copy (only ever asked for mixed sequences: KIVI takes no plans).
    virtual std::unique_ptr<Store> make_layer(storage_kind kind, bool reversible) = 0;

    sequence& get(uint32_t seq);
    const sequence& get(uint32_t seq) const;
    Store& get_layer(uint32_t seq, int layer);
    const Store& get_layer(uint32_t seq, int layer) const;

    // Hot bytes of every sequence (what the memory limit counts).
    size_t held_unlocked() const;
    void check_memory(size_t extra) const;

    // The store an append of n_rows goes to, after the checks and the memory limit.
    Store& store_for_append(uint32_t seq, int layer, int n_rows);
    // The stores of a batch, [n_requests], after every check and the memory
    // limit for all the appends together: throws before the first append.
    std::vector<Store*> stores_for_batch(const attend_request* requests, size_t n_requests);
    // Checks a plan whole (entries, upgrades against `order`, the memory its
    // moves need) before the first move, so a bad plan changes nothing;
    // returns the layers it acts on.
    layer_span check_plan(const sequence& s, uint32_t seq, int layer, const uint32_t* positions,
                          const uint8_t* formats, size_t n, plan_order order) const;

    // Drops every sequence now (a backend whose stores hold resources it
    // owns, like the CUDA device pool, calls this before releasing them).
    void clear_sequences() { seqs_.clear(); }

    const engine_config cfg_;
    mutable std::mutex mutex_;  // one call at a time

private:
    std::map<uint32_t, sequence> seqs_;
    uint32_t next_id_ = 1;  // ids are never reused
};

// ---- implementation ----

template <class Store>
uint32_t sequence_engine<Store>::create_sequence(storage_kind kind, float gamma, precision_mode mode) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_sequence_args(kind, gamma);
    sequence s;
    s.kind = kind;
    s.gamma = gamma;
    // KIVI sequences never take plans: a master copy would only cost bytes.
    const bool reversible = mode == precision_mode::reversible && kind == storage_kind::mixed;
    for (int l = 0; l < cfg_.n_layers; ++l) s.layers.push_back(make_layer(kind, reversible));
    const uint32_t id = next_id_++;
    seqs_.emplace(id, std::move(s));
    return id;
}

template <class Store>
void sequence_engine<Store>::free_sequence(uint32_t seq) {
    std::lock_guard<std::mutex> lock(mutex_);
    get(seq);
    seqs_.erase(seq);
}

template <class Store>
bool sequence_engine<Store>::has_sequence(uint32_t seq) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return seqs_.count(seq) != 0;
}

template <class Store>
size_t sequence_engine<Store>::sequence_length(uint32_t seq, int layer) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return get_layer(seq, layer).size();
}

template <class Store>
memory_stats sequence_engine<Store>::stats(uint32_t seq) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const sequence& s = get(seq);
    memory_stats m;
    for (const auto& ls : s.layers) {
        const auto h = ls->held();
        m.payload += h.payload;
        m.params += h.params;
        m.metadata += h.metadata;
        m.master += h.master;
        m.tokens += ls->size();
        m.fp16_equivalent += ls->size() * 2 * size_t(cfg_.n_kv_heads) * size_t(cfg_.head_dim) * sizeof(half_bits);
        for (int f = 0; f < n_formats; ++f) m.tokens_by_format[f] += ls->bucket_of(kv_format(f)).size();
        m.kivi_tokens += ls->n_groups() * kivi_group;
    }
    return m;
}

template <class Store>
size_t sequence_engine<Store>::total_held_bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return held_unlocked();
}

template <class Store>
typename sequence_engine<Store>::sequence& sequence_engine<Store>::get(uint32_t seq) {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) throw engine_error(error_code::not_found, "unknown sequence " + std::to_string(seq));
    return it->second;
}

template <class Store>
const typename sequence_engine<Store>::sequence& sequence_engine<Store>::get(uint32_t seq) const {
    return const_cast<sequence_engine*>(this)->get(seq);
}

template <class Store>
Store& sequence_engine<Store>::get_layer(uint32_t seq, int layer) {
    sequence& s = get(seq);
    check_layer_index(layer, cfg_.n_layers);
    return *s.layers[size_t(layer)];
}

template <class Store>
const Store& sequence_engine<Store>::get_layer(uint32_t seq, int layer) const {
    return const_cast<sequence_engine*>(this)->get_layer(seq, layer);
}

template <class Store>
size_t sequence_engine<Store>::held_unlocked() const {
    size_t total = 0;
    for (const auto& [id, s] : seqs_)
        for (const auto& l : s.layers) total += l->held().total();
    return total;
}

template <class Store>
void sequence_engine<Store>::check_memory(size_t extra) const {
    if (cfg_.memory_limit_bytes == 0) return;  // no limit: skip summing every store
    check_memory_limit(cfg_.memory_limit_bytes, held_unlocked(), extra);
}

template <class Store>
Store& sequence_engine<Store>::store_for_append(uint32_t seq, int layer, int n_rows) {
    Store& s = get_layer(seq, layer);
    check_append_rows(n_rows);
    check_memory(s.growth_for_append(n_rows));
    return s;
}

template <class Store>
std::vector<Store*> sequence_engine<Store>::stores_for_batch(const attend_request* requests, size_t n_requests) {
    size_t growth = 0;
    std::vector<Store*> stores(n_requests);
    for (size_t i = 0; i < n_requests; ++i) {
        const attend_request& r = requests[i];
        stores[i] = &get_layer(r.seq, r.layer);
        check_attend_request(i, r);
        // Two requests on one store would append twice before either attends.
        for (size_t j = 0; j < i; ++j)
            if (stores[j] == stores[i]) fail_repeated_request(r);
        growth += stores[i]->growth_for_append(r.n_rows);
    }
    check_memory(growth);
    return stores;
}

template <class Store>
layer_span sequence_engine<Store>::check_plan(const sequence& s, uint32_t seq, int layer, const uint32_t* positions,
                                              const uint8_t* formats, size_t n, plan_order order) const {
    const layer_span span = check_plan_target(s.kind, seq, layer, cfg_.n_layers);
    size_t growth = 0;
    for (int l = span.first; l < span.last; ++l) {
        const Store& ls = *s.layers[size_t(l)];
        std::unordered_map<uint32_t, kv_format> now;  // as_given: formats as the plan leaves them so far
        for (size_t i = 0; i < n; ++i) {
            check_plan_entry(ls.size(), l, positions[i], formats[i]);
            const kv_format to = kv_format(formats[i]);
            kv_format from = ls.where(positions[i]).fmt;
            if (order == plan_order::as_given) {
                auto it = now.find(positions[i]);
                if (it != now.end()) from = it->second;
                now[positions[i]] = to;
            }
            // More bits than held need the original values.
            if (!ls.reversible() && format_bits(to) > format_bits(from)) fail_needs_master(positions[i], from, to);
        }
        growth += ls.growth_for_moves(positions, formats, n);
    }
    check_memory(growth);
    return span;
}

}  // namespace smartkv
