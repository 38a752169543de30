#include "cpu-engine.h"

#include <algorithm>
#include <thread>

namespace smartkv {

cpu_engine::cpu_engine(const engine_config& cfg)
    : sequence_engine(cfg),
      pool_(cfg.n_threads > 0 ? cfg.n_threads : int(std::max(1u, std::thread::hardware_concurrency()))),
      use_fast_(cfg.fast_path && fast_path_available(cfg.head_dim)) {}

std::unique_ptr<kv_backend> make_cpu_backend(const engine_config& cfg) {
    std::unique_ptr<kv_backend> engine = std::make_unique<cpu_engine>(cfg);
    return cfg.rotate_kv ? with_rotated_kv(std::move(engine)) : std::move(engine);
}

std::unique_ptr<layer_store> cpu_engine::make_layer(storage_kind kind, bool reversible) {
    return std::make_unique<layer_store>(cfg_, kind, reversible);
}

void cpu_engine::append(uint32_t seq, int layer, int n_rows, const float* k, const float* v) {
    std::lock_guard<std::mutex> lock(mutex_);
    layer_store& ls = store_for_append(seq, layer, n_rows);
    ls.append(n_rows, k, v);
    ls.flush_kivi_groups();
}

move_result cpu_engine::apply_plan(uint32_t seq, int layer, const uint32_t* positions, const uint8_t* formats,
                                   size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    sequence& s = get(seq);
    // Checked against the stored formats: moves run losers first, not in plan order.
    const layer_span span = check_plan(s, seq, layer, positions, formats, n, plan_order::losers_first);
    move_result r;
    for (int l = span.first; l < span.last; ++l) {
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

void cpu_engine::read_kv(uint32_t seq, int layer, float* k, float* v) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const layer_store& ls = get_layer(seq, layer);
    const size_t D = size_t(cfg_.head_dim), H = size_t(cfg_.n_kv_heads);
    for (size_t pos = 0; pos < ls.size(); ++pos)
        for (size_t h = 0; h < H; ++h) ls.read(pos, int(h), k + (pos * H + h) * D, v + (pos * H + h) * D);
}

}  // namespace smartkv
