#include "paths/paths_bench.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "clock.hpp"
#include "paths/common.hpp"
#include "paths/floe_path.hpp"
#include "paths/histogram.hpp"
#include "paths/socket_paths.hpp"
#include "paths/tcp_devices.hpp"
#include "process.hpp"
#include "report.hpp"
#include "ring_bench.hpp"

#ifndef FLOE_CORE_BIN
#define FLOE_CORE_BIN ""
#endif
#ifndef FLOE_ESPHOME_BIN
#define FLOE_ESPHOME_BIN ""
#endif

namespace floe::bench::paths {

namespace {

using nlohmann::ordered_json;

// ---- one running instance of a path -----------------------------------------------------------

struct InstanceSpec {
  std::string path;          // floe | old | per_device_socket
  std::string notify = "eventfd";
  std::string backend;       // floe: "io_uring", "epoll" or "" (auto)
  std::uint32_t devices = 1;
  std::uint32_t clients = 1; // request connections made (rows use 1..clients of them)
  bool tcp = false;          // devices behind floe-esphome-sim (a fifth process)
};

/// The JSON name of a setting.
const char* setting_name(bool tcp) { return tcp ? "tcp" : "inside_provider"; }

class Instance {
 public:
  Instance() = default;
  Instance(const Instance&) = delete;
  Instance& operator=(const Instance&) = delete;
  ~Instance() { tear_down(); }

  /// Starts every process and waits until they are connected. False with error() on failure.
  bool bring_up(const InstanceSpec& spec, const PathsConfig& cfg) {
    spec_ = spec;
    send_lead_us_ = cfg.send_lead_us;
    s_ = map_shared();
    if (s_ == nullptr) return fail(fmt::format("mmap: {}", std::strerror(errno)));
    if (spec.tcp && !bring_up_devices()) return false;
    if (spec.path == "floe") return bring_up_floe(cfg);
    return bring_up_sockets(cfg);
  }

  void tear_down() {
    if (s_ != nullptr) {
      s_->stop.store(1, std::memory_order_release);
      s_->spec.kind = PhaseKind::kStop;
      s_->phase_gen.fetch_add(1, std::memory_order_release);
      wake_word(s_->phase_gen);
    }
    stop_child(clients_, std::chrono::milliseconds(2000));
    stop_child(provider_, std::chrono::milliseconds(2000));
    stop_child(core_, std::chrono::milliseconds(3000));
    stop_child(devices_, std::chrono::milliseconds(2000));
    clients_ = provider_ = core_ = devices_ = -1;
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
      dir_.clear();
    }
    unmap_shared(s_);
    s_ = nullptr;
    unmap_tcp_shared(tcp_);
    tcp_ = nullptr;
  }

  [[nodiscard]] const std::string& error() const { return error_; }
  [[nodiscard]] Shared& shared() { return *s_; }
  [[nodiscard]] const InstanceSpec& spec() const { return spec_; }
  [[nodiscard]] double send_lead_us() const { return send_lead_us_; }

  /// Core + provider CPU so far (ns).
  [[nodiscard]] std::int64_t cpu_ns() const {
    return std::max<std::int64_t>(0, process_cpu_ns_of(core_)) + std::max<std::int64_t>(0, process_cpu_ns_of(provider_));
  }
  /// Moves every process of the instance (core, provider, clients, devices) onto `cpus`. False if
  /// a process could not be moved (the phase then runs wherever the kernel puts it).
  bool place(const std::vector<int>& cpus) {
    bool ok = true;
    for (pid_t pid : {core_, provider_, clients_, devices_})
      if (pid > 0 && !set_process_cpus(pid, cpus)) ok = false;
    return ok;
  }
  /// CPU so far (ns) of what every path shares and none of them is: the clients process (the
  /// dashboards' side of every request) and, behind TCP, the simulated devices.
  [[nodiscard]] std::int64_t clients_cpu_ns() const {
    return std::max<std::int64_t>(0, process_cpu_ns_of(clients_)) + std::max<std::int64_t>(0, process_cpu_ns_of(devices_));
  }
  /// The threads of the path under test (core and provider), with their CPU so far.
  [[nodiscard]] std::vector<ThreadCpu> path_threads() const {
    auto out = thread_cpu_of(core_);
    auto more = thread_cpu_of(provider_);
    out.insert(out.end(), more.begin(), more.end());
    return out;
  }
  /// liveness(), or for floe the tail of the core's log: what to add to a failure.
  [[nodiscard]] std::string diagnose() {
    if (auto l = liveness(); !l.empty()) return l;
    const std::string log = core_log();
    return log.size() > 2 ? "core log" + log : std::string{};
  }
  [[nodiscard]] std::string liveness() {
    if (!child_alive(core_)) return "the core process exited" + core_log();
    if (!child_alive(provider_)) return "the provider process exited";
    if (!child_alive(clients_)) return "the clients process exited";
    if (spec_.tcp && !child_alive(devices_)) return "the devices process (floe-esphome-sim) exited";
    return {};
  }

 private:
  bool fail(std::string why) {
    error_ = std::move(why);
    if (s_ != nullptr && s_->error_set.load() != 0) error_ += fmt::format(" ({})", s_->error);
    return false;
  }
  std::string core_log() const {
    if (spec_.path != "floe" || dir_.empty()) return {};
    FloeSetup f;
    f.dir = dir_;
    return ": " + floe_core_log_tail(f) + (spec_.tcp ? " | floe-esphome log: " + floe_core_log_tail(f, "esphome.log") : "");
  }

  /// TCP setting: the devices process (floe-esphome-sim's library), forked before every other.
  bool bring_up_devices() {
    tcp_ = map_tcp_shared();
    if (tcp_ == nullptr) return fail(fmt::format("mmap: {}", std::strerror(errno)));
    Shared& s = *s_;
    TcpShared& t = *tcp_;
    const std::uint32_t n = spec_.devices;
    devices_ = fork_child([&] { return run_devices_process(s, t, n); });
    if (devices_ < 0) return fail("fork devices");
    std::string err;
    return wait_devices_ready(t, devices_, err) || fail(err);
  }

  bool wait_clients_ready() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (s_->clients_ready.load(std::memory_order_acquire) != spec_.clients + 1) {
      if (s_->error_set.load() != 0) return fail("clients");
      if (auto l = liveness(); !l.empty()) return fail(l);
      if (std::chrono::steady_clock::now() > deadline) return fail("clients did not connect in time");
      wait_word(s_->clients_ready, 0, std::chrono::milliseconds(50));
    }
    return true;
  }

  bool bring_up_floe(const PathsConfig& cfg) {
    char tmpl[] = "/tmp/floe-bench-paths-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return fail(fmt::format("mkdtemp: {}", std::strerror(errno)));
    dir_ = tmpl;
    FloeSetup setup{.core_bin = cfg.core_bin, .dir = dir_, .notify = spec_.notify, .doorbells = cfg.doorbells,
                    .loop_backend = spec_.backend, .devices = spec_.devices, .clients = spec_.clients, .tcp = tcp_, .esphome_bin = cfg.esphome_bin};
    std::string err;
    core_ = start_floe_core(setup, err);
    if (core_ < 0) return fail(err);
    if (!wait_floe_ready(setup, core_, -1, err)) return fail(err);
    Shared& s = *s_;
    if (spec_.tcp)
      provider_ = start_floe_esphome(setup, err);
    else
      provider_ = fork_child([&] { return run_floe_provider(s, setup); });
    if (provider_ < 0) return fail("provider: " + err);
    if (!wait_floe_ready(setup, core_, provider_, err)) return fail(err);
    clients_ = fork_child([&] { return run_floe_clients(s, setup); });
    if (clients_ < 0) return fail("fork clients");
    return wait_clients_ready();
  }

  bool bring_up_sockets(const PathsConfig& cfg) {
    const bool per_device = spec_.path == "per_device_socket";
    auto pair = [&](std::vector<int>& a, std::vector<int>& b) {
      int sv[2];
      if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return false;
      a.push_back(sv[0]);
      b.push_back(sv[1]);
      return true;
    };
    SocketCorePlan core{.per_device = per_device, .devices = spec_.devices, .client_fds = {}, .link_fds = {},
                        .task_threads = cfg.task_threads};
    SocketProviderPlan prov{.per_device = per_device, .link_fds = {}, .task_threads = cfg.task_threads, .tcp = tcp_};
    std::vector<int> client_ends;
    for (std::uint32_t i = 0; i < spec_.clients + 1; ++i)
      if (!pair(core.client_fds, client_ends)) return fail(fmt::format("socketpair: {}", std::strerror(errno)));
    const std::uint32_t links = per_device ? spec_.devices : 1;
    for (std::uint32_t i = 0; i < links; ++i)
      if (!pair(core.link_fds, prov.link_fds)) return fail(fmt::format("socketpair: {}", std::strerror(errno)));
    auto close_all = [](const std::vector<int>& fds) {
      for (int fd : fds) ::close(fd);
    };
    Shared& s = *s_;
    core_ = fork_child([&] {
      close_all(client_ends);
      close_all(prov.link_fds);
      return run_socket_core(s, core);
    });
    provider_ = fork_child([&] {
      close_all(client_ends);
      close_all(core.client_fds);
      close_all(core.link_fds);
      return run_socket_provider(s, prov);
    });
    clients_ = fork_child([&] {
      close_all(core.client_fds);
      close_all(core.link_fds);
      close_all(prov.link_fds);
      return run_socket_clients(s, client_ends, tcp_);
    });
    close_all(client_ends);
    close_all(core.client_fds);
    close_all(core.link_fds);
    close_all(prov.link_fds);
    if (core_ < 0 || provider_ < 0 || clients_ < 0) return fail("fork failed");
    return wait_clients_ready() && (tcp_ == nullptr || wait_provider_connected());
  }

  /// TCP setting: the baselines' provider has opened every device's native-API connection.
  bool wait_provider_connected() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60 + spec_.devices / 10);
    while (tcp_->provider_ready.load(std::memory_order_acquire) == 0) {
      if (s_->error_set.load() != 0) return fail("provider");
      if (auto l = liveness(); !l.empty()) return fail(l);
      if (std::chrono::steady_clock::now() > deadline) return fail("the provider did not connect to its devices in time");
      wait_word(tcp_->provider_ready, 0, std::chrono::milliseconds(50));
    }
    return true;
  }

  InstanceSpec spec_;
  double send_lead_us_ = 0;
  Shared* s_ = nullptr;
  TcpShared* tcp_ = nullptr;
  pid_t core_ = -1, provider_ = -1, clients_ = -1, devices_ = -1;
  std::string dir_;
  std::string error_;
};

// ---- phases -----------------------------------------------------------------------------------

struct PhaseResult {
  bool ok = true;
  std::string error;
  LogHistogram hist;           // request or commit latency (after the phase's warm-up)
  std::uint64_t sent = 0;      // requests or commits sent in the whole phase
  std::uint64_t measured = 0;  // samples in hist
  std::uint64_t lost = 0;      // measured-window sends without an arrival / sighting
  double achieved_rps = 0;     // completed / phase length
  double cpu_ns_per_op = 0;    // core + provider CPU over the phase / sent
  double client_cpu_ns_per_op = 0;  // clients' (and TCP devices') CPU over the phase / completed
  double busy_cpus = 0;        // CPUs the instance's processes kept busy on average over the phase
  std::string busiest_thread;  // the path's (core's or provider's) busiest thread over the phase
  double busiest_cpus = 0;     // its CPU over the phase / the phase's length (1.0: one CPU, always)
};

/// The senders' spin before each send (see send_at_ns): `lead_us`, but never more than 5% of the
/// mean interval between sends, so that all senders together spin at most 5% of one CPU. At the
/// latency phases' 500/s that is 100 us; on the load ramp's higher rates it shrinks towards
/// nothing, so spinning senders do not take the vCPUs the path under test needs.
std::int64_t send_lead_ns(double lead_us, double rate) {
  if (rate <= 0) return 0;
  return static_cast<std::int64_t>(std::min(lead_us * 1e3, 0.05e9 / rate));
}

/// Runs one phase of `seconds`; the first `warm` fraction of sends is left out of the histogram.
PhaseResult run_phase(Instance& inst, PhaseKind kind, std::uint32_t clients, double rate, double seconds,
                      double warm = 0.2) {
  Shared& s = inst.shared();
  PhaseResult r;
  for (auto* arr : {s.req_intended, s.req_arrived, s.commit_intended, s.commit_seen})
    std::memset(static_cast<void*>(arr), 0, sizeof(std::atomic<std::int64_t>) * kMaxSeq);
  s.clients_done.store(0);
  s.provider_done.store(0);
  s.sent.store(0);
  s.completed.store(0);
  s.commits_sent.store(0);
  s.commit_lead_cpu_ns.store(0);
  const std::int64_t start = now_ns() + 20'000'000;
  const auto length = static_cast<std::int64_t>(seconds * 1e9);
  s.spec = PhaseSpec{.kind = kind, .clients = clients, .devices = inst.spec().devices, .rate = rate,
                     .start_ns = start, .end_ns = start + length,
                     .lead_ns = send_lead_ns(inst.send_lead_us(), rate)};
  const std::int64_t cpu0 = inst.cpu_ns();
  const std::int64_t client_cpu0 = inst.clients_cpu_ns();
  const std::vector<ThreadCpu> threads0 = inst.path_threads();
  const std::int64_t start0 = now_ns();
  // SYNC(phase): release pairs with the drivers' acquire in next_phase: `spec` is published.
  s.phase_gen.fetch_add(1, std::memory_order_release);
  wake_word(s.phase_gen);

  const std::int64_t deadline = start + length + 30'000'000'000LL;
  const bool commit = kind == PhaseKind::kCommitOpen;
  for (;;) {
    const bool clients_finished = s.clients_done.load(std::memory_order_acquire) == inst.spec().clients;
    const bool provider_finished = !commit || s.provider_done.load(std::memory_order_acquire) != 0;
    if (clients_finished && provider_finished) break;
    if (auto l = inst.liveness(); !l.empty()) {
      r.ok = false;
      r.error = l;
      break;
    }
    if (now_ns() > deadline) {
      r.ok = false;
      r.error = "phase did not finish in time";
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const std::int64_t finished = now_ns();
  // CPU up to the end of the schedule, not over the wait for the last sightings below (idle for
  // blocking paths, but spin and poll burn it).
  const std::int64_t cpu1 = inst.cpu_ns();
  const std::int64_t client_cpu1 = inst.clients_cpu_ns();
  const std::vector<ThreadCpu> threads1 = inst.path_threads();
  if (commit && r.ok) std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the last sightings
  if (s.error_set.load() != 0) {
    r.ok = false;
    r.error = s.error;
  }
  if (!r.ok) return r;

  const std::int64_t warm_end = start + static_cast<std::int64_t>(warm * static_cast<double>(length));
  const auto* intended = commit ? s.commit_intended : s.req_intended;
  const auto* arrived = commit ? s.commit_seen : s.req_arrived;
  r.sent = commit ? s.commits_sent.load() : s.sent.load();
  for (std::uint64_t seq = 1; seq < kMaxSeq; ++seq) {
    const std::int64_t t0 = intended[seq].load(std::memory_order_relaxed);
    if (t0 == 0) continue;
    if (t0 < warm_end) continue;
    const std::int64_t t1 = arrived[seq].load(std::memory_order_relaxed);
    if (t1 == 0) {
      ++r.lost;
      continue;
    }
    r.hist.record(t1 - t0);
    ++r.measured;
  }
  // Past saturation the clients finish their schedule late: the rate is over the time they took.
  const double elapsed_s = static_cast<double>(std::max(finished - start, length)) / 1e9;
  r.achieved_rps = static_cast<double>(commit ? r.sent : s.completed.load()) / elapsed_s;
  // The in-process commit driver is a provider thread: its spin to each send time is the harness's,
  // not the provider's. (Behind TCP the driver runs in the devices process, which is not counted.)
  const std::int64_t harness_cpu = commit && !inst.spec().tcp ? s.commit_lead_cpu_ns.load() : 0;
  if (r.sent > 0) r.cpu_ns_per_op = static_cast<double>(cpu1 - cpu0 - harness_cpu) / static_cast<double>(r.sent);
  if (const std::uint64_t done = s.completed.load(); !commit && done > 0)
    r.client_cpu_ns_per_op = static_cast<double>(client_cpu1 - client_cpu0) / static_cast<double>(done);
  const auto span_ns = static_cast<double>(std::max<std::int64_t>(1, finished - start0));
  r.busy_cpus = static_cast<double>((cpu1 - cpu0) + (client_cpu1 - client_cpu0)) / span_ns;  // every process
  for (const ThreadCpu& t : threads1) {
    std::int64_t before = 0;
    for (const ThreadCpu& b : threads0)
      if (b.tid == t.tid) before = b.ns;
    if (const double cpus = static_cast<double>(t.ns - before) / span_ns; cpus > r.busiest_cpus) {
      r.busiest_cpus = cpus;
      r.busiest_thread = t.name;
    }
  }
  return r;
}

// ---- rows -------------------------------------------------------------------------------------

struct Spread {
  std::vector<double> values;
  [[nodiscard]] double median() const {
    if (values.empty()) return 0;
    auto v = values;
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  }
  [[nodiscard]] double min() const { return values.empty() ? 0 : *std::min_element(values.begin(), values.end()); }
  [[nodiscard]] double max() const { return values.empty() ? 0 : *std::max_element(values.begin(), values.end()); }
  /// The repetition holding the (lower) median value: its other figures make a consistent pair.
  [[nodiscard]] std::size_t median_index() const {
    std::vector<std::size_t> order(values.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return values[a] < values[b]; });
    return order.empty() ? 0 : order[(order.size() - 1) / 2];
  }
};

struct Side {  // request or commit figures of a row
  LogHistogram merged;
  Spread p50, p90, p99, p999, max, cpu;
  std::uint64_t sent = 0, measured = 0, lost = 0;
  void add(const PhaseResult& r) {
    merged.merge(r.hist);
    p50.values.push_back(static_cast<double>(r.hist.percentile(0.50)));
    p90.values.push_back(static_cast<double>(r.hist.percentile(0.90)));
    p99.values.push_back(static_cast<double>(r.hist.percentile(0.99)));
    p999.values.push_back(static_cast<double>(r.hist.percentile(0.999)));
    max.values.push_back(static_cast<double>(r.hist.max()));
    cpu.values.push_back(r.cpu_ns_per_op);
    sent += r.sent;
    measured += r.measured;
    lost += r.lost;
  }
};

struct RampPoint {
  double offered = 0, achieved = 0;
  std::int64_t p50 = 0, p99 = 0;
};

struct Row {
  std::string path, setting = "inside_provider", notify, backend;
  std::uint32_t devices = 0, clients = 0;
  std::string status = "ok", reason{};
  Side request{}, commit{};
  Spread max_rps{}, cpu_saturated{}, client_cpu_saturated{}, busy_cpus_saturated{}, busiest_cpus_saturated{};
  std::vector<std::string> busiest_thread_saturated{};  // per repetition, beside busiest_cpus_saturated
  /// The busiest thread of the repetition with the median busiest-thread CPU, and that CPU.
  [[nodiscard]] std::pair<std::string, double> busiest_saturated() const {
    if (busiest_thread_saturated.empty()) return {"", 0};
    const std::size_t i = busiest_cpus_saturated.median_index();
    return {busiest_thread_saturated[i], busiest_cpus_saturated.values[i]};
  }
  std::vector<RampPoint> ramp{};
  int repetitions = 0;
  bool pinned = false;  // the latency phases ran with every process on one CPU
};

std::string us(double ns) { return fmt::format("{:.1f}", ns / 1000.0); }

/// Where the phases run: the latency phases on one CPU (`latency`), the throughput phases on all
/// the run may use (`all`). Empty `latency`: not pinned (--no-pin, or a single CPU).
struct Placement {
  std::vector<int> latency;
  std::vector<int> all;
  /// Before a latency phase. False if asked to pin and a process could not be moved.
  bool for_latency(Instance& inst) const { return latency.empty() || inst.place(latency); }
  void for_throughput(Instance& inst) const {
    if (!latency.empty()) (void)inst.place(all);
  }
};

/// Warm-up of a new instance: one short request phase and one commit phase, not recorded.
void warm_up(Instance& inst, const PathsConfig& cfg, const Placement& where) {
  (void)where.for_latency(inst);
  (void)run_phase(inst, PhaseKind::kRequestOpen, 1, cfg.load_rps, std::min(0.3, cfg.phase_s));
  (void)run_phase(inst, PhaseKind::kCommitOpen, 1, cfg.load_rps, std::min(0.3, cfg.phase_s));
}

/// One repetition of `row`: its request, commit and saturation phases. False (the row failed,
/// with its reason) if a phase did.
bool measure_repetition(Instance& inst, Row& row, const PathsConfig& cfg, const Placement& where) {
  if (!where.for_latency(inst)) row.pinned = false;
  auto req = run_phase(inst, PhaseKind::kRequestOpen, row.clients, cfg.load_rps, cfg.phase_s);
  auto com = req.ok ? run_phase(inst, PhaseKind::kCommitOpen, row.clients, cfg.load_rps, cfg.phase_s) : PhaseResult{};
  where.for_throughput(inst);
  auto sat = com.ok && req.ok ? run_phase(inst, PhaseKind::kRequestClosed, row.clients, 0, cfg.phase_s) : PhaseResult{};
  for (const auto* r : {&req, &com, &sat}) {
    if (!r->ok) {
      row.status = "failed";
      row.reason = r->error;
      if (auto d = inst.diagnose(); !d.empty() && d != r->error) row.reason += " [" + d + "]";
      return false;
    }
  }
  row.request.add(req);
  row.commit.add(com);
  row.max_rps.values.push_back(sat.achieved_rps);
  row.cpu_saturated.values.push_back(sat.cpu_ns_per_op);
  row.client_cpu_saturated.values.push_back(sat.client_cpu_ns_per_op);
  row.busy_cpus_saturated.values.push_back(sat.busy_cpus);
  row.busiest_cpus_saturated.values.push_back(sat.busiest_cpus);
  row.busiest_thread_saturated.push_back(sat.busiest_thread);
  ++row.repetitions;
  return true;
}

void measure_row(Instance& inst, Row& row, const PathsConfig& cfg, const Placement& where, bool with_ramp) {
  row.pinned = !where.latency.empty();
  for (int rep = 0; rep < cfg.repetitions; ++rep) {
    if (!measure_repetition(inst, row, cfg, where)) return;
  }
  if (!with_ramp) return;
  // From a quarter of the measured maximum up by 1.5x until the path falls behind its schedule
  // (achieved < 90% of offered): the saturation point, whatever the noisy maximum said.
  double offered = std::max(1.0, row.max_rps.median() / 4);
  for (int step = 0; step < 12 && offered * cfg.phase_s < static_cast<double>(kMaxSeq - 1); ++step) {
    auto r = run_phase(inst, PhaseKind::kRequestOpen, row.clients, offered, cfg.phase_s);
    if (!r.ok) break;
    row.ramp.push_back({offered, r.achieved_rps, r.hist.percentile(0.5), r.hist.percentile(0.99)});
    if (r.achieved_rps < 0.9 * offered) break;
    offered *= 1.5;
  }
}

// ---- output -----------------------------------------------------------------------------------

ordered_json side_json(const Side& s, bool with_cdf) {
  ordered_json o = {{"p50_ns", s.p50.median()},
                    {"p90_ns", s.p90.median()},
                    {"p99_ns", s.p99.median()},
                    {"p999_ns", s.p999.median()},
                    {"max_ns", s.max.max()},
                    {"p50_spread_ns", {s.p50.min(), s.p50.max()}},
                    {"p99_spread_ns", {s.p99.min(), s.p99.max()}},
                    {"sent", s.sent},
                    {"measured", s.measured},
                    {"lost", s.lost},
                    {"cpu_ns_per_op", s.cpu.median()}};
  if (with_cdf) {
    ordered_json cdf = ordered_json::array();
    for (const auto& [ns, frac] : s.merged.cdf()) cdf.push_back({ns, frac});
    o["cdf"] = std::move(cdf);
  }
  return o;
}

ordered_json row_json(const Row& r) {
  ordered_json o = {{"path", r.path},         {"setting", r.setting}, {"devices", r.devices},
                    {"clients", r.clients},   {"notify", r.notify},   {"loop_backend", r.backend},
                    {"status", r.status}};
  if (r.status != "ok") {
    o["reason"] = r.reason;
    for (const char* k : {"request_p50_ns", "request_p99_ns", "commit_p50_ns", "commit_p99_ns", "max_rps",
                          "cpu_ns_per_request", "cpu_ns_per_commit"})
      o[k] = nullptr;
    return o;
  }
  o["request_p50_ns"] = r.request.p50.median();
  o["request_p99_ns"] = r.request.p99.median();
  o["commit_p50_ns"] = r.commit.p50.median();
  o["commit_p99_ns"] = r.commit.p99.median();
  o["max_rps"] = r.max_rps.median();
  o["cpu_ns_per_request"] = r.request.cpu.median();
  o["cpu_ns_per_commit"] = r.commit.cpu.median();
  o["repetitions"] = r.repetitions;
  o["max_rps_spread"] = {r.max_rps.min(), r.max_rps.max()};
  o["cpu_ns_per_request_saturated"] = r.cpu_saturated.median();
  o["latency_pinned"] = r.pinned;
  o["client_cpu_ns_per_request_saturated"] = r.client_cpu_saturated.median();
  o["busy_cpus_saturated"] = r.busy_cpus_saturated.median();
  const auto [busiest, busiest_cpus] = r.busiest_saturated();
  o["busiest_thread_saturated"] = {{"name", busiest}, {"cpus", busiest_cpus}};
  o["request"] = side_json(r.request, true);
  o["commit"] = side_json(r.commit, true);
  if (!r.ramp.empty()) {
    ordered_json ramp = ordered_json::array();
    for (const auto& p : r.ramp)
      ramp.push_back({{"offered_rps", p.offered}, {"achieved_rps", p.achieved}, {"request_p50_ns", p.p50},
                      {"request_p99_ns", p.p99}});
    o["load_ramp"] = std::move(ramp);
  }
  return o;
}

void print_header() {
  fmt::print("{:<18} {:<6} {:<16} {:>5} {:>3} | {:>8} {:>8} {:>13} | {:>8} {:>8} | {:>9} | {:>8} {:>8}\n", "path",
             "set", "notify", "dev", "cli", "req p50", "req p99", "p50 spread", "com p50", "com p99", "max rps",
             "cpu/req", "cpu/com");
  fmt::print("{:<18} {:<6} {:<16} {:>5} {:>3} | {:>8} {:>8} {:>13} | {:>8} {:>8} | {:>9} | {:>8} {:>8}\n", "", "", "",
             "", "", "us", "us", "us", "us", "us", "req/s", "us", "us");
}

std::string row_line(const Row& r) {
  const std::string notify = r.backend.empty() ? r.notify : r.notify + "/" + r.backend;
  const char* set = r.setting == "tcp" ? "tcp" : "inproc";
  if (r.status != "ok")
    return fmt::format("{:<18} {:<6} {:<16} {:>5} {:>3} | {}: {}", r.path, set, notify, r.devices, r.clients, r.status,
                       r.reason);
  return fmt::format("{:<18} {:<6} {:<16} {:>5} {:>3} | {:>8} {:>8} {:>13} | {:>8} {:>8} | {:>9.0f} | {:>8} {:>8}",
                     r.path, set, notify, r.devices, r.clients, us(r.request.p50.median()), us(r.request.p99.median()),
                     us(r.request.p50.min()) + "-" + us(r.request.p50.max()), us(r.commit.p50.median()),
                     us(r.commit.p99.median()), r.max_rps.median(), us(r.request.cpu.median()),
                     us(r.commit.cpu.median()));
}

struct Target {
  std::string name;
  double target = 0;
  bool at_least = false;
  std::optional<double> measured;
  bool judged = true;  // false: the TCP setting, where the issue asks for the ratios, not a target
  [[nodiscard]] bool pass() const { return measured && (at_least ? *measured >= target : *measured <= target); }
};

/// The ratios at `devices`, among the rows of one setting.
/// `cpus`: the CPUs the run may use (for the throughput ceiling).
std::vector<Target> targets(const std::vector<Row>& rows, std::uint32_t devices, const std::string& setting,
                            unsigned cpus) {
  auto find = [&](const std::string& path, std::uint32_t clients) -> const Row* {
    for (const Row& r : rows)
      if (r.path == path && r.setting == setting && r.devices == devices && r.clients == clients &&
          r.notify == "eventfd" && r.backend.empty() && r.status == "ok")
        return &r;
    return nullptr;
  };
  auto best_rps = [&](const std::string& path) -> const Row* {
    const Row* best = nullptr;
    for (const Row& r : rows)
      if (r.path == path && r.setting == setting && r.devices == devices && r.status == "ok" && r.backend.empty() &&
          (best == nullptr || r.max_rps.median() > best->max_rps.median()))
        best = &r;
    return best;
  };
  const Row* f = find("floe", 1);
  const Row* o = find("old", 1);
  std::vector<Target> out;
  auto ratio = [&](std::string name, auto get) {
    Target t{std::move(name), 0.5, false, std::nullopt};
    if (f && o && get(*o) > 0) t.measured = get(*f) / get(*o);
    out.push_back(std::move(t));
  };
  const std::string at = fmt::format(" ({} devices, 1 client, {})", devices, setting);
  ratio("floe/old request p50" + at, [](const Row& r) { return r.request.p50.median(); });
  ratio("floe/old request p99" + at, [](const Row& r) { return r.request.p99.median(); });
  ratio("floe/old commit p50" + at, [](const Row& r) { return r.commit.p50.median(); });
  ratio("floe/old commit p99" + at, [](const Row& r) { return r.commit.p99.median(); });
  Target t{fmt::format("floe/old max_rps ({} devices, best client count, {})", devices, setting), 3.0, true,
           std::nullopt};
  const Row* fr = best_rps("floe");
  const Row* orps = best_rps("old");
  if (fr && orps && orps->max_rps.median() > 0) t.measured = fr->max_rps.median() / orps->max_rps.median();
  out.push_back(std::move(t));
  for (auto& x : out) x.judged = setting != "tcp";
  // Not a target: the most the max_rps ratio could be on this machine. The clients (the dashboards,
  // and behind TCP the simulated devices) share its CPUs, and each of floe's requests costs them
  // client_cpu_ns_per_request_saturated of CPU, so even a core and provider that cost nothing could
  // not serve more than cpus / that per second. Over old's best rate that is the ceiling of the
  // ratio (bench/README.md).
  Target ceiling{fmt::format("floe/old max_rps ceiling: the clients' own CPU ({} CPUs)", cpus), 3.0, true,
                 std::nullopt};
  if (fr && orps && orps->max_rps.median() > 0 && fr->client_cpu_saturated.median() > 0)
    ceiling.measured = static_cast<double>(cpus) * 1e9 / fr->client_cpu_saturated.median() / orps->max_rps.median();
  ceiling.judged = false;
  out.push_back(std::move(ceiling));
  // Not one of the targets, reported beside them: one client's closed-loop round trip
  // (request, provider's answer, client has it), the interval where floe saves the most hops
  // (4 wakeups against 10; bench/README.md). The ratio of the 1-client request rates, inverted.
  Target rt{"floe/old round trip, closed loop" + at, 0.5, false, std::nullopt};
  if (f && o && f->max_rps.median() > 0) rt.measured = o->max_rps.median() / f->max_rps.median();
  rt.judged = false;
  out.push_back(std::move(rt));
  return out;
}

std::string iso_now() {
  char buf[64];
  const std::time_t t = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S%z", std::localtime(&t));
  return buf;
}

/// Runs `floe-bench ring` with small counts into a temporary JSON file and returns its results.
ordered_json run_transports(const PathsConfig& cfg) {
  char tmpl[] = "/tmp/floe-bench-ring-XXXXXX";
  const int fd = ::mkstemp(tmpl);
  if (fd < 0) return ordered_json::array();
  ::close(fd);
  RingBenchConfig ring;
  ring.quick = cfg.quick;
  if (!cfg.quick) {
    ring.round_trips = 20'000;
    ring.messages = 1'000'000;
    ring.rounds = 2;
  }
  ring.json_path = tmpl;
  ring.command = cfg.command + " (transports)";
  fmt::print("\n== transports (floe-bench ring{}) ==\n", cfg.quick ? " --quick" : ", small counts");
  std::fflush(stdout);
  (void)run_ring_bench(ring);
  ordered_json out = ordered_json::array();
  try {
    std::ifstream in(tmpl);
    auto doc = ordered_json::parse(in);
    out = doc.value("results", ordered_json::array());
  } catch (const std::exception&) {
  }
  ::unlink(tmpl);
  return out;
}

}  // namespace

CLI::App* add_paths_subcommand(CLI::App& app, PathsConfig& cfg) {
  CLI::App* cmd = app.add_subcommand(
      "paths", "the seed's request paths (old, per_device_socket, floe): latency, throughput, CPU");
  cmd->add_option("--paths", cfg.paths, "paths to run")->delimiter(',')->capture_default_str();
  cmd->add_option("--devices", cfg.devices, "device counts")->delimiter(',')->capture_default_str();
  cmd->add_option("--clients", cfg.clients, "client counts swept at --sweep-devices")->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--sweep-devices", cfg.sweep_devices, "device count of the client sweep and the notify comparison")
      ->capture_default_str();
  cmd->add_option("--throughput-clients", cfg.throughput_clients, "clients of the second row at every device count")
      ->capture_default_str();
  cmd->add_option("--notify", cfg.notify, "floe notification strategies to compare ('' for none)")->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--repetitions", cfg.repetitions, "repetitions per row (median and spread)")->capture_default_str();
  cmd->add_option("--phase-s", cfg.phase_s, "seconds per measured phase")->capture_default_str();
  cmd->add_option("--load-rps", cfg.load_rps, "offered load of the latency phases")->capture_default_str();
  cmd->add_option("--send-lead-us", cfg.send_lead_us,
                  "open phases: senders sleep until this long before each intended send time, then spin to it "
                  "(capped at 5% of the mean interval between sends; 0: sleep only, and a timer wakeup's lateness "
                  "then counts into every sample)")
      ->capture_default_str();
  cmd->add_flag("!--no-ramp", cfg.ramp, "skip the offered-load ramp");
  cmd->add_flag("!--no-paired", cfg.paired,
                "skip the rows the targets come from: floe and old at --sweep-devices, 1 and the most clients, "
                "one repetition of each in turn (without them, the targets use the sweep's rows)");
  cmd->add_flag("--pin-latency", cfg.pin,
                "run the latency phases with every process of the path on one CPU (the last allowed): a hop is "
                "then a context switch, never a wakeup of another, idle CPU");
  cmd->add_flag("!--no-transports", cfg.transports, "do not run floe-bench ring for the transports section");
  cmd->add_option("--task-threads", cfg.task_threads, "the baselines' task thread pools")->capture_default_str();
  cmd->add_option("--setting", cfg.setting,
                  "inprocess (device answered inside the provider), tcp (devices behind floe-esphome-sim on "
                  "loopback) or both [both; --quick: inprocess]")
      ->check(CLI::IsMember({"inprocess", "tcp", "both"}));
  cmd->add_option("--core-bin", cfg.core_bin, "the floe-core program [the one built with floe-bench]");
  cmd->add_flag("!--no-doorbells", cfg.doorbells,
                "floe's rows with a flag and an eventfd per ring instead of doorbells ([rings] doorbells = false)");
  cmd->add_option("--esphome-bin", cfg.esphome_bin, "the floe-esphome program (tcp setting) [the one built with floe-bench]");
  cmd->add_option("--json", cfg.json_path, "also write every figure as JSON to this file");
  cmd->add_flag("--quick", cfg.quick, "100 devices, 1 and 4 clients, short phases: under a minute");
  return cmd;
}

int run_paths_bench(PathsConfig cfg) {
  if (cfg.core_bin.empty()) cfg.core_bin = FLOE_CORE_BIN;
  if (cfg.esphome_bin.empty()) cfg.esphome_bin = FLOE_ESPHOME_BIN;
  if (cfg.setting.empty()) cfg.setting = cfg.quick ? "inprocess" : "both";
  std::vector<bool> settings;  // tcp?
  if (cfg.setting != "tcp") settings.push_back(false);
  if (cfg.setting != "inprocess") settings.push_back(true);
  const bool with_tcp = settings.back();
  if (cfg.quick) {
    cfg.devices = {100};
    cfg.clients = {1, 4};
    cfg.sweep_devices = 100;
    cfg.throughput_clients = 4;
    cfg.notify = {};
    cfg.phase_s = 0.25;
    cfg.ramp = false;
  }
  for (const auto& p : cfg.paths) {
    if (p != "floe" && p != "old" && p != "per_device_socket") {
      fmt::print(stderr, "floe-bench paths: unknown path '{}' (floe, old, per_device_socket)\n", p);
      return 2;
    }
  }
  for (auto d : cfg.devices)
    if (d == 0 || d > 10'000) {
      fmt::print(stderr, "floe-bench paths: --devices must be 1..10000\n");
      return 2;
    }
  for (auto c : cfg.clients)
    if (c == 0 || c > kMaxClients) {
      fmt::print(stderr, "floe-bench paths: --clients must be 1..{}\n", kMaxClients);
      return 2;
    }
  if (cfg.send_lead_us < 0 || cfg.send_lead_us > 10'000) {
    fmt::print(stderr, "floe-bench paths: --send-lead-us must be 0..10000\n");
    return 2;
  }
  if (cfg.repetitions < 1 || cfg.phase_s <= 0 || cfg.load_rps <= 0 || cfg.throughput_clients == 0 ||
      cfg.throughput_clients > kMaxClients || cfg.task_threads == 0) {
    fmt::print(stderr, "floe-bench paths: --repetitions, --phase-s, --load-rps, --throughput-clients and "
                       "--task-threads must be positive (clients at most {})\n", kMaxClients);
    return 2;
  }
  if (cfg.notify.size() == 1 && cfg.notify[0].empty()) cfg.notify.clear();
  if (with_tcp) {
    for (auto d : cfg.devices)
      if (d > kMaxTcpDevices) {
        fmt::print(stderr, "floe-bench paths: the tcp setting takes at most {} devices\n", kMaxTcpDevices);
        return 2;
      }
    const bool floe = std::find(cfg.paths.begin(), cfg.paths.end(), "floe") != cfg.paths.end();
    if (floe && (cfg.esphome_bin.empty() || ::access(cfg.esphome_bin.c_str(), X_OK) != 0)) {
      fmt::print(stderr, "floe-bench paths: the tcp setting of floe needs floe-esphome ('{}' is not executable; "
                         "--esphome-bin)\n", cfg.esphome_bin);
      return 2;
    }
  }
  if (cfg.load_rps * cfg.phase_s >= static_cast<double>(kMaxSeq - 1)) {
    fmt::print(stderr, "floe-bench paths: --load-rps x --phase-s must stay below {}\n", kMaxSeq);
    return 2;
  }
  if (!cfg.json_path.empty() && !std::ofstream(cfg.json_path)) {
    fmt::print(stderr, "floe-bench paths: cannot write {}\n", cfg.json_path);
    return 2;
  }
  raise_fd_limit();

  const MachineInfo machine = probe_machine();
  fmt::print("floe-bench paths — {} | {} | {} cores ({} allowed) | load {}\n", machine.cpu_model, machine.kernel,
             machine.cores_online, machine.cores_allowed, machine.loadavg);
  fmt::print("{} repetition(s) of {:.2f} s phases; latency at {:.0f} offered requests/s and commits/s, senders "
             "spinning the last {:.0f} us (at most 5% of the interval between sends) to each send time; {}\n\n",
             cfg.repetitions, cfg.phase_s, cfg.load_rps, cfg.send_lead_us,
             cfg.setting == "both"  ? "device answered inside the provider, then behind TCP (floe-esphome-sim)"
             : cfg.setting == "tcp" ? "devices behind TCP (floe-esphome-sim on loopback)"
                                    : "device answered inside the provider");

  Placement where;
  where.all = allowed_cpus();
  if (cfg.pin && where.all.size() >= 2) where.latency = {where.all.back()};
  if (!where.latency.empty())
    fmt::print("latency phases: every process of the path on cpu{} (one CPU: no wakeup waits for an idle CPU to "
               "come out of halt); throughput phases on all {} CPUs (--pin-latency)\n\n",
               where.latency.front(), where.all.size());
  else
    fmt::print("not pinned{}: the kernel places every process\n\n", cfg.pin ? " (a single CPU)" : "");

  // The instances to bring up: every path at every device count (rows: 1 and throughput_clients
  // clients, plus the client sweep at sweep_devices), then floe's notification strategies.
  struct Plan {
    InstanceSpec spec;
    std::vector<std::uint32_t> rows;
  };
  std::vector<Plan> plans;
  for (const bool tcp : settings) {
    for (const auto& path : cfg.paths) {
      for (auto d : cfg.devices) {
        std::vector<std::uint32_t> rows{1, cfg.throughput_clients};
        if (d == cfg.sweep_devices) rows.insert(rows.end(), cfg.clients.begin(), cfg.clients.end());
        std::sort(rows.begin(), rows.end());
        rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
        plans.push_back(
            {{.path = path, .notify = "eventfd", .backend = "", .devices = d, .clients = rows.back(), .tcp = tcp},
             rows});
      }
    }
  }
  // The notification strategies: in-process only (behind TCP the device's I/O dominates).
  if (!settings.front() && std::find(cfg.paths.begin(), cfg.paths.end(), "floe") != cfg.paths.end()) {
    for (const auto& n : cfg.notify) {
      const auto slash = n.find('/');
      InstanceSpec spec{.path = "floe", .notify = n.substr(0, slash),
                        .backend = slash == std::string::npos ? "" : n.substr(slash + 1), .devices = cfg.sweep_devices,
                        .clients = 1};
      if (spec.backend.empty()) spec.backend = "io_uring";  // named explicitly in the comparison
      plans.push_back({spec, {1}});
    }
  }
  std::size_t total_rows = 0;
  for (const auto& p : plans) total_rows += p.rows.size();

  print_header();
  std::vector<Row> rows;
  bool any_failed = false;
  std::size_t done = 0;
  const auto t_begin = std::chrono::steady_clock::now();
  for (const auto& plan : plans) {
    const InstanceSpec& spec = plan.spec;
    fmt::print(stderr, "  [{}/{}] starting {} {} ({} devices, {} clients, notify {}{}) ...\n", done + 1, total_rows,
               spec.path, spec.tcp ? "behind TCP" : "in-process", spec.devices, spec.clients, spec.notify,
               spec.backend.empty() ? "" : "/" + spec.backend);
    Instance inst;
    const bool up = inst.bring_up(spec, cfg);
    if (up) warm_up(inst, cfg, where);
    for (auto clients : plan.rows) {
      Row row{.path = spec.path, .setting = setting_name(spec.tcp), .notify = spec.notify, .backend = spec.backend,
              .devices = spec.devices, .clients = clients};
      ++done;
      if (!up) {
        // A strategy the core refuses is "skipped"; anything else failed.
        const bool refused = inst.error().find("not supported") != std::string::npos;
        row.status = refused ? "skipped" : "failed";
        row.reason = inst.error();
      } else {
        fmt::print(stderr, "  [{}/{}] {} {} {} devices {} clients ({:.0f} s so far)\n", done, total_rows, spec.path,
                   row.setting, spec.devices, clients,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t_begin).count());
        measure_row(inst, row, cfg, where,
                    cfg.ramp && spec.devices == cfg.sweep_devices && clients == cfg.throughput_clients &&
                        spec.backend.empty());
      }
      if (row.status == "failed") any_failed = true;
      fmt::print("{}\n", row_line(row));
      std::fflush(stdout);
      rows.push_back(std::move(row));
    }
  }

  // The targets' rows again, floe and old taken in turn: one repetition of each, then the next.
  // The sweep measures all of one path's rows before the other's, minutes apart, and on a shared
  // VM the cost of a wakeup drifts over minutes (bench/README.md): a ratio of two rows measured
  // at different times carries that drift. Both instances stay up; the idle one sleeps.
  std::vector<Row> paired;
  const bool both_paths = std::find(cfg.paths.begin(), cfg.paths.end(), "floe") != cfg.paths.end() &&
                          std::find(cfg.paths.begin(), cfg.paths.end(), "old") != cfg.paths.end();
  if (cfg.paired && both_paths) {
    std::uint32_t most = cfg.throughput_clients;
    for (auto c : cfg.clients) most = std::max(most, c);
    fmt::print("\nfloe and old in turn (one repetition each, then the next; the targets below come from these "
               "rows):\n");
    for (const bool tcp : settings) {
      InstanceSpec fs{.path = "floe", .notify = "eventfd", .backend = "", .devices = cfg.sweep_devices, .clients = most,
                      .tcp = tcp};
      InstanceSpec os = fs;
      os.path = "old";
      fmt::print(stderr, "  [paired] starting floe and old {} ({} devices, {} clients) ...\n",
                 tcp ? "behind TCP" : "in-process", cfg.sweep_devices, most);
      Instance fi;
      Instance oi;
      const bool up = fi.bring_up(fs, cfg) && oi.bring_up(os, cfg);
      if (up) {
        warm_up(fi, cfg, where);
        warm_up(oi, cfg, where);
      }
      for (const std::uint32_t clients : {std::uint32_t{1}, most}) {
        Row fr{.path = "floe", .setting = setting_name(tcp), .notify = "eventfd", .backend = "",
               .devices = cfg.sweep_devices, .clients = clients};
        Row orow = fr;
        orow.path = "old";
        if (!up) {
          for (Row* r : {&fr, &orow}) {
            r->status = "failed";
            r->reason = !fi.error().empty() ? fi.error() : oi.error();
          }
        } else {
          fmt::print(stderr, "  [paired] floe and old {} {} devices {} clients\n", setting_name(tcp), cfg.sweep_devices,
                     clients);
          fr.pinned = orow.pinned = !where.latency.empty();
          for (int rep = 0; rep < cfg.repetitions; ++rep) {
            if (!measure_repetition(fi, fr, cfg, where) || !measure_repetition(oi, orow, cfg, where)) break;
          }
        }
        for (Row* r : {&fr, &orow}) {
          if (r->status == "failed") any_failed = true;
          fmt::print("{}\n", row_line(*r));
          paired.push_back(std::move(*r));
        }
        std::fflush(stdout);
        if (clients == most) break;  // most == 1: one row each
      }
    }
  }

  // Where the CPU goes at saturation (the closed-loop phases).
  fmt::print("\nat saturation (closed loop): CPU per request of the path (core + provider) and of the clients "
             "(behind TCP with the simulated devices), the CPUs kept busy, and the path's busiest thread\n");
  for (const Row& r : rows) {
    if (r.status != "ok") continue;
    const std::string notify = r.backend.empty() ? r.notify : r.notify + "/" + r.backend;
    const auto [busiest, busiest_cpus] = r.busiest_saturated();
    fmt::print("  {:<18} {:<6} {:<16} {:>5} {:>3} | {:>9.0f} req/s | path {:>6} us  clients {:>6} us | {:.2f} CPUs | "
               "{} {:.2f}\n",
               r.path, r.setting == "tcp" ? "tcp" : "inproc", notify, r.devices, r.clients, r.max_rps.median(),
               us(r.cpu_saturated.median()), us(r.client_cpu_saturated.median()), r.busy_cpus_saturated.median(),
               busiest.empty() ? "-" : busiest, busiest_cpus);
  }

  // Offered-load ramps.
  for (const Row& r : rows) {
    if (r.ramp.empty()) continue;
    fmt::print("\nload ramp: {} {} {} devices {} clients (offered -> achieved req/s, p50/p99 us)\n", r.path, r.setting,
               r.devices, r.clients);
    for (const auto& p : r.ramp)
      fmt::print("  {:>9.0f} -> {:>9.0f}   {:>9} {:>9}\n", p.offered, p.achieved, us(static_cast<double>(p.p50)),
                 us(static_cast<double>(p.p99)));
  }

  std::vector<Target> tgt;
  for (const bool tcp : settings) {
    auto more = targets(paired.empty() ? rows : paired, cfg.sweep_devices, setting_name(tcp),
                        static_cast<unsigned>(std::max(1, machine.cores_allowed)));
    tgt.insert(tgt.end(), more.begin(), more.end());
  }
  fmt::print("\ntargets (issue 6; ratios from this run{}; behind TCP the issue asks for the ratios only):\n",
             paired.empty() ? "" : ", from the rows taken in turn");
  for (const auto& t : tgt) {
    const std::string goal = t.judged ? fmt::format("target {} {:<4}", t.at_least ? ">=" : "<=", t.target)
                                      : std::string("(reported)     ");
    if (!t.measured)
      fmt::print("  {:<72} {:>8}  {} n/a (a row is missing)\n", t.name, "-", goal);
    else
      fmt::print("  {:<72} {:>8.3f}  {} {}\n", t.name, *t.measured, goal, !t.judged ? "" : t.pass() ? "PASS" : "MISS");
  }

  ordered_json transports = ordered_json::array();
  if (cfg.transports) transports = run_transports(cfg);

  if (!cfg.json_path.empty()) {
    ordered_json doc;
    doc["title"] = "floe-bench paths";
    doc["date"] = iso_now();
    doc["command"] = cfg.command;
    doc["machine"] = {{"cores", machine.cores_online},
                      {"cores_allowed", machine.cores_allowed},
                      {"kernel", machine.kernel},
                      {"cpu_model", machine.cpu_model},
                      {"loadavg_at_start", machine.loadavg}};
    doc["config"] = {{"setting", cfg.setting},         {"repetitions", cfg.repetitions}, {"phase_s", cfg.phase_s},
                     {"load_rps", cfg.load_rps},        {"send_lead_us", cfg.send_lead_us},
                     {"latency_cpus", where.latency},
                     {"quick", cfg.quick},             {"task_threads", cfg.task_threads},
                     {"doorbells", cfg.doorbells},
                     {"sweep_devices", cfg.sweep_devices}, {"throughput_clients", cfg.throughput_clients}};
    ordered_json paths = ordered_json::array();
    for (const Row& r : rows) paths.push_back(row_json(r));
    doc["paths"] = std::move(paths);
    // The targets' rows again, floe and old one repetition each in turn; "targets" come from these.
    ordered_json in_turn = ordered_json::array();
    for (const Row& r : paired) in_turn.push_back(row_json(r));
    doc["paired"] = std::move(in_turn);
    doc["transports"] = std::move(transports);
    ordered_json t = ordered_json::array();
    for (const auto& x : tgt)
      t.push_back({{"name", x.name},
                   {"target", x.judged ? ordered_json(fmt::format("{} {}", x.at_least ? ">=" : "<=", x.target))
                                       : ordered_json(nullptr)},
                   {"measured", x.measured ? ordered_json(*x.measured) : ordered_json(nullptr)},
                   {"pass", x.judged ? ordered_json(x.pass()) : ordered_json(nullptr)}});
    doc["targets"] = std::move(t);
    ordered_json not_run = ordered_json::array();
    for (const bool tcp : {false, true})
      if (std::find(settings.begin(), settings.end(), tcp) == settings.end())
        not_run.push_back({{"setting", setting_name(tcp)}, {"reason", fmt::format("not selected (--setting {})", cfg.setting)}});
    doc["not_run"] = std::move(not_run);
    std::ofstream out(cfg.json_path);
    out << doc.dump(1) << '\n';
    out.close();
    if (!out) {
      fmt::print(stderr, "floe-bench paths: cannot write {}\n", cfg.json_path);
      return 1;
    }
    fmt::print("\nJSON written to {}\n", cfg.json_path);
  }
  return any_failed ? 1 : 0;
}

}  // namespace floe::bench::paths
