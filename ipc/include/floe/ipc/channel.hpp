// Management channel: SOCK_SEQPACKET Unix sockets carrying one protobuf message plus file
// descriptors (SCM_RIGHTS) per packet. Message boundaries are preserved and each send is atomic.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "floe/ipc/fd.hpp"
#include "floe/ipc/result.hpp"

namespace google::protobuf {
class MessageLite;
}

namespace floe::ipc {

/// Largest packet floe sends or accepts on a management socket.
inline constexpr std::size_t kMaxPacketBytes = 64 * 1024;
/// Most descriptors accepted in one packet; a packet carrying more is refused (and all closed).
inline constexpr std::size_t kMaxPacketFds = 16;

struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

/// One received packet. Owns the received descriptors: dropping it closes them.
struct Packet {
  std::vector<std::byte> bytes;
  std::vector<Fd> fds;
};

/// One end of a connected SEQPACKET socket. Move-only; one sender and one receiver thread at a time.
class Channel {
 public:
  /// socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC).
  [[nodiscard]] static Result<std::pair<Channel, Channel>> pair();
  /// Connects to a listening socket at `path`.
  [[nodiscard]] static Result<Channel> connect(const std::string& path);
  /// Takes ownership of an already connected SEQPACKET socket (e.g. inherited by a child).
  [[nodiscard]] static Channel adopt(Fd socket) { return Channel(std::move(socket)); }

  /// Sends `bytes` and `fds` as one packet (sendmsg, MSG_NOSIGNAL). The fds are duplicated by
  /// the kernel; the caller keeps its own. Refuses > kMaxPacketBytes or > kMaxPacketFds.
  [[nodiscard]] Status send(std::span<const std::byte> bytes, std::span<const int> fds = {});
  /// Serialises `message` and sends it with `fds`.
  [[nodiscard]] Status send(const google::protobuf::MessageLite& message, std::span<const int> fds = {});

  /// Receives one packet (blocking unless the socket is non-blocking: then EAGAIN is an Error
  /// with code EAGAIN). Detects MSG_TRUNC and MSG_CTRUNC and returns an error, closing every fd
  /// that did arrive; no received fd leaks on any path. Orderly shutdown by the peer is an Error
  /// with code ECONNRESET and message "peer closed the connection".
  [[nodiscard]] Result<Packet> receive();
  /// receive() and parse into `message`; a parse failure is an error (fds closed).
  [[nodiscard]] Result<std::vector<Fd>> receive(google::protobuf::MessageLite& message);

  /// SO_PEERCRED of the connected peer.
  [[nodiscard]] Result<PeerCredentials> peer_credentials() const;
  [[nodiscard]] Status set_nonblocking(bool on);
  [[nodiscard]] int fd() const noexcept { return socket_.get(); }
  [[nodiscard]] Fd release() noexcept { return std::move(socket_); }

 private:
  explicit Channel(Fd socket) noexcept : socket_(std::move(socket)) {}
  /// recvmsg into rx_buf_ with every check of receive(); the packet's bytes are rx_buf_[0, n).
  [[nodiscard]] Result<std::size_t> receive_raw(std::vector<Fd>& fds);
  Fd socket_;
  /// The receiver's buffer, kMaxPacketBytes + 1 (to detect longer packets), allocated on the
  /// first receive and reused: a fresh zeroed 64 KiB per packet cost more than the recvmsg.
  std::unique_ptr<std::byte[]> rx_buf_;
};

/// A listening SEQPACKET socket bound to a filesystem path.
class Listener {
 public:
  /// Removes a stale socket file at `path`, binds, chmods to `mode` and listens.
  [[nodiscard]] static Result<Listener> bind(const std::string& path, unsigned mode = 0660);
  /// Moves leave `other` empty: it neither closes nor unlinks anything.
  Listener(Listener&& other) noexcept;
  Listener& operator=(Listener&& other) noexcept;
  ~Listener();  // unlinks the path

  [[nodiscard]] Result<Channel> accept();  // accept4(SOCK_CLOEXEC)
  [[nodiscard]] int fd() const noexcept { return socket_.get(); }
  [[nodiscard]] const std::string& path() const noexcept { return path_; }

 private:
  Listener(Fd socket, std::string path) noexcept : socket_(std::move(socket)), path_(std::move(path)) {}
  Fd socket_;
  std::string path_;
};

}  // namespace floe::ipc
