// floe-bench: measurements of floe's IPC against the kernel's own, one subcommand per subject.
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "paths/paths_bench.hpp"
#include "query_bench.hpp"
#include "report/report_gen.hpp"
#include "ring_bench.hpp"
#include "soak/soak_bench.hpp"

int main(int argc, char** argv) {
  CLI::App app{"floe-bench: measures floe's IPC against the kernel's own primitives"};
  app.require_subcommand(1);

  floe::bench::RingBenchConfig ring;
  CLI::App* ring_cmd = app.add_subcommand("ring", "ring latency (every notify mode), streaming throughput, CPU/msg");
  ring_cmd->add_option("--round-trips", ring.round_trips, "measured round trips per latency benchmark [100000]");
  ring_cmd->add_option("--warmup-round-trips", ring.warmup_round_trips, "warm-up round trips [round-trips/10, <= 10000]");
  ring_cmd->add_option("--messages", ring.messages, "measured messages per ring/boost stream [10000000]");
  ring_cmd->add_option("--kernel-messages", ring.kernel_messages, "measured messages per socket/pipe stream [messages/10]");
  ring_cmd->add_option("--warmup-messages", ring.warmup_messages, "warm-up messages per stream [count/10, <= 1000000]");
  ring_cmd->add_option("--rounds", ring.rounds, "interleaved rounds the counts are split over [5; quick: 1]");
  ring_cmd->add_option("--only", ring.only, "comma-separated benchmark names to run")->delimiter(',');
  ring_cmd->add_option("--json", ring.json_path, "also write the results as JSON to this file");
  ring_cmd->add_flag("--quick", ring.quick, "small counts: a smoke run of a few seconds");
  ring_cmd->add_option("--ring-capacity", ring.ring_capacity, "data bytes per ring, a power of two")->capture_default_str();
  ring_cmd->add_option("--poll-us", ring.poll_interval_us, "ring_poll interval in microseconds")->capture_default_str();
  ring_cmd->add_option("--batch", ring.batch, "records per try_reserve/publish in ring_stream_eventfd")->capture_default_str();
  ring_cmd->add_option("--consumer-spin-us", ring.consumer_spin_us, "stream consumer polls this long before it sleeps")
      ->capture_default_str();
  ring_cmd->add_option("--timeout", ring.timeout_s, "seconds before a benchmark's children are killed [from counts]");
  ring_cmd->add_flag("!--no-pin", ring.pin, "do not pin the two sides to different CPUs");

  floe::bench::QueryBenchConfig query;
  CLI::App* query_cmd = floe::bench::add_query_subcommand(app, query);

  floe::bench::paths::PathsConfig paths;
  CLI::App* paths_cmd = floe::bench::paths::add_paths_subcommand(app, paths);

  floe::bench::soak::SoakConfig soak;
  CLI::App* soak_cmd = floe::bench::soak::add_soak_subcommand(app, soak);

  floe::bench::ReportConfig report;
  CLI::App* report_cmd = floe::bench::add_report_subcommand(app, report);

  CLI11_PARSE(app, argc, argv);

  if (ring_cmd->parsed()) {
    std::vector<std::string> words(argv, argv + argc);
    for (const auto& w : words) ring.command += (ring.command.empty() ? "" : " ") + w;
    return floe::bench::run_ring_bench(ring);
  }
  if (query_cmd->parsed()) {
    for (int i = 0; i < argc; ++i) query.command += (i ? " " : "") + std::string(argv[i]);
    return floe::bench::run_query_bench(query);
  }
  if (paths_cmd->parsed()) {
    for (int i = 0; i < argc; ++i) paths.command += (i ? " " : "") + std::string(argv[i]);
    return floe::bench::paths::run_paths_bench(paths);
  }
  if (soak_cmd->parsed()) {
    for (int i = 0; i < argc; ++i) soak.command += (i ? " " : "") + std::string(argv[i]);
    return floe::bench::soak::run_soak_bench(soak);
  }
  if (report_cmd->parsed()) return floe::bench::run_report(report);
  return 0;
}
