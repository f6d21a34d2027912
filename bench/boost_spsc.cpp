// The in-process yardstick: boost::lockfree::spsc_queue between two pinned threads of one
// (forked) process. No syscalls at all; both threads spin when the queue is full or empty.
#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <thread>

#include <boost/lockfree/spsc_queue.hpp>

#include "transports.hpp"

namespace floe::bench {

namespace {

using Element = std::array<std::byte, sizeof(Message)>;

void run_in_process(RoleContext& ctx, const RunPlan& plan, std::size_t capacity, int consumer_cpu) {
  boost::lockfree::spsc_queue<Element> queue(capacity);
  std::atomic<bool> warm{false};
  RoleReport& rep = ctx.report();
  RoleReport& consumer_rep = ctx.control().roles[1];
  const std::uint64_t warm_end = 1 + plan.warmup;
  const std::uint64_t end = warm_end + plan.count;

  std::thread consumer([&] {
    consumer_rep.cpu = (consumer_cpu >= 0 && pin_current_thread(consumer_cpu)) ? consumer_cpu : -1;
    std::array<Element, 256> batch;
    std::uint64_t next = 1;
    std::uint64_t sum = 0;
    while (next < end) {
      const std::size_t n = queue.pop(batch.data(), std::min<std::uint64_t>(batch.size(), end - next));
      if (n == 0) {
        cpu_relax();
        continue;
      }
      for (std::size_t i = 0; i < n; ++i) {
        const auto m = std::bit_cast<Message>(batch[i]);
        if (m.words[0] != next) {
          ctx.fail("message out of order");
          warm.store(true, std::memory_order_release);
          return;
        }
        ++next;
        sum = fold(sum, m);
      }
      // SYNC(boost-warm): pairs with the producer's acquire below.
      if (next == warm_end) warm.store(true, std::memory_order_release);
    }
    consumer_rep.t_end_ns = now_ns();
    consumer_rep.checksum = sum;
  });

  Message m = make_message(0);
  auto push_range = [&](std::uint64_t first, std::uint64_t last) {
    for (std::uint64_t seq = first; seq < last; ++seq) {
      m.words[0] = seq;
      const auto e = std::bit_cast<Element>(m);
      while (!queue.push(e)) cpu_relax();
    }
  };
  push_range(1, warm_end);
  // SYNC(boost-warm): the consumer drained the warm-up (or failed).
  while (!warm.load(std::memory_order_acquire)) cpu_relax();
  if (!ctx.failed()) {
    rep.cpu_ns = -process_cpu_ns();
    rep.t_begin_ns = now_ns();
    push_range(warm_end, end);
  }
  consumer.join();
  // RUSAGE_SELF covers both threads: from the start of the measured phase until the consumer
  // read the last message (plus the join).
  rep.cpu_ns += process_cpu_ns();
}

}  // namespace

BenchResult bench_boost_spsc_inproc(const RunPlan& plan, std::size_t capacity_elements) {
  auto shared = SharedMapping::create(detail::control_bytes());
  if (!shared) return failed_result(plan.name, shared.error().to_string());
  auto* control = new (shared->data()) Control{};
  const int consumer_cpu = plan.cpus.size() > 1 ? plan.cpus[1] : -1;
  const std::vector<Role> roles = {
      {"process", [&](RoleContext& ctx) { run_in_process(ctx, plan, capacity_elements, consumer_cpu); }}};
  control->roles[1].cpu = -1;
  const RunOutcome outcome = run_roles(*control, roles, plan.cpus, plan.timeout);
  BenchResult r = detail::base_result(plan, *control, 1, outcome);
  r.cpus.push_back(control->roles[1].cpu);
  if (r.status != ResultStatus::kOk) return r;
  const RoleReport& p = control->roles[0];
  const RoleReport& c = control->roles[1];
  const double n = static_cast<double>(plan.count);
  r.elapsed_s = static_cast<double>(c.t_end_ns - p.t_begin_ns) / 1e9;
  r.msgs_per_s = n / r.elapsed_s;
  r.cpu_ns_per_msg = static_cast<double>(p.cpu_ns) / n;
  r.notify_syscalls_per_msg = 0.0;
  return r;
}

}  // namespace floe::bench
