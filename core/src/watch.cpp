// Watchers: see watch.hpp for the contracts and docs/WATCHERS.md for the design.
//
// Locks, outermost first (never taken in the other order):
//   Watcher::mu (recursive: a callback runs under it)  ->  index_mu_  ->  dirty_mu_ / deferred_mu_
// index_mu_ is taken shared by feeds for one batch and exclusively by subscribe, the last
// unsubscribe and re-indexing; it is never held while a watcher's lock is acquired.
#include "floe/core/watch.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <utility>
#include <variant>

#include "floe/core/query_parser.hpp"
#include "floe/ipc/platform.hpp"

namespace floe::core {

namespace detail {

struct Watcher : std::enable_shared_from_this<Watcher> {
  Watcher(std::string k, Query q) : key(std::move(k)), query(std::move(q)) {}

  const std::string key;
  const Query query;

  std::recursive_mutex mu;
  // Guarded by mu.
  bool dead = false;
  std::vector<std::shared_ptr<Subscriber>> subs;
  std::optional<Result<BoundQuery>> binding;
  std::uint64_t bound_version = 0;
  std::optional<Result<QueryResult>> last;  // last reported

  // Its part of the hub's interest index, guarded by the hub's index_mu_ (not by mu): the
  // components whose values it reads and, per device with a candidate, the candidate slots and
  // the positions of its entries in that device's lists (one per component, then `any`). The
  // index's entries point into the blocks, which stay put while the watcher is indexed.
  struct IndexBlock {
    std::uint32_t slot, generation, chunk_count, masks;  // masks: offset into index_masks
  };
  std::vector<std::uint16_t> index_components;
  std::vector<IndexBlock> index_blocks;
  std::vector<std::uint64_t> index_masks;
  std::vector<std::uint32_t> index_positions;  // per block: one per component, then `any`

  /// Drops its part of the index (the hub's entries must be unlinked or gone already).
  void forget_index() noexcept {
    index_components.clear();
    index_blocks.clear();
    index_masks.clear();
    index_positions.clear();
  }

  // SYNC(watch-dirty): a feed's exchange(true, acq_rel) publishes the records it handled (and,
  // through the ring's own release/acquire, the tree writes they announce); flush's
  // exchange(false, acq_rel) acquires them before it evaluates. Only the false -> true transition
  // queues the watcher, so it is queued at most once at a time.
  std::atomic<bool> dirty{false};
};

struct Subscriber {
  std::shared_ptr<Watcher> watcher;
  WatchCallback callback;
  // Written under the watcher's lock; read under it by delivery (relaxed is enough there) and
  // lock-free by nobody else: atomic only so an in-callback unsubscribe may clear it cheaply.
  std::atomic<bool> active{true};
};

}  // namespace detail

namespace {

using detail::Subscriber;
using detail::Watcher;

// Depth of watch callbacks running on this thread: subscribe refuses, unsubscribe defers.
thread_local int tls_callback_depth = 0;

struct CallbackScope {
  CallbackScope() noexcept { ++tls_callback_depth; }
  ~CallbackScope() { --tls_callback_depth; }
  CallbackScope(const CallbackScope&) = delete;
  CallbackScope& operator=(const CallbackScope&) = delete;
};

bool same_number(double a, double b) noexcept { return a == b || (std::isnan(a) && std::isnan(b)); }

bool same_value(const ipc::Value& a, const ipc::Value& b) noexcept {
  if (a.index() != b.index()) return false;
  if (const auto* x = std::get_if<double>(&a)) return same_number(*x, std::get<double>(b));
  return a == b;
}

bool same_entity_value(const EntityValue& a, const EntityValue& b) noexcept {
  if (a.index() != b.index()) return false;
  if (const auto* x = std::get_if<ipc::Value>(&a)) return same_value(*x, std::get<ipc::Value>(b));
  return a == b;
}

bool same_outcome(const Result<QueryResult>& a, const Result<QueryResult>& b) noexcept {
  if (a.has_value() != b.has_value()) return false;
  if (a) return same_result(*a, *b);
  return a.error().operation == b.error().operation && a.error().message == b.error().message;
}

/// The components whose values the bound query reads: tree writes to any other component cannot
/// change its result (presence is fixed per snapshot).
std::vector<Component> value_components(const BoundQuery& b) {
  std::vector<Component> out;
  if (b.target && b.target_encoding != ipc::Encoding::kMarker) {
    switch (b.action) {
      case Action::kSum:
      case Action::kAvg:
      case Action::kMin:
      case Action::kMax:
      case Action::kAny:
      case Action::kAll:
      case Action::kGet:
      case Action::kList: out.push_back(*b.target); break;
      case Action::kCount:
      case Action::kSet: break;
    }
  }
  for (const FilterStep& st : b.residual) {
    if (st.kind == FilterStep::Kind::kCompare) out.push_back(st.component);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::uint64_t presence_word(const HomeIndex& home, Component c, std::uint32_t g) noexcept {
  if (ipc::to_id(c) > ipc::kMaxComponentId) return 0;
  const HomeColumn& col = home.column(c);
  return g < col.presence.size() ? col.presence[g] : 0;
}

}  // namespace

// ---- Free functions -----------------------------------------------------------------------------

std::optional<ChangeRecord> decode_change_record(std::span<const std::byte> payload) noexcept {
  if (payload.size() != sizeof(ChangeRecord)) return std::nullopt;
  ChangeRecord r;
  std::memcpy(&r, payload.data(), sizeof r);
  return r;
}

bool same_result(const QueryResult& a, const QueryResult& b) noexcept {
  if (a.action != b.action || a.count != b.count || a.truth != b.truth || a.unreadable != b.unreadable ||
      a.set_value != b.set_value || a.number.has_value() != b.number.has_value() ||
      a.matches.size() != b.matches.size()) {
    return false;
  }
  if (a.number && !same_number(*a.number, *b.number)) return false;
  for (std::size_t i = 0; i < a.matches.size(); ++i) {
    const QueryMatch& x = a.matches[i];
    const QueryMatch& y = b.matches[i];
    if (x.entity != y.entity || x.online != y.online || x.entity_id != y.entity_id ||
        !same_entity_value(x.value, y.value)) {
      return false;
    }
  }
  return true;
}

// ---- WatchHandle --------------------------------------------------------------------------------

WatchHandle::WatchHandle(WatchHandle&& o) noexcept : hub_(std::exchange(o.hub_, nullptr)), sub_(std::move(o.sub_)) {}

WatchHandle& WatchHandle::operator=(WatchHandle&& o) noexcept {
  if (this != &o) {
    reset();
    hub_ = std::exchange(o.hub_, nullptr);
    sub_ = std::move(o.sub_);
  }
  return *this;
}

WatchHandle::~WatchHandle() { reset(); }

void WatchHandle::reset() noexcept {
  if (sub_) hub_->unsubscribe(sub_);
  sub_.reset();
  hub_ = nullptr;
}

const std::string& WatchHandle::key() const noexcept {
  static const std::string kEmpty;
  return sub_ ? sub_->watcher->key : kEmpty;
}

// ---- WatchFeed ----------------------------------------------------------------------------------

WatchFeed::WatchFeed(WatchHub* hub, DeviceId device, std::shared_ptr<const ipc::TreeReader> reader,
                     std::shared_ptr<const void> keepalive)
    : hub_(hub),
      device_(device),
      reader_(std::move(reader)),
      keepalive_(std::move(keepalive)),
      last_seq_(reader_->entity_count(), 0) {
  moved_.reserve(last_seq_.size());
}

void WatchFeed::on_change(std::span<const ChangeRecord> records) noexcept { hub_->feed_changes(*this, records); }

void WatchFeed::on_overflow() noexcept { hub_->feed_rescan(*this); }

// ---- WatchHub -----------------------------------------------------------------------------------

WatchHub::WatchHub(Registry& registry) : registry_(registry) {}

WatchHub::~WatchHub() {
  // Break the watcher <-> subscriber cycles; handles must not outlive the hub (watch.hpp).
  std::vector<std::shared_ptr<Watcher>> all;
  {
    std::unique_lock il(index_mu_);
    for (auto& [key, w] : watchers_) all.push_back(w);
    watchers_.clear();
    devices_.clear();
  }
  for (auto& w : all) {
    std::lock_guard wl(w->mu);
    w->dead = true;
    w->subs.clear();
  }
  std::lock_guard dl(dirty_mu_);
  dirty_.clear();
}

Result<WatchHandle> WatchHub::subscribe(std::string_view query_text, WatchCallback callback) {
  auto q = parse_query(query_text);
  if (!q) return tl::unexpected(std::move(q).error());
  return subscribe(*q, std::move(callback));
}

Result<WatchHandle> WatchHub::subscribe(const Query& query, WatchCallback callback) {
  if (tls_callback_depth > 0) return logic_error("watch.subscribe", "called from inside a watch callback");
  if (query.action == Action::kSet) {
    return logic_error("watch.subscribe", "a set query is a request, not a result to watch");
  }
  // Operand order does not change the result: `a and b` and `b and a` are one watcher.
  Query canonical_query = canonical(query);
  std::string key = to_string(canonical_query);
  auto sub = std::make_shared<Subscriber>();
  sub->callback = std::move(callback);
  for (;;) {
    std::shared_ptr<Watcher> w;
    {
      std::unique_lock il(index_mu_);
      if (auto it = watchers_.find(key); it != watchers_.end()) {
        w = it->second;
      } else {
        w = std::make_shared<Watcher>(key, canonical_query);
        watchers_.emplace(key, w);
        index_new_locked(*w);
      }
    }
    std::lock_guard wl(w->mu);
    if (w->dead) continue;  // its last subscriber left in between: make a new one
    sub->watcher = w;
    w->subs.push_back(sub);
    if (!w->last) {
      evaluate_and_report(*w);  // the new watcher's first result, to its only subscriber
    } else {
      const CallbackScope scope;
      sub->callback(*w->last);
    }
    break;
  }
  process_deferred();
  return WatchHandle(this, std::move(sub));
}

void WatchHub::unsubscribe(const std::shared_ptr<Subscriber>& sub) noexcept {
  if (tls_callback_depth > 0) {
    // Inside a callback this thread may hold some watcher's lock; taking another could deadlock
    // against a thread doing the reverse. Silence the subscriber now, remove it later.
    sub->active.store(false, std::memory_order_relaxed);
    std::lock_guard dl(deferred_mu_);
    deferred_.push_back(sub);
    return;
  }
  unsubscribe_now(sub);
}

void WatchHub::unsubscribe_now(const std::shared_ptr<Subscriber>& sub) {
  const std::shared_ptr<Watcher> w = sub->watcher;
  if (!w) return;
  std::lock_guard wl(w->mu);
  sub->active.store(false, std::memory_order_relaxed);
  auto it = std::find(w->subs.begin(), w->subs.end(), sub);
  if (it == w->subs.end()) return;
  w->subs.erase(it);
  if (!w->subs.empty() || w->dead) return;
  w->dead = true;
  std::unique_lock il(index_mu_);
  if (auto m = watchers_.find(w->key); m != watchers_.end() && m->second == w) watchers_.erase(m);
  // A registry change since the index was built is left to the next flush's sync().
  index_remove_locked(*w);
}

void WatchHub::process_deferred() {
  std::vector<std::shared_ptr<Subscriber>> todo;
  {
    std::lock_guard dl(deferred_mu_);
    todo.swap(deferred_);
  }
  for (const auto& s : todo) unsubscribe_now(s);
}

Result<WatchFeed> WatchHub::attach(DeviceId device) {
  std::shared_ptr<const ipc::TreeReader> reader;
  std::shared_ptr<const void> keepalive;
  {
    auto snap = registry_.snapshot();
    const DeviceRecord* d = snap->device(device);
    if (d == nullptr) return logic_error("watch.attach", "no such device (removed, or a stale id)");
    reader = d->data->reader;
    keepalive = d->data->keepalive;
  }
  return attach(device, std::move(reader), std::move(keepalive));
}

WatchFeed WatchHub::attach(DeviceId device, std::shared_ptr<const ipc::TreeReader> reader,
                           std::shared_ptr<const void> keepalive) {
  WatchFeed feed(this, device, std::move(reader), std::move(keepalive));
  // Baseline 0: every entity ever written counts as moved. A device the index does not know yet
  // (unpublished) triggers nobody here; the publication that shows it re-evaluates every watcher.
  feed_rescan(feed);
  return feed;
}

std::size_t WatchHub::flush() {
  FLOE_ASSERT(tls_callback_depth == 0);
  if (tls_callback_depth > 0) return 0;
  sync();
  std::vector<std::shared_ptr<Watcher>> batch;
  {
    std::lock_guard dl(dirty_mu_);
    batch.swap(dirty_);
  }
  std::size_t evaluated = 0;
  for (const auto& w : batch) {
    std::lock_guard wl(w->mu);
    if (w->dead) continue;
    // SYNC(watch-dirty): acquire what the feeds that marked it published; a mark after this
    // exchange queues the watcher again.
    w->dirty.exchange(false, std::memory_order_acq_rel);
    evaluate_and_report(*w);
    ++evaluated;
  }
  process_deferred();
  return evaluated;
}

std::size_t WatchHub::watcher_count() const {
  std::shared_lock il(index_mu_);
  return watchers_.size();
}

std::size_t WatchHub::subscriber_count(const Query& query) const {
  std::shared_ptr<Watcher> w;
  {
    std::shared_lock il(index_mu_);
    auto it = watchers_.find(to_string(canonical(query)));
    if (it == watchers_.end()) return 0;
    w = it->second;
  }
  std::lock_guard wl(w->mu);
  return w->dead ? 0 : w->subs.size();
}

WatchStats WatchHub::stats() const noexcept {
  const auto ld = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  return WatchStats{.evaluations = ld(counters_.evaluations),
                    .reports = ld(counters_.reports),
                    .records = ld(counters_.records),
                    .stale_records = ld(counters_.stale_records),
                    .ignored_records = ld(counters_.ignored_records),
                    .triggers = ld(counters_.triggers),
                    .rescans = ld(counters_.rescans),
                    .rescanned_entities = ld(counters_.rescanned_entities),
                    .rebuilds = ld(counters_.rebuilds),
                    .index_edits = ld(counters_.index_edits)};
}

// ---- Evaluation ---------------------------------------------------------------------------------

void WatchHub::evaluate_and_report(Watcher& w) {
  std::optional<Result<QueryResult>> r;
  {
    // The guard is dropped before any callback runs: a slow subscriber must not hold back
    // snapshot reclamation.
    auto snap = registry_.snapshot();
    if (!w.binding || w.bound_version != snap->version()) {
      w.binding = bind(w.query, *snap);
      w.bound_version = snap->version();
    }
    if (*w.binding) {
      r.emplace(evaluate(**w.binding, *snap));
    } else {
      r.emplace(tl::unexpected(w.binding->error()));
    }
  }
  counters_.evaluations.fetch_add(1, std::memory_order_relaxed);
  if (w.last && same_outcome(*w.last, *r)) return;
  w.last = std::move(r);
  counters_.reports.fetch_add(1, std::memory_order_relaxed);
  const CallbackScope scope;
  // No subscriber can be added or removed meanwhile: others wait for w.mu, and this thread's
  // callbacks defer their unsubscribes and may not subscribe.
  for (const auto& s : w.subs) {
    if (s->active.load(std::memory_order_relaxed)) s->callback(*w.last);
  }
}

// ---- The interest index -------------------------------------------------------------------------

void WatchHub::sync() {
  {
    auto snap = registry_.snapshot();
    std::shared_lock il(index_mu_);
    if (index_valid_ && index_version_ == snap->version()) return;
  }
  std::unique_lock il(index_mu_);
  reindex_locked();
}

void WatchHub::reindex_locked() {
  auto snap = registry_.snapshot();
  const bool version_changed = !index_valid_ || index_version_ != snap->version();
  rebuild_locked(*snap);
  if (!version_changed) return;
  // Scopes, candidates and offline devices may all have changed: every watcher re-evaluates once
  // (and reports only if its result did change).
  std::vector<std::shared_ptr<Watcher>> queued;
  for (auto& [key, w] : watchers_) trigger(w.get(), queued);
  enqueue(queued);
}

void WatchHub::rebuild_locked(const Snapshot& snap) {
  std::uint32_t slots = 0;
  for (const DeviceRecord& d : snap.devices()) slots = std::max(slots, d.id.index + 1);
  devices_.clear();
  devices_.resize(slots);
  for (auto& [key, w] : watchers_) {
    index_add_locked(*w, snap);  // its old entries went with devices_
  }
  index_version_ = snap.version();
  index_valid_ = true;
  counters_.rebuilds.fetch_add(1, std::memory_order_relaxed);
}

void WatchHub::index_new_locked(Watcher& w) {
  auto snap = registry_.snapshot();
  if (!index_valid_ || index_version_ != snap->version()) {
    reindex_locked();  // w is in watchers_ already
    return;
  }
  index_add_locked(w, *snap);
  counters_.index_edits.fetch_add(1, std::memory_order_relaxed);
}

void WatchHub::index_add_locked(Watcher& w, const Snapshot& snap) {
  w.forget_index();
  auto b = bind(w.query, snap);
  if (!b || b->matches_nothing) return;
  for (Component c : value_components(*b)) w.index_components.push_back(ipc::to_id(c));
  if (w.index_components.empty()) return;  // reads no value: only registry changes can change its result

  // The blocks first (one per device with a candidate), so nothing moves once entries point in.
  const HomeIndex& home = snap.home();
  const auto devs = snap.devices();
  const std::vector<std::uint64_t>& live = b->include_offline ? home.occupied : home.online;
  const std::uint32_t n = b->whole_home ? home.chunk_count : static_cast<std::uint32_t>(b->scope_chunks.size());
  std::int64_t current_pos = -1;
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint32_t g = b->whole_home ? i : b->scope_chunks[i];
    if (g >= home.chunk_count) continue;
    std::uint64_t m = live[g] & (b->whole_home ? ~std::uint64_t{0} : b->scope_masks[i]);
    for (Component c : b->required) m &= presence_word(home, c, g);
    for (Component c : b->excluded) m &= ~presence_word(home, c, g);
    if (m == 0) continue;
    const std::uint32_t pos = home.chunk_device[g];
    const DeviceRecord& d = devs[pos];
    if (current_pos != pos) {
      // Scope chunks are ascending, and a device's chunks are contiguous: one block per device.
      current_pos = pos;
      w.index_blocks.push_back({.slot = d.id.index,
                                .generation = d.id.generation,
                                .chunk_count = d.chunk_count,
                                .masks = static_cast<std::uint32_t>(w.index_masks.size())});
      w.index_masks.resize(w.index_masks.size() + d.chunk_count, 0);
    }
    const std::uint32_t local = home.chunk_local[g];
    if (local < d.chunk_count) w.index_masks[w.index_blocks.back().masks + local] = m;
  }

  const std::size_t per_block = w.index_components.size() + 1;
  w.index_positions.assign(w.index_blocks.size() * per_block, 0);
  for (std::size_t j = 0; j < w.index_blocks.size(); ++j) {
    const Watcher::IndexBlock& block = w.index_blocks[j];
    const std::uint64_t* masks = w.index_masks.data() + block.masks;
    std::uint32_t* positions = w.index_positions.data() + j * per_block;
    DeviceInterest& di = devices_[block.slot];
    if (di.list_of.empty()) {
      di.generation = block.generation;
      di.chunk_count = block.chunk_count;
      di.list_of.assign(ipc::kMaxComponentId + 1, 0);
    }
    for (std::size_t k = 0; k < w.index_components.size(); ++k) {
      std::uint16_t& li = di.list_of[w.index_components[k]];
      if (li == 0) {
        di.lists.emplace_back();
        li = static_cast<std::uint16_t>(di.lists.size());
      }
      auto& list = di.lists[li - 1u];
      positions[k] = static_cast<std::uint32_t>(list.size());
      list.push_back({&w, masks, &positions[k]});
    }
    positions[per_block - 1] = static_cast<std::uint32_t>(di.any.size());
    di.any.push_back({&w, masks, &positions[per_block - 1]});
  }
}

void WatchHub::index_remove_locked(Watcher& w) noexcept {
  const auto unlink = [](std::vector<DeviceInterest::Entry>& list, std::uint32_t at) {
    list[at] = list.back();
    *list[at].position = at;
    list.pop_back();
  };
  const std::size_t per_block = w.index_components.size() + 1;
  for (std::size_t j = 0; j < w.index_blocks.size(); ++j) {
    DeviceInterest& di = devices_[w.index_blocks[j].slot];
    const std::uint32_t* positions = w.index_positions.data() + j * per_block;
    for (std::size_t k = 0; k < w.index_components.size(); ++k) {
      unlink(di.lists[di.list_of[w.index_components[k]] - 1u], positions[k]);
    }
    unlink(di.any, positions[per_block - 1]);
  }
  if (!w.index_blocks.empty()) counters_.index_edits.fetch_add(1, std::memory_order_relaxed);
  w.forget_index();
}

void WatchHub::trigger(Watcher* w, std::vector<std::shared_ptr<Watcher>>& queued) noexcept {
  // SYNC(watch-dirty): see Watcher::dirty.
  if (!w->dirty.exchange(true, std::memory_order_acq_rel)) queued.push_back(w->shared_from_this());
}

void WatchHub::enqueue(std::vector<std::shared_ptr<Watcher>>& queued) noexcept {
  if (queued.empty()) return;
  counters_.triggers.fetch_add(queued.size(), std::memory_order_relaxed);
  std::lock_guard dl(dirty_mu_);
  for (auto& w : queued) dirty_.push_back(std::move(w));
  queued.clear();
}

// ---- Feeds --------------------------------------------------------------------------------------

void WatchHub::feed_changes(WatchFeed& feed, std::span<const ChangeRecord> records) noexcept {
  std::uint64_t stale = 0, ignored = 0;
  std::vector<std::shared_ptr<Watcher>>& queued = feed.queued_;
  {
    std::shared_lock il(index_mu_);
    const DeviceInterest* di = nullptr;
    if (feed.device_.index < devices_.size() && devices_[feed.device_.index].generation == feed.device_.generation &&
        !devices_[feed.device_.index].list_of.empty()) {
      di = &devices_[feed.device_.index];
    }
    const ipc::TreeReader& reader = *feed.reader_;
    for (const ChangeRecord& r : records) {
      // Copied out of the ring already, but still the provider's word: check everything.
      if (r.entity >= feed.last_seq_.size() || r.component == 0 || r.component > ipc::kMaxComponentId) {
        ++ignored;
        continue;
      }
      std::uint64_t& last = feed.last_seq_[r.entity];
      if (r.seq <= last) {
        ++stale;
        continue;
      }
      // A provider writes the tree before it pushes the record, so a genuine sequence is never
      // ahead of the tree's; one that is would poison the stale check for this entity.
      if (r.seq > reader.change_seq(r.entity)) {
        ++ignored;
        continue;
      }
      last = r.seq;
      if (di == nullptr) continue;
      const std::uint32_t chunk = r.entity / ipc::kTreeChunkSlots;
      if (chunk >= di->chunk_count) continue;
      const std::uint64_t bit = std::uint64_t{1} << (r.entity % ipc::kTreeChunkSlots);
      const std::uint16_t li = di->list_of[r.component];
      if (li == 0) continue;
      for (const auto& e : di->lists[li - 1u]) {
        if ((e.masks[chunk] & bit) != 0) trigger(e.watcher, queued);
      }
    }
    enqueue(queued);
  }
  counters_.records.fetch_add(records.size(), std::memory_order_relaxed);
  if (stale != 0) counters_.stale_records.fetch_add(stale, std::memory_order_relaxed);
  if (ignored != 0) counters_.ignored_records.fetch_add(ignored, std::memory_order_relaxed);
}

void WatchHub::feed_rescan(WatchFeed& feed) noexcept {
  counters_.rescans.fetch_add(1, std::memory_order_relaxed);
  const ipc::TreeReader& reader = *feed.reader_;
  feed.moved_.clear();
  for (ipc::EntityIndex e = 0; e < feed.last_seq_.size(); ++e) {
    // Acquire (SYNC(tree-change)): the evaluation that follows sees at least this write.
    const std::uint64_t now = reader.change_seq(e);
    if (now != feed.last_seq_[e]) {  // a sequence that went backwards is a provider bug: take it
      feed.last_seq_[e] = now;
      feed.moved_.push_back(e);
    }
  }
  if (feed.moved_.empty()) return;
  counters_.rescanned_entities.fetch_add(feed.moved_.size(), std::memory_order_relaxed);
  std::vector<std::shared_ptr<Watcher>>& queued = feed.queued_;
  std::shared_lock il(index_mu_);
  if (feed.device_.index >= devices_.size()) return;
  const DeviceInterest& di = devices_[feed.device_.index];
  if (di.generation != feed.device_.generation) return;
  for (const auto& a : di.any) {
    for (const ipc::EntityIndex e : feed.moved_) {
      const std::uint32_t chunk = e / ipc::kTreeChunkSlots;
      if (chunk < di.chunk_count && (a.masks[chunk] >> (e % ipc::kTreeChunkSlots) & 1U) != 0) {
        trigger(a.watcher, queued);
        break;
      }
    }
  }
  enqueue(queued);
}

}  // namespace floe::core
