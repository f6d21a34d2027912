// The core's metadata of the distributed device tree: devices, entity ids, groups, and the
// flattened home index the query engine scans.
//
// Readers never take a lock. Every change builds a new immutable Snapshot and publishes it with
// one atomic pointer store; readers pin the process-wide epoch in a per-thread slot (two atomic
// stores, no read-modify-write, no lock) and read the snapshot that was current when they pinned.
// The writer retires replaced snapshots and frees each one once no reader slot pins an epoch at or
// before its retirement (epoch-based reclamation; registry.cpp has the ordering argument). Writers are
// rare and serialise on a mutex among themselves.
//
// Ids are generational: DeviceId and GroupId carry a slot index and the slot's generation, so an
// id kept after its device was removed never reaches a device that later reuses the slot.
//
// Trust: presence words and value-column addresses are copied into the snapshot from the
// TreeReader's validated, process-local index when the device is added; nothing here is re-read
// from the provider-writable region.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "floe/ipc/components.hpp"
#include "floe/ipc/result.hpp"
#include "floe/ipc/tree.hpp"

namespace floe::core {

/// A device: slot index + generation. Default-constructed ids (generation 0) name nothing.
struct DeviceId {
  std::uint32_t index = 0;
  std::uint32_t generation = 0;
  [[nodiscard]] bool valid() const noexcept { return generation != 0; }
  friend bool operator==(DeviceId, DeviceId) noexcept = default;
};
/// A group: slot index + generation, like DeviceId.
struct GroupId {
  std::uint32_t index = 0;
  std::uint32_t generation = 0;
  [[nodiscard]] bool valid() const noexcept { return generation != 0; }
  friend bool operator==(GroupId, GroupId) noexcept = default;
};

/// One entity of the home: its device and its index in the device's tree.
struct EntityRef {
  DeviceId device;
  ipc::EntityIndex entity = 0;
  friend bool operator==(const EntityRef&, const EntityRef&) noexcept = default;
};

/// What add_device needs.
struct DeviceSpec {
  std::string name;      // unique in the home, non-empty
  std::string provider;  // the provider that owns it
  /// One id per entity of the tree (index = entity index), unique in the home, 1..64 characters of
  /// [a-z0-9_.-] (no glob characters).
  std::vector<std::string> entity_ids;
  /// Display names, one per entity, or empty (then the ids are shown).
  std::vector<std::string> entity_names;
  /// The device's tree, attached by the caller. Shared: snapshots that still show the device keep
  /// it (and `keepalive`) alive after remove_device.
  std::shared_ptr<const ipc::TreeReader> reader;
  /// Whatever owns the memory `reader` reads (normally the device's ipc::Region).
  std::shared_ptr<const void> keepalive;
  bool online = true;
};

/// The parts of a device that never change after add_device (shared by every snapshot).
struct DeviceData {
  std::string provider;
  std::vector<std::string> entity_ids;
  std::vector<std::string> entity_names;  // same size as entity_ids (ids copied where none given)
  std::shared_ptr<const ipc::TreeReader> reader;
  std::shared_ptr<const void> keepalive;
};

/// A device as one snapshot sees it.
struct DeviceRecord {
  DeviceId id;
  std::string name;
  bool online = true;
  std::vector<GroupId> groups;      // sorted by index
  std::uint32_t first_chunk = 0;    // its chunk 0 in this snapshot's HomeIndex
  std::uint32_t chunk_count = 0;
  std::uint32_t first_slot = 0;     // its entity 0 in this snapshot's HomeSlots (entity e: first_slot + e)
  std::shared_ptr<const DeviceData> data;

  [[nodiscard]] const ipc::TreeReader& reader() const noexcept { return *data->reader; }
  [[nodiscard]] std::uint32_t entity_count() const noexcept {
    return static_cast<std::uint32_t>(data->entity_ids.size());
  }
};

struct GroupRecord {
  GroupId id;
  std::string name;
  std::vector<DeviceId> devices;     // sorted by index
  std::vector<std::uint32_t> chunks; // global chunk indices of the members' chunks, ascending
};

/// One component kind over every chunk of the home (global chunk index g).
struct HomeColumn {
  /// presence[g]: which slots of chunk g have the kind. Empty when no entity of the home has it.
  std::vector<std::uint64_t> presence;
  /// values[g]: chunk g's value column (64 words), or nullptr (absent, marker or big kind).
  /// Empty for marker and big kinds.
  std::vector<const std::atomic<std::uint64_t>*> values;
  std::uint64_t population = 0;  // set bits over the whole home
};

/// One component kind over every home slot (see HomeSlots).
struct SlotColumn {
  /// presence[w]: which of home slots 64w..64w+63 have the kind. Empty when no entity has it.
  std::vector<std::uint64_t> presence;
  /// values[s]: home slot s's value word in its device's tree, or nullptr (absent). word_count x 64
  /// entries; empty for marker and big kinds.
  std::vector<const std::atomic<std::uint64_t>*> values;
};

/// The packed home the query engine scans: every entity of the home has a home slot, device after
/// device in device slot order with no gaps (device d's entity e is slot d.first_slot + e), so
/// consecutive devices share 64-slot words — at 1.5 entities per device, 100 devices fill 3 words
/// where the per-device chunks fill 100. Values stay where the providers write them; a slot's value
/// word is reached through `values[s]` (one pointer load per match).
struct HomeSlots {
  std::uint32_t slot_count = 0;  // entities in the home
  std::uint32_t word_count = 0;  // ceil(slot_count / 64)
  std::vector<std::uint64_t> occupied;      // [w] slots that hold an entity
  std::vector<std::uint64_t> online;        // [w] the occupied slots of online devices
  std::vector<std::uint32_t> slot_device;   // [s] position of the entity's device in Snapshot::devices()
  std::vector<ipc::EntityIndex> slot_entity;  // [s] the entity's index in its device's tree
  std::array<SlotColumn, ipc::kMaxComponentId + 1> columns;  // by component id (known kinds)

  [[nodiscard]] const SlotColumn& column(ipc::Component c) const noexcept { return columns[ipc::to_id(c)]; }
};

/// The flattened home: dense arrays over every chunk of every device, in device slot order (the
/// devices' own 64-slot chunks, one chunk at least per device; watchers index by chunk), plus the
/// packed slot numbering the query engine scans (`slots`).
struct HomeIndex {
  std::uint32_t chunk_count = 0;
  std::vector<std::uint64_t> occupied;      // [g] slots that hold an entity
  std::vector<std::uint64_t> online;        // [g] occupied[g] if the device is online, else 0
  std::vector<std::uint32_t> chunk_device;  // [g] position of the device in Snapshot::devices()
  std::vector<std::uint32_t> chunk_local;   // [g] the chunk's number within its device
  std::array<HomeColumn, ipc::kMaxComponentId + 1> columns;  // by component id (known kinds)
  HomeSlots slots;

  [[nodiscard]] const HomeColumn& column(ipc::Component c) const noexcept { return columns[ipc::to_id(c)]; }
};

/// An immutable view of the whole registry. Obtained through Registry::snapshot(); valid while
/// the SnapshotGuard lives. All methods are const and thread-safe.
class Snapshot {
 public:
  Snapshot(const Snapshot&) = delete;
  Snapshot& operator=(const Snapshot&) = delete;
  ~Snapshot();

  /// Increases with every published change of this registry.
  [[nodiscard]] std::uint64_t version() const noexcept { return version_; }
  /// Process-wide: every Snapshot object ever built, of any registry, has its own serial (from one
  /// counter that only grows), so a serial names one snapshot even after its memory is reused.
  [[nodiscard]] std::uint64_t serial() const noexcept { return serial_; }

  /// Live devices, ascending slot index.
  [[nodiscard]] std::span<const DeviceRecord> devices() const noexcept { return devices_; }
  /// nullptr if the id is stale (removed, or its slot reused) or unknown.
  [[nodiscard]] const DeviceRecord* device(DeviceId id) const noexcept;
  [[nodiscard]] const DeviceRecord* device(std::string_view name) const noexcept;
  /// Position of a device in devices(), or -1.
  [[nodiscard]] std::int64_t position(DeviceId id) const noexcept;

  [[nodiscard]] std::optional<EntityRef> entity(std::string_view entity_id) const noexcept;
  /// The id / display name of an entity; "" if the reference is stale.
  [[nodiscard]] std::string_view entity_id(const EntityRef& e) const noexcept;
  [[nodiscard]] std::string_view entity_name(const EntityRef& e) const noexcept;
  [[nodiscard]] std::size_t entity_count() const noexcept { return entities_.size(); }

  /// Live groups, ascending slot index.
  [[nodiscard]] std::span<const GroupRecord> groups() const noexcept { return groups_; }
  [[nodiscard]] const GroupRecord* group(GroupId id) const noexcept;
  [[nodiscard]] const GroupRecord* group(std::string_view name) const noexcept;
  /// The groups a device is in (empty if the id is stale).
  [[nodiscard]] std::span<const GroupId> groups_of(DeviceId id) const noexcept;
  /// The members of a group (empty if the id is stale).
  [[nodiscard]] std::span<const DeviceId> devices_of(GroupId id) const noexcept;

  [[nodiscard]] const HomeIndex& home() const noexcept { return home_; }

  /// Snapshots allocated and not yet freed, process-wide (a debug counter for reclamation tests).
  [[nodiscard]] static std::int64_t live_count() noexcept;

 private:
  friend class Registry;
  Snapshot();

  std::uint64_t version_ = 0;
  std::uint64_t serial_ = 0;
  std::vector<DeviceRecord> devices_;
  std::vector<std::int32_t> device_pos_;  // slot index -> position in devices_, -1
  // The name indexes are sorted vectors of views into memory the snapshot keeps alive (its own
  // records' names, its devices' DeviceData): building one copies no string and allocates once,
  // where a std::map allocated and copied a node per name on every publish (a provider declaring
  // 1,000 devices publishes 2,000 snapshots).
  std::vector<std::pair<std::string_view, std::uint32_t>> device_by_name_;  // position in devices_
  std::vector<std::pair<std::string_view, EntityRef>> entities_;
  std::vector<GroupRecord> groups_;
  std::vector<std::int32_t> group_pos_;
  std::vector<std::pair<std::string_view, std::uint32_t>> group_by_name_;  // position in groups_
  HomeIndex home_;
};

/// Pins the epoch while alive, so the snapshot it points to is not freed. Destroy it on the thread
/// that created it (the pin lives in that thread's slot); do not keep it for long: a held guard
/// delays the reclamation of every snapshot retired after it was taken.
class SnapshotGuard {
 public:
  SnapshotGuard(SnapshotGuard&& o) noexcept : snap_(std::exchange(o.snap_, nullptr)) {}
  SnapshotGuard& operator=(SnapshotGuard&&) = delete;
  SnapshotGuard(const SnapshotGuard&) = delete;
  SnapshotGuard& operator=(const SnapshotGuard&) = delete;
  ~SnapshotGuard();

  [[nodiscard]] const Snapshot& operator*() const noexcept { return *snap_; }
  [[nodiscard]] const Snapshot* operator->() const noexcept { return snap_; }
  [[nodiscard]] const Snapshot& get() const noexcept { return *snap_; }

 private:
  friend class Registry;
  explicit SnapshotGuard(const Snapshot* s) noexcept : snap_(s) {}
  const Snapshot* snap_;
};

/// The registry. snapshot() is lock-free and callable from any thread; every mutating method
/// takes the writer mutex, applies the change and publishes a new snapshot before returning.
/// Destroy the registry only after every SnapshotGuard of it is gone.
class Registry {
 public:
  /// Batches several changes into one published snapshot (building a snapshot costs
  /// O(devices + entities + chunks x kinds in use), so a home is loaded in one edit). Methods
  /// validate before changing anything, so a failed call leaves the edit as it was; the calls
  /// that succeeded are published when edit() returns.
  class Editor {
   public:
    [[nodiscard]] Result<DeviceId> add_device(DeviceSpec spec);
    [[nodiscard]] Status remove_device(DeviceId id);
    [[nodiscard]] Status rename_device(DeviceId id, std::string name);
    [[nodiscard]] Status set_online(DeviceId id, bool online);
    [[nodiscard]] Result<GroupId> create_group(std::string name);
    /// The group of that name as this edit sees it (groups created earlier in it included).
    [[nodiscard]] std::optional<GroupId> find_group(std::string_view name) const;
    /// Members of the group as this edit sees it (0 for a stale id).
    [[nodiscard]] std::size_t member_count(GroupId id) const;
    [[nodiscard]] Status delete_group(GroupId id);
    [[nodiscard]] Status rename_group(GroupId id, std::string name);
    /// Idempotent: adding a member again is not an error.
    [[nodiscard]] Status add_to_group(GroupId group, DeviceId device);
    [[nodiscard]] Status remove_from_group(GroupId group, DeviceId device);

   private:
    friend class Registry;
    explicit Editor(Registry& r) noexcept : r_(r) {}
    Registry& r_;
  };

  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  /// The current snapshot, pinned. Any thread; never blocks, never allocates after a thread's
  /// first call (which claims one of a fixed number of per-thread epoch slots).
  [[nodiscard]] SnapshotGuard snapshot() const noexcept;

  /// Runs `f(Editor&)` under the writer mutex and publishes once. Returns what `f` returns.
  template <typename F>
  auto edit(F&& f) -> decltype(f(std::declval<Editor&>())) {
    std::lock_guard lock(writer_);
    Editor e(*this);
    struct Publish {
      Registry& r;
      ~Publish() { r.publish_if_dirty(); }
    } publish{*this};
    return f(e);
  }

  // One-change shortcuts (each publishes a snapshot).
  [[nodiscard]] Result<DeviceId> add_device(DeviceSpec spec);
  [[nodiscard]] Status remove_device(DeviceId id);
  [[nodiscard]] Status rename_device(DeviceId id, std::string name);
  [[nodiscard]] Status set_online(DeviceId id, bool online);
  [[nodiscard]] Result<GroupId> create_group(std::string name);
  [[nodiscard]] Status delete_group(GroupId id);
  [[nodiscard]] Status rename_group(GroupId id, std::string name);
  [[nodiscard]] Status add_to_group(GroupId group, DeviceId device);
  [[nodiscard]] Status remove_from_group(GroupId group, DeviceId device);

  /// Frees retired snapshots no reader can still see; returns how many are still waiting. Writers
  /// also do this on every publish.
  std::size_t collect();

  /// Until publish_deferred(), changes made on the calling thread are not published when its
  /// edits return: a burst of them (a provider declaring its devices) costs one snapshot instead
  /// of one each, which made declaring N devices O(N^2). Another thread's edit publishes as
  /// usual, and with it what waits. One deferring thread at a time.
  void defer_publication();
  /// Ends defer_publication() and publishes what waits; true if that published a snapshot. Any
  /// thread (a no-op if nothing was deferred).
  bool publish_deferred();

  /// True if `id` is a valid entity id (1..64 characters of [a-z0-9_.-]).
  [[nodiscard]] static bool valid_entity_id(std::string_view id) noexcept;

 private:
  struct DeviceSlot {
    std::uint32_t generation = 0;
    bool live = false;
    std::string name;
    bool online = true;
    std::set<std::uint32_t> groups;  // group slot indices
    std::shared_ptr<const DeviceData> data;
  };
  struct GroupSlot {
    std::uint32_t generation = 0;
    bool live = false;
    std::string name;
    std::set<std::uint32_t> devices;  // device slot indices
  };
  struct Retired {
    const Snapshot* snapshot;
    std::uint64_t epoch;
  };

  [[nodiscard]] DeviceSlot* live_device(DeviceId id) noexcept;
  [[nodiscard]] GroupSlot* live_group(GroupId id) noexcept;
  bool publish_if_dirty();  // true if it published
  [[nodiscard]] std::unique_ptr<Snapshot> build() const;
  std::size_t collect_locked();

  mutable std::mutex writer_;
  // Writer-side state (guarded by writer_).
  std::vector<DeviceSlot> devices_;
  std::vector<std::uint32_t> free_devices_;
  std::vector<GroupSlot> groups_;
  std::vector<std::uint32_t> free_groups_;
  std::map<std::string, std::uint32_t, std::less<>> device_names_;
  std::map<std::string, EntityRef, std::less<>> entity_ids_;
  std::map<std::string, std::uint32_t, std::less<>> group_names_;
  std::vector<Retired> retired_;
  std::uint64_t version_ = 0;
  bool dirty_ = false;
  std::thread::id deferring_;  // writer_: the thread whose edits do not publish (defer_publication)

  // SYNC(snapshot-publish): the writer stores a fully built snapshot (seq_cst); readers load it
  // (seq_cst) after pinning the epoch, so they see every byte of it.
  std::atomic<const Snapshot*> current_{nullptr};
};

}  // namespace floe::core
