// floe::client — a small synchronous client of floe-core's client socket (ipc/proto/client.proto),
// used by floectl and by the end-to-end tests. One request in flight at a time; watch events that
// arrive while a request waits are queued and handed out by next_event(). ResumingWatch keeps a
// watch going across core restarts (reconnect, watch again).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <tl/expected.hpp>

#include "client.pb.h"
#include "floe/ipc/channel.hpp"
#include "floe/ipc/protocol.hpp"

namespace floe::client {

/// floectl's exit codes; every failure of the client library maps to one of them.
enum class ExitCode : int {
  kOk = 0,
  kGeneric = 1,       // anything else (internal error, provider-reported failure, ...)
  kUsage = 2,         // bad command line
  kNotFound = 3,      // unknown entity, device, group or component
  kBadValue = 4,      // the value does not fit the component
  kBadQuery = 5,      // the query does not parse or bind
  kOffline = 6,       // the device is offline
  kTimeout = 7,       // no answer from floe-core or the provider in time
  kConnect = 8,       // cannot connect to floe-core
  kUnauthorized = 9,  // uid not allowed, or protocol version mismatch
};

[[nodiscard]] constexpr int to_int(ExitCode c) noexcept { return static_cast<int>(c); }

/// A failed client operation: the exit code it maps to and a message for stderr (may span lines,
/// e.g. a query error with its caret rendering).
struct ClientError {
  ExitCode exit = ExitCode::kGeneric;
  std::string message;
  /// The connection to floe-core ended (or the core hung up without saying why): a new connection
  /// may succeed, as opposed to a refusal the core stated.
  bool connection_lost = false;
};

template <typename T>
using ClientResult = tl::expected<T, ClientError>;

/// The exit code an ErrorReply's code maps to.
[[nodiscard]] ExitCode exit_code_for(proto::ErrorCode code) noexcept;

struct ClientOptions {
  std::string socket_dir = ipc::default_socket_dir();
  /// Bound on the handshake and on each request's answer.
  std::chrono::milliseconds timeout{5000};
  /// Overridable only to test the core's version check.
  std::uint32_t protocol_version = ipc::kProtocolVersion;
  std::string peer_name = "floectl";
};

/// What next_event() returns while waiting for watch events. Client::next_event() returns only
/// kEvent and kInterrupted; ResumingWatch::next_event() also kLost and kResumed.
struct WaitOutcome {
  enum class Kind {
    kEvent,        // `event` holds a watch event
    kInterrupted,  // the interrupt fd became readable
    kLost,         // the connection ended (`reason` says how); the next call reconnects
    kResumed,      // connected and watching again; the next event is the current result
  } kind = Kind::kEvent;
  proto::WatchEvent event;
  std::string reason{};
};

/// How long to wait before reconnect attempt `attempt` (0-based): `first`, doubling per attempt,
/// at most `max`.
struct Backoff {
  std::chrono::milliseconds first{50};
  std::chrono::milliseconds max{2000};
  [[nodiscard]] std::chrono::milliseconds delay(unsigned attempt) const noexcept;
};

/// A connection to floe-core. Move-only; use from one thread.
class Client {
 public:
  /// Connects to <socket_dir>/client.sock, sends Hello (role CLIENT) and waits for Welcome.
  [[nodiscard]] static ClientResult<Client> connect(const ClientOptions& options);

  [[nodiscard]] ClientResult<proto::DeviceList> list_devices();
  /// Empty `device`: every device.
  [[nodiscard]] ClientResult<proto::EntityList> list_entities(std::string_view device = {});
  [[nodiscard]] ClientResult<proto::EntityValue> get(std::string_view entity, std::string_view component);
  /// Succeeds with the per-entity results even if some failed; the caller inspects them.
  [[nodiscard]] ClientResult<proto::SetResults> set(std::string_view entity, std::string_view component,
                                                    std::string_view value);
  /// A query whose action is not `set` (a set's answer is an error here: see run_query).
  [[nodiscard]] ClientResult<proto::QueryResult> query(std::string_view text);
  /// Any query: a `set` is answered with the per-entity results, every other action with its result.
  [[nodiscard]] ClientResult<std::variant<proto::QueryResult, proto::SetResults>> run_query(std::string_view text);
  [[nodiscard]] ClientResult<proto::GroupList> list_groups();
  [[nodiscard]] ClientResult<void> edit_group(std::string_view group, std::string_view device, bool remove);

  /// Starts a watch; returns its id. Events then arrive through next_event().
  [[nodiscard]] ClientResult<std::uint64_t> watch(std::string_view text);
  [[nodiscard]] ClientResult<void> unwatch(std::uint64_t watch_id);
  /// Blocks until a watch event arrives, or `interrupt_fd` (if >= 0) becomes readable (then
  /// kInterrupted), or `timeout` passes (kTimeout error; a negative timeout waits forever).
  [[nodiscard]] ClientResult<WaitOutcome> next_event(int interrupt_fd = -1,
                                                     std::chrono::milliseconds timeout = std::chrono::milliseconds(-1));

  [[nodiscard]] const proto::Welcome& welcome() const noexcept { return welcome_; }
  [[nodiscard]] const std::string& socket_path() const noexcept { return socket_path_; }

 private:
  Client(ipc::Channel channel, std::string socket_path, std::chrono::milliseconds timeout)
      : channel_(std::move(channel)), socket_path_(std::move(socket_path)), timeout_(timeout) {}

  /// Sends `request` with a fresh id and returns the response carrying that id; watch events seen
  /// meanwhile are queued. ErrorReply becomes a ClientError.
  [[nodiscard]] ClientResult<proto::ClientResponse> call(proto::ClientRequest& request,
                                                         std::chrono::milliseconds timeout);
  enum class Ready { kReadable, kInterrupted, kTimedOut };
  [[nodiscard]] ClientResult<Ready> wait_readable(int interrupt_fd, std::chrono::steady_clock::time_point deadline,
                                                  bool forever);
  /// One answer or event: the packets of a split answer are joined (ClientResponse.more), the
  /// rest of one awaited until `deadline` (at most the client's timeout).
  [[nodiscard]] ClientResult<proto::ClientResponse> receive_one(
      std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max());
  /// A split answer broke off: shuts the connection down (what is left of the answer would be
  /// taken for the next one) and returns the loss.
  [[nodiscard]] tl::unexpected<ClientError> abandon(ExitCode code, std::string why);

  ipc::Channel channel_;
  std::string socket_path_;
  std::chrono::milliseconds timeout_;
  std::uint64_t next_id_ = 1;
  proto::Welcome welcome_;
  std::deque<proto::WatchEvent> pending_events_;
};

/// A watch that survives floe-core going away: when the connection ends, next_event() reports
/// kLost once, then (on the next call) reconnects with `backoff` between attempts until it can
/// watch again (kResumed) or the interrupt fd becomes readable (kInterrupted). It gives up only on
/// a refusal: the core rejects the watch (bad query, limit) or the client (uid, protocol version).
/// Changes made while no connection existed are not replayed one by one: the first event after
/// kResumed is the query's current result. Move-only; use from one thread.
class ResumingWatch {
 public:
  /// Connects and starts watching `query` (errors as Client::connect and Client::watch).
  [[nodiscard]] static ClientResult<ResumingWatch> start(const ClientOptions& options, std::string query,
                                                         Backoff backoff = {});

  /// Blocks until an outcome (see WaitOutcome::Kind). While reconnecting, the interrupt fd is
  /// checked between attempts; one attempt's handshake is bounded by the options' timeout. An error
  /// ends the watch (the core refused it on resume, or a local failure).
  [[nodiscard]] ClientResult<WaitOutcome> next_event(int interrupt_fd = -1);

  /// Ends the watch (Unwatch) if connected; nothing to do while (or if meanwhile) the core is away.
  [[nodiscard]] ClientResult<void> stop();

  /// The current watch's id (it changes on each resume); 0 while disconnected.
  [[nodiscard]] std::uint64_t watch_id() const noexcept { return client_ ? watch_id_ : 0; }
  /// How many times it resumed.
  [[nodiscard]] unsigned resumes() const noexcept { return resumes_; }

 private:
  ResumingWatch(ClientOptions options, std::string query, Backoff backoff)
      : options_(std::move(options)), query_(std::move(query)), backoff_(backoff) {}
  [[nodiscard]] ClientResult<WaitOutcome> reconnect(int interrupt_fd);

  ClientOptions options_;
  std::string query_;
  Backoff backoff_;
  std::optional<Client> client_;  // empty while the core is away
  std::uint64_t watch_id_ = 0;
  unsigned resumes_ = 0;
};

}  // namespace floe::client
