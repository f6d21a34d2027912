#include "floe/ipc/answer_parts.hpp"

#include <utility>

#include <fmt/format.h>

namespace floe::ipc {
namespace {

constexpr std::size_t varint_bytes(std::size_t n) noexcept {
  std::size_t bytes = 1;
  for (; n >= 0x80; n >>= 7) ++bytes;
  return bytes;
}

// What a packet may grow by beyond the sizes counted: the `more` flag (2 bytes) and the length
// prefixes of the body and of a watch event's result, which lengthen as the list grows (at most
// 3 bytes each below 2 MiB).
constexpr std::size_t kReserve = 16;

/// Splits the list `list_of(packet)` of `answer` (see split_answer).
template <typename ListOf>
Result<std::vector<std::string>> split_list(const proto::ClientResponse& answer, ListOf list_of, std::size_t limit,
                                            std::size_t max_total) {
  proto::ClientResponse packet = answer;
  auto items = std::move(*list_of(packet));
  list_of(packet)->Clear();

  std::vector<std::string> parts;
  std::size_t total = 0;
  auto seal = [&](proto::ClientResponse& p, bool more) -> Status {
    p.set_more(more);
    std::string bytes = p.SerializeAsString();
    if (bytes.size() > limit) {
      return logic_error("answer.split", fmt::format("a packet of {} bytes exceeds the {}-byte packet limit",
                                                     bytes.size(), limit));
    }
    total += bytes.size();
    if (total > max_total) {
      return logic_error("answer.split", fmt::format("the answer exceeds {} bytes (split over packets of {})",
                                                     max_total, limit));
    }
    parts.push_back(std::move(bytes));
    return {};
  };

  std::size_t size = packet.ByteSizeLong() + kReserve;
  for (auto& item : items) {
    const std::size_t n = item.ByteSizeLong();
    const std::size_t cost = 1 + varint_bytes(n) + n;  // tag (field numbers below 16), length, entry
    if (size + cost > limit) {
      // The packet so far goes (the first may go with its other fields alone); a new one starts.
      FLOE_TRY(seal(packet, true));
      packet.Clear();
      packet.set_id(answer.id());
      (void)list_of(packet);  // the body's kind, its list empty
      size = packet.ByteSizeLong() + kReserve;
      if (size + cost > limit) {
        return logic_error("answer.split",
                           fmt::format("one entry of the answer ({} bytes) exceeds the {}-byte packet limit", n, limit));
      }
    }
    *list_of(packet)->Add() = std::move(item);
    size += cost;
  }
  FLOE_TRY(seal(packet, false));
  return parts;
}

}  // namespace

Result<std::vector<std::string>> split_answer(const proto::ClientResponse& answer, std::size_t packet_limit,
                                              std::size_t max_total) {
  const std::size_t whole = answer.ByteSizeLong();
  if (whole <= packet_limit) return std::vector<std::string>{answer.SerializeAsString()};
  if (whole > max_total) {
    return logic_error("answer.split", fmt::format("the answer ({} bytes) exceeds the {}-byte limit of one answer",
                                                   whole, max_total));
  }
  using R = proto::ClientResponse;
  switch (answer.body_case()) {
    case R::kDevices:
      return split_list(answer, [](R& r) { return r.mutable_devices()->mutable_devices(); }, packet_limit, max_total);
    case R::kEntities:
      return split_list(answer, [](R& r) { return r.mutable_entities()->mutable_entities(); }, packet_limit,
                        max_total);
    case R::kGroups:
      return split_list(answer, [](R& r) { return r.mutable_groups()->mutable_groups(); }, packet_limit, max_total);
    case R::kQuery:
      return split_list(answer, [](R& r) { return r.mutable_query()->mutable_matches(); }, packet_limit, max_total);
    case R::kSet:
      return split_list(answer, [](R& r) { return r.mutable_set()->mutable_results(); }, packet_limit, max_total);
    case R::kWatchEvent:
      return split_list(
          answer, [](R& r) { return r.mutable_watch_event()->mutable_result()->mutable_matches(); }, packet_limit,
          max_total);
    default:
      return logic_error("answer.split", fmt::format("an answer of {} bytes has no list to split over packets of {}",
                                                     whole, packet_limit));
  }
}

Result<std::optional<proto::ClientResponse>> AnswerJoiner::add(proto::ClientResponse&& packet,
                                                               std::size_t packet_bytes) {
  if (!partial_) {
    if (!packet.more()) return std::optional<proto::ClientResponse>(std::move(packet));
    if (packet_bytes > max_total_) return logic_error("answer.join", "the answer exceeds its limit");
    partial_ = std::move(packet);
    bytes_ = packet_bytes;
    return std::optional<proto::ClientResponse>();
  }
  if (packet.id() != partial_->id() || packet.body_case() != partial_->body_case()) {
    const std::string why = fmt::format(
        "answer {} was split over packets, but the next packet is {} {} (body {} after {})",
        partial_->id(), packet.id() == partial_->id() ? "of the same id with another kind:" : "answer", packet.id(),
        static_cast<int>(packet.body_case()), static_cast<int>(partial_->body_case()));
    reset();
    return logic_error("answer.join", why);
  }
  bytes_ += packet_bytes;
  if (bytes_ > max_total_) {
    const std::string why = fmt::format("answer {} exceeds {} bytes over its packets", partial_->id(), max_total_);
    reset();
    return logic_error("answer.join", why);
  }
  const bool more = packet.more();
  partial_->MergeFrom(packet);
  if (more) return std::optional<proto::ClientResponse>();
  partial_->set_more(false);
  std::optional<proto::ClientResponse> whole = std::move(partial_);
  reset();
  return whole;
}

}  // namespace floe::ipc
