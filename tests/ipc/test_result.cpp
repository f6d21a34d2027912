#include "floe/ipc/result.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <fcntl.h>

#include <fmt/format.h>

#include "floe/ipc/fd.hpp"
#include "support/environment.hpp"

namespace floe {
namespace {

// Formatting it changes errno, as an allocation that fails (or a library call) may.
struct ClobbersErrno {};

}  // namespace
}  // namespace floe

template <>
struct fmt::formatter<floe::ClobbersErrno> : fmt::formatter<std::string_view> {
  auto format(floe::ClobbersErrno, fmt::format_context& ctx) const {
    errno = EINTR;
    return fmt::formatter<std::string_view>::format("the part", ctx);
  }
};

namespace floe {
namespace {

Result<int> open_missing() {
  const int fd = ::open("/nonexistent/floe-test", O_RDONLY);
  if (fd < 0) return sys_error("open", "/nonexistent/floe-test");
  return fd;
}

Status chain() {
  FLOE_TRY(open_missing());
  return {};
}

TEST(Result, SysErrorCapturesErrnoAndFormatsIt) {
  const auto r = open_missing();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().operation, "open");
  EXPECT_EQ(r.error().code, ENOENT);
  EXPECT_EQ(r.error().to_string(), "open: /nonexistent/floe-test (No such file or directory)");
}

TEST(Result, SysErrorfKeepsTheErrnoOfTheFailureNotOfBuildingTheMessage) {
  errno = ENOENT;
  const Result<int> r = sys_errorf("open", "{} of {}", ClobbersErrno{}, "/nonexistent");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT);
  EXPECT_EQ(r.error().message, "the part of /nonexistent");
}

TEST(Result, LogicErrorHasNoErrno) {
  const Result<int> r = logic_error("ring.attach", "bad magic");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, 0);
  EXPECT_EQ(r.error().to_string(), "ring.attach: bad magic");
}

TEST(Result, TryPropagatesTheFirstError) {
  const Status s = chain();
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, ENOENT);
}

TEST(Fd, ClosesOnDestructionAndMoves) {
  const std::size_t before = test::count_open_fds();
  {
    ipc::Fd a(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(a.valid());
    EXPECT_EQ(test::count_open_fds(), before + 1);
    ipc::Fd b(std::move(a));
    EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): the moved-from state is the test
    EXPECT_TRUE(b.valid());
    ipc::Fd c;
    c = std::move(b);
    EXPECT_EQ(test::count_open_fds(), before + 1);
  }
  EXPECT_EQ(test::count_open_fds(), before);
}

TEST(Fd, ReleaseGivesUpOwnership) {
  ipc::Fd a(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  const int raw = a.release();
  EXPECT_FALSE(a.valid());
  EXPECT_GE(::fcntl(raw, F_GETFD), 0);  // still open
  ::close(raw);
}

TEST(Fd, DuplicateIsCloseOnExec) {
  ipc::Fd a(::open("/dev/null", O_RDONLY));
  auto b = a.duplicate();
  ASSERT_TRUE(b) << b.error().to_string();
  EXPECT_NE(b->get(), a.get());
  EXPECT_TRUE(::fcntl(b->get(), F_GETFD) & FD_CLOEXEC);
}

TEST(Fd, DuplicateOfInvalidFdIsAnError) {
  ipc::Fd a;
  const auto b = a.duplicate();
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, EBADF);
}

}  // namespace
}  // namespace floe
