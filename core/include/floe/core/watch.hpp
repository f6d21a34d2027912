// Watchers: queries re-evaluated when a slot they read changes, reporting only when their result
// changes.
//
//   WatchHub hub(registry);
//   auto h = hub.subscribe(*parse_query("avg Dimmer where Light in group kitchen"),
//                          [](const Result<QueryResult>& r) { ... });   // called now, then on changes
//   auto feed = hub.attach(device_id);          // per device, owned by the shard draining its rx ring
//   feed->on_change(records);                   // one drained batch of change records
//   if (rx.header().overflow.exchange(0, std::memory_order_acq_rel)) feed->on_overflow();
//   hub.flush();                                // re-evaluates each triggered watcher once, reports
//
// Deduplication: watchers are keyed by the canonical text of their query with its operands in
// canonical order (to_string(canonical(Query))), so `AVG dimmer WHERE light` and `avg Dimmer where
// Light`, or `... where Light and Switch` and `... where Switch and Light`, share one watcher, one
// evaluation and one last result; every subscription holds a reference and the last unsubscribe frees the watcher.
//
// Interest: per snapshot version, each watcher's *candidate slots* (the entities its scope covers,
// online, with every required component and no excluded one: presence is fixed per snapshot) and
// the components whose *values* it reads (the aggregated/listed target, compared components).
// Presence-only components (markers, `count X`, `with`/`without`) cannot change between snapshots,
// so writes to them trigger nothing. A change record (device, entity, component) marks dirty
// exactly the watchers reading that component with that entity among their candidates: an
// O(1) lookup per record plus one bit test per interested watcher; components nobody reads cost a
// table lookup. Registry changes (devices added/removed, online, groups) rebuild the index and
// re-evaluate every watcher (reporting those whose result changed).
//
// Change records and overflow: a WatchFeed (one per device) remembers the last change sequence it
// accepted per entity. A record whose sequence is not newer is stale (an overflow rescan already
// covered it) and triggers nothing; one newer than the tree's own sequence is bogus and ignored.
// on_overflow() compares every entity's current sequence with the remembered one and triggers the
// watchers of exactly the entities whose sequence moved.
//
// Threading:
//   - WatchFeed: not thread-safe; one thread at a time per feed (the shard that owns the device's
//     rings). Feeds of different devices may run on different threads concurrently.
//   - subscribe / unsubscribe / flush / stats: any thread, internally synchronised.
//   - Callbacks run on the thread that calls flush() (or subscribe(), for the initial result),
//     with the watcher's lock held: one watcher's subscribers see its results one at a time and in
//     evaluation order. A callback may unsubscribe any handle (from inside a callback the removal
//     is completed when the current flush/subscribe returns); it must not call subscribe() or
//     flush() (subscribe returns an error, flush asserts).
//   - After unsubscribe() returns (outside a callback) the callback is not running and will not be
//     called again.
//   - The hub must outlive its handles and feeds; the registry must outlive the hub.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "floe/core/engine.hpp"
#include "floe/ipc/device_region.hpp"
#include "floe/core/query.hpp"
#include "floe/core/registry.hpp"
#include "floe/ipc/result.hpp"
#include "floe/ipc/tree.hpp"

namespace floe::core {

/// One change record as a provider pushes it on its rx ring after writing the tree: the entity,
/// the component written, and the entity's change sequence after the write. Shared-memory data
/// (the payload of a ring record of type kChangeRecordType), so every field is untrusted.
using ChangeRecord = ipc::ChangeRecord;  // the wire format lives with the device region

/// Ring record type of a change record (provider -> core rx ring).
inline constexpr std::uint16_t kChangeRecordType = ipc::kChangeRecord;

/// Copies a change record out of a ring payload; nullopt if the payload has the wrong size.
[[nodiscard]] std::optional<ChangeRecord> decode_change_record(std::span<const std::byte> payload) noexcept;

/// Equality of results as watchers report them: action, count, number and truth (NaN equals NaN),
/// matches (entity, id, online flag, value; NaN-aware), set value and unreadable count.
[[nodiscard]] bool same_result(const QueryResult& a, const QueryResult& b) noexcept;

/// What a subscriber receives: the new result, or why the query cannot be evaluated now (e.g. an
/// unknown group; the watcher stays registered and reports once the registry makes it bindable).
using WatchCallback = std::function<void(const Result<QueryResult>&)>;

/// Counters for diagnostics and tests (relaxed; a racy sum).
struct WatchStats {
  std::uint64_t evaluations = 0;      // evaluate() calls made by the hub
  std::uint64_t reports = 0;          // results that differed from the last one (callback rounds)
  std::uint64_t records = 0;          // change records received
  std::uint64_t stale_records = 0;    // sequence not newer than the last one seen: ignored
  std::uint64_t ignored_records = 0;  // no such entity / component, or a sequence from the future
  std::uint64_t triggers = 0;         // watchers marked dirty (false -> true transitions)
  std::uint64_t rescans = 0;          // on_overflow() calls
  std::uint64_t rescanned_entities = 0;  // entities whose sequence had moved at a rescan
  std::uint64_t rebuilds = 0;         // interest index rebuilds (registry version changes)
  std::uint64_t index_edits = 0;      // watchers added to or removed from the index in place
};

class WatchHub;

namespace detail {
struct Watcher;
struct Subscriber;
}  // namespace detail

/// A subscription. Move-only; unsubscribes on destruction.
class WatchHandle {
 public:
  WatchHandle() = default;
  WatchHandle(WatchHandle&& o) noexcept;
  WatchHandle& operator=(WatchHandle&& o) noexcept;
  WatchHandle(const WatchHandle&) = delete;
  WatchHandle& operator=(const WatchHandle&) = delete;
  ~WatchHandle();

  /// Unsubscribes now (idempotent).
  void reset() noexcept;
  [[nodiscard]] bool active() const noexcept { return sub_ != nullptr; }
  /// The canonical text of the watched query, operands in canonical order ("" if not active).
  [[nodiscard]] const std::string& key() const noexcept;

 private:
  friend class WatchHub;
  WatchHandle(WatchHub* hub, std::shared_ptr<detail::Subscriber> sub) noexcept : hub_(hub), sub_(std::move(sub)) {}
  WatchHub* hub_ = nullptr;
  std::shared_ptr<detail::Subscriber> sub_;
};

/// The change-record side of one device. Not thread-safe: owned by the thread that drains the
/// device's rx ring. Holds the device's TreeReader alive.
class WatchFeed {
 public:
  WatchFeed(WatchFeed&&) noexcept = default;
  WatchFeed& operator=(WatchFeed&&) noexcept = default;
  WatchFeed(const WatchFeed&) = delete;
  WatchFeed& operator=(const WatchFeed&) = delete;

  /// Handles one batch of change records (normally one drain of the rx ring): marks the
  /// triggered watchers dirty; flush() evaluates them. Never fails: records naming no entity or
  /// component of the device, or a sequence newer than the tree's, are counted and ignored.
  void on_change(std::span<const ChangeRecord> records) noexcept;
  /// Records were lost: triggers the watchers of every entity whose change sequence moved since
  /// the last record or rescan accepted for it.
  void on_overflow() noexcept;

  [[nodiscard]] DeviceId device() const noexcept { return device_; }
  /// The last sequence accepted for `e` (0 if out of range).
  [[nodiscard]] std::uint64_t last_seq(ipc::EntityIndex e) const noexcept {
    return e < last_seq_.size() ? last_seq_[e] : 0;
  }

 private:
  friend class WatchHub;
  WatchFeed(WatchHub* hub, DeviceId device, std::shared_ptr<const ipc::TreeReader> reader,
            std::shared_ptr<const void> keepalive);

  WatchHub* hub_;
  DeviceId device_;
  std::shared_ptr<const ipc::TreeReader> reader_;
  std::shared_ptr<const void> keepalive_;
  std::vector<std::uint64_t> last_seq_;
  std::vector<ipc::EntityIndex> moved_;                    // scratch for on_overflow
  std::vector<std::shared_ptr<detail::Watcher>> queued_;  // scratch: watchers this batch made dirty
};

/// The core's watchers (one per core process). See the file comment for the contracts.
class WatchHub {
 public:
  explicit WatchHub(Registry& registry);
  ~WatchHub();
  WatchHub(const WatchHub&) = delete;
  WatchHub& operator=(const WatchHub&) = delete;

  /// Registers `callback` for `query` and calls it at once (on this thread) with the watcher's
  /// current result: the last one reported to the other subscribers of an identical query, or a
  /// fresh evaluation for a new watcher. Errors: a `set` query (a request, not a watchable
  /// result); called from inside a callback.
  [[nodiscard]] Result<WatchHandle> subscribe(const Query& query, WatchCallback callback);
  /// parse_query + subscribe.
  [[nodiscard]] Result<WatchHandle> subscribe(std::string_view query_text, WatchCallback callback);

  /// A feed for `device`'s change records. Its baseline is sequence 0 for every entity and it
  /// performs one rescan at once, so writes made before the feed existed are not missed.
  /// Errors: no such device in the current snapshot.
  [[nodiscard]] Result<WatchFeed> attach(DeviceId device);
  /// The same for a device that need not be published yet (the core attaches a new device's rings
  /// before the snapshot that shows it, so clients never see it without them): `reader` is its
  /// tree, `keepalive` whatever owns the memory the reader reads.
  [[nodiscard]] WatchFeed attach(DeviceId device, std::shared_ptr<const ipc::TreeReader> reader,
                                 std::shared_ptr<const void> keepalive);

  /// Re-binds every watcher if the registry changed, then evaluates each dirty watcher once and
  /// calls its subscribers if the result differs from the last one reported. Returns the number
  /// of watchers evaluated. Any thread; not from inside a callback.
  std::size_t flush();

  /// Watchers alive (distinct queries with at least one subscriber).
  [[nodiscard]] std::size_t watcher_count() const;
  /// Subscribers of the watcher for `query`'s canonical text (0: none).
  [[nodiscard]] std::size_t subscriber_count(const Query& query) const;
  [[nodiscard]] WatchStats stats() const noexcept;

 private:
  friend class WatchHandle;
  friend class WatchFeed;

  /// Per device slot: who reads which component of which candidate entity. Edited in place when a
  /// watcher comes or goes (swap-and-pop, O(the watcher's devices)); rebuilt when the registry's
  /// version changes.
  struct DeviceInterest {
    std::uint32_t generation = 0;
    std::uint32_t chunk_count = 0;
    struct Entry {
      detail::Watcher* watcher;
      const std::uint64_t* masks;  // chunk_count words of candidate slots, owned by the watcher
      std::uint32_t* position;     // where the watcher keeps this entry's index in its list
    };
    std::vector<std::uint16_t> list_of;  // [component id] -> 1 + index into lists; 0: nobody reads it
    std::vector<std::vector<Entry>> lists;
    std::vector<Entry> any;  // every watcher with a candidate on the device (rescans)
  };

  void unsubscribe(const std::shared_ptr<detail::Subscriber>& sub) noexcept;
  void unsubscribe_now(const std::shared_ptr<detail::Subscriber>& sub);
  void process_deferred();
  /// Re-indexes if the registry's version is not the index's.
  void sync();
  /// index_mu_ held exclusively: rebuilds the index from the current snapshot; if its version
  /// changed, marks every watcher dirty.
  void reindex_locked();
  void rebuild_locked(const Snapshot& snap);
  /// index_mu_ held exclusively: puts a new watcher into the index, in place if the index is
  /// current, else by a rebuild (which also marks every watcher dirty).
  void index_new_locked(detail::Watcher& w);
  /// index_mu_ held exclusively, the index built for `snap`: binds `w` and links its entries.
  void index_add_locked(detail::Watcher& w, const Snapshot& snap);
  /// index_mu_ held exclusively: unlinks `w`'s entries.
  void index_remove_locked(detail::Watcher& w) noexcept;
  /// index_mu_ held (shared or exclusive): marks dirty and queues.
  void trigger(detail::Watcher* w, std::vector<std::shared_ptr<detail::Watcher>>& queued) noexcept;
  void enqueue(std::vector<std::shared_ptr<detail::Watcher>>& queued) noexcept;
  void evaluate_and_report(detail::Watcher& w);
  void feed_changes(WatchFeed& feed, std::span<const ChangeRecord> records) noexcept;
  void feed_rescan(WatchFeed& feed) noexcept;

  Registry& registry_;

  // The watchers and the interest index. Readers (feeds) take it shared for one batch.
  mutable std::shared_mutex index_mu_;
  std::map<std::string, std::shared_ptr<detail::Watcher>, std::less<>> watchers_;
  std::uint64_t index_version_ = 0;
  bool index_valid_ = false;
  std::vector<DeviceInterest> devices_;  // by device slot index

  std::mutex dirty_mu_;  // leaf lock
  std::vector<std::shared_ptr<detail::Watcher>> dirty_;

  std::mutex deferred_mu_;  // leaf lock
  std::vector<std::shared_ptr<detail::Subscriber>> deferred_;

  struct Counters {
    std::atomic<std::uint64_t> evaluations{0}, reports{0}, records{0}, stale_records{0}, ignored_records{0},
        triggers{0}, rescans{0}, rescanned_entities{0}, rebuilds{0}, index_edits{0};
  };
  mutable Counters counters_;
};

}  // namespace floe::core
