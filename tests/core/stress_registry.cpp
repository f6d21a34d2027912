// The registry under a writer that adds/removes devices, renames and edits groups continuously,
// while reader threads take snapshots, check them for internal consistency and run queries.
// Readers never see a half-built snapshot; retired snapshots are reclaimed (the live count goes
// back down); under ASan/TSan, no use-after-free and no data race.
#include "floe/core/engine.hpp"
#include "floe/core/registry.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "floe/ipc/tree.hpp"
#include "support/environment.hpp"

namespace floe::core {
namespace {

using C = ipc::Component;

struct Buffer {
  explicit Buffer(std::size_t n) : mem(static_cast<std::byte*>(std::aligned_alloc(64, (n + 63) / 64 * 64))), size(n) {}
  ~Buffer() { std::free(mem); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  std::byte* mem;
  std::size_t size;
};

/// A device of `n` lights, every Dimmer = `level` (so each device's sum is known from its name).
struct Made {
  std::shared_ptr<Buffer> memory;
  std::shared_ptr<const ipc::TreeReader> reader;
};

Made make_lights(std::uint32_t n, double level) {
  ipc::TreeSchema s;
  for (std::uint32_t i = 0; i < n; ++i) s.entities.push_back({{{C::Light}, {C::Dimmer}}});
  auto layout = ipc::TreeLayout::compute(s);
  Made m;
  m.memory = std::make_shared<Buffer>(layout->size());
  const std::span<std::byte> span(m.memory->mem, m.memory->size);
  if (!ipc::tree_init(span, *layout)) std::abort();
  auto w = ipc::TreeWriter::attach(span);
  for (std::uint32_t i = 0; i < n; ++i) {
    if (w->set(i, C::Dimmer, ipc::Value{level}) != ipc::TreeWriteStatus::kOk) std::abort();
  }
  m.reader = std::make_shared<const ipc::TreeReader>(std::move(*ipc::TreeReader::attach(span)));
  return m;
}

/// Entities of device "dev<k>": (k % 70) + 1, so devices span one or two chunks; level k % 10 / 10.
std::uint32_t entities_of(std::uint64_t k) { return static_cast<std::uint32_t>(k % 70) + 1; }
double level_of(std::uint64_t k) { return static_cast<double>(k % 10) / 10.0; }

/// Everything a snapshot must satisfy, whatever the writer was doing when it was published.
/// Returns a description of the first violation, or "".
std::string check(const Snapshot& s) {
  const HomeIndex& h = s.home();
  std::uint32_t chunks = 0;
  std::size_t entities = 0;
  for (std::size_t pos = 0; pos < s.devices().size(); ++pos) {
    const DeviceRecord& d = s.devices()[pos];
    if (s.device(d.id) != &d) return "device(id) does not find " + d.name;
    if (s.device(d.name) != &d) return "device(name) does not find " + d.name;
    const std::uint64_t k = std::stoull(d.name.substr(3));
    if (d.entity_count() != entities_of(k)) return "wrong entity count for " + d.name;
    if (d.first_chunk != chunks) return "chunk ranges are not contiguous";
    for (std::uint32_t c = 0; c < d.chunk_count; ++c) {
      if (h.chunk_device[d.first_chunk + c] != pos) return "chunk_device mismatch";
    }
    chunks += d.chunk_count;
    for (std::uint32_t e = 0; e < d.entity_count(); ++e) {
      const auto ref = s.entity(d.data->entity_ids[e]);
      if (!ref || ref->device != d.id || ref->entity != e) return "entity map mismatch for " + d.data->entity_ids[e];
    }
    entities += d.entity_count();
    for (GroupId g : d.groups) {
      const GroupRecord* gr = s.group(g);
      if (gr == nullptr) return "device in a group the snapshot does not have";
      if (std::find(gr->devices.begin(), gr->devices.end(), d.id) == gr->devices.end()) return "membership not symmetric";
    }
  }
  if (h.chunk_count != chunks) return "chunk count mismatch";
  if (s.entity_count() != entities) return "entity map has extra entries";
  for (const GroupRecord& g : s.groups()) {
    for (DeviceId d : g.devices) {
      const DeviceRecord* dr = s.device(d);
      if (dr == nullptr) return "group " + g.name + " holds a device the snapshot does not have";
      if (std::find(dr->groups.begin(), dr->groups.end(), g.id) == dr->groups.end()) return "membership not symmetric";
    }
  }
  return {};
}

TEST(RegistryStress, ReadersSeeOnlyWholeSnapshotsWhileAWriterChurnsAndMemoryIsReclaimed) {
  const std::int64_t live_before = Snapshot::live_count();
  {
    Registry reg;
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> reads{0}, queries{0};
    std::vector<std::string> failures(3);

    const auto reader = [&](std::size_t idx) {
      std::mt19937_64 rng(idx);
      std::uint64_t last_version = 0;
      // One more pass after `stop`, so every reader checks at least one snapshot however the
      // scheduler treated it.
      for (bool last = false; !last;) {
        last = stop.load(std::memory_order_acquire);
        auto s = reg.snapshot();
        if (s->version() < last_version) {
          failures[idx] = "snapshot versions went backwards";
          return;
        }
        last_version = s->version();
        if (std::string bad = check(*s); !bad.empty()) {
          failures[idx] = bad;
          return;
        }
        // The engine on this snapshot: sum of dimmers per device equals entities * level.
        const auto q = Query{.action = Action::kSum, .target = C::Dimmer, .where = {}, .scopes = {}, .set_value = {}};
        auto all = run(q, *s, {.include_offline = true});
        if (!all) {
          failures[idx] = all.error().to_string();
          return;
        }
        double want = 0;
        std::uint64_t want_count = 0;
        for (const DeviceRecord& d : s->devices()) {
          const std::uint64_t k = std::stoull(d.name.substr(3));
          want += entities_of(k) * level_of(k);
          want_count += entities_of(k);
        }
        if (all->count != want_count || (want_count != 0 && std::abs(*all->number - want) > 1e-6)) {
          failures[idx] = "engine disagrees with the snapshot's devices";
          return;
        }
        if (!s->groups().empty()) {
          const GroupRecord& g = s->groups()[rng() % s->groups().size()];
          auto c = run(Query{.action = Action::kCount, .target = {}, .where = {},
                             .scopes = {{.kind = Scope::Kind::kGroup, .name = g.name}}, .set_value = {}},
                       *s, {.include_offline = true});
          std::uint64_t members = 0;
          for (DeviceId d : g.devices) members += s->device(d)->entity_count();
          if (!c || c->count != members) {
            failures[idx] = "group count mismatch";
            return;
          }
        }
        // Nested snapshot on the same thread.
        if (rng() % 8 == 0) {
          auto inner = reg.snapshot();
          if (inner->version() < s->version()) {
            failures[idx] = "inner snapshot older than outer";
            return;
          }
        }
        reads.fetch_add(1, std::memory_order_relaxed);
        queries.fetch_add(2, std::memory_order_relaxed);
      }
    };

    std::vector<std::thread> readers;
    for (std::size_t i = 0; i < failures.size(); ++i) readers.emplace_back(reader, i);

    // The writer (a lambda, so a failed ASSERT still reaches the join below).
    const auto write = [&] {
    std::mt19937_64 rng(99);
    std::vector<DeviceId> live;
    std::vector<GroupId> groups;
    std::uint64_t next = 0;
    const std::uint64_t edits = test::scaled(20'000, 500);
    for (std::uint64_t i = 0; i < edits; ++i) {
      const auto op = rng() % 10;
      if (op < 4 || live.size() < 3) {
        const std::uint64_t k = next++;
        Made m = make_lights(entities_of(k), level_of(k));
        std::vector<std::string> ids;
        for (std::uint32_t e = 0; e < entities_of(k); ++e) ids.push_back("d" + std::to_string(k) + "_" + std::to_string(e));
        auto id = reg.add_device({.name = "dev" + std::to_string(k), .provider = "stress", .entity_ids = std::move(ids),
                                  .entity_names = {}, .reader = m.reader, .keepalive = m.memory, .online = rng() % 2 == 0});
        ASSERT_TRUE(id) << id.error().to_string();
        live.push_back(*id);
      } else if (op < 7 && live.size() > 20) {
        const std::size_t at = rng() % live.size();
        ASSERT_TRUE(reg.remove_device(live[at]));
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(at));
      } else if (op == 7 || groups.empty()) {
        if (groups.size() > 8) {
          const std::size_t at = rng() % groups.size();
          ASSERT_TRUE(reg.delete_group(groups[at]));
          groups.erase(groups.begin() + static_cast<std::ptrdiff_t>(at));
        } else {
          auto g = reg.create_group("g" + std::to_string(i));
          ASSERT_TRUE(g);
          groups.push_back(*g);
        }
      } else if (op == 8) {
        ASSERT_TRUE(reg.add_to_group(groups[rng() % groups.size()], live[rng() % live.size()]));
      } else {
        ASSERT_TRUE(reg.set_online(live[rng() % live.size()], rng() % 2 == 0));
      }
      if (live.size() > 60) {  // keep the home small so snapshot building stays cheap
        ASSERT_TRUE(reg.remove_device(live.front()));
        live.erase(live.begin());
      }
    }
    };
    write();
    stop.store(true);
    for (auto& t : readers) t.join();
    for (const std::string& f : failures) EXPECT_EQ(f, "");
    EXPECT_GT(reads.load(), 0U);
    RecordProperty("snapshots_read", static_cast<int>(reads.load()));
    RecordProperty("queries", static_cast<int>(queries.load()));

    // Readers are gone: everything retired can go; only the current snapshot is left.
    EXPECT_EQ(reg.collect(), 0U);
    EXPECT_EQ(Snapshot::live_count(), live_before + 1);
  }
  EXPECT_EQ(Snapshot::live_count(), live_before);
}

TEST(RegistryStress, ManyShortLivedReaderThreadsReleaseTheirEpochSlots) {
  // More threads over time than there are epoch slots: each exiting thread must give its slot back.
  Registry reg;
  std::atomic<std::uint64_t> seen{0};
  for (int round = 0; round < 40; ++round) {
    std::vector<std::thread> ts;
    for (int i = 0; i < 16; ++i) {
      ts.emplace_back([&] {
        auto s = reg.snapshot();
        seen.fetch_add(s->version() > 0 ? 1 : 0, std::memory_order_relaxed);
      });
    }
    ASSERT_TRUE(reg.create_group("g" + std::to_string(round)));
    for (auto& t : ts) t.join();
  }
  EXPECT_EQ(seen.load(), 40U * 16U);
  EXPECT_EQ(reg.collect(), 0U);
}

}  // namespace
}  // namespace floe::core
