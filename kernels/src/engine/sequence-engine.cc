// The checks both backends make before they change anything, and the error
// names the service maps onto gRPC status codes.
#include "engine/sequence-engine.h"

#include <string>

namespace smartkv {

namespace {
[[noreturn]] void fail(error_code c, const std::string& msg) { throw engine_error(c, msg); }
}  // namespace

const char* error_code_name(error_code c) {
    switch (c) {
        case error_code::invalid_argument: return "INVALID_ARGUMENT";
        case error_code::not_found: return "NOT_FOUND";
        case error_code::resource_exhausted: return "RESOURCE_EXHAUSTED";
        case error_code::failed_precondition: return "FAILED_PRECONDITION";
        default: return "INTERNAL";
    }
}

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

void check_sequence_args(storage_kind kind, float gamma) {
    if (!is_known_storage(kind))
        fail(error_code::invalid_argument, "unknown storage kind");
    if (!(gamma >= 0.f && gamma < 1.f)) fail(error_code::invalid_argument, "gamma must be in [0, 1)");
}

void check_layer_index(int layer, int n_layers) {
    if (layer < 0 || layer >= n_layers)
        fail(error_code::invalid_argument,
             "layer " + std::to_string(layer) + " is out of range [0, " + std::to_string(n_layers) + ")");
}

void check_append_rows(int n_rows) {
    if (n_rows <= 0) fail(error_code::invalid_argument, "n_rows must be positive");
}

void check_attend_request(size_t index, const attend_request& r) {
    if (r.n_rows <= 0) fail(error_code::invalid_argument, "request " + std::to_string(index) + ": n_rows must be positive");
    if (!r.q || !r.k_new || !r.v_new || !r.out)
        fail(error_code::invalid_argument, "request " + std::to_string(index) + ": q, k_new, v_new and out are required");
}

void fail_repeated_request(const attend_request& r) {
    fail(error_code::invalid_argument, "sequence " + std::to_string(r.seq) + " layer " + std::to_string(r.layer) +
                                           " appears twice in one batch");
}

void check_memory_limit(size_t limit, size_t held, size_t extra) {
    if (limit != 0 && held + extra > limit)
        fail(error_code::resource_exhausted, "KV memory limit reached: holding " + std::to_string(held) +
                                                 " bytes, need " + std::to_string(extra) + " more, limit " +
                                                 std::to_string(limit));
}

layer_span check_plan_target(storage_kind kind, uint32_t seq, int layer, int n_layers) {
    if (kind != storage_kind::mixed)
        fail(error_code::failed_precondition, "sequence " + std::to_string(seq) + " uses KIVI storage; plans do not apply");
    if (layer < -1 || layer >= n_layers)
        fail(error_code::invalid_argument, "layer " + std::to_string(layer) + " is out of range");
    return layer < 0 ? layer_span{0, n_layers} : layer_span{layer, layer + 1};
}

void check_plan_entry(size_t n_held, int layer, uint32_t pos, uint8_t format) {
    if (pos >= n_held)
        fail(error_code::invalid_argument, "plan names token " + std::to_string(pos) + " but layer " +
                                               std::to_string(layer) + " holds " + std::to_string(n_held));
    if (format >= n_formats)
        fail(error_code::invalid_argument,
             "plan gives token " + std::to_string(pos) + " unknown format " + std::to_string(format));
}

void fail_needs_master(uint32_t pos, kv_format from, kv_format to) {
    fail(error_code::failed_precondition, "plan raises token " + std::to_string(pos) + " from " +
                                              k_format_traits[int(from)].name + " to " +
                                              k_format_traits[int(to)].name +
                                              ", which needs the FP16 master copy: the sequence is downgrade-only");
}

}  // namespace smartkv
