// floe-esphome-sim configuration: the simulated devices, their entities and the simulator's
// timing. Read from YAML (see README.md) or generated (--devices N).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "floe/esphome/transport.hpp"
#include "floe/ipc/result.hpp"

namespace floe::esphome::sim {

enum class Kind { kLight, kSwitch, kSensor, kBinarySensor, kTextSensor, kNumber, kSelect, kCover, kFan, kButton };

[[nodiscard]] std::string_view to_string(Kind kind) noexcept;
[[nodiscard]] std::optional<Kind> parse_kind(std::string_view text) noexcept;

struct EntityConfig {
  Kind kind = Kind::kSwitch;
  std::string name;
  std::string object_id;  // derived from the name when empty
  std::uint32_t key = 0;  // derived from kind, object_id and device_id when 0
  std::uint32_t device_id = 0;
  std::string icon;
  std::string device_class;
  std::string unit;
  int entity_category = 0;  // 0 none, 1 config, 2 diagnostic
  // light
  std::vector<int> color_modes;  // ColorMode numbers; default {brightness}
  std::vector<std::string> effects;
  float min_mireds = 153.0f;
  float max_mireds = 500.0f;
  // sensor, number
  float value = 0.0f;
  float min = 0.0f;
  float max = 100.0f;
  float step = 1.0f;
  int accuracy_decimals = 1;
  // select, text_sensor
  std::vector<std::string> options;
  std::string text;
  // switch, binary_sensor, light, fan: initial on/off
  bool state = false;
  // cover
  bool supports_position = true;
  bool supports_tilt = false;
  // fan
  int speed_count = 3;
  bool supports_oscillation = true;
  bool supports_direction = true;
  std::vector<std::string> preset_modes;
};

struct SubDevice {
  std::uint32_t id = 0;
  std::string name;
  std::uint32_t area_id = 0;
};

struct DeviceConfig {
  std::string name;
  std::string friendly_name;
  std::string mac;  // 12 lowercase hex digits; derived from the name when empty
  std::string model = "floe-esphome-sim";
  std::string suggested_area;
  std::uint16_t port = 0;  // 0: ephemeral
  std::optional<Psk> key;
  std::vector<SubDevice> sub_devices;
  std::vector<EntityConfig> entities;
};

struct SimConfig {
  std::string host = "127.0.0.1";
  std::vector<DeviceConfig> devices;
  std::uint32_t sensor_interval_ms = 5000;  // 0: sensors never change
  std::uint32_t ping_idle_ms = 60000;       // ping a client silent this long
  std::uint32_t drop_idle_ms = 150000;      // drop a client silent this long
  bool send_time_requests = true;           // GetTimeRequest after a client subscribes
};

/// Parses the YAML text of a config. Errors name the device/entity and the field.
[[nodiscard]] Result<SimConfig> parse_config(const std::string& yaml_text);
[[nodiscard]] Result<SimConfig> load_config(const std::string& path);
/// `count` devices "sim-1".."sim-N", each with one entity of every kind (and a sub-device), all
/// encrypted with `key` when given.
[[nodiscard]] SimConfig generate_config(unsigned count, std::optional<Psk> key);

/// Fills derived fields (object ids, keys, MACs, friendly names) and checks the config: unique
/// device names and explicit ports, unique (key, device_id) per device, entities of sub-devices
/// that exist, select options that include the initial option.
[[nodiscard]] Result<void> finalize(SimConfig& config);

/// ESPHome-style object id: lowercase, spaces to '_', other characters outside [a-z0-9_-] dropped.
[[nodiscard]] std::string object_id_of(std::string_view name);

}  // namespace floe::esphome::sim
