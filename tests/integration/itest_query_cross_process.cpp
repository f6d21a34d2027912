// Queries over devices written by a real provider process. The child writes Dimmer and Switch
// values into four device regions as fast as it can, drawing every Dimmer from a known set; the
// parent evaluates avg/count/min/max/sum through the registry and engine meanwhile and checks that
// every result is one the child's writes can produce. Then the child writes a final known state and
// exits, and the parent checks exact results.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "floe/core/engine.hpp"
#include "floe/core/registry.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/tree.hpp"
#include "support/child_process.hpp"
#include "support/environment.hpp"

namespace floe::core {
namespace {

using C = ipc::Component;

constexpr int kDevices = 4;
constexpr ipc::EntityIndex kLightsPerDevice = 3;
constexpr int kTotalLights = kDevices * static_cast<int>(kLightsPerDevice);
// Every Dimmer value the child writes (the initial 0.0 aside): tenths, so sums are recognisable.
constexpr std::array<double, 9> kLevels = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9};

ipc::TreeSchema schema() {
  ipc::TreeSchema s;
  for (ipc::EntityIndex e = 0; e < kLightsPerDevice; ++e) s.entities.push_back({{{C::Light}, {C::Switch}, {C::Dimmer}}});
  s.entities.push_back({{{C::Sensor}, {C::Real}}});  // not a light: must never be aggregated
  return s;
}

/// The final state: light e of device d at level kLevels[(d * 3 + e) % 9], on for even e.
double final_level(int d, ipc::EntityIndex e) { return kLevels[(static_cast<std::size_t>(d) * kLightsPerDevice + e) % kLevels.size()]; }
bool final_switch(ipc::EntityIndex e) { return e % 2 == 0; }

int child_fail(int code, const std::string& what) {
  std::fprintf(stderr, "query writer child: %s\n", what.c_str());
  return code;
}

// args: number of writes. Regions arrive as fds 3 .. 3 + kDevices - 1.
FLOE_CHILD_ROLE(query_writer) {
  if (args.size() != 1) return child_fail(2, "usage: writes");
  const std::uint64_t writes = std::stoull(args[0]);
  std::vector<ipc::Region> regions;
  std::vector<ipc::TreeWriter> writers;
  for (int d = 0; d < kDevices; ++d) {
    auto region = ipc::Region::open(ipc::Fd(3 + d), {.require_kind = true, .kind = ipc::RegionKind::kDevice});
    if (!region) return child_fail(3, region.error().to_string());
    auto writer = ipc::TreeWriter::attach(region->payload());
    if (!writer) return child_fail(4, writer.error().to_string());
    regions.push_back(std::move(*region));
    writers.push_back(std::move(*writer));
  }
  for (std::uint64_t i = 0; i < writes; ++i) {
    const auto d = static_cast<std::size_t>(i % kDevices);
    const auto e = static_cast<ipc::EntityIndex>((i / kDevices) % kLightsPerDevice);
    if (writers[d].set(e, C::Dimmer, ipc::Value{kLevels[(i * 7) % kLevels.size()]}) != ipc::TreeWriteStatus::kOk ||
        writers[d].set(e, C::Switch, ipc::Value{(i / 3) % 2 == 0}) != ipc::TreeWriteStatus::kOk ||
        writers[d].set(kLightsPerDevice, C::Real, ipc::Value{1e6}) != ipc::TreeWriteStatus::kOk) {
      return child_fail(5, "write failed");
    }
  }
  for (int d = 0; d < kDevices; ++d) {
    for (ipc::EntityIndex e = 0; e < kLightsPerDevice; ++e) {
      if (writers[static_cast<std::size_t>(d)].set(e, C::Dimmer, ipc::Value{final_level(d, e)}) != ipc::TreeWriteStatus::kOk ||
          writers[static_cast<std::size_t>(d)].set(e, C::Switch, ipc::Value{final_switch(e)}) != ipc::TreeWriteStatus::kOk) {
        return child_fail(6, "final write failed");
      }
    }
  }
  return 0;
}

bool child_exited(pid_t pid) {
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
}

bool is_level(double x) {
  return x == 0.0 || std::find(kLevels.begin(), kLevels.end(), x) != kLevels.end();
}
/// A sum of n values from {0} ∪ kLevels is a whole number of tenths between 0 and 0.9 n.
bool is_sum_of_levels(double sum, int n) {
  const double tenths = sum * 10;
  return std::abs(tenths - std::round(tenths)) < 1e-6 && tenths > -1e-6 && tenths < 9.0 * n + 1e-6;
}

Query q(Action a, std::optional<C> target, Filter where = {}, std::vector<Scope> scopes = {}) {
  return Query{.action = a, .target = target, .where = std::move(where), .scopes = std::move(scopes), .set_value = {}};
}
Filter has(C c) { return Filter{.kind = Filter::Kind::kHas, .component = c, .op = {}, .value = {}, .children = {}}; }
Filter switched_on() {
  return Filter{.kind = Filter::Kind::kCompare, .component = C::Switch, .op = CompareOp::kEq, .value = true, .children = {}};
}

TEST(QueryCrossProcess, EveryResultIsConsistentWithTheChildsWritesAndTheFinalStateIsExact) {
  const auto layout = ipc::TreeLayout::compute(schema());
  ASSERT_TRUE(layout) << layout.error().to_string();
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t size = (ipc::kRegionPayloadOffset + layout->size() + page - 1) / page * page;

  Registry registry;
  std::vector<ipc::Fd> child_fds;
  std::vector<int> inherit;
  auto upstairs = registry.create_group("upstairs");
  ASSERT_TRUE(upstairs);
  for (int d = 0; d < kDevices; ++d) {
    auto region = ipc::Region::create({.name = "itest-query", .size = size, .kind = ipc::RegionKind::kDevice});
    ASSERT_TRUE(region) << region.error().to_string();
    ASSERT_TRUE(ipc::tree_init(region->payload(), *layout));
    auto fd = region->share(ipc::RegionAccess::kReadWrite);
    ASSERT_TRUE(fd) << fd.error().to_string();
    auto shared = std::make_shared<ipc::Region>(std::move(*region));
    auto reader = ipc::TreeReader::attach(shared->payload());
    ASSERT_TRUE(reader) << reader.error().to_string();
    std::vector<std::string> ids;
    for (ipc::EntityIndex e = 0; e <= kLightsPerDevice; ++e) ids.push_back("dev" + std::to_string(d) + "_" + std::to_string(e));
    auto id = registry.add_device({.name = "dev" + std::to_string(d), .provider = "child", .entity_ids = ids,
                                   .entity_names = {}, .reader = std::make_shared<const ipc::TreeReader>(std::move(*reader)),
                                   .keepalive = shared, .online = true});
    ASSERT_TRUE(id) << id.error().to_string();
    if (d >= 2) {
      ASSERT_TRUE(registry.add_to_group(*upstairs, *id));
    }
    inherit.push_back(fd->get());
    child_fds.push_back(std::move(*fd));
  }

  auto snap = registry.snapshot();
  auto avg = bind(q(Action::kAvg, C::Dimmer, has(C::Light)), *snap);
  auto mn = bind(q(Action::kMin, C::Dimmer, has(C::Light)), *snap);
  auto mx = bind(q(Action::kMax, C::Dimmer, has(C::Light)), *snap);
  auto sum_up = bind(q(Action::kSum, C::Dimmer, has(C::Light), {{.kind = Scope::Kind::kGroup, .name = "upstairs"}}), *snap);
  auto on = bind(q(Action::kCount, std::nullopt, switched_on()), *snap);
  ASSERT_TRUE(avg && mn && mx && sum_up && on);

  const std::uint64_t writes = test::scaled(3'000'000, 30'000);
  auto child = test::spawn_child("query_writer", {std::to_string(writes)}, inherit);
  ASSERT_TRUE(child) << child.error().to_string();
  child_fds.clear();

  std::uint64_t passes = 0, bad_avg = 0, bad_min = 0, bad_max = 0, bad_sum = 0, bad_count = 0;
  std::vector<double> distinct_avgs;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  // At least one pass, even if the writer finished before this loop first ran.
  for (bool first = true; first || (!child_exited(child->pid()) && std::chrono::steady_clock::now() < deadline);
       first = false) {
    ++passes;
    const QueryResult a = evaluate(*avg, *snap);
    if (a.count != kTotalLights || !a.number || !is_sum_of_levels(*a.number * kTotalLights, kTotalLights)) ++bad_avg;
    else if (distinct_avgs.size() < 64 && std::find(distinct_avgs.begin(), distinct_avgs.end(), *a.number) == distinct_avgs.end()) {
      distinct_avgs.push_back(*a.number);
    }
    const QueryResult lo = evaluate(*mn, *snap);
    if (lo.count != kTotalLights || !lo.number || !is_level(*lo.number)) ++bad_min;
    const QueryResult hi = evaluate(*mx, *snap);
    if (hi.count != kTotalLights || !hi.number || !is_level(*hi.number)) ++bad_max;
    const QueryResult s = evaluate(*sum_up, *snap);
    if (s.count != 2 * kLightsPerDevice || !s.number || !is_sum_of_levels(*s.number, 2 * kLightsPerDevice)) ++bad_sum;
    const QueryResult c = evaluate(*on, *snap);
    if (c.count > static_cast<std::uint64_t>(kTotalLights)) ++bad_count;
  }
  ASSERT_EQ(child->wait(), 0) << "the writer child failed";
  EXPECT_EQ(bad_avg, 0U);
  EXPECT_EQ(bad_min, 0U);
  EXPECT_EQ(bad_max, 0U);
  EXPECT_EQ(bad_sum, 0U);
  EXPECT_EQ(bad_count, 0U);
  EXPECT_GT(passes, 0U);
  RecordProperty("passes", static_cast<int>(passes));
  RecordProperty("distinct_averages_seen", static_cast<int>(distinct_avgs.size()));

  // The final state, exactly.
  double sum = 0, sum_upstairs = 0, lo = 1, hi = 0;
  std::uint64_t switched = 0;
  for (int d = 0; d < kDevices; ++d) {
    for (ipc::EntityIndex e = 0; e < kLightsPerDevice; ++e) {
      sum += final_level(d, e);
      if (d >= 2) sum_upstairs += final_level(d, e);
      lo = std::min(lo, final_level(d, e));
      hi = std::max(hi, final_level(d, e));
      switched += final_switch(e) ? 1 : 0;
    }
  }
  EXPECT_NEAR(*evaluate(*avg, *snap).number, sum / kTotalLights, 1e-12);
  EXPECT_EQ(*evaluate(*mn, *snap).number, lo);
  EXPECT_EQ(*evaluate(*mx, *snap).number, hi);
  EXPECT_NEAR(*evaluate(*sum_up, *snap).number, sum_upstairs, 1e-12);
  EXPECT_EQ(evaluate(*on, *snap).count, switched);
  auto listed = run(q(Action::kList, C::Dimmer, has(C::Light), {{.kind = Scope::Kind::kDevice, .name = "dev1"}}), *snap);
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->matches.size(), kLightsPerDevice);
  for (ipc::EntityIndex e = 0; e < kLightsPerDevice; ++e) {
    EXPECT_EQ(listed->matches[e].entity_id, "dev1_" + std::to_string(e));
    EXPECT_EQ(listed->matches[e].value, EntityValue{ipc::Value{final_level(1, e)}});
  }
}

}  // namespace
}  // namespace floe::core
