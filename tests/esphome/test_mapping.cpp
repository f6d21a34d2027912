// ESPHome entities -> floe components, state messages -> tree writes, requests -> commands.
// Real protobuf encodings both ways (the compiled esphome_api.proto).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <set>

#include "floe/esphome/config.hpp"
#include "floe/esphome/mapping.hpp"
#include "floe/esphome/messages.hpp"

namespace floe::esphome {
namespace {

using ipc::Component;
using ipc::EnumValue;
using ipc::Value;
namespace pb = floe::esphome::api;

template <typename M>
std::uint16_t type_id() {
  return to_u16(type_of<M>());
}

template <typename M>
EntityInfo listed(const M& m) {
  auto e = parse_list_entity(type_id<M>(), m.SerializeAsString());
  EXPECT_TRUE(e.has_value());
  EXPECT_TRUE(e && e->has_value());
  return e && *e ? **e : EntityInfo{};
}

std::vector<Component> components(const EntityInfo& e) {
  std::vector<Component> out;
  for (const auto& c : components_for(e)) out.push_back(c.component);
  return out;
}

// The writes of a state message for the single entity `e`.
template <typename M>
std::vector<Write> state_writes(const EntityInfo& e, const M& m) {
  auto u = parse_state(type_id<M>(), m.SerializeAsString(), [&](std::uint32_t key, std::uint32_t device_id) {
    return key == e.key && device_id == e.device_id ? &e : nullptr;
  });
  EXPECT_TRUE(u.has_value());
  if (!u || !*u) return {};
  EXPECT_EQ((*u)->entity, &e);
  return (*u)->writes;
}

const Write* find(const std::vector<Write>& w, Component c) {
  auto it = std::find_if(w.begin(), w.end(), [&](const Write& x) { return x.component == c; });
  return it == w.end() ? nullptr : &*it;
}

template <typename T>
T small(const std::vector<Write>& w, Component c) {
  const Write* x = find(w, c);
  EXPECT_NE(x, nullptr) << ipc::component_name(c);
  if (x == nullptr) return T{};
  return std::get<T>(std::get<Value>(x->value));
}

template <typename M>
M command(const EntityInfo& e, Component c, const sdk::RequestValue& v, bool answered = true) {
  auto cmd = command_for(e, c, v);
  EXPECT_TRUE(cmd.has_value()) << (cmd ? "" : cmd.error().message);
  M m;
  if (!cmd) return m;
  EXPECT_EQ(cmd->type, type_id<M>());
  EXPECT_EQ(cmd->answered_by_state, answered);
  EXPECT_TRUE(m.ParseFromString(cmd->payload));
  return m;
}

EntityInfo entity(EntityKind kind, std::uint32_t key = 7, std::uint32_t device_id = 0) {
  EntityInfo e;
  e.kind = kind;
  e.key = key;
  e.device_id = device_id;
  e.object_id = "thing";
  e.name = "Thing";
  return e;
}

TEST(EsphomeMapping, EveryKindGetsTheComponentsTheIssueLists) {
  using C = Component;
  EXPECT_EQ(components(entity(EntityKind::kLight)),
            (std::vector<C>{C::Light, C::Switch, C::Dimmer, C::Color, C::ColorTemperature, C::ColorMode}));
  EXPECT_EQ(components(entity(EntityKind::kSwitch)), (std::vector<C>{C::Switch}));
  EXPECT_EQ(components(entity(EntityKind::kSensor)),
            (std::vector<C>{C::Sensor, C::Real, C::Unit, C::DeviceClass, C::AccuracyDecimals}));
  EXPECT_EQ(components(entity(EntityKind::kBinarySensor)), (std::vector<C>{C::Sensor, C::Boolean}));
  EXPECT_EQ(components(entity(EntityKind::kTextSensor)), (std::vector<C>{C::Sensor, C::Text}));
  EXPECT_EQ(components(entity(EntityKind::kNumber)), (std::vector<C>{C::Real}));
  EXPECT_EQ(components(entity(EntityKind::kSelect)), (std::vector<C>{C::TextSelect, C::Text, C::TextList}));
  EXPECT_EQ(components(entity(EntityKind::kCover)), (std::vector<C>{C::Cover, C::CoverState, C::Position, C::Tilt}));
  EXPECT_EQ(components(entity(EntityKind::kFan)), (std::vector<C>{C::FanSpeed, C::FanOscillation, C::FanDirection}));
  EXPECT_EQ(components(entity(EntityKind::kButton)), (std::vector<C>{C::Trigger}));

  auto config = entity(EntityKind::kSwitch);
  config.category = 1;
  EXPECT_EQ(components(config), (std::vector<C>{C::Switch, C::Config}));
  auto diagnostic = entity(EntityKind::kSensor);
  diagnostic.category = 2;
  EXPECT_EQ(components(diagnostic).back(), C::Diagnostic);
}

TEST(EsphomeMapping, ASelectWithManyOptionsGetsAListBigEnough) {
  auto e = entity(EntityKind::kSelect);
  for (int i = 0; i < 100; ++i) e.options.push_back("option number " + std::to_string(i));
  auto specs = components_for(e);
  auto list = std::find_if(specs.begin(), specs.end(), [](const auto& s) { return s.component == Component::TextList; });
  ASSERT_NE(list, specs.end());
  std::size_t bytes = 4;
  for (const auto& o : e.options) bytes += 4 + o.size();
  EXPECT_GE(list->max_bytes, bytes);
}

TEST(EsphomeMapping, ListEntitiesMessagesBecomeEntityInfos) {
  pb::ListEntitiesSensorResponse s;
  s.set_object_id("outdoor_temperature");
  s.set_key(0xdeadbeef);
  s.set_name("Outdoor Temperature");
  s.set_unit_of_measurement("°C");
  s.set_accuracy_decimals(1);
  s.set_device_class("temperature");
  s.set_entity_category(pb::ENTITY_CATEGORY_DIAGNOSTIC);
  s.set_device_id(3);
  const EntityInfo e = listed(s);
  EXPECT_EQ(e.kind, EntityKind::kSensor);
  EXPECT_EQ(e.key, 0xdeadbeefU);
  EXPECT_EQ(e.device_id, 3U);
  EXPECT_EQ(e.object_id, "outdoor_temperature");
  EXPECT_EQ(e.name, "Outdoor Temperature");
  EXPECT_EQ(e.unit, "°C");
  EXPECT_EQ(e.accuracy_decimals, 1);
  EXPECT_EQ(e.device_class, "temperature");
  EXPECT_EQ(e.category, 2U);
  auto w = static_writes(e);
  EXPECT_EQ(std::get<std::string>(find(w, Component::Unit)->value), "°C");
  EXPECT_EQ(std::get<std::string>(find(w, Component::DeviceClass)->value), "temperature");
  EXPECT_EQ(small<std::int64_t>(w, Component::AccuracyDecimals), 1);

  // API 1.14 may leave object_id empty: it is derived from the name.
  pb::ListEntitiesSwitchResponse sw;
  sw.set_key(1);
  sw.set_name("Garage Door Relay #2");
  EXPECT_EQ(listed(sw).object_id, "garage_door_relay_2");

  pb::ListEntitiesSelectResponse sel;
  sel.set_object_id("mode");
  sel.set_key(2);
  sel.add_options("eco");
  sel.add_options("boost");
  const EntityInfo se = listed(sel);
  EXPECT_EQ(se.options, (std::vector<std::string>{"eco", "boost"}));
  auto sw_list = static_writes(se);
  EXPECT_EQ(std::get<std::vector<std::string>>(find(sw_list, Component::TextList)->value), se.options);

  pb::ListEntitiesFanResponse fan;
  fan.set_object_id("fan");
  fan.set_key(3);
  fan.set_supports_speed(true);
  fan.set_supported_speed_count(4);
  EXPECT_EQ(listed(fan).speed_count, 4);

  // Kinds floe does not map, and other messages, are not entities; garbage is an error.
  auto other = parse_list_entity(to_u16(MsgType::PingRequest), "");
  ASSERT_TRUE(other);
  EXPECT_FALSE(other->has_value());
  auto climate = parse_list_entity(46, "\x0a\x03" "abc");
  ASSERT_TRUE(climate);
  EXPECT_FALSE(climate->has_value());
  auto garbage = parse_list_entity(to_u16(MsgType::ListEntitiesLightResponse), std::string("\x0a\x7f" "ab", 4));
  ASSERT_FALSE(garbage);
  EXPECT_NE(garbage.error().message.find("ListEntitiesLightResponse"), std::string::npos);
}

TEST(EsphomeMapping, LightStateBecomesItsComponents) {
  const auto e = entity(EntityKind::kLight, 11, 2);
  pb::LightStateResponse m;
  m.set_key(11);
  m.set_device_id(2);
  m.set_state(true);
  m.set_brightness(0.5F);
  m.set_red(1.0F);
  m.set_green(0.5F);
  m.set_blue(0.0F);
  m.set_color_temperature(250.0F);  // mireds
  m.set_color_mode(pb::COLOR_MODE_RGB);
  auto w = state_writes(e, m);
  EXPECT_EQ(small<bool>(w, Component::Switch), true);
  EXPECT_DOUBLE_EQ(small<double>(w, Component::Dimmer), 0.5);
  EXPECT_EQ(small<ipc::Rgb>(w, Component::Color), (ipc::Rgb{255, 128, 0}));
  EXPECT_DOUBLE_EQ(small<double>(w, Component::ColorTemperature), 4000.0);
  EXPECT_EQ(ipc::enum_value_name(Component::ColorMode, small<EnumValue>(w, Component::ColorMode).value), "rgb");

  // Another (key, device_id) is not this entity.
  pb::LightStateResponse other = m;
  other.set_device_id(0);
  auto u = parse_state(to_u16(MsgType::LightStateResponse), other.SerializeAsString(),
                       [&](std::uint32_t key, std::uint32_t device_id) { return key == 11 && device_id == 2 ? &e : nullptr; });
  ASSERT_TRUE(u);
  EXPECT_FALSE(u->has_value());
}

TEST(EsphomeMapping, FloatsBecomeTheDoublesTheirDecimalFormsMean) {
  // ESPHome sends float32; 21.3F as a double is 21.299999237060547, which is not what the device
  // showed. The tree gets the double of the float's shortest decimal form.
  const auto sensor = entity(EntityKind::kSensor);
  pb::SensorStateResponse s;
  s.set_key(7);
  for (const auto& [f, d] : {std::pair{21.3F, 21.3}, {0.1F, 0.1}, {-40.7F, -40.7}, {1013.25F, 1013.25},
                             {1e-7F, 1e-7}, {3.4028235e38F, 3.4028235e38}}) {
    s.set_state(f);
    EXPECT_EQ(small<double>(state_writes(sensor, s), Component::Real), d) << f;
  }
  s.set_state(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(state_writes(sensor, s).empty()) << "NaN is no reading";

  const auto e = entity(EntityKind::kLight, 11, 2);
  pb::LightStateResponse light;
  light.set_key(11);
  light.set_device_id(2);
  light.set_brightness(0.3F);
  EXPECT_EQ(small<double>(state_writes(e, light), Component::Dimmer), 0.3);

  // Nothing is lost: the written double narrows back to exactly the float the device sent.
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 20000; ++i) {
    const auto f = std::bit_cast<float>(bits(rng));
    if (!std::isfinite(f)) continue;
    s.set_state(f);
    const double d = small<double>(state_writes(sensor, s), Component::Real);
    ASSERT_EQ(std::bit_cast<std::uint32_t>(static_cast<float>(d)), std::bit_cast<std::uint32_t>(f)) << f;
  }
}

TEST(EsphomeMapping, SensorFanCoverAndSelectStates) {
  const auto sensor = entity(EntityKind::kSensor);
  pb::SensorStateResponse s;
  s.set_key(7);
  s.set_state(21.5F);
  EXPECT_DOUBLE_EQ(small<double>(state_writes(sensor, s), Component::Real), 21.5);
  s.set_missing_state(true);
  EXPECT_TRUE(state_writes(sensor, s).empty()) << "a missing state writes nothing";

  const auto binary = entity(EntityKind::kBinarySensor);
  pb::BinarySensorStateResponse b;
  b.set_key(7);
  b.set_state(true);
  EXPECT_TRUE(small<bool>(state_writes(binary, b), Component::Boolean));

  const auto text = entity(EntityKind::kTextSensor);
  pb::TextSensorStateResponse t;
  t.set_key(7);
  t.set_state("hello");
  EXPECT_EQ(std::get<std::string>(find(state_writes(text, t), Component::Text)->value), "hello");

  auto fan = entity(EntityKind::kFan);
  fan.speed_count = 4;
  pb::FanStateResponse f;
  f.set_key(7);
  f.set_state(true);
  f.set_speed_level(3);
  f.set_oscillating(true);
  f.set_direction(pb::FAN_DIRECTION_REVERSE);
  auto fw = state_writes(fan, f);
  EXPECT_DOUBLE_EQ(small<double>(fw, Component::FanSpeed), 0.75);
  EXPECT_TRUE(small<bool>(fw, Component::FanOscillation));
  EXPECT_EQ(small<EnumValue>(fw, Component::FanDirection).value, 1);
  f.set_state(false);
  EXPECT_DOUBLE_EQ(small<double>(state_writes(fan, f), Component::FanSpeed), 0.0);

  const auto cover = entity(EntityKind::kCover);
  pb::CoverStateResponse c;
  c.set_key(7);
  c.set_position(1.0F);
  auto name = [](const std::vector<Write>& w) {
    return std::string(ipc::enum_value_name(Component::CoverState, small<EnumValue>(w, Component::CoverState).value));
  };
  EXPECT_EQ(name(state_writes(cover, c)), "open");
  c.set_position(0.0F);
  EXPECT_EQ(name(state_writes(cover, c)), "closed");
  c.set_position(0.4F);
  EXPECT_EQ(name(state_writes(cover, c)), "stopped");
  c.set_current_operation(pb::COVER_OPERATION_IS_CLOSING);
  EXPECT_EQ(name(state_writes(cover, c)), "closing");
  EXPECT_EQ(small<double>(state_writes(cover, c), Component::Position), 0.4) << "the float's decimal value, widened";

  const auto select = entity(EntityKind::kSelect);
  pb::SelectStateResponse sel;
  sel.set_key(7);
  sel.set_state("boost");
  auto sw = state_writes(select, sel);
  EXPECT_EQ(std::get<std::string>(find(sw, Component::TextSelect)->value), "boost");
  EXPECT_EQ(std::get<std::string>(find(sw, Component::Text)->value), "boost");

  auto garbage = parse_state(to_u16(MsgType::SensorStateResponse), std::string("\x15\x01", 2),
                             [&](std::uint32_t, std::uint32_t) { return &sensor; });
  EXPECT_FALSE(garbage) << "a truncated fixed32 is an error";
}

TEST(EsphomeMapping, RequestsBecomeCommandsWithTheDeviceIdEchoed) {
  const auto sw = entity(EntityKind::kSwitch, 42, 5);
  auto s = command<pb::SwitchCommandRequest>(sw, Component::Switch, Value{true});
  EXPECT_EQ(s.key(), 42U);
  EXPECT_TRUE(s.state());
  EXPECT_EQ(s.device_id(), 5U);

  const auto light = entity(EntityKind::kLight, 9, 1);
  auto on = command<pb::LightCommandRequest>(light, Component::Switch, Value{false});
  EXPECT_TRUE(on.has_state());
  EXPECT_FALSE(on.state());
  EXPECT_EQ(on.device_id(), 1U);
  auto dim = command<pb::LightCommandRequest>(light, Component::Dimmer, Value{0.25});
  EXPECT_TRUE(dim.has_brightness());
  EXPECT_FLOAT_EQ(dim.brightness(), 0.25F);
  EXPECT_TRUE(dim.state());
  auto dark = command<pb::LightCommandRequest>(light, Component::Dimmer, Value{0.0});
  EXPECT_TRUE(dark.has_state());
  EXPECT_FALSE(dark.state());
  auto rgb = command<pb::LightCommandRequest>(light, Component::Color, Value{ipc::Rgb{255, 0, 51}});
  EXPECT_TRUE(rgb.has_rgb());
  EXPECT_FLOAT_EQ(rgb.red(), 1.0F);
  EXPECT_FLOAT_EQ(rgb.blue(), 0.2F);
  auto ct = command<pb::LightCommandRequest>(light, Component::ColorTemperature, Value{2500.0});
  EXPECT_TRUE(ct.has_color_temperature());
  EXPECT_FLOAT_EQ(ct.color_temperature(), 400.0F);
  auto mode = command<pb::LightCommandRequest>(light, Component::ColorMode, Value{EnumValue{4}});
  EXPECT_TRUE(mode.has_color_mode());
  EXPECT_EQ(mode.color_mode(), pb::COLOR_MODE_COLOR_TEMPERATURE);
  EXPECT_FALSE(command_for(light, Component::Dimmer, Value{1.5})) << "Dimmer outside 0..1";
  EXPECT_FALSE(command_for(light, Component::Light, Value{ipc::Marker{}}));

  const auto number = entity(EntityKind::kNumber, 3);
  EXPECT_FLOAT_EQ(command<pb::NumberCommandRequest>(number, Component::Real, Value{12.5}).state(), 12.5F);

  auto select = entity(EntityKind::kSelect, 4, 2);
  select.options = {"eco", "boost"};
  auto sel = command<pb::SelectCommandRequest>(select, Component::TextSelect, std::string("boost"));
  EXPECT_EQ(sel.state(), "boost");
  EXPECT_EQ(sel.device_id(), 2U);
  auto not_an_option = command_for(select, Component::TextSelect, std::string("turbo"));
  ASSERT_FALSE(not_an_option);
  EXPECT_NE(not_an_option.error().message.find("eco, boost"), std::string::npos) << not_an_option.error().message;

  auto cover = entity(EntityKind::kCover, 5);
  auto open = command<pb::CoverCommandRequest>(cover, Component::CoverState, Value{EnumValue{1}});
  EXPECT_TRUE(open.has_position());
  EXPECT_FLOAT_EQ(open.position(), 1.0F);
  EXPECT_TRUE(command<pb::CoverCommandRequest>(cover, Component::CoverState, Value{EnumValue{5}}).stop());
  auto tilt = command<pb::CoverCommandRequest>(cover, Component::Tilt, Value{0.5});
  EXPECT_TRUE(tilt.has_tilt());
  EXPECT_FALSE(command_for(cover, Component::CoverState, Value{EnumValue{0}})) << "'unknown' cannot be requested";

  auto fan = entity(EntityKind::kFan, 6);
  fan.speed_count = 3;
  auto speed = command<pb::FanCommandRequest>(fan, Component::FanSpeed, Value{0.66});
  EXPECT_TRUE(speed.has_state() && speed.state());
  EXPECT_TRUE(speed.has_speed_level());
  EXPECT_EQ(speed.speed_level(), 2);
  auto off = command<pb::FanCommandRequest>(fan, Component::FanSpeed, Value{0.0});
  EXPECT_FALSE(off.state());
  EXPECT_FALSE(off.has_speed_level());
  EXPECT_TRUE(command<pb::FanCommandRequest>(fan, Component::FanOscillation, Value{true}).oscillating());
  EXPECT_EQ(command<pb::FanCommandRequest>(fan, Component::FanDirection, Value{EnumValue{1}}).direction(),
            pb::FAN_DIRECTION_REVERSE);

  const auto button = entity(EntityKind::kButton, 8, 4);
  EXPECT_EQ(command<pb::ButtonCommandRequest>(button, Component::Trigger, Value{ipc::Marker{}}, false).device_id(), 4U);

  auto ro = command_for(entity(EntityKind::kSensor), Component::Real, Value{1.0});
  ASSERT_FALSE(ro);
  EXPECT_NE(ro.error().message.find("read-only"), std::string::npos);
  EXPECT_FALSE(command_for(sw, Component::Dimmer, Value{0.5}));
  EXPECT_FALSE(command_for(sw, Component::Switch, Value{0.5})) << "wrong value type";
}

TEST(EsphomeMapping, ColorModesMapBothWays) {
  for (std::uint16_t v = 0; v < ipc::find_component(Component::ColorMode)->enum_values.size(); ++v) {
    auto native = esphome_color_mode(v);
    ASSERT_TRUE(native) << v;
    EXPECT_EQ(floe_color_mode(*native), v);
  }
  EXPECT_EQ(ipc::enum_value_name(Component::ColorMode, floe_color_mode(pb::COLOR_MODE_RGB_COLD_WARM_WHITE)),
            "rgb_cold_warm_white");
  EXPECT_EQ(ipc::enum_value_name(Component::ColorMode, floe_color_mode(pb::COLOR_MODE_ON_OFF)), "onoff");
  EXPECT_EQ(floe_color_mode(12345), 0) << "an unknown native mode is 'unknown'";
  EXPECT_FALSE(esphome_color_mode(200));
}

TEST(EsphomeMapping, EntityIdsAreStableUniqueAndValid) {
  std::vector<EntityInfo> es(4, entity(EntityKind::kSwitch));
  es[1].object_id = "relay";
  es[2].object_id = std::string(80, 'x');
  es[3].object_id = "thing";  // clashes with es[0]
  const auto ids = entity_ids("kitchen", es);
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids[0], "kitchen.thing");
  EXPECT_EQ(ids[1], "kitchen.relay");
  EXPECT_EQ(ids[3], "kitchen.thing_2");
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 4u);
  for (const auto& id : ids) EXPECT_TRUE(is_valid_id(id)) << id;
  EXPECT_EQ(entity_ids("kitchen", es), ids) << "same input, same ids";
  EXPECT_EQ(object_id_from_name("Living Room Lamp"), "living_room_lamp");
  EXPECT_EQ(object_id_from_name("!!!"), "entity");
}

TEST(EsphomeMapping, ThousandsOfClashingObjectIdsGetTheSuffixesInOrder) {
  // A device may list the same object id over and over: every one gets the next free suffix,
  // including past ids the device chose itself ("thing_3").
  std::vector<EntityInfo> es(4096, entity(EntityKind::kSwitch));
  es[1].object_id = "thing_3";
  es[4095].object_id = std::string(80, 'x');
  const auto ids = entity_ids("kitchen", es);
  ASSERT_EQ(ids.size(), es.size());
  EXPECT_EQ(ids[0], "kitchen.thing");
  EXPECT_EQ(ids[1], "kitchen.thing_3");
  EXPECT_EQ(ids[2], "kitchen.thing_2");
  EXPECT_EQ(ids[3], "kitchen.thing_4");
  EXPECT_EQ(ids[4094], "kitchen.thing_4095");
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), es.size());
  for (const auto& id : ids) EXPECT_TRUE(is_valid_id(id)) << id;
}

TEST(EsphomeMapping, SubDeviceIdsDifferFromTheirNodesEvenAtTheLengthLimit) {
  EXPECT_EQ(sub_device_id("kitchen", "Back Porch"), "kitchen-back_porch");
  EXPECT_EQ(sub_device_id("kitchen", "5"), "kitchen-5");
  const std::string long_node(64, 'n');
  const std::string id = sub_device_id(long_node, "porch");
  EXPECT_NE(id, long_node);
  EXPECT_TRUE(id.ends_with("-porch")) << id;
  EXPECT_TRUE(is_valid_id(id)) << id;
  const std::string long_sub = sub_device_id(long_node, std::string(100, 's'));
  EXPECT_NE(long_sub, long_node);
  EXPECT_TRUE(is_valid_id(long_sub)) << long_sub;
}

}  // namespace
}  // namespace floe::esphome
