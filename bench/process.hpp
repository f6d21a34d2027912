// Child processes for benchmarks: fork without exec, each role pinned to its own CPU, reporting
// through a shared anonymous mapping, and never outliving the benchmark that started it.
//
// The orchestrating process (floe-bench itself) only forks and waits. Both ends of a transport
// run in children, so a hung or crashed side can always be killed and the run goes on with the
// next benchmark.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "floe/ipc/platform.hpp"
#include "floe/ipc/result.hpp"

namespace floe::bench {

/// A MAP_SHARED | MAP_ANONYMOUS mapping made before fork, so every child sees the same pages.
/// Move-only; unmaps on destruction.
class SharedMapping {
 public:
  [[nodiscard]] static Result<SharedMapping> create(std::size_t bytes);
  SharedMapping(SharedMapping&& other) noexcept;
  SharedMapping& operator=(SharedMapping&& other) noexcept;
  SharedMapping(const SharedMapping&) = delete;
  SharedMapping& operator=(const SharedMapping&) = delete;
  ~SharedMapping();

  [[nodiscard]] std::byte* data() const noexcept { return base_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }

 private:
  SharedMapping(std::byte* base, std::size_t size) noexcept : base_(base), size_(size) {}
  std::byte* base_ = nullptr;
  std::size_t size_ = 0;
};

enum class RoleState : std::uint32_t { kRunning = 0, kOk = 1, kFailed = 2, kSkipped = 3 };

/// What one child reports back. Lives in shared memory; written by the child only, read by the
/// orchestrator after the child has exited (waitpid orders the accesses).
struct RoleReport {
  std::atomic<RoleState> state;
  std::int32_t cpu;              // CPU the role was pinned to, -1 if not pinned
  std::int64_t cpu_ns;           // CPU time of the child's process during the measured phase
  std::uint64_t notifications;   // syscalls made to signal the peer during the measured phase
  std::int64_t t_begin_ns;       // CLOCK_MONOTONIC at the start of the measured phase
  std::int64_t t_end_ns;         // ... and at its end
  std::uint64_t aux;             // role-specific counter (described by the benchmark's note)
  std::uint64_t checksum;        // consumer: fold of every word it read (keeps the reads real)
  char message[256];             // why the role failed or skipped; NUL-terminated
};

/// The whole shared control block of one benchmark run.
struct Control {
  RoleReport roles[2];
  // Streaming: the consumer sets it once it has drained the warm-up, the producer waits for it
  // before it starts the clock.
  alignas(kCacheLine) std::atomic<std::uint32_t> warm;
};
static_assert(std::atomic<RoleState>::is_always_lock_free);

/// Handed to a role running in its child.
class RoleContext {
 public:
  RoleContext(Control& control, int index, int cpu) noexcept
      : control_(control), index_(index), cpu_(cpu) {}
  [[nodiscard]] RoleReport& report() const noexcept { return control_.roles[index_]; }
  [[nodiscard]] Control& control() const noexcept { return control_; }
  [[nodiscard]] int cpu() const noexcept { return cpu_; }

  /// Marks the role failed (first call wins) with a message for the table.
  void fail(std::string_view why) noexcept;
  /// Marks the role skipped: its backend is unavailable here.
  void skip(std::string_view why) noexcept;
  [[nodiscard]] bool failed() const noexcept;

 private:
  Control& control_;
  int index_;
  int cpu_;
};

using RoleFn = std::function<void(RoleContext&)>;

struct Role {
  std::string name;  // "pinger", "echoer", "producer", ...: appears in failure messages
  RoleFn fn;
};

/// CPUs this process may run on (sched_getaffinity), ascending.
[[nodiscard]] std::vector<int> allowed_cpus();

/// Pins the calling thread to `cpu`. Returns false (errno set) if the kernel refused.
bool pin_current_thread(int cpu) noexcept;

struct RunOutcome {
  RoleState state = RoleState::kOk;  // kOk only if every role reported kOk and exited 0
  std::string reason;                // for kFailed / kSkipped: which role and why
};

/// Runs each role in its own forked child (role i pinned to cpus[i] when given, -1 = unpinned),
/// waits for all of them up to `timeout`, and kills (SIGKILL) and reaps every child that is still
/// running when another fails or the time is up. Never leaves a child behind, on any path.
[[nodiscard]] RunOutcome run_roles(Control& control, const std::vector<Role>& roles,
                                   const std::vector<int>& cpus, std::chrono::milliseconds timeout);

}  // namespace floe::bench
