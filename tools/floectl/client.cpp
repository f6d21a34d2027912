#include "client.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "floe/ipc/answer_parts.hpp"

namespace floe::client {
namespace {

tl::unexpected<ClientError> fail(ExitCode code, std::string message) {
  return tl::unexpected(ClientError{code, std::move(message)});
}

// The connection ended without a verdict from the core.
tl::unexpected<ClientError> lost(std::string message) {
  return tl::unexpected(ClientError{ExitCode::kGeneric, std::move(message), /*connection_lost=*/true});
}

// The core answers a provider's slow request itself (ERROR_CODE_TIMEOUT) after the timeout the
// request carries; the client waits a little longer so that verdict, not a silent local timeout,
// is what the user sees.
constexpr std::chrono::milliseconds kCoreVerdictGrace{1000};

}  // namespace

ExitCode exit_code_for(proto::ErrorCode code) noexcept {
  switch (code) {
    case proto::ERROR_CODE_NOT_FOUND: return ExitCode::kNotFound;
    case proto::ERROR_CODE_BAD_VALUE: return ExitCode::kBadValue;
    case proto::ERROR_CODE_BAD_QUERY: return ExitCode::kBadQuery;
    case proto::ERROR_CODE_OFFLINE: return ExitCode::kOffline;
    case proto::ERROR_CODE_TIMEOUT: return ExitCode::kTimeout;
    case proto::ERROR_CODE_UNAUTHORIZED:
    case proto::ERROR_CODE_PROTOCOL_VERSION: return ExitCode::kUnauthorized;
    default: return ExitCode::kGeneric;
  }
}

ClientResult<Client> Client::connect(const ClientOptions& options) {
  std::string path = options.socket_dir;
  if (!path.empty() && path.back() != '/') path += '/';
  path += ipc::kClientSocketName;

  auto channel = ipc::Channel::connect(path);
  if (!channel) {
    const int e = channel.error().code;
    std::string hint = e == EACCES ? " (is your user allowed to use floe-core's socket directory?)"
                                   : " (is floe-core running? choose the directory with --socket-dir or "
                                     "$FLOE_SOCKET_DIR)";
    return fail(ExitCode::kConnect, "cannot connect to floe-core at " + path + ": " +
                                        (e != 0 ? std::string(std::strerror(e)) : channel.error().message) + hint);
  }
  Client client(std::move(*channel), path, options.timeout);

  proto::ClientRequest hello;
  hello.mutable_hello()->set_protocol_version(options.protocol_version);
  hello.mutable_hello()->set_peer_name(options.peer_name);
  hello.mutable_hello()->set_role(proto::PEER_ROLE_CLIENT);
  hello.mutable_hello()->set_split_answers(true);
  auto response = client.call(hello, options.timeout);
  if (!response) {
    ClientError& err = response.error();
    if (err.exit == ExitCode::kGeneric && err.message.find("closed the connection") != std::string::npos) {
      // A core that refuses a peer before Welcome (SO_PEERCRED) may just hang up.
      err.exit = ExitCode::kUnauthorized;
      err.message += " during the handshake (is your uid allowed by floe-core?)";
    }
    return tl::unexpected(std::move(err));
  }
  if (!response->has_welcome()) {
    return fail(ExitCode::kGeneric, "floe-core did not answer Hello with Welcome");
  }
  client.welcome_ = response->welcome();
  return client;
}

ClientResult<Client::Ready> Client::wait_readable(int interrupt_fd, std::chrono::steady_clock::time_point deadline,
                                                  bool forever) {
  for (;;) {
    int timeout_ms = -1;
    if (!forever) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return Ready::kTimedOut;
      timeout_ms = static_cast<int>(left.count());
    }
    pollfd fds[2] = {{channel_.fd(), POLLIN, 0}, {interrupt_fd, POLLIN, 0}};
    const int r = ::poll(fds, interrupt_fd >= 0 ? 2 : 1, timeout_ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      return fail(ExitCode::kGeneric, std::string("poll: ") + std::strerror(errno));
    }
    if (r == 0) continue;  // re-check the deadline
    if (interrupt_fd >= 0 && (fds[1].revents & POLLIN) != 0) return Ready::kInterrupted;
    if (fds[0].revents != 0) return Ready::kReadable;  // data, hangup or error: receive() says which
  }
}

ClientResult<proto::ClientResponse> Client::receive_one(std::chrono::steady_clock::time_point deadline) {
  // An answer over one packet comes as several in a row (ClientResponse.more): join them. The
  // rest of an answer is on its way once its first packet is in: it gets at most one timeout.
  ipc::AnswerJoiner joiner;
  deadline = std::min(deadline, std::chrono::steady_clock::now() + timeout_);
  for (;;) {
    auto packet = channel_.receive();
    if (!packet && packet.error().code == ECONNRESET) {
      // A core that hangs up with our request unread (a refusal at accept) resets the connection,
      // and the kernel reports the reset before the packet it sent last, which says why: read on.
      packet = channel_.receive();
    }
    if (!packet) {
      if (packet.error().code == ECONNRESET) return lost("floe-core closed the connection");
      return lost("receiving from floe-core: " + packet.error().to_string());
    }
    proto::ClientResponse response;
    if (!response.ParseFromArray(packet->bytes.data(), static_cast<int>(packet->bytes.size()))) {
      return fail(ExitCode::kGeneric, "floe-core sent a packet that is not a ClientResponse");
    }
    if (joiner.pending() && response.has_error() && response.error().fatal()) {
      // The core's last word (e.g. it is closing the session) ends an answer it had begun.
      return response;
    }
    auto whole = joiner.add(std::move(response), packet->bytes.size());
    if (!whole) return abandon(ExitCode::kGeneric, "floe-core sent a broken split answer: " + whole.error().message);
    if (*whole) return std::move(**whole);
    auto ready = wait_readable(-1, deadline, false);
    if (!ready) return tl::unexpected(std::move(ready.error()));
    if (*ready == Ready::kTimedOut) {
      return abandon(ExitCode::kTimeout, "floe-core sent part of an answer, and not the rest within " +
                                             std::to_string(timeout_.count()) + " ms");
    }
  }
}

tl::unexpected<ClientError> Client::abandon(ExitCode code, std::string why) {
  // The rest of the answer may still come, and would be taken for the next one: this
  // connection cannot be followed any more. Whoever holds it sees it lost (and may reconnect).
  ::shutdown(channel_.fd(), SHUT_RDWR);
  return tl::unexpected(ClientError{code, std::move(why), /*connection_lost=*/true});
}

ClientResult<proto::ClientResponse> Client::call(proto::ClientRequest& request, std::chrono::milliseconds timeout) {
  const std::uint64_t id = next_id_++;
  request.set_id(id);
  if (auto sent = channel_.send(request); !sent) {
    if (sent.error().code != EPIPE && sent.error().code != ECONNRESET) {
      return fail(ExitCode::kGeneric, "sending to floe-core: " + sent.error().to_string());
    }
    // The core hung up (e.g. it refused our uid at accept); it may have said why first.
    if (auto ready = wait_readable(-1, std::chrono::steady_clock::now() + kCoreVerdictGrace, false);
        ready && *ready == Ready::kReadable) {
      if (auto last = receive_one(std::chrono::steady_clock::now() + kCoreVerdictGrace); last && last->has_error()) {
        return fail(exit_code_for(last->error().code()), last->error().message());
      }
    }
    return lost("floe-core closed the connection");
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto ready = wait_readable(-1, deadline, false);
    if (!ready) return tl::unexpected(std::move(ready.error()));
    if (*ready == Ready::kTimedOut) {
      return fail(ExitCode::kTimeout, "no answer from floe-core within " + std::to_string(timeout.count()) + " ms");
    }
    auto response = receive_one(deadline);
    if (!response) return response;
    if (response->has_watch_event()) {
      pending_events_.push_back(std::move(*response->mutable_watch_event()));
      continue;
    }
    if (response->has_welcome()) return response;  // the handshake's answer, whatever id it echoes
    if (response->has_error() && (response->id() == id || response->id() == 0 || response->error().fatal())) {
      const auto& e = response->error();
      return fail(exit_code_for(e.code()), e.message().empty() ? "floe-core refused the request" : e.message());
    }
    if (response->id() != id) continue;  // a late answer to an earlier, timed-out request
    return response;
  }
}

ClientResult<proto::DeviceList> Client::list_devices() {
  proto::ClientRequest r;
  r.mutable_list_devices();
  auto response = call(r, timeout_);
  if (!response) return tl::unexpected(std::move(response.error()));
  if (!response->has_devices()) return fail(ExitCode::kGeneric, "unexpected answer to ListDevices");
  return std::move(*response->mutable_devices());
}

ClientResult<proto::EntityList> Client::list_entities(std::string_view device) {
  proto::ClientRequest r;
  r.mutable_list_entities()->set_device(std::string(device));
  auto response = call(r, timeout_);
  if (!response) return tl::unexpected(std::move(response.error()));
  if (!response->has_entities()) return fail(ExitCode::kGeneric, "unexpected answer to ListEntities");
  return std::move(*response->mutable_entities());
}

ClientResult<proto::EntityValue> Client::get(std::string_view entity, std::string_view component) {
  proto::ClientRequest r;
  r.mutable_get()->set_entity(std::string(entity));
  r.mutable_get()->set_component(std::string(component));
  auto response = call(r, timeout_);
  if (!response) return tl::unexpected(std::move(response.error()));
  if (!response->has_value()) return fail(ExitCode::kGeneric, "unexpected answer to GetValue");
  return std::move(*response->mutable_value());
}

ClientResult<proto::SetResults> Client::set(std::string_view entity, std::string_view component,
                                            std::string_view value) {
  proto::ClientRequest r;
  auto* s = r.mutable_set();
  s->set_entity(std::string(entity));
  s->set_component(std::string(component));
  s->set_value(std::string(value));
  s->set_timeout_ms(static_cast<std::uint32_t>(timeout_.count()));
  auto response = call(r, timeout_ + kCoreVerdictGrace);
  if (!response) return tl::unexpected(std::move(response.error()));
  if (response->has_ok()) return proto::SetResults{};
  if (!response->has_set()) return fail(ExitCode::kGeneric, "unexpected answer to SetValue");
  return std::move(*response->mutable_set());
}

ClientResult<proto::QueryResult> Client::query(std::string_view text) {
  auto answer = run_query(text);
  if (!answer) return tl::unexpected(std::move(answer.error()));
  if (auto* result = std::get_if<proto::QueryResult>(&*answer)) return std::move(*result);
  return fail(ExitCode::kGeneric, "the query is a set: its answer is per-entity results (use run_query)");
}

ClientResult<std::variant<proto::QueryResult, proto::SetResults>> Client::run_query(std::string_view text) {
  proto::ClientRequest r;
  r.mutable_query()->set_text(std::string(text));
  auto response = call(r, timeout_ + kCoreVerdictGrace);
  if (!response) return tl::unexpected(std::move(response.error()));
  if (response->has_query()) return std::move(*response->mutable_query());
  if (response->has_set()) return std::move(*response->mutable_set());
  return fail(ExitCode::kGeneric, "unexpected answer to RunQuery");
}

ClientResult<proto::GroupList> Client::list_groups() {
  proto::ClientRequest r;
  r.mutable_list_groups();
  auto response = call(r, timeout_);
  if (!response) return tl::unexpected(std::move(response.error()));
  if (!response->has_groups()) return fail(ExitCode::kGeneric, "unexpected answer to ListGroups");
  return std::move(*response->mutable_groups());
}

ClientResult<void> Client::edit_group(std::string_view group, std::string_view device, bool remove) {
  proto::ClientRequest r;
  r.mutable_edit_group()->set_group(std::string(group));
  r.mutable_edit_group()->set_device(std::string(device));
  r.mutable_edit_group()->set_remove(remove);
  auto response = call(r, timeout_);
  if (!response) return tl::unexpected(std::move(response.error()));
  return {};
}

ClientResult<std::uint64_t> Client::watch(std::string_view text) {
  proto::ClientRequest r;
  r.mutable_watch()->set_text(std::string(text));
  auto response = call(r, timeout_);
  if (!response) return tl::unexpected(std::move(response.error()));
  if (!response->has_watch_started()) return fail(ExitCode::kGeneric, "unexpected answer to Watch");
  return response->watch_started().watch_id();
}

ClientResult<void> Client::unwatch(std::uint64_t watch_id) {
  proto::ClientRequest r;
  r.mutable_unwatch()->set_watch_id(watch_id);
  auto response = call(r, timeout_);
  if (!response) return tl::unexpected(std::move(response.error()));
  // Only this watch's queued events go; the others' are still the newest their watchers have.
  std::erase_if(pending_events_, [&](const proto::WatchEvent& e) { return e.watch_id() == watch_id; });
  return {};
}

ClientResult<WaitOutcome> Client::next_event(int interrupt_fd, std::chrono::milliseconds timeout) {
  const bool forever = timeout.count() < 0;
  const auto deadline = std::chrono::steady_clock::now() + (forever ? std::chrono::milliseconds(0) : timeout);
  for (;;) {
    if (!pending_events_.empty()) {
      WaitOutcome out{WaitOutcome::Kind::kEvent, std::move(pending_events_.front()), {}};
      pending_events_.pop_front();
      return out;
    }
    auto ready = wait_readable(interrupt_fd, deadline, forever);
    if (!ready) return tl::unexpected(std::move(ready.error()));
    if (*ready == Ready::kInterrupted) return WaitOutcome{WaitOutcome::Kind::kInterrupted, {}, {}};
    if (*ready == Ready::kTimedOut) {
      return fail(ExitCode::kTimeout, "no watch event within " + std::to_string(timeout.count()) + " ms");
    }
    auto response = receive_one();
    if (!response) return tl::unexpected(std::move(response.error()));
    if (response->has_watch_event()) {
      pending_events_.push_back(std::move(*response->mutable_watch_event()));
    } else if (response->has_error() && response->error().fatal()) {
      const auto& e = response->error();
      return fail(exit_code_for(e.code()), e.message());
    }
    // Anything else is a stray answer to nothing we wait for.
  }
}

std::chrono::milliseconds Backoff::delay(unsigned attempt) const noexcept {
  std::chrono::milliseconds d = std::max(first, std::chrono::milliseconds(1));
  for (unsigned i = 0; i < attempt && d < max; ++i) d *= 2;
  return std::min(d, max);
}

ClientResult<ResumingWatch> ResumingWatch::start(const ClientOptions& options, std::string query, Backoff backoff) {
  ResumingWatch w(options, std::move(query), backoff);
  auto client = Client::connect(w.options_);
  if (!client) return tl::unexpected(std::move(client.error()));
  auto id = client->watch(w.query_);
  if (!id) return tl::unexpected(std::move(id.error()));
  w.client_.emplace(std::move(*client));
  w.watch_id_ = *id;
  return w;
}

ClientResult<WaitOutcome> ResumingWatch::next_event(int interrupt_fd) {
  if (!client_) return reconnect(interrupt_fd);
  auto next = client_->next_event(interrupt_fd);
  if (!next && next.error().connection_lost) {
    client_.reset();
    return WaitOutcome{.kind = WaitOutcome::Kind::kLost, .event = {}, .reason = std::move(next.error().message)};
  }
  return next;
}

ClientResult<WaitOutcome> ResumingWatch::reconnect(int interrupt_fd) {
  // Worth another attempt: no core listening yet, a hang-up (a core still starting or stopping),
  // or a core too busy to answer in time. Anything else is the core's refusal.
  const auto retry = [](const ClientError& e) {
    return e.connection_lost || e.exit == ExitCode::kConnect || e.exit == ExitCode::kTimeout;
  };
  for (unsigned attempt = 0;; ++attempt) {
    pollfd p{interrupt_fd, POLLIN, 0};
    const int r = ::poll(&p, interrupt_fd >= 0 ? 1 : 0, static_cast<int>(backoff_.delay(attempt).count()));
    if (r < 0 && errno != EINTR) return fail(ExitCode::kGeneric, std::string("poll: ") + std::strerror(errno));
    if (r > 0) return WaitOutcome{.kind = WaitOutcome::Kind::kInterrupted, .event = {}, .reason = {}};
    auto client = Client::connect(options_);
    if (!client) {
      if (retry(client.error())) continue;
      return tl::unexpected(std::move(client.error()));
    }
    auto id = client->watch(query_);
    if (!id) {
      if (retry(id.error())) continue;
      return tl::unexpected(std::move(id.error()));
    }
    client_.emplace(std::move(*client));
    watch_id_ = *id;
    ++resumes_;
    return WaitOutcome{.kind = WaitOutcome::Kind::kResumed, .event = {}, .reason = {}};
  }
}

ClientResult<void> ResumingWatch::stop() {
  if (!client_) return {};
  auto done = client_->unwatch(watch_id_);
  client_.reset();
  if (!done && done.error().connection_lost) return {};  // the core went away: no watch left to end
  return done;
}

}  // namespace floe::client
