#include "floe/ipc/text.hpp"

#include <fmt/format.h>

namespace floe::ipc {

std::string excerpt(std::string_view text, std::size_t max_bytes) {
  const std::string_view shown = text.substr(0, max_bytes);
  std::string out;
  out.reserve(shown.size() + 24);
  for (const char ch : shown) {
    const auto b = static_cast<unsigned char>(ch);
    if (b == '\\') {
      out += "\\\\";
    } else if (b >= 0x20 && b < 0x7f) {
      out.push_back(ch);
    } else {
      out += fmt::format("\\x{:02x}", b);
    }
  }
  if (shown.size() < text.size()) out += fmt::format("...({} bytes)", text.size());
  return out;
}

}  // namespace floe::ipc
