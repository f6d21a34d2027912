// The registry: devices, entity ids, groups, generational ids, snapshots and the home index.
#include "floe/core/registry.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "floe/ipc/region.hpp"
#include "floe/ipc/tree.hpp"

namespace floe::core {
namespace {

using C = ipc::Component;

/// A device's region with an initialised tree, a reader and a writer, as the core would set up.
struct TestTree {
  std::shared_ptr<ipc::Region> region;
  std::shared_ptr<const ipc::TreeReader> reader;
  std::optional<ipc::TreeWriter> writer;
};

TestTree make_tree(const ipc::TreeSchema& schema) {
  TestTree t;
  auto layout = ipc::TreeLayout::compute(schema);
  EXPECT_TRUE(layout) << layout.error().to_string();
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t want = ipc::kRegionPayloadOffset + layout->size();
  auto region = ipc::Region::create({.name = "test-dev", .size = (want + page - 1) / page * page, .kind = ipc::RegionKind::kDevice});
  EXPECT_TRUE(region) << region.error().to_string();
  t.region = std::make_shared<ipc::Region>(std::move(*region));
  EXPECT_TRUE(ipc::tree_init(t.region->payload(), *layout));
  auto reader = ipc::TreeReader::attach(t.region->payload());
  EXPECT_TRUE(reader);
  t.reader = std::make_shared<const ipc::TreeReader>(std::move(*reader));
  auto writer = ipc::TreeWriter::attach(t.region->payload());
  EXPECT_TRUE(writer);
  t.writer.emplace(std::move(*writer));
  return t;
}

ipc::TreeSchema lights(std::size_t n) {
  ipc::TreeSchema s;
  for (std::size_t i = 0; i < n; ++i) s.entities.push_back({{{C::Light}, {C::Switch}, {C::Dimmer}}});
  return s;
}

DeviceSpec spec(std::string name, std::vector<std::string> ids, const TestTree& t) {
  return DeviceSpec{.name = std::move(name),
                    .provider = "test",
                    .entity_ids = std::move(ids),
                    .entity_names = {},
                    .reader = t.reader,
                    .keepalive = t.region,
                    .online = true};
}

TEST(Registry, StartsEmptyWithAPublishedSnapshot) {
  Registry r;
  auto s = r.snapshot();
  EXPECT_TRUE(s->devices().empty());
  EXPECT_TRUE(s->groups().empty());
  EXPECT_EQ(s->home().chunk_count, 0U);
}

TEST(Registry, AddedDeviceIsFoundByNameIdAndEntityIds) {
  Registry r;
  auto t = make_tree(lights(2));
  auto id = r.add_device(spec("hall", {"hall_a", "hall_b"}, t));
  ASSERT_TRUE(id) << id.error().to_string();
  auto s = r.snapshot();
  ASSERT_NE(s->device("hall"), nullptr);
  EXPECT_EQ(s->device("hall")->id, *id);
  EXPECT_EQ(s->device(*id)->name, "hall");
  EXPECT_EQ(s->device(*id)->data->provider, "test");
  EXPECT_EQ(s->entity("hall_b"), (EntityRef{*id, 1}));
  EXPECT_EQ(s->entity_id({*id, 0}), "hall_a");
  EXPECT_EQ(s->entity_name({*id, 0}), "hall_a");  // no display names given: the ids
  EXPECT_FALSE(s->entity("nope"));
}

TEST(Registry, DisplayNamesAreKept) {
  Registry r;
  auto t = make_tree(lights(1));
  DeviceSpec d = spec("hall", {"hall_a"}, t);
  d.entity_names = {"Hall ceiling"};
  auto id = r.add_device(std::move(d));
  ASSERT_TRUE(id);
  EXPECT_EQ(r.snapshot()->entity_name({*id, 0}), "Hall ceiling");
}

TEST(Registry, DuplicateDeviceNameIsRefused) {
  Registry r;
  auto t = make_tree(lights(1));
  ASSERT_TRUE(r.add_device(spec("hall", {"a"}, t)));
  auto again = r.add_device(spec("hall", {"b"}, t));
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message.find("already exists"), std::string::npos) << again.error().to_string();
  EXPECT_FALSE(r.snapshot()->entity("b")) << "a refused device must not leave its entities behind";
}

TEST(Registry, DuplicateEntityIdIsRefusedAcrossAndWithinDevices) {
  Registry r;
  auto t1 = make_tree(lights(1));
  auto t2 = make_tree(lights(2));
  ASSERT_TRUE(r.add_device(spec("one", {"lamp"}, t1)));
  auto across = r.add_device(spec("two", {"x", "lamp"}, t2));
  ASSERT_FALSE(across);
  EXPECT_NE(across.error().message.find("'lamp' is already taken"), std::string::npos) << across.error().to_string();
  auto within = r.add_device(spec("two", {"y", "y"}, t2));
  ASSERT_FALSE(within);
  EXPECT_EQ(r.snapshot()->devices().size(), 1U);
  EXPECT_FALSE(r.snapshot()->entity("x"));
}

TEST(Registry, EntityIdsWithBadCharactersAreRefused) {
  Registry r;
  auto t = make_tree(lights(1));
  for (const std::string& bad : std::vector<std::string>{"", "Kitchen", "a b", "lamp*", "lamp?", "é", std::string(65, 'a')}) {
    EXPECT_FALSE(r.add_device(spec("d", {bad}, t))) << "'" << bad << "'";
  }
  EXPECT_TRUE(r.add_device(spec("d", {"kitchen_ceiling-2.a"}, t)));
}

TEST(Registry, EntityIdCountMustMatchTheTree) {
  Registry r;
  auto t = make_tree(lights(2));
  EXPECT_FALSE(r.add_device(spec("d", {"only_one"}, t)));
  DeviceSpec no_reader = spec("d", {"a"}, t);
  no_reader.reader.reset();
  EXPECT_FALSE(r.add_device(std::move(no_reader)));
}

TEST(Registry, RemovedDeviceDisappearsWithItsEntitiesAndNameIsFreed) {
  Registry r;
  auto t = make_tree(lights(1));
  auto id = r.add_device(spec("hall", {"lamp"}, t));
  ASSERT_TRUE(id);
  ASSERT_TRUE(r.remove_device(*id));
  auto s = r.snapshot();
  EXPECT_EQ(s->device(*id), nullptr);
  EXPECT_EQ(s->device("hall"), nullptr);
  EXPECT_FALSE(s->entity("lamp"));
  EXPECT_FALSE(r.remove_device(*id)) << "removing twice must fail";
  EXPECT_TRUE(r.add_device(spec("hall", {"lamp"}, t))) << "name and entity ids are free again";
}

TEST(Registry, ReusedSlotGetsANewGenerationAndTheStaleIdIsRefused) {
  Registry r;
  auto t = make_tree(lights(1));
  auto old_id = r.add_device(spec("old", {"a"}, t));
  ASSERT_TRUE(old_id);
  ASSERT_TRUE(r.remove_device(*old_id));
  auto new_id = r.add_device(spec("new", {"b"}, t));
  ASSERT_TRUE(new_id);
  EXPECT_EQ(new_id->index, old_id->index) << "the freed slot is reused";
  EXPECT_NE(new_id->generation, old_id->generation);
  auto s = r.snapshot();
  EXPECT_EQ(s->device(*old_id), nullptr) << "a stale id must not reach the new device";
  ASSERT_NE(s->device(*new_id), nullptr);
  EXPECT_EQ(s->device(*new_id)->name, "new");
  EXPECT_FALSE(r.set_online(*old_id, false));
  EXPECT_FALSE(r.rename_device(*old_id, "x"));
  EXPECT_FALSE(r.remove_device(*old_id));
  EXPECT_NE(s->device(*new_id), nullptr);
  EXPECT_EQ(s->entity_id({*old_id, 0}), "");
}

TEST(Registry, DefaultIdsNameNothing) {
  Registry r;
  auto t = make_tree(lights(1));
  ASSERT_TRUE(r.add_device(spec("d", {"a"}, t)));
  EXPECT_EQ(r.snapshot()->device(DeviceId{}), nullptr);
  EXPECT_FALSE(r.remove_device(DeviceId{}));
  EXPECT_EQ(r.snapshot()->group(GroupId{}), nullptr);
}

TEST(Registry, RenameMovesTheNameAndRefusesATakenOne) {
  Registry r;
  auto t = make_tree(lights(1));
  auto a = r.add_device(spec("a", {"x"}, t));
  auto b = r.add_device(spec("b", {"y"}, t));
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(r.rename_device(*a, "b"));
  EXPECT_FALSE(r.rename_device(*a, ""));
  ASSERT_TRUE(r.rename_device(*a, "c"));
  auto s = r.snapshot();
  EXPECT_EQ(s->device("a"), nullptr);
  ASSERT_NE(s->device("c"), nullptr);
  EXPECT_EQ(s->device("c")->id, *a);
  EXPECT_EQ(s->entity("x")->device, *a) << "entities follow the device, not its name";
}

TEST(Registry, OnlineFlagReachesTheHomeIndex) {
  Registry r;
  auto t = make_tree(lights(3));
  auto id = r.add_device(spec("d", {"a", "b", "c"}, t));
  ASSERT_TRUE(id);
  EXPECT_EQ(r.snapshot()->home().online[0], 0b111U);
  ASSERT_TRUE(r.set_online(*id, false));
  auto s = r.snapshot();
  EXPECT_FALSE(s->device(*id)->online);
  EXPECT_EQ(s->home().online[0], 0U);
  EXPECT_EQ(s->home().occupied[0], 0b111U);
}

TEST(Registry, GroupsHoldManyDevicesAndADeviceManyGroups) {
  Registry r;
  auto t = make_tree(lights(1));
  auto a = r.add_device(spec("a", {"x"}, t));
  auto b = r.add_device(spec("b", {"y"}, t));
  auto kitchen = r.create_group("kitchen");
  auto upstairs = r.create_group("upstairs");
  ASSERT_TRUE(a && b && kitchen && upstairs);
  ASSERT_TRUE(r.add_to_group(*kitchen, *a));
  ASSERT_TRUE(r.add_to_group(*kitchen, *b));
  ASSERT_TRUE(r.add_to_group(*upstairs, *a));
  ASSERT_TRUE(r.add_to_group(*upstairs, *a)) << "adding again is idempotent";
  auto s = r.snapshot();
  EXPECT_EQ(s->devices_of(*kitchen).size(), 2U);
  EXPECT_EQ(s->devices_of(*upstairs).size(), 1U);
  EXPECT_EQ(s->groups_of(*a).size(), 2U);
  EXPECT_EQ(s->groups_of(*b).size(), 1U);
  EXPECT_EQ(s->group("kitchen")->id, *kitchen);
  EXPECT_EQ(s->group("kitchen")->chunks.size(), 2U);

  ASSERT_TRUE(r.remove_from_group(*kitchen, *a));
  EXPECT_FALSE(r.remove_from_group(*kitchen, *a)) << "not a member any more";
  EXPECT_EQ(r.snapshot()->devices_of(*kitchen).size(), 1U);
  EXPECT_EQ(r.snapshot()->groups_of(*a).size(), 1U);
}

TEST(Registry, DuplicateGroupNameIsRefusedAndRenameWorks) {
  Registry r;
  auto g = r.create_group("kitchen");
  ASSERT_TRUE(g);
  EXPECT_FALSE(r.create_group("kitchen"));
  EXPECT_FALSE(r.create_group(""));
  auto h = r.create_group("hall");
  ASSERT_TRUE(h);
  EXPECT_FALSE(r.rename_group(*g, "hall"));
  ASSERT_TRUE(r.rename_group(*g, "cuisine"));
  EXPECT_EQ(r.snapshot()->group("kitchen"), nullptr);
  EXPECT_EQ(r.snapshot()->group("cuisine")->id, *g);
}

TEST(Registry, RemovingADeviceLeavesItsGroups) {
  Registry r;
  auto t = make_tree(lights(1));
  auto a = r.add_device(spec("a", {"x"}, t));
  auto g = r.create_group("g");
  ASSERT_TRUE(a && g);
  ASSERT_TRUE(r.add_to_group(*g, *a));
  ASSERT_TRUE(r.remove_device(*a));
  EXPECT_TRUE(r.snapshot()->devices_of(*g).empty());
  EXPECT_TRUE(r.snapshot()->group("g")->chunks.empty());
}

TEST(Registry, DeletedGroupIdIsStaleAfterItsSlotIsReused) {
  Registry r;
  auto t = make_tree(lights(1));
  auto a = r.add_device(spec("a", {"x"}, t));
  auto g = r.create_group("g");
  ASSERT_TRUE(a && g);
  ASSERT_TRUE(r.add_to_group(*g, *a));
  ASSERT_TRUE(r.delete_group(*g));
  EXPECT_TRUE(r.snapshot()->groups_of(*a).empty());
  auto h = r.create_group("h");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->index, g->index);
  EXPECT_NE(h->generation, g->generation);
  EXPECT_EQ(r.snapshot()->group(*g), nullptr);
  EXPECT_FALSE(r.add_to_group(*g, *a)) << "a stale group id must not reach the new group";
  EXPECT_FALSE(r.delete_group(*g));
  EXPECT_TRUE(r.snapshot()->devices_of(*h).empty());
}

TEST(Registry, SnapshotsAreIsolatedFromLaterChanges) {
  Registry r;
  auto t = make_tree(lights(1));
  auto a = r.add_device(spec("a", {"x"}, t));
  auto g = r.create_group("g");
  ASSERT_TRUE(a && g);
  auto before = r.snapshot();
  ASSERT_TRUE(r.add_to_group(*g, *a));
  ASSERT_TRUE(r.rename_device(*a, "renamed"));
  ASSERT_TRUE(r.set_online(*a, false));
  auto t2 = make_tree(lights(1));
  ASSERT_TRUE(r.add_device(spec("b", {"y"}, t2)));
  // The old snapshot still shows the old world.
  EXPECT_NE(before->device("a"), nullptr);
  EXPECT_TRUE(before->device(*a)->online);
  EXPECT_TRUE(before->devices_of(*g).empty());
  EXPECT_EQ(before->devices().size(), 1U);
  EXPECT_FALSE(before->entity("y"));
  auto after = r.snapshot();
  EXPECT_GT(after->version(), before->version());
  EXPECT_EQ(after->devices().size(), 2U);
  EXPECT_EQ(after->device(*a)->name, "renamed");
}

TEST(Registry, RemovedDeviceStaysReadableThroughAnOlderSnapshot) {
  Registry r;
  DeviceId id;
  std::weak_ptr<ipc::Region> region;
  {
    auto t = make_tree(lights(1));
    ASSERT_EQ(t.writer->set(0, C::Dimmer, ipc::Value{0.25}), ipc::TreeWriteStatus::kOk);
    auto added = r.add_device(spec("a", {"x"}, t));
    ASSERT_TRUE(added);
    id = *added;
    region = t.region;
  }
  auto old = r.snapshot();
  ASSERT_TRUE(r.remove_device(id));
  EXPECT_FALSE(region.expired()) << "the old snapshot keeps the region mapped";
  EXPECT_EQ(old->device(id)->reader().get(0, C::Dimmer), ipc::Value{0.25});
  { auto drop = std::move(old); }
  r.collect();
  EXPECT_TRUE(region.expired()) << "once no snapshot shows the device, its region is released";
}

TEST(Registry, HomeIndexCopiesPresenceWordsAndValueColumnsPerChunk) {
  Registry r;
  ipc::TreeSchema s = lights(70);                           // two chunks
  s.entities[65].components = {{C::Sensor}, {C::Real}};     // chunk 1, slot 1: not a light
  auto t1 = make_tree(s);
  auto t2 = make_tree(lights(1));
  std::vector<std::string> ids;
  for (int i = 0; i < 70; ++i) ids.push_back("e" + std::to_string(i));
  auto a = r.add_device(spec("a", ids, t1));
  auto b = r.add_device(spec("b", {"z"}, t2));
  ASSERT_TRUE(a && b);
  auto snap = r.snapshot();
  const HomeIndex& h = snap->home();
  ASSERT_EQ(h.chunk_count, 3U);
  EXPECT_EQ(h.chunk_device, (std::vector<std::uint32_t>{0, 0, 1}));
  EXPECT_EQ(h.chunk_local, (std::vector<std::uint32_t>{0, 1, 0}));
  EXPECT_EQ(h.occupied[0], ~0ULL);
  EXPECT_EQ(h.occupied[1], 0b111111ULL);
  EXPECT_EQ(h.column(C::Light).presence[1], 0b111101ULL);
  EXPECT_EQ(h.column(C::Real).presence[1], 0b000010ULL);
  EXPECT_EQ(h.column(C::Light).population, 70U);
  EXPECT_TRUE(h.column(C::Light).values.empty()) << "markers have no value column";
  EXPECT_EQ(h.column(C::Dimmer).values[2], t2.reader->column(0, C::Dimmer)->values);
  EXPECT_EQ(h.column(C::Real).values[0], nullptr);
  EXPECT_TRUE(h.column(C::Color).presence.empty()) << "kinds nobody has take no memory";
  EXPECT_EQ(snap->device(*b)->first_chunk, 2U);
}

TEST(Registry, EditBatchesChangesIntoOneSnapshot) {
  Registry r;
  auto t = make_tree(lights(1));
  const std::uint64_t v0 = r.snapshot()->version();
  auto ok = r.edit([&](Registry::Editor& e) -> Status {
    auto a = e.add_device(spec("a", {"x"}, t));
    if (!a) return tl::unexpected(a.error());
    auto g = e.create_group("g");
    if (!g) return tl::unexpected(g.error());
    return e.add_to_group(*g, *a);
  });
  ASSERT_TRUE(ok) << ok.error().to_string();
  auto s = r.snapshot();
  EXPECT_EQ(s->version(), v0 + 1);
  EXPECT_EQ(s->group("g")->devices.size(), 1U);
}

TEST(Registry, AnEditSeesGroupsAndMembersItHasNotPublishedYet) {
  Registry r;
  auto t = make_tree(lights(1));
  auto ok = r.edit([&](Registry::Editor& e) -> Status {
    auto a = e.add_device(spec("a", {"a_1"}, t));
    if (!a) return tl::unexpected(a.error());
    EXPECT_FALSE(e.find_group("kitchen").has_value());
    auto g = e.create_group("kitchen");
    if (!g) return tl::unexpected(g.error());
    EXPECT_EQ(e.find_group("kitchen"), *g);  // not in any snapshot yet
    EXPECT_EQ(e.member_count(*g), 0U);
    FLOE_TRY(e.add_to_group(*g, *a));
    EXPECT_EQ(e.member_count(*g), 1U);
    FLOE_TRY(e.remove_from_group(*g, *a));
    EXPECT_EQ(e.member_count(*g), 0U);
    FLOE_TRY(e.delete_group(*g));
    EXPECT_FALSE(e.find_group("kitchen").has_value());
    EXPECT_EQ(e.member_count(*g), 0U);  // a stale id counts nothing
    return {};
  });
  ASSERT_TRUE(ok) << ok.error().to_string();
  EXPECT_EQ(r.snapshot()->group("kitchen"), nullptr);
}

TEST(Registry, SnapshotSerialsAreUniqueAcrossRegistriesAndOnlyGrow) {
  auto t = make_tree(lights(1));
  Registry a, b;
  const std::uint64_t a1 = a.snapshot()->serial(), b1 = b.snapshot()->serial();
  EXPECT_NE(a1, 0U);
  EXPECT_NE(b1, 0U);
  EXPECT_NE(a1, b1);
  EXPECT_EQ(a.snapshot()->version(), b.snapshot()->version()) << "versions are per registry; serials are not";
  ASSERT_TRUE(a.add_device(spec("d", {"x"}, t)));
  const std::uint64_t a2 = a.snapshot()->serial();
  EXPECT_GT(a2, a1);
  EXPECT_GT(a2, b1);
  EXPECT_EQ(a.snapshot()->serial(), a2) << "the same snapshot keeps its serial";
  ASSERT_TRUE(a.set_online(a.snapshot()->device("d")->id, true));  // no change: nothing published
  EXPECT_EQ(a.snapshot()->serial(), a2);
  ASSERT_TRUE(b.add_device(spec("d", {"x"}, t)));
  EXPECT_EQ(a.snapshot()->version(), b.snapshot()->version());
  EXPECT_GT(b.snapshot()->serial(), a2);
}

TEST(Registry, NestedSnapshotsOnOneThreadAreBothValid) {
  Registry r;
  auto t = make_tree(lights(1));
  auto outer = r.snapshot();
  ASSERT_TRUE(r.add_device(spec("a", {"x"}, t)));
  auto inner = r.snapshot();
  ASSERT_TRUE(r.add_device(spec("b", {"y"}, t)));
  EXPECT_EQ(outer->devices().size(), 0U);
  EXPECT_EQ(inner->devices().size(), 1U);
  EXPECT_EQ(r.snapshot()->devices().size(), 2U);
}

TEST(Registry, RetiredSnapshotsAreFreedOnceNoReaderHoldsThem) {
  const std::int64_t base = Snapshot::live_count();
  {
    Registry r;
    auto t = make_tree(lights(1));
    auto held = r.snapshot();
    for (int i = 0; i < 20; ++i) {
      auto id = r.add_device(spec("d", {"x"}, t));
      ASSERT_TRUE(id);
      ASSERT_TRUE(r.remove_device(*id));
    }
    EXPECT_GT(Snapshot::live_count(), base + 20) << "a held guard keeps everything retired after it";
    { auto drop = std::move(held); }
    EXPECT_EQ(r.collect(), 0U);
    EXPECT_EQ(Snapshot::live_count(), base + 1) << "only the current snapshot is left";
  }
  EXPECT_EQ(Snapshot::live_count(), base);
}

TEST(Registry, DeferredEditsOfOneThreadPublishOnceAndAnotherThreadsEditPublishesThemToo) {
  Registry r;
  std::vector<TestTree> trees;
  for (int i = 0; i < 6; ++i) trees.push_back(make_tree(lights(1)));
  const std::uint64_t v0 = r.snapshot()->version();
  r.defer_publication();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(r.add_device(spec("d" + std::to_string(i), {"e" + std::to_string(i)}, trees[i])));
  EXPECT_EQ(r.snapshot()->version(), v0) << "the deferring thread's edits published";
  EXPECT_TRUE(r.snapshot()->devices().empty());
  r.publish_deferred();
  auto s = r.snapshot();
  EXPECT_EQ(s->version(), v0 + 1) << "three deferred edits, one snapshot";
  EXPECT_EQ(s->devices().size(), 3U);

  // Another thread's edit publishes at once, and what the deferring thread had waiting with it.
  r.defer_publication();
  ASSERT_TRUE(r.add_device(spec("d3", {"e3"}, trees[3])));
  std::thread other([&] { ASSERT_TRUE(r.add_device(spec("d4", {"e4"}, trees[4]))); });
  other.join();
  EXPECT_EQ(r.snapshot()->devices().size(), 5U);
  ASSERT_TRUE(r.add_device(spec("d5", {"e5"}, trees[5])));
  EXPECT_EQ(r.snapshot()->devices().size(), 5U) << "still deferring on this thread";
  r.publish_deferred();
  EXPECT_EQ(r.snapshot()->devices().size(), 6U);
  // Once ended, this thread's edits publish again.
  ASSERT_TRUE(r.set_online(r.snapshot()->device("d0")->id, false));
  EXPECT_FALSE(r.snapshot()->device("d0")->online);
}

}  // namespace
}  // namespace floe::core
