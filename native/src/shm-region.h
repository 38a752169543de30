// ShmRegion: the data plane's shared memory between an orchestrator and a
// cache service on one host (services/common/data-plane-layout.ts has the
// layout; docs/services.md the protocol). The orchestrator creates it (a
// sealed memfd), the cache service opens it by /proc/<pid>/fd path and maps
// the same pages. Two futex words in the control block are the doorbell:
//
//   orchestrator                              cache service
//   write tensors + descriptor
//   req_seq = n, FUTEX_WAKE  ───────────────► watcher thread wakes (req_seq changed)
//   post(n), then FUTEX_WAIT on resp_seq      → JS callback(n): validate, attend, write outputs
//   (waitSync: briefly on the JS thread,
//    then wait(): on a worker thread)
//                             ◄───────────────  complete(n): resp_seq = n, FUTEX_WAKE
//   read outputs
//
// Either side may set `closed` (and wake both words): a waiting wait()
// returns at once, which is how a torn-down region fails its request cleanly.
#pragma once
#include <napi.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>

namespace smartkv_node {

class shm_region : public Napi::ObjectWrap<shm_region> {
public:
    static void define(Napi::Env env, Napi::Object exports);
    explicit shm_region(const Napi::CallbackInfo& info);
    ~shm_region() override;

private:
    static Napi::Value create(const Napi::CallbackInfo& info);  // orchestrator side
    static Napi::Value open(const Napi::CallbackInfo& info);    // cache side

    Napi::Value buffer(const Napi::CallbackInfo& info);
    Napi::Value path(const Napi::CallbackInfo& info);
    Napi::Value post(const Napi::CallbackInfo& info);
    Napi::Value wait_sync(const Napi::CallbackInfo& info);
    Napi::Value wait(const Napi::CallbackInfo& info);
    Napi::Value watch(const Napi::CallbackInfo& info);
    Napi::Value complete(const Napi::CallbackInfo& info);
    Napi::Value close(const Napi::CallbackInfo& info);

    std::atomic<uint32_t>* word(size_t offset) const;
    void stop_watcher();

    uint8_t* base_ = nullptr;  // [bytes_] u8, the mapping (unmapped when the last ArrayBuffer view goes)
    size_t bytes_ = 0;
    int fd_ = -1;              // orchestrator side: the memfd, kept open so its /proc path stays valid
    Napi::Reference<Napi::ArrayBuffer> buffer_;
    std::thread watcher_;      // cache side: waits on req_seq, calls the JS callback
    std::atomic<bool> stopping_{false};
    Napi::ThreadSafeFunction on_ring_;
};

}  // namespace smartkv_node
