// A region and its eventfds handed to a real separate process over a Channel, the way the core
// grants a provider its rings; and a hostile peer whose packets must neither parse nor leak fds.
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "floe/ipc/channel.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/region.hpp"
#include "management.pb.h"
#include "support/child_process.hpp"
#include "support/environment.hpp"
#include "support/integration.hpp"

namespace floe::ipc {
namespace {

constexpr int kChildSocket = 3;  // the first inherited fd
constexpr std::string_view kParentGreeting = "parent wrote this before the grant";
constexpr std::size_t kChildPatternOffset = 4096;
constexpr std::size_t kChildPatternBytes = 8192;
constexpr std::size_t kRegionBytes = 64 * 1024;

std::byte child_pattern(std::size_t i) { return static_cast<std::byte>((i * 7 + 3) & 0xff); }

// Child roles report what went wrong on stderr and through a distinct exit code.
int child_fail(int code, const std::string& what) {
  std::fprintf(stderr, "child: %s\n", what.c_str());
  return code;
}

bool starts_with_greeting(std::span<const std::byte> payload) {
  return payload.size() >= kParentGreeting.size() &&
         std::memcmp(payload.data(), kParentGreeting.data(), kParentGreeting.size()) == 0;
}

bool wait_readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int r = 0;
  do {
    r = ::poll(&p, 1, timeout_ms);
  } while (r < 0 && errno == EINTR);
  return r == 1 && (p.revents & POLLIN) != 0;
}

proto::Envelope reply_from(const char* name, std::uint64_t id) {
  proto::Envelope reply;
  reply.set_id(id);
  reply.mutable_hello()->set_peer_name(name);
  reply.mutable_hello()->set_role(proto::PEER_ROLE_PROVIDER);
  return reply;
}

// ---------------------------------------------------------------------------------------------
// Child roles

// Receives a RegionGrant (region + tx/rx eventfds), verifies and maps the region, checks what the
// parent wrote, writes its own pattern, signals the rx eventfd and replies.
FLOE_CHILD_ROLE(grant_receiver) {
  Channel channel = Channel::adopt(Fd(kChildSocket));
  proto::Envelope grant;
  auto fds = channel.receive(grant);
  if (!fds) return child_fail(10, fds.error().to_string());
  if (!grant.has_region_grant()) return child_fail(11, "not a RegionGrant");
  const auto& g = grant.region_grant();
  if (static_cast<std::size_t>(g.fd_roles_size()) != fds->size() || fds->size() != 3) {
    return child_fail(12, "fd roles do not match the fds: " + std::to_string(fds->size()) + " fds");
  }
  if (g.fd_roles(0) != proto::FD_ROLE_REGION || g.fd_roles(1) != proto::FD_ROLE_TX_EVENTFD ||
      g.fd_roles(2) != proto::FD_ROLE_RX_EVENTFD) {
    return child_fail(13, "unexpected fd roles");
  }

  auto region = Region::open(std::move((*fds)[0]), {.expected_size = g.size()});
  if (!region) return child_fail(14, region.error().to_string());
  if (std::string_view(region->header().name) != g.name()) return child_fail(15, "header name mismatch");
  if (!starts_with_greeting(region->payload())) return child_fail(16, "parent's greeting not in payload");

  auto out = region->payload().subspan(kChildPatternOffset, kChildPatternBytes);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = child_pattern(i);
  eventfd_signal((*fds)[2].get());

  auto sent = channel.send(reply_from("grant-receiver", grant.id()));
  if (!sent) return child_fail(17, sent.error().to_string());
  return 0;
}

// Receives a read-only share of a region and checks that it really is read-only for it.
FLOE_CHILD_ROLE(readonly_receiver) {
  Channel channel = Channel::adopt(Fd(kChildSocket));
  proto::Envelope grant;
  auto fds = channel.receive(grant);
  if (!fds) return child_fail(20, fds.error().to_string());
  if (fds->size() != 1) return child_fail(21, "expected one fd, got " + std::to_string(fds->size()));
  const int fd = (*fds)[0].get();
  if ((::fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDONLY) return child_fail(22, "fd is not O_RDONLY");

  void* writable = ::mmap(nullptr, kRegionBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (writable != MAP_FAILED) return child_fail(23, "mmap(PROT_WRITE, MAP_SHARED) of a read-only share succeeded");
  if (errno != EACCES) return child_fail(24, std::string("mmap failed with ") + std::strerror(errno));

  auto dup = (*fds)[0].duplicate();
  if (!dup) return child_fail(25, dup.error().to_string());
  auto as_writable = Region::open(std::move(*dup));
  if (as_writable) return child_fail(26, "Region::open(kReadWrite) accepted a read-only fd");

  auto region = Region::open(std::move((*fds)[0]), {.access = RegionAccess::kReadOnly});
  if (!region) return child_fail(27, region.error().to_string());
  if (!starts_with_greeting(region->payload())) return child_fail(28, "parent's greeting not in payload");

  auto sent = channel.send(reply_from("readonly-receiver", grant.id()));
  if (!sent) return child_fail(29, sent.error().to_string());
  return 0;
}

// Sends raw packets no well-behaved peer would: too many fds, garbage with fds, oversize with fds.
// Then one valid Envelope, and waits for the parent's acknowledgement.
FLOE_CHILD_ROLE(hostile_sender) {
  const int sock = kChildSocket;
  auto raw_send = [sock](std::size_t bytes, std::size_t fd_count) -> bool {
    std::vector<Fd> owned;
    std::vector<int> raw;
    for (std::size_t i = 0; i < fd_count; ++i) {
      auto efd = make_eventfd();
      if (!efd) return false;
      raw.push_back(efd->get());
      owned.push_back(std::move(*efd));
    }
    // Field 1 as a length-delimited value claiming more bytes than follow: never parses.
    std::vector<std::byte> data(bytes, std::byte{0x01});
    if (bytes >= 2) {
      data[0] = std::byte{0x0a};
      data[1] = std::byte{0x7f};
    }
    return test::send_packet(sock, data, raw);
  };

  if (!raw_send(8, 3 * kMaxPacketFds)) return child_fail(30, std::string("too-many-fds send: ") + std::strerror(errno));
  if (!raw_send(5, 3)) return child_fail(31, std::string("garbage send: ") + std::strerror(errno));
  if (!raw_send(kMaxPacketBytes + 1000, 2)) return child_fail(32, std::string("oversize send: ") + std::strerror(errno));

  Channel channel = Channel::adopt(Fd(sock));
  auto sent = channel.send(reply_from("hostile-sender", 99));
  if (!sent) return child_fail(33, sent.error().to_string());
  proto::Envelope ack;
  auto got = channel.receive(ack);
  if (!got) return child_fail(34, got.error().to_string());
  return ack.id() == 99 ? 0 : 35;
}

// ---------------------------------------------------------------------------------------------
// Parent side

struct ChildLink {
  Channel parent;
  test::Child child;
};

// Spawns `role` with the child end of a fresh Channel::pair() as its fd 3, and closes this
// process's copy of that end, so the parent's receive sees the child's exit.
ChildLink spawn_with_channel(const std::string& role) {
  auto pair = Channel::pair();
  EXPECT_TRUE(pair) << pair.error().to_string();
  auto child = test::spawn_child(role, {}, {pair->second.fd()});
  EXPECT_TRUE(child) << child.error().to_string();
  { Channel child_end = std::move(pair->second); }
  return ChildLink{std::move(pair->first), std::move(*child)};
}

TEST(RegionPassing, ChildOpensGrantedRegionWritesPatternAndSignals) {
  auto region = Region::create({.name = "itest-grant", .size = kRegionBytes, .kind = RegionKind::kRingPair});
  ASSERT_TRUE(region) << region.error().to_string();
  std::memcpy(region->payload().data(), kParentGreeting.data(), kParentGreeting.size());
  auto tx = make_eventfd();
  auto rx = make_eventfd(/*nonblocking=*/true);
  ASSERT_TRUE(tx && rx);

  auto link = spawn_with_channel("grant_receiver");

  proto::Envelope grant;
  grant.set_id(7);
  auto* g = grant.mutable_region_grant();
  g->set_name("itest-grant");
  g->set_size(region->size());
  g->add_fd_roles(proto::FD_ROLE_REGION);
  g->add_fd_roles(proto::FD_ROLE_TX_EVENTFD);
  g->add_fd_roles(proto::FD_ROLE_RX_EVENTFD);
  const int fds[] = {region->fd(), tx->get(), rx->get()};
  auto sent = link.parent.send(grant, fds);
  ASSERT_TRUE(sent) << sent.error().to_string();

  ASSERT_TRUE(wait_readable(rx->get(), 30'000)) << "child never signalled the rx eventfd";
  auto signals = eventfd_drain(rx->get());
  ASSERT_TRUE(signals) << signals.error().to_string();
  EXPECT_EQ(*signals, 1U);

  proto::Envelope reply;
  auto reply_fds = link.parent.receive(reply);
  ASSERT_TRUE(reply_fds) << reply_fds.error().to_string();
  EXPECT_TRUE(reply_fds->empty());
  EXPECT_EQ(reply.id(), 7U);
  EXPECT_EQ(reply.hello().peer_name(), "grant-receiver");

  const auto written = region->payload().subspan(kChildPatternOffset, kChildPatternBytes);
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < written.size(); ++i) mismatches += written[i] != child_pattern(i) ? 1 : 0;
  EXPECT_EQ(mismatches, 0U);
  EXPECT_EQ(link.child.wait(), 0);
}

TEST(RegionPassing, ChildCannotMapAReadOnlyShareWritable) {
  auto region = Region::create({.name = "itest-ro", .size = kRegionBytes});
  ASSERT_TRUE(region) << region.error().to_string();
  std::memcpy(region->payload().data(), kParentGreeting.data(), kParentGreeting.size());
  auto ro = region->share(RegionAccess::kReadOnly);
  ASSERT_TRUE(ro) << ro.error().to_string();

  auto link = spawn_with_channel("readonly_receiver");
  proto::Envelope grant;
  grant.set_id(8);
  grant.mutable_region_grant()->set_name("itest-ro");
  grant.mutable_region_grant()->set_size(region->size());
  grant.mutable_region_grant()->add_fd_roles(proto::FD_ROLE_REGION);
  const int fds[] = {ro->get()};
  auto sent = link.parent.send(grant, fds);
  ASSERT_TRUE(sent) << sent.error().to_string();

  proto::Envelope reply;
  auto reply_fds = link.parent.receive(reply);
  ASSERT_TRUE(reply_fds) << reply_fds.error().to_string();
  EXPECT_EQ(reply.id(), 8U);
  EXPECT_EQ(link.child.wait(), 0);
  // The read-only peer left the payload as it was.
  EXPECT_TRUE(starts_with_greeting(region->payload()));
}

TEST(RegionPassing, HostilePeerPacketsFailToReceiveAndLeakNoFd) {
  auto link = spawn_with_channel("hostile_sender");
  const std::size_t before = test::count_open_fds();

  auto too_many = link.parent.receive();
  ASSERT_FALSE(too_many);
  EXPECT_NE(too_many.error().message.find("MSG_CTRUNC"), std::string::npos) << too_many.error().to_string();
  EXPECT_EQ(test::count_open_fds(), before);

  proto::Envelope garbage;
  auto unparsable = link.parent.receive(garbage);
  ASSERT_FALSE(unparsable);
  EXPECT_NE(unparsable.error().message.find("did not parse"), std::string::npos) << unparsable.error().to_string();
  EXPECT_EQ(test::count_open_fds(), before);

  auto oversize = link.parent.receive();
  ASSERT_FALSE(oversize);
  EXPECT_NE(oversize.error().message.find("MSG_TRUNC"), std::string::npos) << oversize.error().to_string();
  EXPECT_EQ(test::count_open_fds(), before);

  // The channel is still in step: the next, valid packet arrives intact.
  proto::Envelope valid;
  auto fds = link.parent.receive(valid);
  ASSERT_TRUE(fds) << fds.error().to_string();
  EXPECT_EQ(valid.id(), 99U);
  EXPECT_EQ(valid.hello().peer_name(), "hostile-sender");
  EXPECT_EQ(test::count_open_fds(), before);

  auto peer = link.parent.peer_credentials();
  ASSERT_TRUE(peer) << peer.error().to_string();
  // socketpair() records its creator as both ends' peer: an inherited end names the parent.
  EXPECT_EQ(peer->pid, ::getpid());
  EXPECT_EQ(peer->uid, ::getuid());

  ASSERT_TRUE(link.parent.send(reply_from("parent", 99)));
  EXPECT_EQ(link.child.wait(), 0);
}

}  // namespace
}  // namespace floe::ipc
