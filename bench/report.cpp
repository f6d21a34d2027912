#include "report.hpp"

#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <algorithm>
#include <fstream>
#include <iterator>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "process.hpp"

namespace floe::bench {

namespace {

std::string read_first_line(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string fmt_us(std::int64_t ns) { return fmt::format("{:.2f}", static_cast<double>(ns) / 1000.0); }

std::string fmt_rate(double per_s) {
  if (per_s >= 1e6) return fmt::format("{:.2f}M", per_s / 1e6);
  if (per_s >= 1e3) return fmt::format("{:.1f}k", per_s / 1e3);
  return fmt::format("{:.0f}", per_s);
}

std::string fmt_opt(const std::optional<double>& v, const char* spec) {
  return v ? fmt::format(fmt::runtime(spec), *v) : std::string("-");
}

const char* compare_text(Compare c) {
  switch (c) {
    case Compare::kAtMost: return "<=";
    case Compare::kAtLeast: return ">=";
    case Compare::kBelow: return "<";
  }
  return "?";
}

std::string status_text(ResultStatus s) {
  switch (s) {
    case ResultStatus::kOk: return "ok";
    case ResultStatus::kSkipped: return "skipped";
    case ResultStatus::kFailed: return "failed";
  }
  return "?";
}

std::string cpus_text(const std::vector<int>& cpus) {
  std::string out;
  bool all_pinned = !cpus.empty();
  for (int c : cpus) all_pinned = all_pinned && c >= 0;
  if (!all_pinned) return "not pinned";
  for (std::size_t i = 0; i < cpus.size(); ++i) out += fmt::format("{}cpu{}", i ? "/" : "", cpus[i]);
  return out;
}

std::string full_note(const BenchResult& b) {
  if (!b.aux_per_msg) return b.note;
  return fmt::format("{}{}{}: {:.5f}", b.note, b.note.empty() ? "" : "; ", b.aux_label, *b.aux_per_msg);
}

}  // namespace

void merge_round(BenchResult& total, BenchResult&& round) {
  if (total.status != ResultStatus::kOk) return;
  if (round.status != ResultStatus::kOk) {
    total = std::move(round);
    return;
  }
  const double n0 = static_cast<double>(total.count);
  const double n1 = static_cast<double>(round.count);
  auto weighted = [&](std::optional<double>& a, const std::optional<double>& b) {
    if (a && b) a = (*a * n0 + *b * n1) / (n0 + n1);
  };
  weighted(total.cpu_ns_per_msg, round.cpu_ns_per_msg);
  weighted(total.notify_syscalls_per_msg, round.notify_syscalls_per_msg);
  weighted(total.aux_per_msg, round.aux_per_msg);
  total.count += round.count;
  total.elapsed_s += round.elapsed_s;
  if (total.msgs_per_s && total.elapsed_s > 0) total.msgs_per_s = static_cast<double>(total.count) / total.elapsed_s;
  if (total.rtt) {
    std::vector<std::int64_t> all;
    all.reserve(total.rtt_samples.size() + round.rtt_samples.size());
    std::merge(total.rtt_samples.begin(), total.rtt_samples.end(), round.rtt_samples.begin(),
               round.rtt_samples.end(), std::back_inserter(all));
    total.rtt = summarize(all);
    total.rtt_samples = std::move(all);
  }
  for (std::size_t i = 0; i < round.cpus.size() && i < total.cpus.size(); ++i)
    if (round.cpus[i] != total.cpus[i]) total.cpus[i] = -1;  // not the same CPU in every round
}

bool Ratio::pass() const noexcept {
  if (!measured) return false;
  switch (compare) {
    case Compare::kAtMost: return *measured <= target;
    case Compare::kAtLeast: return *measured >= target;
    case Compare::kBelow: return *measured < target;
  }
  return false;
}

MachineInfo probe_machine() {
  MachineInfo m;
  m.cores_online = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  m.cores_allowed = static_cast<int>(allowed_cpus().size());
  utsname u{};
  if (::uname(&u) == 0) m.kernel = fmt::format("{} {} {} {}", u.sysname, u.release, u.version, u.machine);
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) m.cpu_model = line.substr(line.find_first_not_of(" \t", colon + 1));
      break;
    }
  }
  m.loadavg = read_first_line("/proc/loadavg");
  return m;
}

std::string format_report(const Report& r) {
  std::string out;
  auto line = [&out](std::string s) {
    out += s;
    out += '\n';
  };
  line(fmt::format("{}  ({})", r.title, r.date));
  line(fmt::format("machine: {} CPUs online ({} allowed), {}, kernel {}", r.machine.cores_online,
                   r.machine.cores_allowed, r.machine.cpu_model, r.machine.kernel));
  line(fmt::format("load average at start: {}", r.machine.loadavg));
  for (const auto& [key, value] : r.config) line(fmt::format("{}: {}", key, value));
  line("");
  line(fmt::format("{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9}  {}", "name", "p50 us", "p99 us",
                   "p99.9 us", "max us", "msgs/s", "cpu ns/msg", "notify/msg", "count", "cpus"));
  line(std::string(118, '-'));
  for (const BenchResult& b : r.results) {
    if (b.status != ResultStatus::kOk) {
      line(fmt::format("{:<24} {}: {}", b.name, status_text(b.status), b.reason));
      continue;
    }
    const bool has_rtt = b.rtt.has_value();
    line(fmt::format("{:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9}  {}", b.name,
                     has_rtt ? fmt_us(b.rtt->p50_ns) : "-", has_rtt ? fmt_us(b.rtt->p99_ns) : "-",
                     has_rtt ? fmt_us(b.rtt->p999_ns) : "-", has_rtt ? fmt_us(b.rtt->max_ns) : "-",
                     b.msgs_per_s ? fmt_rate(*b.msgs_per_s) : "-", fmt_opt(b.cpu_ns_per_msg, "{:.0f}"),
                     fmt_opt(b.notify_syscalls_per_msg, "{:.4f}"), b.count, cpus_text(b.cpus)));
  }
  line("");
  line("notes:");
  for (const BenchResult& b : r.results)
    if (!b.note.empty() || b.aux_per_msg) line(fmt::format("  {:<22} {}", b.name, full_note(b)));
  line("");
  line("ratios against the targets (DESIGN.md, \"Numbers we aim at\"), from this run:");
  for (const Ratio& q : r.ratios) {
    if (!q.measured) {
      line(fmt::format("  {:<62} {:>9}  target {} {:<6}  n/a ({})", q.name, "-", compare_text(q.compare),
                       q.target, q.missing));
      continue;
    }
    line(fmt::format("  {:<62} {:>9.4g}  target {} {:<6}  {}", q.name, *q.measured, compare_text(q.compare),
                     q.target, q.pass() ? "PASS" : "MISS"));
  }
  return out;
}

Status write_json(const Report& r, const std::string& path) {
  using nlohmann::ordered_json;
  ordered_json doc;
  doc["title"] = r.title;
  doc["date"] = r.date;
  doc["command"] = r.command;
  doc["machine"] = {{"cores", r.machine.cores_online},
                    {"cores_allowed", r.machine.cores_allowed},
                    {"kernel", r.machine.kernel},
                    {"cpu_model", r.machine.cpu_model},
                    {"loadavg_at_start", r.machine.loadavg}};
  ordered_json config = ordered_json::object();
  for (const auto& [key, value] : r.config) config[key] = value;
  doc["config"] = config;

  ordered_json results = ordered_json::array();
  ordered_json details = ordered_json::array();
  for (const BenchResult& b : r.results) {
    ordered_json d = {{"name", b.name}, {"status", status_text(b.status)}};
    if (!b.reason.empty()) d["reason"] = b.reason;
    if (b.status == ResultStatus::kOk) {
      ordered_json o = {{"name", b.name}};
      if (b.rtt) {
        o["rtt_p50_ns"] = b.rtt->p50_ns;
        o["rtt_p99_ns"] = b.rtt->p99_ns;
        o["rtt_p999_ns"] = b.rtt->p999_ns;
        d["rtt_min_ns"] = b.rtt->min_ns;
        d["rtt_mean_ns"] = b.rtt->mean_ns;
        d["rtt_max_ns"] = b.rtt->max_ns;
      }
      if (b.msgs_per_s) o["msgs_per_s"] = *b.msgs_per_s;
      if (b.cpu_ns_per_msg) o["cpu_ns_per_msg"] = *b.cpu_ns_per_msg;
      if (b.notify_syscalls_per_msg) o["notify_syscalls_per_msg"] = *b.notify_syscalls_per_msg;
      results.push_back(std::move(o));
      d["count"] = b.count;
      d["cpus"] = b.cpus;
    }
    if (!b.note.empty() || b.aux_per_msg) d["note"] = full_note(b);
    details.push_back(std::move(d));
  }
  doc["results"] = std::move(results);

  ordered_json ratios = ordered_json::array();
  for (const Ratio& q : r.ratios) {
    ordered_json o = {{"name", q.name}, {"target", fmt::format("{} {}", compare_text(q.compare), q.target)}};
    if (q.measured) {
      o["measured"] = *q.measured;
      o["pass"] = q.pass();
    } else {
      o["measured"] = nullptr;
      o["pass"] = false;
      o["missing"] = q.missing;
    }
    ratios.push_back(std::move(o));
  }
  doc["ratios"] = std::move(ratios);
  doc["details"] = std::move(details);

  std::ofstream out(path);
  if (!out) return sys_errorf("open", "cannot write {}", path);
  out << doc.dump(2) << '\n';
  out.close();
  if (!out) return sys_error("write", path);
  return {};
}

}  // namespace floe::bench
