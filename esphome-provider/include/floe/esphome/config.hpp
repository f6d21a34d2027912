// floe-esphome's configuration: which ESPHome devices to connect to, and how (docs/ESPHOME.md).
//
//   name: esphome                  # provider name (optional)
//   socket_dir: /run/floe          # floe-core's socket directory (optional)
//   request_timeout_ms: 5000       # a device that stays silent fails a request after this
//   keepalive_ms: 20000            # ping an idle device this often
//   reconnect: {min_ms: 1000, max_ms: 60000}
//   devices:
//     - host: 192.168.1.20         # required
//       port: 6053                 # default 6053
//       name: kitchen              # floe device id; default: the node's own name
//       encryption_key: "base64"   # the device's `api: encryption: key:`; absent = plaintext
//       groups: [kitchen]
//
// Pure functions: any thread.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "floe/ipc/result.hpp"

namespace floe::esphome {

struct DeviceConfig {
  std::string host{};
  std::uint16_t port = 6053;
  std::string name{};                                   // floe device id; empty: the node's name
  std::optional<std::array<std::uint8_t, 32>> psk{};    // decoded encryption_key; nullopt: plaintext
  std::vector<std::string> groups{};
  int line = 0;                                         // where the entry starts in the file (1-based)

  /// "host:port" (the device's address as logs print it).
  [[nodiscard]] std::string address() const;
};

struct Config {
  std::string name = "esphome";
  std::string socket_dir{};                             // empty: ipc::default_socket_dir()
  std::chrono::milliseconds request_timeout{5000};
  std::chrono::milliseconds keepalive{20000};
  std::chrono::milliseconds reconnect_min{1000};
  std::chrono::milliseconds reconnect_max{60000};
  std::vector<DeviceConfig> devices{};
};

/// Parses YAML text. `origin` names the source in error messages ("floe-esphome.yaml:7: ...").
/// Unknown keys, wrong types, out-of-range numbers, bad keys and duplicate names or addresses are
/// errors with the line they are on.
[[nodiscard]] Result<Config> parse_config(std::string_view text, std::string_view origin = "config");
/// Reads and parses a file.
[[nodiscard]] Result<Config> load_config(const std::string& path);

/// A floe id made from a display name: lower case, runs of anything outside [a-z0-9_.-] become
/// one '_', trimmed, at most 64 characters; "device" if nothing is left.
[[nodiscard]] std::string slugify(std::string_view name);
/// True if `id` is 1..64 characters of [a-z0-9_.-] (what floe-core accepts as a device/entity id).
[[nodiscard]] bool is_valid_id(std::string_view id) noexcept;

}  // namespace floe::esphome
