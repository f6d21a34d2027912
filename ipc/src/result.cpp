#include "floe/ipc/result.hpp"

#include <cstring>

namespace floe {

std::string Error::to_string() const {
  std::string out = operation;
  if (!message.empty()) {
    out += ": ";
    out += message;
  }
  if (code != 0) {
    out += " (";
    out += std::strerror(code);
    out += ")";
  }
  return out;
}

tl::unexpected<Error> sys_error(std::string_view operation, std::string_view message) {
  const int code = errno;
  return sys_error(operation, code, message);
}

tl::unexpected<Error> sys_error(std::string_view operation, int code, std::string_view message) {
  return tl::unexpected(Error{std::string(operation), code, std::string(message)});
}

tl::unexpected<Error> logic_error(std::string_view operation, std::string_view message) {
  return tl::unexpected(Error{std::string(operation), 0, std::string(message)});
}

}  // namespace floe
