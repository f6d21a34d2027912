// Fd: sole owner of a file descriptor.
#pragma once

#include <utility>

#include "floe/ipc/result.hpp"

namespace floe::ipc {

/// Owns one file descriptor and closes it on destruction. Move-only. Not thread-safe.
class Fd {
 public:
  Fd() noexcept = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  [[nodiscard]] int get() const noexcept { return fd_; }
  [[nodiscard]] bool valid() const noexcept { return fd_ >= 0; }
  explicit operator bool() const noexcept { return valid(); }

  /// Gives up ownership without closing.
  [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
  /// Closes the current descriptor (if any) and takes ownership of `fd`.
  void reset(int fd = -1) noexcept;
  /// dup(2) with FD_CLOEXEC.
  [[nodiscard]] Result<Fd> duplicate() const;

 private:
  int fd_ = -1;
};

}  // namespace floe::ipc
