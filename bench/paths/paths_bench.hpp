// `floe-bench paths`: the seed's three request paths (old, per_device_socket, floe) built from
// real processes and measured side by side — request and commit latency under offered load,
// saturation throughput, CPU per request and per commit, floe's notification strategies. See
// bench/README.md ("floe-bench paths").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace floe::bench::paths {

struct PathsConfig {
  std::vector<std::string> paths{"floe", "old", "per_device_socket"};
  std::vector<std::uint32_t> devices{1, 10, 100, 1000};
  std::vector<std::uint32_t> clients{1, 4, 16, 64};  // swept at `sweep_devices`
  std::uint32_t sweep_devices = 100;
  std::uint32_t throughput_clients = 16;             // second row at every device count
  // "eventfd-rings": eventfd with a flag and an eventfd per ring ([rings] doorbells = false).
  std::vector<std::string> notify{"eventfd/io_uring", "eventfd-rings/io_uring", "eventfd/epoll", "futex", "spin", "poll"};
  bool doorbells = true;         // floe's main rows: [rings] doorbells
  int repetitions = 3;
  double phase_s = 1.0;          // length of each measured phase
  double load_rps = 500;         // offered load of the latency phases (requests/s and commits/s)
  double send_lead_us = 150;     // open phases: senders wake this early and spin to the intended time
  bool pin = false;              // latency phases: every process of the path on one CPU
  bool ramp = true;              // ramp offered load at (sweep_devices, throughput_clients)
  bool paired = true;            // the targets' rows again, floe and old one repetition each in turn
  bool transports = true;        // run `floe-bench ring` (small counts) and join its results
  std::size_t task_threads = 2;  // the baselines' device-task / link-task pools
  std::string setting;           // inprocess | tcp | both; empty: both (--quick: inprocess)
  std::string core_bin;          // floe-core; default: the one built with floe-bench
  std::string esphome_bin;       // floe-esphome (tcp setting); default: the one built with floe-bench
  std::string json_path;
  bool quick = false;
  std::string command;
};

CLI::App* add_paths_subcommand(CLI::App& app, PathsConfig& cfg);
/// Runs the sweep; prints progress and the table; writes JSON if asked. Exit status: 0 when every
/// row ran or was skipped with a reason, 1 when a row failed, 2 on bad arguments.
int run_paths_bench(PathsConfig cfg);

}  // namespace floe::bench::paths
