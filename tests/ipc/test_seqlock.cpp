#include "floe/ipc/seqlock.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>

namespace floe::ipc {
namespace {

struct Reading {
  std::int64_t value;
  double scale;
  std::array<char, 20> unit;
};

TEST(Seqlock, LoadReturnsWhatWasStored) {
  Seqlock<Reading> lock;
  Reading in{42, 0.5, {"celsius"}};
  lock.store(in);
  Reading out{};
  ASSERT_EQ(lock.load(out), SeqlockRead::kOk);
  EXPECT_EQ(out.value, 42);
  EXPECT_EQ(out.scale, 0.5);
  EXPECT_STREQ(out.unit.data(), "celsius");
}

TEST(Seqlock, EachStoreAdvancesTheSequenceByTwo) {
  Seqlock<std::uint64_t> lock;
  const auto before = lock.word().seq.load();
  lock.store(1);
  lock.store(2);
  EXPECT_EQ(lock.word().seq.load(), before + 4);
  EXPECT_FALSE(lock.word().write_in_progress());
}

TEST(Seqlock, ReaderReportsWriterStuckMidWriteInsteadOfSpinningForever) {
  Seqlock<std::uint64_t> lock;
  lock.store(7);
  // A writer that died between begin and end leaves the sequence odd forever.
  lock.word().write_begin();
  EXPECT_TRUE(lock.word().write_in_progress());
  std::uint64_t out = 0;
  EXPECT_EQ(lock.load(out, 1000), SeqlockRead::kWriterStuck);
}

TEST(Seqlock, ReaderRecoversOnceTheWriterFinishes) {
  Seqlock<std::uint64_t> lock;
  lock.word().write_begin();
  std::uint64_t out = 0;
  ASSERT_EQ(lock.load(out, 10), SeqlockRead::kWriterStuck);
  lock.word().write_end();
  EXPECT_EQ(lock.load(out), SeqlockRead::kOk);
}

TEST(Seqlock, ReaderReportsContentionWhenTheSequenceKeepsChanging) {
  SeqlockWord word;
  unsigned calls = 0;
  // A read function that simulates a writer completing a whole write during every attempt.
  const auto r = word.read(
      [&] {
        ++calls;
        word.write_begin();
        word.write_end();
      },
      5);
  EXPECT_EQ(r, SeqlockRead::kContended);
  EXPECT_EQ(calls, 5U);
}

// A writer that spoils every copy costs the reader max_copies copies, however many attempts it
// allows (a blob read bounds its copies in bytes this way); looks at an odd sequence copy nothing.
TEST(Seqlock, CopiesAreBoundedSeparatelyFromAttempts) {
  SeqlockWord word;
  unsigned calls = 0;
  const auto spoil = [&] {
    ++calls;
    word.write_begin();
    word.write_end();
  };
  EXPECT_EQ(word.read(spoil, 10'000, 8), SeqlockRead::kContended);
  EXPECT_EQ(calls, 8U);

  calls = 0;
  word.write_begin();  // a writer mid-write: attempts spin, nothing is copied
  EXPECT_EQ(word.read(spoil, 50, 1), SeqlockRead::kWriterStuck);
  EXPECT_EQ(calls, 0U);
  word.write_end();
  EXPECT_EQ(word.read([] {}, 50, 1), SeqlockRead::kOk);
}

TEST(Seqlock, CopyHelpersMoveWholeWords) {
  alignas(8) std::array<std::uint64_t, 4> src{1, 2, 3, 0xFFFFFFFFFFFFFFFFULL};
  alignas(8) std::array<std::uint64_t, 4> mid{};
  alignas(8) std::array<std::uint64_t, 4> dst{};
  seqlock_copy_in(mid.data(), src.data(), sizeof(src));
  seqlock_copy_out(dst.data(), mid.data(), sizeof(mid));
  EXPECT_EQ(dst, src);
}

}  // namespace
}  // namespace floe::ipc
