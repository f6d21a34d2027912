// The device tree between real processes: the parent (the core) creates a sealed region holding a
// tree, hands it to a child (the provider), which writes values, texts and lists as fast as it can
// while the parent reads through a separate read-only mapping. Everything the parent sees must be
// something the child could have written, whole; change sequences never go backwards and never
// run ahead of the values they announce.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "floe/ipc/region.hpp"
#include "floe/ipc/tree.hpp"
#include "support/child_process.hpp"
#include "support/environment.hpp"

namespace floe::ipc {
namespace {

using C = Component;

constexpr int kChildRegionFd = 3;
constexpr EntityIndex kEntities = 5;
constexpr std::uint32_t kTextCapacity = 96;
// Each round for an entity writes, in this order: Integer, Dimmer, Text, TextList.
constexpr std::uint64_t kWritesPerRound = 4;

TreeSchema schema() {
  TreeSchema s;
  for (EntityIndex e = 0; e < kEntities; ++e) {
    s.entities.push_back({{{C::Integer}, {C::Dimmer}, {C::Text, kTextCapacity}, {C::TextList, 128}}});
  }
  s.entities[0].components.push_back({C::Boolean});  // "the child is done"
  return s;
}

// What write i (1-based) puts into entity i % kEntities. All derived from i so the parent can
// recognise every legitimate value and any torn one.
std::size_t text_length(char c) { return 1 + static_cast<std::size_t>(c - 'a') * (kTextCapacity - 1) / 25; }
std::string text_for(std::uint64_t i) {
  const char c = static_cast<char>('a' + i % 26);
  return std::string(text_length(c), c);
}
std::vector<std::string> list_for(std::uint64_t i) {
  return std::vector<std::string>(1 + i % 3, std::string(1 + i % 17, static_cast<char>('A' + i % 26)));
}
double dimmer_for(std::uint64_t i) { return static_cast<double>(i % 1000) / 1000.0; }

/// How many rounds entity e had completed (at least its Integer write) when it held `v`.
std::uint64_t round_of(EntityIndex e, std::uint64_t v) {
  if (v == 0) return 0;
  return e == 0 ? v / kEntities : (v - e) / kEntities + 1;
}

/// The last write (largest i <= writes with i % kEntities == e) and the rounds entity e gets.
std::uint64_t last_write_for(EntityIndex e, std::uint64_t writes) {
  return writes - (writes % kEntities + kEntities - e) % kEntities;
}
std::uint64_t final_rounds(EntityIndex e, std::uint64_t writes) { return round_of(e, last_write_for(e, writes)); }

int child_fail(int code, const std::string& what) {
  std::fprintf(stderr, "tree writer child: %s\n", what.c_str());
  return code;
}

// args: number of writes.
FLOE_CHILD_ROLE(tree_writer) {
  if (args.size() != 1) return child_fail(2, "usage: writes");
  const std::uint64_t writes = std::stoull(args[0]);
  auto region = Region::open(Fd(kChildRegionFd), {.require_kind = true, .kind = RegionKind::kDevice});
  if (!region) return child_fail(3, region.error().to_string());
  auto writer = TreeWriter::attach(region->payload());
  if (!writer) return child_fail(4, writer.error().to_string());
  for (std::uint64_t i = 1; i <= writes; ++i) {
    const auto e = static_cast<EntityIndex>(i % kEntities);
    const TreeWriteStatus st[] = {
        writer->set(e, C::Integer, static_cast<std::int64_t>(i)),
        writer->set(e, C::Dimmer, dimmer_for(i)),
        writer->set_text(e, C::Text, text_for(i)),
        writer->set_list(e, C::TextList, list_for(i)),
    };
    for (TreeWriteStatus s : st) {
      if (s != TreeWriteStatus::kOk) return child_fail(5, "write " + std::to_string(i) + ": " + std::string(to_string(s)));
    }
  }
  if (writer->set(0, C::Boolean, true) != TreeWriteStatus::kOk) return child_fail(6, "done flag");
  return 0;
}

/// True once the child has exited (without reaping it: Child::wait does that).
bool child_exited(pid_t pid) {
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
}

bool text_is_whole(const std::string& s) {
  if (s.empty()) return true;
  for (char ch : s) {
    if (ch != s[0]) return false;
  }
  return s[0] >= 'a' && s[0] <= 'z' && s.size() == text_length(s[0]);
}
bool list_is_whole(const std::vector<std::string>& items) {
  if (items.empty()) return true;
  if (items.size() > 3 || items[0].empty() || items[0].size() > 17) return false;
  for (const auto& it : items) {
    if (it != items[0]) return false;
    for (char ch : it) {
      if (ch != it[0]) return false;
    }
  }
  return true;
}

TEST(TreeCrossProcess, ParentReadsOnlyWholeValuesTheChildWroteWhileItWrites) {
  const auto layout = TreeLayout::compute(schema());
  ASSERT_TRUE(layout) << layout.error().to_string();
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t want = kRegionPayloadOffset + layout->size();
  auto region = Region::create({.name = "itest-tree", .size = (want + page - 1) / page * page, .kind = RegionKind::kDevice});
  ASSERT_TRUE(region) << region.error().to_string();
  ASSERT_TRUE(tree_init(region->payload(), *layout));

  // The parent reads through its own read-only mapping, like an inspector would.
  auto ro_fd = region->share(RegionAccess::kReadOnly);
  ASSERT_TRUE(ro_fd) << ro_fd.error().to_string();
  auto ro = Region::open(std::move(*ro_fd), {.access = RegionAccess::kReadOnly});
  ASSERT_TRUE(ro) << ro.error().to_string();
  auto reader = TreeReader::attach(ro->payload());
  ASSERT_TRUE(reader) << reader.error().to_string();

  auto rw_fd = region->share(RegionAccess::kReadWrite);
  ASSERT_TRUE(rw_fd);
  const std::uint64_t writes = test::scaled(2'000'000, 20'000);
  auto child = test::spawn_child("tree_writer", {std::to_string(writes)}, {rw_fd->get()});
  ASSERT_TRUE(child) << child.error().to_string();

  std::vector<std::uint64_t> last_seq(kEntities, 0), last_int(kEntities, 0);
  std::uint64_t bad_int = 0, bad_dimmer = 0, torn_text = 0, torn_list = 0, seq_backwards = 0, seq_ahead = 0;
  std::uint64_t read_errors = 0, passes = 0, seq_changes = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  bool done = false;
  bool exited = false;
  while (!done) {
    // Sample the flag first: if it is set, this pass reads the final state.
    done = reader->get(0, C::Boolean) == Value{true};
    if (!done && (exited || std::chrono::steady_clock::now() > deadline)) break;
    exited = child_exited(child->pid());  // one more pass after exit, then stop
    ++passes;
    for (EntityIndex e = 0; e < kEntities; ++e) {
      const std::uint64_t seq = reader->change_seq(e);  // acquire: what follows is at least this new
      if (seq < last_seq[e]) ++seq_backwards;
      if (seq != last_seq[e]) ++seq_changes;
      last_seq[e] = seq;

      const auto v = reader->get(e, C::Integer);
      const auto i = v ? static_cast<std::uint64_t>(std::get<std::int64_t>(*v)) : ~std::uint64_t{0};
      if (!v || (i != 0 && (i > writes || i % kEntities != e)) || i < last_int[e]) {
        ++bad_int;
      } else {
        last_int[e] = i;
        // Sequence s announces at least ceil(s / 4) Integer writes. (Entity 0's done flag is one
        // extra write after its last round.)
        const std::uint64_t counted = std::min(seq, final_rounds(e, writes) * kWritesPerRound);
        if (round_of(e, i) < (counted + kWritesPerRound - 1) / kWritesPerRound) ++seq_ahead;
      }
      const auto d = reader->get(e, C::Dimmer);
      if (!d || std::get<double>(*d) < 0 || std::get<double>(*d) >= 1 ||
          std::round(std::get<double>(*d) * 1000) / 1000 != std::get<double>(*d)) {
        ++bad_dimmer;
      }
      if (auto t = reader->read_text(e, C::Text)) {
        if (!text_is_whole(*t)) ++torn_text;
      } else {
        ++read_errors;
      }
      if (auto l = reader->read_list(e, C::TextList)) {
        if (!list_is_whole(*l)) ++torn_list;
      } else if (l.error().message.find("list.decode") != std::string::npos) {
        ++torn_list;
      } else {
        ++read_errors;
      }
    }
  }
  const int code = child->wait();
  ASSERT_EQ(code, 0) << "the writer child failed";
  ASSERT_TRUE(done) << "never saw the child's done flag (child exited: " << exited << ")";

  EXPECT_EQ(bad_int, 0U);
  EXPECT_EQ(bad_dimmer, 0U);
  EXPECT_EQ(torn_text, 0U);
  EXPECT_EQ(torn_list, 0U);
  EXPECT_EQ(seq_backwards, 0U);
  EXPECT_EQ(seq_ahead, 0U);
  RecordProperty("passes", static_cast<int>(passes));
  RecordProperty("sequence_changes_seen", static_cast<int>(seq_changes));
  RecordProperty("contended_reads", static_cast<int>(read_errors));

  // The final state is exactly the last write to each entity.
  for (EntityIndex e = 0; e < kEntities; ++e) {
    const std::uint64_t last = last_write_for(e, writes);
    ASSERT_EQ(last % kEntities, e);
    EXPECT_EQ(reader->get(e, C::Integer), Value{static_cast<std::int64_t>(last)}) << e;
    EXPECT_EQ(reader->get(e, C::Dimmer), Value{dimmer_for(last)}) << e;
    EXPECT_EQ(*reader->read_text(e, C::Text), text_for(last)) << e;
    EXPECT_EQ(*reader->read_list(e, C::TextList), list_for(last)) << e;
    const std::uint64_t expected_seq = final_rounds(e, writes) * kWritesPerRound + (e == 0 ? 1 : 0);
    EXPECT_EQ(reader->change_seq(e), expected_seq) << e;
  }
}

}  // namespace
}  // namespace floe::ipc
