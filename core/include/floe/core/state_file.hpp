// The core's persistent metadata: devices (id, name, provider, entities with their schema) and
// groups. Component values are live state and are not stored. JSON (nlohmann_json), written
// atomically: temp file in the same directory, fsync, rename over the old file, fsync the directory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "floe/ipc/result.hpp"
#include "floe/ipc/tree.hpp"

namespace floe::core {

inline constexpr int kStateFileVersion = 1;

struct StoredEntity {
  std::string id;
  std::string name;
  std::vector<ipc::ComponentDecl> components;
  friend bool operator==(const StoredEntity&, const StoredEntity&) = default;
};

struct StoredDevice {
  std::string id;  // device id (the registry name)
  std::string name;
  std::string provider;
  /// The uid of the provider that declared it last (SO_PEERCRED); absent in files written before
  /// floe recorded it. With bind_devices_to_uid, only that uid may declare or remove it again.
  std::optional<std::uint32_t> uid;
  std::vector<StoredEntity> entities;
  std::vector<std::string> groups;
  friend bool operator==(const StoredDevice&, const StoredDevice&) = default;
};

struct StoredState {
  std::vector<StoredDevice> devices;
  std::vector<std::string> groups;  // every group, members or not
  friend bool operator==(const StoredState&, const StoredState&) = default;
};

/// The schema a device's entities declare.
[[nodiscard]] ipc::TreeSchema schema_of(const StoredDevice& device);

[[nodiscard]] std::string state_to_json(const StoredState& state);
/// Errors name what is wrong ("devices[2].entities[0]: missing 'id'").
[[nodiscard]] Result<StoredState> state_from_json(std::string_view text);

/// Reads `path`. A missing file is an empty state; an unreadable or corrupt one is an error.
[[nodiscard]] Result<StoredState> load_state(const std::string& path);
/// Writes atomically (temp + fsync + rename + fsync of the directory).
[[nodiscard]] Status save_state(const std::string& path, const StoredState& state);

}  // namespace floe::core
