// Channel and Listener: SEQPACKET sockets carrying protobuf messages and fds.
#include "floe/ipc/channel.hpp"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "management.pb.h"
#include "support/environment.hpp"
#include "support/integration.hpp"

namespace floe::ipc {
namespace {

using test::count_open_fds;

Fd make_memfd(const char* name) {
  Fd fd(::memfd_create(name, MFD_CLOEXEC));
  EXPECT_TRUE(fd.valid()) << std::strerror(errno);
  return fd;
}

Fd make_test_eventfd() {
  Fd fd(::eventfd(0, EFD_CLOEXEC));
  EXPECT_TRUE(fd.valid()) << std::strerror(errno);
  return fd;
}

bool same_file(int a, int b) {
  struct stat sa {};
  struct stat sb {};
  if (::fstat(a, &sa) != 0 || ::fstat(b, &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

bool is_cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

std::pair<Channel, Channel> make_pair() {
  auto p = Channel::pair();
  EXPECT_TRUE(p) << p.error().to_string();
  return std::move(*p);
}

// Sends a packet the way a hostile or buggy peer could: any size, any number of fds.
void raw_send(int socket, const std::vector<std::byte>& bytes, const std::vector<int>& fds) {
  ASSERT_TRUE(test::send_packet(socket, bytes, fds)) << std::strerror(errno);
}

// Sends `count` fresh eventfds in one raw packet and closes this side's copies, so that afterwards
// the only references to them are the ones in flight.
void raw_send_eventfds(int socket, const std::vector<std::byte>& bytes, std::size_t count) {
  std::vector<Fd> owned;
  std::vector<int> raw;
  for (std::size_t i = 0; i < count; ++i) {
    owned.push_back(make_test_eventfd());
    raw.push_back(owned.back().get());
  }
  raw_send(socket, bytes, raw);
}

std::vector<std::byte> as_bytes(std::string_view s) {
  std::vector<std::byte> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

// A scratch directory for socket paths, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "floe-channel-XXXXXX").string();
    const char* made = ::mkdtemp(tmpl.data());
    EXPECT_NE(made, nullptr) << std::strerror(errno);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  [[nodiscard]] std::string file(const char* name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// ---------------------------------------------------------------------------------------------
// Channel

TEST(Channel, PairSocketsAreSeqpacketAndCloseOnExec) {
  auto [a, b] = make_pair();
  int type = 0;
  socklen_t len = sizeof(type);
  ASSERT_EQ(::getsockopt(a.fd(), SOL_SOCKET, SO_TYPE, &type, &len), 0);
  EXPECT_EQ(type, SOCK_SEQPACKET);
  EXPECT_TRUE(is_cloexec(a.fd()));
  EXPECT_TRUE(is_cloexec(b.fd()));
}

TEST(Channel, SendsAndReceivesAnEnvelopeWithFds) {
  auto [a, b] = make_pair();
  Fd memfd = make_memfd("granted");
  Fd efd = make_test_eventfd();

  proto::Envelope sent;
  sent.set_id(42);
  auto* grant = sent.mutable_region_grant();
  grant->set_name("dev-7");
  grant->set_size(1 << 20);
  grant->add_fd_roles(proto::FD_ROLE_REGION);
  grant->add_fd_roles(proto::FD_ROLE_TX_EVENTFD);
  grant->mutable_tx()->set_offset(128);
  const int fds[] = {memfd.get(), efd.get()};
  auto status = a.send(sent, fds);
  ASSERT_TRUE(status) << status.error().to_string();

  proto::Envelope received;
  auto got = b.receive(received);
  ASSERT_TRUE(got) << got.error().to_string();
  EXPECT_EQ(received.id(), 42U);
  ASSERT_TRUE(received.has_region_grant());
  EXPECT_EQ(received.region_grant().name(), "dev-7");
  EXPECT_EQ(received.region_grant().size(), 1U << 20);
  ASSERT_EQ(received.region_grant().fd_roles_size(), 2);
  EXPECT_EQ(received.region_grant().tx().offset(), 128U);
  EXPECT_EQ(received.SerializeAsString(), sent.SerializeAsString());

  ASSERT_EQ(got->size(), 2U);
  EXPECT_TRUE(same_file((*got)[0].get(), memfd.get()));
  EXPECT_TRUE(same_file((*got)[1].get(), efd.get()));
  EXPECT_NE((*got)[0].get(), memfd.get());  // new descriptors, not the sender's numbers
  EXPECT_TRUE(is_cloexec((*got)[0].get()));
  EXPECT_TRUE(is_cloexec((*got)[1].get()));

  // The received eventfd is the same object: a signal through it reaches the original.
  const std::uint64_t one = 1;
  ASSERT_EQ(::write((*got)[1].get(), &one, sizeof(one)), static_cast<ssize_t>(sizeof(one)));
  std::uint64_t value = 0;
  ASSERT_EQ(::read(efd.get(), &value, sizeof(value)), static_cast<ssize_t>(sizeof(value)));
  EXPECT_EQ(value, 1U);
}

TEST(Channel, SendsRawBytesAndPreservesPacketBoundaries) {
  auto [a, b] = make_pair();
  ASSERT_TRUE(a.send(as_bytes("first")));
  ASSERT_TRUE(a.send(as_bytes("second packet")));

  auto p1 = b.receive();
  ASSERT_TRUE(p1) << p1.error().to_string();
  EXPECT_EQ(p1->bytes, as_bytes("first"));
  EXPECT_TRUE(p1->fds.empty());
  auto p2 = b.receive();
  ASSERT_TRUE(p2) << p2.error().to_string();
  EXPECT_EQ(p2->bytes, as_bytes("second packet"));
}

TEST(Channel, AcceptsExactlyTheLimitOfBytesAndFds) {
  auto [a, b] = make_pair();
  std::vector<std::byte> big(kMaxPacketBytes, std::byte{0x7e});
  std::vector<Fd> owned;
  std::vector<int> fds;
  for (std::size_t i = 0; i < kMaxPacketFds; ++i) {
    owned.push_back(make_test_eventfd());
    fds.push_back(owned.back().get());
  }
  auto status = a.send(big, fds);
  ASSERT_TRUE(status) << status.error().to_string();
  auto packet = b.receive();
  ASSERT_TRUE(packet) << packet.error().to_string();
  EXPECT_EQ(packet->bytes, big);
  ASSERT_EQ(packet->fds.size(), kMaxPacketFds);
  for (std::size_t i = 0; i < kMaxPacketFds; ++i) EXPECT_TRUE(same_file(packet->fds[i].get(), fds[i]));
}

TEST(Channel, SendRefusesOversizePacket) {
  auto [a, b] = make_pair();
  std::vector<std::byte> big(kMaxPacketBytes + 1);
  auto status = a.send(big);
  ASSERT_FALSE(status);
  EXPECT_NE(status.error().message.find("exceeds the limit"), std::string::npos) << status.error().to_string();
}

TEST(Channel, SendRefusesOversizeMessage) {
  auto [a, b] = make_pair();
  proto::Envelope e;
  e.mutable_error()->set_message(std::string(kMaxPacketBytes, 'x'));
  auto status = a.send(e);
  ASSERT_FALSE(status);
  EXPECT_NE(status.error().message.find("floe.proto.Envelope"), std::string::npos) << status.error().to_string();
}

TEST(Channel, SendRefusesMoreFdsThanTheLimit) {
  auto [a, b] = make_pair();
  std::vector<int> fds(kMaxPacketFds + 1, a.fd());
  auto status = a.send(as_bytes("x"), fds);
  ASSERT_FALSE(status);
  EXPECT_NE(status.error().message.find("17 fds"), std::string::npos) << status.error().to_string();
}

TEST(Channel, SendRefusesEmptyPacketThatWouldLookLikeShutdown) {
  auto [a, b] = make_pair();
  auto status = a.send(std::span<const std::byte>{});
  ASSERT_FALSE(status);
  EXPECT_NE(status.error().message.find("empty packet"), std::string::npos) << status.error().to_string();
}

TEST(Channel, SendToClosedPeerReportsEpipeWithoutSignal) {
  auto [a, b] = make_pair();
  { Channel gone = std::move(b); }
  auto status = a.send(as_bytes("anyone?"));
  ASSERT_FALSE(status);
  EXPECT_EQ(status.error().code, EPIPE);
}

TEST(Channel, ReceiveAfterPeerClosesReportsEconnreset) {
  auto [a, b] = make_pair();
  { Channel gone = std::move(a); }
  auto packet = b.receive();
  ASSERT_FALSE(packet);
  EXPECT_EQ(packet.error().code, ECONNRESET);
  EXPECT_EQ(packet.error().message, "peer closed the connection");
}

TEST(Channel, NonBlockingReceiveWithNothingPendingReportsEagain) {
  auto [a, b] = make_pair();
  ASSERT_TRUE(b.set_nonblocking(true));
  EXPECT_NE(::fcntl(b.fd(), F_GETFL) & O_NONBLOCK, 0);
  auto packet = b.receive();
  ASSERT_FALSE(packet);
  EXPECT_EQ(packet.error().code, EAGAIN);
  ASSERT_TRUE(b.set_nonblocking(false));
  EXPECT_EQ(::fcntl(b.fd(), F_GETFL) & O_NONBLOCK, 0);
}

TEST(Channel, ReceiveReportsTruncatedControlDataAndLeaksNoFd) {
  auto [a, b] = make_pair();
  const std::size_t before = count_open_fds();
  raw_send_eventfds(a.fd(), as_bytes("too many"), kMaxPacketFds + 4);
  ASSERT_EQ(count_open_fds(), before);  // in flight: held by the socket, not by this process

  auto packet = b.receive();
  ASSERT_FALSE(packet);
  EXPECT_NE(packet.error().message.find("MSG_CTRUNC"), std::string::npos) << packet.error().to_string();
  EXPECT_EQ(count_open_fds(), before);

  // The stream stays in step: the next packet arrives whole.
  ASSERT_TRUE(a.send(as_bytes("next")));
  auto next = b.receive();
  ASSERT_TRUE(next) << next.error().to_string();
  EXPECT_EQ(next->bytes, as_bytes("next"));
}

TEST(Channel, ReceiveOfMessageWithTooManyFdsFailsAndLeaksNoFd) {
  auto [a, b] = make_pair();
  proto::Envelope e;
  e.set_id(7);
  const std::string bytes = e.SerializeAsString();
  const std::size_t before = count_open_fds();
  raw_send_eventfds(a.fd(), as_bytes(bytes), 64);

  proto::Envelope received;
  auto got = b.receive(received);
  ASSERT_FALSE(got);
  EXPECT_NE(got.error().message.find("more than 16 fds"), std::string::npos) << got.error().to_string();
  EXPECT_EQ(count_open_fds(), before);
}

TEST(Channel, ReceiveReportsTruncatedPacketAndClosesItsFds) {
  auto [a, b] = make_pair();
  const std::size_t before = count_open_fds();
  raw_send_eventfds(a.fd(), std::vector<std::byte>(kMaxPacketBytes + 100, std::byte{1}), 3);

  auto packet = b.receive();
  ASSERT_FALSE(packet);
  EXPECT_NE(packet.error().message.find("MSG_TRUNC"), std::string::npos) << packet.error().to_string();
  EXPECT_EQ(count_open_fds(), before);
}

TEST(Channel, ReceiveOfGarbageReportsParseFailureAndClosesFds) {
  auto [a, b] = make_pair();
  const std::size_t before = count_open_fds();
  // Field 1 as a length-delimited value claiming 16 bytes that are not there.
  raw_send_eventfds(a.fd(), {std::byte{0x0a}, std::byte{0x10}, std::byte{0x01}}, 3);

  proto::Envelope received;
  auto got = b.receive(received);
  ASSERT_FALSE(got);
  EXPECT_NE(got.error().message.find("did not parse as floe.proto.Envelope"), std::string::npos)
      << got.error().to_string();
  EXPECT_EQ(count_open_fds(), before);
}

TEST(Channel, ReceiveRefusesUnexpectedAncillaryDataAndClosesFds) {
  auto [a, b] = make_pair();
  // With SO_PASSCRED the kernel adds an SCM_CREDENTIALS message to every packet.
  const int on = 1;
  ASSERT_EQ(::setsockopt(b.fd(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)), 0);
  const std::size_t before = count_open_fds();
  raw_send_eventfds(a.fd(), as_bytes("with creds"), 2);

  auto packet = b.receive();
  ASSERT_FALSE(packet);
  EXPECT_NE(packet.error().message.find("unexpected ancillary data"), std::string::npos)
      << packet.error().to_string();
  EXPECT_EQ(count_open_fds(), before);
}

TEST(Channel, DroppingAReceivedPacketClosesItsFds) {
  auto [a, b] = make_pair();
  const std::size_t before = count_open_fds();
  raw_send_eventfds(a.fd(), as_bytes("keep"), 4);
  {
    auto packet = b.receive();
    ASSERT_TRUE(packet) << packet.error().to_string();
    EXPECT_EQ(packet->fds.size(), 4U);
    EXPECT_EQ(count_open_fds(), before + 4);
  }
  EXPECT_EQ(count_open_fds(), before);
}

TEST(Channel, PeerCredentialsMatchThisProcess) {
  auto [a, b] = make_pair();
  auto creds = b.peer_credentials();
  ASSERT_TRUE(creds) << creds.error().to_string();
  EXPECT_EQ(creds->pid, ::getpid());
  EXPECT_EQ(creds->uid, ::getuid());
  EXPECT_EQ(creds->gid, ::getgid());
}

TEST(Channel, ReleaseHandsOverTheSocket) {
  auto [a, b] = make_pair();
  const int raw = a.fd();
  Fd socket = a.release();
  EXPECT_EQ(socket.get(), raw);
  EXPECT_EQ(a.fd(), -1);
  EXPECT_FALSE(a.send(as_bytes("x")));
  Channel adopted = Channel::adopt(std::move(socket));
  ASSERT_TRUE(adopted.send(as_bytes("adopted")));
  auto packet = b.receive();
  ASSERT_TRUE(packet) << packet.error().to_string();
  EXPECT_EQ(packet->bytes, as_bytes("adopted"));
}

// ---------------------------------------------------------------------------------------------
// Listener

TEST(Listener, BindAcceptConnectExchangeMessagesWithRequestedMode) {
  TempDir dir;
  const std::string path = dir.file("core.sock");
  auto listener = Listener::bind(path, 0660);
  ASSERT_TRUE(listener) << listener.error().to_string();
  EXPECT_EQ(listener->path(), path);
  EXPECT_TRUE(is_cloexec(listener->fd()));

  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660U);

  auto client = Channel::connect(path);
  ASSERT_TRUE(client) << client.error().to_string();
  EXPECT_TRUE(is_cloexec(client->fd()));
  auto server = listener->accept();
  ASSERT_TRUE(server) << server.error().to_string();
  EXPECT_TRUE(is_cloexec(server->fd()));

  proto::Envelope hello;
  hello.set_id(1);
  hello.mutable_hello()->set_peer_name("test-provider");
  hello.mutable_hello()->set_role(proto::PEER_ROLE_PROVIDER);
  ASSERT_TRUE(client->send(hello));
  proto::Envelope got;
  auto fds = server->receive(got);
  ASSERT_TRUE(fds) << fds.error().to_string();
  EXPECT_EQ(got.hello().peer_name(), "test-provider");

  proto::Envelope welcome;
  welcome.set_id(1);
  welcome.mutable_welcome()->set_session_id(99);
  ASSERT_TRUE(server->send(welcome));
  ASSERT_TRUE(client->receive(got));
  EXPECT_EQ(got.welcome().session_id(), 99U);

  auto creds = server->peer_credentials();
  ASSERT_TRUE(creds) << creds.error().to_string();
  EXPECT_EQ(creds->pid, ::getpid());
  EXPECT_EQ(creds->uid, ::getuid());
}

TEST(Listener, AppliesTheRequestedModeWhateverTheUmask) {
  TempDir dir;
  const std::string path = dir.file("private.sock");
  const mode_t old_umask = ::umask(0);
  auto listener = Listener::bind(path, 0600);
  ::umask(old_umask);
  ASSERT_TRUE(listener) << listener.error().to_string();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600U);
}

TEST(Listener, ReplacesAStaleSocketFile) {
  TempDir dir;
  const std::string path = dir.file("stale.sock");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, path.c_str());
  {
    // A listener that died without unlinking: bound, then closed.
    Fd dead(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    ASSERT_EQ(::bind(dead.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  }
  ASSERT_TRUE(exists(path));
  // The file alone blocks a plain bind...
  Fd plain(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::bind(plain.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), -1);
  EXPECT_EQ(errno, EADDRINUSE);

  // ...so Listener::bind must have removed it.
  auto listener = Listener::bind(path);
  ASSERT_TRUE(listener) << listener.error().to_string();
  auto client = Channel::connect(path);
  ASSERT_TRUE(client) << client.error().to_string();
  EXPECT_TRUE(listener->accept());
}

TEST(Listener, RefusesToReplaceSomethingThatIsNotASocket) {
  TempDir dir;
  const std::string path = dir.file("precious.txt");
  std::ofstream(path) << "keep me";
  auto listener = Listener::bind(path);
  ASSERT_FALSE(listener);
  EXPECT_EQ(listener.error().code, EEXIST);
  EXPECT_NE(listener.error().message.find("not a socket"), std::string::npos) << listener.error().to_string();
  std::ifstream in(path);
  std::string content;
  std::getline(in, content);
  EXPECT_EQ(content, "keep me");
}

TEST(Listener, RefusesAPathALiveListenerOwns) {
  TempDir dir;
  const std::string path = dir.file("busy.sock");
  auto first = Listener::bind(path);
  ASSERT_TRUE(first) << first.error().to_string();
  auto second = Listener::bind(path);
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().code, EADDRINUSE);
  EXPECT_TRUE(exists(path));
  EXPECT_TRUE(Channel::connect(path));  // the first one still serves
}

TEST(Listener, UnlinksItsPathOnDestruction) {
  TempDir dir;
  const std::string path = dir.file("gone.sock");
  {
    auto listener = Listener::bind(path);
    ASSERT_TRUE(listener) << listener.error().to_string();
    EXPECT_TRUE(exists(path));
  }
  EXPECT_FALSE(exists(path));
}

TEST(Listener, MovedFromListenerDoesNotUnlink) {
  TempDir dir;
  const std::string path = dir.file("moved.sock");
  auto bound = Listener::bind(path);
  ASSERT_TRUE(bound) << bound.error().to_string();
  std::optional<Listener> target;
  {
    Listener source = std::move(*bound);
    target.emplace(std::move(source));
    EXPECT_TRUE(source.path().empty());
    EXPECT_EQ(source.fd(), -1);
  }
  EXPECT_TRUE(exists(path));
  auto client = Channel::connect(path);
  ASSERT_TRUE(client) << client.error().to_string();
  EXPECT_TRUE(target->accept());
  target.reset();
  EXPECT_FALSE(exists(path));
}

TEST(Listener, MoveAssignmentUnlinksTheOverwrittenPath) {
  TempDir dir;
  auto a = Listener::bind(dir.file("a.sock"));
  auto b = Listener::bind(dir.file("b.sock"));
  ASSERT_TRUE(a && b);
  *a = std::move(*b);
  EXPECT_FALSE(exists(dir.file("a.sock")));
  EXPECT_TRUE(exists(dir.file("b.sock")));
  EXPECT_EQ(a->path(), dir.file("b.sock"));
  EXPECT_TRUE(b->path().empty());
}

TEST(Listener, ConnectRefusesPathTooLongForSunPath) {
  const std::string path = "/tmp/" + std::string(sizeof(sockaddr_un::sun_path), 'p');
  auto client = Channel::connect(path);
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error().code, ENAMETOOLONG);
  EXPECT_NE(client.error().message.find("must be shorter than 108"), std::string::npos)
      << client.error().to_string();
  auto listener = Listener::bind(path);
  ASSERT_FALSE(listener);
  EXPECT_EQ(listener.error().code, ENAMETOOLONG);
}

TEST(Listener, ConnectToAMissingPathReportsEnoent) {
  TempDir dir;
  auto client = Channel::connect(dir.file("nobody.sock"));
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error().code, ENOENT);
  EXPECT_NE(client.error().message.find("nobody.sock"), std::string::npos) << client.error().to_string();
}

}  // namespace
}  // namespace floe::ipc
