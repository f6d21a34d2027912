#include "floe/esphome/mapping.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "floe/esphome/config.hpp"
#include "floe/esphome/messages.hpp"

namespace floe::esphome {
namespace {

using ipc::Component;
using ipc::EnumValue;
namespace pb = floe::esphome::api;

constexpr std::string_view kOp = "esphome";

constexpr std::uint16_t id(MsgType t) noexcept { return static_cast<std::uint16_t>(t); }

template <typename M>
Result<M> parse(std::string_view payload, std::string_view what) {
  M m;
  if (!m.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    return logic_error(kOp, fmt::format("garbage {} payload ({} bytes)", what, payload.size()));
  }
  return m;
}

template <typename M>
EntityInfo common(EntityKind kind, const M& m, std::uint32_t category) {
  EntityInfo e;
  e.kind = kind;
  e.key = m.key();
  e.device_id = m.device_id();
  e.name = m.name();
  e.object_id = m.object_id().empty() ? object_id_from_name(m.name()) : slugify(m.object_id());
  e.category = category;
  return e;
}

template <typename M>
std::string serialize(const M& m) {
  std::string out;
  m.SerializeToString(&out);
  return out;
}

/// The double a person means by the float a device sent: the float's shortest decimal form
/// (21.3F is 21.299999237060547 as a double; this gives 21.3). Non-finite values pass through.
double widen(float v) noexcept {
  if (!std::isfinite(v)) return static_cast<double>(v);
  char buf[32];
  const auto printed = std::to_chars(buf, buf + sizeof buf, v);
  double out = static_cast<double>(v);
  if (printed.ec == std::errc{}) (void)std::from_chars(buf, printed.ptr, out);
  return out;
}

std::uint8_t channel(float v) {
  if (!(v > 0.0F)) return 0;
  if (v >= 1.0F) return 255;
  return static_cast<std::uint8_t>(std::lround(v * 255.0F));
}

// floe's CoverState from what the device reports.
std::uint16_t cover_state(const pb::CoverStateResponse& m) {
  switch (m.current_operation()) {
    case pb::COVER_OPERATION_IS_OPENING: return 3;  // opening
    case pb::COVER_OPERATION_IS_CLOSING: return 4;  // closing
    default: break;
  }
  if (m.position() >= 1.0F) return 1;  // open
  if (m.position() <= 0.0F) return 2;  // closed
  return 5;                            // stopped part-way
}

double fan_speed(const EntityInfo& e, const pb::FanStateResponse& m) {
  if (!m.state()) return 0.0;
  if (e.speed_count <= 0 || m.speed_level() <= 0) return 1.0;
  return std::min(1.0, static_cast<double>(m.speed_level()) / e.speed_count);
}

tl::unexpected<Error> refuse(const EntityInfo& e, Component c) {
  return logic_error(kOp, fmt::format("a {} entity cannot set {}", to_string(e.kind), ipc::component_name(c)));
}

const ipc::Value* small(const sdk::RequestValue& v) { return std::get_if<ipc::Value>(&v); }
const std::string* text(const sdk::RequestValue& v) { return std::get_if<std::string>(&v); }

template <typename T>
std::optional<T> small_as(const sdk::RequestValue& v) {
  const ipc::Value* s = small(v);
  if (s == nullptr) return std::nullopt;
  if (const T* t = std::get_if<T>(s)) return *t;
  return std::nullopt;
}

Result<Command> light_command(const EntityInfo& e, Component c, const sdk::RequestValue& v) {
  pb::LightCommandRequest m;
  m.set_key(e.key);
  m.set_device_id(e.device_id);
  switch (c) {
    case Component::Switch: {
      auto on = small_as<bool>(v);
      if (!on) break;
      m.set_has_state(true);
      m.set_state(*on);
      return Command{id(MsgType::LightCommandRequest), serialize(m)};
    }
    case Component::Dimmer: {
      auto level = small_as<double>(v);
      if (!level) break;
      if (!(*level >= 0.0 && *level <= 1.0)) return logic_error(kOp, "Dimmer must be within 0.0 .. 1.0");
      // Brightness 0 is "off" for a person; ESPHome keeps its last brightness when turned off.
      m.set_has_state(true);
      m.set_state(*level > 0.0);
      if (*level > 0.0) {
        m.set_has_brightness(true);
        m.set_brightness(static_cast<float>(*level));
      }
      return Command{id(MsgType::LightCommandRequest), serialize(m)};
    }
    case Component::Color: {
      auto rgb = small_as<ipc::Rgb>(v);
      if (!rgb) break;
      m.set_has_rgb(true);
      m.set_red(rgb->r / 255.0F);
      m.set_green(rgb->g / 255.0F);
      m.set_blue(rgb->b / 255.0F);
      return Command{id(MsgType::LightCommandRequest), serialize(m)};
    }
    case Component::ColorTemperature: {
      auto kelvin = small_as<double>(v);
      if (!kelvin) break;
      if (!(*kelvin >= 500.0 && *kelvin <= 100000.0)) return logic_error(kOp, "ColorTemperature is in kelvin (500 .. 100000)");
      m.set_has_color_temperature(true);
      m.set_color_temperature(static_cast<float>(1e6 / *kelvin));  // the native API speaks mireds
      return Command{id(MsgType::LightCommandRequest), serialize(m)};
    }
    case Component::ColorMode: {
      auto mode = small_as<EnumValue>(v);
      if (!mode) break;
      auto native = esphome_color_mode(mode->value);
      if (!native || *native == 0) return logic_error(kOp, "that ColorMode cannot be requested");
      m.set_has_color_mode(true);
      m.set_color_mode(static_cast<pb::ColorMode>(*native));
      return Command{id(MsgType::LightCommandRequest), serialize(m)};
    }
    default: break;
  }
  return refuse(e, c);
}

Result<Command> cover_command(const EntityInfo& e, Component c, const sdk::RequestValue& v) {
  pb::CoverCommandRequest m;
  m.set_key(e.key);
  m.set_device_id(e.device_id);
  if (c == Component::Position || c == Component::Tilt) {
    auto f = small_as<double>(v);
    if (!f) return refuse(e, c);
    if (!(*f >= 0.0 && *f <= 1.0)) return logic_error(kOp, fmt::format("{} must be within 0.0 .. 1.0", ipc::component_name(c)));
    if (c == Component::Position) {
      m.set_has_position(true);
      m.set_position(static_cast<float>(*f));
    } else {
      m.set_has_tilt(true);
      m.set_tilt(static_cast<float>(*f));
    }
    return Command{id(MsgType::CoverCommandRequest), serialize(m)};
  }
  if (c == Component::CoverState) {
    auto s = small_as<EnumValue>(v);
    if (!s) return refuse(e, c);
    switch (s->value) {
      case 1:  // open
      case 3:  // opening
        m.set_has_position(true);
        m.set_position(1.0F);
        break;
      case 2:  // closed
      case 4:  // closing
        m.set_has_position(true);
        m.set_position(0.0F);
        break;
      case 5: m.set_stop(true); break;  // stopped
      default: return logic_error(kOp, "CoverState can be set to open, closed or stopped");
    }
    return Command{id(MsgType::CoverCommandRequest), serialize(m)};
  }
  return refuse(e, c);
}

Result<Command> fan_command(const EntityInfo& e, Component c, const sdk::RequestValue& v) {
  pb::FanCommandRequest m;
  m.set_key(e.key);
  m.set_device_id(e.device_id);
  if (c == Component::FanSpeed) {
    auto f = small_as<double>(v);
    if (!f) return refuse(e, c);
    if (!(*f >= 0.0 && *f <= 1.0)) return logic_error(kOp, "FanSpeed must be within 0.0 .. 1.0");
    m.set_has_state(true);
    m.set_state(*f > 0.0);
    if (*f > 0.0 && e.speed_count > 0) {
      m.set_has_speed_level(true);
      m.set_speed_level(std::max(1, static_cast<int>(std::lround(*f * e.speed_count))));
    }
  } else if (c == Component::FanOscillation) {
    auto b = small_as<bool>(v);
    if (!b) return refuse(e, c);
    m.set_has_oscillating(true);
    m.set_oscillating(*b);
  } else if (c == Component::FanDirection) {
    auto d = small_as<EnumValue>(v);
    if (!d || d->value > 1) return refuse(e, c);
    m.set_has_direction(true);
    m.set_direction(d->value == 0 ? pb::FAN_DIRECTION_FORWARD : pb::FAN_DIRECTION_REVERSE);
  } else {
    return refuse(e, c);
  }
  return Command{id(MsgType::FanCommandRequest), serialize(m)};
}

}  // namespace

std::string_view to_string(EntityKind kind) noexcept {
  switch (kind) {
    case EntityKind::kLight: return "light";
    case EntityKind::kSwitch: return "switch";
    case EntityKind::kSensor: return "sensor";
    case EntityKind::kBinarySensor: return "binary_sensor";
    case EntityKind::kTextSensor: return "text_sensor";
    case EntityKind::kNumber: return "number";
    case EntityKind::kSelect: return "select";
    case EntityKind::kCover: return "cover";
    case EntityKind::kFan: return "fan";
    case EntityKind::kButton: return "button";
  }
  return "?";
}

Result<std::optional<EntityInfo>> parse_list_entity(std::uint16_t type, std::string_view payload) {
  // Every ListEntities*Response shares object_id, key, name, entity_category and device_id;
  // `extra` copies what one kind has besides.
  auto as = [&]<typename M>(EntityKind kind, auto extra) -> Result<std::optional<EntityInfo>> {
    auto m = parse<M>(payload, type_name(type).value_or("ListEntities response"));
    if (!m) return tl::unexpected(m.error());
    EntityInfo e = common(kind, *m, m->entity_category());
    extra(*m, e);
    return e;
  };
  auto none = [](const auto&, EntityInfo&) {};
  auto device_class = [](const auto& m, EntityInfo& e) { e.device_class = m.device_class(); };
  switch (static_cast<MsgType>(type)) {
    case MsgType::ListEntitiesLightResponse: return as.operator()<pb::ListEntitiesLightResponse>(EntityKind::kLight, none);
    case MsgType::ListEntitiesSwitchResponse:
      return as.operator()<pb::ListEntitiesSwitchResponse>(EntityKind::kSwitch, device_class);
    case MsgType::ListEntitiesSensorResponse:
      return as.operator()<pb::ListEntitiesSensorResponse>(EntityKind::kSensor, [](const auto& m, EntityInfo& e) {
        e.unit = m.unit_of_measurement();
        e.device_class = m.device_class();
        e.accuracy_decimals = m.accuracy_decimals();
      });
    case MsgType::ListEntitiesBinarySensorResponse:
      return as.operator()<pb::ListEntitiesBinarySensorResponse>(EntityKind::kBinarySensor, device_class);
    case MsgType::ListEntitiesTextSensorResponse:
      return as.operator()<pb::ListEntitiesTextSensorResponse>(EntityKind::kTextSensor, device_class);
    case MsgType::ListEntitiesNumberResponse:
      return as.operator()<pb::ListEntitiesNumberResponse>(EntityKind::kNumber, [](const auto& m, EntityInfo& e) {
        e.unit = m.unit_of_measurement();
        e.device_class = m.device_class();
      });
    case MsgType::ListEntitiesSelectResponse:
      return as.operator()<pb::ListEntitiesSelectResponse>(EntityKind::kSelect, [](const auto& m, EntityInfo& e) {
        e.options.assign(m.options().begin(), m.options().end());
      });
    case MsgType::ListEntitiesCoverResponse:
      return as.operator()<pb::ListEntitiesCoverResponse>(EntityKind::kCover, device_class);
    case MsgType::ListEntitiesFanResponse:
      return as.operator()<pb::ListEntitiesFanResponse>(EntityKind::kFan, [](const auto& m, EntityInfo& e) {
        e.speed_count = m.supports_speed() ? m.supported_speed_count() : 0;
      });
    case MsgType::ListEntitiesButtonResponse:
      return as.operator()<pb::ListEntitiesButtonResponse>(EntityKind::kButton, device_class);
    default: return std::optional<EntityInfo>{};
  }
}

std::vector<sdk::ComponentSpec> components_for(const EntityInfo& e) {
  std::vector<sdk::ComponentSpec> c;
  switch (e.kind) {
    case EntityKind::kLight:
      c = {Component::Light, Component::Switch, Component::Dimmer, Component::Color, Component::ColorTemperature,
           Component::ColorMode};
      break;
    case EntityKind::kSwitch: c = {Component::Switch}; break;
    case EntityKind::kSensor:
      c = {Component::Sensor, Component::Real, Component::Unit, Component::DeviceClass, Component::AccuracyDecimals};
      break;
    case EntityKind::kBinarySensor: c = {Component::Sensor, Component::Boolean}; break;
    case EntityKind::kTextSensor: c = {Component::Sensor, Component::Text}; break;
    case EntityKind::kNumber: c = {Component::Real}; break;
    case EntityKind::kSelect: {
      std::size_t bytes = 4;
      for (const auto& o : e.options) bytes += 4 + o.size();
      c = {Component::TextSelect, Component::Text,
           {Component::TextList, static_cast<std::uint32_t>(std::max<std::size_t>(bytes, ipc::kTreeDefaultListBytes))}};
      break;
    }
    case EntityKind::kCover: c = {Component::Cover, Component::CoverState, Component::Position, Component::Tilt}; break;
    case EntityKind::kFan: c = {Component::FanSpeed, Component::FanOscillation, Component::FanDirection}; break;
    case EntityKind::kButton: c = {Component::Trigger}; break;
  }
  if (e.category == 1) c.emplace_back(Component::Config);
  if (e.category == 2) c.emplace_back(Component::Diagnostic);
  return c;
}

std::vector<Write> static_writes(const EntityInfo& e) {
  std::vector<Write> w;
  auto add = [&w](Component c, auto value) {
    Write& x = w.emplace_back();
    x.component = c;
    x.value.emplace<decltype(value)>(std::move(value));
  };
  if (e.kind == EntityKind::kSensor) {
    add(Component::Unit, e.unit);
    add(Component::DeviceClass, e.device_class);
    add(Component::AccuracyDecimals, ipc::Value{std::int64_t{e.accuracy_decimals}});
  }
  if (e.kind == EntityKind::kSelect) add(Component::TextList, e.options);
  return w;
}

Result<std::optional<StateUpdate>> parse_state(std::uint16_t type, std::string_view payload, const EntityLookup& find) {
  using W = std::vector<Write>;
  // Every *StateResponse names its entity by (key, device_id); `writes` turns the rest into values.
  auto as = [&]<typename M>(EntityKind kind, auto writes) -> Result<std::optional<StateUpdate>> {
    auto m = parse<M>(payload, type_name(type).value_or("state response"));
    if (!m) return tl::unexpected(m.error());
    const EntityInfo* e = find(m->key(), m->device_id());
    if (e == nullptr || e->kind != kind) return std::optional<StateUpdate>{};
    return StateUpdate{e, writes(*m, *e)};
  };
  auto small = [](Component c, ipc::Value v) { return Write{c, std::move(v)}; };
  auto real_unless_missing = [&](const auto& m, const EntityInfo&) {
    W w;
    if (!m.missing_state() && std::isfinite(m.state())) w.push_back(small(Component::Real, widen(m.state())));
    return w;
  };
  switch (static_cast<MsgType>(type)) {
    case MsgType::LightStateResponse:
      return as.operator()<pb::LightStateResponse>(EntityKind::kLight, [&](const auto& m, const EntityInfo&) {
        W w{small(Component::Switch, m.state()),
            small(Component::Dimmer, std::clamp(widen(m.brightness()), 0.0, 1.0)),
            small(Component::Color, ipc::Rgb{channel(m.red()), channel(m.green()), channel(m.blue())}),
            small(Component::ColorMode, EnumValue{floe_color_mode(m.color_mode())})};
        if (m.color_temperature() > 0.0F) {
          w.push_back(small(Component::ColorTemperature, 1e6 / widen(m.color_temperature())));
        }
        return w;
      });
    case MsgType::SwitchStateResponse:
      return as.operator()<pb::SwitchStateResponse>(EntityKind::kSwitch, [&](const auto& m, const EntityInfo&) {
        return W{small(Component::Switch, m.state())};
      });
    case MsgType::SensorStateResponse:
      return as.operator()<pb::SensorStateResponse>(EntityKind::kSensor, real_unless_missing);
    case MsgType::NumberStateResponse:
      return as.operator()<pb::NumberStateResponse>(EntityKind::kNumber, real_unless_missing);
    case MsgType::BinarySensorStateResponse:
      return as.operator()<pb::BinarySensorStateResponse>(EntityKind::kBinarySensor, [&](const auto& m, const EntityInfo&) {
        return m.missing_state() ? W{} : W{small(Component::Boolean, m.state())};
      });
    case MsgType::TextSensorStateResponse:
      return as.operator()<pb::TextSensorStateResponse>(EntityKind::kTextSensor, [](const auto& m, const EntityInfo&) {
        return m.missing_state() ? W{} : W{Write{Component::Text, m.state()}};
      });
    case MsgType::SelectStateResponse:
      return as.operator()<pb::SelectStateResponse>(EntityKind::kSelect, [](const auto& m, const EntityInfo&) {
        return m.missing_state() ? W{} : W{Write{Component::TextSelect, m.state()}, Write{Component::Text, m.state()}};
      });
    case MsgType::CoverStateResponse:
      return as.operator()<pb::CoverStateResponse>(EntityKind::kCover, [&](const auto& m, const EntityInfo&) {
        return W{small(Component::CoverState, EnumValue{cover_state(m)}),
                 small(Component::Position, std::clamp(widen(m.position()), 0.0, 1.0)),
                 small(Component::Tilt, std::clamp(widen(m.tilt()), 0.0, 1.0))};
      });
    case MsgType::FanStateResponse:
      return as.operator()<pb::FanStateResponse>(EntityKind::kFan, [&](const auto& m, const EntityInfo& e) {
        const std::uint16_t reverse = m.direction() == pb::FAN_DIRECTION_REVERSE ? 1 : 0;
        return W{small(Component::FanSpeed, fan_speed(e, m)), small(Component::FanOscillation, m.oscillating()),
                 small(Component::FanDirection, EnumValue{reverse})};
      });
    default: return std::optional<StateUpdate>{};
  }
}

Result<Command> command_for(const EntityInfo& e, Component c, const sdk::RequestValue& v) {
  switch (e.kind) {
    case EntityKind::kLight: return light_command(e, c, v);
    case EntityKind::kSwitch: {
      auto on = small_as<bool>(v);
      if (c != Component::Switch || !on) return refuse(e, c);
      pb::SwitchCommandRequest m;
      m.set_key(e.key);
      m.set_state(*on);
      m.set_device_id(e.device_id);
      return Command{id(MsgType::SwitchCommandRequest), serialize(m)};
    }
    case EntityKind::kNumber: {
      auto f = small_as<double>(v);
      if (c != Component::Real || !f) return refuse(e, c);
      pb::NumberCommandRequest m;
      m.set_key(e.key);
      m.set_state(static_cast<float>(*f));
      m.set_device_id(e.device_id);
      return Command{id(MsgType::NumberCommandRequest), serialize(m)};
    }
    case EntityKind::kSelect: {
      const std::string* option = text(v);
      if ((c != Component::TextSelect && c != Component::Text) || option == nullptr) return refuse(e, c);
      if (std::find(e.options.begin(), e.options.end(), *option) == e.options.end()) {
        return logic_error(kOp, fmt::format("'{}' is not an option of {} ({})", *option, e.object_id,
                                            fmt::join(e.options, ", ")));
      }
      pb::SelectCommandRequest m;
      m.set_key(e.key);
      m.set_state(*option);
      m.set_device_id(e.device_id);
      return Command{id(MsgType::SelectCommandRequest), serialize(m)};
    }
    case EntityKind::kCover: return cover_command(e, c, v);
    case EntityKind::kFan: return fan_command(e, c, v);
    case EntityKind::kButton: {
      if (c != Component::Trigger) return refuse(e, c);
      pb::ButtonCommandRequest m;
      m.set_key(e.key);
      m.set_device_id(e.device_id);
      return Command{id(MsgType::ButtonCommandRequest), serialize(m), false};
    }
    case EntityKind::kSensor:
    case EntityKind::kBinarySensor:
    case EntityKind::kTextSensor:
      return logic_error(kOp, fmt::format("{} is a {}: it is read-only", e.object_id, to_string(e.kind)));
  }
  return refuse(e, c);
}

// floe's ColorMode values are the catalogue's order (components.def); ESPHome's are bit sets.
namespace {
constexpr std::uint32_t kNativeColorModes[] = {0, 1, 3, 7, 11, 35, 39, 47, 19, 51};
}  // namespace

std::uint16_t floe_color_mode(std::uint32_t esphome) noexcept {
  if (esphome == 2) return 2;  // legacy brightness
  for (std::uint16_t i = 0; i < std::size(kNativeColorModes); ++i) {
    if (kNativeColorModes[i] == esphome) return i;
  }
  return 0;
}

std::optional<std::uint32_t> esphome_color_mode(std::uint16_t floe) noexcept {
  if (floe >= std::size(kNativeColorModes)) return std::nullopt;
  return kNativeColorModes[floe];
}

std::string object_id_from_name(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    const bool keep = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    if (keep) {
      out += c;
    } else if (out.empty() || out.back() != '_') {
      out += '_';
    }
  }
  while (!out.empty() && out.back() == '_') out.pop_back();
  while (!out.empty() && out.front() == '_') out.erase(out.begin());
  return out.empty() ? std::string("entity") : out;
}

std::vector<std::string> entity_ids(std::string_view device, std::span<const EntityInfo> entities) {
  std::vector<std::string> ids;
  ids.reserve(entities.size());
  std::unordered_set<std::string> taken;
  // By base: the first suffix not tried yet. A device may list thousands of entities with one
  // object id; trying _2, _3, ... from the start for each was quadratic (20,000 took 23 s). The
  // ids are the same: a suffix once taken stays taken.
  std::unordered_map<std::string, int> next_suffix;
  for (const auto& e : entities) {
    std::string base = fmt::format("{}.{}", device, e.object_id);
    if (base.size() > 64) base.resize(64);
    std::string candidate = base;
    if (!taken.insert(candidate).second) {
      int& n = next_suffix.try_emplace(base, 2).first->second;
      do {
        const std::string suffix = fmt::format("_{}", n++);
        candidate = base.substr(0, std::min(base.size(), 64 - suffix.size())) + suffix;
      } while (!taken.insert(candidate).second);
    }
    ids.push_back(std::move(candidate));
  }
  return ids;
}

std::string sub_device_id(std::string_view node, std::string_view sub) {
  std::string tail = slugify(sub);
  if (node.size() + 1 + tail.size() <= 64) return slugify(fmt::format("{}-{}", node, sub));
  // Too long together: the node's part is cut, not the sub-device's, so the id still differs
  // from the node's own (a 64-character node id would otherwise come out as itself).
  if (tail.size() > 32) tail.resize(32);
  return slugify(fmt::format("{}-{}", node.substr(0, 64 - 1 - tail.size()), tail));
}

}  // namespace floe::esphome
