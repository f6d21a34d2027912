// Quoting bytes a peer sent in floe's own messages (errors sent back, log lines).
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

}  // namespace floe::ipc
