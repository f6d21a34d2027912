#include "floe/esphome/messages.hpp"

namespace floe::esphome {

std::optional<std::string_view> type_name(std::uint16_t type) noexcept {
  switch (static_cast<MsgType>(type)) {
#define FLOE_ESPHOME_NAME(n) \
  case MsgType::n:           \
    return #n;
    FLOE_ESPHOME_NAME(HelloRequest)
    FLOE_ESPHOME_NAME(HelloResponse)
    FLOE_ESPHOME_NAME(AuthenticationRequest)
    FLOE_ESPHOME_NAME(AuthenticationResponse)
    FLOE_ESPHOME_NAME(DisconnectRequest)
    FLOE_ESPHOME_NAME(DisconnectResponse)
    FLOE_ESPHOME_NAME(PingRequest)
    FLOE_ESPHOME_NAME(PingResponse)
    FLOE_ESPHOME_NAME(DeviceInfoRequest)
    FLOE_ESPHOME_NAME(DeviceInfoResponse)
    FLOE_ESPHOME_NAME(ListEntitiesRequest)
    FLOE_ESPHOME_NAME(ListEntitiesBinarySensorResponse)
    FLOE_ESPHOME_NAME(ListEntitiesCoverResponse)
    FLOE_ESPHOME_NAME(ListEntitiesFanResponse)
    FLOE_ESPHOME_NAME(ListEntitiesLightResponse)
    FLOE_ESPHOME_NAME(ListEntitiesSensorResponse)
    FLOE_ESPHOME_NAME(ListEntitiesSwitchResponse)
    FLOE_ESPHOME_NAME(ListEntitiesTextSensorResponse)
    FLOE_ESPHOME_NAME(ListEntitiesDoneResponse)
    FLOE_ESPHOME_NAME(SubscribeStatesRequest)
    FLOE_ESPHOME_NAME(BinarySensorStateResponse)
    FLOE_ESPHOME_NAME(CoverStateResponse)
    FLOE_ESPHOME_NAME(FanStateResponse)
    FLOE_ESPHOME_NAME(LightStateResponse)
    FLOE_ESPHOME_NAME(SensorStateResponse)
    FLOE_ESPHOME_NAME(SwitchStateResponse)
    FLOE_ESPHOME_NAME(TextSensorStateResponse)
    FLOE_ESPHOME_NAME(CoverCommandRequest)
    FLOE_ESPHOME_NAME(FanCommandRequest)
    FLOE_ESPHOME_NAME(LightCommandRequest)
    FLOE_ESPHOME_NAME(SwitchCommandRequest)
    FLOE_ESPHOME_NAME(GetTimeRequest)
    FLOE_ESPHOME_NAME(GetTimeResponse)
    FLOE_ESPHOME_NAME(ListEntitiesNumberResponse)
    FLOE_ESPHOME_NAME(NumberStateResponse)
    FLOE_ESPHOME_NAME(NumberCommandRequest)
    FLOE_ESPHOME_NAME(ListEntitiesSelectResponse)
    FLOE_ESPHOME_NAME(SelectStateResponse)
    FLOE_ESPHOME_NAME(SelectCommandRequest)
    FLOE_ESPHOME_NAME(ListEntitiesButtonResponse)
    FLOE_ESPHOME_NAME(ButtonCommandRequest)
#undef FLOE_ESPHOME_NAME
  }
  return std::nullopt;
}

bool is_known_type(std::uint16_t type) noexcept { return type_name(type).has_value(); }

std::string serialize(const google::protobuf::MessageLite& message) {
  std::string out;
  (void)message.SerializeToString(&out);
  return out;
}

bool parse(std::string_view payload, google::protobuf::MessageLite& out) {
  if (payload.size() > static_cast<std::size_t>(INT32_MAX)) return false;
  return out.ParseFromArray(payload.data(), static_cast<int>(payload.size()));
}

}  // namespace floe::esphome
