// smartkv-gpu-check: the CUDA backend against the CPU reference, then timings.
//
//   smartkv-gpu-check [--json FILE] [--quick] [filter]
//
// CPU-side sanity checks of the layout the kernels assume run everywhere.
// With a CUDA device: the write kernels must match the CPU bit for bit, and
// the engine must match the CPU engine (scalar reference kernel) on a grid of
// shapes, formats, bit mixes, batches and context lengths; then the timings
// (gpu-bench.cc). Without one, the GPU part is reported as skipped and the
// run still passes. The last line is "N passed, N failed".
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>

#include "attend-device.cuh"
#include "bench-mix.h"
#include "check.h"
#include "gpu-report.h"
#include "cpu/layer-store.h"
#include "device-pool.h"
#include "gpu-store.h"
#include "host-mirror.h"
#include "gpu-types.h"
#include "kernels.h"
#include "reference.h"
#include "smartkv/engine.h"
#include "smartkv/kivi.h"

using namespace smartkv;
using namespace smartkv::testing;

namespace {
// What the JSON file says besides the records; set by main().
struct json_state {
    const char* path = nullptr;
    std::string device = "none";
    bool gpu_present = false;
    bool complete = false;
    int passed = 0, failed = 0;
};
json_state g_json;

// The whole file, to PATH.tmp and renamed over PATH: a reader (or a
// timeout) never sees half a file.
void json_write() {
    if (!g_json.path) return;
    const std::string tmp = std::string(g_json.path) + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f) return;
    std::fprintf(f, "{\n\"device\": \"%s\",\n\"gpu_present\": %s,\n\"complete\": %s,\n", g_json.device.c_str(),
                 g_json.gpu_present ? "true" : "false", g_json.complete ? "true" : "false");
    if (g_json.complete) std::fprintf(f, "\"passed\": %d,\n\"failed\": %d,\n", g_json.passed, g_json.failed);
    else std::fprintf(f, "\"passed\": null,\n\"failed\": null,\n");
    for (const char* sec : {"checks", "timings"}) {
        std::fprintf(f, "\"%s\": [\n", sec);
        const auto& recs = json_records(sec);
        for (size_t i = 0; i < recs.size(); ++i)
            std::fprintf(f, "  %s%s\n", recs[i].c_str(), i + 1 < recs.size() ? "," : "");
        std::fprintf(f, "]%s\n", std::strcmp(sec, "checks") == 0 ? "," : "");
    }
    std::fprintf(f, "}\n");
    std::fclose(f);
    std::rename(tmp.c_str(), g_json.path);
}
}  // namespace

namespace smartkv::testing {
std::vector<std::string>& json_records(const char* section) {
    static std::vector<std::string> checks, timings;
    return std::strcmp(section, "timings") == 0 ? timings : checks;
}
void add_record(const char* section, const json_record& r) {
    json_records(section).push_back(r.text());
    json_write();
}
}  // namespace smartkv::testing

namespace {

bool g_have_gpu = false;
bool g_quick = false;
bool g_emulate = false;
const kv_format k_quantized[3] = {kv_format::int8, kv_format::int4, kv_format::int2};

// Fast normal-ish values (sum of uniforms), deterministic per seed.
std::vector<float> randn(size_t n, uint32_t seed, float sigma = 1.f) {
    std::vector<float> x(n);
    uint64_t s = 0x9e3779b97f4a7c15ull * (seed + 1);
    for (float& v : x) {
        float acc = 0.f;
        for (int i = 0; i < 4; ++i) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            acc += float(s >> 40) * (1.f / 16777216.f);
        }
        v = (acc - 2.f) * 1.732f * sigma;
    }
    return x;
}

double max_rel(const float* got, const float* want, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; ++i) {
        num = std::max(num, std::fabs(double(got[i]) - double(want[i])));
        den = std::max(den, std::fabs(double(want[i])));
    }
    return num / std::max(den, 1e-30);
}

double nmse(const float* got, const double* want, size_t n) {
    double e = 0.0, p = 0.0;
    for (size_t i = 0; i < n; ++i) {
        e += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
        p += want[i] * want[i];
    }
    return e / std::max(p, 1e-30);
}

}  // namespace

// ---------------------------------------------------------------------------
// CPU-side sanity: the packing and layout facts the kernels are built on.

TEST(planar_words_feed_dp4a) {
    std::mt19937 rng(3);
    for (kv_format f : k_quantized)
        for (int D : {64, 128, 256}) {
            const int bits = format_bits(f), R = row_bytes(f, D);
            const uint32_t mask = bits == 8 ? 0xffffffffu : bits == 4 ? 0x0f0f0f0fu : 0x03030303u;
            std::vector<uint8_t> row(size_t(R), 0);
            for (int d = 0; d < D; ++d) set_code(f, row.data(), D, d, int(rng() % (format_max_code(f) + 1)));
            for (int c = 0; c < R / 16; ++c)
                for (int w = 0; w < 4; ++w)
                    for (int s = 0; s < 8 / bits; ++s) {
                        uint32_t word;
                        std::memcpy(&word, &row[size_t(16 * c + 4 * w)], 4);
                        const uint32_t cw = (word >> (bits * s)) & mask;
                        for (int k = 0; k < 4; ++k)
                            CHECK(int((cw >> (8 * k)) & 0xff) == code_at(f, row.data(), D, s * R + 16 * c + 4 * w + k));
                    }
        }
}

TEST(value_lanes_read_one_plane) {
    std::mt19937 rng(4);
    for (kv_format f : k_quantized)
        for (int D : {64, 128, 256}) {
            const int bits = format_bits(f), R = row_bytes(f, D), DPL = D / 32;
            std::vector<uint8_t> row(size_t(R), 0);
            for (int d = 0; d < D; ++d) set_code(f, row.data(), D, d, int(rng() % (format_max_code(f) + 1)));
            for (int lane = 0; lane < 32; ++lane) {
                const int d0 = lane * DPL, s = d0 / R, off = d0 % R;
                CHECK(off % DPL == 0 && off + DPL <= R);  // one aligned load of DPL bytes
                for (int i = 0; i < DPL; ++i)
                    CHECK(((row[size_t(off + i)] >> (bits * s)) & ((1 << bits) - 1)) == code_at(f, row.data(), D, d0 + i));
            }
        }
}

// 4-bit blocks hold twice the slots and 2-bit blocks four times (capped at
// 1024): each integer format's block carries the same code bytes per kv-head.
TEST(integer_blocks_carry_equal_code_bytes) {
    for (int T = 16; T <= 1024; T += 16) {
        const int t8 = format_block_tokens(kv_format::int8, T), t4 = format_block_tokens(kv_format::int4, T);
        const int t2 = format_block_tokens(kv_format::int2, T);
        CHECK(format_block_tokens(kv_format::fp16, T) == T && t8 == T);
        CHECK(t4 == std::min(2 * T, 1024) && t2 == std::min(4 * T, 1024) && t2 % 16 == 0);
        const block_layout L8 = make_format_layout(kv_format::int8, quant_mode::symmetric, 128, 2, T);
        const block_layout L2 = make_format_layout(kv_format::int2, quant_mode::symmetric, 128, 2, T);
        if (4 * T <= 1024) CHECK(L8.row * L8.block_tokens == L2.row * L2.block_tokens);
    }
}

TEST(block_sections_allow_vector_loads) {
    for (int f = 0; f < n_formats; ++f)
        for (quant_mode m : {quant_mode::symmetric, quant_mode::asymmetric})
            for (int D : {64, 128, 256})
                for (int T : {16, 32, 48, 64})
                    for (bool kivi : {false, true}) {
                        if (kivi && (f == 0 || T != 32)) continue;
                        const block_layout L = make_block_layout(kv_format(f), m, D, 3, T, kivi);
                        CHECK(L.k_codes % 64 == 0 && L.v_codes % 64 == 0 && L.k_params % 64 == 0);
                        CHECK(L.v_params % 64 == 0 && L.pos % 64 == 0 && L.bytes % 64 == 0);
                        CHECK(L.row % 16 == 0);  // uint4 loads of key rows
                    }
}

TEST(code_to_float_bit_trick_is_exact) {
    for (uint32_t c = 0; c < 256; ++c) {
        const uint32_t bits = 0x4b000000u | c;
        float f;
        std::memcpy(&f, &bits, 4);
        CHECK(f - 8388608.f == float(c));
    }
}

TEST(splits_cover_every_block_once) {
    for (int nb : {1, 3, 7, 64, 1025})
        for (int splits = 1; splits <= std::min(nb, 40); ++splits) {
            int covered = 0, prev_end = 0;
            for (int s = 0; s < splits; ++s) {
                const int b0 = int(int64_t(nb) * s / splits), b1 = int(int64_t(nb) * (s + 1) / splits);
                CHECK(b0 == prev_end && b1 >= b0);
                covered += b1 - b0;
                prev_end = b1;
            }
            CHECK(covered == nb);
        }
}

namespace {

// The attention kernel's row helpers, run on the host: every unpack and dot
// against code_at / half_to_float.
template <int D, int BITS>
void check_row_helpers(uint32_t seed) {
    constexpr int QT = 4, DPL = D / 32;
    const kv_format f = BITS == 8 ? kv_format::int8 : BITS == 4 ? kv_format::int4 : kv_format::int2;
    std::mt19937 rng(seed);
    alignas(16) uint8_t row[2 * D] = {};
    alignas(16) int8_t q8[QT * D];
    alignas(16) float w[QT * D];
    for (int d = 0; d < D; ++d) set_code(f, row, D, d, int(rng() % (format_max_code(f) + 1)));
    for (int i = 0; i < QT * D; ++i) q8[i] = int8_t(int(rng() % 255) - 127), w[i] = float(int(rng() % 2001) - 1000) / 512.f;
    int dot[QT] = {0, 0, 0, 0};
    float fdot[QT] = {0, 0, 0, 0};
    alignas(16) int8_t q8t[QT * D];  // the kernel's shared layout: [D/4][QT][4]
    for (int j = 0; j < QT; ++j)
        for (int d = 0; d < D; ++d) q8t[(d / 4) * QT * 4 + j * 4 + d % 4] = q8[j * D + d];
    cuda::dot_codes_int<D, BITS, QT>(row, reinterpret_cast<const int*>(q8t), dot);
    cuda::dot_codes_float<D, BITS, QT>(row, w, fdot);
    for (int j = 0; j < QT; ++j) {
        int want = 0;
        double fwant = 0.0;
        for (int d = 0; d < D; ++d) {
            want += int(q8[j * D + d]) * code_at(f, row, D, d);
            fwant += double(w[j * D + d]) * code_at(f, row, D, d);
        }
        CHECK_MSG(dot[j] == want, "dot_codes_int D=" + std::to_string(D) + " bits=" + std::to_string(BITS));
        CHECK_MSG(std::fabs(fdot[j] - fwant) <= 1e-3 * (1.0 + std::fabs(fwant)), "dot_codes_float D=" + std::to_string(D));
    }
    for (int lane = 0; lane < 32; ++lane) {
        float v[DPL];
        cuda::value_codes<D, BITS>(row, lane, v);
        for (int i = 0; i < DPL; ++i) CHECK(v[i] == float(code_at(f, row, D, lane * DPL + i)));
    }
    // fp16 rows
    alignas(16) uint8_t hrow[2 * D];
    half_bits* h = reinterpret_cast<half_bits*>(hrow);
    for (int d = 0; d < D; ++d) h[d] = float_to_half(float(int(rng() % 4001) - 2000) / 256.f);
    float hdot[QT] = {0, 0, 0, 0};
    cuda::dot_fp16<D, QT>(hrow, w, hdot);
    for (int j = 0; j < QT; ++j) {
        double want = 0.0;
        for (int d = 0; d < D; ++d) want += double(w[j * D + d]) * half_to_float(h[d]);
        CHECK_MSG(std::fabs(hdot[j] - want) <= 1e-3 * (1.0 + std::fabs(want)), "dot_fp16 D=" + std::to_string(D));
    }
    for (int lane = 0; lane < 32; ++lane) {
        float v[DPL];
        cuda::value_fp16<D>(hrow, lane, v);
        for (int i = 0; i < DPL; ++i) CHECK(v[i] == half_to_float(h[lane * DPL + i]));
    }
    for (int t = 0; t < 64; ++t) {  // the s8 x u8 dot of one word
        const uint32_t a = uint32_t(rng()), b = uint32_t(rng());
        int want = 7;
        for (int i = 0; i < 4; ++i) want += int((a >> (8 * i)) & 0xff) * int(int8_t(b >> (8 * i)));
        CHECK(cuda::dp4a_us(a, int(b), 7) == want);
    }
}

}  // namespace

TEST(attention_row_helpers_match_reference_on_host) {
    check_row_helpers<64, 8>(1), check_row_helpers<64, 4>(2), check_row_helpers<64, 2>(3);
    check_row_helpers<128, 8>(4), check_row_helpers<128, 4>(5), check_row_helpers<128, 2>(6);
    check_row_helpers<256, 8>(7), check_row_helpers<256, 4>(8), check_row_helpers<256, 2>(9);
}

// ---------------------------------------------------------------------------
// GPU bookkeeping on the host: gpu_store over a host-memory pool, its work
// items run by a host executor, against the CPU's layer_store.

namespace {

// What the write kernels do, on the host (same shared functions).
void host_execute(cuda::gpu_ops& ops, const engine_config& cfg) {
    const int D = cfg.head_dim, H = cfg.n_kv_heads;
    std::vector<float> x(static_cast<size_t>(D)), keys(size_t(kivi_group) * D);
    for (const cuda::convert_item& it : ops.converts) {
        if (it.src_fmt == cuda::k_src_f32) std::memcpy(x.data(), it.src, size_t(D) * 4);
        else dequantize_vector(kv_format(it.src_fmt), quant_mode(it.src_mode), static_cast<const uint8_t*>(it.src),
                               it.src_params, D, x.data());
        quantize_vector(kv_format(it.dst_fmt), quant_mode(it.dst_mode), x.data(), D, it.dst_row, it.dst_params, it.clip);
        if (it.dst_pos) *it.dst_pos = it.pos;
    }
    const block_layout L16 = make_format_layout(kv_format::fp16, cfg.mode, D, H, cfg.block_tokens);
    for (const cuda::kivi_group_item& it : ops.kivi) {
        const kv_format f = kv_format(it.fmt);
        const block_layout KL = make_block_layout(f, quant_mode::asymmetric, D, H, kivi_group, true);
        for (int h = 0; h < H; ++h) {
            for (int t = 0; t < kivi_group; ++t)
                dequantize_vector(kv_format::fp16, cfg.mode, it.src_block[t] + L16.k_codes + L16.code_offset(h, it.src_slot[t]),
                                  nullptr, D, &keys[size_t(t) * D]);
            kivi_quantize_keys(f, keys.data(), D, it.dst_group + KL.k_codes + KL.code_offset(h, 0), KL.row,
                               reinterpret_cast<half_bits*>(it.dst_group + KL.k_params) + size_t(h) * D * 2);
            for (int t = 0; t < kivi_group; ++t) {
                dequantize_vector(kv_format::fp16, cfg.mode, it.src_block[t] + L16.v_codes + L16.code_offset(h, it.src_slot[t]),
                                  nullptr, D, x.data());
                quantize_vector(f, quant_mode::asymmetric, x.data(), D, it.dst_group + KL.v_codes + KL.code_offset(h, t),
                                reinterpret_cast<half_bits*>(it.dst_group + KL.v_params + KL.param_offset(h, t)));
            }
        }
        for (int t = 0; t < kivi_group; ++t) reinterpret_cast<int32_t*>(it.dst_group + KL.pos)[t] = it.pos0 + t;
    }
    for (const cuda::slot_copy_item& it : ops.copies) {
        const block_layout L = make_format_layout(kv_format(it.fmt), cfg.mode, D, H, cfg.block_tokens);
        const size_t pb = size_t(L.n_params) * 2;
        for (int h = 0; h < H; ++h) {
            std::memcpy(it.dst_block + L.k_codes + L.code_offset(h, it.dst_slot), it.src_block + L.k_codes + L.code_offset(h, it.src_slot), size_t(L.row));
            std::memcpy(it.dst_block + L.v_codes + L.code_offset(h, it.dst_slot), it.src_block + L.v_codes + L.code_offset(h, it.src_slot), size_t(L.row));
            if (pb) {
                std::memcpy(it.dst_block + L.k_params + L.param_offset(h, it.dst_slot), it.src_block + L.k_params + L.param_offset(h, it.src_slot), pb);
                std::memcpy(it.dst_block + L.v_params + L.param_offset(h, it.dst_slot), it.src_block + L.v_params + L.param_offset(h, it.src_slot), pb);
            }
        }
        reinterpret_cast<int32_t*>(it.dst_block + L.pos)[it.dst_slot] = reinterpret_cast<const int32_t*>(it.src_block + L.pos)[it.src_slot];
    }
    ops.converts.clear(), ops.kivi.clear(), ops.copies.clear();
}

// Every token reads back bit-identical, sits where the map says, and the
// slot's stored position agrees.
void compare_stores(const layer_store& cl, const cuda::gpu_store& gs, const engine_config& cfg, const char* what) {
    CHECK_MSG(cl.size() == gs.size(), what);
    const cuda::host_mirror mirror(gs, cfg, nullptr, /*host_memory=*/true);
    const int D = cfg.head_dim;
    std::vector<float> k1(static_cast<size_t>(D)), v1(k1.size()), k2(k1.size()), v2(k1.size());
    int bad_values = 0, bad_map = 0;
    for (size_t pos = 0; pos < cl.size(); ++pos) {
        if (cl.where(pos).fmt != gs.where(pos).fmt || cl.in_group(pos) != gs.in_group(pos)) ++bad_map;
        if (!gs.in_group(pos)) {
            const slot_ref r = gs.where(pos);
            const cuda::gpu_bucket& b = gs.bucket_of(r.fmt);
            if (r.slot >= b.size() || b.position(r.slot) != int32_t(pos) || *b.pos_word(r.slot) != int32_t(pos)) ++bad_map;
        }
        for (int h = 0; h < cfg.n_kv_heads; ++h) {
            cl.read(pos, h, k1.data(), v1.data());
            mirror.read(pos, h, k2.data(), v2.data());
            if (std::memcmp(k1.data(), k2.data(), k1.size() * 4) || std::memcmp(v1.data(), v2.data(), v1.size() * 4)) ++bad_values;
        }
    }
    CHECK_MSG(bad_values == 0 && bad_map == 0, std::string(what) + ": " + std::to_string(bad_values) + " values, " +
                                                   std::to_string(bad_map) + " map entries differ");
    const held_split a = cl.held(), b = gs.held();
    // The master copies live in different tiers (a file in 64 KiB chunks on the
    // CPU, host pages for CUDA): both have one or neither does.
    CHECK_MSG(a.payload == b.payload && a.params == b.params && (a.master > 0) == (b.master > 0),
              std::string(what) + ": held bytes");
    for (int f = 0; f < n_formats; ++f) CHECK(cl.bucket_of(kv_format(f)).size() == gs.bucket_of(kv_format(f)).size());
}

}  // namespace

TEST(store_bookkeeping_matches_layer_store_on_host) {
    engine_config cfg;
    cfg.n_layers = 1, cfg.n_q_heads = 4, cfg.n_kv_heads = 2, cfg.head_dim = 64, cfg.master_copy = true;
    cuda::device_pool pool(nullptr, /*host_memory=*/true);
    {  // appends and moves, duplicates included, in rounds as the engine runs them
        layer_store cl(cfg, storage_kind::mixed, cfg.master_copy);
        cuda::gpu_store gs(cfg, storage_kind::mixed, cfg.master_copy, pool, nullptr);
        cuda::gpu_ops ops;
        const int n = 517;
        auto k = randn(size_t(n) * 128, 1), v = randn(size_t(n) * 128, 2);
        cl.append(n, k.data(), v.data());
        gs.append(n, k.data(), v.data(), k.data(), v.data(), ops);
        host_execute(ops, cfg);
        pool.commit();
        std::mt19937 rng(3);
        for (int round = 0; round < 30; ++round) {
            std::vector<std::pair<uint32_t, kv_format>> plan;
            for (int i = 0; i < 120; ++i) plan.emplace_back(rng() % uint32_t(n), kv_format(rng() % 4));
            for (const auto& [p, f] : plan) cl.move(p, f);
            std::map<uint32_t, size_t> seen;
            std::vector<std::vector<std::pair<uint32_t, kv_format>>> rounds;
            for (const auto& e : plan) {
                const size_t r = seen[e.first]++;
                if (rounds.size() <= r) rounds.resize(r + 1);
                rounds[r].push_back(e);
            }
            for (const auto& r : rounds) {
                const std::vector<half_bits> master = gs.master_rows(r);
                gs.move_round(r, master.data(), ops);
                host_execute(ops, cfg);
                pool.commit();
            }
            if (round % 10 == 9) {
                auto k2 = randn(size_t(7) * 128, 10 + round), v2 = randn(size_t(7) * 128, 20 + round);
                cl.append(7, k2.data(), v2.data());
                gs.append(7, k2.data(), v2.data(), k2.data(), v2.data(), ops);
                host_execute(ops, cfg);
            }
        }
        compare_stores(cl, gs, cfg, "moves");
    }
    for (storage_kind kind : {storage_kind::kivi2, storage_kind::kivi4}) {  // KIVI groups, token by token
        engine_config kc = cfg;
        kc.master_copy = false;
        layer_store cl(kc, kind, kc.master_copy);
        cuda::gpu_store gs(kc, kind, kc.master_copy, pool, nullptr);
        cuda::gpu_ops ops;
        auto k = randn(size_t(400) * 128, 5), v = randn(size_t(400) * 128, 6);
        for (int i = 0; i < 400; i += (i < 300 ? 1 : 37)) {
            const int rows = i < 300 ? 1 : std::min(37, 400 - i);
            cl.append(rows, &k[size_t(i) * 128], &v[size_t(i) * 128]);
            cl.flush_kivi_groups();
            gs.append(rows, &k[size_t(i) * 128], &v[size_t(i) * 128], &k[size_t(i) * 128], &v[size_t(i) * 128], ops);
            host_execute(ops, kc);
            gs.flush_kivi_groups(ops);
            host_execute(ops, kc);
            pool.commit();
        }
        CHECK(cl.n_groups() == gs.n_groups());
        compare_stores(cl, gs, kc, kind == storage_kind::kivi2 ? "kivi2" : "kivi4");
    }
}

// ---------------------------------------------------------------------------
// GPU: write kernels, bit for bit.

TEST(gpu_convert_matches_cpu_bit_for_bit) {
    if (!g_have_gpu) return;
    for (int D : {64, 128, 256})
        for (quant_mode m : {quant_mode::symmetric, quant_mode::asymmetric}) {
            const int n = 96;  // vectors
            const auto x = randn(size_t(n) * D, 11 + D, 2.f);
            float* dx = nullptr;
            uint8_t* drows = nullptr;
            cuda::convert_item* ditems = nullptr;
            const size_t rb = size_t(2) * D, pb = 8;  // room for any row (fp16) and params
            cudaMalloc(&dx, x.size() * 4);
            cudaMalloc(&drows, size_t(n) * 4 * (rb + pb));  // [4 stages][n][row + params]
            cudaMalloc(&ditems, size_t(n) * sizeof(cuda::convert_item));
            cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice);
            for (kv_format f0 : {kv_format::fp16, kv_format::int8, kv_format::int4, kv_format::int2}) {
                // stage 0: f32 -> f0; stage 1: f0 -> each lower format in turn (a "move down")
                for (kv_format f1 : k_quantized) {
                    if (format_bits(f1) > format_bits(f0)) continue;
                    std::vector<cuda::convert_item> items(static_cast<size_t>(n));
                    auto at = [&](int stage, int i) { return drows + (size_t(stage) * n + size_t(i)) * (rb + pb); };
                    for (int i = 0; i < n; ++i) {
                        cuda::convert_item& it = items[size_t(i)];
                        it.src = dx + size_t(i) * D;
                        it.dst_row = at(0, i);
                        it.dst_params = reinterpret_cast<half_bits*>(at(0, i) + rb);
                        it.dst_fmt = uint8_t(f0);
                        it.dst_mode = uint8_t(m);
                    }
                    cudaMemcpy(ditems, items.data(), items.size() * sizeof(items[0]), cudaMemcpyHostToDevice);
                    cuda::convert_vectors(ditems, n, D, nullptr);
                    for (int i = 0; i < n; ++i) {
                        cuda::convert_item& it = items[size_t(i)];
                        it.src = at(0, i);
                        it.src_params = reinterpret_cast<half_bits*>(at(0, i) + rb);
                        it.src_fmt = uint8_t(f0);
                        it.src_mode = uint8_t(m);
                        it.dst_row = at(1, i);
                        it.dst_params = reinterpret_cast<half_bits*>(at(1, i) + rb);
                        it.dst_fmt = uint8_t(f1);
                    }
                    cudaMemcpy(ditems, items.data(), items.size() * sizeof(items[0]), cudaMemcpyHostToDevice);
                    cuda::convert_vectors(ditems, n, D, nullptr);
                    std::vector<uint8_t> got(size_t(n) * 4 * (rb + pb));
                    CHECK(cudaMemcpy(got.data(), drows, got.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
                    int bad = 0;
                    for (int i = 0; i < n; ++i) {
                        std::vector<uint8_t> r0(rb, 0), r1(rb, 0);
                        half_bits p0[2] = {0, 0}, p1[2] = {0, 0};
                        std::vector<float> y(static_cast<size_t>(D));
                        quantize_vector(f0, m, &x[size_t(i) * D], D, r0.data(), p0);
                        dequantize_vector(f0, m, r0.data(), p0, D, y.data());
                        quantize_vector(f1, m, y.data(), D, r1.data(), p1);
                        const uint8_t* g0 = &got[size_t(i) * (rb + pb)];
                        const uint8_t* g1 = &got[(size_t(n) + size_t(i)) * (rb + pb)];
                        const size_t np0 = size_t(params_per_vector(f0, m)) * 2, np1 = size_t(params_per_vector(f1, m)) * 2;
                        if (std::memcmp(g0, r0.data(), size_t(row_bytes(f0, D))) || std::memcmp(g0 + rb, p0, np0) ||
                            std::memcmp(g1, r1.data(), size_t(row_bytes(f1, D))) || std::memcmp(g1 + rb, p1, np1))
                            ++bad;
                    }
                    CHECK_MSG(bad == 0, "convert D=" + std::to_string(D) + " " + k_format_traits[int(f0)].name + "->" +
                                            k_format_traits[int(f1)].name + ": " + std::to_string(bad) + " vectors differ");
                }
            }
            cudaFree(dx);
            cudaFree(drows);
            cudaFree(ditems);
        }
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
}

// ---------------------------------------------------------------------------
// GPU engine vs CPU engine (scalar reference kernel) on a grid.

namespace {

enum mix_kind { mix_random = 0, mix_fp16, mix_int8, mix_int4, mix_int2, mix_beta25, mix_none };

struct grid_case {
    const char* name;
    int hq, hkv, D, n_prefix, n_rows, batch;
    storage_kind kind = storage_kind::mixed;
    mix_kind mix = mix_random;
    bool int8q = true;
    quant_mode mode = quant_mode::symmetric;
    int block_tokens = 32;
    bool master = false;
    bool rotate = false;  // rotate_kv: the host-side wrapper over both backends
};

// Plan over n tokens: sinks (4) and the newest 64 stay fp16.
void make_plan(mix_kind mix, size_t n, uint32_t seed, std::vector<uint32_t>& pos, std::vector<uint8_t>& fmt) {
    pos.clear();
    fmt.clear();
    if (mix == mix_none) return;
    std::mt19937 rng(seed);
    for (size_t i = 4; i + 64 < n; ++i) {
        uint8_t f;
        switch (mix) {
            case mix_fp16: continue;
            case mix_int8: f = 1; break;
            case mix_int4: f = 2; break;
            case mix_int2: f = 3; break;
            case mix_beta25: {
                const uint32_t u = rng() % 100;  // 12 % int8, 48 % int4, 40 % int2
                f = u < 12 ? 1 : u < 60 ? 2 : 3;
                break;
            }
            default: f = uint8_t(1 + rng() % 3);
        }
        pos.push_back(uint32_t(i));
        fmt.push_back(f);
    }
}

engine_config case_config(const grid_case& c) {
    engine_config cfg;
    cfg.n_layers = 1;
    cfg.n_q_heads = c.hq;
    cfg.n_kv_heads = c.hkv;
    cfg.head_dim = c.D;
    cfg.block_tokens = c.block_tokens;
    cfg.mode = c.mode;
    cfg.query_int8 = c.int8q;
    cfg.master_copy = c.master;
    cfg.rotate_kv = c.rotate;
    cfg.fast_path = false;  // the scalar reference kernel
    return cfg;
}

struct step_result {
    double out_err = 0, probs_err = 0;
};

// One attention step on both engines; returns the worst errors over the batch.
step_result attend_both(kv_backend& cpu, kv_backend& gpu, const std::vector<uint32_t>& cs, const std::vector<uint32_t>& gs,
                        const grid_case& c, int n_rows, uint32_t seed, std::vector<float>* out0, std::vector<float>* q0) {
    const size_t qn = size_t(n_rows) * c.hq * c.D, kvn = size_t(n_rows) * c.hkv * c.D;
    std::vector<std::vector<float>> q, k, v, oc, og, pc, pg;
    std::vector<attend_request> rc, rg;
    for (size_t b = 0; b < cs.size(); ++b) {
        q.push_back(randn(qn, seed + 7 * uint32_t(b)));
        k.push_back(randn(kvn, seed + 7 * uint32_t(b) + 1));
        v.push_back(randn(kvn, seed + 7 * uint32_t(b) + 2));
        const size_t n_after = cpu.sequence_length(cs[b], 0) + size_t(n_rows);
        oc.emplace_back(qn);
        og.emplace_back(qn);
        pc.emplace_back(size_t(n_rows) * n_after);
        pg.emplace_back(size_t(n_rows) * n_after);
    }
    for (size_t b = 0; b < cs.size(); ++b) {
        rc.push_back({cs[b], 0, n_rows, q[b].data(), k[b].data(), v[b].data(), oc[b].data(), pc[b].data()});
        rg.push_back({gs[b], 0, n_rows, q[b].data(), k[b].data(), v[b].data(), og[b].data(), pg[b].data()});
    }
    cpu.attend(rc.data(), rc.size());
    gpu.attend(rg.data(), rg.size());
    step_result r;
    for (size_t b = 0; b < cs.size(); ++b) {
        r.out_err = std::max(r.out_err, max_rel(og[b].data(), oc[b].data(), qn));
        r.probs_err = std::max(r.probs_err, max_rel(pg[b].data(), pc[b].data(), pc[b].size()));
    }
    if (out0) *out0 = og[0];
    if (q0) *q0 = q[0];
    return r;
}

void run_case(const grid_case& c, uint32_t seed) {
    const engine_config cfg = case_config(c);
    auto cpu = make_cpu_backend(cfg);
    auto gpu = make_backend(cfg, device_choice::cuda);
    std::vector<uint32_t> cs, gs;
    const size_t kvn = size_t(c.n_prefix) * c.hkv * c.D;
    std::vector<float> k0, v0;  // batch 0's prefix, for the float64 reference
    for (int b = 0; b < c.batch; ++b) {
        // Alternate γ across the batch: each request folds importance with its own.
        const float gamma = b % 2 ? 0.5f : cfg.gamma;
        cs.push_back(cpu->create_sequence(c.kind, gamma));
        gs.push_back(gpu->create_sequence(c.kind, gamma));
        if (c.n_prefix == 0) continue;
        auto k = randn(kvn, seed + 100 + uint32_t(b)), v = randn(kvn, seed + 200 + uint32_t(b));
        for (size_t i = 0; i < k.size(); i += 3) k[i] += 2.f;  // an outlier-ish channel pattern
        cpu->append(cs.back(), 0, c.n_prefix, k.data(), v.data());
        gpu->append(gs.back(), 0, c.n_prefix, k.data(), v.data());
        if (b == 0) k0 = k, v0 = v;
        if (c.kind == storage_kind::mixed) {
            std::vector<uint32_t> pos;
            std::vector<uint8_t> fmt;
            make_plan(c.mix, size_t(c.n_prefix), seed + 300 + uint32_t(b), pos, fmt);
            const move_result mc = cpu->apply_plan(cs.back(), 0, pos.data(), fmt.data(), pos.size());
            const move_result mg = gpu->apply_plan(gs.back(), 0, pos.data(), fmt.data(), pos.size());
            CHECK(mc.tokens_changed == mg.tokens_changed && mc.bytes_moved == mg.bytes_moved);
        }
    }
    std::vector<float> out0, q0;
    const step_result s1 = attend_both(*cpu, *gpu, cs, gs, c, c.n_rows, seed + 400, &out0, &q0);
    // The KV as stored (bit-exact), importance, accounting.
    const size_t n_ctx = size_t(c.n_prefix) + size_t(c.n_rows);
    std::vector<float> kc(n_ctx * c.hkv * c.D), vc(kc.size()), kg(kc.size()), vg(kc.size());
    cpu->read_kv(cs[0], 0, kc.data(), vc.data());
    gpu->read_kv(gs[0], 0, kg.data(), vg.data());
    const bool kv_exact = std::memcmp(kc.data(), kg.data(), kc.size() * 4) == 0 &&
                          std::memcmp(vc.data(), vg.data(), vc.size() * 4) == 0;
    std::vector<float> ic(n_ctx), ig(n_ctx), ec(n_ctx * 3), eg(n_ctx * 3);
    std::vector<uint8_t> fc(n_ctx), fg(n_ctx);
    cpu->report(cs[0], 0, {ic.data(), fc.data(), ec.data()});
    gpu->report(gs[0], 0, {ig.data(), fg.data(), eg.data()});
    double imp_err = max_rel(ig.data(), ic.data(), n_ctx);
    const double sq_err = max_rel(eg.data(), ec.data(), eg.size());
    for (size_t b = 1; b < cs.size(); ++b) {  // the other sequences, some with another γ
        std::vector<float> ib(n_ctx), gb(n_ctx);
        cpu->report(cs[b], 0, {ib.data(), nullptr, nullptr});
        gpu->report(gs[b], 0, {gb.data(), nullptr, nullptr});
        imp_err = std::max(imp_err, max_rel(gb.data(), ib.data(), n_ctx));
    }
    const memory_stats mc = cpu->stats(cs[0]), mg = gpu->stats(gs[0]);
    bool stats_ok = mc.payload == mg.payload && mc.params == mg.params && mc.tokens == mg.tokens &&
                    mc.kivi_tokens == mg.kivi_tokens && mc.fp16_equivalent == mg.fp16_equivalent;
    for (int f = 0; f < n_formats; ++f) stats_ok = stats_ok && mc.tokens_by_format[f] == mg.tokens_by_format[f];
    // A second, decode step over the updated state.
    const step_result s2 = attend_both(*cpu, *gpu, cs, gs, c, 1, seed + 500, nullptr, nullptr);

    // Against float64 on the original (unquantised) values: the format's own error.
    double ref_nmse = -1.0;
    const double work = double(n_ctx) * c.hq * c.D * c.n_rows;
    if (c.n_prefix > 0 && work < 4e8) {
        std::vector<float> kk(k0), vv(v0);
        auto kn = randn(size_t(c.n_rows) * c.hkv * c.D, seed + 400 + 1), vn = randn(kn.size(), seed + 400 + 2);
        kk.insert(kk.end(), kn.begin(), kn.end());
        vv.insert(vv.end(), vn.begin(), vn.end());
        ref_problem rp{c.n_rows, c.hq, c.hkv, c.D, int(n_ctx), q0.data(), nullptr, nullptr, kk.data(), vv.data()};
        std::vector<double> want, want_probs;
        reference_attention(rp, want, want_probs);
        ref_nmse = nmse(out0.data(), want.data(), want.size());
    }
    const double tol = 2e-4;  // float32 vs float32, different summation orders and exp
    const bool pass = s1.out_err <= tol && s1.probs_err <= tol && s2.out_err <= tol && s2.probs_err <= tol &&
                      imp_err <= tol && sq_err <= 1e-5 && kv_exact && stats_ok && fc == fg;
    char msg[400];
    std::snprintf(msg, sizeof msg,
                  "%s: out %.1e/%.1e probs %.1e/%.1e importance %.1e sq_error %.1e kv_exact %d stats %d formats %d",
                  c.name, s1.out_err, s2.out_err, s1.probs_err, s2.probs_err, imp_err, sq_err, int(kv_exact),
                  int(stats_ok), int(fc == fg));
    CHECK_MSG(pass, msg);
    json_record r;
    r.str("check", "engine_parity").str("case", c.name).num("hq", c.hq).num("hkv", c.hkv).num("head_dim", c.D);
    r.num("n_prefix", c.n_prefix).num("n_rows", c.n_rows).num("batch", c.batch).num("kind", int(c.kind));
    r.num("mix", int(c.mix)).boolean("query_int8", c.int8q).num("block_tokens", c.block_tokens);
    r.num("out_rel_err", std::max(s1.out_err, s2.out_err)).num("probs_rel_err", std::max(s1.probs_err, s2.probs_err));
    r.num("importance_rel_err", imp_err).num("sq_error_rel_err", sq_err).boolean("kv_bit_exact", kv_exact);
    r.boolean("stats_equal", stats_ok).num("nmse_vs_float64_unquantised", ref_nmse);
    r.num("metadata_cpu", double(mc.metadata)).num("metadata_gpu", double(mg.metadata)).num("beta_gpu", mg.beta());
    r.boolean("pass", pass);
    add_record("checks", r);
    std::printf("  %-28s out %.1e probs %.1e imp %.1e nmse(f64) %.1e beta %.3f %s\n", c.name,
                std::max(s1.out_err, s2.out_err), std::max(s1.probs_err, s2.probs_err), imp_err, ref_nmse, mg.beta(),
                pass ? "ok" : "FAIL");
}

}  // namespace

TEST(gpu_engine_matches_cpu_engine) {
    if (!g_have_gpu) return;
    std::vector<grid_case> grid = {
        {"mha_d64_n1", 4, 4, 64, 0, 1, 1},
        {"mha_d64_n100_b4", 8, 8, 64, 100, 1, 4},
        {"gqa4_d128_n1000_b32", 32, 8, 128, 1000, 1, 32},
        {"gqa8_d128_n4000_b8", 16, 2, 128, 4000, 1, 8},
        {"gqa7_d128_n3000_b4", 28, 4, 128, 3000, 1, 4},
        {"gqa3_d64_n2000_b2", 12, 4, 64, 2000, 1, 2},
        {"gqa4_d256_n500_b4", 8, 2, 256, 500, 1, 4},
        {"prefill_gqa4_d64", 8, 2, 64, 300, 64, 2},
        {"prefill_gqa4_d128", 32, 8, 128, 2000, 100, 1},
        {"prefill_d256_rows17", 8, 2, 256, 300, 17, 1},
        {"uniform_fp16", 32, 8, 128, 4096, 1, 4, storage_kind::mixed, mix_fp16},
        {"uniform_int8", 32, 8, 128, 4096, 1, 4, storage_kind::mixed, mix_int8},
        {"uniform_int4", 32, 8, 128, 4096, 1, 4, storage_kind::mixed, mix_int4},
        {"uniform_int2", 32, 8, 128, 4096, 1, 4, storage_kind::mixed, mix_int2},
        {"beta25_d128_n8192", 32, 8, 128, 8192, 1, 4, storage_kind::mixed, mix_beta25},
        {"kivi2_d128", 32, 8, 128, 5000, 1, 4, storage_kind::kivi2, mix_none},
        {"kivi4_d64_prefill", 8, 2, 64, 400, 40, 1, storage_kind::kivi4, mix_none},
        {"float_queries", 8, 2, 128, 1000, 1, 4, storage_kind::mixed, mix_random, false},
        {"asymmetric", 8, 2, 128, 1000, 3, 2, storage_kind::mixed, mix_random, true, quant_mode::asymmetric},
        {"block16", 8, 2, 64, 700, 1, 3, storage_kind::mixed, mix_random, true, quant_mode::symmetric, 16},
        {"block64", 8, 2, 128, 700, 5, 3, storage_kind::mixed, mix_random, true, quant_mode::symmetric, 64},
        {"n64k_gqa4_d128", 32, 8, 128, 65535, 1, 1, storage_kind::mixed, mix_beta25},
        {"rotated_kv_d128", 8, 2, 128, 1000, 3, 2, storage_kind::mixed, mix_random, true, quant_mode::symmetric, 32, false, true},
    };
    if (g_quick) grid.resize(8);
    uint32_t seed = 1000;
    for (const grid_case& c : grid) {
        try {
            run_case(c, seed += 1000);
        } catch (const std::exception& e) {
            record_failure(__FILE__, __LINE__, std::string(c.name) + " threw: " + e.what());
            add_record("checks", json_record().str("check", "engine_parity").str("case", c.name).str("error", e.what()).boolean("pass", false));
        }
    }
}

// The timings' beta = 0.25 mix (bench-mix.h) on the CPU engine: the plan
// must land on the budget and use all three widths, or the GPU run's headline
// would time something other than what the allocator chooses.
TEST(bench_mix_is_the_allocators_beta25) {
    engine_config cfg;
    cfg.n_layers = 1, cfg.n_q_heads = 32, cfg.n_kv_heads = 8, cfg.head_dim = 128;
    auto eng = make_cpu_backend(cfg);
    const int n = 4096, lo = k_sinks, hi = n - k_window;
    const uint32_t id = eng->create_sequence(storage_kind::mixed);
    const auto k = randn(size_t(n) * 8 * 128, 7), v = randn(size_t(n) * 8 * 128, 8);
    eng->append(id, 0, n, k.data(), v.data());
    std::vector<float> imp(n), err(size_t(n) * 3);
    std::vector<uint8_t> cur(n);
    token_report rep;
    rep.importance = imp.data(), rep.format = cur.data(), rep.sq_error = err.data();
    eng->report(id, 0, rep);
    const std::vector<uint8_t> plan = allocator_plan(cfg, heavy_tailed_importance(n, 11), err, lo, hi);
    std::vector<uint32_t> pos;
    std::vector<uint8_t> fmt;
    for (int i = lo; i < hi; ++i) pos.push_back(uint32_t(i)), fmt.push_back(plan[size_t(i)]);
    eng->apply_plan(id, 0, pos.data(), fmt.data(), pos.size());
    const memory_stats st = eng->stats(id);
    const double f8 = double(st.tokens_by_format[1]) / n, f4 = double(st.tokens_by_format[2]) / n;
    const double f2 = double(st.tokens_by_format[3]) / n;
    std::printf("    allocator beta 0.25 mix: beta %.4f, int8 %.1f %%, int4 %.1f %%, int2 %.1f %%\n", st.beta(),
                100 * f8, 100 * f4, 100 * f2);
    CHECK_MSG(st.beta() > 0.225 && st.beta() <= 0.25, "the allocator mix misses beta = 0.25");
    CHECK(f8 > 0.01 && f4 > 0.05 && f2 > 0.05);
    CHECK(st.tokens_by_format[0] == size_t(k_sinks + k_window));
    add_record("checks", json_record().str("check", "bench_mix_beta25").num("beta", st.beta()).num("frac_int8", f8)
                             .num("frac_int4", f4).num("frac_int2", f2).boolean("pass", st.beta() > 0.225 && st.beta() <= 0.25));
}

TEST(gpu_moves_up_and_down_with_master_copy) {
    if (!g_have_gpu) return;
    grid_case c{"master", 8, 2, 128, 517, 1, 1};
    c.master = true;
    const engine_config cfg = case_config(c);
    auto cpu = make_cpu_backend(cfg);
    auto gpu = make_backend(cfg, device_choice::cuda);
    const uint32_t sc = cpu->create_sequence(storage_kind::mixed), sg = gpu->create_sequence(storage_kind::mixed);
    const int n = c.n_prefix;
    auto k = randn(size_t(n) * 256, 1), v = randn(size_t(n) * 256, 2);
    cpu->append(sc, 0, n, k.data(), v.data());
    gpu->append(sg, 0, n, k.data(), v.data());
    std::mt19937 rng(3);
    bool same_moves = true;
    for (int round = 0; round < 20; ++round) {
        std::vector<uint32_t> pos;
        std::vector<uint8_t> fmt;
        for (int i = 0; i < 100; ++i) {  // duplicates included: they must act in order
            pos.push_back(rng() % uint32_t(n));
            fmt.push_back(uint8_t(rng() % 4));
        }
        const move_result a = cpu->apply_plan(sc, 0, pos.data(), fmt.data(), pos.size());
        const move_result b = gpu->apply_plan(sg, 0, pos.data(), fmt.data(), pos.size());
        same_moves = same_moves && a.tokens_changed == b.tokens_changed && a.bytes_moved == b.bytes_moved;
    }
    CHECK(same_moves);
    std::vector<float> kc(size_t(n) * 256), vc(kc.size()), kg(kc.size()), vg(kc.size());
    cpu->read_kv(sc, 0, kc.data(), vc.data());
    gpu->read_kv(sg, 0, kg.data(), vg.data());
    CHECK_MSG(std::memcmp(kc.data(), kg.data(), kc.size() * 4) == 0 && std::memcmp(vc.data(), vg.data(), vc.size() * 4) == 0,
              "moves with master copy: stored KV differs from the CPU's");
    const memory_stats a = cpu->stats(sc), b = gpu->stats(sg);
    CHECK(a.payload == b.payload && a.params == b.params && a.master == b.master);
    for (int f = 0; f < n_formats; ++f) CHECK(a.tokens_by_format[f] == b.tokens_by_format[f]);
    add_record("checks", json_record().str("check", "moves_with_master").boolean("pass", same_moves));
}

TEST(gpu_limits_are_errors_not_crashes) {
    if (!g_have_gpu) return;
    engine_config c = case_config({"limits", 4, 2, 64, 0, 1, 1});
    c.memory_limit_bytes = 60000;
    auto eng = make_backend(c, device_choice::cuda);
    const uint32_t s = eng->create_sequence(storage_kind::mixed);
    auto k = randn(100 * 128, 1), v = randn(100 * 128, 2);
    eng->append(s, 0, 32, k.data(), v.data());
    const size_t held = eng->total_held_bytes();
    auto code_of = [&](auto&& fn) {
        try {
            fn();
        } catch (const engine_error& e) {
            return int(e.code);
        }
        return -1;
    };
    CHECK(code_of([&] { eng->append(s, 0, 100, k.data(), v.data()); }) == int(error_code::resource_exhausted));
    CHECK(eng->total_held_bytes() == held && eng->sequence_length(s, 0) == 32);
    CHECK(code_of([&] { eng->stats(999); }) == int(error_code::not_found));
    // Real device exhaustion: a block bigger than any card.
    cuda::device_pool pool(nullptr);
    CHECK(code_of([&] { pool.reserve(size_t(1) << 46, 1); }) == int(error_code::resource_exhausted));
    eng->append(s, 0, 1, k.data(), v.data());  // the engine still works afterwards
    CHECK(eng->sequence_length(s, 0) == 33);
    engine_config bad = c;
    bad.head_dim = 96;
    CHECK(code_of([&] { make_backend(bad, device_choice::cuda); }) == int(error_code::invalid_argument));
}

bool smartkv::testing::emulation_wanted() { return g_emulate; }

int main(int argc, char** argv) {
    const char* filter = "";
    const char* json_path = nullptr;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
        else if (!std::strcmp(argv[i], "--quick")) g_quick = true;
        else if (!std::strcmp(argv[i], "--emulate")) g_emulate = true;
        else filter = argv[i];
    }
    g_have_gpu = cuda_device_present();
    g_emulate = g_emulate || !g_have_gpu;
    cudaDeviceProp prop{};
    std::string device = "none";
    if (g_have_gpu && cudaGetDeviceProperties(&prop, 0) == cudaSuccess) device = prop.name;
    std::printf("smartkv-gpu-check: CUDA backend %s, device: %s\n", cuda_backend_compiled() ? "compiled" : "absent",
                device.c_str());
    if (!g_have_gpu) std::printf("no CUDA device: GPU checks and timings skipped (CPU-side checks only)\n");
    g_json.path = json_path;
    g_json.device = device;
    g_json.gpu_present = g_have_gpu;
    json_write();  // a file from the start: "complete": false until the end
    const run_counts counts = run_registered(filter, [](const char* name) {
        if (!g_have_gpu && std::strncmp(name, "gpu_", 4) == 0) return " (skipped: no GPU)";
        if (!g_emulate && std::strstr(name, "emulated")) return " (skipped: GPU present; --emulate runs it)";
        return "";
    });
    int passed = counts.passed, failed = counts.failed;
    if (g_have_gpu && (!*filter || std::strstr("timings", filter))) {
        try {
            run_gpu_benchmarks(g_quick);
        } catch (const std::exception& e) {
            std::printf("FAIL timings threw: %s\n", e.what());
            add_record("timings", json_record().str("error", e.what()));
            ++failed;
        }
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    g_json.complete = true;
    g_json.passed = passed;
    g_json.failed = failed;
    json_write();
    return failed ? 1 : 0;
}
