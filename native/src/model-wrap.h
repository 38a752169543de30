// NativeModel: the dense forward of a memory-mapped Llama-family checkpoint
// (kernels' model_runtime). Split mode drives it layer by layer from JS
// (attention happens in a remote cache service); in-process mode runs a whole
// step, attention included, against a NativeEngine on one worker thread.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "smartkv/model.h"

namespace smartkv_node {

struct mapped_file {
    void* data = nullptr;
    size_t size = 0;
    ~mapped_file();
};

class model_wrap : public Napi::ObjectWrap<model_wrap> {
public:
    static void define(Napi::Env env, Napi::Object exports);
    explicit model_wrap(const Napi::CallbackInfo& info);

private:
    Napi::Value embed(const Napi::CallbackInfo& info);
    Napi::Value pre_attention(const Napi::CallbackInfo& info);
    Napi::Value post_attention(const Napi::CallbackInfo& info);
    Napi::Value logits(const Napi::CallbackInfo& info);
    Napi::Value step(const Napi::CallbackInfo& info);
    // Runs fn(runtime) on a worker thread under the runtime's lock, keeping
    // `keep_alive` (the typed arrays it reads and writes) referenced until then.
    Napi::Value run_locked(Napi::Env env, const char* name,
                           std::function<void(smartkv::model_runtime&)> fn, const std::vector<Napi::Value>& keep_alive);

    // One worker at a time uses the runtime (its scratch is shared).
    std::shared_ptr<std::mutex> lock_ = std::make_shared<std::mutex>();
    std::vector<std::shared_ptr<mapped_file>> files_;
    std::shared_ptr<smartkv::model_runtime> runtime_;
};

}  // namespace smartkv_node
