// `floe-bench ring`: latency, throughput and CPU cost of floe's SPSC ring in every notification
// mode, against the kernel's own IPC primitives and an in-process lock-free queue, in one run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace floe::bench {

struct RingBenchConfig {
  // Counts: 0 means "the default" (shown after each), smaller with `quick`.
  std::uint64_t round_trips = 0;         // per latency benchmark; 100'000 (quick: 5'000)
  std::uint64_t warmup_round_trips = 0;  // round_trips / 10, at most 10'000
  std::uint64_t messages = 0;            // per in-memory stream; 10'000'000 (quick: 200'000)
  std::uint64_t kernel_messages = 0;     // per socket/pipe stream; messages / 10
  std::uint64_t warmup_messages = 0;     // per round: a tenth of its count, at most 1'000'000
  std::uint32_t rounds = 0;              // interleaved rounds the counts are split over; 5 (quick: 1)
  std::size_t ring_capacity = 64 * 1024; // data bytes of each ring
  std::uint32_t poll_interval_us = 50;   // ring_poll's sleep between checks
  std::size_t batch = 32;                // records per try_reserve/publish batch when streaming
  std::uint32_t consumer_spin_us = 0;    // stream consumer polls this long before sleeping
  double timeout_s = 0;                  // per benchmark; 0: derived from the counts
  bool pin = true;                       // pin the two sides to different CPUs
  bool quick = false;                    // small counts, for a smoke run
  std::vector<std::string> only;         // benchmark names to run; empty: all
  std::string json_path;                 // write JSON here too
  std::string command;                   // the command line, for the report
};

/// Names of every benchmark `ring` knows, in the order it runs them.
[[nodiscard]] const std::vector<std::string>& ring_bench_names();

/// Runs the benchmarks, prints the table and ratios, writes JSON if asked. Returns the process
/// exit code: 0 if every selected benchmark ran or was skipped, 1 if any failed, 2 on bad input.
[[nodiscard]] int run_ring_bench(RingBenchConfig config);

}  // namespace floe::bench
