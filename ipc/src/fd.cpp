#include "floe/ipc/fd.hpp"

#include <fcntl.h>
#include <unistd.h>

namespace floe::ipc {

void Fd::reset(int fd) noexcept {
  // close(2) must not be retried on EINTR on Linux: the descriptor is already gone.
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Result<Fd> Fd::duplicate() const {
  const int copy = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return sys_error("fcntl(F_DUPFD_CLOEXEC)");
  return Fd(copy);
}

}  // namespace floe::ipc
