// The ring records a provider reads and writes (ipc/device_region.hpp), decoded and encoded.
// Pure functions with no state: any thread. The Provider uses them; tests and tools may too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "floe/ipc/components.hpp"
#include "floe/ipc/device_region.hpp"
#include "floe/ipc/result.hpp"

namespace floe::sdk {

/// What the core asks for: a small value (decoded with ipc::decode) or a text.
using RequestValue = std::variant<ipc::Value, std::string>;

/// One decoded tx record.
struct DecodedRequest {
  std::uint64_t id = 0;
  std::uint32_t entity = 0;
  ipc::Component component = ipc::Component::kNone;
  RequestValue value;
};

/// Why a tx record could not be decoded. `id` is the request id when the fixed part was readable
/// (so the provider can still answer it), 0 otherwise.
struct DecodeFailure {
  std::uint64_t id = 0;
  bool has_id = false;
  ipc::RequestStatus status = ipc::RequestStatus::kUnsupported;
  std::string message;
};

/// Decodes a kSetRequest or kSetTextRequest payload (untrusted bytes). A small value is checked
/// against the component's encoding (ipc::decode); a text's length against the payload.
[[nodiscard]] tl::expected<DecodedRequest, DecodeFailure> decode_request(std::uint16_t type,
                                                                         std::span<const std::byte> payload);

/// Encodes a kSetRequest (small value) or kSetTextRequest (text) payload, as the core writes them.
[[nodiscard]] Result<std::vector<std::byte>> encode_request(std::uint64_t id, std::uint32_t entity,
                                                            ipc::Component component, const RequestValue& value);

/// Encodes a kRequestResult payload: RequestResult followed by the message (truncated to
/// `max_payload` bytes in all).
[[nodiscard]] std::vector<std::byte> encode_result(std::uint64_t id, ipc::RequestStatus status,
                                                   std::string_view message, std::size_t max_payload = 4096);

}  // namespace floe::sdk
