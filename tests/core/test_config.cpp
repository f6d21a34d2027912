#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "floe/core/config.hpp"

namespace floe::core {
namespace {

TEST(Config, EmptyTextKeepsEveryDefault) {
  auto c = parse_config("");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_TRUE(c->socket_dir.empty());
  EXPECT_EQ(c->worker_threads, 0U);
  EXPECT_EQ(c->client_threads, 0U);
  EXPECT_EQ(c->max_clients, 64U);
  EXPECT_EQ(c->request_timeout, std::chrono::milliseconds(5000));
  EXPECT_EQ(c->tx_capacity, 16U * 1024);
  EXPECT_EQ(c->rx_capacity, 64U * 1024);
  EXPECT_EQ(c->notify, ipc::NotifyMode::kEventfd);
  EXPECT_TRUE(c->doorbells);
  EXPECT_EQ(c->log_level, "info");
  EXPECT_EQ(c->provider_timeout, std::chrono::milliseconds(10000));
  EXPECT_EQ(c->poll_interval, std::chrono::microseconds(1000));
}

TEST(Config, ResolveDefaultsFillsSocketDirStateFileThreadsAndUids) {
  ::setenv("FLOE_SOCKET_DIR", "/tmp/floe-config-test", 1);
  Config c;
  resolve_defaults(c);
  ::unsetenv("FLOE_SOCKET_DIR");
  EXPECT_EQ(c.socket_dir, "/tmp/floe-config-test");
  EXPECT_EQ(c.state_file, "/tmp/floe-config-test/state.json");
  EXPECT_GE(c.worker_threads, 1U);
  EXPECT_EQ(c.client_threads, c.worker_threads);
  ASSERT_FALSE(c.allowed_uids.empty());
  EXPECT_EQ(c.allowed_uids.front(), ::geteuid());
}

TEST(Config, EveryKeyIsRead) {
  auto c = parse_config(R"(
socket_dir = "/run/x"
state_file = "/var/lib/x.json"
worker_threads = 3
client_threads = 5
allowed_uids = [1000, 0]
request_timeout_ms = 250
provider_timeout_ms = 700
max_clients = 4000
bind_devices_to_uid = false
log_level = "debug"
loop_backend = "epoll"
[rings]
tx_capacity = 4096
rx_capacity = 131072
notify = "futex"
poll_interval_us = 200
doorbells = false
)");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->socket_dir, "/run/x");
  EXPECT_EQ(c->state_file, "/var/lib/x.json");
  EXPECT_EQ(c->worker_threads, 3U);
  EXPECT_EQ(c->allowed_uids, (std::vector<uid_t>{1000, 0}));
  EXPECT_EQ(c->request_timeout, std::chrono::milliseconds(250));
  EXPECT_EQ(c->client_threads, 5U);
  EXPECT_EQ(c->max_clients, 4000U);
  EXPECT_FALSE(c->bind_devices_to_uid);
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_EQ(c->loop_backend, ipc::LoopBackend::kEpoll);
  EXPECT_EQ(c->tx_capacity, 4096U);
  EXPECT_EQ(c->rx_capacity, 131072U);
  EXPECT_EQ(c->provider_timeout, std::chrono::milliseconds(700));
  EXPECT_EQ(c->notify, ipc::NotifyMode::kFutex);
  EXPECT_EQ(c->poll_interval, std::chrono::microseconds(200));
  EXPECT_FALSE(c->doorbells);
  Config r = *c;
  resolve_defaults(r);
  EXPECT_EQ(r.socket_dir, "/run/x");
  EXPECT_EQ(r.worker_threads, 3U);
  EXPECT_EQ(r.client_threads, 5U);
  EXPECT_EQ(r.allowed_uids.size(), 2U);
}

void expect_error(const char* text, const char* needle) {
  auto c = parse_config(text, "core.toml");
  ASSERT_FALSE(c) << "accepted: " << text;
  EXPECT_NE(c.error().message.find(needle), std::string::npos) << c.error().message;
}

TEST(Config, EveryNotifyStrategyIsAccepted) {
  for (auto [text, mode] : {std::pair{"eventfd", ipc::NotifyMode::kEventfd}, std::pair{"futex", ipc::NotifyMode::kFutex},
                            std::pair{"spin", ipc::NotifyMode::kSpin}, std::pair{"poll", ipc::NotifyMode::kPoll}}) {
    auto c = parse_config(std::string("[rings]\nnotify = \"") + text + "\"");
    ASSERT_TRUE(c) << text << ": " << c.error().to_string();
    EXPECT_EQ(c->notify, mode) << text;
  }
}

TEST(Config, UnknownKeysAreNamed) {
  expect_error("sokcet_dir = \"/x\"", "key 'sokcet_dir': unknown key");
  expect_error("[rings]\ntx_capacty = 1024", "key 'rings.tx_capacty': unknown key");
}

TEST(Config, WrongTypesAndRangesAreNamed) {
  expect_error("worker_threads = \"two\"", "key 'worker_threads': expected an integer");
  expect_error("worker_threads = -1", "key 'worker_threads'");
  expect_error("client_threads = 257", "key 'client_threads': 257 is out of range [0, 256]");
  expect_error("max_clients = 4097", "key 'max_clients': 4097 is out of range [1, 4096]");
  expect_error("request_timeout_ms = 0", "out of range");
  expect_error("allowed_uids = 5", "key 'allowed_uids'");
  expect_error("[rings]\ntx_capacity = 1000", "not a power of two");
  expect_error("[rings]\nnotify = \"semaphore\"", "key 'rings.notify': 'semaphore' is not one of eventfd");
  expect_error("[rings]\npoll_interval_us = 0", "key 'rings.poll_interval_us'");
  expect_error("[rings]\ndoorbells = \"yes\"", "key 'rings.doorbells': expected true or false");
  expect_error("provider_timeout_ms = 10", "key 'provider_timeout_ms'");
  expect_error("log_level = \"loud\"", "key 'log_level'");
  expect_error("loop_backend = \"kqueue\"", "key 'loop_backend'");
  expect_error("bind_devices_to_uid = 1", "key 'bind_devices_to_uid': expected true or false");
  expect_error("rings = 3", "key 'rings': expected a table");
}

// Every [limits] value, in the order of the struct (and of docs/CORE.md).
std::vector<std::size_t> limit_values(const Limits& l) {
  return {l.max_providers,          l.max_devices_per_provider,     l.max_entities_per_device,
          l.max_entities_per_provider, l.max_region_bytes_per_provider, l.max_message_bytes,
          l.provider_messages_per_second, l.provider_message_burst, l.max_request_bytes,
          l.client_requests_per_second, l.client_request_burst,   l.max_queued_client_bytes, l.max_watches_per_client,
          static_cast<std::size_t>(l.client_stall_timeout.count()), l.max_known_devices_per_uid,
          static_cast<std::size_t>(l.client_hello_timeout.count())};
}

TEST(Config, LimitsDefaultToValuesAHomeNeverReaches) {
  auto c = parse_config("");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(limit_values(c->limits),
            (std::vector<std::size_t>{64, 4096, 1024, 65536, std::size_t{4} << 30, 65536, 1000, 10000, 65536, 20000,
                                      100000, std::size_t{256} << 20, 1024, 60000, 8192, 5000}));
}

TEST(Config, EveryLimitsKeyIsRead) {
  auto c = parse_config(R"(
[limits]
max_providers = 3
max_devices_per_provider = 5
max_entities_per_device = 7
max_entities_per_provider = 11
max_region_bytes_per_provider = 2097152
max_message_bytes = 4096
provider_messages_per_second = 13
provider_message_burst = 17
max_request_bytes = 2048
client_requests_per_second = 19
client_request_burst = 23
max_queued_client_bytes = 131072
max_watches_per_client = 29
client_stall_timeout_ms = 3100
max_known_devices_per_uid = 31
client_hello_timeout_ms = 3700
)");
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(limit_values(c->limits),
            (std::vector<std::size_t>{3, 5, 7, 11, 2097152, 4096, 13, 17, 2048, 19, 23, 131072, 29, 3100, 31, 3700}));
}

TEST(Config, BadLimitsAreNamed) {
  expect_error("limits = 1", "key 'limits': expected a table");
  expect_error("[limits]\nmax_provider = 3", "key 'limits.max_provider': unknown key");
  expect_error("[limits]\nmax_providers = \"many\"", "key 'limits.max_providers': expected an integer");
  expect_error("[limits]\nmax_providers = 0", "key 'limits.max_providers': 0 is out of range [1, 4096]");
  expect_error("[limits]\nmax_watches_per_client = -4", "key 'limits.max_watches_per_client'");
  expect_error("[limits]\nmax_region_bytes_per_provider = 1000", "key 'limits.max_region_bytes_per_provider'");
  // The channel never delivers more than a 64 KiB packet, so a larger limit would be a lie.
  expect_error("[limits]\nmax_message_bytes = 65537", "key 'limits.max_message_bytes': 65537 is out of range");
  expect_error("[limits]\nmax_entities_per_device = 4097",
               "key 'limits.max_entities_per_device': 4097 is out of range [1, 4096]");
  expect_error("[limits]\nmax_request_bytes = 10", "key 'limits.max_request_bytes': 10 is out of range");
  expect_error("[limits]\nclient_request_burst = 1.5", "key 'limits.client_request_burst': expected an integer");
  expect_error("[limits]\nprovider_messages_per_second = 0", "key 'limits.provider_messages_per_second'");
  expect_error("[limits]\nmax_queued_client_bytes = 65535",
               "key 'limits.max_queued_client_bytes': 65535 is out of range");
  expect_error("[limits]\nclient_stall_timeout_ms = 99", "key 'limits.client_stall_timeout_ms': 99 is out of range");
  expect_error("[limits]\nclient_hello_timeout_ms = 99", "key 'limits.client_hello_timeout_ms': 99 is out of range");
  expect_error("[limits]\nmax_known_devices_per_uid = 0", "key 'limits.max_known_devices_per_uid': 0 is out of range");
}

TEST(Config, SyntaxErrorsCarryThePosition) { expect_error("socket_dir = ", "core.toml:1:"); }

TEST(Config, MissingFileIsAnError) {
  auto c = load_config("/nonexistent/floe.toml");
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("/nonexistent/floe.toml"), std::string::npos);
}

}  // namespace
}  // namespace floe::core
