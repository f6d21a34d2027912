// `floe-bench report`: turns the JSON of `floe-bench paths --json` into a Markdown page with
// plots (SVG, drawn by gnuplot when it is installed): request and commit latency CDFs per path,
// throughput against devices and against clients, CPU against latency per notification strategy,
// latency against offered load.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace floe::bench {

struct ReportConfig {
  std::string input;            // paths JSON
  std::string out_dir = "floe-bench-report";
  std::string gnuplot = "gnuplot";
  bool require_plots = false;   // fail when gnuplot is missing or fails
};

CLI::App* add_report_subcommand(CLI::App& app, ReportConfig& cfg);
/// 0: report written (plots drawn, or skipped with a note when gnuplot is missing); 1: the input
/// is unreadable or not paths JSON, or the output cannot be written, or plots failed under
/// require_plots.
int run_report(const ReportConfig& cfg);

}  // namespace floe::bench
