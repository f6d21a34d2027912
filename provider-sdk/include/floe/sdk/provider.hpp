// floe provider SDK: declare devices, write their component values, answer requests.
//
//   floe::sdk::Provider provider({.name = "virtual-lights"});
//   auto& dev = provider.add_device({.id = "light-1", .name = "Light 1", .groups = {"kitchen"},
//       .entities = {{.id = "light_1", .name = "Light 1",
//                     .components = {Component::Light, Component::Switch, Component::Dimmer}}}});
//   dev.set("light_1", Component::Dimmer, 0.5);
//   provider.on_request([](floe::sdk::Request& r) { ...; r.succeed(); });
//   return provider.run() ? 0 : 1;
//
// Threading (docs/PROVIDER_SDK.md has the whole story):
//   - The "provider thread" is the thread inside run() or process(). Callbacks run there.
//   - Device writes (set, set_text, set_list) and Request answers (succeed, fail) are safe from
//     ANY thread: a per-device mutex serialises the device's tree writer and its rx ring (whose
//     one producer is, at any moment, the thread holding that mutex).
//   - stop() is safe from any thread and from a signal handler.
//   - Everything else (add_device, on_request, run, process) is provider-thread only (or before
//     the provider runs).
//
// Connection: the provider connects to `<socket_dir>/provider.sock` by itself and reconnects with
// exponential backoff whenever the core is unreachable or goes away. Values written while
// disconnected are kept, and every last known value is written again into the (new) device region
// after each (re)connect, so a restarted core learns the provider's current state.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "floe/ipc/components.hpp"
#include "floe/ipc/device_region.hpp"
#include "floe/ipc/event_loop.hpp"
#include "floe/ipc/result.hpp"
#include "floe/ipc/tree.hpp"
#include "floe/sdk/records.hpp"

namespace floe::sdk {

using ipc::Component;
using ipc::EntityIndex;
using ipc::RequestStatus;
using ipc::Value;
using WriteStatus = ipc::TreeWriteStatus;

/// One component of an entity; converts from a bare Component. `max_bytes`: capacity of a text or
/// list component (0: the default); must be 0 for small kinds.
struct ComponentSpec {
  ComponentSpec(Component c, std::uint32_t max = 0) : component(c), max_bytes(max) {}  // NOLINT: implicit on purpose
  Component component;
  std::uint32_t max_bytes = 0;
};

struct EntitySpec {
  std::string id{};    // home-wide entity id ([a-z0-9_.-]+)
  std::string name{};  // display name
  std::vector<ComponentSpec> components{};
};

struct DeviceSpec {
  std::string id{};                   // stable per provider
  std::string name{};
  std::vector<std::string> groups{};  // joined on every registration (the core persists groups)
  std::vector<EntitySpec> entities{};
};

struct ProviderOptions {
  std::string name{};                                    // stable across restarts; 1..64 bytes, no control characters
  std::string socket_dir{};                              // empty: ipc::default_socket_dir()
  std::chrono::milliseconds reconnect_min{100};          // first retry delay
  std::chrono::milliseconds reconnect_max{5000};         // the delay stops doubling here
  ipc::LoopBackend backend = ipc::LoopBackend::kAuto;    // run()'s loop
  std::chrono::milliseconds heartbeat_interval{2000};    // our Heartbeat while connected; 0: none
  /// Ask for doorbells (floe/ipc/doorbell.hpp): the core wakes this provider's thread only when
  /// it really sleeps, whichever device a request is for. false: an eventfd per device, as
  /// before; a core that does not offer doorbells gets that anyway.
  bool doorbells = true;
};

namespace detail {
struct DeviceState;
struct ProviderState;
}  // namespace detail

/// A declared device. Owned by its Provider (references stay valid as long as it lives).
class Device {
 public:
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device();

  /// Any thread.
  [[nodiscard]] const std::string& id() const noexcept;
  /// Any thread. The index of entity `entity_id` (its position in DeviceSpec::entities).
  [[nodiscard]] std::optional<EntityIndex> entity(std::string_view entity_id) const noexcept;
  /// Any thread. The spec the device was declared with.
  [[nodiscard]] const DeviceSpec& spec() const noexcept;
  /// Any thread. True while the core holds a grant for the device (connected and accepted).
  [[nodiscard]] bool online() const noexcept;

  /// Any thread. Marks the device unreachable (`false`: the physical device dropped off the
  /// network) or reachable again. It stays declared and granted; the core shows it offline
  /// (clients see online=false, their requests fail at once with OFFLINE) until `true`. The
  /// state is repeated to the core after every (re)connect. `reason` is logged by the core.
  void set_available(bool available, std::string_view reason = {}) noexcept;
  /// Any thread. The last set_available() wish (true until the first call).
  [[nodiscard]] bool available() const noexcept;

  /// Any thread. Writes a small component: the tree first, then a change record on the rx ring (a
  /// full ring drops the record and sets its overflow flag, so the core rescans; nothing is lost).
  /// Offline, the value is only remembered (and written on the next connect). Checks the entity,
  /// the component and the value's type against the declared schema either way.
  WriteStatus set(EntityIndex entity, Component c, const Value& v) noexcept;
  WriteStatus set(std::string_view entity_id, Component c, const Value& v) noexcept;
  /// Any thread. Text component (UTF-8); kTooLong over its capacity.
  WriteStatus set_text(EntityIndex entity, Component c, std::string_view text) noexcept;
  WriteStatus set_text(std::string_view entity_id, Component c, std::string_view text) noexcept;
  /// Any thread. List component; kTooLong if its encoding exceeds the capacity.
  WriteStatus set_list(EntityIndex entity, Component c, std::span<const std::string> items) noexcept;
  WriteStatus set_list(std::string_view entity_id, Component c, std::span<const std::string> items) noexcept;

  /// Any thread. The last value written (by this provider) to a small component, if any.
  [[nodiscard]] std::optional<Value> value(EntityIndex entity, Component c) const;

 private:
  friend class Provider;
  friend class Request;
  friend struct detail::ProviderState;
  explicit Device(std::shared_ptr<detail::DeviceState> state) noexcept;
  std::shared_ptr<detail::DeviceState> state_;
};

/// One request from the core: set `component` of `entity` to `value`. Must be answered exactly
/// once, with succeed() or fail(); a Request destroyed unanswered fails itself ("dropped").
/// Movable, so it can be answered later from another thread (e.g. when the physical device
/// confirms). A moved-from Request is empty and answers nothing.
class Request {
 public:
  Request(Request&& other) noexcept;
  Request& operator=(Request&& other) noexcept;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  ~Request();

  // Accessors: any thread (the Request itself is not shared between threads).
  [[nodiscard]] std::uint64_t id() const noexcept { return id_; }
  /// The device the request is for. Valid while its Provider lives.
  [[nodiscard]] Device& device() const noexcept;
  [[nodiscard]] EntityIndex entity() const noexcept { return entity_; }
  [[nodiscard]] const std::string& entity_id() const noexcept;
  [[nodiscard]] Component component() const noexcept { return component_; }
  /// The requested small value, or nullptr for a text request.
  [[nodiscard]] const Value* value() const noexcept { return std::get_if<Value>(&value_); }
  /// The requested text, or nullptr for a small-value request.
  [[nodiscard]] const std::string* text() const noexcept { return std::get_if<std::string>(&value_); }
  [[nodiscard]] bool answered() const noexcept { return answered_; }

  /// Any thread. Reports success (write the new state first, so the change record precedes the
  /// result). A second answer is ignored. If the connection the request came on is gone, the
  /// answer is dropped (the core has timed the request out already).
  void succeed() noexcept;
  /// Any thread. Reports failure with a reason the client will see.
  void fail(std::string_view reason, RequestStatus status = RequestStatus::kFailed) noexcept;

 private:
  friend struct detail::ProviderState;
  Request(std::shared_ptr<detail::DeviceState> device, std::uint64_t session, DecodedRequest decoded);
  void answer(RequestStatus status, std::string_view message) noexcept;

  std::shared_ptr<detail::DeviceState> device_;
  std::shared_ptr<Device> owner_;  // device() stays valid after Provider::remove_device
  std::uint64_t session_ = 0;
  std::uint64_t id_ = 0;
  EntityIndex entity_ = 0;
  Component component_ = Component::kNone;
  RequestValue value_;
  bool answered_ = true;
};

/// The provider: its devices, its connection to the core, its requests.
class Provider {
 public:
  /// Never fails; a failure to create its descriptors is reported by run() / process().
  /// Sets SIGPIPE to ignored if it is at its default: the provider signals the core through pipes,
  /// and a signal sent just after the core closed its end must not end the process.
  explicit Provider(ProviderOptions options);
  Provider(const Provider&) = delete;
  Provider& operator=(const Provider&) = delete;
  ~Provider();

  /// Provider thread (or before running). Declares a device; announced to the core at once if
  /// connected, and on every (re)connect. An Error if the id is taken or the schema is invalid
  /// (unknown component, duplicate component or entity id, too many entities...).
  [[nodiscard]] Result<std::reference_wrapper<Device>> try_add_device(DeviceSpec spec);
  /// try_add_device() for programs: logs the error and aborts on an invalid spec.
  Device& add_device(DeviceSpec spec);
  /// Provider thread (or before running). Withdraws a device: the core removes it (clients see it
  /// gone, its pending requests fail OFFLINE, the state file forgets it and its group
  /// memberships); told at once if connected, else on the next connect. References to the Device
  /// become invalid, except through a Request still held (whose answer is then dropped). The id
  /// may be declared again later (a new device to the core). Error if no device has that id.
  [[nodiscard]] Status remove_device(std::string_view id);

  /// Provider thread (or before running). Called on the provider thread for every request. Without
  /// a handler every request fails with kUnsupported.
  void on_request(std::function<void(Request&)> handler);

  /// Runs the provider in its own ipc::EventLoop until stop(). Error if the loop cannot be made.
  [[nodiscard]] Status run();
  /// Any thread, async-signal-safe: makes run() return soon.
  void stop() noexcept;

  /// For a provider with its own loop: a descriptor that becomes readable when there is work
  /// (an epoll set of the management socket, the tx eventfds, the answer queue and the timers).
  /// Watch it for readability and call process() then. -1 if the provider failed to initialise.
  [[nodiscard]] int fd() const noexcept;
  /// Provider thread. Does all pending work without blocking: (re)connects, handles the core's
  /// messages, drains the tx rings (calling the request handler), retries queued results.
  [[nodiscard]] Status process();

  /// Any thread. True while connected and welcomed by the core.
  [[nodiscard]] bool connected() const noexcept;
  /// The socket path the provider connects to.
  [[nodiscard]] const std::string& socket_path() const noexcept;

 private:
  std::shared_ptr<detail::ProviderState> state_;
};

}  // namespace floe::sdk
