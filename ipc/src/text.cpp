#include "floe/ipc/text.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace floe::ipc {

namespace {

// One byte as excerpt and printable show it: printable ASCII as is, a backslash doubled, anything
// else as \xNN.
void append_escaped(std::string& out, unsigned char b) {
  if (b == '\\') {
    out += "\\\\";
  } else if (b >= 0x20 && b < 0x7f) {
    out.push_back(static_cast<char>(b));
  } else {
    out += fmt::format("\\x{:02x}", b);
  }
}

}  // namespace

std::string excerpt(std::string_view text, std::size_t max_bytes) {
  const std::string_view shown = text.substr(0, max_bytes);
  std::string out;
  out.reserve(shown.size() + 24);
  for (const char ch : shown) append_escaped(out, static_cast<unsigned char>(ch));
  if (shown.size() < text.size()) out += fmt::format("...({} bytes)", text.size());
  return out;
}

namespace {

// The length of the well-formed UTF-8 sequence at the start of `text` (1-4), or 0 if it does not
// start with one.
std::size_t utf8_sequence(std::string_view text) noexcept {
  if (text.empty()) return 0;
  const auto at = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b0 = at(0);
  if (b0 < 0x80) return 1;
  std::size_t n = 0;
  unsigned char lo = 0x80;  // the second byte's range excludes overlongs and surrogates
  unsigned char hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (text.size() < n || at(1) < lo || at(1) > hi) return 0;
  for (std::size_t i = 2; i < n; ++i) {
    if (at(i) < 0x80 || at(i) > 0xBF) return 0;
  }
  return n;
}

}  // namespace

std::string valid_utf8(std::string_view text, std::size_t max_bytes) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  if (text.size() <= max_bytes &&
      std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
    return std::string(text);  // the usual case
  }
  std::string out;
  out.reserve(std::min(text.size(), max_bytes));
  while (!text.empty()) {
    std::size_t n = utf8_sequence(text);
    const std::string_view piece = n != 0 ? text.substr(0, n) : kReplacement;
    if (out.size() + piece.size() > max_bytes) break;
    out += piece;
    text.remove_prefix(n != 0 ? n : 1);
  }
  return out;
}

std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  while (!text.empty()) {
    const std::size_t n = utf8_sequence(text);
    const auto second = n == 2 ? static_cast<unsigned char>(text[1]) : 0;
    if (n == 2 && static_cast<unsigned char>(text[0]) == 0xC2 && second < 0xA0) {
      out += fmt::format("\\u{:04x}", second);  // C1 control U+0080..U+009F (0x9B is CSI)
    } else if (n > 1) {
      out += text.substr(0, n);
    } else {
      append_escaped(out, static_cast<unsigned char>(text[0]));
    }
    text.remove_prefix(n != 0 ? n : 1);
  }
  return out;
}

}  // namespace floe::ipc
