#include "shm-region.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <memory>
#include <string>

#include "js-args.h"
#include "promise-worker.h"

namespace smartkv_node {

namespace {

// Byte offsets of the futex words in the control block; the same numbers are
// in services/common/data-plane-layout.ts (each word on its own cache line).
constexpr size_t req_seq_at = 64;    // u32, bumped by the orchestrator: a request is ready
constexpr size_t resp_seq_at = 128;  // u32, set to the request's number by the cache: answered
constexpr size_t closed_at = 192;    // u32, 1 = torn down (either side)
constexpr size_t min_bytes = 4096;   // the control block at least

static_assert(sizeof(std::atomic<uint32_t>) == 4 && std::atomic<uint32_t>::is_always_lock_free,
              "a futex word is a plain lock-free u32");

// Shared (not FUTEX_PRIVATE): the two processes map the same pages.
long futex(std::atomic<uint32_t>* word, int op, uint32_t value, const timespec* timeout) {
    return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, value, timeout, nullptr, 0);
}

void wake_all(std::atomic<uint32_t>* word) { futex(word, FUTEX_WAKE, INT_MAX, nullptr); }

timespec span_of(std::chrono::nanoseconds ns) {
    timespec ts;
    ts.tv_sec = time_t(ns.count() / 1000000000);
    ts.tv_nsec = long(ns.count() % 1000000000);
    return ts;
}

std::string sys_error(const std::string& what) { return what + ": " + std::strerror(errno); }

}  // namespace

void shm_region::define(Napi::Env env, Napi::Object exports) {
    Napi::Function ctor = DefineClass(env, "ShmRegion",
                                      {
                                          InstanceMethod("buffer", &shm_region::buffer),
                                          InstanceMethod("path", &shm_region::path),
                                          InstanceMethod("post", &shm_region::post),
                                          InstanceMethod("waitSync", &shm_region::wait_sync),
                                          InstanceMethod("wait", &shm_region::wait),
                                          InstanceMethod("watch", &shm_region::watch),
                                          InstanceMethod("complete", &shm_region::complete),
                                          InstanceMethod("close", &shm_region::close),
                                      });
    exports.Set("ShmRegion", ctor);
}

// new ShmRegion('create', bytes): a sealed memfd of `bytes`, mapped (orchestrator).
// new ShmRegion('open', path, bytes): maps someone's region (cache service);
// refuses anything that is not a memfd sealed against shrinking, since pages
// cut from under a mapping would kill this process with SIGBUS on access.
shm_region::shm_region(const Napi::CallbackInfo& info) : Napi::ObjectWrap<shm_region>(info) {
    Napi::Env env = info.Env();
    const std::string how = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    const bool creating = how == "create";
    if (!creating && how != "open") throw Napi::TypeError::New(env, "ShmRegion(how): 'create' or 'open'");
    const Napi::Value size_arg = creating ? info[1] : info[2];
    if (!size_arg.IsNumber()) throw Napi::TypeError::New(env, "ShmRegion: bytes must be a number");
    const double want = size_arg.As<Napi::Number>().DoubleValue();
    if (!(want >= double(min_bytes) && want <= double(UINT32_MAX)))
        throw make_error(env, smartkv::error_code::invalid_argument,
                         "region size must be between 4096 bytes and 4 GiB (offsets are u32)");
    bytes_ = size_t(want);

    int fd = -1;
    if (creating) {
        fd = int(syscall(SYS_memfd_create, "smartkv-data-plane", MFD_CLOEXEC | MFD_ALLOW_SEALING));
        if (fd < 0) throw make_error(env, smartkv::error_code::failed_precondition, sys_error("memfd_create"));
        if (ftruncate(fd, off_t(bytes_)) != 0 ||
            fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
            const std::string msg = sys_error("sizing and sealing the region");
            ::close(fd);
            throw make_error(env, smartkv::error_code::failed_precondition, msg);
        }
    } else {
        if (!info[1].IsString()) throw Napi::TypeError::New(env, "ShmRegion('open', path, bytes): path must be a string");
        const std::string p = info[1].As<Napi::String>().Utf8Value();
        fd = ::open(p.c_str(), O_RDWR | O_CLOEXEC);
        if (fd < 0) throw make_error(env, smartkv::error_code::failed_precondition, sys_error("opening " + p));
        struct stat st;
        const int seals = fcntl(fd, F_GET_SEALS);
        std::string why;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) why = "not a regular file";
        else if (seals < 0 || !(seals & F_SEAL_SHRINK)) why = "not a memfd sealed against shrinking (F_SEAL_SHRINK)";
        else if (size_t(st.st_size) < bytes_)
            why = "holds " + std::to_string(st.st_size) + " bytes, fewer than the " + std::to_string(bytes_) + " registered";
        if (!why.empty()) {
            ::close(fd);
            throw make_error(env, smartkv::error_code::failed_precondition, p + ": " + why);
        }
    }
    void* m = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        const std::string msg = sys_error("mapping the region");
        ::close(fd);
        throw make_error(env, smartkv::error_code::failed_precondition, msg);
    }
    base_ = static_cast<uint8_t*>(m);
    if (creating) fd_ = fd;  // its /proc/<pid>/fd path is how the cache service finds it
    else ::close(fd);        // the mapping holds the pages
    // JS reads and writes tensors through this buffer; the pages are unmapped
    // only when it is collected, so no view can outlive them.
    const size_t n = bytes_;
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, base_, n, [n](Napi::Env, void* data) { munmap(data, n); });
    buffer_ = Napi::Persistent(ab);
}

shm_region::~shm_region() {
    stop_watcher();
    if (fd_ >= 0) ::close(fd_);
}

std::atomic<uint32_t>* shm_region::word(size_t offset) const {
    return reinterpret_cast<std::atomic<uint32_t>*>(base_ + offset);
}

Napi::Value shm_region::buffer(const Napi::CallbackInfo&) { return buffer_.Value(); }

Napi::Value shm_region::path(const Napi::CallbackInfo& info) {
    if (fd_ < 0) return info.Env().Null();
    return Napi::String::New(info.Env(), "/proc/" + std::to_string(getpid()) + "/fd/" + std::to_string(fd_));
}

// post(n): publishes request n (the descriptor and tensors written before).
Napi::Value shm_region::post(const Napi::CallbackInfo& info) {
    const uint32_t n = u32_arg(info[0], "n");
    std::atomic<uint32_t>* req = word(req_seq_at);
    req->store(n, std::memory_order_release);
    futex(req, FUTEX_WAKE, 1, nullptr);
    return info.Env().Undefined();
}

namespace {

// Waits until resp_seq is n (0), the region is torn down (1) or `limit` has
// passed (2). Woken by the answer or a teardown; the 50 ms slice only bounds
// how late a peer that died without waking us is noticed.
uint32_t wait_for(std::atomic<uint32_t>* resp, std::atomic<uint32_t>* closed, uint32_t n, std::chrono::nanoseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
        const uint32_t r = resp->load(std::memory_order_acquire);
        if (r == n) return 0;
        if (closed->load(std::memory_order_acquire) != 0) return 1;
        const auto left = deadline - std::chrono::steady_clock::now();
        if (left <= std::chrono::nanoseconds(0)) return 2;
        const timespec ts = span_of(std::min<std::chrono::nanoseconds>(left, std::chrono::milliseconds(50)));
        futex(resp, FUTEX_WAIT, r, &ts);
    }
}

std::chrono::nanoseconds ms_arg(const Napi::Value& v) {
    return std::chrono::nanoseconds(int64_t((v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : 0) * 1e6));
}

}  // namespace

// waitSync(n, ms) -> 0 answered | 1 torn down | 2 not yet: blocks this (JS)
// thread for at most ms. A short attend is answered sooner than a worker
// thread could be woken for it and back; longer ones go on with wait().
Napi::Value shm_region::wait_sync(const Napi::CallbackInfo& info) {
    const uint32_t n = u32_arg(info[0], "n");
    return Napi::Number::New(info.Env(), wait_for(word(resp_seq_at), word(closed_at), n, ms_arg(info[1])));
}

// wait(n, timeoutMs) -> Promise<0 answered | 1 torn down | 2 timed out>, on a worker thread.
Napi::Value shm_region::wait(const Napi::CallbackInfo& info) {
    const uint32_t n = u32_arg(info[0], "n");
    std::atomic<uint32_t>*resp = word(resp_seq_at), *closed = word(closed_at);
    const auto limit = ms_arg(info[1]);
    auto result = std::make_shared<uint32_t>(0);
    return promise_worker::start(
        info.Env(), "smartkv.shmWait", [=] { *result = wait_for(resp, closed, n, limit); },
        [result](Napi::Env env) { return Napi::Number::New(env, *result); }, {info.This()});
}

// watch(callback(n)): a thread waits on req_seq and calls back (on the JS
// thread) with each new request number; requests rung faster than they are
// answered collapse into the newest (the protocol has one slot).
Napi::Value shm_region::watch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsFunction()) throw Napi::TypeError::New(env, "watch(callback): callback must be a function");
    if (watcher_.joinable()) throw make_error(env, smartkv::error_code::failed_precondition, "the region is already watched");
    on_ring_ = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "smartkv.shmWatch", 2, 1);
    on_ring_.Unref(env);  // a watched region does not keep the process alive
    std::atomic<uint32_t>*req = word(req_seq_at), *closed = word(closed_at);
    uint32_t last = req->load(std::memory_order_acquire);
    watcher_ = std::thread([this, req, closed, last]() mutable {
        while (!stopping_.load(std::memory_order_acquire) && closed->load(std::memory_order_acquire) == 0) {
            const uint32_t cur = req->load(std::memory_order_acquire);
            if (cur != last) {
                last = cur;
                const napi_status s = on_ring_.BlockingCall([cur](Napi::Env e, Napi::Function fn) {
                    fn.Call({Napi::Number::New(e, cur)});
                });
                if (s != napi_ok) break;  // closing
                continue;
            }
            const timespec ts = span_of(std::chrono::milliseconds(200));
            futex(req, FUTEX_WAIT, cur, &ts);
        }
    });
    return env.Undefined();
}

// complete(n): request n is answered (outputs and status written before).
Napi::Value shm_region::complete(const Napi::CallbackInfo& info) {
    const uint32_t n = u32_arg(info[0], "n");
    std::atomic<uint32_t>* resp = word(resp_seq_at);
    resp->store(n, std::memory_order_release);
    futex(resp, FUTEX_WAKE, INT_MAX, nullptr);
    return info.Env().Undefined();
}

void shm_region::stop_watcher() {
    if (!watcher_.joinable()) return;
    stopping_.store(true, std::memory_order_release);
    wake_all(word(req_seq_at));
    on_ring_.Abort();  // a BlockingCall in progress returns napi_closing
    watcher_.join();
}

// close(): tears the region down for both sides: `closed` is set and every
// waiter woken (a pending ring() on the other side returns 1). The pages stay
// mapped until the buffer is collected.
Napi::Value shm_region::close(const Napi::CallbackInfo& info) {
    if (base_) {
        word(closed_at)->store(1, std::memory_order_release);
        wake_all(word(resp_seq_at));
        wake_all(word(req_seq_at));
    }
    stop_watcher();
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    return info.Env().Undefined();
}

}  // namespace smartkv_node
