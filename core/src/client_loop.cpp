// ClientLoop: one thread serving many client sessions over one epoll set (see daemon_internal.hpp).
#include <sys/epoll.h>

#include <array>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "daemon_internal.hpp"
#include "floe/ipc/notify.hpp"

namespace floe::core::detail {

ClientLoop::~ClientLoop() { stop_and_join(); }

Status ClientLoop::start() {
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return sys_error("epoll_create1", "a client loop");
  epoll_.reset(ep);
  auto wake = ipc::make_eventfd(true);
  if (!wake) return tl::unexpected(wake.error());
  wake_ = std::move(*wake);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // the wake eventfd; sessions carry their own pointer
  if (::epoll_ctl(ep, EPOLL_CTL_ADD, wake_.get(), &ev) != 0) return sys_error("epoll_ctl", "a client loop's wake fd");
  thread_ = std::thread([this] {
    name_thread(fmt::format("floe-client{}", index_));
    run();
  });
  return {};
}

void ClientLoop::stop_and_join() {
  if (!thread_.joinable()) return;
  stop_.store(true, std::memory_order_release);
  ipc::eventfd_signal(wake_.get());
  thread_.join();
}

void ClientLoop::adopt(std::unique_ptr<ClientSession> session) {
  {
    std::lock_guard lock(mu_);
    // A loop that has ended serves nobody: the session closes here and its client sees EOF.
    if (ended_.load(std::memory_order_acquire)) return;
    count_.fetch_add(1, std::memory_order_acq_rel);
    adopted_.push_back(std::move(session));
  }
  wake();
}

void ClientLoop::schedule(ClientSession& session) {
  if (session.scheduled_.exchange(true, std::memory_order_acq_rel)) return;  // already in the list
  {
    std::lock_guard lock(mu_);
    ready_.push_back(&session);
  }
  wake();
}

void ClientLoop::wake() {
  // One eventfd write per loop iteration at most, however many sessions are put on the list: the
  // loop clears the flag before it takes the lists, so whatever comes after is seen or woken.
  if (!wake_pending_.exchange(true, std::memory_order_acq_rel)) ipc::eventfd_signal(wake_.get());
}

void ClientLoop::take_adopted() {
  std::vector<std::unique_ptr<ClientSession>> adopted;
  {
    std::lock_guard lock(mu_);
    adopted.swap(adopted_);
  }
  for (auto& s : adopted) {
    ClientSession* raw = s.get();
    if (auto st = raw->open(*this); !st) {
      spdlog::warn("client pid {}: cannot serve the session: {}", raw->peer_.pid, st.error().to_string());
      s.reset();  // closes it
      count_.fetch_sub(1, std::memory_order_acq_rel);
      continue;
    }
    sessions_.emplace(raw, std::move(s));
  }
}

void ClientLoop::close_session(ClientSession* session) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  session->close();
  // After close() no callback can schedule it any more; one may have before.
  {
    std::lock_guard lock(mu_);
    std::erase(ready_, session);
  }
  sessions_.erase(it);
  count_.fetch_sub(1, std::memory_order_acq_rel);
}

void ClientLoop::run() {
  using Clock = std::chrono::steady_clock;
  std::array<epoll_event, 64> events{};
  std::vector<ClientSession*> ready;
  std::vector<ClientSession*> closing;
  auto settle = [&](ClientSession* s) {
    if (s->closing()) closing.push_back(s);
  };
  while (!stop_.load(std::memory_order_acquire)) {
    int timeout_ms = -1;
    if (next_deadline_ != Clock::time_point::max()) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(next_deadline_ - Clock::now());
      timeout_ms = static_cast<int>(std::clamp<std::int64_t>(left.count(), 0, 60'000));
    }
    const int n = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      spdlog::error("client loop {}: epoll_wait: {}; its sessions are closed and it takes no new ones", index_,
                    std::strerror(errno));
      ended_.store(true, std::memory_order_release);
      break;
    }
    for (int i = 0; i < n; ++i) {
      if (events[i].data.ptr == nullptr) {
        (void)ipc::eventfd_drain(wake_.get());
        wake_pending_.store(false, std::memory_order_seq_cst);
        take_adopted();
        continue;
      }
      auto* s = static_cast<ClientSession*>(events[i].data.ptr);
      s->on_events(events[i].events);
      settle(s);
    }
    {
      std::lock_guard lock(mu_);
      ready.swap(ready_);
    }
    for (ClientSession* s : ready) {
      s->scheduled_.store(false, std::memory_order_release);  // a later schedule() lists it again
      s->on_scheduled();
      settle(s);
    }
    ready.clear();
    if (const auto now = Clock::now(); now >= next_deadline_) {
      // Times out overdue sets (their callbacks answer the clients), closes stalled clients and
      // finds the next deadline.
      next_deadline_ = Clock::time_point::max();
      for (auto& [raw, s] : sessions_) {
        next_deadline_ = std::min(next_deadline_, s->on_deadline(now));
        s->update_interest();  // room may have come back
        settle(raw);
      }
    }
    for (ClientSession* s : closing) close_session(s);  // a repeated one is no longer found
    closing.clear();
  }
  for (auto& [raw, s] : sessions_) s->close();
  sessions_.clear();
  // From here on adopt() closes what it is given: a loop that has ended serves nobody.
  std::lock_guard lock(mu_);
  ended_.store(true, std::memory_order_release);
  ready_.clear();
  adopted_.clear();
  count_.store(0, std::memory_order_release);
}

}  // namespace floe::core::detail
