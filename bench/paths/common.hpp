// What the three request paths share: the control block every process of a run maps (phases,
// sample slots), the client and provider drivers that follow the phases, and child processes.
//
// A run of one path is three or four processes: floe-bench (the orchestrator: starts phases, reads
// CPU, computes figures), the core, the provider and the clients process (C request threads and
// one watcher). The orchestrator publishes a PhaseSpec and bumps `phase_gen`; the drivers below
// act on it and count themselves done.
//
// Latency is measured from the *intended* time of every send (coordinated-omission safe): a
// request scheduled at t is stamped t even if its client was still busy with the previous one,
// and the provider stamps its arrival; a commit scheduled at t is stamped t by the provider and
// the watcher stamps its receipt. All stamps are CLOCK_MONOTONIC, one clock for the machine.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace floe::bench::paths {

inline constexpr std::uint64_t kMaxSeq = 1u << 20;  // sample slots per phase (and per stream)
inline constexpr std::uint32_t kMaxClients = 64;

enum class PhaseKind : std::uint32_t { kIdle = 0, kRequestOpen, kRequestClosed, kCommitOpen, kStop };

struct PhaseSpec {
  PhaseKind kind = PhaseKind::kIdle;
  std::uint32_t clients = 1;       // request threads taking part (0 .. clients-1)
  std::uint32_t devices = 1;       // requests and commits go to device seq % devices
  double rate = 0;                 // open phases: total sends per second
  std::int64_t start_ns = 0;       // CLOCK_MONOTONIC of the first intended send
  std::int64_t end_ns = 0;         // no send is scheduled at or after this
  std::int64_t lead_ns = 0;        // open phases: wake this early and spin to the intended time
};

/// The control block, in a MAP_SHARED anonymous mapping made before the children fork.
struct Shared {
  std::atomic<std::uint32_t> phase_gen;     // futex word: bumped after `spec` is written
  PhaseSpec spec;
  std::atomic<std::uint32_t> clients_done;  // request threads finished with the phase
  std::atomic<std::uint32_t> provider_done; // commit driver finished with the phase
  std::atomic<std::uint32_t> clients_ready; // request threads + watcher connected
  std::atomic<std::uint64_t> sent;          // requests sent in the phase (all threads)
  std::atomic<std::uint64_t> completed;     // requests answered in the phase
  std::atomic<std::uint64_t> failures;      // requests or watch waits that failed
  std::atomic<std::uint64_t> commits_sent;
  std::atomic<std::int64_t> commit_lead_cpu_ns;  // CPU the commit driver spent in send_at_ns
  std::atomic<std::uint32_t> stop;          // set with the kStop phase
  std::atomic<std::uint32_t> error_set;
  char error[512];
  // Sample slots, indexed by sequence number (1 .. kMaxSeq-1); 0 = not stamped.
  std::atomic<std::int64_t> req_intended[kMaxSeq];
  std::atomic<std::int64_t> req_arrived[kMaxSeq];
  std::atomic<std::int64_t> commit_intended[kMaxSeq];
  std::atomic<std::int64_t> commit_seen[kMaxSeq];
};

/// Maps a zeroed Shared for the whole run (MAP_SHARED | MAP_ANONYMOUS); nullptr on failure.
[[nodiscard]] Shared* map_shared();
void unmap_shared(Shared* s);
/// Records the first failure message of any process; counts every failure.
void report_failure(Shared& s, std::string_view what) noexcept;

/// Waits until `word` differs from `seen` (futex across processes) or `timeout` passes.
void wait_word(std::atomic<std::uint32_t>& word, std::uint32_t seen, std::chrono::milliseconds timeout) noexcept;
void wake_word(std::atomic<std::uint32_t>& word) noexcept;
/// Sleeps until CLOCK_MONOTONIC reaches `t_ns` (returns at once if it has).
void sleep_until_ns(std::int64_t t_ns) noexcept;
/// Returns as close after `t_ns` as it can: sleeps until `lead_ns` before it, then spins (yielding
/// the CPU to any other runnable thread). A timer wakeup is late by 20-80 us on a virtual machine
/// even with a 1 ns timer slack; without the lead that lateness would be counted into every
/// sample of every path as if the path had spent it. A late wakeup is still counted: samples are
/// measured from `t_ns`. Returns the CPU time the calling thread spent spinning, in ns.
std::int64_t send_at_ns(std::int64_t t_ns, std::int64_t lead_ns) noexcept;

/// One request connection of a path, used by one thread. set() returns once the path's
/// acknowledgement came back (the provider has the request); false with `error` filled on failure.
class RequestClient {
 public:
  virtual ~RequestClient() = default;
  virtual bool set(std::uint32_t device, std::uint64_t seq, std::string& error) = 0;
};

/// The watching client: waits up to `timeout` for the next commit and returns the sequence number
/// it carried (0: nothing within the timeout). False with `error` on a broken connection.
class CommitWatcher {
 public:
  virtual ~CommitWatcher() = default;
  virtual bool next(std::uint64_t& seq, std::chrono::milliseconds timeout, std::string& error) = 0;
  /// True if seeing commit `seq` means the state seen includes every earlier commit of the phase
  /// (a watch that coalesces: the earlier ones are stamped with the same time).
  [[nodiscard]] virtual bool sees_every_earlier_commit() const { return false; }
};

using ClientFactory = std::function<std::unique_ptr<RequestClient>(std::uint32_t index, std::string& error)>;
using WatcherFactory = std::function<std::unique_ptr<CommitWatcher>(std::string& error)>;

/// Body of the clients process: `clients` request threads and one watcher thread follow the phases
/// until kStop. Returns the exit status.
int run_clients_process(Shared& s, std::uint32_t clients, const ClientFactory& make_client,
                        const WatcherFactory& make_watcher);

/// The provider's side of the phases: runs commit phases (calling `commit(device, seq)` at the
/// intended times, the device writing its new state) until kStop. Call on a thread of its own.
void run_commit_driver(Shared& s, const std::function<void(std::uint32_t, std::uint64_t)>& commit);

/// Provider side of a request: stamps its arrival (the provider has it).
inline void stamp_arrival(Shared& s, std::uint64_t seq, std::int64_t now) noexcept {
  if (seq > 0 && seq < kMaxSeq) s.req_arrived[seq].store(now, std::memory_order_relaxed);
}

/// A forked child that dies with floe-bench (PR_SET_PDEATHSIG) and runs `body`, exiting with its
/// return value. -1 if fork failed.
pid_t fork_child(const std::function<int()>& body);
/// SIGTERM, then SIGKILL after `grace`, and reap. Safe with pid <= 0.
void stop_child(pid_t pid, std::chrono::milliseconds grace);
/// True while `pid` (a child) has not exited; reaps it if it has, storing its status.
bool child_alive(pid_t pid, int* status = nullptr);

/// CPU time of process `pid` so far, in ns: its CPU-time clock (clock_getcpuclockid, the same
/// runtime getrusage() is derived from, threads that already exited included). Where that clock
/// cannot be read, the sum over its live threads' /proc/<pid>/task/*/sched (se.sum_exec_runtime),
/// or, on kernels without sched files, user + system from /proc/<pid>/stat in 10 ms ticks.
/// -1 if unreadable.
[[nodiscard]] std::int64_t process_cpu_ns_of(pid_t pid);

/// Names the calling thread (/proc/<pid>/task/<tid>/comm; 15 bytes kept), so per-thread CPU can
/// say which task was busy.
void name_this_thread(const std::string& name) noexcept;

/// One thread's on-CPU time so far (its se.sum_exec_runtime, the runtime process_cpu_ns_of sums).
struct ThreadCpu {
  pid_t tid = 0;
  std::string name;  // /proc/<pid>/task/<tid>/comm (what pthread_setname_np set)
  std::int64_t ns = 0;
};
/// Every thread of `pid` (empty when the kernel has no sched files or the process is gone).
[[nodiscard]] std::vector<ThreadCpu> thread_cpu_of(pid_t pid);

/// Restricts every thread of process `pid` to `cpus` (sched_setaffinity per /proc/<pid>/task entry;
/// threads it starts later inherit their creator's set). False if a thread could not be moved.
bool set_process_cpus(pid_t pid, const std::vector<int>& cpus);

/// Raises RLIMIT_NOFILE's soft limit to the hard limit (1,000 per-device sockets need it).
void raise_fd_limit();

}  // namespace floe::bench::paths
