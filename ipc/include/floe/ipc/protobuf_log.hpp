// Where protobuf's own log lines go.
#pragma once

namespace floe::ipc {

/// Sends protobuf's internal log lines to spdlog: FATAL at critical, everything else at debug.
/// By default protobuf writes a line to stderr for every string field that is not UTF-8, so a
/// peer sending such packets could fill the log; floe already answers and reports every packet it
/// cannot parse, with the peer's context. Call once, early in a program's main thread (protobuf's
/// handler is process-wide and not thread-safe to change).
void route_protobuf_logs_to_spdlog();

}  // namespace floe::ipc
