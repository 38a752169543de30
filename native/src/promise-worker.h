// A promise-returning AsyncWorker: the work runs on a libuv worker thread over
// plain C++ data (no JS values cross into it), the result is built on the
// main thread. Typed arrays handed to native code are used in place; the
// worker holds references to them (and to the engine wrapper) until it
// settles, so the pointers stay valid while the work runs.
#pragma once
#include <napi.h>

#include <functional>
#include <string>
#include <vector>

#include "smartkv/engine.h"

namespace smartkv_node {

// A JS Error whose `code` is the engine's error code name (INVALID_ARGUMENT, ...).
Napi::Error make_error(Napi::Env env, smartkv::error_code code, const std::string& message);

class promise_worker : public Napi::AsyncWorker {
public:
    using run_fn = std::function<void()>;
    using result_fn = std::function<Napi::Value(Napi::Env)>;

    // Queues `run`; the promise resolves with result(env) (undefined if null)
    // or rejects with make_error(...) when run throws.
    static Napi::Promise start(Napi::Env env, const char* name, run_fn run, result_fn result,
                               const std::vector<Napi::Value>& keep_alive);

protected:
    void Execute() override;
    void OnOK() override;
    void OnError(const Napi::Error& e) override;

private:
    promise_worker(Napi::Env env, const char* name, run_fn run, result_fn result);

    Napi::Promise::Deferred deferred_;
    run_fn run_;
    result_fn result_;
    std::vector<Napi::ObjectReference> keep_;
    smartkv::error_code code_ = smartkv::error_code::internal;
};

}  // namespace smartkv_node
