// A test watchdog: aborts the test (after SIGKILLing an optional child) when it is not destroyed
// within a time limit, printing what the test was waiting for. Used where a lost wakeup would
// otherwise hang the suite until ctest's timeout, with no clue why.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace floe::test {

class Watchdog {
 public:
  /// `describe` runs on the watchdog thread only when the limit passes; `child` (if > 0) is killed first.
  Watchdog(std::chrono::seconds limit, std::function<std::string()> describe, pid_t child = 0)
      : thread_([this, limit, child, describe = std::move(describe)] {
          std::unique_lock lock(mutex_);
          if (!cv_.wait_for(lock, limit, [this] { return done_; })) {
            std::fprintf(stderr, "watchdog: no progress within %lld s (lost wakeup or hang): %s\n",
                         static_cast<long long>(limit.count()), describe().c_str());
            if (child > 0) ::kill(child, SIGKILL);
            std::abort();
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace floe::test
