// Facts every peer of floe-core shares: the protocol version, where the sockets live, limits.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace floe::ipc {

/// Version of the management and client protocols (ipc/proto/*.proto). A peer whose Hello carries
/// another version gets ERROR_CODE_PROTOCOL_VERSION and is disconnected.
inline constexpr std::uint32_t kProtocolVersion = 1;

/// Socket file names inside the socket directory.
inline constexpr std::string_view kProviderSocketName = "provider.sock";
inline constexpr std::string_view kClientSocketName = "client.sock";

/// The socket directory: $FLOE_SOCKET_DIR if set; else $XDG_RUNTIME_DIR/floe; else /run/floe for
/// root; else /tmp/floe-$UID. floe-core, the provider SDK and floectl all use this rule, so they
/// meet without configuration.
[[nodiscard]] std::string default_socket_dir();

}  // namespace floe::ipc
