#include "model-wrap.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>

#include "engine-wrap.h"
#include "js-args.h"
#include "promise-worker.h"

namespace smartkv_node {

using namespace smartkv;

mapped_file::~mapped_file() {
    if (data) munmap(data, size);
}

namespace {

std::shared_ptr<mapped_file> map_file(Napi::Env env, const std::string& path) {
    const int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) throw make_error(env, error_code::not_found, path + ": cannot open: " + std::strerror(errno));
    struct stat st;
    fstat(fd, &st);
    auto f = std::make_shared<mapped_file>();
    f->size = size_t(st.st_size);
    void* p = mmap(nullptr, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) throw make_error(env, error_code::internal, path + ": mmap failed: " + std::strerror(errno));
    f->data = p;
    return f;
}

// A tensor reference {file, offset, dtype, rows, cols} (checked in weights.ts).
tensor_view view_of(const Napi::Value& v, const std::vector<std::shared_ptr<mapped_file>>& files) {
    if (v.IsNull() || v.IsUndefined()) return {};
    const Napi::Object o = v.As<Napi::Object>();
    const uint32_t file = u32_arg(o.Get("file"), "file");
    const double offset = o.Get("offset").As<Napi::Number>().DoubleValue();
    tensor_view t;
    t.dtype = weight_dtype(u32_arg(o.Get("dtype"), "dtype"));
    t.rows = o.Get("rows").As<Napi::Number>().Int64Value();
    t.cols = o.Get("cols").As<Napi::Number>().Int64Value();
    const size_t bytes = size_t(t.rows * t.cols) * (t.dtype == weight_dtype::f32 ? 4 : 2);
    if (file >= files.size() || size_t(offset) + bytes > files[file]->size)
        throw Napi::RangeError::New(v.Env(), "tensor reference outside its file");
    t.data = static_cast<const uint8_t*>(files[file]->data) + size_t(offset);
    return t;
}

}  // namespace

void model_wrap::define(Napi::Env env, Napi::Object exports) {
    Napi::Function cls = DefineClass(env, "NativeModel",
                                     {InstanceMethod("embed", &model_wrap::embed),
                                      InstanceMethod("preAttention", &model_wrap::pre_attention),
                                      InstanceMethod("postAttention", &model_wrap::post_attention),
                                      InstanceMethod("logits", &model_wrap::logits),
                                      InstanceMethod("step", &model_wrap::step)});
    exports.Set("NativeModel", cls);
}

// new NativeModel({config, files, weights, threads})
model_wrap::model_wrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<model_wrap>(info) {
    Napi::Env env = info.Env();
    const Napi::Object spec = info[0].As<Napi::Object>();
    const Napi::Object c = spec.Get("config").As<Napi::Object>();
    model_config cfg;
    cfg.n_layers = i32_arg(c.Get("layers"), "layers");
    cfg.d_model = i32_arg(c.Get("dModel"), "dModel");
    cfg.n_heads = i32_arg(c.Get("heads"), "heads");
    cfg.n_kv_heads = i32_arg(c.Get("kvHeads"), "kvHeads");
    cfg.head_dim = i32_arg(c.Get("headDim"), "headDim");
    cfg.d_ff = i32_arg(c.Get("dFf"), "dFf");
    cfg.vocab = i32_arg(c.Get("vocab"), "vocab");
    cfg.rms_eps = float(c.Get("rmsEps").As<Napi::Number>().DoubleValue());
    size_t n_freq = 0;
    const float* freq = typed_data<float>(c.Get("ropeInvFreq"), "ropeInvFreq", false, &n_freq);
    cfg.rope_inv_freq.assign(freq, freq + n_freq);

    const Napi::Array paths = spec.Get("files").As<Napi::Array>();
    for (uint32_t i = 0; i < paths.Length(); ++i) files_.push_back(map_file(env, paths.Get(i).As<Napi::String>()));
    const Napi::Object w = spec.Get("weights").As<Napi::Object>();
    model_weights mw;
    mw.embed = view_of(w.Get("embed"), files_);
    mw.final_norm = view_of(w.Get("finalNorm"), files_);
    mw.lm_head = view_of(w.Get("lmHead"), files_);
    const Napi::Array layers = w.Get("layers").As<Napi::Array>();
    for (uint32_t l = 0; l < layers.Length(); ++l) {
        const Napi::Object o = layers.Get(l).As<Napi::Object>();
        layer_weights lw;
        lw.attn_norm = view_of(o.Get("attnNorm"), files_);
        lw.wq = view_of(o.Get("wq"), files_);
        lw.wk = view_of(o.Get("wk"), files_);
        lw.wv = view_of(o.Get("wv"), files_);
        lw.wo = view_of(o.Get("wo"), files_);
        lw.bq = view_of(o.Get("bq"), files_);
        lw.bk = view_of(o.Get("bk"), files_);
        lw.bv = view_of(o.Get("bv"), files_);
        lw.mlp_norm = view_of(o.Get("mlpNorm"), files_);
        lw.w_gate = view_of(o.Get("wGate"), files_);
        lw.w_up = view_of(o.Get("wUp"), files_);
        lw.w_down = view_of(o.Get("wDown"), files_);
        mw.layers.push_back(lw);
    }
    const int threads = spec.Has("threads") ? i32_arg(spec.Get("threads"), "threads") : 0;
    runtime_ = std::make_shared<model_runtime>(cfg, mw, threads > 0 ? threads : int(std::thread::hardware_concurrency()));
}

Napi::Value model_wrap::run_locked(Napi::Env env, const char* name, std::function<void(model_runtime&)> fn,
                                   const std::vector<Napi::Value>& keep_alive) {
    auto rt = runtime_;
    auto lock = lock_;
    return promise_worker::start(
        env, name,
        [rt, lock, fn = std::move(fn)] {
            std::lock_guard<std::mutex> g(*lock);
            fn(*rt);
        },
        nullptr, keep_alive);
}

// embed(tokens: Int32Array[n], x: Float32Array[n*d])
Napi::Value model_wrap::embed(const Napi::CallbackInfo& info) {
    size_t n = 0;
    const int32_t* tok = reinterpret_cast<const int32_t*>(typed_data<uint32_t>(info[0], "tokens", false, &n));
    float* x = typed_data<float>(info[1], "x");
    return run_locked(info.Env(), "embed", [=](model_runtime& rt) { rt.embed(tok, int(n), x); }, {info[0], info[1], info.This()});
}

// preAttention(layer, x[n*d], positions: Uint32Array[n], q, k, v)
Napi::Value model_wrap::pre_attention(const Napi::CallbackInfo& info) {
    const int layer = i32_arg(info[0], "layer");
    const float* x = typed_data<float>(info[1], "x");
    size_t n = 0;
    const int32_t* pos = reinterpret_cast<const int32_t*>(typed_data<uint32_t>(info[2], "positions", false, &n));
    float* q = typed_data<float>(info[3], "q");
    float* k = typed_data<float>(info[4], "k");
    float* v = typed_data<float>(info[5], "v");
    return run_locked(info.Env(), "preAttention", [=](model_runtime& rt) { rt.pre_attention(layer, x, pos, int(n), q, k, v); }, {info[1], info[2], info[3], info[4], info[5], info.This()});
}

// postAttention(layer, attn[n*Hq*D], n, x[n*d])
Napi::Value model_wrap::post_attention(const Napi::CallbackInfo& info) {
    const int layer = i32_arg(info[0], "layer");
    const float* attn = typed_data<float>(info[1], "attn");
    const int n = i32_arg(info[2], "n");
    float* x = typed_data<float>(info[3], "x");
    return run_locked(info.Env(), "postAttention", [=](model_runtime& rt) { rt.post_attention(layer, attn, n, x); }, {info[1], info[3], info.This()});
}

// logits(x[n*d], n, out[n*vocab])
Napi::Value model_wrap::logits(const Napi::CallbackInfo& info) {
    const float* x = typed_data<float>(info[0], "x");
    const int n = i32_arg(info[1], "n");
    float* out = typed_data<float>(info[2], "out");
    return run_locked(info.Env(), "logits", [=](model_runtime& rt) { rt.logits(x, n, out); }, {info[0], info[2], info.This()});
}

// step(engine, seqs: Uint32Array[b], rows: Uint32Array[b], tokens: Uint32Array[sum rows],
//      positions: Uint32Array[sum rows], logits: Float32Array[b*vocab], allRows?: boolean)
// One in-process model step for a batch: every sequence's rows go through all
// layers, attention in the engine (one batched call per layer); the logits of
// each sequence's last row are written, or of every row when allRows
// (logits then [sum rows][vocab]; scoring a text needs them all).
Napi::Value model_wrap::step(const Napi::CallbackInfo& info) {
    std::shared_ptr<kv_backend> eng = engine_wrap::backend_of(info[0].As<Napi::Object>());
    size_t b = 0, total = 0;
    const uint32_t* seqs = typed_data<uint32_t>(info[1], "seqs", false, &b);
    const uint32_t* rows = typed_data<uint32_t>(info[2], "rows");
    const int32_t* tok = reinterpret_cast<const int32_t*>(typed_data<uint32_t>(info[3], "tokens", false, &total));
    const int32_t* pos = reinterpret_cast<const int32_t*>(typed_data<uint32_t>(info[4], "positions"));
    float* out = typed_data<float>(info[5], "logits");
    const bool all_rows = info.Length() > 6 && info[6].ToBoolean().Value();
    return run_locked(
        info.Env(), "step",
        [=](model_runtime& runtime) {
            model_runtime* rt = &runtime;
            const model_config& c = rt->config();
            const size_t n = total;
            // [n][d], [n][Hq*D], [n][Hkv*D] x2, [n][Hq*D]
            std::vector<float> x(n * c.d_model), q(n * c.n_heads * c.head_dim), k(n * c.n_kv_heads * c.head_dim),
                v(k.size()), o(q.size()), last(b * c.d_model);
            rt->embed(tok, int(n), x.data());
            std::vector<attend_request> reqs(b);
            for (int l = 0; l < c.n_layers; ++l) {
                rt->pre_attention(l, x.data(), pos, int(n), q.data(), k.data(), v.data());
                size_t r0 = 0;
                for (size_t i = 0; i < b; ++i) {
                    reqs[i] = {seqs[i], l, int(rows[i]), &q[r0 * c.n_heads * c.head_dim], &k[r0 * c.n_kv_heads * c.head_dim],
                               &v[r0 * c.n_kv_heads * c.head_dim], &o[r0 * c.n_heads * c.head_dim], nullptr};
                    r0 += rows[i];
                }
                eng->attend(reqs.data(), b);
                rt->post_attention(l, o.data(), int(n), x.data());
            }
            if (all_rows) return rt->logits(x.data(), int(n), out);
            size_t r0 = 0;
            for (size_t i = 0; i < b; ++i) {
                r0 += rows[i];
                std::memcpy(&last[i * c.d_model], &x[(r0 - 1) * c.d_model], sizeof(float) * c.d_model);
            }
            rt->logits(last.data(), int(b), out);
        },
        {info[0], info[1], info[2], info[3], info[4], info[5], info.This()});
}

}  // namespace smartkv_node
