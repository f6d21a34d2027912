// One device's region: the shared-memory contract between floe-core and a provider.
//
//   [RegionHeader]  kind = RegionKind::kDevice            offset 0
//   [DeviceHeader]  where the parts are                    kRegionPayloadOffset
//   [tree slice]    TreeLayout of the declared schema      header.tree_offset
//   [tx ring]       core -> provider: requests             header.tx_offset
//   [rx ring]       provider -> core: changes and results  header.rx_offset
//
// The core computes the layout from the schema, creates and seals the region, initialises every
// part and hands it over with two eventfds (tx: wakes the provider; rx: wakes the core). Both sides
// attach with device_region_attach(), which validates the header against the region's size.
//
// Ring records (all fields little-endian host order, payloads plain structs, every field untrusted):
//   tx  kSetRequest      SetRequest                  set a small component (packed value word)
//   tx  kSetTextRequest  SetRequest + text bytes     set a text component (value_bits = length)
//   rx  kChangeRecord    ChangeRecord                the provider wrote (entity, component)
//   rx  kRequestResult   RequestResult + message     a request finished (ok or error text)
#pragma once

#include <chrono>
#include <cstddef>
#include <cstring>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <type_traits>

#include "floe/ipc/platform.hpp"
#include "floe/ipc/result.hpp"
#include "floe/ipc/ring.hpp"
#include "floe/ipc/tree.hpp"

namespace floe::ipc {

inline constexpr std::uint32_t kDeviceMagic = 0x43564544;  // "DEVC"
inline constexpr std::uint32_t kDeviceLayoutVersion = 1;

/// Placed at kRegionPayloadOffset of a kDevice region. Written once by the core before sharing.
struct DeviceHeader {
  std::uint32_t magic;
  std::uint32_t layout_version;
  std::uint64_t tree_offset;  // from the region's start; 64-aligned
  std::uint64_t tree_size;
  std::uint64_t tx_offset;    // RingHeader of the tx ring; 64-aligned
  std::uint64_t tx_size;      // ring_footprint(capacity)
  std::uint64_t rx_offset;
  std::uint64_t rx_size;
  std::uint64_t reserved[5];
};
static_assert(std::is_standard_layout_v<DeviceHeader> && std::is_trivially_copyable_v<DeviceHeader>);
static_assert(sizeof(DeviceHeader) == 96);

enum DeviceRecordType : std::uint16_t {
  kChangeRecord = 1,    // rx
  kRequestResult = 2,   // rx
  kSetRequest = 3,      // tx
  kSetTextRequest = 4,  // tx
};

/// rx: the provider changed `component` of `entity`; `seq` is the entity's change sequence after
/// the write (TreeWriter bumps it). Written after the tree, so a reader that sees the record sees
/// the value.
struct ChangeRecord {
  std::uint32_t entity;
  std::uint16_t component;
  std::uint16_t reserved;  // 0
  std::uint64_t seq;
};
static_assert(std::is_standard_layout_v<ChangeRecord> && std::is_trivially_copyable_v<ChangeRecord>);
static_assert(sizeof(ChangeRecord) == 16);

/// tx: set `component` of `entity`. For kSetRequest `value_bits` is the packed value word; for
/// kSetTextRequest it is the text's length and the text follows the struct in the payload.
struct SetRequest {
  std::uint64_t request_id;
  std::uint32_t entity;
  std::uint16_t component;
  std::uint16_t reserved;  // 0
  std::uint64_t value_bits;
};
static_assert(std::is_standard_layout_v<SetRequest> && std::is_trivially_copyable_v<SetRequest>);
static_assert(sizeof(SetRequest) == 24);

enum class RequestStatus : std::uint32_t {
  kOk = 0,
  kFailed = 1,       // the provider or its device refused or failed; message says why
  kUnsupported = 2,  // the entity cannot do that (read-only sensor, unknown component)
  kUnreachable = 3,  // the physical device is not connected
};

/// rx: request `request_id` finished. A UTF-8 message of `message_length` bytes follows.
struct RequestResult {
  std::uint64_t request_id;
  std::uint32_t status;  // RequestStatus
  std::uint32_t message_length;
};
static_assert(std::is_standard_layout_v<RequestResult> && std::is_trivially_copyable_v<RequestResult>);
static_assert(sizeof(RequestResult) == 16);

/// Copies a record payload of type T out of shared memory (the producer may rewrite it meanwhile);
/// nullopt if the payload is shorter than T.
template <typename T>
[[nodiscard]] std::optional<T> read_record(std::span<const std::byte> payload) noexcept {
  static_assert(std::is_trivially_copyable_v<T>);
  if (payload.size() < sizeof(T)) return std::nullopt;
  T out;
  std::memcpy(&out, payload.data(), sizeof(T));
  return out;
}

struct DeviceRegionOptions {
  std::size_t tx_capacity = 16 * 1024;  // ring data bytes, power of two
  std::size_t rx_capacity = 64 * 1024;
  NotifyMode notify = NotifyMode::kEventfd;
  std::chrono::microseconds poll_interval{100};
  /// The tree starts `tree_color % kTreeColors` cache lines after its base offset (see kTreeColors).
  std::uint32_t tree_color = 0;
};

/// Tree "colours". Every region is page-aligned, so without an offset the same component of every
/// device sits at the same page offset and maps to the same L1 set: a query reading the Dimmer of
/// 34 lights then keeps evicting its own lines from a 12-way cache. Starting each tree at one of 64
/// cache-line offsets spreads them over all 64 sets of a 4 KiB way. The offset is written into the
/// header (tree_offset), so readers and providers follow it without knowing about colours.
inline constexpr std::uint32_t kTreeColors = 64;
/// A stable colour for a device id (FNV-1a, mod kTreeColors): the same id gets the same layout in
/// every run, different ids spread evenly.
[[nodiscard]] std::uint32_t tree_color_of(std::string_view device_id) noexcept;

/// Where everything goes for a schema. Pure computation.
struct DeviceRegionLayout {
  DeviceHeader header{};
  TreeLayout tree;
  std::size_t region_size = 0;  // total bytes to create the region with
  DeviceRegionOptions options;

  [[nodiscard]] static Result<DeviceRegionLayout> compute(const TreeSchema& schema,
                                                          const DeviceRegionOptions& options = {});
};

/// Creator only (the core), on a fresh kDevice region of at least layout.region_size bytes:
/// writes the DeviceHeader, initialises the tree and both rings.
[[nodiscard]] Status device_region_init(std::span<std::byte> region, const DeviceRegionLayout& layout);

/// The three parts of a device region, as spans into the mapping, after validating the
/// DeviceHeader (magic, version, every offset/size aligned, inside the region, not overlapping).
struct DeviceRegionParts {
  std::span<std::byte> tree;
  std::span<std::byte> tx;
  std::span<std::byte> rx;
};
[[nodiscard]] Result<DeviceRegionParts> device_region_attach(std::span<std::byte> region);

}  // namespace floe::ipc
