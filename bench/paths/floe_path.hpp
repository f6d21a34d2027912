// The `floe` path: the real floe-core program, a provider built on floe::sdk and clients using
// floe_client (tools/floectl/client.hpp). Requests: Client::set of the device entity's Integer to
// the sequence number -> core client session -> shard -> tx ring -> the SDK's on_request (the
// provider has it). Commits: the provider writes Real = the commit's value (Device::set: tree +
// rx ring) -> shard -> watcher -> the watching client's `max Real` WatchEvent.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "paths/common.hpp"
#include "paths/tcp_devices.hpp"

namespace floe::bench::paths {

struct FloeSetup {
  std::string core_bin;       // the floe-core program
  std::string dir;            // private socket dir (and state file, config, logs)
  std::string notify;         // [rings] notify, or "eventfd-rings" (eventfd without doorbells)
  bool doorbells = true;      // [rings] doorbells (with notify "eventfd")
  std::string loop_backend;   // FLOE_LOOP_BACKEND for core and provider: "io_uring", "epoll" or ""
  std::uint32_t devices = 1;
  std::uint32_t clients = 1;  // request connections (the watcher is one more)
  // The TCP setting: the provider is the floe-esphome program, connected to the simulated devices
  // whose ports `tcp` holds; clients dim each device's light, the watcher sees its number change.
  TcpShared* tcp = nullptr;
  std::string esphome_bin;    // floe-esphome
};

/// Writes the core's config into setup.dir and starts floe-core; its pid, or an Error text.
[[nodiscard]] pid_t start_floe_core(const FloeSetup& setup, std::string& error);
/// Waits until floe-core answers on its client socket and, with a provider (pid > 0), until
/// `devices` devices are online.
[[nodiscard]] bool wait_floe_ready(const FloeSetup& setup, pid_t core, pid_t provider, std::string& error);
/// TCP setting: writes floe-esphome's config (one entry per simulated device) into setup.dir and
/// starts it; its pid, or an Error text.
[[nodiscard]] pid_t start_floe_esphome(const FloeSetup& setup, std::string& error);
/// Bodies of the provider and clients processes (they return their exit status).
int run_floe_provider(Shared& s, const FloeSetup& setup);
int run_floe_clients(Shared& s, const FloeSetup& setup);
/// The last lines of the core's log, or of another log in setup.dir (for error messages).
[[nodiscard]] std::string floe_core_log_tail(const FloeSetup& setup, const std::string& file = "core.log");

}  // namespace floe::bench::paths
