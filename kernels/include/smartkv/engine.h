// The KV engine's public C++ interface: what the Node addon and the C++
// test/bench executable call. A backend (CPU now, CUDA beside it) owns the KV
// of its sequences; callers pass plain pointers that stay valid for the call.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "smartkv/formats.h"

namespace smartkv {

// Error codes map one-to-one onto gRPC status codes at the service boundary.
enum class error_code { invalid_argument, not_found, resource_exhausted, failed_precondition, internal };

const char* error_code_name(error_code c);

struct engine_error : std::runtime_error {
    error_code code;
    engine_error(error_code c, const std::string& msg) : std::runtime_error(msg), code(c) {}
};

// How a sequence stores its KV. `mixed` is SmartKV's per-token formats; the
// KIVI kinds are the baseline (per-channel keys over 32-token groups,
// per-token values, a 16-bit residual window of the newest tokens). The
// `_rotated` KIVI kinds store the same KIVI over rotated K and V when
// rotate_kv is set (the ablation row "KIVI with SmartKV's rotation").
enum class storage_kind : uint8_t { mixed = 0, kivi2 = 1, kivi4 = 2, kivi2_rotated = 3, kivi4_rotated = 4 };

inline bool is_known_storage(storage_kind kind) { return uint8_t(kind) <= uint8_t(storage_kind::kivi4_rotated); }

// The code width of a KIVI kind (int2 or int4).
inline kv_format kivi_format(storage_kind kind) {
    return kind == storage_kind::kivi2 || kind == storage_kind::kivi2_rotated ? kv_format::int2 : kv_format::int4;
}

// Whether a sequence can raise precision again. downgrade_only keeps no
// master copy: a token's current format is an upper bound, and the bytes held
// are all the bytes. reversible keeps an FP16 master copy of every token in a
// separate, counted tier (master-tier.h: a memory-mapped file for the CPU
// cache, host memory for CUDA), outside the hot cache, β and the memory limit.
enum class precision_mode : uint8_t { downgrade_only = 0, reversible = 1 };

struct engine_config {
    int n_layers = 0;
    int n_q_heads = 0;
    int n_kv_heads = 0;  // n_q_heads % n_kv_heads == 0 (grouped-query attention)
    int head_dim = 0;    // multiple of 32
    int block_tokens = 32;
    quant_mode mode = quant_mode::symmetric;
    float gamma = 0.9f;           // importance EMA: I <- gamma*I + (1-gamma)*a
    bool master_copy = false;     // the precision mode of sequences created without one:
                                  // true = reversible (FP16 master copy), false = downgrade-only
    std::string master_dir;       // CPU: directory of the master tier's files (empty: $TMPDIR or /tmp)
    bool query_int8 = true;       // quantise q to int8 per head for integer dot products
    bool fast_path = true;        // false: the portable scalar reference everywhere
    size_t memory_limit_bytes = 0;  // 0: no limit
    int n_threads = 0;              // 0: all hardware threads
    int kivi_residual = 128;        // KIVI: newest tokens kept at 16-bit
    bool rotate_kv = false;         // SmartKV-format sequences store K and V rotated (randomised
                                    // Hadamard, smartkv/kv-rotation.h) and 2-bit vectors with a
                                    // clipped scale: same attention, much better low-bit K and V
};

// One sequence's share of a batched attention call. The n_rows new tokens are
// appended first (at positions n .. n+n_rows-1), then every row attends to all
// tokens up to and including its own position.
struct attend_request {
    uint32_t seq = 0;
    int layer = 0;
    int n_rows = 0;
    const float* q = nullptr;      // [n_rows][n_q_heads][head_dim] f32
    const float* k_new = nullptr;  // [n_rows][n_kv_heads][head_dim] f32
    const float* v_new = nullptr;  // [n_rows][n_kv_heads][head_dim] f32
    float* out = nullptr;          // [n_rows][n_q_heads][head_dim] f32, written
    float* probs = nullptr;        // optional [n_rows][n_after] f32 by position: attention
                                   // probability averaged over all q-heads (n_after = n + n_rows)
};

// Exact bytes held for one sequence (all layers), from what is allocated.
struct memory_stats {
    size_t payload = 0;           // packed codes and fp16 rows, whole blocks
    size_t params = 0;            // scales and zero points
    size_t metadata = 0;          // positions, importance, token maps, block tables
    size_t fp16_equivalent = 0;   // the same tokens as FP16 K and V
    size_t master = 0;            // FP16 master copy of a reversible sequence, in its own tier
                                  // (CPU: file-backed; CUDA: host memory); outside beta and the limit
    size_t tokens = 0;            // tokens per layer summed over layers
    size_t tokens_by_format[n_formats] = {0, 0, 0, 0};  // summed over layers
    size_t kivi_tokens = 0;       // tokens in KIVI groups (KIVI sequences)
    size_t held() const { return payload + params + metadata; }  // the hot bytes
    double beta() const { return fp16_equivalent ? double(held()) / double(fp16_equivalent) : 0.0; }
};

// Per-token view for the allocator, by position.
struct token_report {
    float* importance = nullptr;  // [n] f32
    uint8_t* format = nullptr;    // [n] kv_format
    float* sq_error = nullptr;    // [n][3] f32 modelled squared error at int8, int4, int2 (K+V, all heads)
};

struct move_result {
    size_t tokens_changed = 0;
    size_t bytes_moved = 0;  // bytes written into target slots
};

class kv_backend {
public:
    virtual ~kv_backend() = default;
    virtual const engine_config& config() const = 0;
    virtual const char* name() const = 0;

    // gamma: this sequence's importance EMA factor in [0, 1) (a request may
    // choose its own); mode: whether it keeps a master copy. The shorter forms
    // take the engine's defaults (config().gamma, config().master_copy).
    virtual uint32_t create_sequence(storage_kind kind, float gamma, precision_mode mode) = 0;
    uint32_t create_sequence(storage_kind kind, float gamma) { return create_sequence(kind, gamma, default_mode()); }
    uint32_t create_sequence(storage_kind kind) { return create_sequence(kind, config().gamma); }
    precision_mode default_mode() const {
        return config().master_copy ? precision_mode::reversible : precision_mode::downgrade_only;
    }
    virtual void free_sequence(uint32_t seq) = 0;
    virtual bool has_sequence(uint32_t seq) const = 0;
    virtual size_t sequence_length(uint32_t seq, int layer) const = 0;

    // Appends without attending (e.g. to load a cache); rows as in attend_request.
    virtual void append(uint32_t seq, int layer, int n_rows, const float* k, const float* v) = 0;
    virtual void attend(const attend_request* requests, size_t n_requests) = 0;

    // layer = -1: every layer gets the same plan. Validated whole before any move.
    virtual move_result apply_plan(uint32_t seq, int layer, const uint32_t* positions, const uint8_t* formats,
                                   size_t n) = 0;
    virtual void report(uint32_t seq, int layer, const token_report& out) const = 0;
    virtual memory_stats stats(uint32_t seq) const = 0;
    virtual size_t total_held_bytes() const = 0;

    // Dequantised K and V by position (tests and parity checks).
    virtual void read_kv(uint32_t seq, int layer, float* k /*[n][H][D]*/, float* v /*[n][H][D]*/) const = 0;
};

// Checks a config and throws engine_error(invalid_argument) naming the field.
void validate_config(const engine_config& cfg);

std::unique_ptr<kv_backend> make_cpu_backend(const engine_config& cfg);

// Whether a sequence of this kind holds rotated K and V (and clipped 2-bit
// scales) under this config: SmartKV-format ones when rotate_kv is set; KIVI
// stays as published unless its kind says rotated. The wrapper and both
// backends decide by this alone.
inline bool stores_rotated(const engine_config& cfg, storage_kind kind) {
    return cfg.rotate_kv && (kind == storage_kind::mixed || kind == storage_kind::kivi2_rotated ||
                             kind == storage_kind::kivi4_rotated);
}

// Wraps a backend so that it holds rotated keys and values
// (smartkv/kv-rotation.h); make_cpu_backend and make_backend apply it when
// cfg.rotate_kv is set.
std::unique_ptr<kv_backend> with_rotated_kv(std::unique_ptr<kv_backend> inner);

// Backend choice for a cache service: `auto_select` takes CUDA when the build
// has it and a device is present, the CPU otherwise (backend-select.cc).
enum class device_choice { cpu, cuda, auto_select };
bool cuda_backend_compiled();
bool cuda_device_present();
std::unique_ptr<kv_backend> make_backend(const engine_config& cfg, device_choice choice);

}  // namespace smartkv
