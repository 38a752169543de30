#include "cpu-engine.h"
#include <algorithm>
#include "smartkv/kivi.h"

#include <string>
#include <thread>

namespace smartkv {

const char* error_code_name(error_code c) {
    switch (c) {
        case error_code::invalid_argument: return "INVALID_ARGUMENT";
        case error_code::not_found: return "NOT_FOUND";
        case error_code::resource_exhausted: return "RESOURCE_EXHAUSTED";
        case error_code::failed_precondition: return "FAILED_PRECONDITION";
        default: return "INTERNAL";
    }
}

namespace {
[[noreturn]] void fail(error_code c, const std::string& msg) { throw engine_error(c, msg); }
}  // namespace

void validate_config(const engine_config& c) {
    auto need = [](bool ok, const std::string& msg) {
        if (!ok) fail(error_code::invalid_argument, msg);
    };
    need(c.n_layers > 0, "n_layers must be positive");
    need(c.n_kv_heads > 0, "n_kv_heads must be positive");
    need(c.n_q_heads > 0 && c.n_q_heads % c.n_kv_heads == 0, "n_q_heads must be a positive multiple of n_kv_heads");
    need(c.head_dim > 0 && c.head_dim % 32 == 0 && c.head_dim <= 512, "head_dim must be a multiple of 32, at most 512");
    need(c.block_tokens > 0 && c.block_tokens % 16 == 0 && c.block_tokens <= 1024,
         "block_tokens must be a multiple of 16, at most 1024");
    need(c.gamma >= 0.f && c.gamma < 1.f, "gamma must be in [0, 1)");
    need(c.n_threads >= 0 && c.n_threads <= 1024, "n_threads must be in [0, 1024]");
    need(c.kivi_residual >= 0, "kivi_residual must not be negative");
}

cpu_engine::cpu_engine(const engine_config& cfg)
    : cfg_((validate_config(cfg), cfg)),
      pool_(cfg.n_threads > 0 ? cfg.n_threads : int(std::max(1u, std::thread::hardware_concurrency()))),
      use_fast_(cfg.fast_path && fast_path_available(cfg.head_dim)) {}

std::unique_ptr<kv_backend> make_cpu_backend(const engine_config& cfg) {
    std::unique_ptr<kv_backend> engine = std::make_unique<cpu_engine>(cfg);
    return cfg.rotate_kv ? with_rotated_kv(std::move(engine)) : std::move(engine);
}

cpu_sequence& cpu_engine::get(uint32_t seq) {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) fail(error_code::not_found, "unknown sequence " + std::to_string(seq));
    return it->second;
}
const cpu_sequence& cpu_engine::get(uint32_t seq) const { return const_cast<cpu_engine*>(this)->get(seq); }

layer_store& cpu_engine::get_layer(uint32_t seq, int layer) {
    cpu_sequence& s = get(seq);
    if (layer < 0 || layer >= cfg_.n_layers)
        fail(error_code::invalid_argument,
             "layer " + std::to_string(layer) + " is out of range [0, " + std::to_string(cfg_.n_layers) + ")");
    return *s.layers[size_t(layer)];
}
const layer_store& cpu_engine::get_layer(uint32_t seq, int layer) const {
    return const_cast<cpu_engine*>(this)->get_layer(seq, layer);
}

uint32_t cpu_engine::create_sequence(storage_kind kind, float gamma, precision_mode mode) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (kind != storage_kind::mixed && kind != storage_kind::kivi2 && kind != storage_kind::kivi4)
        fail(error_code::invalid_argument, "unknown storage kind");
    if (!(gamma >= 0.f && gamma < 1.f)) fail(error_code::invalid_argument, "gamma must be in [0, 1)");
    cpu_sequence s;
    s.kind = kind;
    s.gamma = gamma;
    // KIVI sequences never take plans: a master copy would only cost bytes.
    const bool reversible = mode == precision_mode::reversible && kind == storage_kind::mixed;
    for (int l = 0; l < cfg_.n_layers; ++l) s.layers.push_back(std::make_unique<layer_store>(cfg_, kind, reversible));
    const uint32_t id = next_id_++;
    seqs_.emplace(id, std::move(s));
    return id;
}

void cpu_engine::free_sequence(uint32_t seq) {
    std::lock_guard<std::mutex> lock(mutex_);
    get(seq);
    seqs_.erase(seq);
}

bool cpu_engine::has_sequence(uint32_t seq) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return seqs_.count(seq) != 0;
}

size_t cpu_engine::sequence_length(uint32_t seq, int layer) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return get_layer(seq, layer).size();
}

size_t cpu_engine::held_unlocked() const {
    size_t total = 0;
    for (const auto& [id, s] : seqs_)
        for (const auto& l : s.layers) total += l->held().total();
    return total;
}

size_t cpu_engine::total_held_bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return held_unlocked();
}

void cpu_engine::check_memory(size_t extra) const {
    if (cfg_.memory_limit_bytes == 0) return;
    const size_t held = held_unlocked();
    if (held + extra > cfg_.memory_limit_bytes)
        fail(error_code::resource_exhausted, "KV memory limit reached: holding " + std::to_string(held) +
                                                 " bytes, need " + std::to_string(extra) + " more, limit " +
                                                 std::to_string(cfg_.memory_limit_bytes));
}

void cpu_engine::append(uint32_t seq, int layer, int n_rows, const float* k, const float* v) {
    std::lock_guard<std::mutex> lock(mutex_);
    layer_store& ls = get_layer(seq, layer);
    if (n_rows <= 0) fail(error_code::invalid_argument, "n_rows must be positive");
    check_memory(ls.growth_for_append(n_rows));
    ls.append(n_rows, k, v);
    ls.flush_kivi_groups();
}

move_result cpu_engine::apply_plan(uint32_t seq, int layer, const uint32_t* positions, const uint8_t* formats,
                                   size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    cpu_sequence& s = get(seq);
    if (s.kind != storage_kind::mixed)
        fail(error_code::failed_precondition, "sequence " + std::to_string(seq) + " uses KIVI storage; plans do not apply");
    if (layer < -1 || layer >= cfg_.n_layers)
        fail(error_code::invalid_argument, "layer " + std::to_string(layer) + " is out of range");
    const int l0 = layer < 0 ? 0 : layer, l1 = layer < 0 ? cfg_.n_layers : layer + 1;
    // Validate the whole plan before the first move, so a bad plan changes nothing.
    size_t growth = 0;
    for (int l = l0; l < l1; ++l) {
        const layer_store& ls = *s.layers[size_t(l)];
        for (size_t i = 0; i < n; ++i) {
            if (positions[i] >= ls.size())
                fail(error_code::invalid_argument, "plan names token " + std::to_string(positions[i]) +
                                                       " but layer " + std::to_string(l) + " holds " +
                                                       std::to_string(ls.size()));
            if (formats[i] >= n_formats)
                fail(error_code::invalid_argument, "plan gives token " + std::to_string(positions[i]) +
                                                       " unknown format " + std::to_string(formats[i]));
            if (!ls.can_move(positions[i], kv_format(formats[i])))
                fail(error_code::failed_precondition,
                     "plan raises token " + std::to_string(positions[i]) + " from " +
                         k_format_traits[int(ls.where(positions[i]).fmt)].name + " to " +
                         k_format_traits[formats[i]].name +
                         ", which needs the FP16 master copy: the sequence is downgrade-only");
        }
        growth += ls.growth_for_moves(positions, formats, n);
    }
    check_memory(growth);
    move_result r;
    for (int l = l0; l < l1; ++l) {
        layer_store& ls = *s.layers[size_t(l)];
        // Tokens that lose bits first, then those that gain: the peak stays
        // what growth_for_moves charged (the losers' blocks are freed first).
        for (const bool gaining : {false, true})
            for (size_t i = 0; i < n; ++i) {
                const kv_format to = kv_format(formats[i]);
                if ((format_bits(to) > format_bits(ls.where(positions[i]).fmt)) != gaining) continue;
                const size_t b = ls.move(positions[i], to);
                if (b) {
                    ++r.tokens_changed;
                    r.bytes_moved += b;
                }
            }
    }
    return r;
}

void cpu_engine::report(uint32_t seq, int layer, const token_report& out) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const layer_store& ls = get_layer(seq, layer);
    const int D = cfg_.head_dim, H = cfg_.n_kv_heads;
    const kv_format levels[3] = {kv_format::int8, kv_format::int4, kv_format::int2};
    const bool rotated = stores_rotated(cfg_, get(seq).kind);  // clipped 2-bit scales
    std::vector<float> k(D), v(D);
    for (size_t pos = 0; pos < ls.size(); ++pos) {
        const slot_ref s = ls.where(pos);
        if (out.importance) out.importance[pos] = ls.importance(pos);
        if (out.format) out.format[pos] = uint8_t(s.fmt);
        if (!out.sq_error) continue;
        float err[3] = {0.f, 0.f, 0.f};
        for (int h = 0; h < H; ++h) {
            float range_k, range_v;
            if (s.fmt == kv_format::fp16 || ls.in_group(pos)) {
                ls.read(pos, h, k.data(), v.data());
                float klo = k[0], khi = k[0], vlo = v[0], vhi = v[0];
                for (int d = 1; d < D; ++d) {
                    klo = std::min(klo, k[d]), khi = std::max(khi, k[d]);
                    vlo = std::min(vlo, v[d]), vhi = std::max(vhi, v[d]);
                }
                const bool sym = cfg_.mode == quant_mode::symmetric;
                range_k = sym ? 2.f * std::max(-klo, khi) : khi - klo;
                range_v = sym ? 2.f * std::max(-vlo, vhi) : vhi - vlo;
            } else {
                const bucket& b = ls.bucket_of(s.fmt);
                range_k = stored_range(s.fmt, b.k_params(s.slot, h));
                range_v = stored_range(s.fmt, b.v_params(s.slot, h));
            }
            for (int i = 0; i < 3; ++i) {
                // A token cannot get better than its current format without the master copy.
                const kv_format f = (!ls.reversible() && format_bits(levels[i]) > format_bits(s.fmt)) ? s.fmt : levels[i];
                err[i] += modelled_sq_error_from(f, s.fmt, range_k, cfg_.mode, rotated, D) +
                          modelled_sq_error_from(f, s.fmt, range_v, cfg_.mode, rotated, D);
            }
        }
        for (int i = 0; i < 3; ++i) out.sq_error[pos * 3 + i] = err[i];
    }
}

memory_stats cpu_engine::stats(uint32_t seq) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const cpu_sequence& s = get(seq);
    memory_stats m;
    for (const auto& ls : s.layers) {
        const held_split h = ls->held();
        m.payload += h.payload;
        m.params += h.params;
        m.metadata += h.metadata;
        m.master += h.master;
        m.tokens += ls->size();
        m.fp16_equivalent += ls->size() * 2 * size_t(cfg_.n_kv_heads) * cfg_.head_dim * sizeof(half_bits);
        for (int f = 0; f < n_formats; ++f) m.tokens_by_format[f] += ls->bucket_of(kv_format(f)).size();
        m.kivi_tokens += ls->n_groups() * kivi_group;
    }
    return m;
}

void cpu_engine::read_kv(uint32_t seq, int layer, float* k, float* v) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const layer_store& ls = get_layer(seq, layer);
    const size_t D = size_t(cfg_.head_dim), H = size_t(cfg_.n_kv_heads);
    for (size_t pos = 0; pos < ls.size(); ++pos)
        for (size_t h = 0; h < H; ++h) ls.read(pos, int(h), k + (pos * H + h) * D, v + (pos * H + h) * D);
}

}  // namespace smartkv
