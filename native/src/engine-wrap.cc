#include "engine-wrap.h"

#include <new>
#include <vector>

#include "js-args.h"
#include "promise-worker.h"

namespace smartkv_node {

using smartkv::kv_backend;

void engine_wrap::define(Napi::Env env, Napi::Object exports) {
    Napi::Function ctor = DefineClass(env, "NativeEngine",
                                      {
                                          InstanceMethod("backendName", &engine_wrap::backend_name),
                                          InstanceMethod("createSequence", &engine_wrap::create_sequence),
                                          InstanceMethod("freeSequence", &engine_wrap::free_sequence),
                                          InstanceMethod("append", &engine_wrap::append),
                                          InstanceMethod("attend", &engine_wrap::attend),
                                          InstanceMethod("attendSync", &engine_wrap::attend_sync),
                                          InstanceMethod("applyPlan", &engine_wrap::apply_plan),
                                          InstanceMethod("report", &engine_wrap::report),
                                          InstanceMethod("stats", &engine_wrap::stats),
                                          InstanceMethod("readKv", &engine_wrap::read_kv),
                                          InstanceMethod("close", &engine_wrap::close),
                                      });
    exports.Set("NativeEngine", ctor);
}

// new NativeEngine(config): builds the backend synchronously (a config error or
// a missing CUDA device throws here, with its code).
engine_wrap::engine_wrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<engine_wrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "NativeEngine(config): config must be an object");
    const backend_spec spec = parse_backend_spec(info[0].As<Napi::Object>());
    try {
        backend_ = std::shared_ptr<kv_backend>(smartkv::make_backend(spec.config, spec.device));
    } catch (const smartkv::engine_error& e) {
        throw make_error(env, e.code, e.what());
    }
}

std::shared_ptr<kv_backend> engine_wrap::backend(Napi::Env env) const {
    if (!backend_) throw make_error(env, smartkv::error_code::failed_precondition, "the engine is closed");
    return backend_;
}

std::shared_ptr<kv_backend> engine_wrap::backend_of(const Napi::Object& engine) {
    return Unwrap(engine)->backend(engine.Env());
}

Napi::Value engine_wrap::backend_name(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), backend(info.Env())->name());
}

// createSequence(kind: 0 mixed | 1 kivi-2 | 2 kivi-4 | 3 kivi-2-rot | 4 kivi-4-rot, gamma?: number,
//                mode?: 0 downgrade-only | 1 reversible) -> Promise<number>
Napi::Value engine_wrap::create_sequence(const Napi::CallbackInfo& info) {
    auto be = backend(info.Env());
    const auto kind = smartkv::storage_kind(u32_arg(info[0], "kind"));
    const float gamma = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().FloatValue()
                                                                 : be->config().gamma;
    const auto mode = info.Length() > 2 && info[2].IsNumber() ? smartkv::precision_mode(u32_arg(info[2], "mode"))
                                                              : be->default_mode();
    auto id = std::make_shared<uint32_t>(0);
    return promise_worker::start(
        info.Env(), "smartkv.createSequence",
        [be, kind, gamma, mode, id] { *id = be->create_sequence(kind, gamma, mode); },
        [id](Napi::Env env) { return Napi::Number::New(env, *id); }, {info.This()});
}

// freeSequence(seq) -> Promise<void>
Napi::Value engine_wrap::free_sequence(const Napi::CallbackInfo& info) {
    auto be = backend(info.Env());
    const uint32_t seq = u32_arg(info[0], "seq");
    return promise_worker::start(info.Env(), "smartkv.freeSequence", [be, seq] { be->free_sequence(seq); }, nullptr,
                                 {info.This()});
}

// append(seq, layer, rows, k [rows][H][D] f32, v [rows][H][D] f32) -> Promise<void>
Napi::Value engine_wrap::append(const Napi::CallbackInfo& info) {
    auto be = backend(info.Env());
    const uint32_t seq = u32_arg(info[0], "seq");
    const int layer = i32_arg(info[1], "layer"), rows = i32_arg(info[2], "rows");
    const float* k = typed_data<float>(info[3], "k");
    const float* v = typed_data<float>(info[4], "v");
    return promise_worker::start(
        info.Env(), "smartkv.append", [be, seq, layer, rows, k, v] { be->append(seq, layer, rows, k, v); }, nullptr,
        {info.This(), info[3], info[4]});
}

namespace {

// The requests of attend()/attendSync(), and the JS values whose memory they point into.
std::shared_ptr<std::vector<smartkv::attend_request>> attend_requests(const Napi::CallbackInfo& info,
                                                                      std::vector<Napi::Value>& keep) {
    Napi::Env env = info.Env();
    if (!info[0].IsArray()) throw Napi::TypeError::New(env, "attend(requests): requests must be an array");
    const Napi::Array list = info[0].As<Napi::Array>();
    auto reqs = std::make_shared<std::vector<smartkv::attend_request>>(list.Length());
    for (uint32_t i = 0; i < list.Length(); ++i) {
        const Napi::Object o = list.Get(i).As<Napi::Object>();
        smartkv::attend_request& r = (*reqs)[i];
        r.seq = u32_arg(o.Get("seq"), "seq");
        r.layer = i32_arg(o.Get("layer"), "layer");
        r.n_rows = i32_arg(o.Get("rows"), "rows");
        r.q = typed_data<float>(o.Get("q"), "q");
        r.k_new = typed_data<float>(o.Get("kNew"), "kNew");
        r.v_new = typed_data<float>(o.Get("vNew"), "vNew");
        r.out = typed_data<float>(o.Get("out"), "out");
        r.probs = typed_data<float>(o.Get("probs"), "probs", /*optional=*/true);
        for (const char* key : {"q", "kNew", "vNew", "out", "probs"}) keep.push_back(o.Get(key));
    }
    return reqs;
}

}  // namespace

// attend([{seq, layer, rows, q, kNew, vNew, out, probs?}]) -> Promise<void>;
// writes out (and probs) in place. Shapes as in smartkv::attend_request.
Napi::Value engine_wrap::attend(const Napi::CallbackInfo& info) {
    auto be = backend(info.Env());
    std::vector<Napi::Value> keep{info.This()};
    auto reqs = attend_requests(info, keep);
    return promise_worker::start(
        info.Env(), "smartkv.attend", [be, reqs] { be->attend(reqs->data(), reqs->size()); }, nullptr, keep);
}

// attendSync(requests) -> undefined: the same on the calling thread. For the
// data plane's small requests, where handing the work to a worker thread and
// back costs more than the attention (services/cache/region-table.ts).
Napi::Value engine_wrap::attend_sync(const Napi::CallbackInfo& info) {
    auto be = backend(info.Env());
    std::vector<Napi::Value> keep;
    auto reqs = attend_requests(info, keep);
    try {
        be->attend(reqs->data(), reqs->size());
    } catch (const smartkv::engine_error& e) {
        throw make_error(info.Env(), e.code, e.what());
    } catch (const std::bad_alloc&) {
        throw make_error(info.Env(), smartkv::error_code::resource_exhausted, "out of host memory");
    } catch (const std::exception& e) {
        throw make_error(info.Env(), smartkv::error_code::internal, e.what());
    }
    return info.Env().Undefined();
}

// applyPlan(seq, layer | -1, positions u32[n], formats u8[n]) -> Promise<{tokensChanged, bytesMoved}>
Napi::Value engine_wrap::apply_plan(const Napi::CallbackInfo& info) {
    auto be = backend(info.Env());
    const uint32_t seq = u32_arg(info[0], "seq");
    const int layer = i32_arg(info[1], "layer");
    size_t n = 0, n_fmt = 0;
    const uint32_t* pos = typed_data<uint32_t>(info[2], "positions", false, &n);
    const uint8_t* fmt = typed_data<uint8_t>(info[3], "formats", false, &n_fmt);
    if (n_fmt != n) throw Napi::RangeError::New(info.Env(), "positions and formats differ in length");
    auto result = std::make_shared<smartkv::move_result>();
    return promise_worker::start(
        info.Env(), "smartkv.applyPlan", [be, seq, layer, pos, fmt, n, result] {
            *result = be->apply_plan(seq, layer, pos, fmt, n);
        },
        [result](Napi::Env env) {
            Napi::Object o = Napi::Object::New(env);
            o.Set("tokensChanged", Napi::Number::New(env, double(result->tokens_changed)));
            o.Set("bytesMoved", Napi::Number::New(env, double(result->bytes_moved)));
            return o;
        },
        {info.This(), info[2], info[3]});
}

// report(seq, layer, importance f32[n] | null, format u8[n] | null, sqError f32[n][3] | null) -> Promise<void>
Napi::Value engine_wrap::report(const Napi::CallbackInfo& info) {
    auto be = backend(info.Env());
    const uint32_t seq = u32_arg(info[0], "seq");
    const int layer = i32_arg(info[1], "layer");
    smartkv::token_report out;
    out.importance = typed_data<float>(info[2], "importance", true);
    out.format = typed_data<uint8_t>(info[3], "format", true);
    out.sq_error = typed_data<float>(info[4], "sqError", true);
    return promise_worker::start(
        info.Env(), "smartkv.report", [be, seq, layer, out] { be->report(seq, layer, out); }, nullptr,
        {info.This(), info[2], info[3], info[4]});
}

// stats(seq) -> Promise<{payload, params, metadata, fp16Equivalent, master, tokens, tokensByFormat[4], kiviTokens}>
Napi::Value engine_wrap::stats(const Napi::CallbackInfo& info) {
    auto be = backend(info.Env());
    const uint32_t seq = u32_arg(info[0], "seq");
    auto m = std::make_shared<smartkv::memory_stats>();
    return promise_worker::start(
        info.Env(), "smartkv.stats", [be, seq, m] { *m = be->stats(seq); },
        [m](Napi::Env env) {
            Napi::Object o = Napi::Object::New(env);
            auto num = [&](const char* k, size_t v) { o.Set(k, Napi::Number::New(env, double(v))); };
            num("payload", m->payload);
            num("params", m->params);
            num("metadata", m->metadata);
            num("fp16Equivalent", m->fp16_equivalent);
            num("master", m->master);
            num("tokens", m->tokens);
            num("kiviTokens", m->kivi_tokens);
            Napi::Array by = Napi::Array::New(env, smartkv::n_formats);
            for (uint32_t f = 0; f < uint32_t(smartkv::n_formats); ++f)
                by.Set(f, Napi::Number::New(env, double(m->tokens_by_format[f])));
            o.Set("tokensByFormat", by);
            return o;
        },
        {info.This()});
}

// readKv(seq, layer, k f32[n][H][D], v f32[n][H][D]) -> Promise<void>
Napi::Value engine_wrap::read_kv(const Napi::CallbackInfo& info) {
    auto be = backend(info.Env());
    const uint32_t seq = u32_arg(info[0], "seq");
    const int layer = i32_arg(info[1], "layer");
    float* k = typed_data<float>(info[2], "k");
    float* v = typed_data<float>(info[3], "v");
    return promise_worker::start(
        info.Env(), "smartkv.readKv", [be, seq, layer, k, v] { be->read_kv(seq, layer, k, v); }, nullptr,
        {info.This(), info[2], info[3]});
}

// close() -> Promise<void>: drops this wrapper's share of the backend; the
// memory goes when the last in-flight worker lets go of it (on that thread).
Napi::Value engine_wrap::close(const Napi::CallbackInfo& info) {
    auto holder = std::make_shared<std::shared_ptr<kv_backend>>(std::move(backend_));
    backend_.reset();
    return promise_worker::start(info.Env(), "smartkv.close", [holder] { holder->reset(); }, nullptr, {info.This()});
}

}  // namespace smartkv_node
