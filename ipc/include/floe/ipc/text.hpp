// Quoting bytes a peer sent in floe's own messages (errors sent back, log lines) and in output for
// people (terminals).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace floe::ipc {

/// `text` made safe to put in a log line or a protobuf string: printable ASCII is kept, every
/// other byte becomes \xNN (so the result is ASCII, valid UTF-8 whatever `text` was), and past
/// `max_bytes` of input the rest is cut and replaced by "...(N bytes)". A peer controls the length
/// and content of what it sends; an error that quotes it must not carry 64 KiB or break a line.
[[nodiscard]] std::string excerpt(std::string_view text, std::size_t max_bytes = 64);

/// `text` made safe to print on a terminal, for output meant for people: C0 controls (ESC, BEL,
/// newline, ...), DEL and bytes that are not UTF-8 become \xNN, C1 controls (U+0080..U+009F) \uNNNN
/// and a backslash \\; printable ASCII and other well-formed UTF-8 stay as they are. A provider
/// writes texts that reach operators' terminals; an escape sequence in them must not rewrite the
/// screen. Not for JSON, whose encoder escapes control characters itself.
[[nodiscard]] std::string printable(std::string_view text);

/// `text` as valid UTF-8, for a protobuf string field (whose parser rejects the whole message
/// otherwise): every byte that does not start a well-formed sequence (RFC 3629: no overlongs, no
/// surrogates, nothing past U+10FFFF) becomes U+FFFD, and the result is cut at a character
/// boundary so that it is at most `max_bytes` long. Valid text under the limit comes back as is.
/// A provider writes texts and messages that end up in clients' answers; one stray byte must not
/// make every answer that carries them unreadable.
[[nodiscard]] std::string valid_utf8(std::string_view text, std::size_t max_bytes = std::string_view::npos);

}  // namespace floe::ipc
