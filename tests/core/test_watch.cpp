// Watchers over real memfd-backed device trees: deduplication, the interest index (component and
// scope), coalescing, reporting only on change, overflow rescans, registry edits, hostile records.
#include "floe/core/watch.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "floe/core/engine.hpp"
#include "floe/core/query_parser.hpp"
#include "floe/core/registry.hpp"
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
  DeviceId id;
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

/// Collects what a subscription receives.
struct Sink {
  std::vector<Result<QueryResult>> got;
  WatchCallback callback() {
    return [this](const Result<QueryResult>& r) { got.push_back(r); };
  }
  [[nodiscard]] const QueryResult& last() const { return *got.back(); }
};

Query q(std::string_view text) {
  auto r = parse_query(text);
  EXPECT_TRUE(r) << r.error().message;
  return *r;
}

// The home: kitchen-lamps {k0, k1: Light + Dimmer; k2: Dimmer without Light; k3: Switch},
// hall-lamps {h0, h1: Light + Dimmer}; groups kitchen = {kitchen-lamps}, hall = {hall-lamps}.
class WatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    kitchen_ = make_tree({{{{{C::Light}, {C::Dimmer}}},
                           {{{C::Light}, {C::Dimmer}}},
                           {{{C::Dimmer}}},
                           {{{C::Switch}}}}});
    hall_ = make_tree({{{{{C::Light}, {C::Dimmer}}}, {{{C::Light}, {C::Dimmer}}}}});
    kitchen_.id = add("kitchen-lamps", {"k0", "k1", "k2", "k3"}, kitchen_);
    hall_.id = add("hall-lamps", {"h0", "h1"}, hall_);
    auto gk = registry_.create_group("kitchen");
    auto gh = registry_.create_group("hall");
    ASSERT_TRUE(gk && gh);
    kitchen_group_ = *gk;
    ASSERT_TRUE(registry_.add_to_group(*gk, kitchen_.id));
    ASSERT_TRUE(registry_.add_to_group(*gh, hall_.id));
    // Values before anything watches: kitchen 0.2, 0.4 (avg 0.3); k2 0.9; hall 1.0, 1.0.
    write_quiet(kitchen_, 0, C::Dimmer, 0.2);
    write_quiet(kitchen_, 1, C::Dimmer, 0.4);
    write_quiet(kitchen_, 2, C::Dimmer, 0.9);
    write_quiet(hall_, 0, C::Dimmer, 1.0);
    write_quiet(hall_, 1, C::Dimmer, 1.0);
    hub_.emplace(registry_);
    auto fk = hub_->attach(kitchen_.id);
    auto fh = hub_->attach(hall_.id);
    ASSERT_TRUE(fk && fh);
    kitchen_feed_.emplace(std::move(*fk));
    hall_feed_.emplace(std::move(*fh));
    hub_->flush();  // nothing subscribed yet: the attach rescans trigger nothing
  }

  DeviceId add(std::string name, std::vector<std::string> ids, const TestTree& t) {
    auto id = registry_.add_device({.name = std::move(name), .provider = "test", .entity_ids = std::move(ids),
                                    .entity_names = {}, .reader = t.reader, .keepalive = t.region, .online = true});
    EXPECT_TRUE(id) << id.error().to_string();
    return id.value_or(DeviceId{});
  }

  /// Writes the tree only (as if the change record were lost).
  static void write_quiet(TestTree& t, ipc::EntityIndex e, C c, const ipc::Value& v) {
    ASSERT_EQ(t.writer->set(e, c, v), ipc::TreeWriteStatus::kOk);
  }
  /// Writes the tree, then returns the change record the provider would push.
  static ChangeRecord write(TestTree& t, ipc::EntityIndex e, C c, const ipc::Value& v) {
    EXPECT_EQ(t.writer->set(e, c, v), ipc::TreeWriteStatus::kOk);
    return ChangeRecord{.entity = e, .component = ipc::to_id(c), .reserved = 0, .seq = t.writer->change_seq(e)};
  }

  WatchHandle subscribe(std::string_view text, Sink& sink) {
    auto h = hub_->subscribe(q(text), sink.callback());
    EXPECT_TRUE(h) << h.error().to_string();
    return h ? std::move(*h) : WatchHandle{};
  }

  Registry registry_;
  TestTree kitchen_, hall_;
  GroupId kitchen_group_;
  std::optional<WatchHub> hub_;
  std::optional<WatchFeed> kitchen_feed_, hall_feed_;
};

// ---- Deduplication ------------------------------------------------------------------------------

TEST_F(WatchTest, IdenticalQueriesShareOneReferenceCountedWatcher) {
  Sink a, b;
  WatchHandle ha = subscribe("avg Dimmer where Light", a);
  WatchHandle hb = subscribe("AVG dimmer WHERE light", b);
  EXPECT_EQ(hub_->watcher_count(), 1U);
  EXPECT_EQ(hub_->subscriber_count(q("avg Dimmer where Light")), 2U);
  EXPECT_EQ(ha.key(), hb.key());
  EXPECT_EQ(hub_->stats().evaluations, 1U) << "the second subscriber shares the first one's evaluation";

  ha.reset();
  EXPECT_EQ(hub_->watcher_count(), 1U);
  EXPECT_EQ(hub_->subscriber_count(q("avg Dimmer where Light")), 1U);
  hb.reset();
  EXPECT_EQ(hub_->watcher_count(), 0U);
  EXPECT_EQ(hub_->subscriber_count(q("avg Dimmer where Light")), 0U);
}

TEST_F(WatchTest, OperandOrderOfAndOrAndScopesMakesNoNewWatcher) {
  const std::vector<std::vector<const char*>> groups = {
      {"avg Dimmer where Light and Dimmer > 0.1", "avg Dimmer where Dimmer > 0.1 and Light",
       "avg Dimmer where Dimmer > 0.1 and (Light and Dimmer > 0.1)"},
      {"count where Light or Switch", "count where Switch or Light", "count where (Switch or Light) or Switch"},
      {"count where Dimmer and (Light or Switch) in group kitchen in device kitchen-lamps",
       "count where (Switch or Light) and Dimmer in device kitchen-lamps in group kitchen"},
  };
  for (const auto& group : groups) {
    SCOPED_TRACE(group.front());
    std::vector<Sink> sinks(group.size());
    std::vector<WatchHandle> handles;
    for (std::size_t i = 0; i < group.size(); ++i) handles.push_back(subscribe(group[i], sinks[i]));
    EXPECT_EQ(hub_->watcher_count(), 1U);
    for (const char* text : group) EXPECT_EQ(hub_->subscriber_count(q(text)), group.size()) << text;
    for (const WatchHandle& h : handles) EXPECT_EQ(h.key(), handles.front().key());
    for (const Sink& s : sinks) {
      ASSERT_EQ(s.got.size(), 1U);
      EXPECT_EQ(s.last().count, sinks.front().last().count);
    }
    handles.clear();
    EXPECT_EQ(hub_->watcher_count(), 0U);
  }
}

TEST_F(WatchTest, ReorderedSubscribersShareTheReports) {
  Sink a, b;
  WatchHandle ha = subscribe("avg Dimmer where Light and Dimmer > 0.1 in group kitchen", a);
  WatchHandle hb = subscribe("avg Dimmer where Dimmer > 0.1 and Light in group kitchen", b);
  ASSERT_EQ(hub_->watcher_count(), 1U);
  EXPECT_NEAR(*a.last().number, 0.3, 1e-12);
  const ChangeRecord r = write(kitchen_, 0, C::Dimmer, 0.6);
  kitchen_feed_->on_change({&r, 1});
  hub_->flush();
  ASSERT_EQ(a.got.size(), 2U);
  ASSERT_EQ(b.got.size(), 2U);
  EXPECT_NEAR(*a.last().number, 0.5, 1e-12);
  EXPECT_NEAR(*b.last().number, 0.5, 1e-12);
}

TEST_F(WatchTest, OperandsThatChangeTheMeaningStayDifferentWatchers) {
  Sink a, b;
  WatchHandle ha = subscribe("count where Light and not Switch", a);
  WatchHandle hb = subscribe("count where Switch and not Light", b);
  EXPECT_EQ(hub_->watcher_count(), 2U);
  EXPECT_EQ(a.last().count, 4U);
  EXPECT_EQ(b.last().count, 1U);
}

TEST_F(WatchTest, ANewSubscriberGetsTheCurrentResultAtOnce) {
  Sink a, b;
  WatchHandle ha = subscribe("avg Dimmer where Light in group kitchen", a);
  ASSERT_EQ(a.got.size(), 1U);
  EXPECT_NEAR(*a.last().number, 0.3, 1e-12);
  WatchHandle hb = subscribe("avg Dimmer where Light in group kitchen", b);
  ASSERT_EQ(b.got.size(), 1U);
  EXPECT_NEAR(*b.last().number, 0.3, 1e-12);
  EXPECT_EQ(a.got.size(), 1U) << "an existing subscriber is not told again";
}

TEST_F(WatchTest, DifferentQueriesGetDifferentWatchers) {
  Sink a, b;
  WatchHandle ha = subscribe("avg Dimmer where Light", a);
  WatchHandle hb = subscribe("max Dimmer where Light", b);
  EXPECT_EQ(hub_->watcher_count(), 2U);
}

TEST_F(WatchTest, SetQueriesCannotBeWatched) {
  auto h = hub_->subscribe(q("set Dimmer = 0.5 where Light"), [](const Result<QueryResult>&) {});
  EXPECT_FALSE(h);
}

TEST_F(WatchTest, SubscribingByTextReportsParseErrors) {
  auto h = hub_->subscribe("avg Dimmer whre Light", [](const Result<QueryResult>&) {});
  ASSERT_FALSE(h);
  EXPECT_EQ(h.error().operation, "parse_query");
}

// ---- The interest index -------------------------------------------------------------------------

TEST_F(WatchTest, AChangeToAnUnwatchedComponentTriggersNoEvaluation) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  const auto before = hub_->stats();
  const ChangeRecord r = write(kitchen_, 3, C::Switch, true);
  kitchen_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 0U);
  EXPECT_EQ(hub_->stats().evaluations, before.evaluations);
  EXPECT_EQ(a.got.size(), 1U);
}

TEST_F(WatchTest, AChangeOutsideTheScopeTriggersNoEvaluation) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  const auto before = hub_->stats();
  const ChangeRecord r = write(hall_, 0, C::Dimmer, 0.0);
  hall_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 0U);
  EXPECT_EQ(hub_->stats().evaluations, before.evaluations);
  EXPECT_EQ(a.got.size(), 1U);
}

TEST_F(WatchTest, AChangeToAnEntityTheFilterExcludesTriggersNoEvaluation) {
  // k2 has a Dimmer but no Light: presence is fixed per snapshot, so it can never match.
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  const auto before = hub_->stats();
  const ChangeRecord r = write(kitchen_, 2, C::Dimmer, 0.1);
  kitchen_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 0U);
  EXPECT_EQ(hub_->stats().evaluations, before.evaluations);
}

TEST_F(WatchTest, AWriteOfTheSameValueEvaluatesButDoesNotReport) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  const auto before = hub_->stats();
  const ChangeRecord r = write(kitchen_, 0, C::Dimmer, 0.2);
  kitchen_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 1U);
  EXPECT_EQ(hub_->stats().evaluations, before.evaluations + 1);
  EXPECT_EQ(hub_->stats().reports, before.reports);
  EXPECT_EQ(a.got.size(), 1U);
}

TEST_F(WatchTest, ACompensatingChangeEvaluatesButDoesNotReport) {
  // 0.2 + 0.4 -> 0.4 + 0.2: both entities changed, the average did not.
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  const ChangeRecord rs[] = {write(kitchen_, 0, C::Dimmer, 0.4), write(kitchen_, 1, C::Dimmer, 0.2)};
  kitchen_feed_->on_change(rs);
  EXPECT_EQ(hub_->flush(), 1U);
  EXPECT_EQ(a.got.size(), 1U);
}

TEST_F(WatchTest, ARealChangeReportsExactlyOncePerFlush) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  const auto before = hub_->stats();
  const ChangeRecord rs[] = {write(kitchen_, 0, C::Dimmer, 0.5), write(kitchen_, 1, C::Dimmer, 0.7),
                             write(kitchen_, 0, C::Dimmer, 0.6)};
  kitchen_feed_->on_change({rs, 2});
  kitchen_feed_->on_change({rs + 2, 1});  // a second batch before the flush coalesces too
  EXPECT_EQ(hub_->flush(), 1U);
  EXPECT_EQ(hub_->stats().evaluations, before.evaluations + 1);
  ASSERT_EQ(a.got.size(), 2U);
  EXPECT_NEAR(*a.last().number, 0.65, 1e-12);
  EXPECT_EQ(a.last().count, 2U);
  EXPECT_EQ(hub_->flush(), 0U) << "nothing dirty any more";
  EXPECT_EQ(a.got.size(), 2U);
}

TEST_F(WatchTest, EverySubscriberOfASharedWatcherIsToldOnce) {
  Sink a, b;
  WatchHandle ha = subscribe("avg Dimmer where Light", a);
  WatchHandle hb = subscribe("avg dimmer where light", b);
  const ChangeRecord r = write(hall_, 1, C::Dimmer, 0.0);
  hall_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 1U);
  ASSERT_EQ(a.got.size(), 2U);
  ASSERT_EQ(b.got.size(), 2U);
  EXPECT_NEAR(*a.last().number, (0.2 + 0.4 + 1.0 + 0.0) / 4, 1e-12);
  EXPECT_TRUE(same_result(a.last(), b.last()));
}

TEST_F(WatchTest, OnlyTheWatchersAChangeTouchesAreEvaluated) {
  Sink kitchen, hall, home;
  WatchHandle hk = subscribe("avg Dimmer where Light in group kitchen", kitchen);
  WatchHandle hh = subscribe("avg Dimmer where Light in group hall", hall);
  WatchHandle hw = subscribe("max Dimmer", home);
  const ChangeRecord r = write(hall_, 0, C::Dimmer, 0.5);
  hall_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 2U) << "the hall watcher and the whole-home one";
  EXPECT_EQ(kitchen.got.size(), 1U);
  EXPECT_EQ(hall.got.size(), 2U);
  EXPECT_EQ(home.got.size(), 1U) << "max is still k2's 0.9... and hall's 1.0";
}

// A new or freed watcher edits the interest index in place: entries of the other watchers move
// (swap-and-pop) but keep triggering, the freed one's are gone, and nothing is rebuilt.
TEST_F(WatchTest, WatchersComingAndGoingEditTheIndexInPlace) {
  Sink a, b, c, d;
  WatchHandle ha = subscribe("avg Dimmer where Light in group kitchen", a);
  const auto before = hub_->stats();
  WatchHandle hb = subscribe("max Dimmer in group kitchen", b);
  WatchHandle hc = subscribe("min Dimmer", c);
  WatchHandle hd = subscribe("list Dimmer where Dimmer > 0.3", d);
  EXPECT_EQ(hub_->stats().rebuilds, before.rebuilds) << "the registry did not change";
  EXPECT_EQ(hub_->stats().index_edits, before.index_edits + 3);

  const auto change_k0 = [&](double v) {
    const ChangeRecord r = write(kitchen_, 0, C::Dimmer, v);
    kitchen_feed_->on_change({&r, 1});
    return hub_->flush();
  };
  EXPECT_EQ(change_k0(0.5), 4U);
  hb.reset();  // the first of three entries on the kitchen's Dimmer list after a: moves the last one
  EXPECT_EQ(hub_->stats().index_edits, before.index_edits + 4);
  EXPECT_EQ(change_k0(0.1), 3U) << "a, c and d, not the freed b";
  EXPECT_NEAR(*a.last().number, (0.1 + 0.4) / 2, 1e-12);
  EXPECT_NEAR(*c.last().number, 0.1, 1e-12);
  ASSERT_EQ(d.last().matches.size(), 4U) << "k1, k2, h0, h1";
  ha.reset();
  EXPECT_EQ(change_k0(0.35), 2U) << "c and d";
  EXPECT_EQ(d.last().matches.size(), 5U);

  // A rescan uses the same entries: only the watchers left see the lost write.
  const std::size_t c_reports = c.got.size();
  write_quiet(kitchen_, 0, C::Dimmer, 0.05);
  kitchen_feed_->on_overflow();
  EXPECT_EQ(hub_->flush(), 2U);
  EXPECT_EQ(c.got.size(), c_reports + 1);
  EXPECT_NEAR(*c.last().number, 0.05, 1e-12);

  // Back in after leaving: a new watcher of a's query triggers again.
  Sink a2;
  WatchHandle ha2 = subscribe("avg Dimmer where Light in group kitchen", a2);
  EXPECT_NEAR(*a2.last().number, (0.05 + 0.4) / 2, 1e-12);
  EXPECT_EQ(change_k0(0.6), 3U);
  EXPECT_NEAR(*a2.last().number, 0.5, 1e-12);
  EXPECT_EQ(hub_->stats().rebuilds, before.rebuilds);
}

// Subscribing after a registry change the index has not caught up with rebuilds it once (and
// re-evaluates everyone, as any registry change does); the watchers then trigger on the new scopes.
TEST_F(WatchTest, ANewWatcherAfterARegistryChangeRebuildsTheIndexOnce) {
  Sink kitchen, home;
  WatchHandle hk = subscribe("avg Dimmer where Light in group kitchen", kitchen);
  ASSERT_TRUE(registry_.add_to_group(kitchen_group_, hall_.id));
  const auto before = hub_->stats();
  WatchHandle hh = subscribe("max Dimmer", home);
  EXPECT_EQ(hub_->stats().rebuilds, before.rebuilds + 1);
  EXPECT_EQ(hub_->flush(), 2U) << "the registry change re-evaluates every watcher once";
  EXPECT_NEAR(*kitchen.last().number, (0.2 + 0.4 + 1.0 + 1.0) / 4, 1e-12);
  const ChangeRecord r = write(hall_, 0, C::Dimmer, 0.0);
  hall_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 2U) << "the hall is in the kitchen group now";
  EXPECT_NEAR(*kitchen.last().number, (0.2 + 0.4 + 0.0 + 1.0) / 4, 1e-12);
  EXPECT_EQ(hub_->stats().rebuilds, before.rebuilds + 1);
}

TEST_F(WatchTest, CountQueriesReadNoValuesSoWritesNeverTriggerThem) {
  Sink a;
  WatchHandle h = subscribe("count Dimmer where Light", a);
  const ChangeRecord r = write(kitchen_, 0, C::Dimmer, 0.9);
  kitchen_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 0U);
  EXPECT_EQ(a.last().count, 4U);
}

TEST_F(WatchTest, ComparedComponentsAreWatched) {
  Sink a;
  WatchHandle h = subscribe("list where Dimmer > 0.5 in group kitchen", a);
  ASSERT_EQ(a.last().matches.size(), 1U);  // k2 (0.9)
  const ChangeRecord r = write(kitchen_, 0, C::Dimmer, 0.8);
  kitchen_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 1U);
  ASSERT_EQ(a.got.size(), 2U);
  ASSERT_EQ(a.last().matches.size(), 2U);
  EXPECT_EQ(a.last().matches[0].entity_id, "k0");
}

TEST_F(WatchTest, NaNResultsDoNotReportOnEveryEvaluation) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  ChangeRecord r = write(kitchen_, 0, C::Dimmer, nan);
  kitchen_feed_->on_change({&r, 1});
  hub_->flush();
  ASSERT_EQ(a.got.size(), 2U);
  EXPECT_TRUE(std::isnan(*a.last().number));
  r = write(kitchen_, 1, C::Dimmer, 0.1);  // still NaN on average
  kitchen_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 1U);
  EXPECT_EQ(a.got.size(), 2U);
}

TEST(WatchResultEquality, ComparesNumbersTruthMatchesAndValues) {
  QueryResult x{.action = Action::kList, .count = 1, .number = std::nullopt, .truth = std::nullopt, .matches = {}, .set_value = {}, .unreadable = 0, .stale_binding = false};
  x.matches.push_back(QueryMatch{.entity = {}, .entity_id = "a", .online = true, .value = ipc::Value{std::nan("")}});
  QueryResult y = x;
  EXPECT_TRUE(same_result(x, y)) << "NaN equals NaN";
  std::get<ipc::Value>(y.matches[0].value) = 1.0;
  EXPECT_FALSE(same_result(x, y));
  y = x;
  y.matches[0].online = false;
  EXPECT_FALSE(same_result(x, y));
  y = x;
  y.truth = true;
  EXPECT_FALSE(same_result(x, y));
  y = x;
  y.number = 0.0;
  EXPECT_FALSE(same_result(x, y));
  x.number = std::nan("");
  y.number = std::nan("");
  EXPECT_TRUE(same_result(x, y));
}

// ---- Overflow and stale records -----------------------------------------------------------------

TEST_F(WatchTest, AnOverflowRescanFindsExactlyTheEntitiesWhoseSequenceMoved) {
  Sink kitchen, hall;
  WatchHandle hk = subscribe("avg Dimmer where Light in group kitchen", kitchen);
  WatchHandle hh = subscribe("avg Dimmer where Light in group hall", hall);
  const auto before = hub_->stats();
  write_quiet(kitchen_, 1, C::Dimmer, 0.0);  // records lost
  write_quiet(kitchen_, 3, C::Switch, true);
  kitchen_feed_->on_overflow();
  EXPECT_EQ(hub_->stats().rescanned_entities, before.rescanned_entities + 2);
  EXPECT_EQ(hub_->flush(), 1U) << "k3 has no watcher; the hall watcher's device did not move";
  ASSERT_EQ(kitchen.got.size(), 2U);
  EXPECT_NEAR(*kitchen.last().number, 0.1, 1e-12);
  EXPECT_EQ(hall.got.size(), 1U);

  // Nothing moved since: a second overflow re-reads sequences but triggers nothing.
  kitchen_feed_->on_overflow();
  EXPECT_EQ(hub_->stats().rescanned_entities, before.rescanned_entities + 2);
  EXPECT_EQ(hub_->flush(), 0U);
}

TEST_F(WatchTest, ARecordAlreadyCoveredByARescanIsStale) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  const ChangeRecord late = write(kitchen_, 0, C::Dimmer, 0.6);
  kitchen_feed_->on_overflow();  // the rescan sees the write before its record arrives
  EXPECT_EQ(hub_->flush(), 1U);
  const auto before = hub_->stats();
  kitchen_feed_->on_change({&late, 1});
  EXPECT_EQ(hub_->stats().stale_records, before.stale_records + 1);
  EXPECT_EQ(hub_->flush(), 0U);
  EXPECT_EQ(a.got.size(), 2U);
}

TEST_F(WatchTest, ADuplicateRecordIsStale) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  const ChangeRecord r = write(kitchen_, 0, C::Dimmer, 0.6);
  const ChangeRecord rs[] = {r, r};
  kitchen_feed_->on_change(rs);
  EXPECT_EQ(hub_->stats().stale_records, 1U);
  EXPECT_EQ(hub_->flush(), 1U);
}

TEST_F(WatchTest, AttachingAFeedCatchesWritesMadeBeforeIt) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  write_quiet(kitchen_, 0, C::Dimmer, 1.0);
  auto feed = hub_->attach(kitchen_.id);
  ASSERT_TRUE(feed);
  EXPECT_EQ(hub_->flush(), 1U);
  ASSERT_EQ(a.got.size(), 2U);
  EXPECT_NEAR(*a.last().number, 0.7, 1e-12);
  EXPECT_EQ(feed->last_seq(0), kitchen_.writer->change_seq(0));
}

TEST_F(WatchTest, AttachingAnUnknownDeviceFails) {
  EXPECT_FALSE(hub_->attach(DeviceId{.index = 42, .generation = 1}));
  EXPECT_FALSE(hub_->attach(DeviceId{}));
}

// ---- Registry edits -----------------------------------------------------------------------------

TEST_F(WatchTest, AddingADeviceToTheWatchedGroupReportsAndWidensTheScope) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  ASSERT_TRUE(registry_.add_to_group(kitchen_group_, hall_.id));
  hub_->flush();
  ASSERT_EQ(a.got.size(), 2U);
  EXPECT_NEAR(*a.last().number, (0.2 + 0.4 + 1.0 + 1.0) / 4, 1e-12);
  EXPECT_EQ(a.last().count, 4U);

  // The hall's entities are now in scope: their changes trigger the kitchen watcher.
  const ChangeRecord r = write(hall_, 0, C::Dimmer, 0.0);
  hall_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 1U);
  ASSERT_EQ(a.got.size(), 3U);
  EXPECT_NEAR(*a.last().number, (0.2 + 0.4 + 0.0 + 1.0) / 4, 1e-12);
}

TEST_F(WatchTest, ADeviceGoingOfflineReportsAndStopsTriggering) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light", a);
  ASSERT_TRUE(registry_.set_online(hall_.id, false));
  hub_->flush();
  ASSERT_EQ(a.got.size(), 2U);
  EXPECT_NEAR(*a.last().number, 0.3, 1e-12);

  const auto before = hub_->stats();
  const ChangeRecord r = write(hall_, 0, C::Dimmer, 0.0);
  hall_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 0U) << "an offline device's values do not count";
  EXPECT_EQ(hub_->stats().evaluations, before.evaluations);

  ASSERT_TRUE(registry_.set_online(hall_.id, true));
  hub_->flush();
  ASSERT_EQ(a.got.size(), 3U);
  EXPECT_NEAR(*a.last().number, (0.2 + 0.4 + 0.0 + 1.0) / 4, 1e-12);
}

TEST_F(WatchTest, ARegistryEditThatChangesNothingReportsNothing) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  ASSERT_TRUE(registry_.rename_device(hall_.id, "corridor-lamps"));
  hub_->flush();
  EXPECT_EQ(a.got.size(), 1U);
}

TEST_F(WatchTest, AnUnknownGroupReportsAnErrorUntilTheGroupExists) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group attic", a);
  ASSERT_EQ(a.got.size(), 1U);
  EXPECT_FALSE(a.got.back());
  ASSERT_TRUE(registry_.rename_device(hall_.id, "corridor-lamps"));
  hub_->flush();
  EXPECT_EQ(a.got.size(), 1U) << "the same error is not reported twice";
  auto g = registry_.create_group("attic");
  ASSERT_TRUE(g);
  ASSERT_TRUE(registry_.add_to_group(*g, hall_.id));
  hub_->flush();
  ASSERT_EQ(a.got.size(), 2U);
  ASSERT_TRUE(a.got.back());
  EXPECT_NEAR(*a.last().number, 1.0, 1e-12);
}

TEST_F(WatchTest, ARemovedDevicesFeedTriggersNothingAndDoesNotCrash) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light", a);
  ASSERT_TRUE(registry_.remove_device(hall_.id));
  hub_->flush();
  ASSERT_EQ(a.got.size(), 2U);
  EXPECT_NEAR(*a.last().number, 0.3, 1e-12);
  const ChangeRecord r = write(hall_, 0, C::Dimmer, 0.0);
  hall_feed_->on_change({&r, 1});
  hall_feed_->on_overflow();
  EXPECT_EQ(hub_->flush(), 0U);
}

// ---- Hostile records ----------------------------------------------------------------------------

TEST_F(WatchTest, HostileChangeRecordsAreCountedAndIgnored) {
  Sink a;
  WatchHandle h = subscribe("avg Dimmer where Light in group kitchen", a);
  const auto before = hub_->stats();
  const std::uint64_t seq = kitchen_.writer->change_seq(0);
  const ChangeRecord rs[] = {
      {.entity = 4, .component = ipc::to_id(C::Dimmer), .reserved = 0, .seq = seq + 1},           // no such entity
      {.entity = 0xFFFFFFFF, .component = ipc::to_id(C::Dimmer), .reserved = 0, .seq = 1},        // nor this
      {.entity = 0, .component = 0, .reserved = 0, .seq = seq + 1},                               // component 0
      {.entity = 0, .component = 0xFFFF, .reserved = 0, .seq = seq + 1},                          // past the catalogue
      {.entity = 0, .component = ipc::to_id(C::Dimmer), .reserved = 0, .seq = seq + 1},           // from the future
      {.entity = 0, .component = ipc::to_id(C::Dimmer), .reserved = 0, .seq = ~std::uint64_t{0}},  // likewise
  };
  kitchen_feed_->on_change(rs);
  EXPECT_EQ(hub_->stats().ignored_records, before.ignored_records + 6);
  EXPECT_EQ(kitchen_feed_->last_seq(0), seq) << "a bogus sequence must not poison the stale check";
  EXPECT_EQ(hub_->flush(), 0U);

  // The genuine next record still works.
  const ChangeRecord r = write(kitchen_, 0, C::Dimmer, 0.0);
  kitchen_feed_->on_change({&r, 1});
  EXPECT_EQ(hub_->flush(), 1U);
  EXPECT_EQ(a.got.size(), 2U);
}

TEST(WatchRecords, DecodingRefusesPayloadsOfTheWrongSize) {
  const ChangeRecord r{.entity = 7, .component = 3, .reserved = 0, .seq = 9};
  const auto* bytes = reinterpret_cast<const std::byte*>(&r);
  const auto ok = decode_change_record({bytes, sizeof r});
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->entity, 7U);
  EXPECT_EQ(ok->component, 3U);
  EXPECT_EQ(ok->seq, 9U);
  EXPECT_FALSE(decode_change_record({bytes, sizeof r - 1}));
  EXPECT_FALSE(decode_change_record({}));
}

// ---- Callbacks ----------------------------------------------------------------------------------

TEST_F(WatchTest, ACallbackMayUnsubscribeItself) {
  std::optional<WatchHandle> h;
  int calls = 0;
  auto r = hub_->subscribe(q("avg Dimmer where Light in group kitchen"), [&](const Result<QueryResult>&) {
    if (++calls == 2) h->reset();
  });
  ASSERT_TRUE(r);
  h.emplace(std::move(*r));
  ChangeRecord rec = write(kitchen_, 0, C::Dimmer, 0.9);
  kitchen_feed_->on_change({&rec, 1});
  hub_->flush();
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(hub_->watcher_count(), 0U) << "the deferred unsubscribe completed when flush returned";
  rec = write(kitchen_, 0, C::Dimmer, 0.1);
  kitchen_feed_->on_change({&rec, 1});
  hub_->flush();
  EXPECT_EQ(calls, 2);
}

TEST_F(WatchTest, ACallbackUnsubscribingAnotherSubscriberSilencesItAtOnce) {
  std::optional<WatchHandle> second;
  int first_calls = 0, second_calls = 0;
  auto h1 = hub_->subscribe(q("avg Dimmer where Light"), [&](const Result<QueryResult>&) {
    if (++first_calls == 2) second->reset();
  });
  ASSERT_TRUE(h1);
  auto h2 = hub_->subscribe(q("avg Dimmer where Light"), [&](const Result<QueryResult>&) { ++second_calls; });
  ASSERT_TRUE(h2);
  second.emplace(std::move(*h2));
  const ChangeRecord rec = write(kitchen_, 0, C::Dimmer, 0.9);
  kitchen_feed_->on_change({&rec, 1});
  hub_->flush();
  EXPECT_EQ(first_calls, 2);
  EXPECT_EQ(second_calls, 1) << "only the initial result";
  EXPECT_EQ(hub_->subscriber_count(q("avg Dimmer where Light")), 1U);
}

TEST_F(WatchTest, SubscribingFromACallbackIsRefused) {
  bool refused = false;
  auto h = hub_->subscribe(q("avg Dimmer where Light"), [&](const Result<QueryResult>&) {
    refused = !hub_->subscribe(q("max Dimmer"), [](const Result<QueryResult>&) {});
  });
  ASSERT_TRUE(h);
  EXPECT_TRUE(refused);
  EXPECT_EQ(hub_->watcher_count(), 1U);
}

}  // namespace
}  // namespace floe::core
