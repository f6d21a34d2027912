#include "floe/ipc/components.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <vector>

namespace floe::ipc {
namespace {

// ---- Catalogue ----------------------------------------------------------------------------------

// Ids are written into shared memory by providers built at other times: they must never move.
// If this test fails, a line of components.def was reordered, renumbered or removed.
TEST(Components, PinnedIdsNamesAndEncodingsNeverChange) {
  struct Pin {
    std::uint16_t id;
    std::string_view name;
    Encoding encoding;
  };
  const Pin pins[] = {
      {1, "Light", Encoding::kMarker},        {2, "Switch", Encoding::kBool},
      {3, "Dimmer", Encoding::kReal},         {4, "Color", Encoding::kRgb},
      {5, "ColorTemperature", Encoding::kReal}, {6, "ColorMode", Encoding::kEnum},
      {7, "Sensor", Encoding::kMarker},       {9, "Integer", Encoding::kInt64},
      {11, "Text", Encoding::kText},          {12, "Unit", Encoding::kText},
      {22, "CoverState", Encoding::kEnum},    {33, "AlarmState", Encoding::kEnum},
      {36, "Timestamp", Encoding::kTimestamp}, {39, "TextList", Encoding::kList},
      {40, "Siren", Encoding::kMarker},
  };
  for (const Pin& p : pins) {
    const ComponentInfo* info = find_component(static_cast<Component>(p.id));
    ASSERT_NE(info, nullptr) << "id " << p.id << " vanished";
    EXPECT_EQ(info->name, p.name) << "id " << p.id;
    EXPECT_EQ(info->encoding, p.encoding) << p.name;
  }
  EXPECT_EQ(to_id(Component::Dimmer), 3);
  EXPECT_EQ(to_id(Component::TextList), 39);
  // Enum value numbers are stored too: pin a few.
  EXPECT_EQ(enum_value_name(Component::CoverState, 1), "open");
  EXPECT_EQ(enum_value_name(Component::CoverState, 2), "closed");
  EXPECT_EQ(enum_value_name(Component::LockState, 1), "locked");
  EXPECT_EQ(enum_value_name(Component::ClimateMode, 0), "off");
}

TEST(Components, EveryKindTheIssueListsIsInTheCatalogue) {
  const char* required[] = {
      "Light", "Switch", "Dimmer", "Color", "ColorTemperature", "ColorMode", "Sensor", "Real", "Integer",
      "Boolean", "Text", "Unit", "DeviceClass", "SensorStateClass", "AccuracyDecimals", "Icon", "Config",
      "Diagnostic", "Position", "Tilt", "Cover", "CoverState", "Valve", "ValveState", "Volume", "Muted",
      "FanSpeed", "FanOscillation", "FanDirection", "ClimateMode", "LockState", "MediaState", "AlarmState",
      "Date", "Time", "Timestamp", "Trigger", "TextSelect", "TextList", "Siren"};
  for (const char* name : required) EXPECT_NE(find_component(name), nullptr) << name;
}

TEST(Components, IdsAndNamesAreUniqueAndIdsAreDenseFromOne) {
  std::set<std::uint16_t> ids;
  std::set<std::string_view> names;
  for (const ComponentInfo& c : kComponents) {
    EXPECT_TRUE(ids.insert(to_id(c.id)).second) << c.name;
    EXPECT_TRUE(names.insert(c.name).second) << c.name;
  }
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(*ids.begin(), 1);
  EXPECT_EQ(*ids.rbegin(), kMaxComponentId);
  EXPECT_EQ(ids.size(), kComponentCount);  // no holes (a retired kind keeps its line)
}

TEST(Components, LookupByIdAndByNameAgree) {
  for (const ComponentInfo& c : kComponents) {
    EXPECT_EQ(find_component(c.id), &c);
    EXPECT_EQ(find_component(c.name), &c);
    EXPECT_EQ(component_name(c.id), c.name);
  }
  EXPECT_EQ(find_component("colortemperature"), find_component(Component::ColorTemperature));
  EXPECT_EQ(find_component("NoSuchThing"), nullptr);
  EXPECT_EQ(find_component(static_cast<Component>(0)), nullptr);
  EXPECT_EQ(find_component(static_cast<Component>(kMaxComponentId + 1)), nullptr);
  static_assert(find_component(Component::Light)->encoding == Encoding::kMarker);
  static_assert(find_component("Dimmer")->id == Component::Dimmer);
}

TEST(Components, EnumValueNamesLookUpBothWays) {
  ASSERT_EQ(enum_value(Component::CoverState, "closing"), EnumValue{4});
  EXPECT_EQ(enum_value_name(Component::CoverState, 4), "closing");
  EXPECT_FALSE(enum_value(Component::CoverState, "ajar").has_value());
  EXPECT_EQ(enum_value_name(Component::CoverState, 999), "");
  EXPECT_EQ(enum_value_name(Component::Dimmer, 0), "");  // not an enum
  for (const ComponentInfo& c : kComponents) {
    EXPECT_EQ(c.encoding == Encoding::kEnum, !c.enum_values.empty()) << c.name;
  }
}

// ---- Encodings ----------------------------------------------------------------------------------

TEST(Encodings, EverySmallEncodingRoundTrips) {
  const Timestamp t{std::chrono::microseconds{1'771'804'800'123'456}};
  const std::vector<std::pair<Component, Value>> cases = {
      {Component::Light, Marker{}},
      {Component::Switch, true},
      {Component::Switch, false},
      {Component::Integer, std::int64_t{-42}},
      {Component::Integer, std::numeric_limits<std::int64_t>::min()},
      {Component::Dimmer, 0.25},
      {Component::Real, -1e300},
      {Component::CoverState, EnumValue{3}},
      {Component::Color, Rgb{0x12, 0xAB, 0xFF}},
      {Component::Timestamp, t},
      {Component::Timestamp, Timestamp{std::chrono::microseconds{-1}}},
  };
  for (const auto& [c, v] : cases) {
    auto bits = encode(c, v);
    ASSERT_TRUE(bits) << bits.error().to_string();
    auto back = decode(c, *bits);
    ASSERT_TRUE(back) << back.error().to_string();
    EXPECT_EQ(*back, v) << component_name(c);
  }
}

TEST(Encodings, WordsHaveTheDocumentedBits) {
  EXPECT_EQ(*encode(Component::Switch, true), 1U);
  EXPECT_EQ(*encode(Component::Integer, std::int64_t{-1}), ~std::uint64_t{0});
  EXPECT_EQ(*encode(Component::Dimmer, 1.0), 0x3FF0000000000000ULL);
  EXPECT_EQ(*encode(Component::Color, Rgb{0x11, 0x22, 0x33}), 0x00112233U);
  EXPECT_EQ(*encode(Component::LockState, EnumValue{2}), 2U);
  EXPECT_EQ(*encode(Component::Timestamp, Timestamp{std::chrono::seconds{1}}), 1'000'000U);  // microseconds
  EXPECT_EQ(*encode(Component::Light, Marker{}), 0U);
}

TEST(Encodings, NanSurvivesBitForBit) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto back = decode(Component::Real, *encode(Component::Real, nan));
  ASSERT_TRUE(back);
  EXPECT_TRUE(std::isnan(std::get<double>(*back)));
}

TEST(Encodings, EncodeRefusesAValueOfTheWrongType) {
  auto r = encode(Component::Dimmer, true);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("Dimmer holds real, not bool"), std::string::npos) << r.error().to_string();
  EXPECT_FALSE(encode(Component::Switch, 1.0));
  EXPECT_FALSE(encode(Component::Color, std::int64_t{0x112233}));
  EXPECT_FALSE(encode(Component::Light, true));
  EXPECT_FALSE(encode(Component::Timestamp, std::int64_t{5}));
}

TEST(Encodings, EncodeRefusesBlobKindsAndUnnamedEnumValues) {
  auto text = encode(Component::Unit, std::int64_t{1});
  ASSERT_FALSE(text);
  EXPECT_NE(text.error().message.find("blob"), std::string::npos) << text.error().to_string();
  auto unnamed = encode(Component::FanDirection, EnumValue{2});
  ASSERT_FALSE(unnamed);
  EXPECT_NE(unnamed.error().message.find("not one of its 2 named values"), std::string::npos)
      << unnamed.error().to_string();
  EXPECT_FALSE(encode(static_cast<Component>(999), true));
}

TEST(Encodings, DecodeRefusesBitsThatAreNotAValidEncoding) {
  auto b = decode(Component::Switch, 7);
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message.find("not a valid bool"), std::string::npos) << b.error().to_string();
  EXPECT_FALSE(decode(Component::Color, 0x01000000));
  EXPECT_FALSE(decode(Component::CoverState, 0x10000));
  EXPECT_FALSE(decode(Component::Text, 0));
  // An enum number this catalogue does not name is kept (a newer provider's value).
  auto newer = decode(Component::CoverState, 200);
  ASSERT_TRUE(newer);
  EXPECT_EQ(std::get<EnumValue>(*newer).value, 200);
}

TEST(Encodings, PackReportsWhyWithoutAllocating) {
  std::uint64_t bits = 0;
  EXPECT_EQ(pack(*find_component(Component::Dimmer), Value{0.5}, bits), PackStatus::kOk);
  EXPECT_EQ(pack(*find_component(Component::Dimmer), Value{true}, bits), PackStatus::kWrongType);
  EXPECT_EQ(pack(*find_component(Component::Text), Value{true}, bits), PackStatus::kBigKind);
  EXPECT_EQ(pack(*find_component(Component::ColorMode), Value{EnumValue{60000}}, bits), PackStatus::kOutOfRange);
  static_assert([] {
    std::uint64_t b = 0;
    return pack(*find_component(Component::Color), Value{Rgb{1, 2, 3}}, b) == PackStatus::kOk && b == 0x010203;
  }());
}

TEST(Encodings, FormatValueIsReadableForEveryKind) {
  EXPECT_EQ(format_value(Component::CoverState, EnumValue{1}), "open");
  EXPECT_EQ(format_value(Component::CoverState, EnumValue{300}), "300");
  EXPECT_EQ(format_value(Component::Color, Rgb{0xFF, 0x80, 0x00}), "#ff8000");
  EXPECT_EQ(format_value(Component::Switch, true), "true");
  EXPECT_EQ(format_value(Component::Dimmer, 0.5), "0.5");
  EXPECT_EQ(format_value(Component::Integer, std::int64_t{-7}), "-7");
  EXPECT_EQ(format_value(Component::Light, Marker{}), "present");
  EXPECT_EQ(format_value(Component::Timestamp, Timestamp{std::chrono::microseconds{1'771'804'800'000'001}}),
            "2026-02-23T00:00:00.000001Z");
  // Any 64-bit count a provider stores: years 0001-9999 as dates, the rest as the raw count.
  EXPECT_EQ(format_value(Component::Timestamp, Timestamp{std::chrono::microseconds{-62'135'596'800'000'000}}),
            "0001-01-01T00:00:00.000000Z");
  EXPECT_EQ(format_value(Component::Timestamp, Timestamp{std::chrono::microseconds{253'402'300'799'999'999}}),
            "9999-12-31T23:59:59.999999Z");
  EXPECT_EQ(format_value(Component::Timestamp, Timestamp{std::chrono::microseconds{INT64_MIN}}),
            "-9223372036854775808us since 1970");
  EXPECT_EQ(format_value(Component::Timestamp, Timestamp{std::chrono::microseconds{INT64_MAX}}),
            "9223372036854775807us since 1970");
}

// ---- List blob encoding -------------------------------------------------------------------------

TEST(ListEncoding, RoundTripsIncludingEmptyItems) {
  const std::vector<std::string> items = {"low", "", "medium", "high"};
  std::vector<std::byte> buf(encoded_list_size(items));
  EXPECT_EQ(buf.size(), 4U + 4 * 4 + 3 + 0 + 6 + 4);
  EXPECT_EQ(encode_list(items, buf), buf.size());
  auto back = decode_list(buf);
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_EQ(*back, items);
}

TEST(ListEncoding, HasTheDocumentedBytes) {
  const std::vector<std::string_view> items = {"on", "off"};
  std::vector<std::byte> buf(encoded_list_size(std::span<const std::string_view>(items)));
  encode_list(std::span<const std::string_view>(items), buf);
  const unsigned char want[] = {2, 0, 0, 0, 2, 0, 0, 0, 'o', 'n', 3, 0, 0, 0, 'o', 'f', 'f'};
  ASSERT_EQ(buf.size(), sizeof want);
  EXPECT_EQ(std::memcmp(buf.data(), want, sizeof want), 0);
}

TEST(ListEncoding, DecodeRefusesLyingCountsLengthsAndTrailingBytes) {
  const auto bytes = [](std::initializer_list<unsigned char> b) {
    std::vector<std::byte> v;
    for (unsigned char c : b) v.push_back(static_cast<std::byte>(c));
    return v;
  };
  EXPECT_FALSE(decode_list(bytes({1, 0})));                            // no room for the count
  EXPECT_FALSE(decode_list(bytes({0xFF, 0xFF, 0xFF, 0xFF, 0, 0})));    // count far beyond the bytes
  EXPECT_FALSE(decode_list(bytes({1, 0, 0, 0, 9, 0, 0, 0, 'a', 'b'})));  // item longer than what is left
  EXPECT_FALSE(decode_list(bytes({0, 0, 0, 0, 'x'})));                 // trailing garbage
  auto ok = decode_list(bytes({0, 0, 0, 0}));
  ASSERT_TRUE(ok);
  EXPECT_TRUE(ok->empty());
}

}  // namespace
}  // namespace floe::ipc
