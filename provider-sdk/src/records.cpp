#include "floe/sdk/records.hpp"

#include <algorithm>
#include <cstring>

namespace floe::sdk {

tl::expected<DecodedRequest, DecodeFailure> decode_request(std::uint16_t type, std::span<const std::byte> payload) {
  using ipc::RequestStatus;
  if (type != ipc::kSetRequest && type != ipc::kSetTextRequest) {
    return tl::unexpected(DecodeFailure{.message = "unknown tx record type " + std::to_string(type)});
  }
  const auto req = ipc::read_record<ipc::SetRequest>(payload);
  if (!req) {
    return tl::unexpected(DecodeFailure{.message = "tx record shorter than a SetRequest (" +
                                                   std::to_string(payload.size()) + " bytes)"});
  }
  DecodedRequest out{.id = req->request_id, .entity = req->entity,
                     .component = static_cast<ipc::Component>(req->component), .value = {}};
  auto fail = [&](RequestStatus status, std::string message) {
    return tl::unexpected(DecodeFailure{.id = req->request_id, .has_id = true, .status = status, .message = std::move(message)});
  };
  const ipc::ComponentInfo* info = ipc::find_component(out.component);
  if (info == nullptr) return fail(RequestStatus::kUnsupported, "unknown component id " + std::to_string(req->component));
  if (type == ipc::kSetRequest) {
    auto value = ipc::decode(out.component, req->value_bits);
    if (!value) return fail(RequestStatus::kFailed, value.error().message);
    out.value = *value;
    return out;
  }
  if (info->encoding != ipc::Encoding::kText) {
    return fail(RequestStatus::kUnsupported, std::string(info->name) + " is not a text component");
  }
  // The length is untrusted: check it against what the record really carries.
  const std::size_t available = payload.size() - sizeof(ipc::SetRequest);
  if (req->value_bits > available) {
    return fail(RequestStatus::kFailed, "text length " + std::to_string(req->value_bits) + " exceeds the record (" +
                                            std::to_string(available) + " bytes)");
  }
  out.value = std::string(reinterpret_cast<const char*>(payload.data() + sizeof(ipc::SetRequest)),
                          static_cast<std::size_t>(req->value_bits));
  return out;
}

Result<std::vector<std::byte>> encode_request(std::uint64_t id, std::uint32_t entity, ipc::Component component,
                                              const RequestValue& value) {
  ipc::SetRequest req{.request_id = id, .entity = entity, .component = ipc::to_id(component), .reserved = 0, .value_bits = 0};
  std::vector<std::byte> out(sizeof req);
  if (const auto* v = std::get_if<ipc::Value>(&value)) {
    auto bits = ipc::encode(component, *v);
    if (!bits) return tl::unexpected(std::move(bits).error());
    req.value_bits = *bits;
  } else {
    const auto& text = std::get<std::string>(value);
    req.value_bits = text.size();
    out.resize(sizeof req + text.size());
    std::memcpy(out.data() + sizeof req, text.data(), text.size());
  }
  std::memcpy(out.data(), &req, sizeof req);
  return out;
}

std::vector<std::byte> encode_result(std::uint64_t id, ipc::RequestStatus status, std::string_view message,
                                     std::size_t max_payload) {
  const std::size_t room = max_payload > sizeof(ipc::RequestResult) ? max_payload - sizeof(ipc::RequestResult) : 0;
  const std::size_t n = std::min(message.size(), room);
  ipc::RequestResult result{.request_id = id, .status = static_cast<std::uint32_t>(status),
                            .message_length = static_cast<std::uint32_t>(n)};
  std::vector<std::byte> out(sizeof result + n);
  std::memcpy(out.data(), &result, sizeof result);
  if (n > 0) std::memcpy(out.data() + sizeof result, message.data(), n);
  return out;
}

}  // namespace floe::sdk
