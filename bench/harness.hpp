// The two measurement shapes every transport plugs into, as templates over an endpoint type:
//
//   round trip: a pinger sends a 64-byte Message, the echoer sends it back, the pinger records
//               the time of every round trip (clock_gettime(CLOCK_MONOTONIC)) after a warm-up;
//   streaming:  a producer pushes numbered 64-byte messages one way as fast as the transport takes
//               them, the consumer reads all of them and checks their order; a barrier after the
//               warm-up starts the clock.
//
// Both sides run in their own forked, pinned children (process.hpp). Each side measures the CPU
// time of its own process over the measured phase and counts the syscalls it made to signal its
// peer; the figures come back through shared memory.
//
// RTT endpoint:     bool send(const Message&); bool receive(Message&);
//                   std::uint64_t notifications() const; std::string error() const;
// Stream producer:  bool send(std::uint64_t first_seq, std::uint64_t count);  // blocks until all
//                   are handed to the transport; notifications(); error()
// Stream consumer:  bool receive(std::uint64_t& next_seq, std::uint64_t end_seq, std::uint64_t& sum);
//                   // waits for at least one message, takes what is there (up to end_seq),
//                   // checks each sequence number == next_seq++, folds all 8 words into sum;
//                   aux() (a transport-specific count, see the note); error()
#pragma once

#include <sched.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include "clock.hpp"
#include "process.hpp"
#include "report.hpp"
#include "stats.hpp"

namespace floe::bench {

/// The payload of every benchmark: 64 bytes, word 0 the sequence number (starting at 1), the rest
/// a fixed pattern the consumer folds into a checksum so that no copy is optimised away.
struct alignas(8) Message {
  std::array<std::uint64_t, 8> words;
};
static_assert(sizeof(Message) == 64 && std::is_trivially_copyable_v<Message>);

[[nodiscard]] inline Message make_message(std::uint64_t seq) noexcept {
  Message m;
  m.words[0] = seq;
  for (std::size_t i = 1; i < m.words.size(); ++i) m.words[i] = 0x0101010101010101ULL * i;
  return m;
}

/// Folds a message into a running checksum (the consumer's proof that it read all 64 bytes).
[[nodiscard]] inline std::uint64_t fold(std::uint64_t sum, const Message& m) noexcept {
  for (std::uint64_t w : m.words) sum = (sum ^ w) * 0x100000001B3ULL;
  return sum;
}

struct RunPlan {
  std::string name;
  std::string note;
  std::uint64_t warmup = 0;  // round trips or messages before the clock starts
  std::uint64_t count = 0;   // measured round trips or messages
  std::chrono::milliseconds timeout{60'000};
  std::vector<int> cpus;     // per role; empty or -1: unpinned
};

/// Sets up an endpoint inside a child; on failure it calls ctx.fail/skip and returns nullptr.
template <typename Endpoint>
using EndpointFactory = std::function<std::unique_ptr<Endpoint>(RoleContext&)>;

namespace detail {

inline std::size_t control_bytes() noexcept { return (sizeof(Control) + 4095) & ~std::size_t{4095}; }

inline BenchResult base_result(const RunPlan& plan, const Control& control, std::size_t roles,
                               const RunOutcome& outcome) {
  BenchResult r;
  r.name = plan.name;
  r.note = plan.note;
  r.count = plan.count;
  for (std::size_t i = 0; i < roles; ++i) r.cpus.push_back(control.roles[i].cpu);
  if (outcome.state == RoleState::kSkipped) {
    r.status = ResultStatus::kSkipped;
    r.reason = outcome.reason;
  } else if (outcome.state != RoleState::kOk) {
    r.status = ResultStatus::kFailed;
    r.reason = outcome.reason;
  }
  return r;
}

template <typename Endpoint>
void ping(Endpoint& ep, RoleContext& ctx, const RunPlan& plan, std::int64_t* samples_out) {
  RoleReport& rep = ctx.report();
  Message out = make_message(0);
  Message in{};
  auto exchange = [&](std::uint64_t seq) {
    out.words[0] = seq;
    if (!ep.send(out)) {
      ctx.fail(fmt::format("send #{}: {}", seq, ep.error()));
      return false;
    }
    if (!ep.receive(in)) {
      ctx.fail(fmt::format("receive #{}: {}", seq, ep.error()));
      return false;
    }
    if (in.words[0] != seq) {
      ctx.fail(fmt::format("reply #{} carried sequence {}", seq, in.words[0]));
      return false;
    }
    return true;
  };
  std::uint64_t seq = 1;
  for (std::uint64_t i = 0; i < plan.warmup; ++i)
    if (!exchange(seq++)) return;
  // Zero-filled, so every page is touched before the clock runs.
  std::vector<std::int64_t> samples(plan.count);
  const std::uint64_t notified = ep.notifications();
  rep.cpu_ns = -process_cpu_ns();
  rep.t_begin_ns = now_ns();
  for (std::uint64_t i = 0; i < plan.count; ++i) {
    const std::int64_t t0 = now_ns();
    if (!exchange(seq++)) return;
    samples[i] = now_ns() - t0;
  }
  rep.t_end_ns = now_ns();
  rep.cpu_ns += process_cpu_ns();
  rep.notifications = ep.notifications() - notified;
  std::memcpy(samples_out, samples.data(), samples.size() * sizeof(std::int64_t));
}

template <typename Endpoint>
void echo(Endpoint& ep, RoleContext& ctx, const RunPlan& plan) {
  RoleReport& rep = ctx.report();
  Message m{};
  std::uint64_t notified = 0;
  const std::uint64_t total = plan.warmup + plan.count;
  for (std::uint64_t i = 0; i < total; ++i) {
    if (i == plan.warmup) {
      notified = ep.notifications();
      rep.cpu_ns = -process_cpu_ns();
      rep.t_begin_ns = now_ns();
    }
    if (!ep.receive(m)) return ctx.fail(fmt::format("receive #{}: {}", i + 1, ep.error()));
    if (!ep.send(m)) return ctx.fail(fmt::format("send #{}: {}", i + 1, ep.error()));
  }
  rep.t_end_ns = now_ns();
  rep.cpu_ns += process_cpu_ns();
  rep.notifications = ep.notifications() - notified;
}

}  // namespace detail

/// Round-trip benchmark: role 0 pings, role 1 echoes. Figures per message count both directions:
/// cpu_ns_per_msg = (CPU of both processes) / (2 x round trips), and likewise for notifications.
template <typename Endpoint>
BenchResult run_round_trips(const RunPlan& plan, EndpointFactory<Endpoint> make_pinger,
                            EndpointFactory<Endpoint> make_echoer) {
  auto shared = SharedMapping::create(detail::control_bytes() + plan.count * sizeof(std::int64_t));
  if (!shared) return failed_result(plan.name, shared.error().to_string());
  auto* control = new (shared->data()) Control{};
  auto* samples = reinterpret_cast<std::int64_t*>(shared->data() + detail::control_bytes());
  const std::vector<Role> roles = {
      {"pinger",
       [&](RoleContext& ctx) {
         if (auto ep = make_pinger(ctx)) detail::ping(*ep, ctx, plan, samples);
       }},
      {"echoer",
       [&](RoleContext& ctx) {
         if (auto ep = make_echoer(ctx)) detail::echo(*ep, ctx, plan);
       }},
  };
  const RunOutcome outcome = run_roles(*control, roles, plan.cpus, plan.timeout);
  BenchResult r = detail::base_result(plan, *control, roles.size(), outcome);
  if (r.status != ResultStatus::kOk) return r;
  r.rtt_samples.assign(samples, samples + plan.count);
  r.rtt = summarize(r.rtt_samples);
  const double msgs = 2.0 * static_cast<double>(plan.count);
  r.cpu_ns_per_msg = static_cast<double>(control->roles[0].cpu_ns + control->roles[1].cpu_ns) / msgs;
  r.notify_syscalls_per_msg =
      static_cast<double>(control->roles[0].notifications + control->roles[1].notifications) / msgs;
  return r;
}

namespace detail {

/// Producer side of the warm-up barrier: the consumer publishes `warm` once it has read every
/// warm-up message; spinning politely here costs nothing that is measured.
inline void wait_until_warm(const Control& control) noexcept {
  // SYNC(warm): acquire pairs with the consumer's release store once the warm-up is drained.
  while (control.warm.load(std::memory_order_acquire) == 0) ::sched_yield();
}

template <typename Producer>
void produce(Producer& p, RoleContext& ctx, const RunPlan& plan) {
  RoleReport& rep = ctx.report();
  if (plan.warmup > 0 && !p.send(1, plan.warmup)) return ctx.fail("warm-up send: " + p.error());
  wait_until_warm(ctx.control());
  const std::uint64_t notified = p.notifications();
  rep.cpu_ns = -process_cpu_ns();
  rep.t_begin_ns = now_ns();
  if (!p.send(1 + plan.warmup, plan.count)) return ctx.fail("send: " + p.error());
  rep.t_end_ns = now_ns();
  rep.cpu_ns += process_cpu_ns();
  rep.notifications = p.notifications() - notified;
}

template <typename Consumer>
void consume(Consumer& c, RoleContext& ctx, const RunPlan& plan) {
  RoleReport& rep = ctx.report();
  std::uint64_t next = 1;
  std::uint64_t sum = 0;
  const std::uint64_t warm_end = 1 + plan.warmup;
  const std::uint64_t end = warm_end + plan.count;
  while (next < warm_end)
    if (!c.receive(next, warm_end, sum)) return ctx.fail(fmt::format("warm-up receive at #{}: {}", next, c.error()));
  const std::uint64_t aux = c.aux();
  rep.cpu_ns = -process_cpu_ns();
  // SYNC(warm): release pairs with the producer's acquire in wait_until_warm.
  ctx.control().warm.store(1, std::memory_order_release);
  while (next < end)
    if (!c.receive(next, end, sum)) return ctx.fail(fmt::format("receive at #{}: {}", next, c.error()));
  rep.t_end_ns = now_ns();
  rep.cpu_ns += process_cpu_ns();
  rep.aux = c.aux() - aux;
  rep.checksum = sum;
}

}  // namespace detail

/// Fills the streaming figures from the two reports: role 0 produced, role 1 consumed.
inline void finish_stream(BenchResult& r, const Control& control) {
  const RoleReport& p = control.roles[0];
  const RoleReport& c = control.roles[1];
  const double n = static_cast<double>(r.count);
  const double seconds = static_cast<double>(c.t_end_ns - p.t_begin_ns) / 1e9;
  r.elapsed_s = seconds;
  if (seconds > 0) r.msgs_per_s = n / seconds;
  r.cpu_ns_per_msg = static_cast<double>(p.cpu_ns + c.cpu_ns) / n;
  r.notify_syscalls_per_msg = static_cast<double>(p.notifications) / n;
}

/// One-way streaming benchmark across two processes: role 0 produces, role 1 consumes.
/// `aux_label` names the consumer's aux() count, reported per message (e.g. "read(2)s").
template <typename Producer, typename Consumer>
BenchResult run_stream(const RunPlan& plan, EndpointFactory<Producer> make_producer,
                       EndpointFactory<Consumer> make_consumer,
                       std::string aux_label = {}) {
  auto shared = SharedMapping::create(detail::control_bytes());
  if (!shared) return failed_result(plan.name, shared.error().to_string());
  auto* control = new (shared->data()) Control{};
  const std::vector<Role> roles = {
      {"producer",
       [&](RoleContext& ctx) {
         if (auto p = make_producer(ctx)) detail::produce(*p, ctx, plan);
       }},
      {"consumer",
       [&](RoleContext& ctx) {
         if (auto c = make_consumer(ctx)) detail::consume(*c, ctx, plan);
       }},
  };
  const RunOutcome outcome = run_roles(*control, roles, plan.cpus, plan.timeout);
  BenchResult r = detail::base_result(plan, *control, roles.size(), outcome);
  if (r.status != ResultStatus::kOk) return r;
  finish_stream(r, *control);
  if (!aux_label.empty()) {
    r.aux_label = std::move(aux_label);
    r.aux_per_msg = static_cast<double>(control->roles[1].aux) / static_cast<double>(r.count);
  }
  return r;
}

}  // namespace floe::bench
