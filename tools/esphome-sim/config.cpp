#include "config.hpp"

#include <yaml-cpp/yaml.h>

#include <fmt/format.h>

#include <fstream>
#include <set>
#include <sstream>

#include "floe/esphome/messages.hpp"

namespace floe::esphome::sim {
namespace {

constexpr const char* kOp = "esphome-sim.config";

struct KindName {
  Kind kind;
  std::string_view name;
};
constexpr KindName kKinds[] = {
    {Kind::kLight, "light"},   {Kind::kSwitch, "switch"}, {Kind::kSensor, "sensor"},
    {Kind::kBinarySensor, "binary_sensor"}, {Kind::kTextSensor, "text_sensor"}, {Kind::kNumber, "number"},
    {Kind::kSelect, "select"}, {Kind::kCover, "cover"},   {Kind::kFan, "fan"},
    {Kind::kButton, "button"},
};

struct ColorModeName {
  int mode;
  std::string_view name;
};
constexpr ColorModeName kColorModes[] = {
    {api::COLOR_MODE_ON_OFF, "on_off"},
    {api::COLOR_MODE_BRIGHTNESS, "brightness"},
    {api::COLOR_MODE_WHITE, "white"},
    {api::COLOR_MODE_COLOR_TEMPERATURE, "color_temperature"},
    {api::COLOR_MODE_COLD_WARM_WHITE, "cold_warm_white"},
    {api::COLOR_MODE_RGB, "rgb"},
    {api::COLOR_MODE_RGB_WHITE, "rgb_white"},
    {api::COLOR_MODE_RGB_COLOR_TEMPERATURE, "rgb_color_temperature"},
    {api::COLOR_MODE_RGB_COLD_WARM_WHITE, "rgb_cold_warm_white"},
};

// FNV-1 (32 bit), as ESPHome derives entity keys from object ids.
std::uint32_t fnv1(std::string_view s) {
  std::uint32_t h = 2166136261u;
  for (unsigned char c : s) {
    h *= 16777619u;
    h ^= c;
  }
  return h;
}

template <typename T>
T get(const YAML::Node& n, const char* field, T fallback) {
  const auto v = n[field];
  return v ? v.as<T>() : fallback;
}

std::vector<std::string> strings(const YAML::Node& n, const char* field) {
  std::vector<std::string> out;
  const auto v = n[field];
  if (!v) return out;
  if (!v.IsSequence()) throw std::runtime_error(fmt::format("'{}' must be a list", field));
  for (const auto& item : v) out.push_back(item.as<std::string>());
  return out;
}

EntityConfig parse_entity(const YAML::Node& n) {
  EntityConfig e;
  const auto type = get<std::string>(n, "type", "");
  const auto kind = parse_kind(type);
  if (!kind) throw std::runtime_error(fmt::format("unknown entity type '{}' (light, switch, sensor, binary_sensor, "
                                                  "text_sensor, number, select, cover, fan, button)", type));
  e.kind = *kind;
  e.name = get<std::string>(n, "name", "");
  if (e.name.empty()) throw std::runtime_error(fmt::format("a {} entity needs a name", type));
  e.object_id = get<std::string>(n, "object_id", "");
  e.key = get<std::uint32_t>(n, "key", 0);
  e.device_id = get<std::uint32_t>(n, "device_id", 0);
  e.icon = get<std::string>(n, "icon", "");
  e.device_class = get<std::string>(n, "device_class", "");
  e.unit = get<std::string>(n, "unit", "");
  const auto category = get<std::string>(n, "entity_category", "");
  if (category == "config") e.entity_category = 1;
  else if (category == "diagnostic") e.entity_category = 2;
  else if (!category.empty() && category != "none")
    throw std::runtime_error(fmt::format("entity_category '{}' is not none, config or diagnostic", category));
  for (const auto& m : strings(n, "color_modes")) {
    bool found = false;
    for (const auto& cm : kColorModes) {
      if (cm.name == m) {
        e.color_modes.push_back(cm.mode);
        found = true;
      }
    }
    if (!found) throw std::runtime_error(fmt::format("unknown color mode '{}'", m));
  }
  e.effects = strings(n, "effects");
  e.min_mireds = get<float>(n, "min_mireds", e.min_mireds);
  e.max_mireds = get<float>(n, "max_mireds", e.max_mireds);
  e.min = get<float>(n, "min", e.min);
  e.max = get<float>(n, "max", e.max);
  e.step = get<float>(n, "step", e.step);
  e.accuracy_decimals = get<int>(n, "accuracy_decimals", e.accuracy_decimals);
  e.options = strings(n, "options");
  e.preset_modes = strings(n, "preset_modes");
  e.supports_position = get<bool>(n, "supports_position", e.supports_position);
  e.supports_tilt = get<bool>(n, "supports_tilt", e.supports_tilt);
  e.speed_count = get<int>(n, "speed_count", e.speed_count);
  e.supports_oscillation = get<bool>(n, "supports_oscillation", e.supports_oscillation);
  e.supports_direction = get<bool>(n, "supports_direction", e.supports_direction);
  // `state`/`value` is the initial state; its type depends on the kind.
  if (const auto v = n["state"]) {
    switch (e.kind) {
      case Kind::kTextSensor:
      case Kind::kSelect:
        e.text = v.as<std::string>();
        break;
      case Kind::kSensor:
      case Kind::kNumber:
      case Kind::kCover:
        e.value = v.as<float>();
        break;
      default:
        e.state = v.as<bool>();
    }
  }
  return e;
}

DeviceConfig parse_device(const YAML::Node& n) {
  DeviceConfig d;
  d.name = get<std::string>(n, "name", "");
  if (d.name.empty()) throw std::runtime_error("a device needs a name");
  try {
    d.friendly_name = get<std::string>(n, "friendly_name", "");
    d.mac = get<std::string>(n, "mac", "");
    d.model = get<std::string>(n, "model", d.model);
    d.suggested_area = get<std::string>(n, "area", "");
    const auto port = get<int>(n, "port", 0);
    if (port < 0 || port > 65535) throw std::runtime_error(fmt::format("port {} out of range", port));
    d.port = static_cast<std::uint16_t>(port);
    const auto key = get<std::string>(n, "encryption_key", "");
    if (!key.empty()) {
      auto psk = decode_psk(key);
      if (!psk) throw std::runtime_error(psk.error().message);
      d.key = *psk;
    }
    if (const auto subs = n["sub_devices"]) {
      for (const auto& s : subs) {
        SubDevice sd;
        sd.id = get<std::uint32_t>(s, "id", 0);
        sd.name = get<std::string>(s, "name", "");
        sd.area_id = get<std::uint32_t>(s, "area_id", 0);
        if (sd.id == 0) throw std::runtime_error("a sub-device needs an id other than 0");
        d.sub_devices.push_back(std::move(sd));
      }
    }
    if (const auto entities = n["entities"]) {
      if (!entities.IsSequence()) throw std::runtime_error("'entities' must be a list");
      for (const auto& e : entities) d.entities.push_back(parse_entity(e));
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("device '{}': {}", d.name, e.what()));
  }
  return d;
}

}  // namespace

std::string_view to_string(Kind kind) noexcept {
  for (const auto& k : kKinds)
    if (k.kind == kind) return k.name;
  return "?";
}

std::optional<Kind> parse_kind(std::string_view text) noexcept {
  for (const auto& k : kKinds)
    if (k.name == text) return k.kind;
  return std::nullopt;
}

std::string object_id_of(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (c >= 'A' && c <= 'Z') out.push_back(static_cast<char>(c - 'A' + 'a'));
    else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-') out.push_back(c);
    else if (c == ' ') out.push_back('_');
  }
  return out;
}

Result<SimConfig> parse_config(const std::string& yaml_text) {
  SimConfig cfg;
  try {
    const YAML::Node root = YAML::Load(yaml_text);
    if (!root.IsMap()) return logic_error(kOp, "the config must be a YAML mapping with a 'devices' list");
    cfg.host = get<std::string>(root, "host", cfg.host);
    cfg.sensor_interval_ms = get<std::uint32_t>(root, "sensor_interval_ms", cfg.sensor_interval_ms);
    cfg.ping_idle_ms = get<std::uint32_t>(root, "ping_idle_ms", cfg.ping_idle_ms);
    cfg.drop_idle_ms = get<std::uint32_t>(root, "drop_idle_ms", cfg.drop_idle_ms);
    cfg.send_time_requests = get<bool>(root, "time_requests", cfg.send_time_requests);
    const auto devices = root["devices"];
    if (!devices || !devices.IsSequence()) return logic_error(kOp, "'devices' must be a list");
    for (const auto& d : devices) cfg.devices.push_back(parse_device(d));
  } catch (const std::exception& e) {
    return logic_error(kOp, e.what());
  }
  FLOE_TRY(finalize(cfg));
  return cfg;
}

Result<SimConfig> load_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) return sys_errorf(kOp, "cannot open {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str());
}

SimConfig generate_config(unsigned count, std::optional<Psk> key) {
  SimConfig cfg;
  for (unsigned i = 1; i <= count; ++i) {
    DeviceConfig d;
    d.name = fmt::format("sim-{}", i);
    d.key = key;
    d.sub_devices.push_back(SubDevice{.id = 1, .name = "Extension", .area_id = 0});
    auto add = [&](Kind kind, std::string name) -> EntityConfig& {
      EntityConfig e;
      e.kind = kind;
      e.name = std::move(name);
      d.entities.push_back(std::move(e));
      return d.entities.back();
    };
    auto& light = add(Kind::kLight, "Light");
    light.color_modes = {api::COLOR_MODE_RGB, api::COLOR_MODE_COLOR_TEMPERATURE};
    light.effects = {"None", "Rainbow"};
    add(Kind::kSwitch, "Relay");
    auto& temp = add(Kind::kSensor, "Temperature");
    temp.unit = "°C";
    temp.device_class = "temperature";
    temp.value = 21.5f;
    temp.min = 15;
    temp.max = 30;
    add(Kind::kBinarySensor, "Motion").device_class = "motion";
    add(Kind::kTextSensor, "Status").text = "ok";
    auto& number = add(Kind::kNumber, "Setpoint");
    number.min = 10;
    number.max = 30;
    number.step = 0.5f;
    number.value = 20;
    auto& select = add(Kind::kSelect, "Mode");
    select.options = {"eco", "comfort", "boost"};
    select.text = "eco";
    auto& cover = add(Kind::kCover, "Blind");
    cover.supports_tilt = true;
    cover.value = 1.0f;
    add(Kind::kFan, "Fan").preset_modes = {"auto", "sleep"};
    add(Kind::kButton, "Restart").entity_category = 1;
    auto& extra = add(Kind::kSwitch, "Extension Relay");
    extra.device_id = 1;
    auto& uptime = add(Kind::kSensor, "Uptime");
    uptime.unit = "s";
    uptime.entity_category = 2;
    uptime.accuracy_decimals = 0;
    uptime.min = 0;
    uptime.max = 1e9f;
    cfg.devices.push_back(std::move(d));
  }
  (void)finalize(cfg);
  return cfg;
}

Result<void> finalize(SimConfig& cfg) {
  std::set<std::string> names;
  std::set<std::uint16_t> ports;
  for (auto& d : cfg.devices) {
    if (!names.insert(d.name).second) return logic_error(kOp, fmt::format("device name '{}' used twice", d.name));
    if (d.port != 0 && !ports.insert(d.port).second)
      return logic_error(kOp, fmt::format("port {} used by two devices", d.port));
    if (d.friendly_name.empty()) d.friendly_name = d.name;
    if (d.mac.empty()) d.mac = fmt::format("5c{:010x}", fnv1(d.name) * 977ull & 0xffffffffffull);
    if (d.mac.size() != 12 || d.mac.find_first_not_of("0123456789abcdef") != std::string::npos)
      return logic_error(kOp, fmt::format("device '{}': mac '{}' must be 12 lowercase hex digits", d.name, d.mac));
    std::set<std::uint32_t> sub_ids;
    for (const auto& s : d.sub_devices) {
      if (!sub_ids.insert(s.id).second)
        return logic_error(kOp, fmt::format("device '{}': sub-device id {} used twice", d.name, s.id));
    }
    std::set<std::pair<std::uint32_t, std::uint32_t>> keys;
    for (auto& e : d.entities) {
      const auto where = fmt::format("device '{}', {} '{}'", d.name, to_string(e.kind), e.name);
      if (e.object_id.empty()) e.object_id = object_id_of(e.name);
      if (e.object_id.empty()) return logic_error(kOp, where + ": the name gives an empty object id");
      if (e.key == 0) e.key = fnv1(fmt::format("{}/{}/{}", to_string(e.kind), e.object_id, e.device_id));
      if (e.device_id != 0 && !sub_ids.contains(e.device_id))
        return logic_error(kOp, fmt::format("{}: no sub-device with id {}", where, e.device_id));
      if (!keys.insert({e.key, e.device_id}).second)
        return logic_error(kOp, fmt::format("{}: key {} used twice", where, e.key));
      if (e.kind == Kind::kLight && e.color_modes.empty()) e.color_modes = {api::COLOR_MODE_BRIGHTNESS};
      if (e.kind == Kind::kSelect) {
        if (e.options.empty()) return logic_error(kOp, where + ": a select needs options");
        if (e.text.empty()) e.text = e.options.front();
        if (std::find(e.options.begin(), e.options.end(), e.text) == e.options.end())
          return logic_error(kOp, fmt::format("{}: initial option '{}' is not among the options", where, e.text));
      }
      if ((e.kind == Kind::kSensor || e.kind == Kind::kNumber) && e.min > e.max)
        return logic_error(kOp, where + ": min is above max");
      if (e.kind == Kind::kFan && e.speed_count < 1) return logic_error(kOp, where + ": speed_count must be >= 1");
    }
  }
  return {};
}

}  // namespace floe::esphome::sim
