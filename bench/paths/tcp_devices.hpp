// The TCP setting of `floe-bench paths`: every device behind a real ESPHome native-API connection.
//
// A fifth process, the **devices process**, runs floe-esphome-sim's library (plaintext, one TCP
// listener per simulated device on an ephemeral loopback port, like real ESPHome devices). Each
// simulated device has two entities: a light (key 1) that requests dim, and a number (key 2) whose
// changes are the commits:
//
//   request: the path's provider sends LightCommandRequest{brightness = seq / 2^24} over TCP; the
//            devices process stamps the arrival when the command reaches the device (request
//            latency = arrival at the device - intended send time); the device answers with its
//            new LightStateResponse, which completes the request in the provider.
//   commit:  on the commit schedule the devices process changes the device's number to a
//            counter (Simulator::inject: a change made at the device) and records which commit
//            the counter stands for; the device sends NumberStateResponse to its subscriber, the
//            provider turns it into the path's commit, and the watcher translates the counter
//            back (commit latency = watcher receipt - intended time of the device's change).
//
// Float carries integers below 2^24 exactly, so both encodings are lossless.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "paths/common.hpp"

namespace floe::bench::paths {

inline constexpr std::uint32_t kMaxTcpDevices = 10'000;
inline constexpr std::uint32_t kLightKey = 1;
inline constexpr std::uint32_t kCommitKey = 2;

/// What the processes of a TCP run share besides Shared: the devices' ports and the commit
/// counters. A MAP_SHARED anonymous mapping made before the children fork.
struct TcpShared {
  std::atomic<std::uint32_t> devices_ready;   // futex word: 1 once `ports` are filled, 2 on failure
  std::atomic<std::uint32_t> provider_ready;  // futex word: 1 once the baselines' provider is connected
  std::uint32_t devices;
  std::uint16_t ports[kMaxTcpDevices];
  char error[256];
  // Device-side commit counter (1, 2, ...) -> the commit it stands for (gen * kMaxSeq + seq).
  std::atomic<std::uint64_t> commit_tag[kMaxSeq];
};

[[nodiscard]] TcpShared* map_tcp_shared();
void unmap_tcp_shared(TcpShared* t);

/// Floe entity ids floe-esphome gives the simulated device `d` (named bench-<d> in its config).
[[nodiscard]] std::string tcp_device_name(std::uint32_t d);

/// Lossless float encodings of a request's sequence number as a brightness (0, 1).
[[nodiscard]] float brightness_of_seq(std::uint64_t seq) noexcept;
[[nodiscard]] std::uint64_t seq_of_brightness(double brightness) noexcept;

/// Body of the devices process: `devices` simulated devices; fills t.ports, stamps request
/// arrivals, plays the commit schedule; returns at kStop.
int run_devices_process(Shared& s, TcpShared& t, std::uint32_t devices);
/// Waits until the devices process filled the ports (or failed / exited). False with `error`.
[[nodiscard]] bool wait_devices_ready(TcpShared& t, pid_t devices_pid, std::string& error);

/// A watcher whose commits carry the device-side counter: reports the commit it stands for.
[[nodiscard]] std::unique_ptr<CommitWatcher> translate_commits(std::unique_ptr<CommitWatcher> inner,
                                                               const TcpShared& t);

/// A native-API client connection to one simulated device, as a provider's device task holds it.
class EsphomeLink {
 public:
  ~EsphomeLink();
  EsphomeLink(const EsphomeLink&) = delete;
  EsphomeLink& operator=(const EsphomeLink&) = delete;

  /// Connects to 127.0.0.1:`port` and walks Hello, Connect, ListEntities, SubscribeStates (blocking,
  /// up to 10 s), consuming the initial states; then the socket is non-blocking. nullptr + `error`.
  [[nodiscard]] static std::unique_ptr<EsphomeLink> open(std::uint16_t port, std::string& error);

  [[nodiscard]] int fd() const noexcept { return fd_; }
  /// Sends LightCommandRequest{state on, brightness of `seq`}. False with `error`.
  bool send_request(std::uint64_t seq, std::string& error);

  /// Reads what the socket holds: calls on_light() for each LightStateResponse and
  /// on_commit(counter) for each NumberStateResponse; answers pings. False on EOF or a broken frame.
  template <typename OnLight, typename OnCommit>
  bool drain(OnLight&& on_light, OnCommit&& on_commit, std::string& error) {
    return drain_impl([&](bool light, std::uint64_t v) { light ? on_light() : on_commit(v); }, error);
  }

 private:
  struct Impl;
  explicit EsphomeLink(int fd, std::unique_ptr<Impl> impl);
  bool drain_impl(const std::function<void(bool, std::uint64_t)>& on_state, std::string& error);
  int fd_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace floe::bench::paths
