// The seed's two baselines, built as real processes, threads and Unix stream sockets (see
// bench/README.md, "paths", for the hop diagrams):
//
//   old:                client --sock--> core client task --q--> core main thread --q--> core
//                       extension task --one sock per extension--> provider main task --q-->
//                       device task (the provider has it). The ack and every commit travel back
//                       the same way; commits pass the main thread, which writes the tree and
//                       forwards them to the watching client's task.
//   per_device_socket:  client --sock--> client task --q--> main thread --q--> core device task
//                       --one sock per device--> provider device task. Back the same way.
//
// "--q-->" is an in-process queue: a mutex-guarded vector plus an eventfd the consumer's epoll
// waits on, written only when the consumer may be asleep (like a task's waker). Tasks are threads:
// one per client connection, one main thread, and for the many-socket sides a pool of
// `task_threads` epoll threads owning the sockets (device d on thread d % pool), as an async
// runtime's workers would.
#include "paths/socket_paths.hpp"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "clock.hpp"

namespace floe::bench::paths {

namespace {

enum MsgKind : std::uint32_t { kRequest = 1, kAck = 2, kCommit = 3, kWatch = 4 };

struct Msg {
  std::uint32_t kind = 0;
  std::uint32_t client = 0;  // set by the core's client task: whom to answer
  std::uint32_t device = 0;
  std::uint32_t pad = 0;
  std::uint64_t seq = 0;     // request: sequence number; commit: the value written
};
static_assert(sizeof(Msg) == 24);

bool write_msg(int fd, const Msg& m) {
  const auto* p = reinterpret_cast<const char*>(&m);
  std::size_t done = 0;
  while (done < sizeof m) {
    const ssize_t n = ::send(fd, p + done, sizeof m - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

bool read_msg(int fd, Msg& m) {
  auto* p = reinterpret_cast<char*>(&m);
  std::size_t done = 0;
  while (done < sizeof m) {
    const ssize_t n = ::read(fd, p + done, sizeof m - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

/// Reads whatever a readable socket holds and hands out whole messages; keeps a partial tail.
class MsgReader {
 public:
  explicit MsgReader(int fd) : fd_(fd) {}
  int fd() const { return fd_; }
  /// False on EOF or error.
  template <typename Fn>
  bool drain(Fn&& on_msg) {
    const ssize_t n = ::recv(fd_, buf_ + have_, sizeof buf_ - have_, MSG_DONTWAIT);
    if (n == 0) return false;
    if (n < 0) return errno == EAGAIN || errno == EINTR;
    have_ += static_cast<std::size_t>(n);
    std::size_t off = 0;
    for (; have_ - off >= sizeof(Msg); off += sizeof(Msg)) {
      Msg m;
      std::memcpy(&m, buf_ + off, sizeof m);
      on_msg(m);
    }
    std::memmove(buf_, buf_ + off, have_ - off);
    have_ -= off;
    return true;
  }

 private:
  int fd_;
  std::size_t have_ = 0;
  char buf_[sizeof(Msg) * 128];
};

/// The in-process queue between two tasks (an mpsc channel): push from any thread; the owner's
/// epoll watches fd() and calls take().
class TaskQueue {
 public:
  TaskQueue() : efd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  TaskQueue(const TaskQueue&) = delete;
  TaskQueue& operator=(const TaskQueue&) = delete;
  ~TaskQueue() {
    if (efd_ >= 0) ::close(efd_);
  }
  int fd() const { return efd_; }
  void push(const Msg& m) {
    bool wake;
    {
      std::lock_guard lock(mu_);
      items_.push_back(m);
      wake = !armed_;
      armed_ = true;
    }
    if (wake) {
      const std::uint64_t one = 1;
      [[maybe_unused]] ssize_t n = ::write(efd_, &one, sizeof one);
    }
  }
  /// Owner only, after fd() was readable: moves every queued message into `out`.
  void take(std::vector<Msg>& out) {
    std::uint64_t v;
    [[maybe_unused]] ssize_t n = ::read(efd_, &v, sizeof v);
    std::lock_guard lock(mu_);
    armed_ = false;
    out.swap(items_);
    items_.clear();
  }

 private:
  int efd_;
  std::mutex mu_;
  std::vector<Msg> items_;
  bool armed_ = false;
};

/// An epoll set whose entries carry a small integer tag.
class Poller {
 public:
  Poller() : ep_(::epoll_create1(EPOLL_CLOEXEC)) {}
  ~Poller() {
    if (ep_ >= 0) ::close(ep_);
  }
  void add(int fd, std::uint64_t tag) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    ::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
  }
  /// Blocks until something is ready; calls fn(tag) for each.
  template <typename Fn>
  void wait(Fn&& fn) {
    epoll_event evs[64];
    const int n = ::epoll_wait(ep_, evs, 64, -1);
    for (int i = 0; i < n; ++i) fn(evs[i].data.u64);
  }

 private:
  int ep_;
};

inline constexpr std::uint64_t kQueueTag = ~std::uint64_t{0};

[[noreturn]] void die(Shared& s, std::string_view what) {
  report_failure(s, what);
  std::fflush(nullptr);
  ::_exit(1);
}

/// One task on its own thread: waits in epoll on its sockets and its queue (may be null), hands
/// socket messages to on_socket(socket index, msg) and queued ones to on_queued(msg). Ends the
/// process when a socket hangs up: the peer process went away, so the run is over.
template <typename OnSocket, typename OnQueued>
void run_task(const std::vector<int>& fds, TaskQueue* queue, OnSocket on_socket, OnQueued on_queued) {
  Poller p;
  std::vector<std::unique_ptr<MsgReader>> readers;
  for (int fd : fds) {
    readers.push_back(std::make_unique<MsgReader>(fd));
    p.add(fd, readers.size() - 1);
  }
  if (queue != nullptr) p.add(queue->fd(), kQueueTag);
  std::vector<Msg> batch;
  for (;;) {
    p.wait([&](std::uint64_t tag) {
      if (tag == kQueueTag) {
        queue->take(batch);
        for (const Msg& m : batch) on_queued(m);
      } else if (!readers[tag]->drain([&](const Msg& m) { on_socket(static_cast<std::size_t>(tag), m); })) {
        std::fflush(nullptr);
        ::_exit(0);
      }
    });
  }
}

/// The sockets of pool thread t: every pool-th one starting at t.
std::vector<int> strided(const std::vector<int>& fds, std::size_t t, std::size_t pool) {
  std::vector<int> out;
  for (std::size_t i = t; i < fds.size(); i += pool) out.push_back(fds[i]);
  return out;
}

}  // namespace

// ---- core -------------------------------------------------------------------------------------

int run_socket_core(Shared& s, const SocketCorePlan& plan) {
  const std::size_t nclients = plan.client_fds.size();
  const std::size_t nlinks = plan.link_fds.size();
  const std::size_t pool = std::max<std::size_t>(1, std::min(plan.task_threads, nlinks));
  TaskQueue main_q;
  std::vector<std::unique_ptr<TaskQueue>> client_q(nclients), link_q(pool);
  for (auto& q : client_q) q = std::make_unique<TaskQueue>();
  for (auto& q : link_q) q = std::make_unique<TaskQueue>();
  const auto link_of_device = [&](std::uint32_t device) -> std::size_t {
    return plan.per_device ? device % nlinks : 0;
  };

  std::vector<std::thread> threads;
  // Client tasks: socket -> main (tagged with the client); queue -> socket.
  for (std::size_t c = 0; c < nclients; ++c) {
    threads.emplace_back([&, c] {
      name_this_thread("core-client");
      const int fd = plan.client_fds[c];
      run_task(
          {fd}, client_q[c].get(),
          [&](std::size_t, Msg m) {
            m.client = static_cast<std::uint32_t>(c);
            main_q.push(m);
          },
          [&](const Msg& m) {
            if (!write_msg(fd, m)) die(s, "core: client socket write failed");
          });
    });
  }
  // Extension / device tasks: queue -> the device's socket; sockets -> main.
  for (std::size_t t = 0; t < pool; ++t) {
    threads.emplace_back([&, t] {
      name_this_thread("core-link");
      run_task(
          strided(plan.link_fds, t, pool), link_q[t].get(), [&](std::size_t, const Msg& m) { main_q.push(m); },
          [&](const Msg& m) {
            if (!write_msg(plan.link_fds[link_of_device(m.device)], m)) die(s, "core: provider socket write failed");
          });
    });
  }
  // The main thread: routes requests to the link task, acks to the client task; commits are
  // written to the tree and forwarded to every watching client.
  std::vector<std::uint64_t> tree(plan.devices, 0);
  std::vector<std::uint32_t> watchers;
  name_this_thread("core-main");
  run_task({}, &main_q, [](std::size_t, const Msg&) {}, [&](const Msg& m) {
    switch (m.kind) {
      case kRequest: link_q[link_of_device(m.device) % pool]->push(m); break;
      case kAck:
        if (m.client < nclients) client_q[m.client]->push(m);
        break;
      case kCommit:
        if (m.device < tree.size()) tree[m.device] = m.seq;
        for (std::uint32_t w : watchers) client_q[w]->push(m);
        break;
      case kWatch: watchers.push_back(m.client); break;
      default: die(s, fmt::format("core: unknown message kind {}", m.kind));
    }
  });
  return 0;
}

// ---- provider ---------------------------------------------------------------------------------

namespace {

inline constexpr std::uint64_t kTcpTag = std::uint64_t{1} << 32;

/// The TCP setting's provider: device tasks hold native-API connections to their simulated
/// devices (device d on task d mod pool). A request becomes a LightCommandRequest and the device's
/// next LightStateResponse its answer (per device, answers come in command order: a FIFO); a
/// NumberStateResponse the device sends on its own is a commit. In `old` requests reach the device
/// tasks from the provider main task's queue and answers go back to it; in per_device_socket the
/// device task also owns the device's Unix socket to the core.
[[noreturn]] void run_socket_provider_tcp(Shared& s, const SocketProviderPlan& plan) {
  TcpShared& t = *plan.tcp;
  const std::uint32_t devices = t.devices;
  const std::size_t pool = std::max<std::size_t>(1, plan.task_threads);
  std::vector<std::unique_ptr<EsphomeLink>> links(devices);
  std::string err;
  for (std::uint32_t d = 0; d < devices; ++d) {
    links[d] = EsphomeLink::open(t.ports[d], err);
    if (!links[d]) die(s, fmt::format("provider: {}: {}", tcp_device_name(d), err));
  }
  std::vector<std::deque<Msg>> pending(devices);
  TaskQueue main_q;  // old: the extension's main task
  std::vector<std::unique_ptr<TaskQueue>> dev_q(pool);
  for (auto& q : dev_q) q = std::make_unique<TaskQueue>();
  const int sock = plan.per_device ? -1 : plan.link_fds.at(0);
  // Where a device task's answers and commits go: the main task (old) or the device's socket.
  const auto emit = [&](const Msg& m) {
    if (!plan.per_device) return main_q.push(m);
    if (!write_msg(plan.link_fds[m.device % plan.link_fds.size()], m)) die(s, "provider: device socket write failed");
  };

  std::vector<std::thread> threads;
  for (std::size_t task = 0; task < pool; ++task) {
    threads.emplace_back([&, task] {
      name_this_thread("prov-device");
      Poller p;
      std::vector<std::unique_ptr<MsgReader>> readers(devices);
      for (std::uint32_t d = static_cast<std::uint32_t>(task); d < devices; d += static_cast<std::uint32_t>(pool)) {
        p.add(links[d]->fd(), kTcpTag | d);
        if (plan.per_device) {
          readers[d] = std::make_unique<MsgReader>(plan.link_fds[d]);
          p.add(readers[d]->fd(), d);
        }
      }
      if (!plan.per_device) p.add(dev_q[task]->fd(), kQueueTag);
      std::string error;
      const auto request = [&](const Msg& m) {
        if (m.kind != kRequest) return;
        const std::uint32_t d = m.device % devices;
        pending[d].push_back(m);
        if (!links[d]->send_request(m.seq, error)) die(s, fmt::format("provider: {}: {}", tcp_device_name(d), error));
      };
      std::vector<Msg> batch;
      for (;;) {
        p.wait([&](std::uint64_t tag) {
          if (tag == kQueueTag) {
            dev_q[task]->take(batch);
            for (const Msg& m : batch) request(m);
          } else if (tag & kTcpTag) {
            const auto d = static_cast<std::uint32_t>(tag & 0xffffffffu);
            const bool ok = links[d]->drain(
                [&] {
                  if (pending[d].empty()) return;  // a change nobody asked for
                  Msg m = pending[d].front();
                  pending[d].pop_front();
                  m.kind = kAck;
                  emit(m);
                },
                [&](std::uint64_t counter) {
                  emit(Msg{.kind = kCommit, .client = 0, .device = d, .pad = 0, .seq = counter});
                },
                error);
            if (!ok) die(s, fmt::format("provider: {}: {}", tcp_device_name(d), error));
          } else if (!readers[tag]->drain([&](const Msg& m) { request(m); })) {
            std::fflush(nullptr);
            ::_exit(0);  // the core went away: the run is over
          }
        });
      }
    });
  }
  if (!plan.per_device) {
    threads.emplace_back([&] {
      name_this_thread("prov-main");
      run_task(
          {sock}, &main_q, [&](std::size_t, const Msg& m) { dev_q[m.device % pool]->push(m); },
          [&](const Msg& m) {
            if (!write_msg(sock, m)) die(s, "provider: socket write failed");
          });
    });
  }
  // SYNC(provider-ready): release pairs with the orchestrator's acquire.
  t.provider_ready.store(1, std::memory_order_release);
  wake_word(t.provider_ready);
  for (auto& th : threads) th.join();  // the tasks end the process
  std::fflush(nullptr);
  ::_exit(0);
}

}  // namespace

int run_socket_provider(Shared& s, const SocketProviderPlan& plan) {
  if (plan.tcp != nullptr) run_socket_provider_tcp(s, plan);
  const std::size_t nlinks = plan.link_fds.size();
  const std::size_t pool = std::max<std::size_t>(1, plan.task_threads);
  std::vector<std::thread> threads;

  if (!plan.per_device) {
    // old: the extension's main task owns the one socket and routes to the device tasks.
    TaskQueue main_q;
    std::vector<std::unique_ptr<TaskQueue>> dev_q(pool);
    for (auto& q : dev_q) q = std::make_unique<TaskQueue>();
    const int sock = plan.link_fds.at(0);
    threads.emplace_back([&] {
      name_this_thread("prov-main");
      run_task(
          {sock}, &main_q, [&](std::size_t, const Msg& m) { dev_q[m.device % pool]->push(m); },
          [&](const Msg& m) {
            if (!write_msg(sock, m)) die(s, "provider: socket write failed");
          });
    });
    for (std::size_t t = 0; t < pool; ++t) {
      threads.emplace_back([&, t] {
        name_this_thread("prov-device");
        run_task({}, dev_q[t].get(), [](std::size_t, const Msg&) {}, [&](Msg m) {
          if (m.kind != kRequest) return;
          stamp_arrival(s, m.seq, now_ns());  // the device task has it; the device answers at once
          m.kind = kAck;
          main_q.push(m);
        });
      });
    }
    // The commit driver plays the device task that saw its device change.
    run_commit_driver(s, [&](std::uint32_t device, std::uint64_t value) {
      main_q.push(Msg{.kind = kCommit, .client = 0, .device = device, .pad = 0, .seq = value});
    });
    std::fflush(nullptr);
    ::_exit(0);
  }

  // per_device_socket: device tasks own their device's socket; no main task in the path.
  std::vector<std::mutex> sock_mu(nlinks);
  for (std::size_t t = 0; t < pool; ++t) {
    threads.emplace_back([&, t] {
      name_this_thread("prov-device");
      const std::vector<int> mine = strided(plan.link_fds, t, pool);
      run_task(
          mine, nullptr,
          [&](std::size_t i, Msg m) {
            if (m.kind != kRequest) return;
            stamp_arrival(s, m.seq, now_ns());
            m.kind = kAck;
            std::lock_guard lock(sock_mu[m.device % nlinks]);
            if (!write_msg(mine[i], m)) die(s, "provider: device socket write failed");
          },
          [](const Msg&) {});
    });
  }
  run_commit_driver(s, [&](std::uint32_t device, std::uint64_t value) {
    const std::size_t l = device % nlinks;
    std::lock_guard lock(sock_mu[l]);
    if (!write_msg(plan.link_fds[l], Msg{.kind = kCommit, .client = 0, .device = device, .pad = 0, .seq = value}))
      die(s, "provider: device socket write failed");
  });
  std::fflush(nullptr);
  ::_exit(0);
}

// ---- clients ----------------------------------------------------------------------------------

namespace {

class SocketClient final : public RequestClient {
 public:
  explicit SocketClient(int fd) : fd_(fd) {}
  bool set(std::uint32_t device, std::uint64_t seq, std::string& error) override {
    if (!write_msg(fd_, Msg{.kind = kRequest, .client = 0, .device = device, .pad = 0, .seq = seq})) {
      error = fmt::format("write: {}", std::strerror(errno));
      return false;
    }
    for (;;) {
      Msg m;
      if (!read_msg(fd_, m)) {
        error = "the core closed the connection";
        return false;
      }
      if (m.kind == kAck && m.seq == seq) return true;
    }
  }

 private:
  int fd_;
};

class SocketWatcher final : public CommitWatcher {
 public:
  explicit SocketWatcher(int fd) : fd_(fd) {}
  bool start(std::string& error) {
    if (write_msg(fd_, Msg{.kind = kWatch})) return true;
    error = fmt::format("write: {}", std::strerror(errno));
    return false;
  }
  bool next(std::uint64_t& seq, std::chrono::milliseconds timeout, std::string& error) override {
    seq = 0;
    pollfd pfd{fd_, POLLIN, 0};
    const int r = ::poll(&pfd, 1, static_cast<int>(timeout.count()));
    if (r <= 0) return r == 0 || errno == EINTR;
    Msg m;
    if (!read_msg(fd_, m)) {
      error = "the core closed the connection";
      return false;
    }
    if (m.kind == kCommit) seq = m.seq;
    return true;
  }

 private:
  int fd_;
};

}  // namespace

int run_socket_clients(Shared& s, const std::vector<int>& client_fds, const TcpShared* tcp) {
  const auto clients = static_cast<std::uint32_t>(client_fds.size() - 1);  // the last one watches
  return run_clients_process(
      s, clients,
      [&](std::uint32_t i, std::string&) -> std::unique_ptr<RequestClient> {
        return std::make_unique<SocketClient>(client_fds[i]);
      },
      [&](std::string& error) -> std::unique_ptr<CommitWatcher> {
        auto w = std::make_unique<SocketWatcher>(client_fds.back());
        if (!w->start(error)) return nullptr;
        if (tcp != nullptr) return translate_commits(std::move(w), *tcp);
        return w;
      });
}

}  // namespace floe::bench::paths
