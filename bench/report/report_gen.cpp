#include "report/report_gen.hpp"

#include <spawn.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

extern char** environ;

namespace floe::bench {

namespace {

using nlohmann::json;

double num(const json& j, const char* key, double fallback = 0) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}
std::string str(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string{};
}
std::string us(double ns) { return fmt::format("{:.1f}", ns / 1000.0); }

bool is_default(const json& r) { return str(r, "loop_backend").empty() && str(r, "notify") == "eventfd"; }
bool ok(const json& r) { return str(r, "status") == "ok"; }
/// The setting of a row: "inside_provider" (also for files written before the field had others) or "tcp".
std::string setting(const json& r) { return str(r, "setting") == "tcp" ? "tcp" : "inside_provider"; }
/// A series' title: the path, and " (tcp)" behind TCP.
std::string series_title(const json& r) { return str(r, "path") + (setting(r) == "tcp" ? " (tcp)" : ""); }
std::string label(const json& r) {
  const std::string b = str(r, "loop_backend");
  if (str(r, "path") != "floe") return str(r, "path");
  return "floe " + str(r, "notify") + (b.empty() ? " (auto)" : "/" + b);
}

/// One gnuplot figure: data blocks (one per series) and the plot command.
struct Figure {
  std::string name;        // file stem
  std::string title, xlabel, ylabel;
  bool logx = false, logy = false;
  std::string style = "linespoints";
  std::string key = "left top";
  std::vector<std::pair<std::string, std::vector<std::vector<double>>>> series{};  // title, rows
  std::vector<std::tuple<double, double, std::string>> labels{};                    // labelled points
};

bool write_figure(const Figure& f, const std::string& dir) {
  if (f.series.empty() && f.labels.empty()) return false;  // nothing to draw: no files either
  std::ofstream dat(dir + "/" + f.name + ".dat");
  for (const auto& [title, rows] : f.series) {
    dat << "# " << title << "\n";
    for (const auto& row : rows) {
      for (std::size_t i = 0; i < row.size(); ++i) dat << (i ? " " : "") << row[i];
      dat << "\n";
    }
    dat << "\n\n";
  }
  std::ofstream gp(dir + "/" + f.name + ".gp");
  gp << "set terminal svg size 800,480 dynamic background rgb 'white'\n";
  gp << "set output '" << f.name << ".svg'\n";
  gp << "set title \"" << f.title << "\"\nset xlabel \"" << f.xlabel << "\"\nset ylabel \"" << f.ylabel << "\"\n";
  // noenhanced: path names carry underscores, which enhanced text would turn into subscripts.
  gp << "set termoption noenhanced\nset grid\nset key " << f.key << "\n";
  if (!f.labels.empty()) gp << "set offsets graph 0.1, graph 0.3, graph 0.15, graph 0.15\n";
  if (f.logx) gp << "set logscale x\n";
  if (f.logy) gp << "set logscale y\n";
  std::string plot;
  for (std::size_t i = 0; i < f.series.size(); ++i)
    plot += fmt::format("{}'{}.dat' index {} using 1:2 with {} lw 2 title \"{}\"", plot.empty() ? "" : ", ", f.name, i,
                        f.style, f.series[i].first);
  if (!f.labels.empty()) {
    std::ofstream lab(dir + "/" + f.name + ".labels");
    for (const auto& [x, y, text] : f.labels) lab << x << " " << y << " \"" << text << "\"\n";
    plot += fmt::format("{}'{}.labels' using 1:2:3 with labels point pt 7 ps 1.2 offset char 1,0.6 left notitle",
                        plot.empty() ? "" : ", ", f.name);
  }
  if (plot.empty()) return false;
  gp << "plot " << plot << "\n";
  return static_cast<bool>(gp) && static_cast<bool>(dat);
}

/// Runs gnuplot on `script` inside `dir`; false if it could not run or failed.
bool run_gnuplot(const std::string& gnuplot, const std::string& dir, const std::string& script, std::string& why) {
  const std::string cmd = fmt::format("cd '{}' && '{}' '{}'", dir, gnuplot, script);
  const char* argv[] = {"sh", "-c", cmd.c_str(), nullptr};
  pid_t pid = 0;
  if (::posix_spawnp(&pid, "sh", nullptr, nullptr, const_cast<char**>(argv), environ) != 0) {
    why = "cannot start sh";
    return false;
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return true;
  why = fmt::format("'{}' failed (exit {})", gnuplot, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  return false;
}

std::vector<Figure> figures(const json& doc) {
  const json& rows = doc["paths"];
  const json cfg = doc.value("config", json::object());
  const auto sweep = static_cast<std::uint32_t>(num(cfg, "sweep_devices", 100));
  const auto tput_clients = static_cast<std::uint32_t>(num(cfg, "throughput_clients", 16));
  // Series of the throughput figures: every path in every setting present, in order of appearance.
  std::vector<std::pair<std::string, std::string>> paths;  // (path, setting)
  for (const auto& r : rows)
    if (std::find(paths.begin(), paths.end(), std::pair{str(r, "path"), setting(r)}) == paths.end())
      paths.emplace_back(str(r, "path"), setting(r));
  std::vector<Figure> out;

  // One CDF figure per side and setting: request_cdf, commit_cdf (inside the provider) and
  // request_cdf_tcp, commit_cdf_tcp (behind TCP) when the run has such rows.
  for (const char* set : {"inside_provider", "tcp"}) {
    const bool tcp = std::string_view(set) == "tcp";
    for (const char* side : {"request", "commit"}) {
      Figure f{.name = std::string(side) + "_cdf" + (tcp ? "_tcp" : ""),
               .title = fmt::format("{} latency CDF, {} devices, 1 client, {}", side, sweep,
                                    tcp ? "devices behind TCP (floe-esphome-sim)" : "device inside the provider"),
               .xlabel = "latency (us, log)", .ylabel = "fraction at or below", .logx = true, .style = "steps",
               .key = "right bottom"};
      for (const auto& r : rows) {
        if (!ok(r) || !is_default(r) || setting(r) != set || num(r, "devices") != sweep || num(r, "clients") != 1)
          continue;
        std::vector<std::vector<double>> pts;
        for (const auto& p : r[side].value("cdf", json::array())) pts.push_back({p[0].get<double>() / 1000.0, p[1].get<double>()});
        if (!pts.empty()) f.series.emplace_back(str(r, "path"), std::move(pts));
      }
      if (!tcp || !f.series.empty()) out.push_back(std::move(f));
    }
  }

  Figure dev{.name = "throughput_vs_devices", .title = fmt::format("saturation throughput, {} clients", tput_clients),
             .xlabel = "devices (log)", .ylabel = "requests/s", .logx = true};
  Figure cli{.name = "throughput_vs_clients", .title = fmt::format("saturation throughput, {} devices", sweep),
             .xlabel = "clients (log)", .ylabel = "requests/s", .logx = true};
  for (const auto& [p, set] : paths) {
    std::vector<std::vector<double>> d, c;
    for (const auto& r : rows) {
      if (!ok(r) || !is_default(r) || str(r, "path") != p || setting(r) != set) continue;
      if (num(r, "clients") == tput_clients) d.push_back({num(r, "devices"), num(r, "max_rps")});
      if (num(r, "devices") == sweep) c.push_back({num(r, "clients"), num(r, "max_rps")});
    }
    std::sort(d.begin(), d.end());
    std::sort(c.begin(), c.end());
    const std::string title = p + (set == "tcp" ? " (tcp)" : "");
    if (!d.empty()) dev.series.emplace_back(title, std::move(d));
    if (!c.empty()) cli.series.emplace_back(title, std::move(c));
  }
  out.push_back(std::move(dev));
  out.push_back(std::move(cli));

  Figure cpu{.name = "cpu_vs_latency", .title = fmt::format("CPU per request vs request p50, {} devices, 1 client", sweep),
             .xlabel = "core + provider CPU per request (us, log)", .ylabel = "request p50 (us, log)", .logx = true,
             .logy = true};
  for (const auto& r : rows) {
    if (!ok(r) || setting(r) != "inside_provider" || num(r, "devices") != sweep || num(r, "clients") != 1) continue;
    cpu.labels.emplace_back(num(r, "cpu_ns_per_request") / 1000.0, num(r, "request_p50_ns") / 1000.0, label(r));
  }
  out.push_back(std::move(cpu));

  Figure ramp{.name = "latency_vs_load", .title = "request p99 vs offered load", .xlabel = "offered requests/s",
              .ylabel = "request p99 (us, log)", .logy = true};
  for (const auto& r : rows) {
    if (!ok(r) || !r.contains("load_ramp")) continue;
    std::vector<std::vector<double>> pts;
    for (const auto& p : r["load_ramp"]) pts.push_back({num(p, "offered_rps"), num(p, "request_p99_ns") / 1000.0});
    if (!pts.empty()) ramp.series.emplace_back(fmt::format("{}, {} clients", series_title(r), num(r, "clients")), std::move(pts));
  }
  out.push_back(std::move(ramp));
  return out;
}

std::string markdown(const json& doc, const std::vector<std::string>& plots, const std::string& plot_note) {
  std::ostringstream md;
  const json& m = doc["machine"];
  md << "# floe-bench paths report\n\n";
  md << fmt::format("- date: {}\n- command: `{}`\n", str(doc, "date"), str(doc, "command"));
  md << fmt::format("- machine: {} | {} | {} cores ({} allowed) | load at start {}\n", str(m, "cpu_model"),
                    str(m, "kernel"), num(m, "cores"), num(m, "cores_allowed"), str(m, "loadavg_at_start"));
  if (doc.contains("config")) md << "- config: `" << doc["config"].dump() << "`\n";
  md << "\nLatencies are medians over the repetitions (spread: smallest-largest repetition p50); CPU is core + "
        "provider CPU per request or commit at the offered load.\n\n";
  md << "Setting `inside_provider`: the device is answered inside the provider (the IPC alone); `tcp`: every device "
        "is a floe-esphome-sim device behind its own native-API TCP connection on loopback.\n\n";
  const auto latency_table = [&](const json& rows) {
    md << "| path | setting | notify | devices | clients | req p50 us | req p99 us | req p50 spread | commit p50 us | "
          "commit p99 us | max req/s | CPU/req us | CPU/commit us |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (const auto& r : rows) {
      const std::string notify = str(r, "notify") + (str(r, "loop_backend").empty() ? "" : "/" + str(r, "loop_backend"));
      if (!ok(r)) {
        md << fmt::format("| {} | {} | {} | {} | {} | {}: {} ||||||||\n", str(r, "path"), setting(r), notify,
                          num(r, "devices"), num(r, "clients"), str(r, "status"), str(r, "reason"));
        continue;
      }
      const json& sp = r["request"]["p50_spread_ns"];
      md << fmt::format("| {} | {} | {} | {} | {} | {} | {} | {}-{} | {} | {} | {:.0f} | {} | {} |\n", str(r, "path"),
                        setting(r), notify, num(r, "devices"), num(r, "clients"), us(num(r, "request_p50_ns")),
                        us(num(r, "request_p99_ns")), us(sp[0].get<double>()), us(sp[1].get<double>()),
                        us(num(r, "commit_p50_ns")), us(num(r, "commit_p99_ns")), num(r, "max_rps"),
                        us(num(r, "cpu_ns_per_request")), us(num(r, "cpu_ns_per_commit")));
    }
  };
  latency_table(doc["paths"]);
  if (doc.contains("paired") && doc["paired"].is_array() && !doc["paired"].empty()) {
    md << "\n## Rows taken in turn\n\nfloe and old side by side, one repetition of each in turn, so that both see the "
          "same machine; the targets below come from these rows.\n\n";
    latency_table(doc["paired"]);
  }
  // Where the CPU went in the saturation phases (JSON written since these fields exist).
  bool saturation_header = false;
  for (const auto& r : doc["paths"]) {
    if (!ok(r) || !r.contains("busiest_thread_saturated") || !r.contains("client_cpu_ns_per_request_saturated")) continue;
    if (!saturation_header) {
      md << "\n## At saturation\n\nThe closed-loop phases: CPU per answered request of the path (core + provider) "
            "and of the clients (behind TCP with the simulated devices), the CPUs all of them kept busy, and the "
            "path's busiest thread with its share of one CPU.\n\n"
            "| path | setting | notify | devices | clients | max req/s | path CPU/req us | clients CPU/req us | "
            "CPUs busy | busiest thread | its CPU |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
      saturation_header = true;
    }
    const std::string notify = str(r, "notify") + (str(r, "loop_backend").empty() ? "" : "/" + str(r, "loop_backend"));
    const json& b = r["busiest_thread_saturated"];
    md << fmt::format("| {} | {} | {} | {} | {} | {:.0f} | {} | {} | {:.2f} | {} | {:.2f} |\n", str(r, "path"), setting(r),
                      notify, num(r, "devices"), num(r, "clients"), num(r, "max_rps"),
                      us(num(r, "cpu_ns_per_request_saturated")), us(num(r, "client_cpu_ns_per_request_saturated")),
                      num(r, "busy_cpus_saturated"), str(b, "name"), num(b, "cpus"));
  }
  if (doc.contains("targets")) {
    md << "\n## Targets\n\n| ratio | measured | target | |\n|---|---|---|---|\n";
    for (const auto& t : doc["targets"]) {
      const bool have = t["measured"].is_number();
      const bool judged = t.contains("target") && t["target"].is_string();
      md << fmt::format("| {} | {} | {} | {} |\n", str(t, "name"), have ? fmt::format("{:.3f}", num(t, "measured")) : "-",
                        judged ? str(t, "target") : "(reported, no target)",
                        !have ? "n/a" : !judged ? "" : t["pass"].is_boolean() && t["pass"].get<bool>() ? "PASS" : "MISS");
    }
  }
  if (doc.contains("not_run"))
    for (const auto& n : doc["not_run"]) md << fmt::format("\nNot run: setting `{}` — {}\n", str(n, "setting"), str(n, "reason"));
  if (doc.contains("transports") && !doc["transports"].empty()) {
    md << "\n## Transports (floe-bench ring)\n\n| name | RTT p50 us | RTT p99 us | msgs/s | CPU ns/msg |\n|---|---|---|---|---|\n";
    for (const auto& t : doc["transports"])
      md << fmt::format("| {} | {} | {} | {} | {} |\n", str(t, "name"),
                        t.contains("rtt_p50_ns") ? us(num(t, "rtt_p50_ns")) : "-",
                        t.contains("rtt_p99_ns") ? us(num(t, "rtt_p99_ns")) : "-",
                        t.contains("msgs_per_s") ? fmt::format("{:.0f}", num(t, "msgs_per_s")) : "-",
                        t.contains("cpu_ns_per_msg") ? fmt::format("{:.0f}", num(t, "cpu_ns_per_msg")) : "-");
  }
  md << "\n## Plots\n\n";
  if (!plot_note.empty()) md << plot_note << "\n\n";
  for (const auto& p : plots) md << fmt::format("![{}]({}.svg)\n\n", p, p);
  return md.str();
}

}  // namespace

CLI::App* add_report_subcommand(CLI::App& app, ReportConfig& cfg) {
  CLI::App* cmd = app.add_subcommand("report", "turn `floe-bench paths --json` output into Markdown with SVG plots");
  cmd->add_option("input", cfg.input, "the JSON written by floe-bench paths --json")->required();
  cmd->add_option("-o,--out", cfg.out_dir, "output directory (report.md, *.svg, gnuplot scripts)")->capture_default_str();
  cmd->add_option("--gnuplot", cfg.gnuplot, "the gnuplot program")->capture_default_str();
  cmd->add_flag("--require-plots", cfg.require_plots, "fail when the plots cannot be drawn");
  return cmd;
}

int run_report(const ReportConfig& cfg) {
  json doc;
  try {
    std::ifstream in(cfg.input);
    if (!in) {
      fmt::print(stderr, "floe-bench report: cannot read {}\n", cfg.input);
      return 1;
    }
    doc = json::parse(in);
  } catch (const std::exception& e) {
    fmt::print(stderr, "floe-bench report: {} is not JSON: {}\n", cfg.input, e.what());
    return 1;
  }
  if (!doc.is_object() || !doc.contains("paths") || !doc["paths"].is_array() || !doc.contains("machine") ||
      !doc["machine"].is_object()) {
    fmt::print(stderr, "floe-bench report: {} is not the JSON of floe-bench paths (no \"paths\" / \"machine\")\n",
               cfg.input);
    return 1;
  }
  std::error_code ec;
  std::filesystem::create_directories(cfg.out_dir, ec);
  if (ec) {
    fmt::print(stderr, "floe-bench report: cannot create {}: {}\n", cfg.out_dir, ec.message());
    return 1;
  }
  std::vector<std::string> drawn;
  std::string note;
  try {
    for (const Figure& f : figures(doc)) {
      if (!write_figure(f, cfg.out_dir)) continue;
      std::string why;
      if (run_gnuplot(cfg.gnuplot, cfg.out_dir, f.name + ".gp", why)) {
        drawn.push_back(f.name);
      } else {
        note = fmt::format("Plots not drawn: {} (install gnuplot-nox; the .gp scripts and .dat files are in this "
                           "directory).", why);
        if (cfg.require_plots) {
          fmt::print(stderr, "floe-bench report: {}\n", note);
          return 1;
        }
        break;
      }
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "floe-bench report: malformed paths JSON: {}\n", e.what());
    return 1;
  }
  const std::string path = cfg.out_dir + "/report.md";
  std::ofstream out(path);
  try {
    out << markdown(doc, drawn, note);
  } catch (const std::exception& e) {
    fmt::print(stderr, "floe-bench report: malformed paths JSON: {}\n", e.what());
    return 1;
  }
  out.close();
  if (!out) {
    fmt::print(stderr, "floe-bench report: cannot write {}\n", path);
    return 1;
  }
  fmt::print("report written to {} ({} plot(s){})\n", path, drawn.size(), note.empty() ? "" : "; " + note);
  return 0;
}

}  // namespace floe::bench
