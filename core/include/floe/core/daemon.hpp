// floe-core, the daemon: App{config}.run() listens on provider.sock and client.sock in the
// socket directory and serves until SIGTERM/SIGINT. docs/CORE.md describes threads, sessions,
// persistence and reconnect semantics.
#pragma once

#include <memory>

#include "floe/core/config.hpp"

namespace floe::core {

namespace detail {
struct Core;
}

class App {
 public:
  /// `config` should have been through resolve_defaults() (run() does it again; it is idempotent).
  explicit App(Config config);
  ~App();
  App(const App&) = delete;
  App& operator=(const App&) = delete;

  /// Serves until SIGTERM or SIGINT (blocked in every thread and read through a signalfd), then
  /// shuts down: sessions closed, loops stopped, state saved, sockets unlinked. Returns the
  /// process exit code (0 after a clean shutdown, 1 if the daemon could not start).
  int run();

 private:
  Config config_;
  std::unique_ptr<detail::Core> core_;
};

}  // namespace floe::core
