#include "floe/ipc/channel.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>
#include <string_view>

#include <fmt/format.h>
#include <google/protobuf/message_lite.h>

namespace floe::ipc {

namespace {

// Room for exactly kMaxPacketFds descriptors: one more makes the kernel set MSG_CTRUNC.
constexpr std::size_t kControlBytes = CMSG_SPACE(kMaxPacketFds * sizeof(int));

// Control buffers must be aligned for cmsghdr.
union ControlBuffer {
  cmsghdr align;
  char bytes[kControlBytes];
};

Result<sockaddr_un> make_address(std::string_view operation, const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty()) return logic_error(operation, "socket path is empty");
  if (path.find('\0') != std::string::npos) return logic_error(operation, "socket path contains a NUL byte");
  // Keep a terminating NUL so the kernel and every tool see the same name.
  if (path.size() >= sizeof(addr.sun_path)) {
    return sys_error(operation, ENAMETOOLONG,
                     fmt::format("socket path '{}' is {} bytes; Unix socket paths must be shorter than {}", path,
                                 path.size(), sizeof(addr.sun_path)));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Channel

Result<std::pair<Channel, Channel>> Channel::pair() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    return sys_error("socketpair", "AF_UNIX, SOCK_SEQPACKET");
  }
  return std::pair<Channel, Channel>{Channel(Fd(sv[0])), Channel(Fd(sv[1]))};
}

Result<Channel> Channel::connect(const std::string& path) {
  auto addr = make_address("channel.connect", path);
  if (!addr) return tl::unexpected(std::move(addr).error());
  Fd sock(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!sock) return sys_error("socket", "AF_UNIX, SOCK_SEQPACKET");
  // A Unix-socket connect interrupted by a signal has queued nothing, so it is safe to retry.
  int rc = 0;
  do {
    rc = ::connect(sock.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_un));
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) return sys_errorf("connect", "to '{}'", path);
  return Channel(std::move(sock));
}

Status Channel::send(std::span<const std::byte> bytes, std::span<const int> fds) {
  if (!socket_) return logic_error("channel.send", "channel is closed (moved from?)");
  if (bytes.size() > kMaxPacketBytes) {
    return logic_error("channel.send",
                       fmt::format("packet of {} bytes exceeds the limit of {}", bytes.size(), kMaxPacketBytes));
  }
  if (fds.size() > kMaxPacketFds) {
    return logic_error("channel.send",
                       fmt::format("{} fds in one packet exceed the limit of {}", fds.size(), kMaxPacketFds));
  }
  // recvmsg returns 0 both for an empty packet and for the peer closing; refuse the ambiguity.
  if (bytes.empty()) {
    return logic_error("channel.send",
                       "empty packet: the receiver could not tell it from the peer closing the connection");
  }

  iovec iov{};
  iov.iov_base = const_cast<std::byte*>(bytes.data());
  iov.iov_len = bytes.size();
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;

  ControlBuffer control{};
  if (!fds.empty()) {
    msg.msg_control = control.bytes;
    msg.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), fds.data(), fds.size() * sizeof(int));
  }

  ssize_t sent = 0;
  do {
    sent = ::sendmsg(socket_.get(), &msg, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) {
    return sys_errorf("sendmsg", "{} bytes, {} fds", bytes.size(), fds.size());
  }
  // SOCK_SEQPACKET sends are atomic; a partial send would mean the socket is not what we think.
  if (static_cast<std::size_t>(sent) != bytes.size()) {
    return logic_error("channel.send", fmt::format("short send: {} of {} bytes", sent, bytes.size()));
  }
  return {};
}

Status Channel::send(const google::protobuf::MessageLite& message, std::span<const int> fds) {
  const std::size_t size = message.ByteSizeLong();
  if (size > kMaxPacketBytes) {
    return logic_error("channel.send", fmt::format("{} of {} bytes exceeds the packet limit of {}",
                                                   message.GetTypeName(), size, kMaxPacketBytes));
  }
  std::vector<std::byte> buffer(size);
  if (!message.SerializeToArray(buffer.data(), static_cast<int>(size))) {
    return logic_error("channel.send", fmt::format("serialising {} failed (missing required fields?)",
                                                   message.GetTypeName()));
  }
  return send(std::span<const std::byte>(buffer), fds);
}

Result<std::size_t> Channel::receive_raw(std::vector<Fd>& fds) {
  if (!socket_) return logic_error("channel.receive", "channel is closed (moved from?)");

  // Allocated before recvmsg: once descriptors arrive, taking them must not be able to throw.
  constexpr std::size_t kMaxFdsInControl = (kControlBytes - CMSG_LEN(0)) / sizeof(int);
  fds.clear();
  fds.reserve(kMaxFdsInControl);
  if (!rx_buf_) rx_buf_ = std::make_unique_for_overwrite<std::byte[]>(kMaxPacketBytes + 1);

  iovec iov{};
  iov.iov_base = rx_buf_.get();
  iov.iov_len = kMaxPacketBytes + 1;
  ControlBuffer control{};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.bytes;
  msg.msg_controllen = sizeof(control.bytes);

  ssize_t n = 0;
  do {
    n = ::recvmsg(socket_.get(), &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return sys_error("recvmsg");

  // Own every descriptor that arrived before looking at anything else: from here on, every
  // return path closes them through fds.
  bool foreign_cmsg = false;
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
      foreign_cmsg = true;
      continue;
    }
    const std::size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(cmsg);
    for (std::size_t i = 0; i < count; ++i) {
      int fd = -1;
      std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
      fds.emplace_back(fd);  // capacity reserved above: cannot reallocate or throw
    }
  }

  if (n == 0 && msg.msg_controllen == 0) {
    return sys_error("channel.receive", ECONNRESET, "peer closed the connection");
  }
  if ((msg.msg_flags & MSG_CTRUNC) != 0) {
    return logic_error("channel.receive",
                       fmt::format("control data truncated (MSG_CTRUNC): the peer sent more than {} fds or "
                                   "unexpected ancillary data; closed the {} fds that arrived",
                                   kMaxPacketFds, fds.size()));
  }
  if ((msg.msg_flags & MSG_TRUNC) != 0 || static_cast<std::size_t>(n) > kMaxPacketBytes) {
    return logic_error("channel.receive",
                       fmt::format("packet truncated (MSG_TRUNC): the peer sent more than {} bytes; closed "
                                   "its {} fds",
                                   kMaxPacketBytes, fds.size()));
  }
  if (foreign_cmsg) {
    return logic_error("channel.receive",
                       fmt::format("unexpected ancillary data (not SCM_RIGHTS); closed the {} fds that arrived",
                                   fds.size()));
  }
  if (fds.size() > kMaxPacketFds) {
    return logic_error("channel.receive", fmt::format("{} fds in one packet exceed the limit of {}; closed them",
                                                      fds.size(), kMaxPacketFds));
  }
  return static_cast<std::size_t>(n);
}

Result<Packet> Channel::receive() {
  Packet packet;
  auto n = receive_raw(packet.fds);
  if (!n) return tl::unexpected(std::move(n).error());
  packet.bytes.assign(rx_buf_.get(), rx_buf_.get() + *n);
  return packet;
}

Result<std::vector<Fd>> Channel::receive(google::protobuf::MessageLite& message) {
  std::vector<Fd> fds;
  auto n = receive_raw(fds);
  if (!n) return tl::unexpected(std::move(n).error());
  // Checked by receive_raw against kMaxPacketBytes, which fits in int.
  static_assert(kMaxPacketBytes <= static_cast<std::size_t>(std::numeric_limits<int>::max()));
  if (!message.ParseFromArray(rx_buf_.get(), static_cast<int>(*n))) {
    return logic_error("channel.receive",
                       fmt::format("{} bytes did not parse as {}; closed the {} fds that came with them", *n,
                                   message.GetTypeName(), fds.size()));
  }
  return fds;
}

Result<PeerCredentials> Channel::peer_credentials() const {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(socket_.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
    return sys_error("getsockopt(SO_PEERCRED)");
  }
  return PeerCredentials{.pid = cred.pid, .uid = cred.uid, .gid = cred.gid};
}

Status Channel::set_nonblocking(bool on) {
  const int flags = ::fcntl(socket_.get(), F_GETFL);
  if (flags < 0) return sys_error("fcntl(F_GETFL)");
  const int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (wanted != flags && ::fcntl(socket_.get(), F_SETFL, wanted) < 0) return sys_error("fcntl(F_SETFL)");
  return {};
}

// ---------------------------------------------------------------------------------------------
// Listener

Result<Listener> Listener::bind(const std::string& path, unsigned mode) {
  auto addr = make_address("listener.bind", path);
  if (!addr) return tl::unexpected(std::move(addr).error());

  // A socket file left by a process that died is stale; anything else at the path is not ours.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return sys_error("listener.bind", EEXIST,
                       fmt::format("'{}' exists and is not a socket; refusing to replace it", path));
    }
    // A live listener accepts connections; a stale file refuses them.
    Fd probe(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (!probe) return sys_error("socket", "AF_UNIX, SOCK_SEQPACKET");
    int rc = 0;
    do {
      rc = ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_un));
    } while (rc < 0 && errno == EINTR);
    if (rc == 0) {
      return sys_error("listener.bind", EADDRINUSE,
                       fmt::format("another process is listening on '{}'", path));
    }
    if (::unlink(path.c_str()) < 0 && errno != ENOENT) {
      return sys_errorf("unlink", "stale socket '{}'", path);
    }
  } else if (errno != ENOENT) {
    return sys_errorf("lstat", "'{}'", path);
  }

  Fd sock(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!sock) return sys_error("socket", "AF_UNIX, SOCK_SEQPACKET");
  if (::bind(sock.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_un)) < 0) {
    return sys_errorf("bind", "'{}'", path);
  }
  // From here the path is ours: the Listener (or the failure paths below) unlinks it.
  Listener listener(std::move(sock), path);
  // chmod before listen(): until listen() nobody can connect, whatever the umask allowed.
  if (::chmod(path.c_str(), static_cast<mode_t>(mode)) < 0) {
    return sys_errorf("chmod", "'{}' to {:04o}", path, mode);
  }
  if (::listen(listener.socket_.get(), SOMAXCONN) < 0) return sys_errorf("listen", "'{}'", path);
  return listener;
}

Listener::Listener(Listener&& other) noexcept
    : socket_(std::move(other.socket_)), path_(std::exchange(other.path_, std::string())) {}

Listener& Listener::operator=(Listener&& other) noexcept {
  if (this != &other) {
    if (!path_.empty()) ::unlink(path_.c_str());
    socket_ = std::move(other.socket_);
    path_ = std::exchange(other.path_, std::string());
  }
  return *this;
}

Listener::~Listener() {
  if (!path_.empty()) ::unlink(path_.c_str());
}

Result<Channel> Listener::accept() {
  int fd = -1;
  do {
    fd = ::accept4(socket_.get(), nullptr, nullptr, SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return sys_errorf("accept4", "on '{}'", path_);
  return Channel::adopt(Fd(fd));
}

}  // namespace floe::ipc
