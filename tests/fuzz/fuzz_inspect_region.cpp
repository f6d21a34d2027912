// libFuzzer target: floe-inspect's region decoder (tools/inspect/decode.cpp) over a region whose
// writer it does not trust. A provider writes the device regions it was granted, and its doorbell
// region, while the inspector reads them. Run by `scripts/fuzz inspect_region` (seeds:
// tests/fuzz/corpus/inspect_region).
//
// The input's first byte chooses what is decoded:
// - 0: the rest of the input is the whole region;
// - 1: a real device region (a light, and a sensor with text and list, values set, records in both
//   rings);
// - 2: a real doorbell region (3 doorbells of 64 slots, bits rung, one sleeper).
// For 1 and 2, bytes 1-2 give an offset and the rest of the input is laid over the region there.
// Byte 3 picks the seals that fstat would have reported. The region is copied into memory of
// exactly its size (ASan flags any read past it). Every report is then formatted as text and JSON.
// The decoder must never read outside the bytes, never crash, and never hang.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <fcntl.h>

#include "floe/ipc/device_region.hpp"
#include "floe/ipc/doorbell.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/ring.hpp"
#include "floe/ipc/tree.hpp"
#include "inspect.hpp"

namespace {

using namespace floe;
using ipc::Component;

struct Free {
  void operator()(std::byte* p) const { std::free(p); }
};

void require(bool ok) {
  if (!ok) std::abort();
}

std::vector<std::byte> device_template() {
  ipc::TreeSchema schema;
  schema.entities.push_back({{{Component::Light}, {Component::Switch}, {Component::Dimmer}, {Component::Color}}});
  schema.entities.push_back({{{Component::Sensor}, {Component::Real}, {Component::Text}, {Component::TextList}}});
  auto layout = ipc::DeviceRegionLayout::compute(schema, {.tx_capacity = 1024, .rx_capacity = 1024,
                                                          .notify = ipc::NotifyMode::kPoll});
  require(layout.has_value());
  auto region = ipc::Region::create({.name = "floe-dev-fuzz", .size = layout->region_size, .kind = ipc::RegionKind::kDevice});
  require(region.has_value());
  require(ipc::device_region_init({region->data(), region->size()}, *layout).has_value());
  auto parts = ipc::device_region_attach({region->data(), region->size()});
  require(parts.has_value());
  auto w = ipc::TreeWriter::attach(parts->tree);
  require(w.has_value());
  require(w->set(0, Component::Switch, true) == ipc::TreeWriteStatus::kOk);
  require(w->set(0, Component::Dimmer, 0.5) == ipc::TreeWriteStatus::kOk);
  require(w->set(0, Component::Color, ipc::Rgb{255, 128, 0}) == ipc::TreeWriteStatus::kOk);
  require(w->set(1, Component::Real, 21.5) == ipc::TreeWriteStatus::kOk);
  require(w->set_text(1, Component::Text, "warm") == ipc::TreeWriteStatus::kOk);
  const std::vector<std::string> items{"a", "bc"};
  require(w->set_list(1, Component::TextList, items) == ipc::TreeWriteStatus::kOk);
  const std::byte payload[16]{};
  for (auto ring : {parts->tx, parts->rx}) {
    auto p = ipc::RingProducer::attach(ring);
    require(p.has_value());
    for (int i = 0; i < 3; ++i) require(p->try_push(ipc::kChangeRecord, payload));
  }
  return {region->data(), region->data() + region->size()};
}

std::vector<std::byte> doorbell_template() {
  constexpr std::uint32_t kCount = 3;
  constexpr std::uint32_t kSlots = 64;
  auto region = ipc::Region::create({.name = "floe-bells-fuzz", .size = ipc::doorbell_region_size(kCount, kSlots),
                                     .kind = ipc::RegionKind::kDoorbells});
  require(region.has_value());
  const std::span<std::byte> bytes{region->data(), region->size()};
  require(ipc::doorbell_region_init(bytes, kCount, kSlots).has_value());
  auto bells = ipc::doorbell_region_attach(bytes, kCount, kSlots);
  require(bells.has_value());
  (*bells)[0].ring(3, -1);
  (*bells)[1].ring(63, -1);
  require((*bells)[2].prepare_sleep());
  return {region->data(), region->data() + region->size()};
}

void decode(std::span<const std::byte> bytes, int seals) {
  std::unique_ptr<std::byte, Free> storage{
      static_cast<std::byte*>(std::aligned_alloc(kCacheLine, (bytes.size() + kCacheLine - 1) / kCacheLine * kCacheLine))};
  std::memcpy(storage.get(), bytes.data(), bytes.size());
  const std::span<const std::byte> region{storage.get(), bytes.size()};
  inspect::DecodeOptions options;
  options.seqlock_attempts = 4;  // a seqlock the input left odd costs this many tries
  inspect::RegionReport report = inspect::decode_region(region, region.size(), seals, options);
  inspect::name_device(report);
  (void)inspect::format_region(report, true, true);
  (void)inspect::to_json(report).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* input, std::size_t size) {
  static const std::vector<std::byte> device = device_template();
  static const std::vector<std::byte> doorbells = doorbell_template();
  if (size < 4) return 0;
  const int all_seals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
  const int seals = input[3] == 0xff ? -1 : (input[3] & all_seals);
  const auto* rest = reinterpret_cast<const std::byte*>(input + 4);
  const std::size_t n = size - 4;
  if (input[0] % 3 == 0) {
    if (n > 0) decode({rest, n}, seals);
    return 0;
  }
  std::vector<std::byte> region = input[0] % 3 == 1 ? device : doorbells;
  const std::size_t offset = (static_cast<std::size_t>(input[1]) | (static_cast<std::size_t>(input[2]) << 8)) % region.size();
  std::memcpy(region.data() + offset, rest, std::min(n, region.size() - offset));
  decode(region, seals);
  return 0;
}
