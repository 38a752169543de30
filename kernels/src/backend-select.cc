// Picks the backend a cache service runs on. The CUDA side is compiled in
// when SMARTKV_HAVE_CUDA is defined (kernels/cuda); without it, asking for
// CUDA is a clear error rather than a silent CPU fallback.
#include "smartkv/engine.h"

namespace smartkv {

#ifdef SMARTKV_HAVE_CUDA
bool cuda_device_count_positive();  // kernels/cuda
std::unique_ptr<kv_backend> make_cuda_backend(const engine_config& cfg);
bool cuda_backend_compiled() { return true; }
bool cuda_device_present() { return cuda_device_count_positive(); }
#else
bool cuda_backend_compiled() { return false; }
bool cuda_device_present() { return false; }
#endif

std::unique_ptr<kv_backend> make_backend(const engine_config& cfg, device_choice choice) {
    if (choice == device_choice::cpu) return make_cpu_backend(cfg);
    const bool have_gpu = cuda_device_present();
    if (choice == device_choice::cuda && !have_gpu)
        throw engine_error(error_code::failed_precondition,
                           cuda_backend_compiled() ? "device cuda requested but no CUDA device is present"
                                                   : "device cuda requested but this build has no CUDA backend");
#ifdef SMARTKV_HAVE_CUDA
    if (have_gpu) {
        std::unique_ptr<kv_backend> gpu = make_cuda_backend(cfg);
        return cfg.rotate_kv ? with_rotated_kv(std::move(gpu)) : std::move(gpu);
    }
#endif
    return make_cpu_backend(cfg);
}

}  // namespace smartkv
