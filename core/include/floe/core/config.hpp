// floe-core's configuration: a TOML file (toml++), every key optional (docs/CORE.md lists them).
//
//   auto cfg = load_config("/etc/floe/core.toml");   // or parse_config(text), or Config{} defaults
//
// Unknown keys and values of the wrong type are errors naming the key ("rings.tx_capacity").
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "floe/ipc/event_loop.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/result.hpp"

namespace floe::core {

/// Per-peer limits ([limits] in the TOML). The defaults are far above what a home needs and only
/// stop a runaway or hostile peer; docs/SECURITY.md says what each one defends.
struct Limits {
  // Providers (management socket).
  /// Provider connections at once (counted from accept, before Hello); more are refused with LIMIT.
  unsigned max_providers = 64;
  /// Devices one provider connection may declare.
  unsigned max_devices_per_provider = 4096;
  /// Devices floe-core knows (online or offline: a device stays known, with its region and its
  /// descriptor, until its provider removes it) declared by providers of one uid. Without it a
  /// provider could declare new devices, disconnect and do it again until floe-core ran out of
  /// descriptors.
  unsigned max_known_devices_per_uid = 8192;
  /// Entities in one AddDevice.
  unsigned max_entities_per_device = 1024;
  /// Entities over all devices of one provider connection.
  unsigned max_entities_per_provider = 65536;
  /// Bytes of device regions (memfds the core creates and maps) over all devices of one provider
  /// connection: bounds the memory a provider can make the core hold.
  std::uint64_t max_region_bytes_per_provider = std::uint64_t{4} << 30;
  /// Largest management packet accepted from a provider (the channel itself stops at 64 KiB).
  std::size_t max_message_bytes = 64 * 1024;
  /// Token bucket of management messages per provider: refilled at this rate, holding at most
  /// `provider_message_burst`. A provider that empties it is disconnected.
  unsigned provider_messages_per_second = 1000;
  unsigned provider_message_burst = 10000;
  // Clients (client socket).
  /// Largest request packet accepted from a client (answered with LIMIT, the session stays up).
  std::size_t max_request_bytes = 64 * 1024;
  /// Token bucket of requests per client session: a request finding it empty is answered LIMIT.
  unsigned client_requests_per_second = 20000;
  unsigned client_request_burst = 100000;
  /// Bytes waiting in floe-core for all clients together (answers and watch events their sockets
  /// could not take yet; one session holds at most 64 MiB). Past it, a session holding more than
  /// this over max_clients is disconnected (LIMIT) instead of queuing more, so the total stays
  /// under twice this.
  std::size_t max_queued_client_bytes = std::size_t{256} << 20;
  /// Watches one client session may hold at once.
  unsigned max_watches_per_client = 1024;
  /// A client whose socket stays full this long (it reads neither answers nor events) is
  /// disconnected, and its place (max_clients) is given back.
  std::chrono::milliseconds client_stall_timeout{60'000};
  /// A client that has not said Hello this long after connecting is disconnected (told why), so
  /// silent connections cannot hold every max_clients place.
  std::chrono::milliseconds client_hello_timeout{5'000};
};

struct Config {
  /// Where provider.sock and client.sock live (created 0700). Default ipc::default_socket_dir().
  std::string socket_dir;
  /// Metadata state (devices, entities, groups). Default: <socket_dir>/state.json.
  std::string state_file;
  /// io_uring shard loops owning device rings. 0 = std::thread::hardware_concurrency().
  unsigned worker_threads = 0;
  /// Loops serving client sessions (each an epoll over its sessions' sockets). 0 = worker_threads.
  unsigned client_threads = 0;
  /// SO_PEERCRED uids allowed on both sockets. Empty = the daemon's own uid and root.
  std::vector<uid_t> allowed_uids;
  /// A device belongs to the uid of the provider that declared it (recorded in the state file):
  /// while it is offline, a provider of another uid may neither declare its id again nor remove it.
  bool bind_devices_to_uid = true;
  /// Default wait for a provider's RequestResult.
  std::chrono::milliseconds request_timeout{5000};
  /// A provider silent this long is disconnected (its devices go offline). The core sends it a
  /// Heartbeat after half of it; any message from the provider counts as a sign of life.
  std::chrono::milliseconds provider_timeout{10000};
  /// Concurrent client sessions (spread over the client_threads loops); more are refused with LIMIT.
  unsigned max_clients = 64;
  /// "trace" .. "off" (spdlog level names).
  std::string log_level = "info";
  ipc::LoopBackend loop_backend = ipc::LoopBackend::kAuto;
  // [rings]
  std::size_t tx_capacity = 16 * 1024;
  std::size_t rx_capacity = 64 * 1024;
  /// How each ring's consumer waits (written into every ring header, so the provider follows it):
  /// kEventfd and kFutex sleep until signalled, kPoll checks every `poll_interval`, kSpin never
  /// sleeps (the shard loop keeps itself awake while it owns a spin ring).
  ipc::NotifyMode notify = ipc::NotifyMode::kEventfd;
  std::chrono::microseconds poll_interval{1000};
  /// kEventfd only: offer providers doorbells (one sleeping flag and eventfd per consumer thread,
  /// floe/ipc/doorbell.hpp) instead of a flag and an eventfd per ring.
  bool doorbells = true;
  Limits limits;
};

/// Parses TOML text; `origin` names the source in errors. Missing keys keep their defaults;
/// the result is not yet resolved (see resolve_defaults).
[[nodiscard]] Result<Config> parse_config(std::string_view text, std::string_view origin = "config");
/// Reads and parses a file.
[[nodiscard]] Result<Config> load_config(const std::string& path);
/// Fills what depends on the environment: socket_dir, state_file, worker_threads, client_threads,
/// allowed_uids.
void resolve_defaults(Config& config);

}  // namespace floe::core
