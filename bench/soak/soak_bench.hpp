// `floe-bench soak`: load and soak through the full path with nothing lost. The real floe-core,
// SDK provider processes changing every entity's Integer on a schedule, and floe::client watchers
// (one `list Integer in group G` watch per device group, plus a global `sum Integer`). At the end
// every entity's last committed value must have been seen by its watcher and must be what the core
// answers (client get) and holds (its device trees, read as floe-inspect reads them).
// See bench/README.md, "floe-bench soak".
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace floe::bench::soak {

struct SoakConfig {
  std::uint32_t devices = 1000;
  std::uint32_t entities = 10;       // per device
  double rate = 100'000;             // changes per second, all providers together
  double seconds = 60;               // length of the schedule
  std::uint32_t providers = 2;       // provider processes (devices split by index)
  std::uint32_t watchers = 4;        // watching client connections (groups split among them)
  std::uint32_t group_devices = 10;  // devices per group (one list watch each)
  double quiesce_s = 60;             // how long the watchers may take to catch up at the end
  std::string notify = "eventfd";    // the core's [rings] notify
  std::string core_bin;              // floe-core [the one built with floe-bench]
  std::string json_path;
  bool quick = false;
  std::string command;  // as invoked (for the report)
};

[[nodiscard]] CLI::App* add_soak_subcommand(CLI::App& app, SoakConfig& cfg);
/// Runs the soak; 0 when nothing was lost and every check held, 1 otherwise (2: could not run).
int run_soak_bench(SoakConfig cfg);

}  // namespace floe::bench::soak
