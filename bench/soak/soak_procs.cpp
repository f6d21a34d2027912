// The soak's child processes: SDK providers making the scheduled changes, and the watchers process
// (floe::client connections holding real watches). See soak_shared.hpp for the schedule.
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <optional>
#include <cstring>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "client.hpp"
#include "clock.hpp"
#include "floe/sdk/provider.hpp"
#include "paths/common.hpp"
#include "soak/soak_shared.hpp"

namespace floe::bench::soak {

using floe::sdk::Component;

SoakShared::SoakShared(std::uint32_t devices, std::uint32_t entities, std::uint32_t watchers) {
  n_ = static_cast<std::uint64_t>(devices) * entities;
  const std::size_t head = (sizeof(SoakHeader) + 63) / 64 * 64;
  bytes_ = head + n_ * sizeof(std::int64_t) * (1 + static_cast<std::size_t>(watchers));
  void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  base_ = p;  // anonymous pages are zero: every atomic, counter and value starts at 0
  auto* bytes = static_cast<std::byte*>(p);
  committed_ = reinterpret_cast<std::atomic<std::int64_t>*>(bytes + head);
  seen_ = committed_ + n_;
}

SoakShared::~SoakShared() {
  if (base_ != nullptr) ::munmap(base_, bytes_);
}

void SoakShared::fail(std::string_view what) const noexcept {
  SoakHeader& s = h();
  s.failures.fetch_add(1, std::memory_order_relaxed);
  if (s.error_set.exchange(1, std::memory_order_acq_rel) == 0) {
    const std::size_t n = std::min(what.size(), sizeof(s.error) - 1);
    std::memcpy(s.error, what.data(), n);
    s.error[n] = '\0';
  }
}

std::string soak_device_id(std::uint32_t d) { return fmt::format("s{}", d); }
std::string soak_entity_id(std::uint32_t d, std::uint32_t e) { return fmt::format("s{}_{}", d, e); }
std::string soak_group(std::uint32_t g) { return fmt::format("soak-g{}", g); }

bool parse_soak_entity(std::string_view id, std::uint32_t& d, std::uint32_t& e) noexcept {
  if (id.size() < 4 || id[0] != 's') return false;
  const char* end = id.data() + id.size();
  auto r = std::from_chars(id.data() + 1, end, d);
  if (r.ec != std::errc{} || r.ptr == end || *r.ptr != '_') return false;
  r = std::from_chars(r.ptr + 1, end, e);
  return r.ec == std::errc{} && r.ptr == end;
}

namespace {

void wait_go(const SoakShared& s) {
  SoakHeader& h = s.h();
  // SYNC(go): acquire pairs with the orchestrator's release store of go after start_ns.
  while (h.go.load(std::memory_order_acquire) == 0 && h.stop.load(std::memory_order_acquire) == 0)
    paths::wait_word(h.go, 0, std::chrono::milliseconds(200));
}

void atomic_max(std::atomic<std::int64_t>& a, std::int64_t v) noexcept {
  std::int64_t cur = a.load(std::memory_order_relaxed);
  while (v > cur && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

floe::client::ClientOptions soak_client_options(const paths::FloeSetup& setup) {
  floe::client::ClientOptions o;
  o.socket_dir = setup.dir;
  o.timeout = std::chrono::milliseconds(30'000);
  o.peer_name = "floe-bench-soak";
  return o;
}

/// The provider's pacer: makes every scheduled change of its devices at (or, when behind, as soon
/// as possible after) its intended time. Changes that are due together are made in one batch; it
/// sleeps at least kMinSleepNs so that a high rate does not cost one sleep per change.
void pace(const SoakShared& s, std::uint32_t index, const std::vector<floe::sdk::Device*>& devs) {
  constexpr std::int64_t kMinSleepNs = 50'000;
  SoakHeader& h = s.h();
  const std::uint64_t total = s.n();
  const double step = 1e9 / h.rate;
  std::uint64_t next = 1;
  while (next <= h.total_changes && h.stop.load(std::memory_order_relaxed) == 0) {
    const std::int64_t now = now_ns();
    const std::int64_t due = s.intended_ns(next);
    if (due > now) {
      paths::sleep_until_ns(std::max(due, now + kMinSleepNs));
      continue;
    }
    atomic_max(h.max_schedule_lag_ns, now - due);
    const auto reached = static_cast<std::uint64_t>(static_cast<double>(now - h.start_ns) / step) + 1;
    const std::uint64_t last = std::min(h.total_changes, reached);
    std::uint64_t ok = 0, bad = 0;
    for (; next <= last; ++next) {
      const std::uint64_t n = (next - 1) % total;
      const auto d = static_cast<std::uint32_t>(n % h.devices);
      if (d % h.providers != index) continue;
      const auto e = static_cast<std::uint32_t>(n / h.devices);
      const auto st = devs[d]->set(static_cast<floe::sdk::EntityIndex>(e), Component::Integer,
                                   static_cast<std::int64_t>(next));
      if (st == floe::sdk::WriteStatus::kOk) {
        s.committed(static_cast<std::uint64_t>(d) * h.entities + e).store(static_cast<std::int64_t>(next),
                                                                           std::memory_order_relaxed);
        ++ok;
      } else if (bad++ == 0) {
        s.fail(fmt::format("provider {}: set {} on {}: {}", index, next, soak_entity_id(d, e),
                           floe::ipc::to_string(st)));
      }
    }
    h.committed.fetch_add(ok, std::memory_order_relaxed);
    if (bad != 0) h.commit_failures.fetch_add(bad, std::memory_order_relaxed);
  }
  h.provider_end_ns[index].store(now_ns(), std::memory_order_relaxed);
}

}  // namespace

int run_soak_provider(const SoakShared& s, const paths::FloeSetup& setup, std::uint32_t index) {
  spdlog::set_level(spdlog::level::warn);
  ::prctl(PR_SET_TIMERSLACK, 1UL);
  SoakHeader& h = s.h();
  floe::sdk::Provider provider({.name = fmt::format("floe-bench-soak-{}", index), .socket_dir = setup.dir});
  provider.on_request([](floe::sdk::Request& r) { r.fail("the soak's devices take no requests"); });
  std::vector<floe::sdk::Device*> devs(h.devices, nullptr);
  std::vector<floe::sdk::Device*> mine;
  for (std::uint32_t d = index; d < h.devices; d += h.providers) {
    floe::sdk::DeviceSpec spec{.id = soak_device_id(d), .name = soak_device_id(d),
                               .groups = {soak_group(d / h.group_devices)}, .entities = {}};
    for (std::uint32_t e = 0; e < h.entities; ++e)
      spec.entities.push_back({.id = soak_entity_id(d, e), .name = soak_entity_id(d, e),
                               .components = {Component::Integer}});
    auto& dev = provider.add_device(std::move(spec));
    for (std::uint32_t e = 0; e < h.entities; ++e)
      (void)dev.set(static_cast<floe::sdk::EntityIndex>(e), Component::Integer, std::int64_t{0});
    devs[d] = &dev;
    mine.push_back(&dev);
  }
  // The provider's own loop, until the orchestrator has finished its checks (the devices must stay
  // online for them).
  std::thread loop([&] {
    bool ready = false;
    while (h.stop.load(std::memory_order_acquire) == 0) {
      pollfd pfd{provider.fd(), POLLIN, 0};
      ::poll(&pfd, 1, 20);
      if (auto st = provider.process(); !st) {
        s.fail(fmt::format("provider {}: {}", index, st.error().to_string()));
        return;
      }
      if (!ready && std::all_of(mine.begin(), mine.end(), [](auto* d) { return d->online(); })) {
        ready = true;
        h.providers_ready.fetch_add(1, std::memory_order_release);
        paths::wake_word(h.providers_ready);
      }
    }
  });
  wait_go(s);
  if (h.stop.load(std::memory_order_acquire) == 0) pace(s, index, devs);
  // SYNC(done): release pairs with the orchestrator's acquire load of providers_done.
  h.providers_done.fetch_add(1, std::memory_order_release);
  paths::wake_word(h.providers_done);
  loop.join();
  return 0;
}

namespace {

/// One watching connection: a `list Integer in group G` watch per group it was given, and
/// `sum Integer` over the whole home.
void watcher_thread(const SoakShared& s, const paths::FloeSetup& setup, std::uint32_t w) {
  SoakHeader& h = s.h();
  paths::LogHistogram hist;
  auto finish = [&] {
    h.latency[w] = hist;
    h.watchers_done.fetch_add(1, std::memory_order_release);
  };
  std::optional<floe::client::Client> c;
  std::unordered_map<std::uint64_t, bool> started;  // watch id -> initial result seen
  std::uint64_t sum_id = 0;
  std::size_t pending = 0;
  bool ready = false;
  const std::uint32_t groups = (h.devices + h.group_devices - 1) / h.group_devices;
  auto watch = [&](const std::string& text) {
    auto id = c->watch(text);
    if (!id) {
      s.fail(fmt::format("watcher {}: watch: {}", w, id.error().message));
      return false;
    }
    started[*id] = false;
    if (text == "sum Integer") sum_id = *id;
    return true;
  };
  // Connects and starts the watches; again after the core dropped the connection (a new watch
  // reports the current result at once, so nothing committed is missed across the gap).
  auto subscribe = [&] {
    c.reset();
    started.clear();
    sum_id = 0;
    auto conn = floe::client::Client::connect(soak_client_options(setup));
    if (!conn) {
      s.fail(fmt::format("watcher {}: connect: {}", w, conn.error().message));
      return false;
    }
    c.emplace(std::move(*conn));
    for (std::uint32_t g = w; g < groups; g += h.watchers)
      if (!watch(fmt::format("list Integer in group {}", soak_group(g)))) return false;
    // Every connection also watches the aggregate (deduplicated in the core: one watcher).
    if (!watch("sum Integer")) return false;
    pending = started.size();
    return true;
  };
  if (!subscribe()) return finish();
  std::uint64_t observed = 0, events = 0;
  while (h.stop.load(std::memory_order_acquire) == 0) {
    auto ev = c->next_event(-1, std::chrono::milliseconds(100));
    if (!ev) {
      if (ev.error().exit == floe::client::ExitCode::kTimeout) continue;
      // The core drops a client that leaves kMaxOutbox events unread: count it, say why, resume.
      if (h.watcher_reconnects.fetch_add(1, std::memory_order_relaxed) == 0) {
        const std::string why = fmt::format("watcher {}: {}", w, ev.error().message);
        std::memcpy(h.first_disconnect, why.data(), std::min(why.size(), sizeof(h.first_disconnect) - 1));
      }
      if (h.stop.load(std::memory_order_acquire) != 0 || !ready || !subscribe()) {
        s.fail(fmt::format("watcher {}: {}", w, ev.error().message));
        break;
      }
      continue;
    }
    const std::int64_t t = now_ns();
    const auto& e = ev->event;
    if (++events == 64) {  // the shared counters feed the progress line: no need to touch them per event
      h.observed.fetch_add(observed, std::memory_order_relaxed);
      h.events.fetch_add(events, std::memory_order_relaxed);
      observed = events = 0;
    }
    if (!e.error().empty()) {
      s.fail(fmt::format("watcher {}: watch {}: {}", w, e.watch_id(), e.error()));
      continue;
    }
    if (auto it = started.find(e.watch_id()); it != started.end() && !it->second) {
      it->second = true;
      if (--pending == 0 && !ready) {
        ready = true;
        h.watchers_ready.fetch_add(1, std::memory_order_release);
        paths::wake_word(h.watchers_ready);
      }
    }
    const bool going = h.go.load(std::memory_order_acquire) != 0;
    if (e.watch_id() == sum_id) {
      if (e.result().has_number()) {
        h.sum_seen_bits[w].store(std::bit_cast<std::uint64_t>(e.result().number()), std::memory_order_relaxed);
        h.sum_seen_valid[w].store(1, std::memory_order_relaxed);
      }
      continue;
    }
    for (const auto& m : e.result().matches()) {
      std::uint32_t d = 0, en = 0;
      if (!m.has_value() || m.value().kind_case() != floe::proto::Value::kInteger) continue;
      if (!parse_soak_entity(m.entity(), d, en) || d >= h.devices || en >= h.entities) {
        s.fail(fmt::format("watcher {}: unexpected entity '{}'", w, m.entity()));
        continue;
      }
      const std::int64_t v = m.value().integer();
      auto& slot = s.seen(w, static_cast<std::uint64_t>(d) * h.entities + en);
      if (slot.load(std::memory_order_relaxed) == v) continue;
      slot.store(v, std::memory_order_relaxed);
      if (v > 0 && going) {
        hist.record(t - s.intended_ns(static_cast<std::uint64_t>(v)));
        ++observed;
      }
    }
  }
  h.observed.fetch_add(observed, std::memory_order_relaxed);
  h.events.fetch_add(events, std::memory_order_relaxed);
  finish();
}

}  // namespace

int run_soak_watchers(const SoakShared& s, const paths::FloeSetup& setup) {
  spdlog::set_level(spdlog::level::warn);
  std::vector<std::thread> threads;
  for (std::uint32_t w = 0; w < s.h().watchers; ++w) threads.emplace_back([&, w] { watcher_thread(s, setup, w); });
  for (auto& t : threads) t.join();
  return 0;
}

}  // namespace floe::bench::soak
