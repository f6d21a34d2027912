// floe-esphome: a floe provider that connects to ESPHome devices over the native API.
//
// One TCP connection per configured device, all in one thread: an epoll loop that also watches
// the SDK's Provider::fd(). Each connection walks Hello -> DeviceInfo -> ListEntities ->
// SubscribeStates; when the entity list is complete the device (and each of its sub-devices) is
// declared to floe, state messages become tree writes, and requests become *CommandRequests that
// the device's next state message for that entity completes. A device that goes away is retried
// with backoff without affecting the others. docs/ESPHOME.md describes the behaviour and logs.
#pragma once

#include <memory>

#include "floe/esphome/config.hpp"
#include "floe/ipc/result.hpp"

namespace floe::esphome {

class EsphomeProvider {
 public:
  explicit EsphomeProvider(Config config);
  EsphomeProvider(const EsphomeProvider&) = delete;
  EsphomeProvider& operator=(const EsphomeProvider&) = delete;
  ~EsphomeProvider();

  /// Runs until stop(). An Error only if the loop cannot be set up or the kernel interface fails.
  [[nodiscard]] Status run();
  /// Any thread, async-signal-safe: makes run() return soon.
  void stop() noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace floe::esphome
