// floe::esphome messages: the compiled subset of the ESPHome native API (proto/esphome_api.proto,
// package floe.esphome.api) plus the message-type numbers that frame them on the wire.
//
// A frame carries (type, protobuf bytes); the type number is not inside the protobuf, so both ends
// keep this table. Ids are interoperability facts from the public api.proto.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "esphome_api.pb.h"

namespace floe::esphome {

/// Message type numbers (the varint / 16-bit type of a frame).
enum class MsgType : std::uint16_t {
  HelloRequest = 1,
  HelloResponse = 2,
  AuthenticationRequest = 3,
  AuthenticationResponse = 4,
  DisconnectRequest = 5,
  DisconnectResponse = 6,
  PingRequest = 7,
  PingResponse = 8,
  DeviceInfoRequest = 9,
  DeviceInfoResponse = 10,
  ListEntitiesRequest = 11,
  ListEntitiesBinarySensorResponse = 12,
  ListEntitiesCoverResponse = 13,
  ListEntitiesFanResponse = 14,
  ListEntitiesLightResponse = 15,
  ListEntitiesSensorResponse = 16,
  ListEntitiesSwitchResponse = 17,
  ListEntitiesTextSensorResponse = 18,
  ListEntitiesDoneResponse = 19,
  SubscribeStatesRequest = 20,
  BinarySensorStateResponse = 21,
  CoverStateResponse = 22,
  FanStateResponse = 23,
  LightStateResponse = 24,
  SensorStateResponse = 25,
  SwitchStateResponse = 26,
  TextSensorStateResponse = 27,
  CoverCommandRequest = 30,
  FanCommandRequest = 31,
  LightCommandRequest = 32,
  SwitchCommandRequest = 33,
  GetTimeRequest = 36,
  GetTimeResponse = 37,
  ListEntitiesNumberResponse = 49,
  NumberStateResponse = 50,
  NumberCommandRequest = 51,
  ListEntitiesSelectResponse = 52,
  SelectStateResponse = 53,
  SelectCommandRequest = 54,
  ListEntitiesButtonResponse = 61,
  ButtonCommandRequest = 62,
};

[[nodiscard]] constexpr std::uint16_t to_u16(MsgType t) noexcept { return static_cast<std::uint16_t>(t); }

/// "LightCommandRequest"; nullopt for a type this table does not know (peers may send those:
/// they are ignored, not errors).
[[nodiscard]] std::optional<std::string_view> type_name(std::uint16_t type) noexcept;
/// True for every id listed in MsgType.
[[nodiscard]] bool is_known_type(std::uint16_t type) noexcept;

/// The wire type of a compiled message class, e.g. type_of<api::PingRequest>() == MsgType::PingRequest.
template <typename T>
constexpr MsgType type_of() noexcept;

#define FLOE_ESPHOME_MESSAGE(name)                                           \
  template <>                                                                \
  constexpr MsgType type_of<api::name>() noexcept { return MsgType::name; }
FLOE_ESPHOME_MESSAGE(HelloRequest)
FLOE_ESPHOME_MESSAGE(HelloResponse)
FLOE_ESPHOME_MESSAGE(AuthenticationRequest)
FLOE_ESPHOME_MESSAGE(AuthenticationResponse)
FLOE_ESPHOME_MESSAGE(DisconnectRequest)
FLOE_ESPHOME_MESSAGE(DisconnectResponse)
FLOE_ESPHOME_MESSAGE(PingRequest)
FLOE_ESPHOME_MESSAGE(PingResponse)
FLOE_ESPHOME_MESSAGE(DeviceInfoRequest)
FLOE_ESPHOME_MESSAGE(DeviceInfoResponse)
FLOE_ESPHOME_MESSAGE(ListEntitiesRequest)
FLOE_ESPHOME_MESSAGE(ListEntitiesBinarySensorResponse)
FLOE_ESPHOME_MESSAGE(ListEntitiesCoverResponse)
FLOE_ESPHOME_MESSAGE(ListEntitiesFanResponse)
FLOE_ESPHOME_MESSAGE(ListEntitiesLightResponse)
FLOE_ESPHOME_MESSAGE(ListEntitiesSensorResponse)
FLOE_ESPHOME_MESSAGE(ListEntitiesSwitchResponse)
FLOE_ESPHOME_MESSAGE(ListEntitiesTextSensorResponse)
FLOE_ESPHOME_MESSAGE(ListEntitiesDoneResponse)
FLOE_ESPHOME_MESSAGE(SubscribeStatesRequest)
FLOE_ESPHOME_MESSAGE(BinarySensorStateResponse)
FLOE_ESPHOME_MESSAGE(CoverStateResponse)
FLOE_ESPHOME_MESSAGE(FanStateResponse)
FLOE_ESPHOME_MESSAGE(LightStateResponse)
FLOE_ESPHOME_MESSAGE(SensorStateResponse)
FLOE_ESPHOME_MESSAGE(SwitchStateResponse)
FLOE_ESPHOME_MESSAGE(TextSensorStateResponse)
FLOE_ESPHOME_MESSAGE(CoverCommandRequest)
FLOE_ESPHOME_MESSAGE(FanCommandRequest)
FLOE_ESPHOME_MESSAGE(LightCommandRequest)
FLOE_ESPHOME_MESSAGE(SwitchCommandRequest)
FLOE_ESPHOME_MESSAGE(GetTimeRequest)
FLOE_ESPHOME_MESSAGE(GetTimeResponse)
FLOE_ESPHOME_MESSAGE(ListEntitiesNumberResponse)
FLOE_ESPHOME_MESSAGE(NumberStateResponse)
FLOE_ESPHOME_MESSAGE(NumberCommandRequest)
FLOE_ESPHOME_MESSAGE(ListEntitiesSelectResponse)
FLOE_ESPHOME_MESSAGE(SelectStateResponse)
FLOE_ESPHOME_MESSAGE(SelectCommandRequest)
FLOE_ESPHOME_MESSAGE(ListEntitiesButtonResponse)
FLOE_ESPHOME_MESSAGE(ButtonCommandRequest)
#undef FLOE_ESPHOME_MESSAGE

/// The protobuf bytes of a message (proto3: default values are not sent, so may be empty).
[[nodiscard]] std::string serialize(const google::protobuf::MessageLite& message);

/// Parses `payload` into `out`. False for bytes that are not a valid encoding of the message
/// (truncated, bad varint, wrong wire type for a known field); unknown fields are skipped.
[[nodiscard]] bool parse(std::string_view payload, google::protobuf::MessageLite& out);

}  // namespace floe::esphome
