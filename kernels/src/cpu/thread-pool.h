// A fixed pool of worker threads running parallel_for over task indices.
// The calling thread works too, so a pool of n threads starts n-1 workers.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace smartkv {

class thread_pool {
public:
    explicit thread_pool(int n_threads);
    ~thread_pool();
    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;

    int size() const { return int(workers_.size()) + 1; }
    // Runs fn(task, thread_index) for task in [0, n_tasks); returns when all are done.
    // Not reentrant: one parallel_for at a time (the engine serialises calls).
    void parallel_for(size_t n_tasks, const std::function<void(size_t, int)>& fn);

private:
    void worker_loop(int index);
    void run_tasks(int thread_index);

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    const std::function<void(size_t, int)>* job_ = nullptr;
    size_t n_tasks_ = 0;
    std::atomic<size_t> next_{0};
    int busy_ = 0;
    uint64_t generation_ = 0;
    bool stop_ = false;
};

}  // namespace smartkv
