// NativeEngine: the JS object around one smartkv::kv_backend. Every method
// that touches KV returns a Promise and runs on a worker thread; the backend
// is shared with in-flight workers so close() never pulls it from under one.
#pragma once
#include <napi.h>

#include <memory>

#include "smartkv/engine.h"

namespace smartkv_node {

class engine_wrap : public Napi::ObjectWrap<engine_wrap> {
public:
    static void define(Napi::Env env, Napi::Object exports);
    explicit engine_wrap(const Napi::CallbackInfo& info);
    // The backend behind a NativeEngine object (for NativeModel.step); throws once closed.
    static std::shared_ptr<smartkv::kv_backend> backend_of(const Napi::Object& engine);

private:
    std::shared_ptr<smartkv::kv_backend> backend(Napi::Env env) const;  // throws once closed

    Napi::Value backend_name(const Napi::CallbackInfo& info);
    Napi::Value create_sequence(const Napi::CallbackInfo& info);
    Napi::Value free_sequence(const Napi::CallbackInfo& info);
    Napi::Value append(const Napi::CallbackInfo& info);
    Napi::Value attend(const Napi::CallbackInfo& info);
    Napi::Value attend_sync(const Napi::CallbackInfo& info);
    Napi::Value apply_plan(const Napi::CallbackInfo& info);
    Napi::Value report(const Napi::CallbackInfo& info);
    Napi::Value stats(const Napi::CallbackInfo& info);
    Napi::Value read_kv(const Napi::CallbackInfo& info);
    Napi::Value close(const Napi::CallbackInfo& info);

    std::shared_ptr<smartkv::kv_backend> backend_;
};

}  // namespace smartkv_node
