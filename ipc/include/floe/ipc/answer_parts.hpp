// Answers on the client socket larger than one packet (client.proto, ClientResponse.more): the
// core splits an answer's list over several packets, the client joins them back.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "client.pb.h"
#include "floe/ipc/channel.hpp"
#include "floe/ipc/result.hpp"

namespace floe::ipc {

/// Most bytes one answer may total over all its packets (256 packets of 64 KiB).
inline constexpr std::size_t kMaxAnswerBytes = std::size_t{16} << 20;

/// `answer` as packets of at most `packet_limit` bytes: a single packet if it fits. Otherwise its
/// list (devices, entities, groups, a query's or a watch event's matches, a set's results) is
/// split in order: the first packet carries every other field and the start of the list, the
/// others only the id, the body's kind and more of the list; each but the last has `more` set.
/// An error says why when the answer has no list to split, one entry alone exceeds a packet, or
/// the whole would exceed `max_total`. Any thread; `answer` is not changed.
[[nodiscard]] Result<std::vector<std::string>> split_answer(const proto::ClientResponse& answer,
                                                            std::size_t packet_limit = kMaxPacketBytes,
                                                            std::size_t max_total = kMaxAnswerBytes);

/// The client's side: joins the packets of a split answer as they arrive. One per connection;
/// not thread-safe.
class AnswerJoiner {
 public:
  explicit AnswerJoiner(std::size_t max_total = kMaxAnswerBytes) : max_total_(max_total) {}

  /// The next packet received (`packet_bytes` long). Returns the whole answer once its last
  /// packet is in (at once for an answer of one packet), nothing while more are due. An error if
  /// the packet does not continue the answer begun (another id or kind of body) or the answer
  /// grows past the limit; the joiner is then empty again.
  [[nodiscard]] Result<std::optional<proto::ClientResponse>> add(proto::ClientResponse&& packet,
                                                                 std::size_t packet_bytes);
  /// Part of an answer is in and the rest is due.
  [[nodiscard]] bool pending() const noexcept { return partial_.has_value(); }
  /// Forgets a partial answer (the connection ended).
  void reset() noexcept {
    partial_.reset();
    bytes_ = 0;
  }

 private:
  std::size_t max_total_;
  std::optional<proto::ClientResponse> partial_;
  std::size_t bytes_ = 0;
};

}  // namespace floe::ipc
