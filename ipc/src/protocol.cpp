#include "floe/ipc/protocol.hpp"

#include <unistd.h>

#include <cstdlib>

namespace floe::ipc {

std::string default_socket_dir() {
  if (const char* dir = std::getenv("FLOE_SOCKET_DIR"); dir != nullptr && *dir != '\0') return dir;
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    return std::string(xdg) + "/floe";
  }
  if (::geteuid() == 0) return "/run/floe";
  return "/tmp/floe-" + std::to_string(::getuid());
}

}  // namespace floe::ipc
