// `floe-bench soak`: the orchestrator. Starts floe-core, the providers and the watchers, runs the
// schedule while sampling the core's and the providers' RSS, CPU and fds, waits for the watchers to
// catch up, then checks every entity three ways (watchers, client get, the core's device trees)
// and reports. See soak_shared.hpp for the schedule and bench/README.md for the figures.
#include "soak/soak_bench.hpp"

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "client.hpp"
#include "clock.hpp"
#include "inspect.hpp"
#include "paths/common.hpp"
#include "paths/floe_path.hpp"
#include "report.hpp"
#include "soak/soak_shared.hpp"

namespace floe::bench::soak {

namespace {

using nlohmann::json;
using std::chrono::milliseconds;

/// Resident memory of `pid` from /proc/PID/status, bytes: total (VmRSS), anonymous (RssAnon: heap,
/// stacks — where a leak shows) and shared memory (RssShmem: the device regions' pages, which
/// grow until every ring has wrapped once and then stay). False if the process is gone.
struct RssNow {
  double total = 0, anon = 0, shmem = 0;
};
bool rss_of(pid_t pid, RssNow& out) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  bool any = false;
  for (std::string line; std::getline(in, line);) {
    double* field = line.rfind("VmRSS:", 0) == 0      ? &out.total
                    : line.rfind("RssAnon:", 0) == 0  ? &out.anon
                    : line.rfind("RssShmem:", 0) == 0 ? &out.shmem
                                                      : nullptr;
    if (field == nullptr) continue;
    *field = std::strtod(line.c_str() + line.find(':') + 1, nullptr) * 1024;  // "NNN kB"
    any = true;
  }
  return any;
}

int fd_count_of(pid_t pid) {
  std::error_code ec;
  int n = 0;
  for (auto it = std::filesystem::directory_iterator(fmt::format("/proc/{}/fd", pid), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++n;
  return ec ? -1 : n;
}

std::string first_line(const std::string& path) {
  std::ifstream in(path);
  std::string l;
  std::getline(in, l);
  return l;
}

/// RSS of one process over the run: samples (seconds since the start, bytes) and what they say.
struct RssSeries {
  std::vector<std::pair<double, double>> samples;
  /// Least-squares slope in bytes/s over the samples with t >= from.
  [[nodiscard]] double slope(double from) const {
    double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (const auto& [t, y] : samples) {
      if (t < from) continue;
      n += 1, sx += t, sy += y, sxx += t * t, sxy += t * y;
    }
    const double den = n * sxx - sx * sx;
    return n < 3 || den == 0 ? 0 : (n * sxy - sx * sy) / den;
  }
  [[nodiscard]] double first() const { return samples.empty() ? 0 : samples.front().second; }
  [[nodiscard]] double last() const { return samples.empty() ? 0 : samples.back().second; }
  [[nodiscard]] double max() const {
    double m = 0;
    for (const auto& s : samples) m = std::max(m, s.second);
    return m;
  }
};

/// Figures of one process (the core, or one provider).
struct ProcFigures {
  std::string name;
  pid_t pid = -1;
  RssSeries rss, anon, shmem;  // VmRSS, RssAnon, RssShmem
  int fds_start = -1, fds_end = -1;
  std::int64_t cpu_start_ns = -1, cpu_end_ns = -1;

  /// "flat" unless the anonymous memory's slope over the second half of the run, carried over the
  /// whole run, grows it by more than max(2 MiB, 2% of its maximum): first-use allocations in the
  /// first half are not growth. Judged on RssAnon (heap, stacks: where a leak shows), not on VmRSS:
  /// VmRSS also counts the shared device regions, whose ring pages are touched for the first time
  /// until each ring has wrapped once (bounded by the regions' size; at --rate 100000 over 1,000
  /// devices that takes about half a minute).
  [[nodiscard]] std::string verdict(double run_s) const {
    const bool growing = anon.slope(run_s / 2) * run_s > std::max(2.0 * 1024 * 1024, 0.02 * anon.max());
    return growing ? "GROWING" : "flat";
  }
  [[nodiscard]] json to_json(double run_s, std::uint64_t changes) const {
    const double cpu = static_cast<double>(cpu_end_ns - cpu_start_ns);
    return {{"name", name},
            {"cpu_ns", cpu_end_ns - cpu_start_ns},
            {"cpu_ns_per_change", changes ? cpu / static_cast<double>(changes) : 0.0},
            {"cpu_cores", run_s > 0 ? cpu / (run_s * 1e9) : 0.0},
            {"rss_first_bytes", rss.first()},
            {"rss_last_bytes", rss.last()},
            {"rss_max_bytes", rss.max()},
            {"rss_slope_bytes_per_s", rss.slope(0)},
            {"rss_slope_second_half_bytes_per_s", rss.slope(run_s / 2)},
            {"rss_samples", rss.samples.size()},
            {"rss_anon_first_bytes", anon.first()},
            {"rss_anon_last_bytes", anon.last()},
            {"rss_anon_max_bytes", anon.max()},
            {"rss_anon_slope_second_half_bytes_per_s", anon.slope(run_s / 2)},
            {"rss_shmem_first_bytes", shmem.first()},
            {"rss_shmem_last_bytes", shmem.last()},
            {"memory", verdict(run_s)},
            {"fds_start", fds_start},
            {"fds_end", fds_end}};
  }
};

struct Checks {
  std::uint64_t lost_changes = 0;     // entities whose final value a watcher did not see
  std::uint64_t get_mismatches = 0;   // client get != last committed
  std::uint64_t get_errors = 0;
  std::uint64_t tree_mismatches = 0;  // device tree != last committed (or entity not found there)
  std::uint64_t tree_regions = 0;
  std::uint64_t tree_violations = 0;  // invariants floe-inspect reports broken
  std::uint64_t sum_mismatches = 0;   // watchers whose last `sum Integer` != the sum committed
  std::vector<std::string> examples;  // the first few differences, for people
  void note(std::string s) {
    if (examples.size() < 8) examples.push_back(std::move(s));
  }
};

class SoakRun {
 public:
  SoakRun(const SoakConfig& cfg, const SoakShared& s) : cfg_(cfg), s_(s) {}
  ~SoakRun() {
    s_.h().stop.store(1, std::memory_order_release);
    paths::wake_word(s_.h().go);
    paths::stop_child(watchers_, milliseconds(3000));
    for (pid_t p : providers_) paths::stop_child(p, milliseconds(3000));
    paths::stop_child(core_, milliseconds(5000));
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  int run() {
    const MachineInfo machine = probe_machine();
    const std::string uptime_before = first_line("/proc/loadavg");
    fmt::print("floe-bench soak — {} | {} | {} cores ({} allowed) | load {}\n", machine.cpu_model, machine.kernel,
               machine.cores_online, machine.cores_allowed, machine.loadavg);
    fmt::print("{} devices x {} entities ({} entities), {:.0f} changes/s for {:.0f} s ({} changes), {} provider(s), "
               "{} watcher connection(s), groups of {} devices\n",
               cfg_.devices, cfg_.entities, s_.n(), cfg_.rate, cfg_.seconds, s_.h().total_changes, cfg_.providers,
               cfg_.watchers, cfg_.group_devices);
    if (!bring_up()) return finish_failed(machine, uptime_before);
    measure();
    quiesce();
    end_figures();
    check();
    s_.h().stop.store(1, std::memory_order_release);
    const std::string uptime_after = first_line("/proc/loadavg");
    return report(machine, uptime_before, uptime_after);
  }

 private:
  bool fail(std::string why) {
    error_ = std::move(why);
    if (s_.h().error_set.load(std::memory_order_acquire) != 0) error_ += fmt::format(" (first error: {})", s_.h().error);
    if (!dir_.empty() && core_ > 0) error_ += " | core log: " + paths::floe_core_log_tail(setup_);
    return false;
  }
  /// "" while every child runs, else which one exited.
  std::string liveness() {
    if (!paths::child_alive(core_)) return "floe-core exited";
    for (std::size_t i = 0; i < providers_.size(); ++i)
      if (!paths::child_alive(providers_[i])) return fmt::format("provider {} exited", i);
    if (watchers_ > 0 && !paths::child_alive(watchers_)) return "the watchers process exited";
    return {};
  }
  bool wait_count(std::atomic<std::uint32_t>& word, std::uint32_t want, std::chrono::seconds limit, const char* what) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      const std::uint32_t now = word.load(std::memory_order_acquire);
      if (now >= want) return true;
      if (s_.h().error_set.load() != 0) return fail(what);
      if (auto l = liveness(); !l.empty()) return fail(fmt::format("{}: {}", what, l));
      if (std::chrono::steady_clock::now() > deadline) return fail(fmt::format("{}: not within {} s", what, limit.count()));
      paths::wait_word(word, now, milliseconds(100));
    }
  }

  bool bring_up() {
    paths::raise_fd_limit();
    char tmpl[] = "/tmp/floe-bench-soak-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return fail(fmt::format("mkdtemp: {}", std::strerror(errno)));
    dir_ = tmpl;
    setup_.core_bin = cfg_.core_bin;
    setup_.dir = dir_;
    setup_.notify = cfg_.notify;
    setup_.devices = cfg_.devices;
    setup_.clients = cfg_.watchers + 2;  // max_clients: the watchers, the checker and a spare
    std::string err;
    core_ = paths::start_floe_core(setup_, err);
    if (core_ < 0) return fail(err);
    if (!paths::wait_floe_ready(setup_, core_, -1, err)) return fail(err);
    for (std::uint32_t p = 0; p < cfg_.providers; ++p) {
      const pid_t pid = paths::fork_child([&, p] { return run_soak_provider(s_, setup_, p); });
      if (pid < 0) return fail("fork provider");
      providers_.push_back(pid);
    }
    const auto limit = std::chrono::seconds(60 + cfg_.devices / 10);
    if (!wait_count(s_.h().providers_ready, cfg_.providers, limit, "providers online")) return false;
    // The core's view: every entity online with its Integer (the watchers' groups exist).
    if (!wait_core_sees_all(limit)) return false;
    watchers_ = paths::fork_child([&] { return run_soak_watchers(s_, setup_); });
    if (watchers_ < 0) return fail("fork watchers");
    if (!wait_count(s_.h().watchers_ready, cfg_.watchers, limit, "watches started")) return false;
    return true;
  }

  bool wait_core_sees_all(std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    std::string last;
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto l = liveness(); !l.empty()) return fail(l);
      auto c = floe::client::Client::connect({.socket_dir = dir_, .timeout = milliseconds(10'000)});
      if (c) {
        if (auto q = c->query("count where Integer")) {
          if (q->count() >= s_.n()) return true;
          last = fmt::format("the core counts {} of {} entities", q->count(), s_.n());
        } else {
          last = q.error().message;
        }
      } else {
        last = c.error().message;
      }
      std::this_thread::sleep_for(milliseconds(100));
    }
    return fail("entities online: " + last);
  }

  void sample(double t) {
    for (auto* p : procs()) {
      if (RssNow r; rss_of(p->pid, r)) {
        p->rss.samples.emplace_back(t, r.total);
        p->anon.samples.emplace_back(t, r.anon);
        p->shmem.samples.emplace_back(t, r.shmem);
      }
    }
  }
  std::vector<ProcFigures*> procs() {
    std::vector<ProcFigures*> out{&core_fig_};
    for (auto& p : provider_figs_) out.push_back(&p);
    return out;
  }

  /// Runs the schedule: samples every 100 ms, prints progress every second.
  void measure() {
    SoakHeader& h = s_.h();
    core_fig_.name = "floe-core";
    core_fig_.pid = core_;
    provider_figs_.resize(providers_.size());
    for (std::size_t i = 0; i < providers_.size(); ++i) {
      provider_figs_[i].name = fmt::format("provider {}", i);
      provider_figs_[i].pid = providers_[i];
    }
    // The readiness checks' client connections are closed; the core reaps a closed session within
    // a second: let it, so that the fd count at the start holds only what the run keeps.
    std::this_thread::sleep_for(milliseconds(1500));
    for (auto* p : procs()) {
      p->fds_start = fd_count_of(p->pid);
      p->cpu_start_ns = paths::process_cpu_ns_of(p->pid);
    }
    h.start_ns = now_ns() + 100'000'000;
    h.go.store(1, std::memory_order_release);
    paths::wake_word(h.go);
    sample(-0.1);
    std::uint64_t last_committed = 0, last_observed = 0;
    std::int64_t next_print = h.start_ns + 1'000'000'000;
    const std::int64_t hard_end = h.start_ns + static_cast<std::int64_t>((cfg_.seconds * 3 + 120) * 1e9);
    while (h.providers_done.load(std::memory_order_acquire) < cfg_.providers) {
      paths::wait_word(h.providers_done, h.providers_done.load(), milliseconds(100));
      const std::int64_t now = now_ns();
      sample(static_cast<double>(now - h.start_ns) / 1e9);
      if (auto l = liveness(); !l.empty()) {
        fail("during the run: " + l);
        break;
      }
      if (now > hard_end) {
        fail("the providers did not finish their schedule in time");
        break;
      }
      if (now >= next_print) {
        const std::uint64_t c = h.committed.load(), o = h.observed.load();
        fmt::print("  {:6.1f} s  committed {:>10} ({:>8.0f}/s)  observed {:>10} ({:>8.0f}/s)  core rss {:.1f} MiB  "
                   "behind schedule {:.1f} ms\n",
                   static_cast<double>(now - h.start_ns) / 1e9, c, static_cast<double>(c - last_committed), o,
                   static_cast<double>(o - last_observed), core_fig_.rss.last() / 1048576.0,
                   static_cast<double>(h.max_schedule_lag_ns.load()) / 1e6);
        std::fflush(stdout);
        last_committed = c, last_observed = o;
        next_print += 1'000'000'000;
      }
    }
    std::int64_t end = h.start_ns;
    for (std::uint32_t p = 0; p < cfg_.providers; ++p) end = std::max(end, h.provider_end_ns[p].load());
    run_s_ = static_cast<double>(end - h.start_ns) / 1e9;
  }

  /// Entities whose watcher has not (yet) seen the last committed value.
  std::uint64_t behind() const {
    std::uint64_t n = 0;
    for (std::uint32_t d = 0; d < cfg_.devices; ++d) {
      const std::uint32_t w = s_.watcher_of(d);
      for (std::uint32_t e = 0; e < cfg_.entities; ++e) {
        const std::uint64_t i = static_cast<std::uint64_t>(d) * cfg_.entities + e;
        if (s_.seen(w, i).load(std::memory_order_relaxed) != s_.committed(i).load(std::memory_order_relaxed)) ++n;
      }
    }
    return n;
  }
  double committed_sum() const {
    double sum = 0;
    for (std::uint64_t i = 0; i < s_.n(); ++i) sum += static_cast<double>(s_.committed(i).load());
    return sum;
  }
  std::uint32_t sums_behind(double want) const {
    std::uint32_t n = 0;
    for (std::uint32_t w = 0; w < cfg_.watchers; ++w)
      if (s_.h().sum_seen_valid[w].load() == 0 || std::bit_cast<double>(s_.h().sum_seen_bits[w].load()) != want) ++n;
    return n;
  }

  /// Waits until every watcher has seen every final value (or quiesce_s passes).
  void quiesce() {
    const std::int64_t t0 = now_ns();
    const double want = committed_sum();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(cfg_.quiesce_s);
    while (std::chrono::steady_clock::now() < deadline && error_.empty() && s_.h().error_set.load() == 0) {
      if (behind() == 0 && sums_behind(want) == 0) break;
      if (!liveness().empty()) break;
      std::this_thread::sleep_for(milliseconds(20));
    }
    quiesce_ms_ = static_cast<double>(now_ns() - t0) / 1e6;
    sample(static_cast<double>(now_ns() - s_.h().start_ns) / 1e9);
  }

  void end_figures() {
    for (auto* p : procs()) {
      p->fds_end = fd_count_of(p->pid);
      p->cpu_end_ns = paths::process_cpu_ns_of(p->pid);
    }
  }

  void check() {
    // 1. The watchers.
    for (std::uint32_t d = 0; d < cfg_.devices; ++d) {
      const std::uint32_t w = s_.watcher_of(d);
      for (std::uint32_t e = 0; e < cfg_.entities; ++e) {
        const std::uint64_t i = static_cast<std::uint64_t>(d) * cfg_.entities + e;
        const auto seen = s_.seen(w, i).load(), want = s_.committed(i).load();
        if (seen == want) continue;
        ++checks_.lost_changes;
        checks_.note(fmt::format("watcher {} saw {} = {}, last committed {}", w, soak_entity_id(d, e), seen, want));
      }
    }
    const double want_sum = committed_sum();
    checks_.sum_mismatches = sums_behind(want_sum);
    if (checks_.sum_mismatches != 0) checks_.note(fmt::format("{} watcher(s) last saw a sum other than {:.0f}",
                                                              checks_.sum_mismatches, want_sum));
    // 2. The core through the client socket.
    auto c = floe::client::Client::connect({.socket_dir = dir_, .timeout = milliseconds(30'000)});
    if (!c) {
      fail("checker cannot connect: " + c.error().message);
      checks_.get_errors = s_.n();
    } else {
      for (std::uint32_t d = 0; d < cfg_.devices; ++d) {
        for (std::uint32_t e = 0; e < cfg_.entities; ++e) {
          const std::int64_t want = s_.committed(static_cast<std::uint64_t>(d) * cfg_.entities + e).load();
          auto v = c->get(soak_entity_id(d, e), "Integer");
          if (!v) {
            if (checks_.get_errors++ == 0) checks_.note(fmt::format("get {}: {}", soak_entity_id(d, e), v.error().message));
            continue;
          }
          if (v->value().kind_case() != floe::proto::Value::kInteger || v->value().integer() != want) {
            ++checks_.get_mismatches;
            checks_.note(fmt::format("get {} = {}, last committed {}", soak_entity_id(d, e), v->value().display(), want));
          }
        }
      }
    }
    // 3. The core's device trees, mapped read-only as floe-inspect maps them.
    std::vector<bool> found(s_.n(), false);
    if (auto fds = floe::inspect::region_fds(core_)) {
      for (const auto& path : *fds) {
        auto region = floe::inspect::OpenedRegion::open(path);
        if (!region) continue;
        auto r = region->decode({});
        floe::inspect::name_device(r);
        std::uint32_t d = 0, e = 0;
        if (!parse_soak_entity(r.device + "_0", d, e) || d >= cfg_.devices) continue;
        ++checks_.tree_regions;
        checks_.tree_violations += r.violations.size();
        for (const auto& v : r.violations) checks_.note(fmt::format("{}: {}: {}", r.device, v.where, v.what));
        for (const auto& ent : r.tree.entities) {
          if (ent.index >= cfg_.entities) continue;
          const std::uint64_t i = static_cast<std::uint64_t>(d) * cfg_.entities + ent.index;
          for (const auto& comp : ent.components) {
            if (comp.name != "Integer") continue;
            found[i] = true;
            const std::int64_t want = s_.committed(i).load();
            if (!comp.ok || !comp.value.is_number_integer() || comp.value.get<std::int64_t>() != want) {
              ++checks_.tree_mismatches;
              checks_.note(fmt::format("tree {} = {}, last committed {}", soak_entity_id(d, ent.index), comp.text, want));
            }
          }
        }
      }
    } else {
      fail("cannot list the core's regions: " + fds.error().to_string());
    }
    const auto missing = static_cast<std::uint64_t>(std::count(found.begin(), found.end(), false));
    if (missing != 0) checks_.note(fmt::format("{} entities not found in the core's trees", missing));
    checks_.tree_mismatches += missing;
  }

  /// Stops the watchers and collects their histograms.
  paths::LogHistogram collect_latency() {
    SoakHeader& h = s_.h();
    h.stop.store(1, std::memory_order_release);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (h.watchers_done.load(std::memory_order_acquire) < cfg_.watchers &&
           std::chrono::steady_clock::now() < deadline && paths::child_alive(watchers_))
      std::this_thread::sleep_for(milliseconds(10));
    paths::LogHistogram all;
    for (std::uint32_t w = 0; w < cfg_.watchers; ++w) all.merge(h.latency[w]);
    return all;
  }

  json config_json() const {
    return {{"devices", cfg_.devices},         {"entities_per_device", cfg_.entities},
            {"entities", s_.n()},              {"rate", cfg_.rate},
            {"seconds", cfg_.seconds},         {"providers", cfg_.providers},
            {"watchers", cfg_.watchers},       {"group_devices", cfg_.group_devices},
            {"quiesce_limit_s", cfg_.quiesce_s}, {"notify", cfg_.notify},
            {"quick", cfg_.quick},             {"core_bin", cfg_.core_bin},
            {"command", cfg_.command}};
  }
  static json machine_json(const MachineInfo& m) {
    return {{"cores", m.cores_online},
            {"cores_allowed", m.cores_allowed},
            {"kernel", m.kernel},
            {"cpu_model", m.cpu_model},
            {"loadavg_at_start", m.loadavg}};
  }
  int write_json(const json& doc) const {
    if (cfg_.json_path.empty()) return 0;
    std::ofstream out(cfg_.json_path);
    out << doc.dump(2) << "\n";
    if (!out) {
      fmt::print(stderr, "floe-bench soak: cannot write {}\n", cfg_.json_path);
      return 2;
    }
    return 0;
  }

  int finish_failed(const MachineInfo& machine, const std::string& load_before) {
    fmt::print(stderr, "floe-bench soak: could not run: {}\n", error_);
    json doc = {{"machine", machine_json(machine)}, {"config", config_json()}, {"status", "failed"},
                {"reason", error_}, {"loadavg_before", load_before}};
    (void)write_json(doc);
    return 2;
  }

  int report(const MachineInfo& machine, const std::string& load_before, const std::string& load_after) {
    SoakHeader& h = s_.h();
    const paths::LogHistogram lat = collect_latency();
    const std::uint64_t committed = h.committed.load(), observed = h.observed.load();
    const double achieved = run_s_ > 0 ? static_cast<double>(committed) / run_s_ : 0;
    const bool ok_run = error_.empty() && h.failures.load() == 0;
    const bool pass = ok_run && checks_.lost_changes == 0 && checks_.get_mismatches == 0 && checks_.get_errors == 0 &&
                      checks_.tree_mismatches == 0 && checks_.sum_mismatches == 0;
    const auto ms = [](std::int64_t ns) { return static_cast<double>(ns) / 1e6; };

    fmt::print("\n== floe-bench soak ==\n");
    fmt::print("changes committed      {} of {} scheduled in {:.2f} s: {:.0f}/s (asked {:.0f}/s); set failures {}\n",
               committed, h.total_changes, run_s_, achieved, cfg_.rate, h.commit_failures.load());
    fmt::print("behind schedule (max)  {:.1f} ms\n", ms(h.max_schedule_lag_ns.load()));
    fmt::print("observed by watchers   {} new values in {} events ({} superseded before a watcher saw them)\n",
               observed, h.events.load(), committed > observed ? committed - observed : 0);
    fmt::print("commit latency         p50 {:.3f} ms  p99 {:.3f} ms  p99.9 {:.3f} ms  max {:.3f} ms  (intended time -> "
               "watcher receipt, {} samples)\n",
               ms(lat.percentile(0.5)), ms(lat.percentile(0.99)), ms(lat.percentile(0.999)), ms(lat.max()), lat.count());
    fmt::print("quiesce                {:.0f} ms until every watcher held every final value\n", quiesce_ms_);
    fmt::print("watcher reconnects     {}{}\n", h.watcher_reconnects.load(),
               h.watcher_reconnects.load() ? fmt::format(" (first: {})", h.first_disconnect) : "");
    for (auto* p : procs()) {
      const double cpu = static_cast<double>(p->cpu_end_ns - p->cpu_start_ns);
      const auto mib = [](double b) { return b / 1048576.0; };
      fmt::print("{:<22} cpu {:.2f} s ({:.0f} ns/change, {:.2f} cores)  fds {} -> {}\n", p->name, cpu / 1e9,
                 committed ? cpu / static_cast<double>(committed) : 0.0, run_s_ > 0 ? cpu / (run_s_ * 1e9) : 0.0,
                 p->fds_start, p->fds_end);
      fmt::print("{:<22} rss first {:.1f} / last {:.1f} / max {:.1f} MiB, slope {:+.1f} KiB/s (2nd half {:+.1f}); "
                 "anon {:.1f} -> {:.1f} MiB (2nd half {:+.1f} KiB/s), shmem {:.1f} -> {:.1f} MiB: {}\n",
                 "", mib(p->rss.first()), mib(p->rss.last()), mib(p->rss.max()), p->rss.slope(0) / 1024,
                 p->rss.slope(run_s_ / 2) / 1024, mib(p->anon.first()), mib(p->anon.last()),
                 p->anon.slope(run_s_ / 2) / 1024, mib(p->shmem.first()), mib(p->shmem.last()),
                 p->verdict(run_s_));
    }
    fmt::print("checks                 lost_changes {}  get mismatches {} (errors {})  tree mismatches {} "
               "({} regions, {} violations)  sum mismatches {}\n",
               checks_.lost_changes, checks_.get_mismatches, checks_.get_errors, checks_.tree_mismatches,
               checks_.tree_regions, checks_.tree_violations, checks_.sum_mismatches);
    for (const auto& e : checks_.examples) fmt::print("  {}\n", e);
    if (!error_.empty()) fmt::print("error: {}\n", error_);
    if (h.error_set.load() != 0) fmt::print("first failure reported by a child: {} ({} in all)\n", h.error, h.failures.load());
    fmt::print("load average before: {} | after: {}\n", load_before, load_after);
    fmt::print("{}\n", pass ? "PASS: every committed change was observed or superseded" : "FAIL");

    json provs = json::array();
    for (const auto& p : provider_figs_) provs.push_back(p.to_json(run_s_, committed));
    json doc = {
        {"machine", machine_json(machine)},
        {"config", config_json()},
        {"status", pass ? "ok" : "failed"},
        {"reason", error_.empty() && h.error_set.load() != 0 ? std::string(h.error) : error_},
        {"loadavg_before", load_before},
        {"loadavg_after", load_after},
        {"scheduled_changes", h.total_changes},
        {"committed_changes", committed},
        {"commit_failures", h.commit_failures.load()},
        {"run_seconds", run_s_},
        {"achieved_rate", achieved},
        {"max_schedule_lag_ns", h.max_schedule_lag_ns.load()},
        {"observed_changes", observed},
        {"watch_events", h.events.load()},
        {"superseded_changes", committed > observed ? committed - observed : 0},
        {"latency_samples", lat.count()},
        {"commit_p50_ns", lat.percentile(0.5)},
        {"commit_p99_ns", lat.percentile(0.99)},
        {"commit_p999_ns", lat.percentile(0.999)},
        {"commit_max_ns", lat.max()},
        {"quiesce_ms", quiesce_ms_},
        {"watcher_reconnects", h.watcher_reconnects.load()},
        {"first_disconnect", std::string(h.first_disconnect)},
        {"core", core_fig_.to_json(run_s_, committed)},
        {"providers", provs},
        {"lost_changes", checks_.lost_changes},
        {"get_mismatches", checks_.get_mismatches},
        {"get_errors", checks_.get_errors},
        {"tree_mismatches", checks_.tree_mismatches},
        {"tree_regions", checks_.tree_regions},
        {"tree_violations", checks_.tree_violations},
        {"sum_mismatches", checks_.sum_mismatches},
        {"failures", h.failures.load()},
        {"examples", checks_.examples},
    };
    if (const int rc = write_json(doc); rc != 0) return rc;
    return pass ? 0 : 1;
  }

  const SoakConfig& cfg_;
  const SoakShared& s_;
  paths::FloeSetup setup_;
  std::string dir_;
  pid_t core_ = -1, watchers_ = -1;
  std::vector<pid_t> providers_;
  ProcFigures core_fig_;
  std::vector<ProcFigures> provider_figs_;
  double run_s_ = 0, quiesce_ms_ = 0;
  Checks checks_;
  std::string error_;
};

}  // namespace

CLI::App* add_soak_subcommand(CLI::App& app, SoakConfig& cfg) {
  CLI::App* cmd = app.add_subcommand(
      "soak", "load and soak: scheduled changes through the full path with watchers; checks that nothing is lost");
  cmd->add_option("--devices", cfg.devices, "devices, split over the providers")->capture_default_str()
      ->check(CLI::Range(1u, 1'000'000u));
  cmd->add_option("--entities", cfg.entities, "entities per device (each with an Integer)")->capture_default_str()
      ->check(CLI::Range(1u, 256u));
  cmd->add_option("--rate", cfg.rate, "changes per second, all providers together")->capture_default_str()
      ->check(CLI::Range(1.0, 1e8));
  cmd->add_option("--seconds", cfg.seconds, "length of the schedule")->capture_default_str()
      ->check(CLI::Range(0.1, 86400.0));
  cmd->add_option("--providers", cfg.providers, "provider processes")->capture_default_str()
      ->check(CLI::Range(1u, kMaxProviders));
  cmd->add_option("--watchers", cfg.watchers, "watching client connections (the groups are split among them)")
      ->capture_default_str()->check(CLI::Range(1u, kMaxWatchers));
  cmd->add_option("--group-devices", cfg.group_devices, "devices per group (one list watch per group)")
      ->capture_default_str()->check(CLI::Range(1u, 1'000'000u));
  cmd->add_option("--quiesce-s", cfg.quiesce_s, "how long the watchers may take to catch up at the end")
      ->capture_default_str()->check(CLI::Range(0.0, 3600.0));
  cmd->add_option("--notify", cfg.notify, "the core's [rings] notify")->capture_default_str();
  cmd->add_option("--core-bin", cfg.core_bin, "the floe-core program [the one built with floe-bench]");
  cmd->add_option("--json", cfg.json_path, "also write every figure as JSON to this file");
  cmd->add_flag("--quick", cfg.quick, "100 devices x 10 entities, 10,000 changes/s for 5 s (CI)");
  return cmd;
}

int run_soak_bench(SoakConfig cfg) {
  if (cfg.core_bin.empty()) cfg.core_bin = FLOE_CORE_BIN;
  if (cfg.quick) {
    cfg.devices = 100;
    cfg.entities = 10;
    cfg.rate = 10'000;
    cfg.seconds = 5;
  }
  if (cfg.watchers > cfg.devices) cfg.watchers = cfg.devices;
  spdlog::set_level(spdlog::level::warn);
  SoakShared s(cfg.devices, cfg.entities, cfg.watchers);
  if (!s.ok()) {
    fmt::print(stderr, "floe-bench soak: cannot map the shared block: {}\n", std::strerror(errno));
    return 2;
  }
  SoakHeader& h = s.h();
  h.devices = cfg.devices;
  h.entities = cfg.entities;
  h.providers = std::min(cfg.providers, cfg.devices);
  cfg.providers = h.providers;
  h.watchers = cfg.watchers;
  h.group_devices = cfg.group_devices;
  h.rate = cfg.rate;
  h.total_changes = static_cast<std::uint64_t>(cfg.rate * cfg.seconds);
  SoakRun run(cfg, s);
  return run.run();
}

}  // namespace floe::bench::soak
