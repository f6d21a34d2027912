#include "floe/core/registry.hpp"

#include <algorithm>
#include <bit>
#include <thread>

#include <fmt/format.h>

#include "floe/ipc/platform.hpp"

namespace floe::core {

// ---- Epoch-based reclamation --------------------------------------------------------------------
//
// One process-wide epoch and a fixed table of per-thread slots, shared by every Registry (a reader
// of one registry only delays reclamation in another, never breaks it).
//
// Reader (snapshot()):           e = epoch.load(); slot = e; p = current.load()    (all seq_cst)
// Reader (guard destroyed):      slot = 0                                          (release)
// Writer (publish):              current = new; tag = epoch.fetch_add(1); retire(old, tag)
// Writer (collect):              free every retired snapshot with tag < min(nonzero slots)
//
// Why a retired snapshot S (tag T) is never freed under a reader: a reader that loaded
// current == S did so before the writer's store of S's successor in the single seq_cst order, so
// its slot store and its epoch load precede the writer's fetch_add (which returned T) and its
// scan of the slots. The scan therefore sees the slot still holding e <= T (the reader has not
// unpinned), and S is kept. A reader whose epoch load returned T + 1 or more loads current after
// S was replaced and cannot see S. Unpinning is a release store; the scan's seq_cst load acquires
// it, so the reader's accesses to S happen before S is deleted. Nested guards on one thread keep
// the outer (older, more conservative) pin.
namespace {

constexpr std::size_t kEpochSlots = 256;

struct alignas(kCacheLine) EpochSlot {
  std::atomic<std::uint64_t> pinned{0};  // 0: not pinned
  std::atomic<bool> claimed{false};
};

// Static storage, constant-initialised, trivially destructible: usable from any thread_local
// destructor at any point of process exit.
constinit EpochSlot g_slots[kEpochSlots];
constinit std::atomic<std::uint64_t> g_epoch{1};
constinit std::atomic<std::int64_t> g_live_snapshots{0};
constinit std::atomic<std::uint64_t> g_snapshot_serial{0};  // Snapshot::serial(); 0 names none

struct ThreadEpoch {
  int slot = -1;
  unsigned depth = 0;
  ~ThreadEpoch() {
    if (slot < 0) return;
    g_slots[slot].pinned.store(0, std::memory_order_release);
    g_slots[slot].claimed.store(false, std::memory_order_release);
  }
};
thread_local ThreadEpoch t_epoch;

void claim_slot(ThreadEpoch& t) noexcept {
  // More than kEpochSlots threads holding snapshots at once is a deployment error; rather than
  // fail, a late thread waits for a slot (threads release theirs when they exit).
  for (;;) {
    for (std::size_t i = 0; i < kEpochSlots; ++i) {
      bool expected = false;
      if (!g_slots[i].claimed.load(std::memory_order_relaxed) &&
          g_slots[i].claimed.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
        t.slot = static_cast<int>(i);
        return;
      }
    }
    std::this_thread::yield();
  }
}

void pin() noexcept {
  ThreadEpoch& t = t_epoch;
  if (t.slot < 0) claim_slot(t);
  if (t.depth++ == 0) {
    const std::uint64_t e = g_epoch.load(std::memory_order_seq_cst);
    g_slots[t.slot].pinned.store(e, std::memory_order_seq_cst);
  }
}

void unpin() noexcept {
  ThreadEpoch& t = t_epoch;
  FLOE_ASSERT(t.slot >= 0 && t.depth > 0);
  if (--t.depth == 0) g_slots[t.slot].pinned.store(0, std::memory_order_release);
}

std::uint64_t oldest_pin() noexcept {
  std::uint64_t m = ~std::uint64_t{0};
  for (const EpochSlot& s : g_slots) {
    const std::uint64_t p = s.pinned.load(std::memory_order_seq_cst);
    if (p != 0 && p < m) m = p;
  }
  return m;
}

bool valid_entity_char(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
}

template <typename Id>
std::string id_text(Id id) {
  return fmt::format("{}#{}", id.index, id.generation);
}

}  // namespace

// ---- Snapshot -----------------------------------------------------------------------------------

Snapshot::Snapshot() { g_live_snapshots.fetch_add(1, std::memory_order_relaxed); }
Snapshot::~Snapshot() { g_live_snapshots.fetch_sub(1, std::memory_order_relaxed); }

std::int64_t Snapshot::live_count() noexcept { return g_live_snapshots.load(std::memory_order_relaxed); }

std::int64_t Snapshot::position(DeviceId id) const noexcept {
  if (id.index >= device_pos_.size()) return -1;
  const std::int32_t pos = device_pos_[id.index];
  if (pos < 0 || devices_[static_cast<std::size_t>(pos)].id != id) return -1;
  return pos;
}

const DeviceRecord* Snapshot::device(DeviceId id) const noexcept {
  const std::int64_t pos = position(id);
  return pos < 0 ? nullptr : &devices_[static_cast<std::size_t>(pos)];
}

namespace {

/// The value of `name` in a name index sorted by name, or nullptr.
template <typename T>
const T* find_name(const std::vector<std::pair<std::string_view, T>>& index, std::string_view name) noexcept {
  const auto it = std::lower_bound(index.begin(), index.end(), name,
                                   [](const auto& entry, std::string_view n) { return entry.first < n; });
  return it != index.end() && it->first == name ? &it->second : nullptr;
}

}  // namespace

const DeviceRecord* Snapshot::device(std::string_view name) const noexcept {
  const std::uint32_t* pos = find_name(device_by_name_, name);
  return pos == nullptr ? nullptr : &devices_[*pos];
}

std::optional<EntityRef> Snapshot::entity(std::string_view entity_id) const noexcept {
  const EntityRef* ref = find_name(entities_, entity_id);
  if (ref == nullptr) return std::nullopt;
  return *ref;
}

std::string_view Snapshot::entity_id(const EntityRef& e) const noexcept {
  const DeviceRecord* d = device(e.device);
  if (d == nullptr || e.entity >= d->entity_count()) return {};
  return d->data->entity_ids[e.entity];
}

std::string_view Snapshot::entity_name(const EntityRef& e) const noexcept {
  const DeviceRecord* d = device(e.device);
  if (d == nullptr || e.entity >= d->entity_count()) return {};
  return d->data->entity_names[e.entity];
}

const GroupRecord* Snapshot::group(GroupId id) const noexcept {
  if (id.index >= group_pos_.size()) return nullptr;
  const std::int32_t pos = group_pos_[id.index];
  if (pos < 0 || groups_[static_cast<std::size_t>(pos)].id != id) return nullptr;
  return &groups_[static_cast<std::size_t>(pos)];
}

const GroupRecord* Snapshot::group(std::string_view name) const noexcept {
  const std::uint32_t* pos = find_name(group_by_name_, name);
  return pos == nullptr ? nullptr : &groups_[*pos];
}

std::span<const GroupId> Snapshot::groups_of(DeviceId id) const noexcept {
  const DeviceRecord* d = device(id);
  return d == nullptr ? std::span<const GroupId>{} : std::span<const GroupId>(d->groups);
}

std::span<const DeviceId> Snapshot::devices_of(GroupId id) const noexcept {
  const GroupRecord* g = group(id);
  return g == nullptr ? std::span<const DeviceId>{} : std::span<const DeviceId>(g->devices);
}

// ---- SnapshotGuard ------------------------------------------------------------------------------

SnapshotGuard::~SnapshotGuard() {
  if (snap_ != nullptr) unpin();
}

// ---- Registry -----------------------------------------------------------------------------------

Registry::Registry() {
  std::lock_guard lock(writer_);
  dirty_ = true;
  publish_if_dirty();
}

Registry::~Registry() {
  std::lock_guard lock(writer_);
  for (const Retired& r : retired_) delete r.snapshot;
  retired_.clear();
  delete current_.exchange(nullptr, std::memory_order_acq_rel);
}

SnapshotGuard Registry::snapshot() const noexcept {
  pin();
  // SYNC(snapshot-publish): pairs with the writer's store in publish_if_dirty.
  return SnapshotGuard(current_.load(std::memory_order_seq_cst));
}

bool Registry::valid_entity_id(std::string_view id) noexcept {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), valid_entity_char);
}

Registry::DeviceSlot* Registry::live_device(DeviceId id) noexcept {
  if (id.index >= devices_.size()) return nullptr;
  DeviceSlot& s = devices_[id.index];
  return s.live && s.generation == id.generation ? &s : nullptr;
}

Registry::GroupSlot* Registry::live_group(GroupId id) noexcept {
  if (id.index >= groups_.size()) return nullptr;
  GroupSlot& s = groups_[id.index];
  return s.live && s.generation == id.generation ? &s : nullptr;
}

void Registry::defer_publication() {
  std::lock_guard lock(writer_);
  deferring_ = std::this_thread::get_id();
}

bool Registry::publish_deferred() {
  std::lock_guard lock(writer_);
  deferring_ = {};
  return publish_if_dirty();
}

bool Registry::publish_if_dirty() {
  if (!dirty_ || deferring_ == std::this_thread::get_id()) return false;
  dirty_ = false;
  ++version_;
  std::unique_ptr<Snapshot> next = build();
  // SYNC(snapshot-publish): the snapshot is complete before this store; readers load it seq_cst.
  const Snapshot* old = current_.exchange(next.release(), std::memory_order_seq_cst);
  if (old != nullptr) {
    const std::uint64_t tag = g_epoch.fetch_add(1, std::memory_order_seq_cst);
    retired_.push_back({old, tag});
  }
  collect_locked();
  return true;
}

std::size_t Registry::collect() {
  std::lock_guard lock(writer_);
  return collect_locked();
}

std::size_t Registry::collect_locked() {
  if (retired_.empty()) return 0;
  const std::uint64_t oldest = oldest_pin();
  std::erase_if(retired_, [oldest](const Retired& r) {
    if (r.epoch >= oldest) return false;
    delete r.snapshot;
    return true;
  });
  return retired_.size();
}

namespace {

/// ORs `bits` (64 slots starting at home slot `slot`) into the packed words `words`.
void splice(std::vector<std::uint64_t>& words, std::uint64_t slot, std::uint64_t bits) noexcept {
  const std::size_t w = slot / 64;
  const unsigned shift = static_cast<unsigned>(slot % 64);
  words[w] |= bits << shift;
  // The high part is non-zero only for real entities (the reader checked occupied against the
  // entity count, and presence against occupied), whose slots exist; the bound check is defence.
  if (shift != 0 && (bits >> (64 - shift)) != 0 && w + 1 < words.size()) words[w + 1] |= bits >> (64 - shift);
}

/// The packed slot index (HomeSlots) from the devices' validated local indexes.
void build_slots(Snapshot& s, HomeIndex& h, const std::array<bool, ipc::kMaxComponentId + 1>& used,
                 const std::array<bool, ipc::kMaxComponentId + 1>& valued, std::uint32_t slot_count) {
  HomeSlots& hs = h.slots;
  hs.slot_count = slot_count;
  hs.word_count = (slot_count + 63) / 64;
  const std::size_t padded = std::size_t{hs.word_count} * 64;
  hs.occupied.assign(hs.word_count, 0);
  hs.online.assign(hs.word_count, 0);
  hs.slot_device.assign(slot_count, 0);
  hs.slot_entity.assign(slot_count, 0);
  for (std::size_t id = 0; id < used.size(); ++id) {
    if (!used[id]) continue;
    hs.columns[id].presence.assign(hs.word_count, 0);
    if (valued[id]) hs.columns[id].values.assign(padded, nullptr);
  }
  for (std::uint32_t pos = 0; pos < s.devices().size(); ++pos) {
    const DeviceRecord& d = s.devices()[pos];
    for (std::uint32_t e = 0; e < d.entity_count(); ++e) {
      hs.slot_device[d.first_slot + e] = pos;
      hs.slot_entity[d.first_slot + e] = e;
    }
    const auto views = d.reader().chunks();
    for (std::uint32_t local = 0; local < views.size(); ++local) {
      const std::uint64_t base = std::uint64_t{d.first_slot} + std::uint64_t{local} * ipc::kTreeChunkSlots;
      splice(hs.occupied, base, views[local].occupied);
      if (d.online) splice(hs.online, base, views[local].occupied);
      for (const ipc::TreeColumnView& col : views[local].columns) {
        if (ipc::find_component(col.component) == nullptr) continue;
        SlotColumn& sc = hs.columns[ipc::to_id(col.component)];
        splice(sc.presence, base, col.presence);
        if (sc.values.empty() || col.values == nullptr) continue;
        for (std::uint64_t m = col.presence; m != 0; m &= m - 1) {
          const int bit = std::countr_zero(m);
          const std::uint64_t at = base + static_cast<std::uint64_t>(bit);
          if (at < sc.values.size()) sc.values[at] = &col.values[bit];
        }
      }
    }
  }
}

}  // namespace

std::unique_ptr<Snapshot> Registry::build() const {
  std::unique_ptr<Snapshot> s(new Snapshot());
  s->version_ = version_;
  // Only uniqueness matters (no ordering with other memory): relaxed.
  s->serial_ = g_snapshot_serial.fetch_add(1, std::memory_order_relaxed) + 1;

  // Devices, in slot order, and their place in the home index.
  s->device_pos_.assign(devices_.size(), -1);
  s->devices_.reserve(devices_.size() - free_devices_.size());
  std::uint32_t chunks = 0;
  std::uint32_t slots = 0;
  for (std::uint32_t i = 0; i < devices_.size(); ++i) {
    const DeviceSlot& slot = devices_[i];
    if (!slot.live) continue;
    DeviceRecord d;
    d.id = {i, slot.generation};
    d.name = slot.name;
    d.online = slot.online;
    d.groups.reserve(slot.groups.size());
    for (std::uint32_t g : slot.groups) d.groups.push_back({g, groups_[g].generation});
    d.first_chunk = chunks;
    d.chunk_count = static_cast<std::uint32_t>(slot.data->reader->chunks().size());
    d.first_slot = slots;
    d.data = slot.data;
    chunks += d.chunk_count;
    slots += d.entity_count();  // <= 4096 per device; a home of 2^32 entities is out of reach
    s->device_pos_[i] = static_cast<std::int32_t>(s->devices_.size());
    s->devices_.push_back(std::move(d));
  }
  // The name indexes, in the writer's (sorted) order, viewing the snapshot's own copies: the
  // records' names, and the entity ids in the DeviceData each record shares.
  s->device_by_name_.reserve(device_names_.size());
  for (const auto& [name, index] : device_names_) {
    const auto pos = static_cast<std::uint32_t>(s->device_pos_[index]);
    s->device_by_name_.emplace_back(s->devices_[pos].name, pos);
  }
  s->entities_.reserve(entity_ids_.size());
  for (const auto& [id, ref] : entity_ids_) {
    const DeviceRecord& d = s->devices_[static_cast<std::size_t>(s->device_pos_[ref.device.index])];
    s->entities_.emplace_back(d.data->entity_ids[ref.entity], ref);
  }

  // The flattened home index, copied from each reader's validated local index.
  HomeIndex& h = s->home_;
  h.chunk_count = chunks;
  h.occupied.resize(chunks);
  h.online.resize(chunks);
  h.chunk_device.resize(chunks);
  h.chunk_local.resize(chunks);
  std::array<bool, ipc::kMaxComponentId + 1> used{};
  std::array<bool, ipc::kMaxComponentId + 1> valued{};
  for (const DeviceRecord& d : s->devices_) {
    for (const ipc::TreeChunkView& c : d.reader().chunks()) {
      for (const ipc::TreeColumnView& col : c.columns) {
        const std::uint16_t id = ipc::to_id(col.component);
        if (ipc::find_component(col.component) == nullptr) continue;  // a newer provider's kind
        used[id] = true;
        valued[id] = valued[id] || col.values != nullptr;
      }
    }
  }
  for (std::size_t id = 0; id < used.size(); ++id) {
    if (!used[id]) continue;
    h.columns[id].presence.assign(chunks, 0);
    if (valued[id]) h.columns[id].values.assign(chunks, nullptr);
  }
  for (std::uint32_t pos = 0; pos < s->devices_.size(); ++pos) {
    const DeviceRecord& d = s->devices_[pos];
    const auto views = d.reader().chunks();
    for (std::uint32_t local = 0; local < views.size(); ++local) {
      const std::uint32_t g = d.first_chunk + local;
      h.occupied[g] = views[local].occupied;
      h.online[g] = d.online ? views[local].occupied : 0;
      h.chunk_device[g] = pos;
      h.chunk_local[g] = local;
      for (const ipc::TreeColumnView& col : views[local].columns) {
        if (ipc::find_component(col.component) == nullptr) continue;
        HomeColumn& hc = h.columns[ipc::to_id(col.component)];
        hc.presence[g] = col.presence;
        hc.population += static_cast<std::uint64_t>(std::popcount(col.presence));
        if (!hc.values.empty()) hc.values[g] = col.values;
      }
    }
  }

  build_slots(*s, h, used, valued, slots);

  // Groups.
  s->group_pos_.assign(groups_.size(), -1);
  for (std::uint32_t i = 0; i < groups_.size(); ++i) {
    const GroupSlot& slot = groups_[i];
    if (!slot.live) continue;
    GroupRecord g;
    g.id = {i, slot.generation};
    g.name = slot.name;
    for (std::uint32_t dev : slot.devices) {
      g.devices.push_back({dev, devices_[dev].generation});
      const DeviceRecord& d = s->devices_[static_cast<std::size_t>(s->device_pos_[dev])];
      for (std::uint32_t c = 0; c < d.chunk_count; ++c) g.chunks.push_back(d.first_chunk + c);
    }
    // Slot order of devices is chunk order, so g.chunks is already ascending.
    s->group_pos_[i] = static_cast<std::int32_t>(s->groups_.size());
    s->groups_.push_back(std::move(g));
  }
  s->group_by_name_.reserve(group_names_.size());
  for (const auto& [name, index] : group_names_) {
    const auto pos = static_cast<std::uint32_t>(s->group_pos_[index]);
    s->group_by_name_.emplace_back(s->groups_[pos].name, pos);
  }
  return s;
}

// ---- Editor -------------------------------------------------------------------------------------

Result<DeviceId> Registry::Editor::add_device(DeviceSpec spec) {
  Registry& r = r_;
  constexpr std::string_view op = "registry.add_device";
  if (spec.name.empty()) return logic_error(op, "a device needs a name");
  if (r.device_names_.contains(spec.name)) {
    return logic_error(op, fmt::format("a device named '{}' already exists", spec.name));
  }
  if (!spec.reader) return logic_error(op, fmt::format("device '{}': no tree reader", spec.name));
  if (spec.entity_ids.size() != spec.reader->entity_count()) {
    return logic_error(op, fmt::format("device '{}': {} entity ids for {} entities in its tree", spec.name,
                                       spec.entity_ids.size(), spec.reader->entity_count()));
  }
  if (!spec.entity_names.empty() && spec.entity_names.size() != spec.entity_ids.size()) {
    return logic_error(op, fmt::format("device '{}': {} display names for {} entities", spec.name,
                                       spec.entity_names.size(), spec.entity_ids.size()));
  }
  std::set<std::string_view> seen;
  for (const std::string& id : spec.entity_ids) {
    if (!valid_entity_id(id)) {
      return logic_error(op, fmt::format("device '{}': entity id '{}' is not 1..64 characters of [a-z0-9_.-]",
                                         spec.name, id));
    }
    if (r.entity_ids_.contains(id) || !seen.insert(id).second) {
      return logic_error(op, fmt::format("device '{}': entity id '{}' is already taken", spec.name, id));
    }
  }

  std::uint32_t index;
  if (!r.free_devices_.empty()) {
    index = r.free_devices_.back();
    r.free_devices_.pop_back();
  } else {
    index = static_cast<std::uint32_t>(r.devices_.size());
    r.devices_.emplace_back();
  }
  DeviceSlot& slot = r.devices_[index];
  slot.generation += 1;  // generation 0 is never live, so DeviceId{} names nothing
  slot.live = true;
  slot.name = spec.name;
  slot.online = spec.online;
  slot.groups.clear();
  auto data = std::make_shared<DeviceData>();
  data->provider = std::move(spec.provider);
  data->entity_names = spec.entity_names.empty() ? spec.entity_ids : std::move(spec.entity_names);
  data->entity_ids = std::move(spec.entity_ids);
  data->reader = std::move(spec.reader);
  data->keepalive = std::move(spec.keepalive);
  const DeviceId id{index, slot.generation};
  for (std::uint32_t e = 0; e < data->entity_ids.size(); ++e) r.entity_ids_.emplace(data->entity_ids[e], EntityRef{id, e});
  slot.data = std::move(data);
  r.device_names_.emplace(slot.name, index);
  r.dirty_ = true;
  return id;
}

Status Registry::Editor::remove_device(DeviceId id) {
  Registry& r = r_;
  DeviceSlot* slot = r.live_device(id);
  if (slot == nullptr) return logic_error("registry.remove_device", fmt::format("no device {}", id_text(id)));
  for (const std::string& e : slot->data->entity_ids) r.entity_ids_.erase(e);
  for (std::uint32_t g : slot->groups) r.groups_[g].devices.erase(id.index);
  r.device_names_.erase(slot->name);
  slot->live = false;
  slot->groups.clear();
  slot->data.reset();  // snapshots that still show the device hold their own reference
  slot->name.clear();
  r.free_devices_.push_back(id.index);
  r.dirty_ = true;
  return {};
}

Status Registry::Editor::rename_device(DeviceId id, std::string name) {
  Registry& r = r_;
  constexpr std::string_view op = "registry.rename_device";
  DeviceSlot* slot = r.live_device(id);
  if (slot == nullptr) return logic_error(op, fmt::format("no device {}", id_text(id)));
  if (name.empty()) return logic_error(op, "a device needs a name");
  if (name == slot->name) return {};
  if (r.device_names_.contains(name)) return logic_error(op, fmt::format("a device named '{}' already exists", name));
  r.device_names_.erase(slot->name);
  r.device_names_.emplace(name, id.index);
  slot->name = std::move(name);
  r.dirty_ = true;
  return {};
}

Status Registry::Editor::set_online(DeviceId id, bool online) {
  DeviceSlot* slot = r_.live_device(id);
  if (slot == nullptr) return logic_error("registry.set_online", fmt::format("no device {}", id_text(id)));
  if (slot->online != online) {
    slot->online = online;
    r_.dirty_ = true;
  }
  return {};
}

std::optional<GroupId> Registry::Editor::find_group(std::string_view name) const {
  const auto it = r_.group_names_.find(name);
  if (it == r_.group_names_.end()) return std::nullopt;
  return GroupId{it->second, r_.groups_[it->second].generation};
}

std::size_t Registry::Editor::member_count(GroupId id) const {
  const GroupSlot* slot = r_.live_group(id);
  return slot == nullptr ? 0 : slot->devices.size();
}

Result<GroupId> Registry::Editor::create_group(std::string name) {
  Registry& r = r_;
  constexpr std::string_view op = "registry.create_group";
  if (name.empty()) return logic_error(op, "a group needs a name");
  if (r.group_names_.contains(name)) return logic_error(op, fmt::format("a group named '{}' already exists", name));
  std::uint32_t index;
  if (!r.free_groups_.empty()) {
    index = r.free_groups_.back();
    r.free_groups_.pop_back();
  } else {
    index = static_cast<std::uint32_t>(r.groups_.size());
    r.groups_.emplace_back();
  }
  GroupSlot& slot = r.groups_[index];
  slot.generation += 1;
  slot.live = true;
  slot.name = std::move(name);
  slot.devices.clear();
  r.group_names_.emplace(slot.name, index);
  r.dirty_ = true;
  return GroupId{index, slot.generation};
}

Status Registry::Editor::delete_group(GroupId id) {
  Registry& r = r_;
  GroupSlot* slot = r.live_group(id);
  if (slot == nullptr) return logic_error("registry.delete_group", fmt::format("no group {}", id_text(id)));
  for (std::uint32_t d : slot->devices) r.devices_[d].groups.erase(id.index);
  r.group_names_.erase(slot->name);
  slot->live = false;
  slot->devices.clear();
  slot->name.clear();
  r.free_groups_.push_back(id.index);
  r.dirty_ = true;
  return {};
}

Status Registry::Editor::rename_group(GroupId id, std::string name) {
  Registry& r = r_;
  constexpr std::string_view op = "registry.rename_group";
  GroupSlot* slot = r.live_group(id);
  if (slot == nullptr) return logic_error(op, fmt::format("no group {}", id_text(id)));
  if (name.empty()) return logic_error(op, "a group needs a name");
  if (name == slot->name) return {};
  if (r.group_names_.contains(name)) return logic_error(op, fmt::format("a group named '{}' already exists", name));
  r.group_names_.erase(slot->name);
  r.group_names_.emplace(name, id.index);
  slot->name = std::move(name);
  r.dirty_ = true;
  return {};
}

Status Registry::Editor::add_to_group(GroupId group, DeviceId device) {
  Registry& r = r_;
  constexpr std::string_view op = "registry.add_to_group";
  GroupSlot* g = r.live_group(group);
  if (g == nullptr) return logic_error(op, fmt::format("no group {}", id_text(group)));
  DeviceSlot* d = r.live_device(device);
  if (d == nullptr) return logic_error(op, fmt::format("no device {}", id_text(device)));
  if (g->devices.insert(device.index).second) {
    d->groups.insert(group.index);
    r.dirty_ = true;
  }
  return {};
}

Status Registry::Editor::remove_from_group(GroupId group, DeviceId device) {
  Registry& r = r_;
  constexpr std::string_view op = "registry.remove_from_group";
  GroupSlot* g = r.live_group(group);
  if (g == nullptr) return logic_error(op, fmt::format("no group {}", id_text(group)));
  DeviceSlot* d = r.live_device(device);
  if (d == nullptr) return logic_error(op, fmt::format("no device {}", id_text(device)));
  if (g->devices.erase(device.index) == 0) {
    return logic_error(op, fmt::format("device '{}' is not in group '{}'", d->name, g->name));
  }
  d->groups.erase(group.index);
  r.dirty_ = true;
  return {};
}

// ---- One-change shortcuts -----------------------------------------------------------------------

Result<DeviceId> Registry::add_device(DeviceSpec spec) {
  return edit([&](Editor& e) { return e.add_device(std::move(spec)); });
}
Status Registry::remove_device(DeviceId id) {
  return edit([&](Editor& e) { return e.remove_device(id); });
}
Status Registry::rename_device(DeviceId id, std::string name) {
  return edit([&](Editor& e) { return e.rename_device(id, std::move(name)); });
}
Status Registry::set_online(DeviceId id, bool online) {
  return edit([&](Editor& e) { return e.set_online(id, online); });
}
Result<GroupId> Registry::create_group(std::string name) {
  return edit([&](Editor& e) { return e.create_group(std::move(name)); });
}
Status Registry::delete_group(GroupId id) {
  return edit([&](Editor& e) { return e.delete_group(id); });
}
Status Registry::rename_group(GroupId id, std::string name) {
  return edit([&](Editor& e) { return e.rename_group(id, std::move(name)); });
}
Status Registry::add_to_group(GroupId group, DeviceId device) {
  return edit([&](Editor& e) { return e.add_to_group(group, device); });
}
Status Registry::remove_from_group(GroupId group, DeviceId device) {
  return edit([&](Editor& e) { return e.remove_from_group(group, device); });
}

}  // namespace floe::core
