// Answers over one packet: split_answer cuts a ClientResponse's list into packets, AnswerJoiner
// joins them back; the whole must come out exactly as it went in.
#include "floe/ipc/answer_parts.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace floe::ipc {
namespace {

proto::ClientResponse parse(const std::string& bytes) {
  proto::ClientResponse r;
  EXPECT_TRUE(r.ParseFromString(bytes));
  return r;
}

// Splits `answer` with `limit`, checks every packet's size and flag, joins them and returns the
// joined answer and how many packets it took.
std::pair<proto::ClientResponse, std::size_t> round_trip(const proto::ClientResponse& answer, std::size_t limit) {
  auto parts = split_answer(answer, limit);
  EXPECT_TRUE(parts) << parts.error().to_string();
  if (!parts) return {};
  AnswerJoiner joiner;
  std::optional<proto::ClientResponse> whole;
  for (std::size_t i = 0; i < parts->size(); ++i) {
    const std::string& bytes = (*parts)[i];
    EXPECT_LE(bytes.size(), limit) << "packet " << i;
    proto::ClientResponse p = parse(bytes);
    EXPECT_EQ(p.id(), answer.id()) << "packet " << i;
    EXPECT_EQ(p.body_case(), answer.body_case()) << "packet " << i;
    EXPECT_EQ(p.more(), i + 1 < parts->size()) << "packet " << i;
    EXPECT_FALSE(whole.has_value()) << "the answer was complete before packet " << i;
    auto got = joiner.add(std::move(p), bytes.size());
    EXPECT_TRUE(got) << got.error().to_string();
    if (got && *got) whole = std::move(**got);
  }
  EXPECT_TRUE(whole.has_value()) << "the last packet did not complete the answer";
  EXPECT_FALSE(joiner.pending());
  return {whole.value_or(proto::ClientResponse{}), parts->size()};
}

proto::ClientResponse device_list(std::size_t n) {
  proto::ClientResponse r;
  r.set_id(77);
  for (std::size_t i = 0; i < n; ++i) {
    auto* d = r.mutable_devices()->add_devices();
    d->set_name(fmt::format("kitchen-light-{}", i));
    d->set_id(d->name());
    d->set_display_name(fmt::format("Kitchen light number {}", i));
    d->set_provider("virtual-lights");
    d->set_online(i % 3 != 0);
    d->set_entity_count(static_cast<std::uint32_t>(i % 7));
    if (i % 2 == 0) d->add_groups("kitchen");
  }
  return r;
}

TEST(AnswerParts, AnAnswerThatFitsIsOnePacketAsItIs) {
  const proto::ClientResponse r = device_list(10);
  auto parts = split_answer(r);
  ASSERT_TRUE(parts) << parts.error().to_string();
  ASSERT_EQ(parts->size(), 1U);
  EXPECT_EQ((*parts)[0], r.SerializeAsString());
  EXPECT_FALSE(parse((*parts)[0]).more());
}

TEST(AnswerParts, ADeviceListOverOnePacketComesBackWhole) {
  const proto::ClientResponse r = device_list(5000);
  ASSERT_GT(r.ByteSizeLong(), kMaxPacketBytes);
  auto [whole, packets] = round_trip(r, kMaxPacketBytes);
  EXPECT_GE(packets, r.ByteSizeLong() / kMaxPacketBytes + 1);
  EXPECT_EQ(whole.SerializeAsString(), r.SerializeAsString());
}

TEST(AnswerParts, PacketsAreFilledNotMerelyUnderTheLimit) {
  const proto::ClientResponse r = device_list(5000);
  auto parts = split_answer(r, 4096);
  ASSERT_TRUE(parts);
  for (std::size_t i = 0; i + 1 < parts->size(); ++i) {
    // The next entry did not fit: each packet but the last is within one entry (and the slack
    // kept for length prefixes) of the limit.
    EXPECT_GT((*parts)[i].size(), 4096U - 200U) << "packet " << i;
  }
}

TEST(AnswerParts, EveryKindOfListSplitsAndComesBackWhole) {
  using Fill = std::function<void(proto::ClientResponse&, int)>;
  const std::vector<std::pair<std::string, Fill>> kinds = {
      {"entities",
       [](proto::ClientResponse& r, int i) {
         auto* e = r.mutable_entities()->add_entities();
         e->set_id(fmt::format("light_{}", i));
         e->set_device(fmt::format("dev-{}", i));
         e->add_components("Switch");
         e->add_components("Dimmer");
       }},
      {"groups",
       [](proto::ClientResponse& r, int i) {
         auto* g = r.mutable_groups()->add_groups();
         g->set_name(fmt::format("group-{}", i));
         g->add_devices(fmt::format("dev-{}", i));
       }},
      {"query matches",
       [](proto::ClientResponse& r, int i) {
         auto* q = r.mutable_query();
         q->set_action("list");
         q->set_count(static_cast<std::uint64_t>(i + 1));
         q->set_unreadable(3);
         auto* m = q->add_matches();
         m->set_entity(fmt::format("light_{}", i));
         m->set_online(true);
         m->mutable_value()->set_display(fmt::format("{}%", i % 100));
       }},
      {"set results",
       [](proto::ClientResponse& r, int i) {
         auto* s = r.mutable_set()->add_results();
         s->set_entity(fmt::format("light_{}", i));
         s->set_ok(i % 5 != 0);
         if (i % 5 == 0) {
           s->set_message("the device is offline");
           s->set_code(proto::ERROR_CODE_OFFLINE);
         }
       }},
      {"watch event matches",
       [](proto::ClientResponse& r, int i) {
         auto* w = r.mutable_watch_event();
         w->set_watch_id(12);
         w->mutable_result()->set_action("list");
         w->mutable_result()->set_number(2.5);
         w->mutable_result()->set_count(static_cast<std::uint64_t>(i + 1));
         w->mutable_result()->add_matches()->set_entity(fmt::format("light_{}", i));
       }},
  };
  for (const auto& [what, fill] : kinds) {
    proto::ClientResponse r;
    r.set_id(9);
    for (int i = 0; i < 3000; ++i) fill(r, i);
    auto [whole, packets] = round_trip(r, 2048);
    EXPECT_GT(packets, 5U) << what;
    EXPECT_EQ(whole.SerializeAsString(), r.SerializeAsString()) << what;
  }
}

TEST(AnswerParts, OneEntryOverAPacketIsRefusedWithAReason) {
  proto::ClientResponse r;
  r.set_id(1);
  r.mutable_groups()->add_groups()->set_name("small");
  auto* big = r.mutable_groups()->add_groups();
  big->set_name("everything");
  for (int i = 0; i < 200; ++i) big->add_devices(fmt::format("device-with-a-long-name-{}", i));
  auto parts = split_answer(r, 1024);
  ASSERT_FALSE(parts);
  EXPECT_NE(parts.error().message.find("one entry of the answer"), std::string::npos) << parts.error().message;
}

TEST(AnswerParts, AnAnswerWithoutAListOverOnePacketIsRefused) {
  proto::ClientResponse r;
  r.set_id(1);
  r.mutable_value()->set_entity("note");
  r.mutable_value()->mutable_value()->set_display(std::string(5000, 'x'));
  auto parts = split_answer(r, 1024);
  ASSERT_FALSE(parts);
  EXPECT_NE(parts.error().message.find("no list to split"), std::string::npos) << parts.error().message;
}

TEST(AnswerParts, AnAnswerOverTheTotalLimitIsRefused) {
  const proto::ClientResponse r = device_list(5000);
  auto parts = split_answer(r, 4096, 64 * 1024);
  ASSERT_FALSE(parts);
  EXPECT_NE(parts.error().message.find("limit of one answer"), std::string::npos) << parts.error().message;
}

TEST(AnswerParts, TheJoinerRefusesAPacketOfAnotherAnswerMidway) {
  auto parts = split_answer(device_list(500), 2048);
  ASSERT_TRUE(parts);
  ASSERT_GT(parts->size(), 2U);
  AnswerJoiner joiner;
  auto first = joiner.add(parse((*parts)[0]), (*parts)[0].size());
  ASSERT_TRUE(first && !*first);
  EXPECT_TRUE(joiner.pending());
  proto::ClientResponse event;
  event.set_id(3);
  event.mutable_watch_event()->set_watch_id(1);
  auto bad = joiner.add(std::move(event), 10);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("answer 77 was split"), std::string::npos) << bad.error().message;
  EXPECT_FALSE(joiner.pending()) << "a refused answer is forgotten";
  // The same id with another kind of body is not a continuation either.
  ASSERT_TRUE(joiner.add(parse((*parts)[0]), (*parts)[0].size()));
  proto::ClientResponse other;
  other.set_id(77);
  other.mutable_groups();
  EXPECT_FALSE(joiner.add(std::move(other), 4));
}

TEST(AnswerParts, TheJoinerBoundsWhatItHolds) {
  auto parts = split_answer(device_list(500), 2048);
  ASSERT_TRUE(parts);
  AnswerJoiner joiner(8192);
  Result<std::optional<proto::ClientResponse>> last;
  std::size_t fed = 0;
  for (const auto& bytes : *parts) {
    last = joiner.add(parse(bytes), bytes.size());
    ++fed;
    if (!last) break;
  }
  ASSERT_FALSE(last);
  EXPECT_LE(fed, 5U);
  EXPECT_NE(last.error().message.find("exceeds 8192 bytes"), std::string::npos) << last.error().message;
}

TEST(AnswerParts, ALonePacketWithoutMoreIsItsOwnAnswer) {
  AnswerJoiner joiner;
  proto::ClientResponse ok;
  ok.set_id(5);
  ok.mutable_ok();
  auto got = joiner.add(proto::ClientResponse(ok), 4);
  ASSERT_TRUE(got && *got);
  EXPECT_EQ((*got)->SerializeAsString(), ok.SerializeAsString());
}

}  // namespace
}  // namespace floe::ipc
