// floe-esphome's YAML config: good files parse with their defaults, bad ones give an error that
// names the file and the line.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "floe/esphome/config.hpp"
#include "floe/esphome/transport.hpp"

namespace floe::esphome {
namespace {

using namespace std::chrono_literals;

Psk test_key() {
  Psk k{};
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(i * 7 + 1);
  return k;
}

// The error message of a config that must fail.
std::string error_of(const std::string& yaml) {
  auto c = parse_config(yaml, "test.yaml");
  EXPECT_FALSE(c.has_value()) << "accepted:\n" << yaml;
  return c ? std::string{} : c.error().message;
}

TEST(EsphomeConfig, MinimalFileGetsDefaults) {
  auto c = parse_config("devices:\n  - host: 10.0.0.5\n", "test.yaml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->name, "esphome");
  EXPECT_EQ(c->socket_dir, "");
  EXPECT_EQ(c->request_timeout, 5000ms);
  EXPECT_EQ(c->reconnect_min, 1000ms);
  EXPECT_EQ(c->reconnect_max, 60000ms);
  ASSERT_EQ(c->devices.size(), 1u);
  const auto& d = c->devices[0];
  EXPECT_EQ(d.host, "10.0.0.5");
  EXPECT_EQ(d.port, 6053);
  EXPECT_EQ(d.name, "");
  EXPECT_FALSE(d.psk.has_value());
  EXPECT_TRUE(d.groups.empty());
  EXPECT_EQ(d.line, 2);
  EXPECT_EQ(d.address(), "10.0.0.5:6053");
}

TEST(EsphomeConfig, FullFileParsesEveryKey) {
  const std::string yaml = "name: esphome-home\n"
                           "socket_dir: /tmp/floe-x\n"
                           "request_timeout_ms: 2500\n"
                           "keepalive_ms: 15000\n"
                           "reconnect:\n"
                           "  min_ms: 200\n"
                           "  max_ms: 8000\n"
                           "devices:\n"
                           "  - host: kitchen.local\n"
                           "    port: 6054\n"
                           "    name: kitchen\n"
                           "    encryption_key: \"" + encode_psk(test_key()) + "\"\n"
                           "    groups: [kitchen, lights]\n"
                           "  - host: 10.0.0.6\n"
                           "    groups: hall\n";
  auto c = parse_config(yaml, "test.yaml");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->name, "esphome-home");
  EXPECT_EQ(c->socket_dir, "/tmp/floe-x");
  EXPECT_EQ(c->request_timeout, 2500ms);
  EXPECT_EQ(c->keepalive, 15000ms);
  EXPECT_EQ(c->reconnect_min, 200ms);
  EXPECT_EQ(c->reconnect_max, 8000ms);
  ASSERT_EQ(c->devices.size(), 2u);
  EXPECT_EQ(c->devices[0].host, "kitchen.local");
  EXPECT_EQ(c->devices[0].port, 6054);
  EXPECT_EQ(c->devices[0].name, "kitchen");
  ASSERT_TRUE(c->devices[0].psk.has_value());
  EXPECT_EQ(*c->devices[0].psk, test_key());
  EXPECT_EQ(c->devices[0].groups, (std::vector<std::string>{"kitchen", "lights"}));
  EXPECT_EQ(c->devices[0].line, 9);
  EXPECT_EQ(c->devices[1].groups, (std::vector<std::string>{"hall"}));
  EXPECT_EQ(c->devices[1].line, 14);
}

TEST(EsphomeConfig, BadFilesNameTheLine) {
  EXPECT_EQ(error_of("devices:\n  - host: a\n    prot: 6053\n"),
            "test.yaml:3: unknown device key 'prot' (expected host, port, name, encryption_key, groups)");
  EXPECT_EQ(error_of("devices:\n  - host: a\n    port: 70000\n"), "test.yaml:3: 'port' = 70000 is out of range [1, 65535]");
  EXPECT_EQ(error_of("devices:\n  - host: a\n    port: http\n"), "test.yaml:3: 'port' must be an integer, not 'http'");
  EXPECT_EQ(error_of("devices:\n  - host: a\n  - port: 6053\n"), "test.yaml:3: device without 'host'");
  EXPECT_EQ(error_of("devices:\n  - host: a\n    name: Kitchen Light\n"),
            "test.yaml:3: name 'Kitchen Light' must be 1..64 characters of [a-z0-9_.-] (it is the floe device id)");
  EXPECT_EQ(error_of("devices:\n  - host: a\n    name: k\n  - host: b\n    name: k\n"),
            "test.yaml:4: device name 'k' is used twice");
  EXPECT_EQ(error_of("devices:\n  - host: a\n  - host: a\n    port: 6053\n"), "test.yaml:3: device a:6053 is listed twice");
  EXPECT_EQ(error_of("colour: blue\ndevices: []\n"),
            "test.yaml:1: unknown key 'colour' (expected name, socket_dir, request_timeout_ms, keepalive_ms, reconnect, "
            "devices)");
  EXPECT_EQ(error_of("reconnect: {min_ms: 500, max_ms: 100}\ndevices: []\n"),
            "test.yaml:1: reconnect.max_ms (100) is below reconnect.min_ms (500)");
  EXPECT_EQ(error_of("request_timeout_ms: 0\ndevices: []\n"), "test.yaml:1: 'request_timeout_ms' = 0 is out of range [1, 3600000]");
  EXPECT_EQ(error_of("devices: {host: a}\n"), "test.yaml:1: 'devices' must be a list");
  EXPECT_EQ(error_of("name: x\n"), "test.yaml: no 'devices' list");
  EXPECT_EQ(error_of("- host: a\n"), "test.yaml: expected a map with a 'devices' list");
  EXPECT_EQ(error_of("devices:\n  - host: a\n    groups: [Bad Group]\n"),
            "test.yaml:3: group 'Bad Group' must be 1..64 characters of [a-z0-9_.-]");
  EXPECT_EQ(error_of("devices:\n  - host: a\n    port:\n"), "test.yaml:3: 'port' has no value");
  EXPECT_EQ(error_of("devices:\n  - host: a\n    port: [1]\n"), "test.yaml:3: 'port' must be an integer, not a list");
}

// yaml-cpp keeps both entries of a key written twice; a config that says two things is refused.
TEST(EsphomeConfig, AKeyGivenTwiceIsRefusedWithBothLines) {
  EXPECT_EQ(error_of("devices:\n  - host: a\n    name: a\n    name: b\n"),
            "test.yaml:4: 'name' is given twice (first on line 3)");
  EXPECT_EQ(error_of("name: x\ndevices: []\nname: y\n"), "test.yaml:3: 'name' is given twice (first on line 1)");
  EXPECT_EQ(error_of("reconnect:\n  min_ms: 5\n  min_ms: 6\ndevices: []\n"),
            "test.yaml:3: 'min_ms' is given twice (first on line 2)");
}

TEST(EsphomeConfig, BadKeyIsRefusedWithItsLine) {
  const std::string msg = error_of("devices:\n  - host: a\n    encryption_key: not-base64!\n");
  EXPECT_EQ(msg.rfind("test.yaml:3: encryption_key is not a valid key", 0), 0u) << msg;
  // 16 bytes of valid base64: the wrong length.
  const std::string short_key = error_of("devices:\n  - host: a\n    encryption_key: AAAAAAAAAAAAAAAAAAAAAA==\n");
  EXPECT_EQ(short_key.rfind("test.yaml:3: encryption_key is not a valid key", 0), 0u) << short_key;
}

TEST(EsphomeConfig, YamlSyntaxErrorsNameLineAndColumn) {
  const std::string msg = error_of("devices:\n  - host: a\n    groups: [a, b\n");
  EXPECT_EQ(msg.rfind("test.yaml:", 0), 0u) << msg;
  EXPECT_NE(msg.find(':', 10), std::string::npos) << msg;
  const std::string tabs = error_of("devices:\n\t- host: a\n");
  EXPECT_EQ(tabs.rfind("test.yaml:2:", 0), 0u) << tabs;
}

TEST(EsphomeConfig, LoadConfigReadsAFileAndReportsAMissingOne) {
  char tmpl[] = "/tmp/floe-esphome-config-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string path = dir + "/floe-esphome.yaml";
  {
    std::ofstream(path) << "devices:\n  - host: 127.0.0.1\n    port: 7000\n";
  }
  auto c = load_config(path);
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->devices.at(0).port, 7000);
  auto missing = load_config(dir + "/nope.yaml");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().to_string().find(dir + "/nope.yaml"), std::string::npos);
  {
    std::ofstream(path) << "devices:\n  - host: 127.0.0.1\n    port: -1\n";
  }
  auto bad = load_config(path);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message, path + ":3: 'port' = -1 is out of range [1, 65535]");
  std::filesystem::remove_all(dir);
}

TEST(EsphomeConfig, SlugifyMakesValidIds) {
  EXPECT_EQ(slugify("Kitchen Light"), "kitchen_light");
  EXPECT_EQ(slugify("  Living   room!! "), "living_room");
  EXPECT_EQ(slugify("esp-01.garage"), "esp-01.garage");
  EXPECT_EQ(slugify("???"), "device");
  EXPECT_EQ(slugify(std::string(100, 'a')).size(), 64u);
  for (const char* s : {"Kitchen Light", "a b c", "Ünïcödé", "x__y", "-lead"}) EXPECT_TRUE(is_valid_id(slugify(s))) << s;
  EXPECT_FALSE(is_valid_id(""));
  EXPECT_FALSE(is_valid_id("Upper"));
  EXPECT_FALSE(is_valid_id(std::string(65, 'a')));
  EXPECT_TRUE(is_valid_id("kitchen.relay_1"));
}

}  // namespace
}  // namespace floe::esphome
