// smartkv_native.node: the Node-API boundary over the kernels (see
// native/kv-engine.ts for the checked TypeScript API on top of it).
#include <napi.h>

#include "engine-wrap.h"
#include "model-wrap.h"
#include "shm-region.h"

namespace smartkv_node {
void define_bench(Napi::Env env, Napi::Object exports);  // bench-native.cc
}

namespace {

Napi::Object init(Napi::Env env, Napi::Object exports) {
    smartkv_node::engine_wrap::define(env, exports);
    smartkv_node::define_bench(env, exports);
    smartkv_node::model_wrap::define(env, exports);
    smartkv_node::shm_region::define(env, exports);
    exports.Set("cudaCompiled", Napi::Boolean::New(env, smartkv::cuda_backend_compiled()));
    // A function, not a constant: asking initialises the CUDA runtime, which
    // loading the addon should not do.
    exports.Set("cudaDevicePresent", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
        return Napi::Boolean::New(info.Env(), smartkv::cuda_device_present());
    }));
    return exports;
}

}  // namespace

NODE_API_MODULE(smartkv_native, init)
