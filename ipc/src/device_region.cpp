#include "floe/ipc/device_region.hpp"

#include <fmt/format.h>

#include <new>

#include "floe/ipc/region.hpp"

namespace floe::ipc {
namespace {

constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) noexcept { return (v + a - 1) / a * a; }

bool part_ok(std::uint64_t offset, std::uint64_t size, std::uint64_t lo, std::uint64_t region) noexcept {
  return offset % kCacheLine == 0 && offset >= lo && size <= region && offset <= region - size;
}

}  // namespace

std::uint32_t tree_color_of(std::string_view device_id) noexcept {
  std::uint32_t h = 2166136261U;
  for (const char c : device_id) {
    h ^= static_cast<unsigned char>(c);
    h *= 16777619U;
  }
  return h % kTreeColors;
}

Result<DeviceRegionLayout> DeviceRegionLayout::compute(const TreeSchema& schema, const DeviceRegionOptions& options) {
  auto tree = TreeLayout::compute(schema);
  if (!tree) return tl::unexpected(std::move(tree).error());
  DeviceRegionLayout l;
  l.options = options;
  l.tree = std::move(*tree);
  DeviceHeader& h = l.header;
  h.magic = kDeviceMagic;
  h.layout_version = kDeviceLayoutVersion;
  h.tree_offset = align_up(kRegionPayloadOffset + sizeof(DeviceHeader), kCacheLine) +
                  std::uint64_t{options.tree_color % kTreeColors} * kCacheLine;
  h.tree_size = align_up(l.tree.size(), kCacheLine);
  h.tx_offset = h.tree_offset + h.tree_size;
  h.tx_size = ring_footprint(options.tx_capacity);
  h.rx_offset = h.tx_offset + h.tx_size;
  h.rx_size = ring_footprint(options.rx_capacity);
  l.region_size = h.rx_offset + h.rx_size;
  return l;
}

Status device_region_init(std::span<std::byte> region, const DeviceRegionLayout& layout) {
  constexpr std::string_view op = "device_region.init";
  const DeviceHeader& h = layout.header;
  if (region.size() < layout.region_size) {
    return logic_error(op, fmt::format("region of {} bytes is smaller than the layout's {}", region.size(),
                                       layout.region_size));
  }
  FLOE_TRY(tree_init(region.subspan(h.tree_offset, h.tree_size), layout.tree));
  const RingOptions base{.notify = layout.options.notify, .poll_interval = layout.options.poll_interval};
  RingOptions tx = base;
  tx.capacity = layout.options.tx_capacity;
  RingOptions rx = base;
  rx.capacity = layout.options.rx_capacity;
  FLOE_TRY(ring_init(region.subspan(h.tx_offset, h.tx_size), tx));
  FLOE_TRY(ring_init(region.subspan(h.rx_offset, h.rx_size), rx));
  std::memcpy(region.data() + kRegionPayloadOffset, &h, sizeof h);
  return {};
}

Result<DeviceRegionParts> device_region_attach(std::span<std::byte> region) {
  constexpr std::string_view op = "device_region.attach";
  if (region.size() < kRegionPayloadOffset + sizeof(DeviceHeader)) {
    return logic_error(op, fmt::format("region of {} bytes has no room for a device header", region.size()));
  }
  DeviceHeader h;
  std::memcpy(&h, region.data() + kRegionPayloadOffset, sizeof h);  // one copy: checked == used
  if (h.magic != kDeviceMagic) {
    return logic_error(op, fmt::format("bad device magic {:#010x} (expected {:#010x})", h.magic, kDeviceMagic));
  }
  if (h.layout_version != kDeviceLayoutVersion) {
    return logic_error(op, fmt::format("device layout version {} (this build speaks {})", h.layout_version,
                                       kDeviceLayoutVersion));
  }
  const std::uint64_t size = region.size();
  const std::uint64_t lo = kRegionPayloadOffset + sizeof(DeviceHeader);
  if (!part_ok(h.tree_offset, h.tree_size, lo, size) || !part_ok(h.tx_offset, h.tx_size, lo, size) ||
      !part_ok(h.rx_offset, h.rx_size, lo, size)) {
    return logic_error(op, fmt::format("a part lies outside the {}-byte region or is misaligned (tree {}+{}, "
                                       "tx {}+{}, rx {}+{})",
                                       size, h.tree_offset, h.tree_size, h.tx_offset, h.tx_size, h.rx_offset,
                                       h.rx_size));
  }
  // The parts must be in this order and must not overlap.
  if (h.tree_offset + h.tree_size > h.tx_offset || h.tx_offset + h.tx_size > h.rx_offset) {
    return logic_error(op, "device region parts overlap or are out of order");
  }
  return DeviceRegionParts{region.subspan(h.tree_offset, h.tree_size), region.subspan(h.tx_offset, h.tx_size),
                           region.subspan(h.rx_offset, h.rx_size)};
}

}  // namespace floe::ipc
