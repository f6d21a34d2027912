#include "process.hpp"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <utility>

#include <fmt/format.h>

#include "clock.hpp"

namespace floe::bench {

Result<SharedMapping> SharedMapping::create(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return sys_error("mmap", "shared anonymous mapping for the benchmark");
  // Touch every page now, in the parent: no page fault lands inside a measured loop.
  std::memset(p, 0, bytes);
  return SharedMapping(static_cast<std::byte*>(p), bytes);
}

SharedMapping::SharedMapping(SharedMapping&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), size_(std::exchange(other.size_, 0)) {}

SharedMapping& SharedMapping::operator=(SharedMapping&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr) ::munmap(base_, size_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SharedMapping::~SharedMapping() {
  if (base_ != nullptr) ::munmap(base_, size_);
}

namespace {

void set_message(RoleReport& r, std::string_view why) noexcept {
  const std::size_t n = std::min(why.size(), sizeof(r.message) - 1);
  std::memcpy(r.message, why.data(), n);
  r.message[n] = '\0';
}

void mark(RoleReport& r, RoleState to, std::string_view why) noexcept {
  RoleState expected = RoleState::kRunning;
  // Only the child itself writes its report; the orchestrator reads it after waitpid.
  if (r.state.compare_exchange_strong(expected, to, std::memory_order_relaxed)) set_message(r, why);
}

[[noreturn]] void child_main(Control& control, int index, int cpu, const RoleFn& fn, pid_t parent) {
  // A benchmark child must not survive floe-bench, whatever kills it.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(3);
  ::signal(SIGPIPE, SIG_IGN);
  RoleContext ctx(control, index, cpu);
  RoleReport& report = ctx.report();
  report.cpu = -1;
  if (cpu >= 0 && pin_current_thread(cpu)) report.cpu = cpu;
  try {
    fn(ctx);
  } catch (const std::exception& e) {
    ctx.fail(e.what());
  } catch (...) {
    ctx.fail("unknown exception");
  }
  RoleState expected = RoleState::kRunning;
  report.state.compare_exchange_strong(expected, RoleState::kOk, std::memory_order_relaxed);
  switch (report.state.load(std::memory_order_relaxed)) {
    case RoleState::kOk: ::_exit(0);
    case RoleState::kSkipped: ::_exit(2);
    default: ::_exit(1);
  }
}

struct Child {
  pid_t pid = -1;
  int pidfd = -1;
  bool reaped = false;
  int status = 0;
};

std::string describe_exit(const Role& role, const RoleReport& report, int status) {
  if (report.state.load(std::memory_order_relaxed) != RoleState::kRunning && report.message[0] != '\0')
    return fmt::format("{}: {}", role.name, report.message);
  if (WIFSIGNALED(status))
    return fmt::format("{} killed by signal {} ({})", role.name, WTERMSIG(status), ::strsignal(WTERMSIG(status)));
  if (WIFEXITED(status)) return fmt::format("{} exited with status {}", role.name, WEXITSTATUS(status));
  return fmt::format("{} ended with wait status {:#x}", role.name, status);
}

bool exited_cleanly(const RoleReport& report, int status) {
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
         report.state.load(std::memory_order_relaxed) == RoleState::kOk;
}

void kill_and_reap(std::vector<Child>& children) {
  for (Child& c : children)
    if (!c.reaped) ::kill(c.pid, SIGKILL);
  for (Child& c : children) {
    if (c.reaped) continue;
    while (::waitpid(c.pid, &c.status, 0) < 0 && errno == EINTR) {
    }
    c.reaped = true;
  }
}

}  // namespace

void RoleContext::fail(std::string_view why) noexcept { mark(report(), RoleState::kFailed, why); }
void RoleContext::skip(std::string_view why) noexcept { mark(report(), RoleState::kSkipped, why); }
bool RoleContext::failed() const noexcept {
  return report().state.load(std::memory_order_relaxed) == RoleState::kFailed;
}

std::vector<int> allowed_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  return cpus;
}

bool pin_current_thread(int cpu) noexcept {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::sched_setaffinity(0, sizeof(set), &set) == 0;  // 0: the calling thread
}

RunOutcome run_roles(Control& control, const std::vector<Role>& roles, const std::vector<int>& cpus,
                     std::chrono::milliseconds timeout) {
  RunOutcome outcome;
  for (std::size_t i = 0; i < roles.size(); ++i) {
    RoleReport& r = control.roles[i];
    r.state.store(RoleState::kRunning, std::memory_order_relaxed);
    r.cpu = -1;
    r.cpu_ns = r.t_begin_ns = r.t_end_ns = 0;
    r.notifications = r.aux = r.checksum = 0;
    r.message[0] = '\0';
  }
  control.warm.store(0, std::memory_order_relaxed);

  // Nothing buffered in stdio may be flushed twice by a child.
  std::fflush(nullptr);
  const pid_t parent = ::getpid();
  std::vector<Child> children;
  children.reserve(roles.size());
  for (std::size_t i = 0; i < roles.size(); ++i) {
    const int cpu = i < cpus.size() ? cpus[i] : -1;
    const pid_t pid = ::fork();
    if (pid < 0) {
      outcome = {RoleState::kFailed, fmt::format("fork for {}: {}", roles[i].name, std::strerror(errno))};
      kill_and_reap(children);
      return outcome;
    }
    if (pid == 0) child_main(control, static_cast<int>(i), cpu, roles[i].fn, parent);
    Child c;
    c.pid = pid;
    c.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    children.push_back(c);
  }

  const std::int64_t deadline = now_ns() + std::chrono::nanoseconds(timeout).count();
  std::string first_failure;
  for (;;) {
    bool all_reaped = true;
    for (std::size_t i = 0; i < children.size(); ++i) {
      Child& c = children[i];
      if (c.reaped) continue;
      const pid_t r = ::waitpid(c.pid, &c.status, WNOHANG);
      if (r == c.pid) {
        c.reaped = true;
        if (!exited_cleanly(control.roles[i], c.status) && first_failure.empty())
          first_failure = describe_exit(roles[i], control.roles[i], c.status);
      } else {
        all_reaped = false;
      }
    }
    if (all_reaped) break;
    if (!first_failure.empty()) {
      // The peer of a failed role would wait forever.
      kill_and_reap(children);
      break;
    }
    const std::int64_t left_ns = deadline - now_ns();
    if (left_ns <= 0) {
      std::string running;
      for (std::size_t i = 0; i < children.size(); ++i)
        if (!children[i].reaped) running += (running.empty() ? "" : ", ") + roles[i].name;
      first_failure = fmt::format("timed out after {} s (still running: {})",
                                  std::chrono::duration<double>(timeout).count(), running);
      kill_and_reap(children);
      break;
    }
    std::vector<pollfd> fds;
    for (const Child& c : children)
      if (!c.reaped && c.pidfd >= 0) fds.push_back({c.pidfd, POLLIN, 0});
    const int wait_ms = static_cast<int>(std::min<std::int64_t>(left_ns / 1'000'000 + 1, fds.empty() ? 10 : 1000));
    if (fds.empty()) {
      ::usleep(static_cast<useconds_t>(wait_ms) * 1000);
    } else {
      ::poll(fds.data(), fds.size(), wait_ms);
    }
  }
  for (const Child& c : children)
    if (c.pidfd >= 0) ::close(c.pidfd);

  if (!first_failure.empty()) {
    outcome.state = RoleState::kFailed;
    outcome.reason = first_failure;
  }
  // A role that reports its backend unavailable makes the whole benchmark skipped, even though
  // its peer was killed for it.
  for (std::size_t i = 0; i < roles.size(); ++i) {
    if (control.roles[i].state.load(std::memory_order_relaxed) == RoleState::kSkipped) {
      outcome.state = RoleState::kSkipped;
      outcome.reason = fmt::format("{}: {}", roles[i].name, control.roles[i].message);
      break;
    }
  }
  return outcome;
}

}  // namespace floe::bench
