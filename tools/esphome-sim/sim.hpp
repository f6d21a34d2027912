// floe-esphome-sim: serves simulated ESPHome devices over the native API (plaintext or Noise),
// one listening TCP port per device, many clients per device, on one epoll thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config.hpp"
#include "floe/esphome/transport.hpp"
#include "floe/ipc/result.hpp"

namespace floe::esphome::sim {

class Simulator {
 public:
  /// Binds every device's port (0: ephemeral). Errors name the device and the port.
  [[nodiscard]] static Result<std::unique_ptr<Simulator>> create(SimConfig config);
  ~Simulator();

  /// {"devices":[{"name":..,"port":..,"encrypted":..}]} — one line, for scripts and tests.
  [[nodiscard]] std::string ports_json() const;
  /// Runs until SIGINT/SIGTERM (when `handle_signals`) or stop().
  [[nodiscard]] Result<void> run(bool handle_signals = true);
  /// Any thread.
  void stop() noexcept;

  /// Called on the loop thread with every message a client sends that is not part of the session
  /// (the *CommandRequests, and types the simulator does not know), before the device applies it.
  /// `device` is the device's index in the config. Set before run(); for benchmarks and tests.
  using CommandHook = std::function<void(std::size_t device, const Message& command)>;
  void on_command(CommandHook hook);
  /// Any thread: device `device` (index in the config) applies `command` as if it had been
  /// changed at the device itself (a wall switch, a sensor); subscribed clients get the new state.
  /// Out-of-range indexes are ignored. The hook is not called for it.
  void inject(std::size_t device, Message command);

 private:
  struct Impl;
  explicit Simulator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace floe::esphome::sim
