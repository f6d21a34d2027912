// floe::Result<T>: the error channel of every operation that crosses a syscall or resource boundary.
// The alias lives here alone, so moving to std::expected later is a one-line change.
#pragma once

#include <cerrno>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/core.h>
#include <tl/expected.hpp>

namespace floe {

/// What failed: the operation ("memfd_create", "recvmsg", "ring.pop"), the errno if a syscall
/// failed (0 otherwise) and a message a person can act on.
struct Error {
  std::string operation;
  int code = 0;
  std::string message;

  /// "operation: message (strerror)" — what logs and CLIs print.
  [[nodiscard]] std::string to_string() const;
};

template <typename T>
using Result = tl::expected<T, Error>;
using Status = Result<void>;

/// An Error from a failed syscall: captures errno now, so call it before anything else can clobber it.
[[nodiscard]] tl::unexpected<Error> sys_error(std::string_view operation, std::string_view message = {});
/// An Error with an explicit errno (e.g. from io_uring's negative results).
[[nodiscard]] tl::unexpected<Error> sys_error(std::string_view operation, int code, std::string_view message);
/// sys_error with a message formatted from `format` and `args`. errno is captured before the
/// message is built (building it allocates, and an allocation may change errno), but after the
/// arguments are evaluated: pass values that exist already, not temporaries that allocate.
template <typename... Args>
[[nodiscard]] tl::unexpected<Error> sys_errorf(std::string_view operation, fmt::format_string<Args...> format,
                                             Args&&... args) {
  const int code = errno;
  return sys_error(operation, code, fmt::format(format, std::forward<Args>(args)...));
}
/// An Error that is not a syscall failure: bad input, violated invariant, protocol mismatch.
[[nodiscard]] tl::unexpected<Error> logic_error(std::string_view operation, std::string_view message);

}  // namespace floe

// Propagates the error of a Result-returning expression, like Rust's `?`.
#define FLOE_TRY(expr)                                     \
  do {                                                     \
    if (auto floe_try_r_ = (expr); !floe_try_r_)           \
      return tl::unexpected(std::move(floe_try_r_).error()); \
  } while (0)
