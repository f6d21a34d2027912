// Benchmark results, the machine they ran on, target ratios, and their two renderings: a table
// for people and JSON for scripts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "floe/ipc/result.hpp"
#include "stats.hpp"

namespace floe::bench {

enum class ResultStatus { kOk, kSkipped, kFailed };

/// One benchmark's figures. Every optional is absent when the figure does not apply.
struct BenchResult {
  std::string name;
  ResultStatus status = ResultStatus::kOk;
  std::string reason;                  // why skipped or failed
  std::string note;                    // how it was measured, when not obvious from the name
  std::uint64_t count = 0;             // round trips or messages measured (warm-up excluded)
  std::optional<LatencySummary> rtt;   // round-trip latency
  std::vector<std::int64_t> rtt_samples;  // every round trip, ascending (for merging rounds)
  double elapsed_s = 0;                // streams: wall time of the measured phase
  std::string aux_label;               // a transport-specific count per message, e.g. consumer sleeps
  std::optional<double> aux_per_msg;
  std::optional<double> msgs_per_s;
  std::optional<double> cpu_ns_per_msg;
  std::optional<double> notify_syscalls_per_msg;
  std::vector<int> cpus;               // CPU of each role, -1 when unpinned
};

/// Folds a later round of the same benchmark into `total`: samples and counts add up, rates and
/// per-message figures are recomputed over all rounds. A failed or skipped round wins.
void merge_round(BenchResult& total, BenchResult&& round);

/// A result that carries only its name and why it failed.
[[nodiscard]] inline BenchResult failed_result(std::string name, std::string reason) {
  BenchResult r;
  r.name = std::move(name);
  r.status = ResultStatus::kFailed;
  r.reason = std::move(reason);
  return r;
}

struct MachineInfo {
  int cores_online = 0;
  int cores_allowed = 0;
  std::string kernel;     // uname: sysname release version machine
  std::string cpu_model;  // first "model name" of /proc/cpuinfo
  std::string loadavg;    // /proc/loadavg at the start of the run
};
[[nodiscard]] MachineInfo probe_machine();

/// "measured ≤ target" (kAtMost), "measured ≥ target" (kAtLeast) or strictly below (kBelow).
enum class Compare { kAtMost, kAtLeast, kBelow };

struct Ratio {
  std::string name;       // e.g. "ring_futex p50 / eventfd_raw p50"
  Compare compare = Compare::kAtMost;
  double target = 0;
  std::optional<double> measured;  // absent when an input benchmark did not produce its figure
  std::string missing;             // why it is absent
  [[nodiscard]] bool pass() const noexcept;
};

struct Report {
  std::string title;
  std::string date;       // ISO 8601, local time
  std::string command;    // as invoked
  MachineInfo machine;
  std::vector<std::pair<std::string, std::string>> config;  // shown above the table, and in JSON
  std::vector<BenchResult> results;
  std::vector<Ratio> ratios;
};

/// The human-readable table, notes and ratio section.
[[nodiscard]] std::string format_report(const Report& report);
/// Writes {"machine", "config", "results", "ratios", "details"} to `path`.
[[nodiscard]] Status write_json(const Report& report, const std::string& path);

}  // namespace floe::bench
