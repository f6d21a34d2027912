// The socket baselines (`old`, `per_device_socket`): bodies of their core, provider and clients
// processes. The orchestrator makes every socketpair before it forks, so each process gets its
// ends as plain descriptors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "paths/common.hpp"
#include "paths/tcp_devices.hpp"

namespace floe::bench::paths {

struct SocketCorePlan {
  bool per_device = false;           // false: `old` (one socket per extension)
  std::uint32_t devices = 1;
  std::vector<int> client_fds;       // core ends, one per client; the last one is the watcher's
  std::vector<int> link_fds;         // core ends: one (old) or one per device
  std::size_t task_threads = 2;      // epoll threads owning the link sockets
};

struct SocketProviderPlan {
  bool per_device = false;
  std::vector<int> link_fds;         // provider ends
  std::size_t task_threads = 2;      // device-task threads
  TcpShared* tcp = nullptr;          // the TCP setting: devices behind floe-esphome-sim (ports in it)
};

/// Never return normally (they run until killed or their peer hangs up).
int run_socket_core(Shared& s, const SocketCorePlan& plan);
int run_socket_provider(Shared& s, const SocketProviderPlan& plan);
/// `client_fds`: the clients' ends, the last one the watcher's. `tcp`: the TCP setting (commits
/// carry the devices' counters).
int run_socket_clients(Shared& s, const std::vector<int>& client_fds, const TcpShared* tcp = nullptr);

}  // namespace floe::bench::paths
