// What the processes of a soak share: one MAP_SHARED anonymous mapping made before the children
// fork. The header (control words, counters, the watchers' histograms) is followed by the
// per-entity arrays: the last value each entity was committed with (written by its provider) and,
// per watcher connection, the last value that connection saw for it.
//
// Schedule: change k (1 .. K) is intended at start_ns + (k-1) * 1e9/rate, goes to entity
// n = (k-1) % (devices*entities) — device n % devices, entity n / devices — and sets its Integer
// to k. So a value names its change and its intended time: latency = receipt - intended(value).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "paths/floe_path.hpp"
#include "paths/histogram.hpp"

namespace floe::bench::soak {

inline constexpr std::uint32_t kMaxWatchers = 64;
inline constexpr std::uint32_t kMaxProviders = 16;

struct SoakHeader {
  // Geometry (written before the children fork).
  std::uint32_t devices = 0, entities = 0, providers = 0, watchers = 0, group_devices = 0;
  double rate = 0;
  std::uint64_t total_changes = 0;  // K
  // Run control. `go` is a futex word: 1 once start_ns is written; `stop` ends the children.
  std::atomic<std::uint32_t> go;
  std::int64_t start_ns = 0;
  std::atomic<std::uint32_t> stop;
  std::atomic<std::uint32_t> providers_ready;
  std::atomic<std::uint32_t> providers_done;
  std::atomic<std::uint32_t> watchers_ready;
  std::atomic<std::uint32_t> watchers_done;  // histograms written
  // Counters.
  std::atomic<std::uint64_t> committed;        // Device::set returned kOk
  std::atomic<std::uint64_t> commit_failures;  // it did not
  std::atomic<std::uint64_t> observed;         // new values the watchers saw (each one a latency sample)
  std::atomic<std::uint64_t> events;           // watch events received
  std::atomic<std::int64_t> max_schedule_lag_ns;  // how far a provider fell behind its schedule
  std::atomic<std::int64_t> provider_end_ns[kMaxProviders];  // when each provider made its last change
  std::atomic<std::uint64_t> sum_seen_bits[kMaxWatchers];    // last `sum Integer` per watcher (double bits)
  std::atomic<std::uint32_t> sum_seen_valid[kMaxWatchers];
  paths::LogHistogram latency[kMaxWatchers];  // written by each watcher thread as it stops
  std::atomic<std::uint64_t> watcher_reconnects;  // the core dropped a watching connection; it resubscribed
  char first_disconnect[512];                      // why, the first time
  std::atomic<std::uint64_t> failures;
  std::atomic<std::uint32_t> error_set;
  char error[512];
};

/// The mapping: header, then int64 committed[N], then int64 seen[W][N] (N = devices * entities).
class SoakShared {
 public:
  /// Maps and zeroes it; nullptr-like (ok() false) on failure.
  SoakShared(std::uint32_t devices, std::uint32_t entities, std::uint32_t watchers);
  ~SoakShared();
  SoakShared(const SoakShared&) = delete;
  SoakShared& operator=(const SoakShared&) = delete;

  [[nodiscard]] bool ok() const noexcept { return base_ != nullptr; }
  [[nodiscard]] SoakHeader& h() const noexcept { return *static_cast<SoakHeader*>(base_); }
  [[nodiscard]] std::uint64_t n() const noexcept { return n_; }
  [[nodiscard]] std::atomic<std::int64_t>& committed(std::uint64_t entity) const noexcept { return committed_[entity]; }
  [[nodiscard]] std::atomic<std::int64_t>& seen(std::uint32_t watcher, std::uint64_t entity) const noexcept {
    return seen_[static_cast<std::uint64_t>(watcher) * n_ + entity];
  }

  /// Intended time of change k (identical arithmetic in every process).
  [[nodiscard]] std::int64_t intended_ns(std::uint64_t k) const noexcept {
    return h().start_ns + static_cast<std::int64_t>(static_cast<double>(k - 1) * (1e9 / h().rate));
  }
  /// Which watcher connection watches device d's group.
  [[nodiscard]] std::uint32_t watcher_of(std::uint32_t device) const noexcept {
    return (device / h().group_devices) % h().watchers;
  }
  /// Records the first failure message of any process; counts every failure.
  void fail(std::string_view what) const noexcept;

 private:
  void* base_ = nullptr;
  std::size_t bytes_ = 0;
  std::uint64_t n_ = 0;
  std::atomic<std::int64_t>* committed_ = nullptr;
  std::atomic<std::int64_t>* seen_ = nullptr;
};

/// Ids shared by the provider, the watchers and the checks.
[[nodiscard]] std::string soak_device_id(std::uint32_t d);
[[nodiscard]] std::string soak_entity_id(std::uint32_t d, std::uint32_t e);
[[nodiscard]] std::string soak_group(std::uint32_t g);
/// Parses "s<d>_<e>" back; false for anything else.
[[nodiscard]] bool parse_soak_entity(std::string_view id, std::uint32_t& d, std::uint32_t& e) noexcept;

/// Bodies of the child processes (their exit status). Provider `index` owns the devices d with
/// d % providers == index; the watchers process runs one connection per watcher thread.
int run_soak_provider(const SoakShared& s, const paths::FloeSetup& setup, std::uint32_t index);
int run_soak_watchers(const SoakShared& s, const paths::FloeSetup& setup);

}  // namespace floe::bench::soak
