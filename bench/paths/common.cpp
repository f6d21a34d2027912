#include "paths/common.hpp"

#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "clock.hpp"

namespace floe::bench::paths {

Shared* map_shared() {
  void* p = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  // Anonymous pages are zero: every atomic starts at 0, which is each one's initial value.
  return static_cast<Shared*>(p);
}

void unmap_shared(Shared* s) {
  if (s != nullptr) ::munmap(s, sizeof(Shared));
}

void report_failure(Shared& s, std::string_view what) noexcept {
  s.failures.fetch_add(1, std::memory_order_relaxed);
  if (s.error_set.exchange(1, std::memory_order_acq_rel) == 0) {
    const std::size_t n = std::min(what.size(), sizeof(s.error) - 1);
    std::memcpy(s.error, what.data(), n);
    s.error[n] = '\0';
  }
}

void wait_word(std::atomic<std::uint32_t>& word, std::uint32_t seen, std::chrono::milliseconds timeout) noexcept {
  const timespec ts{static_cast<time_t>(timeout.count() / 1000), static_cast<long>(timeout.count() % 1000) * 1'000'000};
  // Shared (not private) futex: the word lives in a mapping shared by several processes.
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT, seen, &ts, nullptr, 0);
}

void wake_word(std::atomic<std::uint32_t>& word) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

void sleep_until_ns(std::int64_t t_ns) noexcept {
  const timespec ts{static_cast<time_t>(t_ns / 1'000'000'000), static_cast<long>(t_ns % 1'000'000'000)};
  while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

namespace {
std::int64_t thread_cpu_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}
}  // namespace

std::int64_t send_at_ns(std::int64_t t_ns, std::int64_t lead_ns) noexcept {
  if (lead_ns <= 0) {
    sleep_until_ns(t_ns);
    return 0;
  }
  if (now_ns() < t_ns - lead_ns) sleep_until_ns(t_ns - lead_ns);
  if (now_ns() >= t_ns) return 0;
  const std::int64_t cpu0 = thread_cpu_ns();
  while (now_ns() < t_ns) ::sched_yield();
  return thread_cpu_ns() - cpu0;
}

namespace {

/// Follows the phases: returns the next spec (kStop when the run ends). `gen` is the last seen.
PhaseSpec next_phase(Shared& s, std::uint32_t& gen) {
  for (;;) {
    // SYNC(phase): acquire pairs with the orchestrator's release bump after writing `spec`.
    const std::uint32_t now = s.phase_gen.load(std::memory_order_acquire);
    if (now != gen) {
      gen = now;
      return s.spec;
    }
    wait_word(s.phase_gen, gen, std::chrono::milliseconds(500));
  }
}

void request_thread(Shared& s, RequestClient& client, std::uint32_t index, std::uint32_t start_gen) {
  ::prctl(PR_SET_TIMERSLACK, 1UL);
  std::uint32_t gen = start_gen;
  std::string error;
  for (;;) {
    const PhaseSpec spec = next_phase(s, gen);
    if (spec.kind == PhaseKind::kStop) return;
    const bool open = spec.kind == PhaseKind::kRequestOpen;
    if ((open || spec.kind == PhaseKind::kRequestClosed) && index < spec.clients) {
      const double step_ns = open ? 1e9 / spec.rate : 0;
      // A closed loop starts with the phase, not when the phase is announced (20 ms earlier):
      // its rate is counted from the start.
      if (!open) sleep_until_ns(spec.start_ns);
      for (std::uint64_t k = 0;; ++k) {
        const std::uint64_t idx = k * spec.clients + index;
        const std::uint64_t seq = idx + 1;
        if (seq >= kMaxSeq) break;
        std::int64_t intended;
        if (open) {
          intended = spec.start_ns + static_cast<std::int64_t>(static_cast<double>(idx) * step_ns);
          if (intended >= spec.end_ns) break;
          (void)send_at_ns(intended, spec.lead_ns);
        } else {
          intended = now_ns();
          if (intended >= spec.end_ns) break;
        }
        s.req_intended[seq].store(intended, std::memory_order_relaxed);
        s.sent.fetch_add(1, std::memory_order_relaxed);
        if (!client.set(spec.devices ? static_cast<std::uint32_t>(seq % spec.devices) : 0, seq, error)) {
          report_failure(s, fmt::format("client {}: request {}: {}", index, seq, error));
          break;
        }
        s.completed.fetch_add(1, std::memory_order_relaxed);
      }
    }
    // SYNC(done): release pairs with the orchestrator's acquire load of clients_done.
    s.clients_done.fetch_add(1, std::memory_order_release);
  }
}

void watcher_thread(Shared& s, CommitWatcher& watcher) {
  std::string error;
  for (;;) {
    if (s.stop.load(std::memory_order_acquire) != 0) return;
    std::uint64_t value = 0;
    if (!watcher.next(value, std::chrono::milliseconds(100), error)) {
      report_failure(s, "watcher: " + error);
      return;
    }
    if (value == 0) continue;
    const std::int64_t t = now_ns();
    // A commit carries gen * kMaxSeq + seq; only the current phase's commits are stamped.
    const std::uint64_t gen = s.phase_gen.load(std::memory_order_acquire);
    if (value / kMaxSeq != gen) continue;
    const std::uint64_t seq = value % kMaxSeq;
    std::int64_t expected = 0;
    if (seq > 0) s.commit_seen[seq].compare_exchange_strong(expected, t, std::memory_order_relaxed);
    // A result that includes every earlier commit (floe's `max Real` over values that only grow)
    // is the first sight of the earlier commits it coalesced, too: they are the late ones, and
    // counting them lost would drop the tail.
    if (!watcher.sees_every_earlier_commit()) continue;
    for (std::uint64_t q = seq; q > 1; --q) {
      if (s.commit_intended[q - 1].load(std::memory_order_relaxed) == 0) break;
      expected = 0;
      if (!s.commit_seen[q - 1].compare_exchange_strong(expected, t, std::memory_order_relaxed)) break;
    }
  }
}

}  // namespace

int run_clients_process(Shared& s, std::uint32_t clients, const ClientFactory& make_client,
                        const WatcherFactory& make_watcher) {
  std::string error;
  std::vector<std::unique_ptr<RequestClient>> conns;
  for (std::uint32_t i = 0; i < clients; ++i) {
    auto c = make_client(i, error);
    if (!c) {
      report_failure(s, fmt::format("client {} cannot connect: {}", i, error));
      return 1;
    }
    conns.push_back(std::move(c));
  }
  auto watcher = make_watcher(error);
  if (!watcher) {
    report_failure(s, "watcher cannot connect: " + error);
    return 1;
  }
  const std::uint32_t gen0 = s.phase_gen.load(std::memory_order_acquire);
  std::vector<std::thread> threads;
  for (std::uint32_t i = 0; i < clients; ++i)
    threads.emplace_back([&, i] { request_thread(s, *conns[i], i, gen0); });
  std::thread watch([&] { watcher_thread(s, *watcher); });
  s.clients_ready.store(clients + 1, std::memory_order_release);
  wake_word(s.clients_ready);
  for (auto& t : threads) t.join();
  watch.join();
  return 0;
}

void run_commit_driver(Shared& s, const std::function<void(std::uint32_t, std::uint64_t)>& commit) {
  ::prctl(PR_SET_TIMERSLACK, 1UL);
  std::uint32_t gen = s.phase_gen.load(std::memory_order_acquire);
  for (;;) {
    const PhaseSpec spec = next_phase(s, gen);
    if (spec.kind == PhaseKind::kStop) return;
    if (spec.kind != PhaseKind::kCommitOpen) continue;
    const double step_ns = 1e9 / spec.rate;
    for (std::uint64_t idx = 0;; ++idx) {
      const std::uint64_t seq = idx + 1;
      const auto intended = spec.start_ns + static_cast<std::int64_t>(static_cast<double>(idx) * step_ns);
      if (seq >= kMaxSeq || intended >= spec.end_ns) break;
      s.commit_lead_cpu_ns.fetch_add(send_at_ns(intended, spec.lead_ns), std::memory_order_relaxed);
      s.commit_intended[seq].store(intended, std::memory_order_relaxed);
      s.commits_sent.fetch_add(1, std::memory_order_relaxed);
      commit(static_cast<std::uint32_t>(seq % spec.devices), std::uint64_t{gen} * kMaxSeq + seq);
    }
    // SYNC(done): release pairs with the orchestrator's acquire load of provider_done.
    s.provider_done.store(1, std::memory_order_release);
  }
}

pid_t fork_child(const std::function<int()>& body) {
  const pid_t parent = ::getpid();
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);
  int rc = 1;
  try {
    rc = body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "floe-bench paths: child: %s\n", e.what());
  }
  std::fflush(nullptr);
  ::_exit(rc);
}

bool child_alive(pid_t pid, int* status) {
  if (pid <= 0) return false;
  int st = 0;
  const pid_t r = ::waitpid(pid, &st, WNOHANG);
  if (r == 0) return true;
  if (status != nullptr) *status = st;
  return false;
}

void stop_child(pid_t pid, std::chrono::milliseconds grace) {
  if (pid <= 0) return;
  if (!child_alive(pid)) return;
  ::kill(pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, nullptr, WNOHANG) == pid) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
}

namespace {

/// se.sum_exec_runtime (ms with ns digits) of one /proc/<pid>/task/<tid>/sched file; -1 if absent
/// (a kernel without CONFIG_SCHED_DEBUG, or a thread that exited).
std::int64_t task_runtime_ns(const std::filesystem::path& task) {
  std::ifstream in(task / "sched");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("se.sum_exec_runtime", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) break;
    const std::string v = line.substr(colon + 1);
    const auto dot = v.find('.');
    const std::int64_t ms = std::strtoll(v.c_str(), nullptr, 10);
    std::int64_t frac_ns = 0;
    if (dot != std::string::npos) {
      std::string frac = v.substr(dot + 1, 6);
      while (frac.size() < 6) frac += '0';
      frac_ns = std::strtoll(frac.c_str(), nullptr, 10);
    }
    return ms * 1'000'000 + frac_ns;
  }
  return -1;
}

/// The thread id a /proc/<pid>/task/<tid> entry names (0 if it names none).
pid_t tid_of(const std::filesystem::path& task) {
  return static_cast<pid_t>(std::strtol(task.filename().c_str(), nullptr, 10));
}

/// Sum of task_runtime_ns over /proc/<pid>/task/*; -1 if the kernel has no sched files.
std::int64_t sched_runtime_ns(pid_t pid) {
  std::error_code ec;
  std::int64_t total = 0;
  bool any = false;
  for (const auto& task : std::filesystem::directory_iterator(fmt::format("/proc/{}/task", pid), ec)) {
    if (const std::int64_t ns = task_runtime_ns(task.path()); ns >= 0) {
      total += ns;
      any = true;
    }
  }
  return any ? total : -1;
}

}  // namespace

void name_this_thread(const std::string& name) noexcept {
  (void)::prctl(PR_SET_NAME, name.substr(0, 15).c_str());
}

std::vector<ThreadCpu> thread_cpu_of(pid_t pid) {
  std::vector<ThreadCpu> out;
  if (pid <= 0) return out;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator(fmt::format("/proc/{}/task", pid), ec)) {
    const std::int64_t ns = task_runtime_ns(task.path());
    if (ns < 0) continue;
    ThreadCpu t{.tid = tid_of(task.path()), .name = {}, .ns = ns};
    std::ifstream comm(task.path() / "comm");
    std::getline(comm, t.name);
    out.push_back(std::move(t));
  }
  return out;
}

std::int64_t process_cpu_ns_of(pid_t pid) {
  if (pid <= 0) return -1;
  // The process's CPU-time clock sums every thread it ever had: a thread that exited (an io_uring
  // worker) leaves its time in the group's total, where the per-task files lose it.
  clockid_t clock{};
  timespec ts{};
  if (::clock_getcpuclockid(pid, &clock) == 0 && ::clock_gettime(clock, &ts) == 0)
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  if (const std::int64_t precise = sched_runtime_ns(pid); precise >= 0) return precise;
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(text.substr(close + 2));
  // After "pid (comm) ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
  std::string field;
  long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoll(field);
    if (i == 15) stime = std::stoll(field);
  }
  const long hz = ::sysconf(_SC_CLK_TCK);
  return (utime + stime) * (1'000'000'000LL / (hz > 0 ? hz : 100));
}

bool set_process_cpus(pid_t pid, const std::vector<int>& cpus) {
  if (pid <= 0 || cpus.empty()) return false;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) CPU_SET(cpu, &set);
  std::error_code ec;
  bool all = true;
  for (const auto& task : std::filesystem::directory_iterator(fmt::format("/proc/{}/task", pid), ec)) {
    const pid_t tid = tid_of(task.path());
    // A thread that exited since the listing is not an error.
    if (tid > 0 && ::sched_setaffinity(tid, sizeof(set), &set) != 0 && errno != ESRCH) all = false;
  }
  return all && !ec;
}

void raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

}  // namespace floe::bench::paths
