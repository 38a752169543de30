#include "thread-pool.h"

namespace smartkv {

thread_pool::thread_pool(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

thread_pool::~thread_pool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
}

void thread_pool::run_tasks(int thread_index) {
    for (size_t t = next_.fetch_add(1); t < n_tasks_; t = next_.fetch_add(1)) (*job_)(t, thread_index);
}

void thread_pool::worker_loop(int index) {
    uint64_t seen = 0;
    for (;;) {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
            ++busy_;
        }
        run_tasks(index);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (--busy_ == 0) done_.notify_all();
        }
    }
}

void thread_pool::parallel_for(size_t n_tasks, const std::function<void(size_t, int)>& fn) {
    if (n_tasks == 0) return;
    if (workers_.empty() || n_tasks == 1) {
        for (size_t t = 0; t < n_tasks; ++t) fn(t, 0);
        return;
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        job_ = &fn;
        n_tasks_ = n_tasks;
        next_.store(0);
        ++generation_;
    }
    wake_.notify_all();
    run_tasks(0);
    std::unique_lock<std::mutex> lock(mutex_);
    // Workers that woke late find no tasks left and leave at once.
    done_.wait(lock, [&] { return busy_ == 0 && next_.load() >= n_tasks_; });
    job_ = nullptr;
}

}  // namespace smartkv
