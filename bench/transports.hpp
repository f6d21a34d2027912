// Every transport `floe-bench ring` measures. Each function runs one benchmark to completion
// (both sides in their own children) and returns its figures, or why it was skipped or failed.
#pragma once

#include <chrono>
#include <cstddef>

#include "floe/ipc/event_loop.hpp"
#include "floe/ipc/notify.hpp"
#include "harness.hpp"

namespace floe::bench {

// Kernel baselines (kernel_transports.cpp). Round trips of one 64-byte Message.
[[nodiscard]] BenchResult bench_pipe_rtt(const RunPlan& plan);            // two pipes
[[nodiscard]] BenchResult bench_unix_stream_rtt(const RunPlan& plan);     // socketpair SOCK_STREAM
[[nodiscard]] BenchResult bench_unix_seqpacket_rtt(const RunPlan& plan);  // socketpair SOCK_SEQPACKET
[[nodiscard]] BenchResult bench_eventfd_raw_rtt(const RunPlan& plan);     // 2 eventfds + shared slots
[[nodiscard]] BenchResult bench_spin_raw_rtt(const RunPlan& plan);        // 2 shared atomics, spinning
// One-way streams, one write(2) per message.
[[nodiscard]] BenchResult bench_unix_seqpacket_stream(const RunPlan& plan);
[[nodiscard]] BenchResult bench_pipe_stream(const RunPlan& plan);

// boost::lockfree::spsc_queue between two pinned threads of one process (boost_spsc.cpp).
[[nodiscard]] BenchResult bench_boost_spsc_inproc(const RunPlan& plan, std::size_t capacity_elements);

// floe's ring (ring_transports.cpp): a Region made by the first role, handed to the second over
// a Channel with SCM_RIGHTS, opened there with Region::open.
struct RingRttOptions {
  ipc::NotifyMode mode = ipc::NotifyMode::kEventfd;
  ipc::LoopBackend backend = ipc::LoopBackend::kIoUring;  // kEventfd only: who waits on the eventfd
  std::size_t capacity = 64 * 1024;
  std::chrono::microseconds poll_interval{50};
};
[[nodiscard]] BenchResult bench_ring_rtt(const RunPlan& plan, const RingRttOptions& options);

struct RingStreamOptions {
  ipc::LoopBackend backend = ipc::LoopBackend::kIoUring;  // the consumer's event loop
  std::size_t capacity = 64 * 1024;
  std::size_t batch = 32;  // > 1: try_reserve/publish batches; 1: push_wait per message
  std::size_t drain_max = 256;  // records per drain() (one release of the head per drain)
  std::chrono::nanoseconds consumer_spin{0};  // poll this long before sleeping (0: never)
};
[[nodiscard]] BenchResult bench_ring_stream(const RunPlan& plan, const RingStreamOptions& options);

}  // namespace floe::bench
