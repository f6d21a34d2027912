#include "floe/ipc/device_region.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "floe/ipc/region.hpp"

namespace floe::ipc {
namespace {

TreeSchema light_schema() {
  TreeSchema s;
  for (int i = 0; i < 3; ++i) {
    s.entities.push_back({{{Component::Light}, {Component::Switch}, {Component::Dimmer}, {Component::Text}}});
  }
  return s;
}

struct Fixture {
  DeviceRegionLayout layout;
  Region region;
};

Fixture make_device() {
  auto layout = DeviceRegionLayout::compute(light_schema(), {.tx_capacity = 1024, .rx_capacity = 4096});
  EXPECT_TRUE(layout) << layout.error().to_string();
  auto region = Region::create({.name = "dev", .size = layout->region_size, .kind = RegionKind::kDevice});
  EXPECT_TRUE(region) << region.error().to_string();
  auto st = device_region_init({region->data(), region->size()}, *layout);
  EXPECT_TRUE(st) << st.error().to_string();
  return {std::move(*layout), std::move(*region)};
}

TEST(DeviceRegion, PartsFollowTheHeaderInOrderAndAligned) {
  auto f = make_device();
  const DeviceHeader& h = f.layout.header;
  EXPECT_EQ(h.tree_offset % kCacheLine, 0U);
  EXPECT_EQ(h.tx_offset, h.tree_offset + h.tree_size);
  EXPECT_EQ(h.rx_offset, h.tx_offset + h.tx_size);
  EXPECT_EQ(f.layout.region_size, h.rx_offset + h.rx_size);
}

TEST(DeviceRegion, AttachGivesUsableTreeAndRings) {
  auto f = make_device();
  auto parts = device_region_attach({f.region.data(), f.region.size()});
  ASSERT_TRUE(parts) << parts.error().to_string();
  auto writer = TreeWriter::attach(parts->tree);
  ASSERT_TRUE(writer) << writer.error().to_string();
  ASSERT_EQ(writer->set(1, Component::Dimmer, 0.25), TreeWriteStatus::kOk);
  auto reader = TreeReader::attach(parts->tree);
  ASSERT_TRUE(reader);
  EXPECT_EQ(std::get<double>(*reader->get(1, Component::Dimmer)), 0.25);

  auto efd = make_eventfd(true);
  ASSERT_TRUE(efd);
  auto producer = RingProducer::attach(parts->rx, efd->get());
  auto consumer = RingConsumer::attach(parts->rx, efd->get());
  ASSERT_TRUE(producer && consumer);
  const ChangeRecord rec{1, to_id(Component::Dimmer), 0, reader->change_seq(1)};
  ASSERT_TRUE(producer->try_push(kChangeRecord, std::as_bytes(std::span(&rec, 1))));
  RecordView view;
  ASSERT_EQ(consumer->peek(view), PopStatus::kRecord);
  EXPECT_EQ(view.type, kChangeRecord);
  auto got = read_record<ChangeRecord>(view.payload);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->entity, 1U);
  EXPECT_EQ(got->seq, rec.seq);
  EXPECT_FALSE(read_record<SetRequest>(view.payload.first(8)));
}

// A coloured layout moves the tree by whole cache lines (mod kTreeColors) and nothing else: the
// header says where it is, so attach finds the same usable tree at the new offset.
TEST(DeviceRegion, TreeColourShiftsTheTreeByCacheLinesAndAttachFollowsIt) {
  const DeviceRegionOptions plain{.tx_capacity = 1024, .rx_capacity = 4096};
  auto base = DeviceRegionLayout::compute(light_schema(), plain);
  ASSERT_TRUE(base);
  for (const std::uint32_t color : {1U, 17U, kTreeColors - 1, kTreeColors + 5}) {
    DeviceRegionOptions opts = plain;
    opts.tree_color = color;
    auto layout = DeviceRegionLayout::compute(light_schema(), opts);
    ASSERT_TRUE(layout);
    EXPECT_EQ(layout->header.tree_offset, base->header.tree_offset + (color % kTreeColors) * kCacheLine) << color;
    EXPECT_EQ(layout->header.tree_size, base->header.tree_size);
    EXPECT_EQ(layout->region_size, base->region_size + (color % kTreeColors) * kCacheLine);
    auto region = Region::create({.name = "dev", .size = layout->region_size, .kind = RegionKind::kDevice});
    ASSERT_TRUE(region);
    ASSERT_TRUE(device_region_init({region->data(), region->size()}, *layout));
    auto parts = device_region_attach({region->data(), region->size()});
    ASSERT_TRUE(parts) << parts.error().to_string();
    EXPECT_EQ(parts->tree.data(), region->data() + layout->header.tree_offset);
    auto writer = TreeWriter::attach(parts->tree);
    ASSERT_TRUE(writer);
    ASSERT_EQ(writer->set(2, Component::Dimmer, 0.75), TreeWriteStatus::kOk);
    auto reader = TreeReader::attach(parts->tree);
    ASSERT_TRUE(reader);
    EXPECT_EQ(std::get<double>(*reader->get(2, Component::Dimmer)), 0.75);
  }
}

// Colours are stable per id and spread: 64 typical ids use most of the 64 colours.
TEST(DeviceRegion, TreeColoursAreStableAndSpreadOverTheCacheSets) {
  EXPECT_EQ(tree_color_of("kitchen_light"), tree_color_of("kitchen_light"));
  std::vector<bool> used(kTreeColors, false);
  for (int i = 0; i < 64; ++i) {
    const std::uint32_t c = tree_color_of("light_" + std::to_string(i));
    ASSERT_LT(c, kTreeColors);
    used[c] = true;
  }
  EXPECT_GE(std::count(used.begin(), used.end(), true), 32);
}

TEST(DeviceRegion, AttachRefusesACorruptHeader) {
  auto f = make_device();
  auto* h = reinterpret_cast<DeviceHeader*>(f.region.data() + kRegionPayloadOffset);
  const DeviceHeader good = *h;

  h->magic = 0x12345678;
  auto r = device_region_attach({f.region.data(), f.region.size()});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("bad device magic"), std::string::npos);

  *h = good;
  h->layout_version = 99;
  EXPECT_FALSE(device_region_attach({f.region.data(), f.region.size()}));

  *h = good;
  h->rx_size = f.region.size();  // runs past the end
  r = device_region_attach({f.region.data(), f.region.size()});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("outside"), std::string::npos);

  *h = good;
  h->tx_offset = h->tree_offset;  // overlaps the tree
  EXPECT_FALSE(device_region_attach({f.region.data(), f.region.size()}));

  *h = good;
  h->tx_offset += 8;  // misaligned
  EXPECT_FALSE(device_region_attach({f.region.data(), f.region.size()}));

  *h = good;
  EXPECT_TRUE(device_region_attach({f.region.data(), f.region.size()}));
}

TEST(DeviceRegion, InitRefusesARegionTooSmall) {
  auto layout = DeviceRegionLayout::compute(light_schema());
  ASSERT_TRUE(layout);
  std::vector<std::byte> small(layout->region_size / 2);
  EXPECT_FALSE(device_region_init(small, *layout));
}

}  // namespace
}  // namespace floe::ipc
