// floe::client — a small synchronous client of floe-core's client socket (ipc/proto/client.proto),
// used by floectl and by the end-to-end tests. One request in flight at a time; watch events that
// arrive while a request waits are queued and handed out by next_event().
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>

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

/// What next_event() returns while waiting for watch events.
struct WaitOutcome {
  enum class Kind { kEvent, kInterrupted } kind = Kind::kEvent;
  proto::WatchEvent event;
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
  [[nodiscard]] ClientResult<proto::QueryResult> query(std::string_view text);
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
  [[nodiscard]] ClientResult<proto::ClientResponse> receive_one();

  ipc::Channel channel_;
  std::string socket_path_;
  std::chrono::milliseconds timeout_;
  std::uint64_t next_id_ = 1;
  proto::Welcome welcome_;
  std::deque<proto::WatchEvent> pending_events_;
};

}  // namespace floe::client
