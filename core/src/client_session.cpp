// Client sessions, speaking client.proto, served by ClientLoop threads. Reads evaluate on a
// registry snapshot right here; sets go onto the device's tx ring and are answered by whoever
// completes them.
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <span>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "daemon_internal.hpp"
#include "floe/core/engine.hpp"
#include "floe/core/query_parser.hpp"
#include "floe/ipc/answer_parts.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/protocol.hpp"
#include "floe/ipc/text.hpp"

namespace floe::core::detail {
namespace {

constexpr unsigned kMaxMalformedInARow = 8;
constexpr std::size_t kMaxOutbox = 4096;
// Bytes one session may have queued (the outbox and what the loop took from it, not sent yet):
// four answers of the largest size a client may get (ipc::kMaxAnswerBytes), so a client that asks
// for big lists back to back while it reads the first is served. Counting packets alone let one
// client that stopped reading keep up to 512 MiB in floe-core (many watches of big results, each
// event up to a packet).
constexpr std::size_t kMaxQueuedBytes = 4 * ipc::kMaxAnswerBytes;
// Single sets one client may have in flight; past it the session reads no more requests until one
// is answered (back-pressure through the socket, nothing refused or lost). Also bounds how many
// answers can wait in the outbox.
constexpr std::size_t kMaxSetsInFlight = 256;

void fill_value(ipc::Component c, const ipc::Value& v, proto::Value& out) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, ipc::Marker>) out.set_marker(true);
        else if constexpr (std::is_same_v<T, bool>) out.set_boolean(x);
        else if constexpr (std::is_same_v<T, std::int64_t>) out.set_integer(x);
        else if constexpr (std::is_same_v<T, double>) out.set_real(x);
        else if constexpr (std::is_same_v<T, ipc::EnumValue>) out.set_enum_value(x.value);
        else if constexpr (std::is_same_v<T, ipc::Rgb>) out.set_rgb(x.packed());
        else if constexpr (std::is_same_v<T, ipc::Timestamp>) out.set_timestamp_us(x.time_since_epoch().count());
      },
      v);
  out.set_display(ipc::format_value(c, v));
}

void fill_list(const std::vector<std::string>& items, proto::Value& out) {
  std::string display;
  for (const auto& s : items) {
    out.mutable_list()->add_items(s);
    if (!display.empty()) display += ", ";
    display += s;
  }
  out.set_display(display);
}

bool fill_entity_value(ipc::Component c, const EntityValue& v, proto::Value& out) {
  if (const auto* small = std::get_if<ipc::Value>(&v)) {
    fill_value(c, *small, out);
  } else if (const auto* text = std::get_if<std::string>(&v)) {
    out.set_text(*text);
    out.set_display(*text);
  } else if (const auto* list = std::get_if<std::vector<std::string>>(&v)) {
    fill_list(*list, out);
  } else {
    return false;
  }
  return true;
}

void fill_result(const Query& q, const QueryResult& r, proto::QueryResult& out) {
  out.set_action(std::string(to_string(r.action)));
  out.set_count(r.count);
  if (r.number) out.set_number(*r.number);
  if (r.truth) out.set_truth(*r.truth);
  out.set_unreadable(r.unreadable);
  for (const auto& m : r.matches) {
    auto* em = out.add_matches();
    em->set_entity(m.entity_id);
    em->set_online(m.online);
    if (q.target) fill_entity_value(*q.target, m.value, *em->mutable_value());
  }
}

/// The value a client typed, in the component's encoding (the query language's literal rules).
Result<std::variant<std::uint64_t, std::string>> parse_set_value(ipc::Component c, const std::string& text) {
  const ipc::ComponentInfo* info = ipc::find_component(c);
  if (info->encoding == ipc::Encoding::kText) return std::variant<std::uint64_t, std::string>(text);
  if (info->encoding == ipc::Encoding::kList) return logic_error("set", fmt::format("{} is a list; lists cannot be set", info->name));
  if (info->encoding == ipc::Encoding::kMarker) {
    return logic_error("set", fmt::format("{} is a marker (presence only); it has no value to set", info->name));
  }
  if (text.empty() || text.size() > 256 || text.find_first_of("\n\r") != std::string::npos) {
    return logic_error("set", fmt::format("'{}' is not a value for {}", ipc::excerpt(text), info->name));
  }
  const std::string qtext = fmt::format("set {} = {}", info->name, text);
  auto parsed = parse_query_detailed(qtext);
  if (auto* err = std::get_if<ParseError>(&parsed)) {
    const std::size_t offset = std::string_view("set  = ").size() + info->name.size();
    if (err->position < offset) return logic_error("set", err->message);
    return logic_error("set", fmt::format("'{}' is not a value for {} ({}): {}", ipc::excerpt(text), info->name,
                                          ipc::to_string(info->encoding), err->message));
  }
  const Query& q = std::get<Query>(parsed);
  if (!q.set_value || !q.scopes.empty() || q.where.kind != Filter::Kind::kTrue) {
    return logic_error("set", fmt::format("'{}' is not a single value for {}", ipc::excerpt(text), info->name));
  }
  const Literal& lit = *q.set_value;
  ipc::Value v;
  switch (info->encoding) {
    case ipc::Encoding::kBool: v = std::get<bool>(lit); break;
    case ipc::Encoding::kInt64: v = std::get<std::int64_t>(lit); break;
    case ipc::Encoding::kReal: v = std::get<double>(lit); break;
    case ipc::Encoding::kTimestamp:
      v = ipc::Timestamp{std::chrono::microseconds{std::get<std::int64_t>(lit)}};
      break;
    case ipc::Encoding::kEnum: {
      auto e = ipc::enum_value(c, std::get<std::string>(lit));
      if (!e) return logic_error("set", fmt::format("'{}' is not a value of {}", ipc::excerpt(text), info->name));
      v = *e;
      break;
    }
    case ipc::Encoding::kRgb: {
      const std::string& hex = std::get<std::string>(lit);
      v = ipc::Rgb::from_packed(static_cast<std::uint32_t>(std::stoul(hex.substr(1), nullptr, 16)));
      break;
    }
    default: return logic_error("set", "unsupported encoding");
  }
  auto bits = ipc::encode(c, v);
  if (!bits) return tl::unexpected(bits.error());
  return std::variant<std::uint64_t, std::string>(*bits);
}

}  // namespace

ClientSession::ClientSession(Core& core, ipc::Channel channel, ipc::PeerCredentials peer)
    : core_(core),
      channel_(std::move(channel)),
      peer_(peer),
      requests_(core.config.limits.client_requests_per_second, core.config.limits.client_request_burst,
                std::chrono::steady_clock::now()) {}

ClientSession::~ClientSession() {
  close();
  // Nothing queues any more (close() unsubscribed the watches and dropped the answer callbacks).
  release_queued(outbox_bytes_ + sending_bytes_.load(std::memory_order_relaxed));
}

Status ClientSession::open(ClientLoop& loop) {
  loop_ = &loop;
  FLOE_TRY(channel_.set_nonblocking(true));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = this;
  if (::epoll_ctl(loop.epoll_.get(), EPOLL_CTL_ADD, channel_.fd(), &ev) != 0) return sys_error("epoll_ctl", "add a client");
  interest_ = EPOLLIN;
  hello_deadline_ = std::chrono::steady_clock::now() + core_.config.limits.client_hello_timeout;
  loop.note_deadline(hello_deadline_);
  return {};
}

void ClientSession::close() {
  if (closed_) return;
  closed_ = true;
  closing_ = true;
  // No answer callback may outlive the session: each is dropped under its pending-table stripe's
  // lock, which it runs under, so none is running once this returns.
  for (const auto& [request_id, deadline] : sets_in_flight_) (void)core_.pending.drop(request_id);
  sets_in_flight_.clear();
  // A callback whose set was already reaped (so not dropped above) may still be inside
  // set_finished; it holds finished_mu_ until it is done with this session.
  { std::lock_guard barrier(finished_mu_); }
  watches_.clear();  // unsubscribe before the outbox goes away
  if (loop_ != nullptr) (void)::epoll_ctl(loop_->epoll_.get(), EPOLL_CTL_DEL, channel_.fd(), nullptr);
  // The peer learns at once that the session is over.
  ::shutdown(channel_.fd(), SHUT_RDWR);
}

void ClientSession::enqueue(std::string bytes, std::uint64_t watch_id) {
  {
    std::lock_guard lock(outbox_mu_);
    // The seed's commit path: the thread that has the packet (a shard's, for answers and watch
    // events) writes the client's socket itself, one wakeup less than handing it to the loop.
    // Only when nothing is queued or being sent, so the order holds; a SEQPACKET send is atomic,
    // and MSG_DONTWAIT never lets a slow client stall the caller: a full socket buffer (or any
    // error) queues the packet for the loop, which sends it or notices the failure.
    if (outbox_.empty() && !flushing_ && !outbox_overflow_) {
      const ssize_t sent = ::send(channel_.fd(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (sent == static_cast<ssize_t>(bytes.size())) return;
    }
    if (!queue_locked(std::span(&bytes, 1), watch_id)) return;  // the loop was already told
  }
  loop_->schedule(*this);
}

void ClientSession::enqueue_parts(std::vector<std::string> parts, std::uint64_t watch_id) {
  {
    std::lock_guard lock(outbox_mu_);
    std::size_t first = 0;
    if (outbox_.empty() && !flushing_ && !outbox_overflow_) {
      for (; first < parts.size(); ++first) {
        const std::string& b = parts[first];
        if (::send(channel_.fd(), b.data(), b.size(), MSG_DONTWAIT | MSG_NOSIGNAL) != static_cast<ssize_t>(b.size())) {
          break;
        }
      }
      if (first == parts.size()) return;
      // The rest goes first from the outbox, and a newer event of the watch must not replace
      // an answer partly sent (the client would join parts of two events).
      if (first > 0) watch_id = 0;
    }
    if (!queue_locked(std::span(parts).subspan(first), watch_id)) return;
  }
  loop_->schedule(*this);
}

bool ClientSession::queue_locked(std::span<std::string> parts, std::uint64_t watch_id) {
  const std::size_t count = parts.size();
  std::size_t bytes = 0;
  for (const std::string& p : parts) bytes += p.size();
  const std::size_t taken = sending_bytes_.load(std::memory_order_relaxed);
  auto from = std::make_move_iterator(parts.begin());
  auto to = std::make_move_iterator(parts.end());
  if (watch_id != 0) {
    // A client that reads slowly gets the newest result of each watch, never a stale one, and
    // the outbox stays bounded by its watches (plus answers) however fast the values change.
    if (auto it = queued_event_.find(watch_id); it != queued_event_.end()) {
      const QueuedEvent old = it->second;
      std::size_t old_bytes = 0;
      for (std::size_t i = old.at; i < old.at + old.count; ++i) old_bytes += outbox_[i].size();
      const std::size_t own_after = outbox_bytes_ - old_bytes + bytes + taken;
      if (outbox_.size() - old.count + count > kMaxOutbox || own_after > kMaxQueuedBytes ||
          (bytes > old_bytes && !admit_locked(bytes - old_bytes, own_after))) {
        outbox_overflow_ = true;  // split events that grew: the outbox's bound holds for them too
        return true;
      }
      if (old_bytes > bytes) release_queued(old_bytes - bytes);
      outbox_bytes_ = outbox_bytes_ - old_bytes + bytes;
      if (old.count == count) {
        std::move(from, to, outbox_.begin() + static_cast<std::ptrdiff_t>(old.at));
      } else {
        const auto at = outbox_.begin() + static_cast<std::ptrdiff_t>(old.at);
        outbox_.insert(outbox_.erase(at, at + static_cast<std::ptrdiff_t>(old.count)), from, to);
        for (auto& [watch, queued] : queued_event_) {
          if (queued.at > old.at) queued.at = queued.at + count - old.count;
        }
        it->second.count = count;
      }
      return false;
    }
  }
  if (outbox_.size() + count > kMaxOutbox || outbox_bytes_ + bytes + taken > kMaxQueuedBytes ||
      !admit_locked(bytes, outbox_bytes_ + bytes + taken)) {
    outbox_overflow_ = true;
  } else {
    if (watch_id != 0) queued_event_[watch_id] = QueuedEvent{outbox_.size(), count};
    outbox_.insert(outbox_.end(), from, to);
    outbox_bytes_ += bytes;
  }
  return true;
}

std::size_t ClientSession::core_budget_share() const noexcept {
  return core_.config.limits.max_queued_client_bytes / std::max(1U, core_.config.max_clients);
}

bool ClientSession::admit_locked(std::size_t growth, std::size_t own_after) {
  const std::size_t before = core_.client_queued_bytes.fetch_add(growth, std::memory_order_relaxed);
  if (before + growth <= core_.config.limits.max_queued_client_bytes || own_after <= core_budget_share()) return true;
  core_.client_queued_bytes.fetch_sub(growth, std::memory_order_relaxed);
  over_core_budget_ = true;
  return false;
}

void ClientSession::release_queued(std::size_t bytes) noexcept {
  if (bytes != 0) core_.client_queued_bytes.fetch_sub(bytes, std::memory_order_relaxed);
}

void ClientSession::flush_outbox() {
  bool overflow = false;
  for (;;) {
    while (sent_ < sending_.size()) {
      const std::string& b = sending_[sent_];
      const ssize_t n = ::send(channel_.fd(), b.data(), b.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n == static_cast<ssize_t>(b.size())) {
        const std::size_t left = sending_bytes_.load(std::memory_order_relaxed);  // only this thread writes it
        const std::size_t done = std::min(left, b.size());
        sending_bytes_.store(left - done, std::memory_order_relaxed);
        release_queued(done);
        ++sent_;
        if (blocked_) blocked_since_ = std::chrono::steady_clock::now();  // reading, if slowly
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!blocked_) {  // the client is not reading: EPOLLOUT says when there is room
          blocked_ = true;
          blocked_since_ = std::chrono::steady_clock::now();
          loop_->note_deadline(blocked_since_ + core_.config.limits.client_stall_timeout);
        }
        return;
      }
      closing_ = true;  // the connection failed; flushing_ stays set: nothing more is sent directly
      return;
    }
    sending_.clear();
    release_queued(sending_bytes_.exchange(0, std::memory_order_relaxed));
    sent_ = 0;
    blocked_ = false;
    if (close_when_sent_) {
      closing_ = true;
      return;
    }
    if (final_) {
      // After a fatal error nothing else is sent: flushing_ stays set, so the outbox only fills.
      sending_.push_back(std::move(*final_));
      final_.reset();
      close_when_sent_ = true;
      continue;
    }
    if (overflow) {
      spdlog::warn("client pid {}: not reading its answers and watch events; disconnecting", peer_.pid);
      final_ = error_packet(0, proto::ERROR_CODE_LIMIT, "too many unread watch events and answers", true);
      continue;
    }
    std::lock_guard lock(outbox_mu_);
    if (outbox_.empty()) {
      if (!outbox_overflow_) {
        flushing_ = false;  // direct sends may go again
        return;
      }
      overflow = true;
      flushing_ = true;
      continue;
    }
    sending_.swap(outbox_);
    sending_bytes_.store(outbox_bytes_, std::memory_order_relaxed);
    outbox_bytes_ = 0;
    queued_event_.clear();
    flushing_ = true;  // direct sends queue behind what is being sent here
  }
}

void ClientSession::send(const proto::ClientResponse& resp) {
  // Behind whatever is queued: responses and watch events keep one order.
  deliver(resp);
  flush_outbox();
}

void ClientSession::deliver(const proto::ClientResponse& resp, std::uint64_t watch_id) {
  std::string bytes = resp.SerializeAsString();
  if (bytes.size() <= ipc::kMaxPacketBytes) return enqueue(std::move(bytes), watch_id);
  // One packet is the protocol's unit: an answer that does not fit goes over several to a client
  // that joins them, and is refused with a reason otherwise, rather than dropping the connection
  // (the client would only see it close).
  std::string why;
  if (split_answers_.load(std::memory_order_relaxed)) {
    auto parts = ipc::split_answer(resp);
    if (parts) return enqueue_parts(std::move(*parts), watch_id);
    why = fmt::format("the answer ({} bytes) cannot be sent: {}; ask for less (one device's entities, or a query)",
                      bytes.size(), parts.error().message);
  } else {
    why = fmt::format(
        "the answer ({} bytes) exceeds the {}-byte packet limit; ask for less (one device's entities, or a query), "
        "or say Hello with split_answers",
        bytes.size(), ipc::kMaxPacketBytes);
  }
  // A watch event is refused as an event of its watch carrying the reason, so the client's event
  // stream shows it (an ErrorReply matches no request the client waits for).
  proto::ClientResponse too_big;
  too_big.set_id(resp.id());
  if (resp.has_watch_event()) {
    too_big.mutable_watch_event()->set_watch_id(resp.watch_event().watch_id());
    too_big.mutable_watch_event()->set_error(why);
  } else {
    too_big.mutable_error()->set_code(proto::ERROR_CODE_LIMIT);
    too_big.mutable_error()->set_message(why);
  }
  // Logged at the 1st, 2nd, 4th, 8th, ... refusal: a watch whose big result changes often is
  // refused on every change, and one line per change would flood the log.
  const std::uint64_t refused = refused_answers_.fetch_add(1, std::memory_order_relaxed) + 1;
  if ((refused & (refused - 1)) == 0) {
    spdlog::warn("client pid {}: {} ({} refused so far)", peer_.pid, why, refused);
  }
  enqueue(too_big.SerializeAsString(), watch_id);
}

std::string ClientSession::error_packet(std::uint64_t id, proto::ErrorCode code, const std::string& message,
                                       bool fatal) {
  proto::ClientResponse resp;
  resp.set_id(id);
  resp.mutable_error()->set_code(code);
  resp.mutable_error()->set_message(message);
  resp.mutable_error()->set_fatal(fatal);
  return resp.SerializeAsString();
}

void ClientSession::send_error(std::uint64_t id, proto::ErrorCode code, const std::string& message, bool fatal) {
  if (!fatal) {
    enqueue(error_packet(id, code, message, false));
    return flush_outbox();
  }
  // The last packet: nothing is read any more, and the session closes once it is out (the outbox
  // may be what overflowed, so it is not queued there).
  if (!final_ && !close_when_sent_) final_ = error_packet(id, code, message, true);
  {
    std::lock_guard lock(outbox_mu_);
    flushing_ = true;
  }
  flush_outbox();
}

void ClientSession::track_set(std::uint64_t request_id, std::chrono::steady_clock::time_point deadline) {
  sets_in_flight_[request_id] = deadline;
  loop_->note_deadline(deadline);
}

std::chrono::steady_clock::time_point ClientSession::reap_sets() {
  {
    std::lock_guard lock(finished_mu_);
    for (std::uint64_t id : finished_sets_) sets_in_flight_.erase(id);
    finished_sets_.clear();
    awaiting_room_ = false;
  }
  const auto now = std::chrono::steady_clock::now();
  auto next = std::chrono::steady_clock::time_point::max();
  for (auto it = sets_in_flight_.begin(); it != sets_in_flight_.end();) {
    if (it->second > now) {
      next = std::min(next, it->second);
      ++it;
      continue;
    }
    // Completes it with TIMEOUT through its callback (which answers the client), unless its
    // answer won the race; either way the client has exactly one answer.
    (void)core_.pending.forget(it->first);
    it = sets_in_flight_.erase(it);
  }
  full_ = sets_in_flight_.size() >= kMaxSetsInFlight;
  if (full_) {
    std::lock_guard lock(finished_mu_);
    // Woken by set_finished when one is answered; one may already have been.
    if (finished_sets_.empty()) awaiting_room_ = true;
    else full_ = false;  // room at the next reap, which read_one does first
  }
  return next;
}

std::chrono::steady_clock::time_point ClientSession::on_deadline(std::chrono::steady_clock::time_point now) {
  auto next = reap_sets();
  if (!welcomed_ && !closing_ && !final_) {
    if (now < hello_deadline_) {
      next = std::min(next, hello_deadline_);
    } else {
      const auto ms = core_.config.limits.client_hello_timeout.count();
      spdlog::warn("client pid {} uid {}: no Hello within {} ms (limits.client_hello_timeout_ms); disconnecting",
                   peer_.pid, peer_.uid, ms);
      send_error(0, proto::ERROR_CODE_TIMEOUT,
                 fmt::format("no Hello within {} ms of connecting (limits.client_hello_timeout_ms)", ms), true);
      return next;
    }
  }
  if (!blocked_ || closing_) return next;
  const auto stall_end = blocked_since_ + core_.config.limits.client_stall_timeout;
  if (now < stall_end) return std::min(next, stall_end);
  // Its socket is full, so it cannot be told why; the log says it.
  spdlog::warn("client pid {} uid {}: has not read from its socket for {} ms (limits.client_stall_timeout_ms); "
               "disconnecting",
               peer_.pid, peer_.uid, core_.config.limits.client_stall_timeout.count());
  closing_ = true;
  return next;
}

void ClientSession::update_interest() {
  if (closing_) return;
  std::uint32_t want = 0;
  if (!blocked_ && !full_ && !final_ && !close_when_sent_) want |= EPOLLIN;
  if (blocked_) want |= EPOLLOUT;
  if (want == interest_) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.ptr = this;
  if (::epoll_ctl(loop_->epoll_.get(), EPOLL_CTL_MOD, channel_.fd(), &ev) != 0) {
    spdlog::warn("client pid {}: epoll_ctl: {}; closing the session", peer_.pid, std::strerror(errno));
    closing_ = true;
    return;
  }
  interest_ = want;
}

bool ClientSession::evicted_over_core_budget() {
  {
    std::lock_guard lock(outbox_mu_);
    if (!over_core_budget_) return false;
  }
  // Unlike a session over its own bound, this one does not wait until its client has read what is
  // queued: the memory is needed now. Its client is told if its socket has room, which it seldom has.
  spdlog::warn("client pid {} uid {}: would hold more than its share ({} bytes) of what floe-core keeps for clients "
               "that do not read, and that is full (limits.max_queued_client_bytes {}); disconnecting",
               peer_.pid, peer_.uid, core_budget_share(), core_.config.limits.max_queued_client_bytes);
  const std::string last = error_packet(0, proto::ERROR_CODE_LIMIT,
                                        "floe-core's room for the unread answers of all clients is full "
                                        "(limits.max_queued_client_bytes) and this client would hold more than its share",
                                        true);
  // Not between the packets of an answer it is being sent (its client would see a broken answer).
  if (sent_ == sending_.size()) (void)::send(channel_.fd(), last.data(), last.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  closing_ = true;
  return true;
}

void ClientSession::on_scheduled() {
  if (closing_ || evicted_over_core_budget()) return;
  if (!blocked_) flush_outbox();  // blocked: EPOLLOUT flushes, this packet included
  if (full_) (void)reap_sets();
  update_interest();
}

void ClientSession::on_events(std::uint32_t events) {
  if (closing_ || evicted_over_core_budget()) return;
  if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) != 0) flush_outbox();  // no EPOLLIN is asked while blocked_
  if ((events & EPOLLIN) != 0 && !closing_) {
    read_one();
  } else if ((events & (EPOLLERR | EPOLLHUP)) != 0) {
    closing_ = true;  // gone, or shut down both ways: no answer can reach it
  }
  update_interest();
}

void ClientSession::read_one() {
  if (blocked_ || final_ || close_when_sent_) return;  // update_interest stops the reading
  loop_->note_deadline(reap_sets());
  if (full_) return;
  auto packet = channel_.receive();
  if (!packet) {
    if (packet.error().code == EAGAIN || packet.error().code == EWOULDBLOCK) return;
    if (packet.error().code != ECONNRESET) spdlog::debug("client pid {}: {}", peer_.pid, packet.error().to_string());
    closing_ = true;
    return;
  }
  proto::ClientRequest req;
  if (!packet->fds.empty() || !req.ParseFromArray(packet->bytes.data(), static_cast<int>(packet->bytes.size())) ||
      req.body_case() == proto::ClientRequest::BODY_NOT_SET) {
    ++malformed_in_a_row_;
    const bool fatal = malformed_in_a_row_ >= kMaxMalformedInARow;
    send_error(req.id(), proto::ERROR_CODE_MALFORMED,
               !packet->fds.empty() ? "clients do not send file descriptors"
               : fatal              ? "too many malformed requests in a row; closing"
                                    : "the packet is not a floe.proto.ClientRequest with a body",
               fatal);
    return;
  }
  malformed_in_a_row_ = 0;
  if (within_limits(req, packet->bytes.size())) handle(req);
}

bool ClientSession::within_limits(const proto::ClientRequest& req, std::size_t bytes) {
  const Limits& limits = core_.config.limits;
  if (bytes > limits.max_request_bytes) {
    const std::string msg =
        fmt::format("a request of {} bytes exceeds limits.max_request_bytes = {}", bytes, limits.max_request_bytes);
    spdlog::warn("client pid {} uid {}: {}", peer_.pid, peer_.uid, msg);
    send_error(req.id(), proto::ERROR_CODE_LIMIT, msg);
    return false;
  }
  if (requests_.try_take(std::chrono::steady_clock::now())) {
    if (refused_in_a_row_ != 0) {
      spdlog::info("client pid {} uid {}: back under the request rate after {} refused requests", peer_.pid, peer_.uid,
                   refused_in_a_row_);
      refused_in_a_row_ = 0;
    }
    return true;
  }
  // Refused, not queued: a client flooding requests gets an answer to each at the cost of a send.
  const std::string msg = fmt::format(
      "more than {} requests per second (limits.client_requests_per_second, burst limits.client_request_burst = {}); "
      "request refused, retry later",
      limits.client_requests_per_second, limits.client_request_burst);
  if (refused_in_a_row_++ == 0) spdlog::warn("client pid {} uid {}: {}", peer_.pid, peer_.uid, msg);
  send_error(req.id(), proto::ERROR_CODE_LIMIT, msg);
  return false;
}

void ClientSession::handle(const proto::ClientRequest& req) {
  const std::uint64_t id = req.id();
  if (!welcomed_) {
    if (!req.has_hello()) return send_error(id, proto::ERROR_CODE_MALFORMED, "the first request must be Hello", true);
    if (req.hello().protocol_version() != ipc::kProtocolVersion) {
      return send_error(id, proto::ERROR_CODE_PROTOCOL_VERSION,
                        fmt::format("client speaks protocol {}, core speaks {}", req.hello().protocol_version(),
                                    ipc::kProtocolVersion),
                        true);
    }
    welcomed_ = true;
    split_answers_.store(req.hello().split_answers(), std::memory_order_relaxed);
    proto::ClientResponse resp;
    resp.set_id(id);
    resp.mutable_welcome()->set_protocol_version(ipc::kProtocolVersion);
    resp.mutable_welcome()->set_core_name("floe-core");
    resp.mutable_welcome()->set_session_id(core_.next_session_id.fetch_add(1, std::memory_order_relaxed));
    return send(resp);
  }
  proto::ClientResponse resp;
  resp.set_id(id);
  switch (req.body_case()) {
    case proto::ClientRequest::kHello:
      return send_error(id, proto::ERROR_CODE_MALFORMED, "Hello was already sent");
    case proto::ClientRequest::kListDevices: {
      std::map<std::string, std::string> names;
      {
        std::lock_guard lock(core_.meta_mu);
        for (const auto& [k, m] : core_.meta) names[k] = m.name;
      }
      auto snap = core_.registry.snapshot();
      auto* list = resp.mutable_devices();
      for (const auto& d : snap->devices()) {
        auto* info = list->add_devices();
        info->set_name(d.name);
        info->set_id(d.name);
        info->set_display_name(names.contains(d.name) ? names[d.name] : d.name);
        info->set_provider(d.data->provider);
        info->set_online(d.online);
        info->set_entity_count(d.entity_count());
        for (GroupId g : d.groups) {
          if (const GroupRecord* gr = snap->group(g)) info->add_groups(gr->name);
        }
      }
      return send(resp);
    }
    case proto::ClientRequest::kListEntities: {
      auto snap = core_.registry.snapshot();
      const std::string& only = req.list_entities().device();
      if (!only.empty() && snap->device(only) == nullptr) {
        return send_error(id, proto::ERROR_CODE_NOT_FOUND, fmt::format("unknown device '{}'", ipc::excerpt(only)));
      }
      auto* list = resp.mutable_entities();
      for (const auto& d : snap->devices()) {
        if (!only.empty() && d.name != only) continue;
        for (std::uint32_t e = 0; e < d.entity_count(); ++e) {
          auto* info = list->add_entities();
          info->set_id(d.data->entity_ids[e]);
          info->set_name(d.data->entity_names[e]);
          info->set_device(d.name);
          info->set_online(d.online);
          for (const auto& c : d.reader().components(e)) {
            const auto name = ipc::component_name(c.component);
            info->add_components(name.empty() ? fmt::format("#{}", ipc::to_id(c.component)) : std::string(name));
          }
        }
      }
      return send(resp);
    }
    case proto::ClientRequest::kGet: {
      const auto& g = req.get();
      auto snap = core_.registry.snapshot();
      auto ref = snap->entity(g.entity());
      if (!ref) return send_error(id, proto::ERROR_CODE_NOT_FOUND, fmt::format("unknown entity '{}'", ipc::excerpt(g.entity())));
      const ipc::ComponentInfo* info = ipc::find_component(g.component());
      if (info == nullptr) return send_error(id, proto::ERROR_CODE_NOT_FOUND, fmt::format("unknown component '{}'", ipc::excerpt(g.component())));
      const DeviceRecord* dev = snap->device(ref->device);
      const ipc::TreeReader& reader = dev->reader();
      if (!reader.has(ref->entity, info->id)) {
        return send_error(id, proto::ERROR_CODE_NOT_FOUND,
                          fmt::format("entity '{}' has no component {}", g.entity(), info->name));
      }
      auto* ev = resp.mutable_value();
      ev->set_entity(g.entity());
      ev->set_online(dev->online);
      if (info->encoding == ipc::Encoding::kText) {
        auto t = reader.read_text(ref->entity, info->id);
        if (!t) return send_error(id, proto::ERROR_CODE_INTERNAL, t.error().to_string());
        ev->mutable_value()->set_text(*t);
        ev->mutable_value()->set_display(*t);
      } else if (info->encoding == ipc::Encoding::kList) {
        auto l = reader.read_list(ref->entity, info->id);
        if (!l) return send_error(id, proto::ERROR_CODE_INTERNAL, l.error().to_string());
        fill_list(*l, *ev->mutable_value());
      } else {
        auto v = reader.get(ref->entity, info->id);
        if (!v) {
          return send_error(id, proto::ERROR_CODE_INTERNAL,
                            fmt::format("entity '{}': the provider stored an invalid {} value", g.entity(), info->name));
        }
        fill_value(info->id, *v, *ev->mutable_value());
      }
      return send(resp);
    }
    case proto::ClientRequest::kSet: return on_set(req);
    case proto::ClientRequest::kQuery: return on_query(req);
    case proto::ClientRequest::kWatch: return on_watch(req);
    case proto::ClientRequest::kUnwatch: {
      auto it = watches_.find(req.unwatch().watch_id());
      if (it == watches_.end()) {
        return send_error(id, proto::ERROR_CODE_NOT_FOUND, fmt::format("no watch {}", req.unwatch().watch_id()));
      }
      watches_.erase(it);
      resp.mutable_ok();
      return send(resp);
    }
    case proto::ClientRequest::kListGroups: {
      auto snap = core_.registry.snapshot();
      for (const auto& g : snap->groups()) {
        auto* gi = resp.mutable_groups()->add_groups();
        gi->set_name(g.name);
        for (DeviceId d : g.devices) {
          if (const DeviceRecord* rec = snap->device(d)) gi->add_devices(rec->name);
        }
      }
      return send(resp);
    }
    case proto::ClientRequest::kEditGroup: return on_edit_group(req);
    default: return send_error(id, proto::ERROR_CODE_MALFORMED, "unknown request");
  }
}

void ClientSession::on_set(const proto::ClientRequest& req) {
  const auto& s = req.set();
  const std::uint64_t id = req.id();
  auto snap = core_.registry.snapshot();
  auto ref = snap->entity(s.entity());
  if (!ref) return send_error(id, proto::ERROR_CODE_NOT_FOUND, fmt::format("unknown entity '{}'", ipc::excerpt(s.entity())));
  const ipc::ComponentInfo* info = ipc::find_component(s.component());
  if (info == nullptr) return send_error(id, proto::ERROR_CODE_NOT_FOUND, fmt::format("unknown component '{}'", ipc::excerpt(s.component())));
  const DeviceRecord* dev = snap->device(ref->device);
  if (!dev->reader().has(ref->entity, info->id)) {
    return send_error(id, proto::ERROR_CODE_NOT_FOUND, fmt::format("entity '{}' has no component {}", s.entity(), info->name));
  }
  auto value = parse_set_value(info->id, s.value());
  if (!value) return send_error(id, proto::ERROR_CODE_BAD_VALUE, value.error().message);
  if (!dev->online) {
    return send_error(id, proto::ERROR_CODE_OFFLINE, fmt::format("device '{}' of entity '{}' is offline", dev->name, s.entity()));
  }
  SetTask t{.device = ref->device, .request_id = core_.next_request_id.fetch_add(1, std::memory_order_relaxed),
            .entity = ref->entity, .component = info->id, .text = false, .bits = 0, .text_value = {}};
  if (auto* bits = std::get_if<std::uint64_t>(&*value)) {
    t.bits = *bits;
  } else {
    t.text = true;
    t.text_value = std::get<std::string>(*value);
  }
  const auto timeout = s.timeout_ms() != 0 ? std::chrono::milliseconds(s.timeout_ms()) : core_.config.request_timeout;
  // Asynchronous: the session goes on reading requests, and whoever completes the set (the shard
  // that reads the provider's answer, or reap_sets at the deadline) answers the client itself.
  // In flight before submit, which may complete it at once (an offline device).
  track_set(t.request_id, std::chrono::steady_clock::now() + timeout);
  core_.pending.add(t.request_id, t.device,
                    [this, id, request_id = t.request_id, entity = s.entity(), component = info->name,
                     timeout](Outcome&& o) { answer_set(id, request_id, entity, component, timeout, std::move(o)); });
  core_.shard_of(t.device).submit(t);
}

void ClientSession::answer_set(std::uint64_t client_id, std::uint64_t request_id, const std::string& entity,
                               std::string_view component, std::chrono::milliseconds timeout, Outcome&& outcome) {
  proto::ClientResponse resp;
  resp.set_id(client_id);
  if (outcome.ok()) {
    auto* r = resp.mutable_set()->add_results();
    r->set_entity(entity);
    r->set_ok(true);
  } else {
    resp.mutable_error()->set_code(outcome.code);
    resp.mutable_error()->set_message(
        outcome.code == proto::ERROR_CODE_TIMEOUT
            ? fmt::format("set {} {}: the provider did not answer within {} ms", entity, component, timeout.count())
            : fmt::format("set {} {}: {}", entity, component, outcome.message));
  }
  enqueue(resp.SerializeAsString());
  set_finished(request_id);
}

void ClientSession::set_finished(std::uint64_t request_id) {
  // Everything under finished_mu_: once the id is in finished_sets_, the loop may reap it and then
  // close the session, and close() no longer waits for this request's stripe, only for this lock.
  std::lock_guard lock(finished_mu_);
  finished_sets_.push_back(request_id);
  if (std::exchange(awaiting_room_, false)) loop_->schedule(*this);
}

void ClientSession::on_query(const proto::ClientRequest& req) {
  const std::uint64_t id = req.id();
  auto q = parse_query(req.query().text());
  if (!q) return send_error(id, proto::ERROR_CODE_BAD_QUERY, q.error().message);
  // A set reports every entity it matched: one on an offline device is listed as OFFLINE rather
  // than left out, so the client knows what was not reached.
  struct MultiSet {
    std::mutex mu;  // completions come from several threads (the pending table's stripes)
    proto::ClientResponse resp;
    std::vector<std::string> entity_ids;
    std::vector<Outcome> outcomes;
    std::size_t left = 0;
    void answer() {
      auto* results = resp.mutable_set();
      for (std::size_t j = 0; j < outcomes.size(); ++j) {
        auto* r = results->add_results();
        r->set_entity(entity_ids[j]);
        r->set_ok(outcomes[j].ok());
        r->set_message(outcomes[j].message);
        if (!outcomes[j].ok()) r->set_code(outcomes[j].code);
      }
    }
  };
  auto multi = std::make_shared<MultiSet>();
  multi->resp.set_id(id);
  std::vector<SetTask> tasks;
  std::vector<std::size_t> slot_of_task;  // each task's index in multi->outcomes
  {
    auto snap = core_.registry.snapshot();
    auto r = floe::core::run(*q, *snap, BindOptions{.include_offline = q->action == Action::kSet});
    if (!r) return send_error(id, proto::ERROR_CODE_BAD_QUERY, r.error().message);
    if (q->action != Action::kSet) {
      fill_result(*q, *r, *multi->resp.mutable_query());
      return send(multi->resp);
    }
    if (!r->set_value) return send_error(id, proto::ERROR_CODE_BAD_QUERY, "set without a value");
    for (const auto& m : r->matches) {
      multi->entity_ids.push_back(m.entity_id);
      if (!m.online) {
        const DeviceRecord* dev = snap->device(m.entity.device);
        multi->outcomes.push_back(
            {proto::ERROR_CODE_OFFLINE, fmt::format("device '{}' is offline", dev != nullptr ? dev->name : "?")});
        continue;
      }
      multi->outcomes.emplace_back();
      slot_of_task.push_back(multi->outcomes.size() - 1);
      SetTask t{.device = m.entity.device, .request_id = core_.next_request_id.fetch_add(1, std::memory_order_relaxed),
                .entity = m.entity.entity, .component = r->set_value->component, .text = false, .bits = 0,
                .text_value = {}};
      if (const auto* bits = std::get_if<std::uint64_t>(&r->set_value->value)) {
        t.bits = *bits;
      } else {
        t.text = true;
        t.text_value = std::get<std::string>(r->set_value->value);
      }
      tasks.push_back(std::move(t));
    }
  }  // the snapshot guard is released before submitting
  if (tasks.empty()) {
    multi->answer();
    return send(multi->resp);
  }
  // Asynchronous, like a single set: every entity's request is in flight on its own (reap_sets
  // times each out), the session goes on reading requests, and whichever thread completes the
  // last one answers the client with all the outcomes.
  multi->left = tasks.size();
  const auto timeout = core_.config.request_timeout;
  // All in flight before the first submit, which may complete at once (an offline device).
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (const SetTask& t : tasks) track_set(t.request_id, deadline);
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    core_.pending.add(tasks[i].request_id, tasks[i].device,
                      [this, multi, slot = slot_of_task[i], request_id = tasks[i].request_id, timeout](Outcome&& o) {
                        if (o.code == proto::ERROR_CODE_TIMEOUT) {
                          o.message = fmt::format("the provider did not answer within {} ms", timeout.count());
                        }
                        bool last = false;
                        {
                          std::lock_guard lock(multi->mu);
                          multi->outcomes[slot] = std::move(o);
                          last = --multi->left == 0;
                        }
                        if (last) {
                          multi->answer();
                          deliver(multi->resp);
                        }
                        set_finished(request_id);
                      });
    core_.shard_of(tasks[i].device).submit(tasks[i]);
  }
}

void ClientSession::on_watch(const proto::ClientRequest& req) {
  const std::uint64_t id = req.id();
  auto q = parse_query(req.watch().text());
  if (!q) return send_error(id, proto::ERROR_CODE_BAD_QUERY, q.error().message);
  if (q->action == Action::kSet) return send_error(id, proto::ERROR_CODE_BAD_QUERY, "a set query cannot be watched");
  if (watches_.size() >= core_.config.limits.max_watches_per_client) {
    const std::string msg = fmt::format("this session already holds {} watches (limits.max_watches_per_client = {})",
                                        watches_.size(), core_.config.limits.max_watches_per_client);
    spdlog::warn("client pid {} uid {}: watch refused: {}", peer_.pid, peer_.uid, msg);
    return send_error(id, proto::ERROR_CODE_LIMIT, msg);
  }
  const std::uint64_t watch_id = next_watch_id_++;
  proto::ClientResponse started;
  started.set_id(id);
  started.mutable_watch_started()->set_watch_id(watch_id);
  {
    // Events of the new watch may arrive (on a shard's thread) before subscribe returns: they
    // queue behind WatchStarted until flush_outbox below sends them in order.
    std::lock_guard lock(outbox_mu_);
    flushing_ = true;
  }
  const std::string started_bytes = started.SerializeAsString();
  enqueue(started_bytes);
  auto handle = core_.hub.subscribe(*q, [this, id, watch_id, query = *q](const Result<QueryResult>& r) {
    proto::ClientResponse ev;
    ev.set_id(id);
    auto* we = ev.mutable_watch_event();
    we->set_watch_id(watch_id);
    if (r) {
      fill_result(query, *r, *we->mutable_result());
    } else {
      we->set_error(r.error().message);
    }
    deliver(ev, watch_id);
  });
  if (!handle) {
    {
      std::lock_guard lock(outbox_mu_);
      auto it = std::find(outbox_.begin(), outbox_.end(), started_bytes);  // drop the WatchStarted
      if (it != outbox_.end()) {
        const auto at = static_cast<std::size_t>(it - outbox_.begin());
        outbox_bytes_ -= it->size();
        release_queued(it->size());
        outbox_.erase(it);
        for (auto& [watch, queued] : queued_event_) queued.at -= queued.at > at ? 1 : 0;
      }
    }
    flush_outbox();
    return send_error(id, proto::ERROR_CODE_BAD_QUERY, handle.error().message);
  }
  watches_.emplace(watch_id, std::move(*handle));
  flush_outbox();
}

void ClientSession::on_edit_group(const proto::ClientRequest& req) {
  const std::uint64_t id = req.id();
  const auto& e = req.edit_group();
  std::lock_guard lock(core_.meta_mu);
  auto snap = core_.registry.snapshot();
  const DeviceRecord* dev = snap->device(e.device());
  if (dev == nullptr) return send_error(id, proto::ERROR_CODE_NOT_FOUND, fmt::format("unknown device '{}'", ipc::excerpt(e.device())));
  const GroupRecord* group = snap->group(e.group());
  Status r;
  if (e.remove()) {
    if (group == nullptr) return send_error(id, proto::ERROR_CODE_NOT_FOUND, fmt::format("unknown group '{}'", ipc::excerpt(e.group())));
    r = core_.registry.edit([&](Registry::Editor& ed) -> Status {
      FLOE_TRY(ed.remove_from_group(group->id, dev->id));
      // An empty group is gone. Counted in the edit, not the snapshot, which may be older.
      if (ed.member_count(group->id) == 0) FLOE_TRY(ed.delete_group(group->id));
      return {};
    });
  } else {
    if (e.group().empty() || e.group().size() > 64 || is_query_keyword(e.group())) {
      return send_error(id, proto::ERROR_CODE_BAD_VALUE, fmt::format("'{}' is not a usable group name", ipc::excerpt(e.group())));
    }
    r = core_.registry.edit([&](Registry::Editor& ed) -> Status {
      // Looked up in the edit, not the snapshot, which may be older (then creating it would fail).
      std::optional<GroupId> g = ed.find_group(e.group());
      if (!g) {
        auto created = ed.create_group(e.group());
        if (!created) return tl::unexpected(created.error());
        g = *created;
      }
      return ed.add_to_group(*g, dev->id);
    });
  }
  if (!r) return send_error(id, proto::ERROR_CODE_BAD_VALUE, r.error().message);
  core_.save_state_locked();
  core_.hub.flush();
  proto::ClientResponse resp;
  resp.set_id(id);
  resp.mutable_ok();
  send(resp);
}

}  // namespace floe::core::detail
