// How ESPHome entities become floe entities (docs/ESPHOME.md has the table):
//
//   light         Light + Switch + Dimmer + Color + ColorTemperature + ColorMode
//   switch        Switch
//   sensor        Sensor + Real + Unit + DeviceClass + AccuracyDecimals
//   binary_sensor Sensor + Boolean
//   text_sensor   Sensor + Text
//   number        Real
//   select        TextSelect + Text + TextList
//   cover         Cover + CoverState + Position + Tilt
//   fan           FanSpeed + FanOscillation + FanDirection
//   button        Trigger
//   plus Config or Diagnostic for an entity category.
//
// Pure functions over protobuf payloads (no sockets, no state): any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "floe/ipc/components.hpp"
#include "floe/ipc/result.hpp"
#include "floe/sdk/provider.hpp"
#include "floe/sdk/records.hpp"

namespace floe::esphome {

enum class EntityKind : std::uint8_t {
  kLight,
  kSwitch,
  kSensor,
  kBinarySensor,
  kTextSensor,
  kNumber,
  kSelect,
  kCover,
  kFan,
  kButton,
};
[[nodiscard]] std::string_view to_string(EntityKind kind) noexcept;

/// What a ListEntities*Response told us about one entity.
struct EntityInfo {
  EntityKind kind = EntityKind::kSwitch;
  std::uint32_t key = 0;
  std::uint32_t device_id = 0;  // sub-device (0: the node itself)
  std::string object_id{};      // derived from the name when the device leaves it empty
  std::string name{};
  std::uint32_t category = 0;   // 0 none, 1 config, 2 diagnostic
  std::string unit{};
  std::string device_class{};
  std::int32_t accuracy_decimals = 0;
  std::vector<std::string> options{};  // select
  std::int32_t speed_count = 0;        // fan
  bool operator==(const EntityInfo&) const = default;
};

/// The entity announced by a ListEntities*Response of message type `type`; nullopt for any other
/// type (including the kinds floe does not map: climate, lock, ...). An Error for a garbage payload.
[[nodiscard]] Result<std::optional<EntityInfo>> parse_list_entity(std::uint16_t type, std::string_view payload);

/// The floe components of an entity.
[[nodiscard]] std::vector<sdk::ComponentSpec> components_for(const EntityInfo& e);

/// One value to write into the tree.
struct Write {
  ipc::Component component = ipc::Component::kNone;
  std::variant<ipc::Value, std::string, std::vector<std::string>> value;  // small | text | list
};

/// The values known from the entity list alone (Unit, DeviceClass, AccuracyDecimals, TextList).
[[nodiscard]] std::vector<Write> static_writes(const EntityInfo& e);

/// A *StateResponse decoded for the entity it names.
struct StateUpdate {
  const EntityInfo* entity = nullptr;
  std::vector<Write> writes;
};
using EntityLookup = std::function<const EntityInfo*(std::uint32_t key, std::uint32_t device_id)>;
/// Decodes a state message: nullopt if `type` is not a state message of a mapped kind or `find`
/// does not know the (key, device_id); an Error for a garbage payload.
[[nodiscard]] Result<std::optional<StateUpdate>> parse_state(std::uint16_t type, std::string_view payload,
                                                             const EntityLookup& find);

/// A command for the device.
struct Command {
  std::uint16_t type = 0;
  std::string payload;
  bool answered_by_state = true;  // false for a button: the device reports nothing back
};
/// The command that carries out "set `component` of `e` to `value`"; an Error (with a message
/// for the client) if the entity cannot do that.
[[nodiscard]] Result<Command> command_for(const EntityInfo& e, ipc::Component component, const sdk::RequestValue& value);

/// ESPHome ColorMode value <-> floe ColorMode enum value.
[[nodiscard]] std::uint16_t floe_color_mode(std::uint32_t esphome) noexcept;
[[nodiscard]] std::optional<std::uint32_t> esphome_color_mode(std::uint16_t floe) noexcept;

/// The object id ESPHome would derive from a name (lower case, runs of other characters as '_').
[[nodiscard]] std::string object_id_from_name(std::string_view name);
/// Home-wide entity ids "<device>.<object_id>" for `entities` of floe device `device`, unique and
/// valid (shortened to 64 characters, a numeric suffix on a clash). Same input, same ids.
[[nodiscard]] std::vector<std::string> entity_ids(std::string_view device, std::span<const EntityInfo> entities);
/// The floe id of sub-device `sub` (its name, or its number) of the node whose id is `node`:
/// "<node>-<sub>" as a valid id. Over 64 characters the node's part is shortened, so the result
/// always differs from `node`. Two sub-devices may still come out the same ("Porch", "porch"):
/// the caller makes them unique.
[[nodiscard]] std::string sub_device_id(std::string_view node, std::string_view sub);

}  // namespace floe::esphome
