// The core's persistent metadata: devices (id, name, provider, entities with their schema) and
// groups. Component values are live state and are not stored. JSON (nlohmann_json), written
// atomically: temp file in the same directory, fsync, rename over the old file, fsync the directory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "floe/ipc/fd.hpp"
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

/// Reads `path`. A missing file in an existing directory is an empty state (a first start); an
/// unreadable or corrupt file, or a missing directory, is an error.
[[nodiscard]] Result<StoredState> load_state(const std::string& path);
/// Writes atomically: a temporary file of its own (mkstemp) + fsync + rename + fsync of the
/// directory, all of which must succeed. If `path` is a symbolic link, the file it points to is
/// replaced, and the link stays.
[[nodiscard]] Status save_state(const std::string& path, const StoredState& state);
/// Takes an exclusive lock (flock on `path` + ".lock", following links like save_state) that
/// lasts as long as the returned descriptor: two cores never share one state file. Error: the
/// lock is held by another process.
[[nodiscard]] Result<ipc::Fd> lock_state_file(const std::string& path);

}  // namespace floe::core
