#include "ring_bench.hpp"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <functional>
#include <optional>

#include <fmt/format.h>

#include "floe/ipc/event_loop.hpp"
#include "floe/ipc/ring.hpp"
#include "report.hpp"
#include "transports.hpp"

namespace floe::bench {

namespace {

using ipc::LoopBackend;
using ipc::NotifyMode;

enum class Kind { kRoundTrip, kRingStream, kKernelStream, kInProcess };

struct Entry {
  std::string name;
  Kind kind;
  std::function<BenchResult(const RunPlan&)> run;
};

/// Totals over all rounds, and the rounds.
struct Counts {
  std::uint64_t round_trips, warmup_round_trips, messages, kernel_messages;
  std::uint32_t rounds;
};

Counts resolve_counts(const RingBenchConfig& c) {
  Counts n{};
  n.rounds = c.rounds ? c.rounds : (c.quick ? 1 : 5);
  n.round_trips = c.round_trips ? c.round_trips : (c.quick ? 5'000 : 100'000);
  n.warmup_round_trips = c.warmup_round_trips ? c.warmup_round_trips : std::min<std::uint64_t>(n.round_trips / 10, 10'000);
  n.messages = c.messages ? c.messages : (c.quick ? 200'000 : 10'000'000);
  n.kernel_messages = c.kernel_messages ? c.kernel_messages : std::max<std::uint64_t>(n.messages / 10, 1);
  return n;
}

/// One round of one benchmark: its share of the counts, warm-up and time limit.
RunPlan make_plan(const Entry& e, const Counts& n, const std::vector<int>& cpus, const RingBenchConfig& cfg) {
  const auto share = [&](std::uint64_t total) { return std::max<std::uint64_t>((total + n.rounds - 1) / n.rounds, 1); };
  RunPlan plan;
  plan.name = e.name;
  plan.cpus = cpus;
  double per_item_s = 0;
  switch (e.kind) {
    case Kind::kRoundTrip:
      plan.count = share(n.round_trips);
      // Each round starts cold (new processes, new mappings): it needs its own warm-up.
      plan.warmup = std::max(share(n.warmup_round_trips), std::min<std::uint64_t>(n.warmup_round_trips, 1'000));
      per_item_s = e.name == "ring_poll" ? 2e-3 : 5e-4;
      break;
    case Kind::kRingStream:
    case Kind::kInProcess:
      plan.count = share(n.messages);
      per_item_s = 2e-6;
      break;
    case Kind::kKernelStream:
      plan.count = share(n.kernel_messages);
      per_item_s = 2e-5;
      break;
  }
  if (e.kind != Kind::kRoundTrip)
    plan.warmup = cfg.warmup_messages ? cfg.warmup_messages : std::min<std::uint64_t>(plan.count / 10, 1'000'000);
  const double timeout_s =
      cfg.timeout_s > 0 ? cfg.timeout_s : 30.0 + per_item_s * static_cast<double>(plan.warmup + plan.count);
  plan.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000));
  return plan;
}

std::string local_time_iso() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S%z", &tm);
  return buf;
}

std::string summary_line(const BenchResult& r) {
  if (r.status == ResultStatus::kSkipped) return "skipped: " + r.reason;
  if (r.status == ResultStatus::kFailed) return "FAILED: " + r.reason;
  if (r.rtt) return fmt::format("p50 {:.2f} us, p99 {:.2f} us", r.rtt->p50_ns / 1e3, r.rtt->p99_ns / 1e3);
  if (r.msgs_per_s) return fmt::format("{:.2f} M msgs/s", *r.msgs_per_s / 1e6);
  return "done";
}

class RatioBuilder {
 public:
  explicit RatioBuilder(const std::vector<BenchResult>& results) : results_(results) {}

  /// measured = figure(numerator) / figure(denominator), or figure(numerator) alone if the
  /// denominator is empty.
  Ratio make(std::string label, const std::string& num, const std::string& den,
             std::optional<double> (*figure)(const BenchResult&), Compare compare, double target) const {
    Ratio r;
    r.name = std::move(label);
    r.compare = compare;
    r.target = target;
    const auto a = value(num, figure, r.missing);
    if (!a) return r;
    if (den.empty()) {
      r.measured = a;
      return r;
    }
    const auto b = value(den, figure, r.missing);
    if (!b) return r;
    if (*b == 0) {
      r.missing = den + " measured 0";
      return r;
    }
    r.measured = *a / *b;
    return r;
  }

 private:
  std::optional<double> value(const std::string& name, std::optional<double> (*figure)(const BenchResult&),
                              std::string& missing) const {
    for (const BenchResult& b : results_) {
      if (b.name != name) continue;
      if (b.status != ResultStatus::kOk) {
        missing = name + (b.status == ResultStatus::kSkipped ? " skipped" : " failed");
        return std::nullopt;
      }
      auto v = figure(b);
      if (!v) missing = name + " has no such figure";
      return v;
    }
    missing = name + " not run";
    return std::nullopt;
  }
  const std::vector<BenchResult>& results_;
};

std::optional<double> p50(const BenchResult& b) {
  return b.rtt ? std::optional<double>(static_cast<double>(b.rtt->p50_ns)) : std::nullopt;
}
std::optional<double> rate(const BenchResult& b) { return b.msgs_per_s; }
std::optional<double> cpu(const BenchResult& b) { return b.cpu_ns_per_msg; }
std::optional<double> notify(const BenchResult& b) { return b.notify_syscalls_per_msg; }

std::vector<Ratio> target_ratios(const std::vector<BenchResult>& results) {
  const RatioBuilder q(results);
  return {
      q.make("ring_eventfd_uring p50 / eventfd_raw p50", "ring_eventfd_uring", "eventfd_raw", p50, Compare::kAtMost, 1.15),
      q.make("ring_futex p50 / eventfd_raw p50", "ring_futex", "eventfd_raw", p50, Compare::kAtMost, 1.15),
      q.make("ring_spin p50 / spin_raw p50", "ring_spin", "spin_raw", p50, Compare::kAtMost, 1.5),
      q.make("ring_stream_eventfd msgs/s / boost_spsc_inproc msgs/s", "ring_stream_eventfd", "boost_spsc_inproc",
             rate, Compare::kAtLeast, 1.5),
      q.make("ring_stream_eventfd msgs/s / unix_seqpacket_stream msgs/s", "ring_stream_eventfd",
             "unix_seqpacket_stream", rate, Compare::kAtLeast, 20),
      q.make("ring_stream_eventfd notify syscalls/msg", "ring_stream_eventfd", "", notify, Compare::kBelow, 0.01),
      q.make("ring_stream_eventfd cpu ns/msg / unix_seqpacket_stream cpu ns/msg", "ring_stream_eventfd",
             "unix_seqpacket_stream", cpu, Compare::kAtMost, 0.05),
  };
}

std::vector<Entry> make_entries(const RingBenchConfig& cfg, LoopBackend stream_backend) {
  const auto poll = std::chrono::microseconds(cfg.poll_interval_us);
  auto ring_rtt = [&cfg, poll](NotifyMode mode, LoopBackend backend) {
    return [=, capacity = cfg.ring_capacity](const RunPlan& plan) {
      return bench_ring_rtt(plan, {.mode = mode, .backend = backend, .capacity = capacity, .poll_interval = poll});
    };
  };
  auto ring_stream = [&cfg, stream_backend](std::size_t batch) {
    return [=, capacity = cfg.ring_capacity, spin_us = cfg.consumer_spin_us](const RunPlan& plan) {
      return bench_ring_stream(plan, {.backend = stream_backend, .capacity = capacity, .batch = batch,
                                      .consumer_spin = std::chrono::microseconds(spin_us)});
    };
  };
  // Elements of the same byte size as the ring's data area holds records (8-byte header + 64).
  const std::size_t boost_capacity = cfg.ring_capacity / (sizeof(ipc::RecordHeader) + sizeof(Message));
  return {
      {"pipe", Kind::kRoundTrip, bench_pipe_rtt},
      {"unix_stream", Kind::kRoundTrip, bench_unix_stream_rtt},
      {"unix_seqpacket", Kind::kRoundTrip, bench_unix_seqpacket_rtt},
      {"eventfd_raw", Kind::kRoundTrip, bench_eventfd_raw_rtt},
      {"spin_raw", Kind::kRoundTrip, bench_spin_raw_rtt},
      {"ring_spin", Kind::kRoundTrip, ring_rtt(NotifyMode::kSpin, LoopBackend::kEpoll)},
      {"ring_eventfd_uring", Kind::kRoundTrip, ring_rtt(NotifyMode::kEventfd, LoopBackend::kIoUring)},
      {"ring_eventfd_epoll", Kind::kRoundTrip, ring_rtt(NotifyMode::kEventfd, LoopBackend::kEpoll)},
      {"ring_futex", Kind::kRoundTrip, ring_rtt(NotifyMode::kFutex, LoopBackend::kEpoll)},
      {"ring_poll", Kind::kRoundTrip, ring_rtt(NotifyMode::kPoll, LoopBackend::kEpoll)},
      {"ring_stream_eventfd", Kind::kRingStream, ring_stream(cfg.batch)},
      {"ring_stream_eventfd_push", Kind::kRingStream, ring_stream(1)},
      {"boost_spsc_inproc", Kind::kInProcess,
       [boost_capacity](const RunPlan& plan) {
         RunPlan p = plan;
         p.note = fmt::format("boost::lockfree::spsc_queue<std::array<std::byte,64>>({}) between two pinned threads; "
                              "push() per message, pop() up to 256 at once, both spin",
                              boost_capacity);
         return bench_boost_spsc_inproc(p, boost_capacity);
       }},
      {"unix_seqpacket_stream", Kind::kKernelStream,
       [](const RunPlan& plan) {
         RunPlan p = plan;
         p.note = "socketpair(SOCK_SEQPACKET): one write(2) per message, one read(2) per packet";
         return bench_unix_seqpacket_stream(p);
       }},
      {"pipe_stream", Kind::kKernelStream,
       [](const RunPlan& plan) {
         RunPlan p = plan;
         p.note = "pipe: one write(2) per message; the consumer reads up to 64 KiB per read(2)";
         return bench_pipe_stream(p);
       }},
  };
}

}  // namespace

const std::vector<std::string>& ring_bench_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const Entry& e : make_entries(RingBenchConfig{}, LoopBackend::kEpoll)) out.push_back(e.name);
    return out;
  }();
  return names;
}

int run_ring_bench(RingBenchConfig cfg) {
  const auto& known = ring_bench_names();
  for (const std::string& name : cfg.only) {
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      fmt::print(stderr, "floe-bench ring: unknown benchmark '{}'; known: {}\n", name, list);
      return 2;
    }
  }
  if (cfg.ring_capacity < 256 || (cfg.ring_capacity & (cfg.ring_capacity - 1)) != 0) {
    fmt::print(stderr, "floe-bench ring: --ring-capacity must be a power of two >= 256\n");
    return 2;
  }
  const Counts n = resolve_counts(cfg);

  // io_uring may be refused (kernel.io_uring_disabled, seccomp in containers): find out once.
  std::string uring_refused;
  if (auto loop = ipc::EventLoop::create({.backend = LoopBackend::kIoUring}); !loop)
    uring_refused = loop.error().to_string();
  const LoopBackend stream_backend = uring_refused.empty() ? LoopBackend::kIoUring : LoopBackend::kEpoll;

  const std::vector<int> allowed = allowed_cpus();
  std::vector<int> cpus;
  std::string pinning;
  if (!cfg.pin) {
    pinning = "off (--no-pin)";
  } else if (allowed.size() < 2) {
    pinning = fmt::format("off: only {} CPU allowed", allowed.size());
  } else {
    cpus = {allowed[0], allowed[1]};
    pinning = fmt::format("first role on cpu{}, second on cpu{} (sched_setaffinity; see the cpus column)",
                          cpus[0], cpus[1]);
  }

  Report report;
  report.title = "floe-bench ring";
  report.date = local_time_iso();
  report.command = cfg.command;
  report.machine = probe_machine();
  report.config = {
      {"command", cfg.command},
      {"rounds", fmt::format("{} interleaved rounds: each benchmark runs once per round in fresh processes, "
                             "its counts split evenly; figures merge all rounds",
                             n.rounds)},
      {"round trips", fmt::format("{} per latency benchmark (64-byte messages), each round after its own warm-up "
                                  "of {}",
                                  n.round_trips, std::max<std::uint64_t>(
                                                     (n.warmup_round_trips + n.rounds - 1) / n.rounds,
                                                     std::min<std::uint64_t>(n.warmup_round_trips, 1'000)))},
      {"streams", fmt::format("{} messages (ring, boost) / {} (socket, pipe), each round after a warm-up of a "
                              "tenth of its share",
                              n.messages, n.kernel_messages)},
      {"ring", fmt::format("{} bytes of data per ring; ring_poll interval {} us; stream batch {}; stream consumer "
                           "polls {} us before sleeping",
                           cfg.ring_capacity, cfg.poll_interval_us, cfg.batch, cfg.consumer_spin_us)},
      {"pinning", pinning},
      {"io_uring", uring_refused.empty() ? std::string("available") : "refused: " + uring_refused},
      {"per message", "RTT rows count both directions: cpu and notify per one-way message = total / (2 x round trips)"},
  };

  std::vector<Entry> entries = make_entries(cfg, stream_backend);
  if (!cfg.only.empty()) {
    std::erase_if(entries, [&](const Entry& e) {
      return std::find(cfg.only.begin(), cfg.only.end(), e.name) == cfg.only.end();
    });
  }

  // The counts are split over interleaved rounds (each benchmark once per round, in fresh
  // processes), so that every benchmark sees the same mix of the machine's moods: on a shared VM
  // the wakeup cost alone can double for a minute, and ratios of runs made minutes apart would
  // mostly measure that.
  std::vector<std::optional<BenchResult>> totals(entries.size());
  for (std::uint32_t round = 0; round < n.rounds; ++round) {
    for (std::size_t i = 0; i < entries.size(); ++i) {
      const Entry& e = entries[i];
      if (totals[i] && totals[i]->status != ResultStatus::kOk) continue;  // failed or skipped before
      const RunPlan plan = make_plan(e, n, cpus, cfg);
      fmt::print(stderr, "[round {}/{}] [{:2}/{}] {:<26} ", round + 1, n.rounds, i + 1, entries.size(), e.name);
      BenchResult r;
      if (e.name == "ring_eventfd_uring" && !uring_refused.empty()) {
        r.name = e.name;
        r.status = ResultStatus::kSkipped;
        r.reason = "io_uring refused: " + uring_refused;
      } else {
        r = e.run(plan);
      }
      fmt::print(stderr, "{}\n", summary_line(r));
      if (r.status == ResultStatus::kFailed) r.reason = fmt::format("round {}: {}", round + 1, r.reason);
      if (!totals[i]) {
        totals[i] = std::move(r);
      } else {
        merge_round(*totals[i], std::move(r));
      }
    }
  }
  bool any_failed = false;
  for (auto& t : totals) {
    any_failed = any_failed || t->status == ResultStatus::kFailed;
    report.results.push_back(std::move(*t));
  }

  report.ratios = target_ratios(report.results);
  fmt::print("{}", format_report(report));
  if (!cfg.json_path.empty()) {
    if (auto s = write_json(report, cfg.json_path); !s) {
      fmt::print(stderr, "floe-bench ring: {}\n", s.error().to_string());
      return 1;
    }
    fmt::print("\nJSON written to {}\n", cfg.json_path);
  }
  return any_failed ? 1 : 0;
}

}  // namespace floe::bench
