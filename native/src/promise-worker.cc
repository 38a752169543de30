#include "promise-worker.h"

#include <new>

namespace smartkv_node {

Napi::Error make_error(Napi::Env env, smartkv::error_code code, const std::string& message) {
    Napi::Error err = Napi::Error::New(env, message);
    err.Set("code", Napi::String::New(env, smartkv::error_code_name(code)));
    return err;
}

promise_worker::promise_worker(Napi::Env env, const char* name, run_fn run, result_fn result)
    : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)), run_(std::move(run)),
      result_(std::move(result)) {}

Napi::Promise promise_worker::start(Napi::Env env, const char* name, run_fn run, result_fn result,
                                    const std::vector<Napi::Value>& keep_alive) {
    auto* w = new promise_worker(env, name, std::move(run), std::move(result));
    for (const Napi::Value& v : keep_alive)
        if (v.IsObject()) w->keep_.push_back(Napi::Persistent(v.As<Napi::Object>()));
    Napi::Promise promise = w->deferred_.Promise();
    w->Queue();  // the worker deletes itself after OnOK / OnError
    return promise;
}

void promise_worker::Execute() {
    try {
        run_();
    } catch (const smartkv::engine_error& e) {
        code_ = e.code;
        SetError(e.what());
    } catch (const std::bad_alloc&) {
        code_ = smartkv::error_code::resource_exhausted;
        SetError("out of host memory");
    } catch (const std::exception& e) {
        code_ = smartkv::error_code::internal;
        SetError(e.what());
    }
}

void promise_worker::OnOK() {
    Napi::HandleScope scope(Env());
    try {
        deferred_.Resolve(result_ ? result_(Env()) : Env().Undefined());
    } catch (const Napi::Error& e) {
        deferred_.Reject(e.Value());
    }
}

void promise_worker::OnError(const Napi::Error& e) {
    Napi::HandleScope scope(Env());
    deferred_.Reject(make_error(Env(), code_, e.Message()).Value());
}

}  // namespace smartkv_node
