// A plan's memory check (layer_store::growth_for_moves) against what the
// moves really hold: replaying apply_plan's order (tokens that lose bits,
// then those that gain) move by move, the largest hot bytes seen never exceed
// the prediction, and the prediction exceeds them by at most the block
// tables' growth. Through the engine, a limit of exactly held + prediction
// lets the plan through; one byte less refuses it and changes nothing.
#include <algorithm>
#include <random>
#include <vector>

#include "check.h"
#include "cpu/layer-store.h"
#include "smartkv/engine.h"

using namespace smartkv;

namespace {

std::vector<float> values(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.f, 1.f);
    std::vector<float> x(n);
    for (float& v : x) v = dist(rng);
    return x;
}

engine_config peak_config(bool reversible) {
    engine_config c;
    c.n_layers = 1, c.n_q_heads = 4, c.n_kv_heads = 2, c.head_dim = 64, c.n_threads = 1;
    c.master_copy = reversible;
    return c;
}

// A random plan over n tokens: each token to a random format (downgrades only when !up).
void random_plan(const layer_store& ls, size_t n, bool up, std::mt19937& rng, std::vector<uint32_t>& pos,
                 std::vector<uint8_t>& fmt) {
    pos.clear(), fmt.clear();
    for (size_t p = 0; p < n; ++p) {
        if (rng() % 3 == 0) continue;
        const int cur = int(ls.where(p).fmt);
        const int to = up ? int(rng() % 4) : cur + int(rng() % (4 - cur));
        pos.push_back(uint32_t(p));
        fmt.push_back(uint8_t(to));
    }
}

}  // namespace

TEST(plan_peak_is_predicted_from_above_and_tightly) {
    for (const bool up : {false, true}) {
        const engine_config c = peak_config(up);
        layer_store ls(c, storage_kind::mixed, up);
        std::mt19937 rng(up ? 2 : 1);
        size_t n = 0;
        for (int round = 0; round < 12; ++round) {
            const int rows = 1 + int(rng() % 150);
            auto k = values(size_t(rows) * 128, uint32_t(round)), v = values(size_t(rows) * 128, uint32_t(round) + 99);
            ls.append(rows, k.data(), v.data());
            n += size_t(rows);
            std::vector<uint32_t> pos;
            std::vector<uint8_t> fmt;
            random_plan(ls, n, up, rng, pos, fmt);
            const size_t before = ls.held().total();
            const size_t predicted = ls.growth_for_moves(pos.data(), fmt.data(), pos.size());
            size_t peak = before, tables_before = 0, tables_after = 0;
            for (int f = 0; f < n_formats; ++f) tables_before += ls.bucket_of(kv_format(f)).table_bytes();
            for (const bool gaining : {false, true})  // apply_plan's order
                for (size_t i = 0; i < pos.size(); ++i) {
                    const kv_format to = kv_format(fmt[i]);
                    if ((format_bits(to) > format_bits(ls.where(pos[i]).fmt)) != gaining) continue;
                    ls.move(pos[i], to);
                    peak = std::max(peak, ls.held().total());
                }
            for (int f = 0; f < n_formats; ++f) tables_after += ls.bucket_of(kv_format(f)).table_bytes();
            CHECK_MSG(peak - before <= predicted, "round " + std::to_string(round) + ": the moves reached " +
                                                      std::to_string(peak - before) + " bytes more, predicted " +
                                                      std::to_string(predicted));
            CHECK_MSG(predicted <= peak - before + (tables_after - tables_before),
                      "round " + std::to_string(round) + ": predicted " + std::to_string(predicted) + ", reached " +
                          std::to_string(peak - before));
        }
    }
}

TEST(a_plan_fits_a_limit_of_exactly_its_peak) {
    for (const size_t slack : {size_t(0), size_t(1)}) {
        engine_config c = peak_config(true);
        auto probe = make_cpu_backend(c);  // the same tokens and plan, to learn the peak
        std::mt19937 rng(5);
        const int n = 700;
        auto k = values(size_t(n) * 128, 7), v = values(size_t(n) * 128, 8);
        const uint32_t s0 = probe->create_sequence(storage_kind::mixed);
        probe->append(s0, 0, n, k.data(), v.data());
        std::vector<uint32_t> pos(n);
        std::vector<uint8_t> fmt(n);
        for (int i = 0; i < n; ++i) pos[size_t(i)] = uint32_t(i), fmt[size_t(i)] = uint8_t(1 + rng() % 3);
        const size_t held = probe->total_held_bytes();
        layer_store ls(c, storage_kind::mixed, true);
        ls.append(n, k.data(), v.data());
        const size_t growth = ls.growth_for_moves(pos.data(), fmt.data(), pos.size());
        c.memory_limit_bytes = held + growth - slack;
        auto eng = make_cpu_backend(c);
        const uint32_t s = eng->create_sequence(storage_kind::mixed);
        eng->append(s, 0, n, k.data(), v.data());
        int code = -1;
        try {
            eng->apply_plan(s, 0, pos.data(), fmt.data(), pos.size());
        } catch (const engine_error& e) {
            code = int(e.code);
        }
        if (slack == 0) CHECK_MSG(code == -1, "a limit of exactly the peak must let the plan through");
        else {
            CHECK(code == int(error_code::resource_exhausted));
            CHECK(eng->stats(s).tokens_by_format[0] == size_t(n));  // nothing moved
        }
    }
}
