#include "paths/floe_path.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "client.hpp"
#include "clock.hpp"
#include "floe/sdk/provider.hpp"

namespace floe::bench::paths {

namespace {

using floe::sdk::Component;

std::string device_id(std::uint32_t d) { return fmt::format("bench-{}", d); }
std::string entity_id(std::uint32_t d) { return fmt::format("bench_{}", d); }

floe::client::ClientOptions client_options(const FloeSetup& setup) {
  floe::client::ClientOptions o;
  o.socket_dir = setup.dir;
  o.timeout = std::chrono::milliseconds(10'000);
  o.peer_name = "floe-bench";
  return o;
}

void use_backend(const FloeSetup& setup) {
  if (!setup.loop_backend.empty()) ::setenv("FLOE_LOOP_BACKEND", setup.loop_backend.c_str(), 1);
}

}  // namespace

namespace {

/// Writes `text` to setup.dir/`config_name`, then starts `bin --config <that file>` with its
/// output in setup.dir/`log_name` (the loop backend of `setup` in its environment); its pid, or -1
/// with `error`.
pid_t start_program(const FloeSetup& setup, const std::string& bin, const std::string& config_name,
                    const std::string& text, const std::string& log_name, std::string& error) {
  const std::string config = setup.dir + "/" + config_name;
  {
    std::ofstream out(config);
    out << text;
    if (!out) {
      error = "cannot write " + config;
      return -1;
    }
  }
  const std::string log = setup.dir + "/" + log_name;
  const pid_t pid = fork_child([&]() -> int {
    use_backend(setup);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
    }
    ::execl(bin.c_str(), bin.c_str(), "--config", config.c_str(), static_cast<char*>(nullptr));
    std::fprintf(stderr, "exec %s: %s\n", bin.c_str(), std::strerror(errno));
    return 127;
  });
  if (pid < 0) error = fmt::format("fork: {}", std::strerror(errno));
  return pid;
}

}  // namespace

pid_t start_floe_core(const FloeSetup& setup, std::string& error) {
  const bool per_ring = setup.notify == "eventfd-rings";
  return start_program(setup, setup.core_bin, "core.toml",
                       fmt::format("socket_dir = \"{}\"\nstate_file = \"{}/state.json\"\nlog_level = \"warn\"\n"
                                   "max_clients = {}\n[rings]\nnotify = \"{}\"\ndoorbells = {}\n"
                                   // The bench measures the paths, not the core's rate limits.
                                   "[limits]\nclient_requests_per_second = 10000000\nclient_request_burst = 10000000\n"
                                   "provider_messages_per_second = 10000000\nprovider_message_burst = 10000000\n",
                                   setup.dir, setup.dir, setup.clients + 8, per_ring ? "eventfd" : setup.notify,
                                   setup.doorbells && !per_ring),
                       "core.log", error);
}

pid_t start_floe_esphome(const FloeSetup& setup, std::string& error) {
  std::string text = fmt::format("name: floe-bench\nsocket_dir: \"{}\"\nrequest_timeout_ms: 10000\ndevices:\n", setup.dir);
  for (std::uint32_t d = 0; d < setup.devices; ++d)
    text += fmt::format("  - {{host: 127.0.0.1, port: {}, name: {}}}\n", setup.tcp->ports[d], tcp_device_name(d));
  return start_program(setup, setup.esphome_bin, "esphome.yaml", text, "esphome.log", error);
}

std::string floe_core_log_tail(const FloeSetup& setup, const std::string& file) {
  std::ifstream in(setup.dir + "/" + file);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  std::string out;
  for (std::size_t i = lines.size() > 3 ? lines.size() - 3 : 0; i < lines.size(); ++i)
    out += (out.empty() ? "" : " | ") + lines[i];
  return out;
}

bool wait_floe_ready(const FloeSetup& setup, pid_t core, pid_t provider, std::string& error) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60 + setup.devices / 10);
  std::string last = "floe-core did not answer";
  while (std::chrono::steady_clock::now() < deadline) {
    if (!child_alive(core)) {
      error = "floe-core exited: " + floe_core_log_tail(setup);
      return false;
    }
    if (provider > 0 && !child_alive(provider)) {
      error = "the provider process exited";
      return false;
    }
    auto opts = client_options(setup);
    opts.timeout = std::chrono::milliseconds(2000);
    if (auto c = floe::client::Client::connect(opts)) {
      if (provider <= 0) return true;
      if (auto list = c->list_devices()) {
        std::uint32_t online = 0;
        for (const auto& d : list->devices()) online += d.online() ? 1 : 0;
        if (online >= setup.devices) return true;
        last = fmt::format("{} of {} devices online", online, setup.devices);
      } else {
        last = list.error().message;
      }
    } else {
      last = c.error().message;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  error = "not ready within the time limit: " + last;
  return false;
}

int run_floe_provider(Shared& s, const FloeSetup& setup) {
  spdlog::set_level(spdlog::level::warn);
  use_backend(setup);
  floe::sdk::Provider provider({.name = "floe-bench", .socket_dir = setup.dir});
  // Filled by the loop thread, read by the commit driver (only after every device is online).
  std::vector<std::atomic<floe::sdk::Device*>> devices(setup.devices);
  // The device is answered inside the provider: the request is stamped and succeeds at once.
  provider.on_request([&s](floe::sdk::Request& r) {
    const std::int64_t now = now_ns();
    const auto* v = r.value();
    if (r.component() != Component::Integer || v == nullptr) return r.fail("the bench device takes Integer only");
    stamp_arrival(s, static_cast<std::uint64_t>(std::get<std::int64_t>(*v)), now);
    r.succeed();
  });
  std::atomic<bool> stop{false};
  // The provider's own loop (Provider::fd + process). Devices are declared in batches, each once
  // the previous batch is online: declaring 1,000 at once overflows the management socket, which
  // the SDK answers by reconnecting (and declaring all of them again).
  std::thread loop([&] {
    name_this_thread("floe-provider");
    constexpr std::uint32_t kBatch = 64;
    std::uint32_t declared = 0;
    auto declare_batch = [&] {
      for (std::uint32_t n = 0; n < kBatch && declared < setup.devices; ++n, ++declared) {
        auto& dev = provider.add_device({.id = device_id(declared), .name = device_id(declared), .groups = {},
                                         .entities = {{.id = entity_id(declared), .name = entity_id(declared),
                                                       .components = {Component::Light, Component::Integer,
                                                                      Component::Real}}}});
        (void)dev.set(0, Component::Integer, std::int64_t{0});
        (void)dev.set(0, Component::Real, 0.0);
        devices[declared].store(&dev, std::memory_order_release);
      }
    };
    declare_batch();
    while (!stop.load(std::memory_order_acquire)) {
      pollfd pfd{provider.fd(), POLLIN, 0};
      ::poll(&pfd, 1, 20);
      if (auto st = provider.process(); !st) {
        report_failure(s, "provider: " + st.error().to_string());
        return;
      }
      if (declared < setup.devices && devices[declared - 1].load(std::memory_order_acquire)->online()) declare_batch();
    }
  });
  // Device::set is safe from any thread: this one plays the device task writing its new state.
  run_commit_driver(s, [&](std::uint32_t device, std::uint64_t value) {
    auto* dev = devices[device].load(std::memory_order_acquire);
    if (dev == nullptr) return report_failure(s, fmt::format("provider: {} not declared yet", device_id(device)));
    if (auto st = dev->set(0, Component::Real, static_cast<double>(value)); st != floe::sdk::WriteStatus::kOk)
      report_failure(s, fmt::format("provider: commit to {}: {}", device_id(device), floe::ipc::to_string(st)));
  });
  stop.store(true, std::memory_order_release);
  loop.join();
  return 0;
}

namespace {

class FloeClient final : public RequestClient {
 public:
  FloeClient(floe::client::Client c, bool tcp) : client_(std::move(c)), tcp_(tcp) {}
  bool set(std::uint32_t device, std::uint64_t seq, std::string& error) override {
    // TCP: floe-esphome turns Dimmer into the light's brightness, which carries the sequence.
    auto r = tcp_ ? client_.set(tcp_device_name(device) + ".light", "Dimmer",
                                fmt::format("{}", static_cast<double>(brightness_of_seq(seq))))
                  : client_.set(entity_id(device), "Integer", std::to_string(seq));
    if (!r) {
      error = r.error().message;
      return false;
    }
    for (const auto& one : r->results()) {
      if (!one.ok()) {
        error = one.message();
        return false;
      }
    }
    return true;
  }

 private:
  floe::client::Client client_;
  bool tcp_;
};

class FloeWatcher final : public CommitWatcher {
 public:
  explicit FloeWatcher(floe::client::Client c) : client_(std::move(c)) {}
  bool start(std::string& error) {
    if (auto w = client_.watch("max Real"); !w) {
      error = w.error().message;
      return false;
    }
    return true;
  }
  // `max Real` over values that only grow: a result of commit s includes commits 1..s-1, which
  // the core may have evaluated together with it (one event for both).
  [[nodiscard]] bool sees_every_earlier_commit() const override { return true; }
  bool next(std::uint64_t& seq, std::chrono::milliseconds timeout, std::string& error) override {
    seq = 0;
    auto e = client_.next_event(-1, timeout);
    if (!e) {
      if (e.error().exit == floe::client::ExitCode::kTimeout) return true;
      error = e.error().message;
      return false;
    }
    const auto& result = e->event.result();
    if (result.has_number() && result.number() > 0) seq = static_cast<std::uint64_t>(result.number());
    return true;
  }

 private:
  floe::client::Client client_;
};

}  // namespace

int run_floe_clients(Shared& s, const FloeSetup& setup) {
  spdlog::set_level(spdlog::level::warn);
  return run_clients_process(
      s, setup.clients,
      [&](std::uint32_t, std::string& error) -> std::unique_ptr<RequestClient> {
        auto c = floe::client::Client::connect(client_options(setup));
        if (!c) {
          error = c.error().message;
          return nullptr;
        }
        return std::make_unique<FloeClient>(std::move(*c), setup.tcp != nullptr);
      },
      [&](std::string& error) -> std::unique_ptr<CommitWatcher> {
        auto c = floe::client::Client::connect(client_options(setup));
        if (!c) {
          error = c.error().message;
          return nullptr;
        }
        auto w = std::make_unique<FloeWatcher>(std::move(*c));
        if (!w->start(error)) return nullptr;
        // TCP: the watched Real is the number's counter, the devices process knows its commit.
        if (setup.tcp != nullptr) return translate_commits(std::move(w), *setup.tcp);
        return w;
      });
}

}  // namespace floe::bench::paths
