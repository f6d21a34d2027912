// StateSaver: the state file written off the caller's thread, bursts coalesced.
#include <chrono>

#include "daemon_internal.hpp"

namespace floe::core::detail {

namespace {
// How long a write waits after the first change of a burst: long enough that a provider declaring
// its devices one message at a time costs a handful of writes, short enough that a crash loses
// little (the providers declare their devices again when they reconnect).
constexpr auto kStateSaveDelay = std::chrono::milliseconds(50);
}  // namespace

StateSaver::~StateSaver() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void StateSaver::mark() {
  {
    std::lock_guard lock(mu_);
    dirty_ = true;
    if (!thread_.joinable()) {
      thread_ = std::thread([this] {
        name_thread("floe-saver");
        run();
      });
    }
  }
  cv_.notify_all();
}

void StateSaver::clear() {
  std::lock_guard lock(mu_);
  dirty_ = false;
}

void StateSaver::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return dirty_ || stop_; });
    if (!stop_) cv_.wait_for(lock, kStateSaveDelay, [this] { return stop_; });  // let the burst gather
    if (!dirty_) {
      if (stop_) return;
      continue;
    }
    dirty_ = false;
    lock.unlock();
    write_();  // takes meta_mu: never called with mu_ held (mark() runs under meta_mu)
    lock.lock();
  }
}

}  // namespace floe::core::detail
