// floe-esphome-sim: serves simulated ESPHome devices over the native API (plaintext or Noise),
// one listening TCP port per device, many clients per device, on one epoll thread.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "config.hpp"
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

 private:
  struct Impl;
  explicit Simulator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace floe::esphome::sim
