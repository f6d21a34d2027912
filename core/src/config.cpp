#include "floe/core/config.hpp"


#include <unistd.h>

#include <algorithm>
#include <bit>
#include <functional>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "floe/ipc/channel.hpp"
#include "floe/ipc/protocol.hpp"
#include "floe/ipc/tree.hpp"

namespace floe::core {
namespace {

constexpr std::string_view kOp = "config";

tl::unexpected<Error> key_error(std::string_view origin, std::string_view key, std::string_view what) {
  return logic_error(kOp, fmt::format("{}: key '{}': {}", origin, key, what));
}

template <typename T>
Result<T> get_int(const toml::node& n, std::string_view origin, std::string_view key, std::int64_t lo,
                  std::int64_t hi) {
  auto v = n.value<std::int64_t>();
  if (!n.is_integer() || !v) return key_error(origin, key, "expected an integer");
  if (*v < lo || *v > hi) return key_error(origin, key, fmt::format("{} is out of range [{}, {}]", *v, lo, hi));
  return static_cast<T>(*v);
}

Result<std::string> get_string(const toml::node& n, std::string_view origin, std::string_view key) {
  if (!n.is_string()) return key_error(origin, key, "expected a string");
  return std::string(*n.value<std::string_view>());
}

Result<std::size_t> get_capacity(const toml::node& n, std::string_view origin, std::string_view key) {
  auto v = get_int<std::size_t>(n, origin, key, 256, std::int64_t{1} << 30);
  if (!v) return v;
  if (!std::has_single_bit(*v)) return key_error(origin, key, fmt::format("{} is not a power of two", *v));
  return v;
}

// The [limits] table: every key is a bounded integer.
Status parse_limits(const toml::table& t, std::string_view origin, Limits& l) {
  struct Key {
    std::string_view name;
    std::int64_t lo, hi;
    std::function<void(std::int64_t)> store;
  };
  const Key keys[] = {
      {"max_providers", 1, 4096, [&](std::int64_t v) { l.max_providers = static_cast<unsigned>(v); }},
      {"max_devices_per_provider", 1, 65536, [&](std::int64_t v) { l.max_devices_per_provider = static_cast<unsigned>(v); }},
      {"max_known_devices_per_uid", 1, 1 << 20,
       [&](std::int64_t v) { l.max_known_devices_per_uid = static_cast<unsigned>(v); }},
      // A device tree holds at most ipc::kTreeMaxEntities: a higher limit would only turn LIMIT
      // into MALFORMED for the declarations in between.
      {"max_entities_per_device", 1, ipc::kTreeMaxEntities,
       [&](std::int64_t v) { l.max_entities_per_device = static_cast<unsigned>(v); }},
      {"max_entities_per_provider", 1, 1 << 24, [&](std::int64_t v) { l.max_entities_per_provider = static_cast<unsigned>(v); }},
      {"max_region_bytes_per_provider", std::int64_t{1} << 20, std::int64_t{1} << 40,
       [&](std::int64_t v) { l.max_region_bytes_per_provider = static_cast<std::uint64_t>(v); }},
      {"max_message_bytes", 256, static_cast<std::int64_t>(ipc::kMaxPacketBytes),
       [&](std::int64_t v) { l.max_message_bytes = static_cast<std::size_t>(v); }},
      {"provider_messages_per_second", 1, 10'000'000,
       [&](std::int64_t v) { l.provider_messages_per_second = static_cast<unsigned>(v); }},
      {"provider_message_burst", 1, 10'000'000, [&](std::int64_t v) { l.provider_message_burst = static_cast<unsigned>(v); }},
      {"max_request_bytes", 64, static_cast<std::int64_t>(ipc::kMaxPacketBytes),
       [&](std::int64_t v) { l.max_request_bytes = static_cast<std::size_t>(v); }},
      {"client_requests_per_second", 1, 10'000'000,
       [&](std::int64_t v) { l.client_requests_per_second = static_cast<unsigned>(v); }},
      {"client_request_burst", 1, 10'000'000, [&](std::int64_t v) { l.client_request_burst = static_cast<unsigned>(v); }},
      {"max_queued_client_bytes", std::int64_t{64} << 10, std::int64_t{1} << 40,
       [&](std::int64_t v) { l.max_queued_client_bytes = static_cast<std::size_t>(v); }},
      {"max_watches_per_client", 1, 65536, [&](std::int64_t v) { l.max_watches_per_client = static_cast<unsigned>(v); }},
      {"client_stall_timeout_ms", 100, 3'600'000,
       [&](std::int64_t v) { l.client_stall_timeout = std::chrono::milliseconds(v); }},
      {"client_hello_timeout_ms", 100, 600'000,
       [&](std::int64_t v) { l.client_hello_timeout = std::chrono::milliseconds(v); }},
  };
  for (const auto& [k, node] : t) {
    // A named copy: clang (Debian 12's 14) cannot capture a structured binding in a lambda.
    const std::string_view name = k.str();
    const std::string full = fmt::format("limits.{}", name);
    const auto* key = std::find_if(std::begin(keys), std::end(keys), [&](const Key& x) { return x.name == name; });
    if (key == std::end(keys)) return key_error(origin, full, "unknown key");
    auto v = get_int<std::int64_t>(node, origin, full, key->lo, key->hi);
    if (!v) return tl::unexpected(v.error());
    key->store(*v);
  }
  return {};
}

}  // namespace

Result<Config> parse_config(std::string_view text, std::string_view origin) {
  Config cfg;
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    const auto& at = e.source().begin;
    return logic_error(kOp, fmt::format("{}:{}:{}: {}", origin, at.line, at.column, e.description()));
  }
  for (const auto& [k, node] : root) {
    const std::string_view key = k.str();
    if (key == "socket_dir") {
      auto v = get_string(node, origin, key);
      if (!v) return tl::unexpected(v.error());
      cfg.socket_dir = *v;
    } else if (key == "state_file") {
      auto v = get_string(node, origin, key);
      if (!v) return tl::unexpected(v.error());
      cfg.state_file = *v;
    } else if (key == "worker_threads") {
      auto v = get_int<unsigned>(node, origin, key, 0, 256);
      if (!v) return tl::unexpected(v.error());
      cfg.worker_threads = *v;
    } else if (key == "client_threads") {
      auto v = get_int<unsigned>(node, origin, key, 0, 256);
      if (!v) return tl::unexpected(v.error());
      cfg.client_threads = *v;
    } else if (key == "max_clients") {
      auto v = get_int<unsigned>(node, origin, key, 1, 4096);
      if (!v) return tl::unexpected(v.error());
      cfg.max_clients = *v;
    } else if (key == "request_timeout_ms") {
      auto v = get_int<std::int64_t>(node, origin, key, 1, 3'600'000);
      if (!v) return tl::unexpected(v.error());
      cfg.request_timeout = std::chrono::milliseconds(*v);
    } else if (key == "provider_timeout_ms") {
      auto v = get_int<std::int64_t>(node, origin, key, 50, 3'600'000);
      if (!v) return tl::unexpected(v.error());
      cfg.provider_timeout = std::chrono::milliseconds(*v);
    } else if (key == "allowed_uids") {
      const toml::array* arr = node.as_array();
      if (arr == nullptr) return key_error(origin, key, "expected an array of uids");
      cfg.allowed_uids.clear();
      for (const auto& item : *arr) {
        auto v = get_int<uid_t>(item, origin, key, 0, 0xFFFFFFFE);
        if (!v) return tl::unexpected(v.error());
        cfg.allowed_uids.push_back(*v);
      }
    } else if (key == "bind_devices_to_uid") {
      const auto* b = node.as_boolean();
      if (b == nullptr) return key_error(origin, key, "expected true or false");
      cfg.bind_devices_to_uid = b->get();
    } else if (key == "log_level") {
      auto v = get_string(node, origin, key);
      if (!v) return tl::unexpected(v.error());
      static const std::set<std::string, std::less<>> kLevels{"trace", "debug", "info", "warn",
                                                              "warning", "error", "critical", "off"};
      if (!kLevels.contains(*v)) {
        return key_error(origin, key, fmt::format("'{}' is not one of trace, debug, info, warn, error, critical, off", *v));
      }
      cfg.log_level = *v;
    } else if (key == "loop_backend") {
      auto v = get_string(node, origin, key);
      if (!v) return tl::unexpected(v.error());
      auto b = ipc::parse_loop_backend(*v);
      if (!b) return key_error(origin, key, fmt::format("'{}' is not one of auto, io_uring, epoll", *v));
      cfg.loop_backend = *b;
    } else if (key == "limits") {
      const toml::table* t = node.as_table();
      if (t == nullptr) return key_error(origin, key, "expected a table");
      FLOE_TRY(parse_limits(*t, origin, cfg.limits));
    } else if (key == "rings") {
      const toml::table* t = node.as_table();
      if (t == nullptr) return key_error(origin, key, "expected a table");
      for (const auto& [rk, rn] : *t) {
        const std::string full = fmt::format("rings.{}", rk.str());
        if (rk.str() == "tx_capacity") {
          auto v = get_capacity(rn, origin, full);
          if (!v) return tl::unexpected(v.error());
          cfg.tx_capacity = *v;
        } else if (rk.str() == "rx_capacity") {
          auto v = get_capacity(rn, origin, full);
          if (!v) return tl::unexpected(v.error());
          cfg.rx_capacity = *v;
        } else if (rk.str() == "notify") {
          auto v = get_string(rn, origin, full);
          if (!v) return tl::unexpected(v.error());
          auto m = ipc::parse_notify_mode(*v);
          if (!m) return key_error(origin, full, fmt::format("'{}' is not one of eventfd, futex, spin, poll", *v));
          cfg.notify = *m;
        } else if (rk.str() == "poll_interval_us") {
          auto v = get_int<std::int64_t>(rn, origin, full, 10, 1'000'000);
          if (!v) return tl::unexpected(v.error());
          cfg.poll_interval = std::chrono::microseconds(*v);
        } else if (rk.str() == "doorbells") {
          const auto* b = rn.as_boolean();
          if (b == nullptr) return key_error(origin, full, "expected true or false");
          cfg.doorbells = b->get();
        } else {
          return key_error(origin, full, "unknown key");
        }
      }
    } else {
      return key_error(origin, key, "unknown key");
    }
  }
  return cfg;
}

Result<Config> load_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) return sys_errorf(kOp, "cannot open config file {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path);
}

void resolve_defaults(Config& config) {
  if (config.socket_dir.empty()) config.socket_dir = ipc::default_socket_dir();
  if (config.state_file.empty()) config.state_file = config.socket_dir + "/state.json";
  if (config.worker_threads == 0) config.worker_threads = std::max(1U, std::thread::hardware_concurrency());
  if (config.client_threads == 0) config.client_threads = config.worker_threads;
  if (config.allowed_uids.empty()) {
    config.allowed_uids.push_back(::geteuid());
    if (::geteuid() != 0) config.allowed_uids.push_back(0);
  }
}

}  // namespace floe::core
