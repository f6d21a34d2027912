#include "floe/sdk/records.hpp"

#include <gtest/gtest.h>

#include <cstring>

namespace floe::sdk {
namespace {

using ipc::Component;
using ipc::RequestStatus;

TEST(Records, SmallValueRequestRoundTrips) {
  auto bytes = encode_request(42, 3, Component::Dimmer, ipc::Value{0.25});
  ASSERT_TRUE(bytes);
  ASSERT_EQ(bytes->size(), sizeof(ipc::SetRequest));
  auto d = decode_request(ipc::kSetRequest, *bytes);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->id, 42u);
  EXPECT_EQ(d->entity, 3u);
  EXPECT_EQ(d->component, Component::Dimmer);
  EXPECT_EQ(std::get<ipc::Value>(d->value), ipc::Value{0.25});
}

TEST(Records, RgbAndBoolValuesDecodeToTheirTypes) {
  auto rgb = decode_request(ipc::kSetRequest, *encode_request(1, 0, Component::Color, ipc::Value{ipc::Rgb{1, 2, 3}}));
  ASSERT_TRUE(rgb);
  EXPECT_EQ(std::get<ipc::Value>(rgb->value), (ipc::Value{ipc::Rgb{1, 2, 3}}));
  auto on = decode_request(ipc::kSetRequest, *encode_request(2, 0, Component::Switch, ipc::Value{true}));
  ASSERT_TRUE(on);
  EXPECT_EQ(std::get<ipc::Value>(on->value), ipc::Value{true});
}

TEST(Records, EncodeRefusesAValueOfTheWrongType) {
  EXPECT_FALSE(encode_request(1, 0, Component::Dimmer, ipc::Value{true}));
}

TEST(Records, TextRequestRoundTrips) {
  auto bytes = encode_request(7, 0, Component::Text, std::string("hello"));
  ASSERT_TRUE(bytes);
  auto d = decode_request(ipc::kSetTextRequest, *bytes);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(std::get<std::string>(d->value), "hello");
}

TEST(Records, InvalidBitsFailWithTheRequestId) {
  ipc::SetRequest req{.request_id = 9, .entity = 0, .component = ipc::to_id(Component::Switch), .reserved = 0, .value_bits = 7};
  auto d = decode_request(ipc::kSetRequest, std::as_bytes(std::span(&req, 1)));
  ASSERT_FALSE(d);
  EXPECT_TRUE(d.error().has_id);
  EXPECT_EQ(d.error().id, 9u);
  EXPECT_EQ(d.error().status, RequestStatus::kFailed);
}

TEST(Records, UnknownComponentIsUnsupported) {
  ipc::SetRequest req{.request_id = 5, .entity = 0, .component = 60000, .reserved = 0, .value_bits = 0};
  auto d = decode_request(ipc::kSetRequest, std::as_bytes(std::span(&req, 1)));
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().status, RequestStatus::kUnsupported);
  EXPECT_EQ(d.error().id, 5u);
}

TEST(Records, TextLengthBeyondTheRecordIsRefused) {
  auto bytes = *encode_request(3, 0, Component::Text, std::string("abc"));
  bytes.pop_back();  // the header still claims 3 bytes
  auto d = decode_request(ipc::kSetTextRequest, bytes);
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().id, 3u);
  EXPECT_EQ(d.error().status, RequestStatus::kFailed);
}

TEST(Records, TextRequestForASmallComponentIsUnsupported) {
  auto bytes = *encode_request(4, 0, Component::Text, std::string("x"));
  ipc::SetRequest req;
  std::memcpy(&req, bytes.data(), sizeof req);
  req.component = ipc::to_id(Component::Dimmer);
  std::memcpy(bytes.data(), &req, sizeof req);
  auto d = decode_request(ipc::kSetTextRequest, bytes);
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().status, RequestStatus::kUnsupported);
}

TEST(Records, ShortRecordsAndUnknownTypesHaveNoId) {
  std::byte few[8]{};
  auto shortr = decode_request(ipc::kSetRequest, few);
  ASSERT_FALSE(shortr);
  EXPECT_FALSE(shortr.error().has_id);
  auto other = decode_request(ipc::kChangeRecord, few);
  ASSERT_FALSE(other);
  EXPECT_FALSE(other.error().has_id);
}

TEST(Records, ResultCarriesStatusAndTruncatedMessage) {
  auto bytes = encode_result(11, RequestStatus::kFailed, "no such light");
  auto r = ipc::read_record<ipc::RequestResult>(bytes);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->request_id, 11u);
  EXPECT_EQ(r->status, static_cast<std::uint32_t>(RequestStatus::kFailed));
  ASSERT_EQ(r->message_length, 13u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(bytes.data() + sizeof(*r)), r->message_length), "no such light");

  auto cut = encode_result(12, RequestStatus::kFailed, std::string(100, 'x'), sizeof(ipc::RequestResult) + 10);
  EXPECT_EQ(cut.size(), sizeof(ipc::RequestResult) + 10);
  EXPECT_EQ(ipc::read_record<ipc::RequestResult>(cut)->message_length, 10u);
}

}  // namespace
}  // namespace floe::sdk
