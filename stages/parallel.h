// Runs work(0) .. work(count - 1) on the caller's thread and on kept helper threads (one
// per core but one, started on first use, never ended: idle ones wait on a condition
// variable). For host work that LibTorch's intra-op pool should not do: it is off (one
// thread) in CUDA workers.
//
// Helpers are kept: a lone image's 8 bands of 42 rows are short jobs, and with a fresh
// thread for each, 8 threads were barely faster than 4 (tests/perf/README.md, "Speed, round
// 10", "kept helpers"). Each call offers its job to as many helpers as it has items (up to
// one per core), and the caller takes items too. A helper that is busy
// (another call, or an item of this one that runs run_parallel itself) does not take the
// offer; the caller then does more itself. The caller waits only for helpers inside its
// own job, so calls nest without deadlock, and where no helper could be started the caller
// does all the work itself.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

namespace llava {
namespace detail {

// One run_parallel call as its helpers see it.
struct ParallelJob {
  std::function<void()> drain;  // takes items until none is left
  std::mutex mutex;
  std::condition_variable idle;
  int running = 0;  // helpers inside drain
};

class HelperPool {
 public:
  // The process's pool (never destroyed: helpers may wait in it until the process ends).
  static HelperPool& get() {
    static HelperPool* pool = new HelperPool();
    return *pool;
  }
  size_t helpers() const { return helpers_; }

  // Offers `job` to up to `copies` helpers.
  void offer(const std::shared_ptr<ParallelJob>& job, size_t copies) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = 0; i < copies; ++i) offers_.push_back(job);
    }
    if (copies == 1) {
      wake_.notify_one();
    } else {
      wake_.notify_all();
    }
  }

  // Takes back the offers of `job` no helper took, then waits for the helpers inside it.
  void finish(const std::shared_ptr<ParallelJob>& job) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      offers_.erase(std::remove(offers_.begin(), offers_.end(), job), offers_.end());
    }
    std::unique_lock<std::mutex> lock(job->mutex);
    job->idle.wait(lock, [&] { return job->running == 0; });
  }

 private:
  HelperPool() {
    const size_t cores = std::max(1u, std::thread::hardware_concurrency());
    for (size_t h = 1; h < cores; ++h) {
      try {
        std::thread([this] { serve(); }).detach();
        ++helpers_;
      } catch (const std::system_error&) {
        break;  // a container's process limit: fewer helpers
      }
    }
  }

  void serve() {
    while (true) {
      std::shared_ptr<ParallelJob> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return !offers_.empty(); });
        job = std::move(offers_.front());
        offers_.pop_front();
        // Counted while the offer is still ours alone: finish() either took this offer back
        // or finds this helper running and waits for it.
        const std::lock_guard<std::mutex> job_lock(job->mutex);
        ++job->running;
      }
      job->drain();
      {
        const std::lock_guard<std::mutex> lock(job->mutex);
        --job->running;
      }
      job->idle.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<ParallelJob>> offers_;
  size_t helpers_ = 0;
};

}  // namespace detail

// Every item runs, whatever the others throw; then the first exception thrown is rethrown
// on the caller's thread (an exception left in a helper would end the process).
inline void run_parallel(size_t count, const std::function<void(size_t)>& work) {
  std::atomic<size_t> next{0};
  std::exception_ptr first_error;
  std::mutex error_mutex;
  auto drain = [&] {
    for (size_t i = next++; i < count; i = next++) {
      try {
        work(i);
      } catch (...) {
        const std::lock_guard<std::mutex> lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
      }
    }
  };
  // One item never starts the pool.
  const size_t copies = count > 1 ? std::min(count - 1, detail::HelperPool::get().helpers()) : 0;
  if (copies == 0) {
    drain();
  } else {
    detail::HelperPool& pool = detail::HelperPool::get();
    auto job = std::make_shared<detail::ParallelJob>();
    job->drain = drain;
    pool.offer(job, copies);
    drain();
    pool.finish(job);
  }
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace llava
