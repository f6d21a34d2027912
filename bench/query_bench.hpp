// floe-bench query: the column-wise bitset query engine against the per-entity component-list
// layout it replaces, on generated homes of 30, 100 and 10,000 devices. See README.md.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace floe::bench {

struct QueryBenchConfig {
  std::vector<std::size_t> devices{30, 100, 10'000};
  int repetitions = 15;            // timed repetitions per figure; the median is reported
  double repetition_ms = 20;       // target length of one repetition
  double writer_rate = 1e6;        // paced writer: Dimmer updates per second
  std::string json_path;
  std::vector<std::string> only;   // query names to run (empty: all)
  bool quick = false;
  bool pin = true;
  std::size_t watchers = 1024;        // distinct watches subscribed one by one (0: skip that part)
  std::size_t watch_devices = 1000;   // the home the watches are subscribed on
  std::string command;
};

/// Registers the `query` subcommand on `app`, filling `cfg`.
CLI::App* add_query_subcommand(CLI::App& app, QueryBenchConfig& cfg);
/// Runs it; returns the process exit status (0: ran; the targets are reported, not enforced).
int run_query_bench(const QueryBenchConfig& cfg);

}  // namespace floe::bench
