// Region: sealed memfds, verified before they are mapped.
#include "floe/ipc/region.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>

#include "support/environment.hpp"

namespace floe::ipc {
namespace {

using test::count_open_fds;

std::size_t page_size() { return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)); }

// A memfd made by hand, the way a careless or hostile peer might: `mutate` edits a correct header
// before it is written, `seals` are the seals added afterwards.
Fd make_raw_region(std::size_t size, const std::function<void(RegionHeader&)>& mutate, int seals,
                   unsigned memfd_flags = MFD_CLOEXEC | MFD_ALLOW_SEALING) {
  Fd fd(::memfd_create("hand-made", memfd_flags));
  EXPECT_TRUE(fd.valid()) << std::strerror(errno);
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0) << std::strerror(errno);
  if (size >= sizeof(RegionHeader)) {
    RegionHeader h{};
    h.magic = kRegionMagic;
    h.layout_version = kRegionLayoutVersion;
    h.header_size = sizeof(RegionHeader);
    h.size = size;
    h.kind = static_cast<std::uint32_t>(RegionKind::kRaw);
    h.creator_pid = static_cast<std::uint32_t>(::getpid());
    std::strcpy(h.name, "hand-made");
    mutate(h);
    EXPECT_EQ(::pwrite(fd.get(), &h, sizeof(h), 0), static_cast<ssize_t>(sizeof(h)));
  }
  if (seals != 0) {
    EXPECT_EQ(::fcntl(fd.get(), F_ADD_SEALS, seals), 0) << std::strerror(errno);
  }
  return fd;
}

Fd make_raw_region(int seals = kRegionSeals) {
  return make_raw_region(page_size(), [](RegionHeader&) {}, seals);
}

// The permissions column of this process's mapping that starts at `addr` ("rw-s", "r--s").
std::string mapping_permissions(const void* addr) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::uintptr_t start = 0;
    std::uintptr_t end = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR " %4s", &start, &end, perms) == 3 &&
        start == reinterpret_cast<std::uintptr_t>(addr)) {
      return perms;
    }
  }
  return "";
}

TEST(Region, CreateThenOpenRoundTripsHeaderAndPayload) {
  auto created = Region::create({.name = "round-trip", .size = 10000, .kind = RegionKind::kDevice});
  ASSERT_TRUE(created) << created.error().to_string();
  EXPECT_EQ(created->size() % page_size(), 0U);
  EXPECT_GE(created->size(), 10000U);
  EXPECT_FALSE(created->read_only());

  const RegionHeader& h = created->header();
  EXPECT_EQ(h.magic, kRegionMagic);
  EXPECT_EQ(h.layout_version, kRegionLayoutVersion);
  EXPECT_EQ(h.header_size, sizeof(RegionHeader));
  EXPECT_EQ(h.size, created->size());
  EXPECT_EQ(h.kind, static_cast<std::uint32_t>(RegionKind::kDevice));
  EXPECT_EQ(h.creator_pid, static_cast<std::uint32_t>(::getpid()));
  EXPECT_STREQ(h.name, "round-trip");
  EXPECT_EQ(created->payload().size(), created->size() - kRegionPayloadOffset);
  EXPECT_EQ(created->payload().data(), created->data() + kRegionPayloadOffset);

  std::memcpy(created->payload().data(), "from creator", 13);

  auto shared = created->share();
  ASSERT_TRUE(shared) << shared.error().to_string();
  auto opened = Region::open(std::move(*shared), {.expected_size = created->size(),
                                                  .require_kind = true,
                                                  .kind = RegionKind::kDevice});
  ASSERT_TRUE(opened) << opened.error().to_string();
  EXPECT_EQ(opened->size(), created->size());
  EXPECT_NE(opened->data(), created->data());  // a second mapping of the same pages
  EXPECT_STREQ(reinterpret_cast<const char*>(opened->payload().data()), "from creator");

  std::memcpy(opened->payload().data() + 100, "from opener", 12);
  EXPECT_STREQ(reinterpret_cast<const char*>(created->payload().data() + 100), "from opener");
}

TEST(Region, CreateRoundsSizeUpToPageSize) {
  auto region = Region::create({.name = "round", .size = page_size() + 1});
  ASSERT_TRUE(region) << region.error().to_string();
  EXPECT_EQ(region->size(), 2 * page_size());
  struct stat st {};
  ASSERT_EQ(::fstat(region->fd(), &st), 0);
  EXPECT_EQ(static_cast<std::size_t>(st.st_size), 2 * page_size());
}

TEST(Region, CreateSealsTheMemfdAgainstShrinkGrowAndSeal) {
  auto region = Region::create({.name = "sealed", .size = 4096});
  ASSERT_TRUE(region) << region.error().to_string();
  auto seals = get_seals(region->fd());
  ASSERT_TRUE(seals) << seals.error().to_string();
  EXPECT_EQ(*seals & kRegionSeals, kRegionSeals);
  EXPECT_EQ(*seals & F_SEAL_WRITE, 0);
}

TEST(Region, CreateNamesTheMemfdAndTruncatesTheHeaderName) {
  const std::string long_name(50, 'n');
  auto region = Region::create({.name = long_name, .size = 4096});
  ASSERT_TRUE(region) << region.error().to_string();
  EXPECT_EQ(std::string(region->header().name), std::string(31, 'n'));

  char link[256] = {};
  const std::string proc = "/proc/self/fd/" + std::to_string(region->fd());
  ASSERT_GT(::readlink(proc.c_str(), link, sizeof(link) - 1), 0);
  EXPECT_NE(std::string(link).find("memfd:" + long_name), std::string::npos) << link;
}

TEST(Region, CreateRefusesSizeSmallerThanTheHeaderArea) {
  auto zero = Region::create({.name = "zero", .size = 0});
  ASSERT_FALSE(zero);
  EXPECT_NE(zero.error().message.find("greater than zero"), std::string::npos) << zero.error().to_string();

  auto tiny = Region::create({.name = "tiny", .size = kRegionPayloadOffset - 1});
  ASSERT_FALSE(tiny);
  EXPECT_NE(tiny.error().message.find("header"), std::string::npos) << tiny.error().to_string();
}

TEST(Region, CreatedMemfdIsCloseOnExec) {
  auto region = Region::create({.name = "cloexec", .size = 4096});
  ASSERT_TRUE(region) << region.error().to_string();
  EXPECT_NE(::fcntl(region->fd(), F_GETFD) & FD_CLOEXEC, 0);
}

TEST(Region, OpenAcceptsAHandMadeRegionWithAllSeals) {
  auto opened = Region::open(make_raw_region());
  ASSERT_TRUE(opened) << opened.error().to_string();
  EXPECT_STREQ(opened->header().name, "hand-made");
}

TEST(Region, OpenRefusesRegionWithoutSeals) {
  auto opened = Region::open(make_raw_region(0));
  ASSERT_FALSE(opened);
  const std::string& m = opened.error().message;
  EXPECT_NE(m.find("region 'hand-made'"), std::string::npos) << m;
  EXPECT_NE(m.find("missing seals"), std::string::npos) << m;
  EXPECT_NE(m.find("F_SEAL_SHRINK"), std::string::npos) << m;
  EXPECT_NE(m.find("F_SEAL_GROW"), std::string::npos) << m;
  EXPECT_NE(m.find("F_SEAL_SEAL"), std::string::npos) << m;
}

TEST(Region, OpenRefusesMemfdCreatedWithoutAllowSealing) {
  // Such a memfd reports F_SEAL_SEAL alone: it can never be sealed against shrinking.
  Fd fd = make_raw_region(page_size(), [](RegionHeader&) {}, 0, MFD_CLOEXEC);
  auto opened = Region::open(std::move(fd));
  ASSERT_FALSE(opened);
  const std::string& m = opened.error().message;
  EXPECT_NE(m.find("F_SEAL_SHRINK"), std::string::npos) << m;
  EXPECT_NE(m.find("F_SEAL_GROW"), std::string::npos) << m;
  EXPECT_EQ(m.find("F_SEAL_SEAL"), std::string::npos) << m;
}

class RegionMissingOneSeal : public ::testing::TestWithParam<std::pair<int, const char*>> {};

TEST_P(RegionMissingOneSeal, OpenRefusesRegionMissingThatSeal) {
  const auto [seal, name] = GetParam();
  auto opened = Region::open(make_raw_region(kRegionSeals & ~seal));
  ASSERT_FALSE(opened);
  EXPECT_EQ(opened.error().message, std::string("region 'hand-made': missing seal ") + name);
}

INSTANTIATE_TEST_SUITE_P(EachSeal, RegionMissingOneSeal,
                         ::testing::Values(std::pair{F_SEAL_SHRINK, "F_SEAL_SHRINK"},
                                           std::pair{F_SEAL_GROW, "F_SEAL_GROW"},
                                           std::pair{F_SEAL_SEAL, "F_SEAL_SEAL"}),
                         [](const auto& info) { return std::string(info.param.second + 7); });

TEST(Region, OpenRefusesUnexpectedSize) {
  auto opened = Region::open(make_raw_region(), {.expected_size = 2 * page_size()});
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.error().message.find("does not match the expected"), std::string::npos)
      << opened.error().to_string();
}

TEST(Region, OpenRefusesRegionSmallerThanMinSize) {
  auto opened = Region::open(make_raw_region(), {.min_size = page_size() + 1});
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.error().message.find("required minimum"), std::string::npos) << opened.error().to_string();
}

TEST(Region, OpenRefusesHeaderSizeFieldThatDisagreesWithTheFile) {
  auto opened =
      Region::open(make_raw_region(page_size(), [](RegionHeader& h) { h.size = 2 * page_size(); }, kRegionSeals));
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.error().message.find("header says size"), std::string::npos) << opened.error().to_string();
}

TEST(Region, OpenRefusesEmptyAndTooSmallFiles) {
  auto empty = Region::open(make_raw_region(0, [](RegionHeader&) {}, kRegionSeals));
  ASSERT_FALSE(empty);
  EXPECT_NE(empty.error().message.find("size is 0"), std::string::npos) << empty.error().to_string();

  auto small = Region::open(make_raw_region(kRegionPayloadOffset - 1, [](RegionHeader&) {}, kRegionSeals));
  ASSERT_FALSE(small);
  EXPECT_NE(small.error().message.find("smaller than the 128-byte header area"), std::string::npos)
      << small.error().to_string();
}

TEST(Region, OpenRefusesBadMagic) {
  auto opened = Region::open(
      make_raw_region(page_size(), [](RegionHeader& h) { h.magic = 0x1122334455667788ULL; }, kRegionSeals));
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.error().message.find("bad magic 0x1122334455667788, expected 0x314745524f4c4546"),
            std::string::npos)
      << opened.error().to_string();
}

TEST(Region, OpenRefusesWrongLayoutVersion) {
  auto opened = Region::open(make_raw_region(
      page_size(), [](RegionHeader& h) { h.layout_version = kRegionLayoutVersion + 1; }, kRegionSeals));
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.error().message.find("layout version 2"), std::string::npos) << opened.error().to_string();
}

TEST(Region, OpenRefusesHeaderSizeMismatch) {
  auto opened = Region::open(
      make_raw_region(page_size(), [](RegionHeader& h) { h.header_size = sizeof(RegionHeader) + 8; }, kRegionSeals));
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.error().message.find("header size 104, expected 96"), std::string::npos)
      << opened.error().to_string();
}

TEST(Region, OpenRefusesWrongKindOnlyWhenAKindIsRequired) {
  auto refused = Region::open(make_raw_region(), {.require_kind = true, .kind = RegionKind::kRingPair});
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("kind 0, expected 1"), std::string::npos) << refused.error().to_string();

  auto accepted = Region::open(make_raw_region(), {.kind = RegionKind::kRingPair});
  EXPECT_TRUE(accepted) << accepted.error().to_string();
}

TEST(Region, OpenRefusesAPipe) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  Fd write_end(p[1]);
  auto opened = Region::open(Fd(p[0]));
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.error().message.find("not a sealable memfd"), std::string::npos) << opened.error().to_string();
}

TEST(Region, OpenRefusesDevNull) {
  Fd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(null.valid());
  auto opened = Region::open(std::move(null));
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.error().message.find("fd "), std::string::npos) << opened.error().to_string();
  EXPECT_NE(opened.error().message.find("/dev/null"), std::string::npos) << opened.error().to_string();
}

TEST(Region, OpenRefusesWritableAccessToAWriteSealedMemfd) {
  auto refused = Region::open(make_raw_region(kRegionSeals | F_SEAL_WRITE));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("kReadOnly"), std::string::npos) << refused.error().to_string();

  auto read_only = Region::open(make_raw_region(kRegionSeals | F_SEAL_WRITE), {.access = RegionAccess::kReadOnly});
  EXPECT_TRUE(read_only) << read_only.error().to_string();
}

TEST(Region, OpenClosesTheFdWhenItRefuses) {
  Fd fd = make_raw_region(0);
  const std::size_t with_fd = count_open_fds();
  auto opened = Region::open(std::move(fd));
  ASSERT_FALSE(opened);
  EXPECT_EQ(count_open_fds(), with_fd - 1);
}

TEST(Region, ReadOnlyOpenMapsWithoutWritePermission) {
  auto created = Region::create({.name = "ro-map", .size = 4096});
  ASSERT_TRUE(created) << created.error().to_string();
  EXPECT_EQ(mapping_permissions(created->data()), "rw-s");

  auto shared = created->share();
  ASSERT_TRUE(shared) << shared.error().to_string();
  auto opened = Region::open(std::move(*shared), {.access = RegionAccess::kReadOnly});
  ASSERT_TRUE(opened) << opened.error().to_string();
  EXPECT_TRUE(opened->read_only());
  EXPECT_EQ(mapping_permissions(opened->data()), "r--s");
}

TEST(Region, SharedReadOnlyFdCannotBeMappedWritable) {
  auto created = Region::create({.name = "ro-share", .size = 8192});
  ASSERT_TRUE(created) << created.error().to_string();
  std::memcpy(created->payload().data(), "visible", 8);

  auto ro = created->share(RegionAccess::kReadOnly);
  ASSERT_TRUE(ro) << ro.error().to_string();
  EXPECT_EQ(::fcntl(ro->get(), F_GETFL) & O_ACCMODE, O_RDONLY);
  EXPECT_NE(::fcntl(ro->get(), F_GETFD) & FD_CLOEXEC, 0);

  void* writable = ::mmap(nullptr, created->size(), PROT_READ | PROT_WRITE, MAP_SHARED, ro->get(), 0);
  const int err = errno;
  EXPECT_EQ(writable, MAP_FAILED);
  EXPECT_EQ(err, EACCES);
  if (writable != MAP_FAILED) ::munmap(writable, created->size());

  auto dup = ro->duplicate();
  ASSERT_TRUE(dup);
  auto as_writable = Region::open(std::move(*dup));
  ASSERT_FALSE(as_writable);
  EXPECT_EQ(as_writable.error().code, EACCES);
  EXPECT_NE(as_writable.error().message.find("kReadOnly"), std::string::npos) << as_writable.error().to_string();

  auto opened = Region::open(std::move(*ro), {.access = RegionAccess::kReadOnly});
  ASSERT_TRUE(opened) << opened.error().to_string();
  EXPECT_STREQ(reinterpret_cast<const char*>(opened->payload().data()), "visible");
}

TEST(Region, ReadOnlyRegionRefusesToShareWriteAccess) {
  auto created = Region::create({.name = "ro-reshare", .size = 4096});
  ASSERT_TRUE(created) << created.error().to_string();
  auto ro = created->share(RegionAccess::kReadOnly);
  ASSERT_TRUE(ro) << ro.error().to_string();
  auto opened = Region::open(std::move(*ro), {.access = RegionAccess::kReadOnly});
  ASSERT_TRUE(opened) << opened.error().to_string();
  EXPECT_FALSE(opened->share(RegionAccess::kReadWrite));
  EXPECT_TRUE(opened->share(RegionAccess::kReadOnly));
}

TEST(Region, FtruncateOnSealedRegionFailsWithEperm) {
  auto region = Region::create({.name = "no-resize", .size = 4096});
  ASSERT_TRUE(region) << region.error().to_string();
  errno = 0;
  EXPECT_EQ(::ftruncate(region->fd(), 0), -1);
  EXPECT_EQ(errno, EPERM);
  errno = 0;
  EXPECT_EQ(::ftruncate(region->fd(), static_cast<off_t>(2 * region->size())), -1);
  EXPECT_EQ(errno, EPERM);
  errno = 0;
  EXPECT_EQ(::fcntl(region->fd(), F_ADD_SEALS, F_SEAL_WRITE), -1);
  EXPECT_EQ(errno, EPERM);
  // The mapping is still whole.
  region->payload().back() = std::byte{0x5a};
  EXPECT_EQ(region->payload().back(), std::byte{0x5a});
}

TEST(Region, GetSealsReportsErrorForANonMemfd) {
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  Fd r(p[0]);
  Fd w(p[1]);
  auto seals = get_seals(r.get());
  ASSERT_FALSE(seals);
  EXPECT_EQ(seals.error().code, EINVAL);
}

TEST(Region, MoveConstructionLeavesTheSourceEmpty) {
  auto created = Region::create({.name = "move", .size = 4096});
  ASSERT_TRUE(created) << created.error().to_string();
  std::byte* const base = created->data();
  const int fd = created->fd();

  Region moved(std::move(*created));
  EXPECT_EQ(moved.data(), base);
  EXPECT_EQ(moved.fd(), fd);
  EXPECT_EQ(moved.size(), 4096U);
  EXPECT_EQ(created->data(), nullptr);
  EXPECT_EQ(created->fd(), -1);
  EXPECT_EQ(created->size(), 0U);
  EXPECT_FALSE(created->share());
  EXPECT_EQ(mapping_permissions(base), "rw-s");
}

TEST(Region, MoveAssignmentReleasesTheOldRegion) {
  auto a = Region::create({.name = "a", .size = 4096});
  auto b = Region::create({.name = "b", .size = 4096});
  ASSERT_TRUE(a && b);
  std::byte* const old_base = a->data();
  const std::size_t before = count_open_fds();

  *a = std::move(*b);
  EXPECT_EQ(count_open_fds(), before - 1);
  EXPECT_EQ(mapping_permissions(old_base), "");  // unmapped
  EXPECT_STREQ(a->header().name, "b");
  EXPECT_EQ(b->data(), nullptr);
  EXPECT_EQ(b->fd(), -1);
}

TEST(Region, DestructionUnmapsAndClosesTheFd) {
  const std::size_t before = count_open_fds();
  std::byte* base = nullptr;
  {
    auto region = Region::create({.name = "scoped", .size = 4096});
    ASSERT_TRUE(region) << region.error().to_string();
    base = region->data();
    EXPECT_EQ(count_open_fds(), before + 1);
  }
  EXPECT_EQ(count_open_fds(), before);
  EXPECT_EQ(mapping_permissions(base), "");
}

}  // namespace
}  // namespace floe::ipc
