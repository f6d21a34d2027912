#include "floe/ipc/tree.hpp"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace floe::ipc {
namespace {

using C = Component;

/// 64-byte aligned heap memory of exactly `n` bytes (so ASan catches a read one byte past it).
struct Buffer {
  explicit Buffer(std::size_t n) : size(n), mem(static_cast<std::byte*>(std::aligned_alloc(64, (n + 63) / 64 * 64))) {
    std::memset(mem.get(), 0xEE, n);
  }
  std::span<std::byte> span() const { return {mem.get(), size}; }
  std::size_t size;
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> mem;
};

std::string error_of(const Error& e) { return e.to_string(); }

/// A small device: a dimmable colour light, a sensor with text metadata, a select, a cover.
TreeSchema sample_schema() {
  TreeSchema s;
  s.entities.push_back({{{C::Light}, {C::Switch}, {C::Dimmer}, {C::Color}, {C::ColorMode}, {C::ColorTemperature}}});
  s.entities.push_back({{{C::Sensor}, {C::Real}, {C::Unit, 16}, {C::DeviceClass}, {C::Timestamp}, {C::Diagnostic}}});
  s.entities.push_back({{{C::TextSelect, 32}, {C::TextList, 128}, {C::Config}}});
  s.entities.push_back({{{C::Cover}, {C::CoverState}, {C::Position}, {C::Integer}, {C::Boolean}}});
  return s;
}

struct Tree {
  explicit Tree(const TreeSchema& schema) : layout(*TreeLayout::compute(schema)), buffer(layout.size()) {
    auto st = tree_init(buffer.span(), layout);
    EXPECT_TRUE(st) << st.error().to_string();
  }
  TreeWriter writer() { return std::move(*TreeWriter::attach(buffer.span())); }
  TreeReader reader() { return std::move(*TreeReader::attach(buffer.span())); }
  TreeHeader& header() { return *reinterpret_cast<TreeHeader*>(buffer.mem.get()); }
  TreeColumn* columns() { return reinterpret_cast<TreeColumn*>(buffer.mem.get() + header().column_dir_offset); }
  TreeChunk* chunks() { return reinterpret_cast<TreeChunk*>(buffer.mem.get() + header().chunk_dir_offset); }
  TreeBlob* blobs() { return reinterpret_cast<TreeBlob*>(buffer.mem.get() + header().blob_dir_offset); }
  /// The blob descriptor of (e, c), found through the layout.
  TreeBlob& blob_of(EntityIndex e, Component c) {
    const TreeChunk& ch = layout.chunks[e / 64];
    for (std::uint32_t k = ch.first_column; k < ch.first_column + ch.column_count; ++k) {
      const TreeColumn& col = layout.columns[k];
      if (col.component == to_id(c)) {
        const auto rank = std::popcount(col.presence & ((std::uint64_t{1} << (e % 64)) - 1));
        return blobs()[col.first_blob + static_cast<std::uint32_t>(rank)];
      }
    }
    ADD_FAILURE() << "no blob";
    return blobs()[0];
  }
  std::string attach_error() {
    auto r = TreeReader::attach(buffer.span());
    return r ? std::string("attached") : error_of(r.error());
  }

  TreeLayout layout;
  Buffer buffer;
};

// ---- Layout -------------------------------------------------------------------------------------

TEST(TreeLayout, SectionsAreAlignedInOrderAndInsideTheTree) {
  const auto layout = TreeLayout::compute(sample_schema());
  ASSERT_TRUE(layout) << layout.error().to_string();
  const TreeHeader& h = layout->header;
  EXPECT_EQ(h.magic, kTreeMagic);
  EXPECT_EQ(std::memcmp(&h.magic, "TREE", 4), 0);
  EXPECT_EQ(h.entity_count, 4U);
  EXPECT_EQ(h.chunk_count, 1U);
  const std::uint64_t offsets[] = {h.chunk_dir_offset, h.column_dir_offset, h.change_seq_offset, h.values_offset,
                                   h.blob_dir_offset,  h.blob_area_offset,  h.total_size};
  for (std::size_t i = 0; i < std::size(offsets); ++i) {
    if (i != 4) {
      EXPECT_EQ(offsets[i] % 64, 0U) << i;  // the blob directory follows the values directly
    }
    if (i > 0) {
      EXPECT_LT(offsets[i - 1], offsets[i]) << i;
    }
  }
  EXPECT_EQ(h.blob_count, 4U);  // Unit, DeviceClass, TextSelect, TextList
  EXPECT_EQ(layout->size(), h.total_size);
}

TEST(TreeLayout, AnEmptyDeviceIsJustAHeader) {
  auto layout = TreeLayout::compute({});
  ASSERT_TRUE(layout);
  EXPECT_EQ(layout->size(), sizeof(TreeHeader));
  Buffer b(layout->size());
  ASSERT_TRUE(tree_init(b.span(), *layout));
  auto r = TreeReader::attach(b.span());
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->entity_count(), 0U);
  EXPECT_FALSE(r->get(0, C::Light));
}

TEST(TreeLayout, ComputeRefusesMoreEntitiesThanTheLimit) {
  TreeSchema s;
  s.entities.assign(kTreeMaxEntities + 1, EntityDecl{{{C::Switch}}});
  auto r = TreeLayout::compute(s);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("4097 entities exceed the limit of 4096"), std::string::npos)
      << r.error().to_string();
}

TEST(TreeLayout, TheEntityLimitItselfWorksEndToEnd) {
  TreeSchema s;
  s.entities.assign(kTreeMaxEntities, EntityDecl{{{C::Switch}, {C::Integer}}});
  Tree t(s);
  auto w = t.writer();
  auto r = t.reader();
  EXPECT_EQ(r.entity_count(), kTreeMaxEntities);
  EXPECT_EQ(w.set(kTreeMaxEntities - 1, C::Integer, std::int64_t{77}), TreeWriteStatus::kOk);
  EXPECT_EQ(r.get(kTreeMaxEntities - 1, C::Integer), Value{std::int64_t{77}});
  EXPECT_EQ(r.chunks().size(), kTreeMaxEntities / 64);
}

TEST(TreeLayout, ComputeRefusesAComponentDeclaredTwiceOnOneEntity) {
  TreeSchema s;
  s.entities.push_back({{{C::Light}}});
  s.entities.push_back({{{C::Dimmer}, {C::Switch}, {C::Dimmer}}});
  auto r = TreeLayout::compute(s);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("entity 1 declares Dimmer twice"), std::string::npos) << r.error().to_string();
}

TEST(TreeLayout, ComputeRefusesTooManyComponentsOnOneEntity) {
  TreeSchema s;
  EntityDecl e;
  for (std::uint32_t i = 0; i <= kTreeMaxComponentsPerEntity; ++i) e.components.push_back({C::Switch});
  s.entities.push_back(e);
  auto r = TreeLayout::compute(s);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("over the limit of 64"), std::string::npos) << r.error().to_string();
}

TEST(TreeLayout, ComputeRefusesABlobOverTheLimit) {
  TreeSchema s;
  s.entities.push_back({{{C::Text, kTreeMaxBlobBytes + 1}}});
  auto r = TreeLayout::compute(s);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("exceeds the limit of 65536"), std::string::npos) << r.error().to_string();
  s.entities[0].components[0].max_bytes = kTreeMaxBlobBytes;
  EXPECT_TRUE(TreeLayout::compute(s));
}

TEST(TreeLayout, ComputeRefusesMaxBytesOnASmallKindAndUnknownKinds) {
  TreeSchema s;
  s.entities.push_back({{{C::Dimmer, 8}}});
  auto r = TreeLayout::compute(s);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("max_bytes applies only"), std::string::npos) << r.error().to_string();
  s.entities[0].components[0] = {static_cast<Component>(5000)};
  EXPECT_FALSE(TreeLayout::compute(s));
  s.entities[0].components[0] = {C::kNone};
  EXPECT_FALSE(TreeLayout::compute(s));
}

TEST(TreeLayout, ComputeRefusesATreeOverTheByteLimit) {
  TreeSchema s;
  s.entities.assign(kTreeMaxEntities, EntityDecl{{{C::Text, kTreeMaxBlobBytes}}});
  auto r = TreeLayout::compute(s);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("over the limit of 268435456"), std::string::npos) << r.error().to_string();
}

TEST(TreeLayout, InitRefusesARegionTooSmallOrMisaligned) {
  const auto layout = *TreeLayout::compute(sample_schema());
  Buffer b(layout.size() + 64);
  auto small = tree_init(b.span().first(layout.size() - 1), layout);
  ASSERT_FALSE(small);
  EXPECT_NE(small.error().message.find("region too small"), std::string::npos) << small.error().to_string();
  auto misaligned = tree_init(b.span().subspan(8), layout);
  ASSERT_FALSE(misaligned);
  EXPECT_NE(misaligned.error().message.find("64-byte aligned"), std::string::npos);
  EXPECT_TRUE(tree_init(b.span(), layout));
}

TEST(TreeLayout, DefaultBlobCapacitiesApplyAndTheSchemaReadsBack) {
  Tree t(sample_schema());
  auto r = t.reader();
  TreeSchema want = sample_schema();
  for (auto& e : want.entities) {
    for (auto& c : e.components) {
      if (c.component == C::DeviceClass) c.max_bytes = kTreeDefaultTextBytes;
    }
    // Read back in id order, whatever order they were declared in.
    std::sort(e.components.begin(), e.components.end(),
              [](const ComponentDecl& a, const ComponentDecl& b) { return a.component < b.component; });
  }
  EXPECT_EQ(r.schema(), want);
  const auto comps = r.components(1);
  ASSERT_EQ(comps.size(), 6U);
  EXPECT_EQ(comps[0].component, C::Sensor);  // id order
  EXPECT_EQ(comps[2].component, C::Unit);
  EXPECT_EQ(comps[2].encoding, Encoding::kText);
  EXPECT_EQ(comps[2].max_bytes, 16U);
  EXPECT_TRUE(r.components(99).empty());
}

// ---- Writer and reader --------------------------------------------------------------------------

TEST(Tree, EverySmallEncodingRoundTripsThroughWriterAndReader) {
  Tree t(sample_schema());
  auto w = t.writer();
  auto r = t.reader();
  const Timestamp ts{std::chrono::microseconds{1'771'804'800'000'000}};
  EXPECT_EQ(w.set(0, C::Switch, true), TreeWriteStatus::kOk);
  EXPECT_EQ(w.set(0, C::Dimmer, 0.75), TreeWriteStatus::kOk);
  EXPECT_EQ(w.set(0, C::Color, Rgb{1, 2, 3}), TreeWriteStatus::kOk);
  EXPECT_EQ(w.set(0, C::ColorMode, *enum_value(C::ColorMode, "rgb")), TreeWriteStatus::kOk);
  EXPECT_EQ(w.set(0, C::ColorTemperature, 2700.0), TreeWriteStatus::kOk);
  EXPECT_EQ(w.set(1, C::Real, -3.5), TreeWriteStatus::kOk);
  EXPECT_EQ(w.set(1, C::Timestamp, ts), TreeWriteStatus::kOk);
  EXPECT_EQ(w.set(3, C::Integer, std::int64_t{-9'000'000'000}), TreeWriteStatus::kOk);
  EXPECT_EQ(w.set(3, C::Boolean, true), TreeWriteStatus::kOk);
  EXPECT_EQ(w.set(3, C::CoverState, EnumValue{2}), TreeWriteStatus::kOk);

  EXPECT_EQ(r.get(0, C::Light), Value{Marker{}});
  EXPECT_EQ(r.get(0, C::Switch), Value{true});
  EXPECT_EQ(r.get(0, C::Dimmer), Value{0.75});
  EXPECT_EQ(r.get(0, C::Color), Value{(Rgb{1, 2, 3})});
  EXPECT_EQ(format_value(C::ColorMode, *r.get(0, C::ColorMode)), "rgb");
  EXPECT_EQ(r.get(0, C::ColorTemperature), Value{2700.0});
  EXPECT_EQ(r.get(1, C::Real), Value{-3.5});
  EXPECT_EQ(r.get(1, C::Timestamp), Value{ts});
  EXPECT_EQ(r.get(3, C::Integer), Value{std::int64_t{-9'000'000'000}});
  EXPECT_EQ(r.get(3, C::Boolean), Value{true});
  EXPECT_EQ(format_value(C::CoverState, *r.get(3, C::CoverState)), "closed");
  EXPECT_EQ(r.get_raw(0, C::Color), 0x010203U);
}

TEST(Tree, ValuesStartZeroAndBlobsStartEmpty) {
  Tree t(sample_schema());
  auto r = t.reader();
  EXPECT_EQ(r.get(0, C::Switch), Value{false});
  EXPECT_EQ(r.get(0, C::Dimmer), Value{0.0});
  EXPECT_EQ(r.get(1, C::Timestamp), Value{Timestamp{}});
  EXPECT_EQ(*r.read_text(1, C::Unit), "");
  auto list = r.read_list(2, C::TextList);
  ASSERT_TRUE(list) << list.error().to_string();
  EXPECT_TRUE(list->empty());
  for (EntityIndex e = 0; e < 4; ++e) EXPECT_EQ(r.change_seq(e), 0U);
}

TEST(Tree, TextRoundTripsUpToItsCapacityAndNotOneByteMore) {
  Tree t(sample_schema());
  auto w = t.writer();
  auto r = t.reader();
  EXPECT_EQ(w.set_text(1, C::Unit, "kWh"), TreeWriteStatus::kOk);
  EXPECT_EQ(*r.read_text(1, C::Unit), "kWh");
  const std::string full(16, 'x');
  EXPECT_EQ(w.set_text(1, C::Unit, full), TreeWriteStatus::kOk);
  EXPECT_EQ(*r.read_text(1, C::Unit), full);
  EXPECT_EQ(w.set_text(1, C::Unit, full + "y"), TreeWriteStatus::kTooLong);
  EXPECT_EQ(*r.read_text(1, C::Unit), full);  // unchanged
  EXPECT_EQ(w.set_text(1, C::Unit, "W"), TreeWriteStatus::kOk);  // shorter: no leftovers of the old text
  EXPECT_EQ(*r.read_text(1, C::Unit), "W");
  EXPECT_EQ(w.set_text(1, C::Unit, ""), TreeWriteStatus::kOk);
  EXPECT_EQ(*r.read_text(1, C::Unit), "");
  const std::string binary("a\0b\xff", 4);
  EXPECT_EQ(w.set_text(1, C::DeviceClass, binary), TreeWriteStatus::kOk);
  // Readers hand texts on in protobuf strings: a byte that is not UTF-8 comes back as U+FFFD.
  EXPECT_EQ(*r.read_text(1, C::DeviceClass), std::string("a\0b\xef\xbf\xbd", 6));
  EXPECT_EQ(w.set_text(1, C::DeviceClass, "21 \xc2\xb0" "C"), TreeWriteStatus::kOk);
  EXPECT_EQ(*r.read_text(1, C::DeviceClass), "21 \xc2\xb0" "C");
}

TEST(Tree, ListRoundTripsAndIsRefusedWhenItsEncodingExceedsTheCapacity) {
  Tree t(sample_schema());
  auto w = t.writer();
  auto r = t.reader();
  const std::vector<std::string> options = {"eco", "comfort", "", "away"};
  EXPECT_EQ(w.set_list(2, C::TextList, options), TreeWriteStatus::kOk);
  EXPECT_EQ(*r.read_list(2, C::TextList), options);
  const std::vector<std::string_view> views = {"a", "bc"};
  EXPECT_EQ(w.set_list(2, C::TextList, std::span<const std::string_view>(views)), TreeWriteStatus::kOk);
  EXPECT_EQ(*r.read_list(2, C::TextList), (std::vector<std::string>{"a", "bc"}));
  // 128 bytes of capacity: 4 + (4 + 120) = 128 fits, 4 + (4 + 121) does not.
  EXPECT_EQ(w.set_list(2, C::TextList, std::vector<std::string>{std::string(120, 'z')}), TreeWriteStatus::kOk);
  EXPECT_EQ(w.set_list(2, C::TextList, std::vector<std::string>{std::string(121, 'z')}), TreeWriteStatus::kTooLong);
  EXPECT_EQ(*r.read_list(2, C::TextList), std::vector<std::string>{std::string(120, 'z')});
  EXPECT_EQ(w.set_list(2, C::TextList, std::vector<std::string>{}), TreeWriteStatus::kOk);
  EXPECT_TRUE(r.read_list(2, C::TextList)->empty());
  EXPECT_EQ(w.set_list(2, C::TextList, std::vector<std::string>{"caf\xc3\xa9", "caf\xe9"}), TreeWriteStatus::kOk);
  EXPECT_EQ(*r.read_list(2, C::TextList), (std::vector<std::string>{"caf\xc3\xa9", "caf\xef\xbf\xbd"}));
}

TEST(Tree, EveryWriteBumpsOnlyItsEntitysChangeSequence) {
  Tree t(sample_schema());
  auto w = t.writer();
  auto r = t.reader();
  ASSERT_EQ(w.set(0, C::Dimmer, 0.1), TreeWriteStatus::kOk);
  ASSERT_EQ(w.set(0, C::Switch, true), TreeWriteStatus::kOk);
  ASSERT_EQ(w.set_text(1, C::Unit, "V"), TreeWriteStatus::kOk);
  ASSERT_EQ(w.set_list(2, C::TextList, std::vector<std::string>{"x"}), TreeWriteStatus::kOk);
  EXPECT_EQ(r.change_seq(0), 2U);
  EXPECT_EQ(r.change_seq(1), 1U);
  EXPECT_EQ(r.change_seq(2), 1U);
  EXPECT_EQ(r.change_seq(3), 0U);
  EXPECT_EQ(w.change_seq(0), 2U);
  // Refused writes change nothing.
  EXPECT_EQ(w.set_text(1, C::Unit, std::string(100, 'q')), TreeWriteStatus::kTooLong);
  EXPECT_EQ(w.set(0, C::Dimmer, true), TreeWriteStatus::kWrongType);
  EXPECT_EQ(r.change_seq(1), 1U);
  EXPECT_EQ(r.change_seq(0), 2U);
  EXPECT_EQ(r.change_seq(1000), 0U);
}

TEST(Tree, WriterReturnsErrorsForAnythingNotInTheSchema) {
  Tree t(sample_schema());
  auto w = t.writer();
  EXPECT_EQ(w.set(4, C::Switch, true), TreeWriteStatus::kNoSuchEntity);
  EXPECT_EQ(w.set(0xFFFFFFFF, C::Switch, true), TreeWriteStatus::kNoSuchEntity);
  EXPECT_EQ(w.set(1, C::Switch, true), TreeWriteStatus::kNoSuchComponent);
  EXPECT_EQ(w.set(0, static_cast<Component>(9999), true), TreeWriteStatus::kNoSuchComponent);
  EXPECT_EQ(w.set(0, C::Switch, 1.0), TreeWriteStatus::kWrongType);
  EXPECT_EQ(w.set(0, C::ColorMode, EnumValue{500}), TreeWriteStatus::kOutOfRange);
  EXPECT_EQ(w.set(1, C::Unit, true), TreeWriteStatus::kWrongType);
  EXPECT_EQ(w.set_text(0, C::Switch, "on"), TreeWriteStatus::kWrongType);
  EXPECT_EQ(w.set_text(2, C::TextList, "x"), TreeWriteStatus::kWrongType);
  EXPECT_EQ(w.set_list(1, C::Unit, std::vector<std::string>{"x"}), TreeWriteStatus::kWrongType);
  EXPECT_EQ(w.set_text(0, C::Unit, "V"), TreeWriteStatus::kNoSuchComponent);
  EXPECT_EQ(w.set_text(9, C::Unit, "V"), TreeWriteStatus::kNoSuchEntity);
  EXPECT_EQ(to_string(TreeWriteStatus::kTooLong), "longer than the blob's capacity");
}

TEST(Tree, SettingAMarkerSucceedsAndChangesNothing) {
  Tree t(sample_schema());
  auto w = t.writer();
  EXPECT_EQ(w.set(0, C::Light, Marker{}), TreeWriteStatus::kOk);
  EXPECT_EQ(w.change_seq(0), 0U);
  EXPECT_EQ(w.set(0, C::Light, true), TreeWriteStatus::kWrongType);
}

TEST(Tree, ReaderReportsErrorsForAnythingNotInTheSchema) {
  Tree t(sample_schema());
  auto r = t.reader();
  EXPECT_FALSE(r.get(7, C::Switch));
  EXPECT_FALSE(r.get(1, C::Switch));
  EXPECT_FALSE(r.get(1, C::Unit));  // a blob is not a packed value
  EXPECT_FALSE(r.has(1, C::Switch));
  EXPECT_TRUE(r.has(1, C::Unit));
  auto out_of_range = r.read_text(7, C::Unit);
  ASSERT_FALSE(out_of_range);
  EXPECT_NE(out_of_range.error().message.find("out of range"), std::string::npos);
  auto missing = r.read_text(0, C::Unit);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("entity 0 has no Unit component"), std::string::npos)
      << missing.error().to_string();
  auto wrong = r.read_list(1, C::Unit);
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("Unit is text, not list"), std::string::npos) << wrong.error().to_string();
}

TEST(Tree, CorruptValueBitsReadAsNoValueButStayVisibleRaw) {
  Tree t(sample_schema());
  auto r = t.reader();
  const TreeColumnView* col = r.column(0, C::Switch);
  ASSERT_NE(col, nullptr);
  const_cast<std::atomic<std::uint64_t>&>(col->values[0]).store(5, std::memory_order_relaxed);  // a hostile writer
  EXPECT_FALSE(r.get(0, C::Switch));
  EXPECT_EQ(r.get_raw(0, C::Switch), 5U);
}

TEST(Tree, EntitiesBeyondTheFirstChunkLiveInTheirOwnChunks) {
  TreeSchema s;
  for (int i = 0; i < 200; ++i) {
    if (i % 2 == 0) s.entities.push_back({{{C::Integer}, {C::Text, 8}}});
    else s.entities.push_back({{{C::Switch}}});
  }
  Tree t(s);
  auto w = t.writer();
  auto r = t.reader();
  for (EntityIndex e = 0; e < 200; e += 2) {
    ASSERT_EQ(w.set(e, C::Integer, std::int64_t{e * 10}), TreeWriteStatus::kOk);
    ASSERT_EQ(w.set_text(e, C::Text, std::to_string(e)), TreeWriteStatus::kOk);
  }
  for (EntityIndex e = 0; e < 200; e += 2) {
    EXPECT_EQ(r.get(e, C::Integer), Value{std::int64_t{e * 10}}) << e;
    EXPECT_EQ(*r.read_text(e, C::Text), std::to_string(e)) << e;
    EXPECT_FALSE(r.has(e + 1, C::Integer));
  }
  ASSERT_EQ(r.chunks().size(), 4U);
  EXPECT_EQ(r.chunks()[3].occupied, (std::uint64_t{1} << 8) - 1);  // 200 = 3 * 64 + 8
  EXPECT_EQ(r.column(3, C::Integer)->presence, 0x55U);
  EXPECT_EQ(r.column(4, C::Integer), nullptr);
}

// The query engine's access pattern: AND presence words, iterate set bits, read values[slot].
TEST(Tree, ColumnViewsAnswerABitsetQuery) {
  TreeSchema s;
  double want_sum = 0;
  int want_count = 0;
  for (int i = 0; i < 150; ++i) {
    if (i % 3 == 0) s.entities.push_back({{{C::Light}, {C::Dimmer}, {C::Switch}}});
    else if (i % 3 == 1) s.entities.push_back({{{C::Dimmer}, {C::Cover}}});  // dimmable, not a light
    else s.entities.push_back({{{C::Switch}}});
  }
  Tree t(s);
  auto w = t.writer();
  for (EntityIndex e = 0; e < 150; ++e) {
    if (e % 3 != 2) {
      ASSERT_EQ(w.set(e, C::Dimmer, e / 1000.0), TreeWriteStatus::kOk);
    }
    if (e % 3 == 0) {
      want_sum += e / 1000.0;
      ++want_count;
    }
  }
  auto r = t.reader();
  double sum = 0;
  int count = 0;
  for (std::uint32_t c = 0; c < r.chunks().size(); ++c) {
    const TreeColumnView* light = r.column(c, C::Light);
    const TreeColumnView* dimmer = r.column(c, C::Dimmer);
    if (light == nullptr || dimmer == nullptr) continue;
    for (std::uint64_t m = light->presence & dimmer->presence; m != 0; m &= m - 1) {
      const int slot = std::countr_zero(m);
      sum += std::bit_cast<double>(dimmer->values[slot].load(std::memory_order_relaxed));
      ++count;
    }
  }
  EXPECT_EQ(count, want_count);
  EXPECT_DOUBLE_EQ(sum, want_sum);
}

TEST(Tree, AReaderOnAReadOnlyMappingSeesTheWritersValues) {
  const auto layout = *TreeLayout::compute(sample_schema());
  const int fd = ::memfd_create("tree-test", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(layout.size())), 0);
  void* rw = ::mmap(nullptr, layout.size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  void* ro = ::mmap(nullptr, layout.size(), PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(rw, MAP_FAILED);
  ASSERT_NE(ro, MAP_FAILED);
  ASSERT_TRUE(tree_init({static_cast<std::byte*>(rw), layout.size()}, layout));
  auto w = TreeWriter::attach({static_cast<std::byte*>(rw), layout.size()});
  auto r = TreeReader::attach({static_cast<const std::byte*>(ro), layout.size()});
  ASSERT_TRUE(w && r);
  ASSERT_EQ(w->set(0, C::Dimmer, 0.5), TreeWriteStatus::kOk);
  ASSERT_EQ(w->set_text(1, C::Unit, "lx"), TreeWriteStatus::kOk);
  ASSERT_EQ(w->set_list(2, C::TextList, std::vector<std::string>{"a", "b"}), TreeWriteStatus::kOk);
  // Every read path only loads: on a PROT_READ mapping a store would crash the test.
  EXPECT_EQ(r->get(0, C::Dimmer), Value{0.5});
  EXPECT_EQ(*r->read_text(1, C::Unit), "lx");
  EXPECT_EQ(r->read_list(2, C::TextList)->size(), 2U);
  EXPECT_EQ(r->change_seq(0), 1U);
  ::munmap(rw, layout.size());
  ::munmap(ro, layout.size());
  ::close(fd);
}

TEST(Tree, HandlesStayValidWhenMoved) {
  Tree t(sample_schema());
  auto w1 = t.writer();
  TreeWriter w = std::move(w1);
  auto r1 = t.reader();
  TreeReader r = std::move(r1);
  ASSERT_EQ(w.set(0, C::Dimmer, 0.5), TreeWriteStatus::kOk);
  ASSERT_EQ(w.set_text(1, C::Unit, "A"), TreeWriteStatus::kOk);
  EXPECT_EQ(r.get(0, C::Dimmer), Value{0.5});
  EXPECT_EQ(*r.read_text(1, C::Unit), "A");
  EXPECT_EQ(r.chunks()[0].columns.size(), t.layout.columns.size());
}

// ---- A corrupt or hostile tree ------------------------------------------------------------------

TEST(TreeValidation, ReaderRefusesABadMagicOrVersion) {
  Tree t(sample_schema());
  t.header().magic = 0x45455253;
  EXPECT_NE(t.attach_error().find("bad magic"), std::string::npos) << t.attach_error();
  EXPECT_FALSE(TreeWriter::attach(t.buffer.span()));
  t.header().magic = kTreeMagic;
  t.header().layout_version = 2;
  EXPECT_NE(t.attach_error().find("layout version 2"), std::string::npos) << t.attach_error();
}

TEST(TreeValidation, ReaderRefusesASpanSmallerThanTheTreeOrItsHeader) {
  Tree t(sample_schema());
  auto shorter = TreeReader::attach(t.buffer.span().first(t.layout.size() - 64));
  ASSERT_FALSE(shorter);
  EXPECT_NE(shorter.error().message.find("span holds only"), std::string::npos) << shorter.error().to_string();
  auto tiny = TreeReader::attach(t.buffer.span().first(100));
  ASSERT_FALSE(tiny);
  EXPECT_NE(tiny.error().message.find("cannot hold a tree header"), std::string::npos);
}

TEST(TreeValidation, ReaderRefusesOffsetsPastTheEnd) {
  Tree t(sample_schema());
  t.header().blob_area_offset = t.header().total_size + 4096;
  EXPECT_NE(t.attach_error().find("blob area"), std::string::npos) << t.attach_error();
  EXPECT_NE(t.attach_error().find("runs past the end"), std::string::npos) << t.attach_error();

  Tree u(sample_schema());
  u.header().values_size = ~std::uint64_t{0} - 7;  // offset + size would wrap around
  EXPECT_NE(u.attach_error().find("runs past the end"), std::string::npos) << u.attach_error();

  Tree v(sample_schema());
  v.header().column_dir_offset = 3;
  EXPECT_NE(v.attach_error().find("misaligned"), std::string::npos) << v.attach_error();
}

TEST(TreeValidation, ReaderRefusesOverlappingSections) {
  Tree t(sample_schema());
  t.header().change_seq_offset = t.header().column_dir_offset;  // in bounds, but on top of the directory
  EXPECT_NE(t.attach_error().find("change sequences at offset"), std::string::npos) << t.attach_error();
  EXPECT_NE(t.attach_error().find("overlaps"), std::string::npos) << t.attach_error();
}

TEST(TreeValidation, ReaderRefusesAColumnOffsetOverlappingAnother) {
  Tree t(sample_schema());
  // Columns of chunk 0, by id: Light, Switch, Dimmer, ... Switch and Dimmer both hold values.
  TreeColumn* cols = t.columns();
  ASSERT_EQ(cols[1].component, to_id(C::Switch));
  ASSERT_EQ(cols[2].component, to_id(C::Dimmer));
  cols[2].offset = cols[1].offset;
  EXPECT_NE(t.attach_error().find("overlaps another column"), std::string::npos) << t.attach_error();

  Tree u(sample_schema());
  u.columns()[0].offset = u.header().total_size - 8;  // a marker pretending to have storage
  EXPECT_NE(u.attach_error().find("overlaps another column or is misplaced"), std::string::npos) << u.attach_error();
}

TEST(TreeValidation, ReaderRefusesAChunkCountThatLies) {
  Tree t(sample_schema());
  t.header().chunk_count = 5;
  EXPECT_NE(t.attach_error().find("chunk count 5 does not match 4 entities"), std::string::npos) << t.attach_error();
  Tree u(sample_schema());
  u.header().entity_count = 65;  // now it would need two chunks
  EXPECT_NE(u.attach_error().find("does not match"), std::string::npos) << u.attach_error();
  Tree v(sample_schema());
  v.header().entity_count = kTreeMaxEntities + 64;
  EXPECT_NE(v.attach_error().find("exceeds the limit"), std::string::npos) << v.attach_error();
}

TEST(TreeValidation, ReaderRefusesLyingDirectories) {
  {
    Tree t(sample_schema());
    t.chunks()[0].column_count += 1;  // claims a column that is not there
    EXPECT_NE(t.attach_error().find("not the next ones"), std::string::npos) << t.attach_error();
  }
  {
    Tree t(sample_schema());
    t.columns()[1].presence |= std::uint64_t{1} << 40;  // slot 40 holds no entity
    EXPECT_NE(t.attach_error().find("marks slots without entities"), std::string::npos) << t.attach_error();
  }
  {
    Tree t(sample_schema());
    t.columns()[2].component = t.columns()[1].component;  // the same kind twice in a chunk
    EXPECT_NE(t.attach_error().find("duplicated or out of order"), std::string::npos) << t.attach_error();
  }
  {
    Tree t(sample_schema());
    t.columns()[2].encoding = static_cast<std::uint8_t>(Encoding::kBool);  // Dimmer is real
    EXPECT_NE(t.attach_error().find("Dimmer stored as bool, the catalogue says real"), std::string::npos)
        << t.attach_error();
  }
  {
    Tree t(sample_schema());
    t.columns()[2].encoding = 200;
    EXPECT_NE(t.attach_error().find("invalid encoding"), std::string::npos) << t.attach_error();
  }
  {
    Tree t(sample_schema());
    t.chunks()[0].occupied = ~std::uint64_t{0};
    EXPECT_NE(t.attach_error().find("occupied word"), std::string::npos) << t.attach_error();
  }
}

TEST(TreeValidation, ReaderRefusesLyingBlobDescriptors) {
  {
    Tree t(sample_schema());
    t.blob_of(1, C::Unit).capacity = kTreeMaxBlobBytes + 1;
    EXPECT_NE(t.attach_error().find("capacity 65537"), std::string::npos) << t.attach_error();
  }
  {
    Tree t(sample_schema());
    t.blob_of(1, C::Unit).capacity = 4096;  // would spill into the next blob
    EXPECT_NE(t.attach_error().find("blob"), std::string::npos) << t.attach_error();
    EXPECT_EQ(t.attach_error().find("attached"), std::string::npos);
  }
  {
    Tree t(sample_schema());
    t.blob_of(1, C::DeviceClass).data_offset = t.blob_of(1, C::Unit).data_offset;  // two blobs, one place
    EXPECT_NE(t.attach_error().find("overlaps another blob"), std::string::npos) << t.attach_error();
  }
  {
    Tree t(sample_schema());
    t.header().blob_count += 1;
    EXPECT_NE(t.attach_error().find("blob"), std::string::npos) << t.attach_error();
    EXPECT_EQ(t.attach_error().find("attached"), std::string::npos);
  }
}

// The blob is the last thing in a buffer of exactly the tree's size: an over-read by even one word
// past its capacity would be a heap-buffer-overflow under ASan.
TEST(TreeValidation, HostileBlobLengthIsRefusedNotOverRead) {
  TreeSchema s;
  s.entities.push_back({{{C::Text, 64}}});
  s.entities.push_back({{{C::TextList, 64}}});
  Tree t(s);
  ASSERT_EQ(t.blob_of(1, C::TextList).data_offset + 64, t.layout.size());
  auto w = t.writer();
  auto r = t.reader();
  ASSERT_EQ(w.set_text(0, C::Text, "hello"), TreeWriteStatus::kOk);
  for (std::uint64_t hostile : {std::uint64_t{65}, std::uint64_t{72}, std::uint64_t{1} << 40, ~std::uint64_t{0}}) {
    t.blob_of(0, C::Text).length.store(hostile, std::memory_order_relaxed);
    auto text = r.read_text(0, C::Text);
    ASSERT_FALSE(text) << hostile;
    EXPECT_NE(text.error().message.find("exceeds the blob's capacity 64"), std::string::npos)
        << text.error().to_string();
    t.blob_of(1, C::TextList).length.store(hostile, std::memory_order_relaxed);
    EXPECT_FALSE(r.read_list(1, C::TextList)) << hostile;
  }
  t.blob_of(0, C::Text).length.store(64, std::memory_order_relaxed);  // at capacity: fine
  EXPECT_EQ(r.read_text(0, C::Text)->substr(0, 5), "hello");
}

TEST(TreeValidation, HostileListContentIsRefused) {
  TreeSchema s;
  s.entities.push_back({{{C::TextList, 64}}});
  Tree t(s);
  auto w = t.writer();
  auto r = t.reader();
  ASSERT_EQ(w.set_list(0, C::TextList, std::vector<std::string>{"ok"}), TreeWriteStatus::kOk);
  TreeBlob& b = t.blob_of(0, C::TextList);
  std::byte* data = t.buffer.mem.get() + b.data_offset;
  const std::uint32_t lie = 1'000'000;  // a count no 64-byte blob can hold
  std::memcpy(data, &lie, 4);
  auto list = r.read_list(0, C::TextList);
  ASSERT_FALSE(list);
  EXPECT_NE(list.error().message.find("cannot fit"), std::string::npos) << list.error().to_string();
}

// A column from another read of the tree (a provider can rewrite it between two reads) must not
// pick a blob: blob() answers only for a text or list column whose blob this index holds.
TEST(TreeValidation, BlobLookupRefusesASmallColumnAndABlobOutsideTheIndex) {
  TreeSchema s;
  s.entities.push_back({{{C::Switch}, {C::Text, 64}}});
  Tree t(s);
  auto idx = detail::index_tree(t.buffer.mem.get(), t.layout.size(), "test");
  ASSERT_TRUE(idx) << idx.error().to_string();
  const TreeColumnView* text = idx->find(0, C::Text);
  const TreeColumnView* sw = idx->find(0, C::Switch);
  ASSERT_NE(text, nullptr);
  ASSERT_NE(sw, nullptr);
  EXPECT_NE(idx->blob(*text, 0), nullptr);
  EXPECT_EQ(idx->blob(*sw, 0), nullptr);
  TreeColumnView stray = *text;
  stray.first_blob = 1;  // one past the only blob
  EXPECT_EQ(idx->blob(stray, 0), nullptr);
  auto r = t.reader();
  EXPECT_EQ(r.blob_seq(0, C::Switch), std::nullopt);
  EXPECT_EQ(r.blob_seq(0, C::Text), 0u);
}

TEST(TreeValidation, AWriterStuckMidWriteIsReportedNotWaitedOn) {
  Tree t(sample_schema());
  auto r = t.reader();
  t.blob_of(1, C::Unit).lock.write_begin();  // and never write_end(): a dead writer
  auto text = r.read_text(1, C::Unit, 100);
  ASSERT_FALSE(text);
  EXPECT_NE(text.error().message.find("writer stuck mid-write"), std::string::npos) << text.error().to_string();
  EXPECT_TRUE(r.read_list(2, C::TextList, 100));  // other blobs are unaffected
}

// Random byte corruption of the header and directories: the reader either refuses the tree or,
// if it accepts it, every read stays inside the buffer (ASan would catch anything else).
TEST(TreeValidation, ReaderSurvivesRandomCorruptionOfHeaderAndDirectories) {
  const TreeSchema schema = sample_schema();
  Tree pristine(schema);
  const std::uint64_t meta_end = pristine.header().blob_area_offset;  // header + directories + blob descriptors
  std::mt19937_64 rng(12345);
  int refused = 0, accepted = 0;
  for (int round = 0; round < 3000; ++round) {
    Tree t(schema);
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) {
      const std::size_t at = rng() % meta_end;
      t.buffer.mem.get()[at] ^= static_cast<std::byte>(1U << (rng() % 8));
    }
    auto r = TreeReader::attach(t.buffer.span());
    if (!r) {
      ++refused;
      continue;
    }
    ++accepted;
    for (EntityIndex e = 0; e < r->entity_count(); ++e) {
      for (const TreeEntryInfo& c : r->components(e)) {
        (void)r->get(e, c.component);
        (void)r->read_text(e, c.component, 10);
        (void)r->read_list(e, c.component, 10);
      }
      (void)r->change_seq(e);
    }
  }
  EXPECT_GT(refused, 0);
  RecordProperty("accepted", accepted);
}

}  // namespace
}  // namespace floe::ipc
