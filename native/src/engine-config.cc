#include "js-args.h"

namespace smartkv_node {

namespace {

double number_field(const Napi::Object& o, const char* key, double fallback) {
    const Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return fallback;
    if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("config.") + key + " must be a number");
    return v.As<Napi::Number>().DoubleValue();
}

bool bool_field(const Napi::Object& o, const char* key, bool fallback) {
    const Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return fallback;
    if (!v.IsBoolean()) throw Napi::TypeError::New(o.Env(), std::string("config.") + key + " must be a boolean");
    return v.As<Napi::Boolean>().Value();
}

std::string string_field(const Napi::Object& o, const char* key, const std::string& fallback) {
    const Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return fallback;
    if (!v.IsString()) throw Napi::TypeError::New(o.Env(), std::string("config.") + key + " must be a string");
    return v.As<Napi::String>().Utf8Value();
}

}  // namespace

backend_spec parse_backend_spec(const Napi::Object& o) {
    backend_spec s;
    smartkv::engine_config& c = s.config;
    c.n_layers = int(number_field(o, "layers", 0));
    c.n_q_heads = int(number_field(o, "qHeads", 0));
    c.n_kv_heads = int(number_field(o, "kvHeads", 0));
    c.head_dim = int(number_field(o, "headDim", 0));
    c.block_tokens = int(number_field(o, "blockTokens", c.block_tokens));
    c.mode = number_field(o, "quant", 0) == 1 ? smartkv::quant_mode::asymmetric : smartkv::quant_mode::symmetric;
    c.gamma = float(number_field(o, "gamma", c.gamma));
    c.master_copy = bool_field(o, "masterCopy", c.master_copy);
    c.master_dir = string_field(o, "masterDir", c.master_dir);
    c.query_int8 = bool_field(o, "queryInt8", c.query_int8);
    c.fast_path = bool_field(o, "fastPath", c.fast_path);
    c.memory_limit_bytes = size_t(number_field(o, "memoryLimitBytes", 0));
    c.n_threads = int(number_field(o, "threads", 0));
    c.kivi_residual = int(number_field(o, "kiviResidual", c.kivi_residual));
    c.rotate_kv = bool_field(o, "rotateKv", c.rotate_kv);
    const int device = int(number_field(o, "device", 0));
    s.device = device == 1 ? smartkv::device_choice::cuda
               : device == 2 ? smartkv::device_choice::auto_select
                             : smartkv::device_choice::cpu;
    return s;
}

}  // namespace smartkv_node
