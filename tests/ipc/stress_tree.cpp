// The device tree under a writer running flat out and concurrent readers.
//
// Texts and lists are written so that any torn copy is detectable: every byte of one write is the
// same character, and the length is a function of that character. A reader that ever returns a
// mix of two writes (or a length from one and bytes from another) fails the test.
#include "floe/ipc/tree.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "support/environment.hpp"

namespace floe::ipc {
namespace {

using C = Component;

constexpr std::uint32_t kTextCapacity = 200;
constexpr EntityIndex kEntities = 3;

struct Buffer {
  explicit Buffer(std::size_t n) : mem(static_cast<std::byte*>(std::aligned_alloc(64, (n + 63) / 64 * 64))), size(n) {}
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> mem;
  std::size_t size;
  std::span<std::byte> span() const { return {mem.get(), size}; }
};

/// Length of a text made of `c`: different for every letter, from 1 up to the full capacity.
std::size_t text_length(char c) { return 1 + static_cast<std::size_t>(c - 'a') * (kTextCapacity - 1) / 25; }
std::string text_for(std::uint64_t i) {
  const char c = static_cast<char>('a' + i % 26);
  return std::string(text_length(c), c);
}
/// A list of (1 + i % 4) items, each made of the same letter.
std::vector<std::string> list_for(std::uint64_t i) {
  const char c = static_cast<char>('a' + i % 26);
  return std::vector<std::string>(1 + i % 4, std::string(1 + i % 20, c));
}

bool text_is_whole(const std::string& s) {
  if (s.empty()) return true;  // never written yet
  for (char ch : s) {
    if (ch != s[0]) return false;
  }
  return s[0] >= 'a' && s[0] <= 'z' && s.size() == text_length(s[0]);
}
bool list_is_whole(const std::vector<std::string>& items) {
  if (items.empty()) return true;
  const std::string& first = items[0];
  if (first.empty() || items.size() > 4) return false;
  for (const std::string& item : items) {
    if (item != first) return false;
  }
  for (char ch : first) {
    if (ch != first[0]) return false;
  }
  return true;
}

struct Fixture {
  Fixture() {
    TreeSchema s;
    for (EntityIndex e = 0; e < kEntities; ++e) {
      s.entities.push_back({{{C::Integer}, {C::Text, kTextCapacity}, {C::TextList, 256}, {C::Dimmer}}});
    }
    auto l = TreeLayout::compute(s);
    EXPECT_TRUE(l);
    layout = std::move(*l);
    buffer = std::make_unique<Buffer>(layout.size());
    EXPECT_TRUE(tree_init(buffer->span(), layout));
  }
  TreeLayout layout;
  std::unique_ptr<Buffer> buffer;
};

TEST(TreeStress, TextAndListReadersNeverSeeAMixOfTwoWrites) {
  Fixture f;
  auto writer = TreeWriter::attach(f.buffer->span());
  ASSERT_TRUE(writer) << writer.error().to_string();
  const std::uint64_t writes = test::scaled(1'000'000, 10'000);
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> torn{0}, ok_reads{0}, failed_reads{0};
  std::atomic<int> started{0};

  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&, t] {
      auto reader = TreeReader::attach(f.buffer->span());
      if (!reader) {
        failed_reads.fetch_add(1'000'000, std::memory_order_relaxed);
        return;
      }
      std::uint64_t i = 0;
      started.fetch_add(1, std::memory_order_release);
      // One more pass after `done`, on quiescent data: at least one read always completes.
      for (bool last = false; !last;) {
        last = done.load(std::memory_order_acquire);
        const EntityIndex e = static_cast<EntityIndex>((i++ + static_cast<std::uint64_t>(t)) % kEntities);
        if (auto text = reader->read_text(e, C::Text)) {
          ok_reads.fetch_add(1, std::memory_order_relaxed);
          if (!text_is_whole(*text)) torn.fetch_add(1, std::memory_order_relaxed);
        } else {
          failed_reads.fetch_add(1, std::memory_order_relaxed);  // contended: allowed, counted
        }
        if (auto list = reader->read_list(e, C::TextList)) {
          ok_reads.fetch_add(1, std::memory_order_relaxed);
          if (!list_is_whole(*list)) torn.fetch_add(1, std::memory_order_relaxed);
        } else if (list.error().message.find("list.decode") != std::string::npos) {
          torn.fetch_add(1, std::memory_order_relaxed);  // a torn length/body would fail to decode
        } else {
          failed_reads.fetch_add(1, std::memory_order_relaxed);
        }
      }
    });
  }
  while (started.load(std::memory_order_acquire) < 2) std::this_thread::yield();
  for (std::uint64_t i = 1; i <= writes; ++i) {
    const EntityIndex e = static_cast<EntityIndex>(i % kEntities);
    ASSERT_EQ(writer->set_text(e, C::Text, text_for(i)), TreeWriteStatus::kOk);
    ASSERT_EQ(writer->set_list(e, C::TextList, list_for(i)), TreeWriteStatus::kOk);
  }
  done.store(true, std::memory_order_release);
  for (auto& t : readers) t.join();

  EXPECT_EQ(torn.load(), 0U);
  EXPECT_GT(ok_reads.load(), 0U);
  EXPECT_LT(failed_reads.load(), 1'000'000U);  // both readers attached
  RecordProperty("failed_reads", static_cast<int>(failed_reads.load()));

  auto reader = TreeReader::attach(f.buffer->span());
  ASSERT_TRUE(reader);
  const EntityIndex last = static_cast<EntityIndex>(writes % kEntities);
  EXPECT_EQ(*reader->read_text(last, C::Text), text_for(writes));
  EXPECT_EQ(*reader->read_list(last, C::TextList), list_for(writes));
}

// SYNC(tree-change) from the reader's side: a reader that sees change sequence s must then see
// the value of write s or a later one, and sequences never go backwards.
TEST(TreeStress, AValueIsNeverOlderThanTheChangeSequenceThatAnnouncedIt) {
  Fixture f;
  auto writer = TreeWriter::attach(f.buffer->span());
  ASSERT_TRUE(writer);
  const std::uint64_t writes = test::scaled(2'000'000, 20'000);
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> stale{0}, backwards{0}, observed{0};
  std::atomic<bool> started{false};

  std::thread reader_thread([&] {
    auto reader = TreeReader::attach(f.buffer->span());
    if (!reader) {
      stale.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    std::uint64_t last_seq = 0;
    started.store(true, std::memory_order_release);
    for (bool last = false; !last;) {
      last = done.load(std::memory_order_acquire);
      const std::uint64_t seq = reader->change_seq(0);
      const auto v = reader->get(0, C::Integer);
      // Write k stores Integer = k, then bumps the sequence to k (entity 0 gets nothing else).
      if (!v || std::get<std::int64_t>(*v) < static_cast<std::int64_t>(seq)) stale.fetch_add(1, std::memory_order_relaxed);
      if (seq < last_seq) backwards.fetch_add(1, std::memory_order_relaxed);
      if (seq != last_seq) observed.fetch_add(1, std::memory_order_relaxed);
      last_seq = seq;
    }
  });
  while (!started.load(std::memory_order_acquire)) std::this_thread::yield();
  for (std::uint64_t i = 1; i <= writes; ++i) {
    ASSERT_EQ(writer->set(0, C::Integer, static_cast<std::int64_t>(i)), TreeWriteStatus::kOk);
    // Other entities' writes must not disturb entity 0's sequence.
    ASSERT_EQ(writer->set(1 + static_cast<EntityIndex>(i % 2), C::Dimmer, static_cast<double>(i)), TreeWriteStatus::kOk);
  }
  done.store(true, std::memory_order_release);
  reader_thread.join();

  EXPECT_EQ(stale.load(), 0U);
  EXPECT_EQ(backwards.load(), 0U);
  RecordProperty("sequence_changes_observed", static_cast<int>(observed.load()));
  auto reader = TreeReader::attach(f.buffer->span());
  ASSERT_TRUE(reader);
  EXPECT_EQ(reader->change_seq(0), writes);
  EXPECT_EQ(reader->get(0, C::Integer), Value{static_cast<std::int64_t>(writes)});
}

// The query engine's loop (AND presence words, ctz, load values[slot]) running while the writer
// updates the same columns: every value it reads is one the writer wrote.
TEST(TreeStress, ColumnScansDuringWritesOnlySeeWrittenValues) {
  TreeSchema s;
  for (int i = 0; i < 256; ++i) s.entities.push_back({{{C::Light}, {C::Dimmer}}});
  auto layout = TreeLayout::compute(s);
  ASSERT_TRUE(layout);
  Buffer buf(layout->size());
  ASSERT_TRUE(tree_init(buf.span(), *layout));
  auto writer = TreeWriter::attach(buf.span());
  ASSERT_TRUE(writer);
  const std::uint64_t writes = test::scaled(1'000'000, 10'000);
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> bad{0}, scans{0};
  std::atomic<bool> started{false};

  std::thread scanner([&] {
    auto reader = TreeReader::attach(buf.span());
    if (!reader) {
      bad.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    started.store(true, std::memory_order_release);
    for (bool last = false; !last;) {
      last = done.load(std::memory_order_acquire);
      for (std::uint32_t c = 0; c < reader->chunks().size(); ++c) {
        const TreeColumnView* light = reader->column(c, C::Light);
        const TreeColumnView* dimmer = reader->column(c, C::Dimmer);
        for (std::uint64_t m = light->presence & dimmer->presence; m != 0; m &= m - 1) {
          const double v = std::bit_cast<double>(dimmer->values[std::countr_zero(m)].load(std::memory_order_relaxed));
          // Written values are k / 1024 for whole k in [0, 1024]: exact in binary.
          if (!(v >= 0.0 && v <= 1.0) || v * 1024.0 != static_cast<double>(static_cast<int>(v * 1024.0))) {
            bad.fetch_add(1, std::memory_order_relaxed);
          }
        }
      }
      scans.fetch_add(1, std::memory_order_relaxed);
    }
  });
  while (!started.load(std::memory_order_acquire)) std::this_thread::yield();
  for (std::uint64_t i = 0; i < writes; ++i) {
    ASSERT_EQ(writer->set(static_cast<EntityIndex>(i % 256), C::Dimmer, static_cast<double>(i % 1025) / 1024.0),
              TreeWriteStatus::kOk);
  }
  done.store(true, std::memory_order_release);
  scanner.join();
  EXPECT_EQ(bad.load(), 0U);
  EXPECT_GT(scans.load(), 0U);
}

}  // namespace
}  // namespace floe::ipc
