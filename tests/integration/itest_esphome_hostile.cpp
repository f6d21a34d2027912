// Hostile ESPHome devices against a real floe-esphome (with a real floe-core): devices on real TCP
// sockets (FakeDevice, tests/support/esphome_fake.hpp) that drop the connection mid-frame, stall
// mid-frame, send garbage (random bytes, an absurd frame length, a valid frame with an
// undecodable message, a Noise frame that does not decrypt) or flood. Each time floe-esphome logs
// a clear reason naming the device, drops it and reconnects with backoff, never crashes, and a
// well-behaved device served by the same floe-esphome keeps answering get and set (through the
// floe client library). Waits are bounded polls, never thresholds.
#include <signal.h>

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "client.hpp"
#include "support/esphome_fake.hpp"
#include "support/integration.hpp"
#include "support/process.hpp"

#if defined(FLOE_CORE_BIN) && defined(FLOE_ESPHOME_BIN)

namespace floe::test {
namespace {

using namespace std::chrono_literals;
using esphome::MsgType;
using Transport = esphome::Transport;

/// The plaintext frame header: indicator 0, varint length, varint type.
std::string plain_header(std::uint64_t length, std::uint16_t type) {
  std::string out(1, '\0');
  for (std::uint64_t v : {length, std::uint64_t{type}}) {
    do {
      const auto b = static_cast<std::uint8_t>(v & 0x7F);
      v >>= 7;
      out.push_back(static_cast<char>(v != 0 ? (b | 0x80) : b));
    } while (v != 0);
  }
  return out;
}

std::string random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

class EsphomeHostile : public ::testing::Test {
 protected:
  void TearDown() override {
    client_.reset();
    if (provider_) {
      EXPECT_TRUE(provider_->alive()) << "floe-esphome died";
      provider_->signal(SIGTERM);
      EXPECT_EQ(provider_->finish(), 0) << "floe-esphome did not stop cleanly";
      provider_.reset();
    }
    if (core_) {
      core_->signal(SIGTERM);
      EXPECT_EQ(core_->finish(), 0);
      core_.reset();
    }
    if (HasFailure()) {
      dir_.keep();
      for (const char* name : {"core.log", "esphome.log"}) {
        std::string text = slurp(dir_ / name);
        if (text.size() > 12000) text = text.substr(0, 4000) + "\n...\n" + text.substr(text.size() - 8000);
        std::fprintf(stderr, "---- %s (kept in %s)\n%s\n", name, dir_.path().c_str(), text.c_str());
      }
    }
  }

  struct Entry {
    std::string name;
    std::uint16_t port;
    std::optional<esphome::Psk> key;
  };

  /// floe-core, floe-esphome serving `devices`, a client; every device (or those of `wait_for`) online.
  void start(const std::vector<Entry>& devices, std::vector<std::string> wait_for = {}) {
    std::ofstream yaml(dir_ / "floe-esphome.yaml");
    yaml << "reconnect: {min_ms: 100, max_ms: 800}\nkeepalive_ms: 200\nrequest_timeout_ms: 20000\ndevices:\n";
    for (const auto& d : devices) {
      yaml << "  - host: 127.0.0.1\n    port: " << d.port << "\n";
      if (!d.name.empty()) yaml << "    name: " << d.name << "\n";
      if (d.key) yaml << "    encryption_key: \"" << esphome::encode_psk(*d.key) << "\"\n";
    }
    yaml.close();
    core_.emplace(FLOE_CORE_BIN, std::vector<std::string>{"--socket-dir", dir_ / "s"}, dir_ / "core.log");
    ASSERT_TRUE(eventually([&] { return connect_client() || !core_->alive(); }));
    ASSERT_TRUE(core_->alive()) << "floe-core exited";
    provider_.emplace(FLOE_ESPHOME_BIN,
                      std::vector<std::string>{"--config", dir_ / "floe-esphome.yaml", "--socket-dir", dir_ / "s", "-v"},
                      dir_ / "esphome.log");
    if (wait_for.empty()) {
      for (const auto& d : devices) wait_for.push_back(d.name);
    }
    for (const auto& d : wait_for) {
      ASSERT_TRUE(eventually([&] { return online(d); })) << d;
      // Its first states have arrived (the temperature comes last), so no state sent before a
      // test's set can be taken for the answer to it.
      ASSERT_TRUE(eventually([&] {
        auto t = client_->get(d + ".temperature", "Real");
        return t && t->value().real() == 20.0;
      })) << d;
    }
  }

  bool connect_client() {
    auto c = client::Client::connect({.socket_dir = dir_ / "s", .timeout = 20s, .peer_name = "itest"});
    if (!c) return false;
    client_.emplace(std::move(*c));
    return true;
  }
  bool online(const std::string& device) {
    auto list = client_->list_devices();
    if (!list) return false;
    for (const auto& d : list->devices()) {
      if (d.name() == device) return d.online();
    }
    return false;
  }

  /// The well-behaved device "good": a set goes through to it and reads back.
  void expect_good_serves(bool relay) {
    const std::string value = relay ? "true" : "false";
    auto r = client_->set("good.relay", "Switch", value);
    ASSERT_TRUE(r) << r.error().message;
    auto v = client_->get("good.relay", "Switch");
    ASSERT_TRUE(v) << v.error().message;
    EXPECT_EQ(v->value().boolean(), relay);
    EXPECT_TRUE(provider_->alive());
  }

  /// Lines of floe-esphome's log about device `label` that contain `text`.
  std::size_t lines_about(const std::string& label, const std::string& text) {
    const std::string log = slurp(dir_ / "esphome.log");
    std::size_t n = 0;
    for (std::size_t at = 0; at < log.size();) {
      const std::size_t end = std::min(log.find('\n', at), log.size());
      const std::string_view line(log.data() + at, end - at);
      if (line.find("ESPHome device " + label + " (") != std::string_view::npos && line.find(text) != std::string_view::npos) ++n;
      at = end + 1;
    }
    return n;
  }

  /// The first five retry delays floe-esphome logged for device "bad" on lines matching `what`
  /// (a regex ending just before the delay) double from min_ms to max_ms: 0.1, 0.2, 0.4, 0.8, 0.8.
  void expect_doubling_delays(const std::string& what) {
    std::vector<double> delays;
    const std::string log = slurp(dir_ / "esphome.log");
    const std::regex line("ESPHome device bad \\([^)]*\\): " + what + " ([0-9.]+) s");
    for (auto it = std::sregex_iterator(log.begin(), log.end(), line); it != std::sregex_iterator(); ++it) {
      delays.push_back(std::stod((*it)[it->size() - 1]));
    }
    ASSERT_GE(delays.size(), 5u) << log;
    EXPECT_EQ(std::vector<double>(delays.begin(), delays.begin() + 5), (std::vector<double>{0.1, 0.2, 0.4, 0.8, 0.8}));
  }

  /// `bad` misbehaves with `misdeed` (once subscribed): floe-esphome logs `reason` for it, drops
  /// it, and takes it back once it behaves; "good" is served all along.
  void expect_isolated(FakeDevice& bad, const FakeDevice::Misdeed& misdeed, const std::string& reason) {
    const std::size_t before = lines_about("bad", "connection lost: " + reason);
    const int connections = bad.connections();
    bad.set_misdeed(misdeed);
    EXPECT_TRUE(eventually([&] { return lines_about("bad", "connection lost: " + reason) > before; }))
        << "no log line with: " << reason;
    EXPECT_TRUE(eventually([&] { return bad.connections() > connections; })) << "it is reconnected";
    expect_good_serves(true);
    expect_good_serves(false);
    bad.set_misdeed({});
    EXPECT_TRUE(eventually([&] { return online("bad"); })) << "back after " << reason;
    auto r = client_->set("bad.relay", "Switch", "true");
    EXPECT_TRUE(r) << "after " << reason << ": " << r.error().message;
  }

  TempDir dir_{"floe-esphome-hostile"};
  std::optional<Process> core_;
  std::optional<Process> provider_;
  std::optional<client::Client> client_;
};

TEST_F(EsphomeHostile, GarbageAndBrokenFramesAreLoggedAndTheDeviceIsReconnected) {
  FakeDevice good("good-node", std::nullopt);
  FakeDevice bad("bad-node", std::nullopt);
  ASSERT_NO_FATAL_FAILURE(start({{"good", good.port(), std::nullopt}, {"bad", bad.port(), std::nullopt}}));

  expect_isolated(
      bad, [](int fd, Transport&) { return FakeDevice::write_all(fd, "\x7f" + random_bytes(4095, 1)); },
      "bad data from the device: bad indicator byte 0x7f");
  expect_isolated(
      bad, [](int fd, Transport&) { return FakeDevice::write_all(fd, plain_header(0xFFFF'FFFF, 26)); },
      "bad data from the device: frame length 4294967295 exceeds limit");
  expect_isolated(
      bad,
      [](int fd, Transport& t) {
        // A frame of a known type whose payload is not that message (a truncated field).
        auto frame = t.encode(static_cast<std::uint16_t>(MsgType::SwitchStateResponse), std::string("\x0d\x01\x02", 3));
        return frame && FakeDevice::write_all(fd, *frame);
      },
      "garbage SwitchStateResponse");
  expect_isolated(
      bad,
      [](int fd, Transport& t) {
        // Half a frame, then the connection closes.
        auto frame = t.encode(static_cast<std::uint16_t>(MsgType::SensorStateResponse), std::string(40, '\x01'));
        if (!frame) return false;
        (void)FakeDevice::write_all(fd, frame->substr(0, frame->size() / 2));
        return false;
      },
      "the device closed the connection");
  EXPECT_EQ(lines_about("good", "connection lost"), 0u) << "the good device was never dropped";
}

TEST_F(EsphomeHostile, AnEncryptedFrameThatDoesNotDecryptIsLoggedAndTheDeviceIsReconnected) {
  FakeDevice good("good-node", key_from(4));
  FakeDevice bad("bad-node", key_from(5));
  ASSERT_NO_FATAL_FAILURE(start({{"good", good.port(), key_from(4)}, {"bad", bad.port(), key_from(5)}}));
  expect_isolated(
      bad,
      [](int fd, Transport&) {
        // A Noise data frame (indicator 1, big-endian length) of random ciphertext.
        const std::string body = random_bytes(48, 9);
        return FakeDevice::write_all(fd, std::string("\x01\x00\x30", 3) + body);
      },
      "bad data from the device: could not decrypt a frame");
  EXPECT_EQ(lines_about("good", "connection lost"), 0u);
}

TEST_F(EsphomeHostile, ADeviceThatStallsMidFrameIsDroppedAfterItsPingGoesUnanswered) {
  FakeDevice good("good-node", std::nullopt);
  FakeDevice bad("bad-node", std::nullopt);
  ASSERT_NO_FATAL_FAILURE(start({{"good", good.port(), std::nullopt}, {"bad", bad.port(), std::nullopt}}));
  bad.set_misdeed([&bad](int fd, Transport& t) {
    auto frame = t.encode(static_cast<std::uint16_t>(MsgType::SensorStateResponse), std::string(40, '\x01'));
    if (!frame) return false;
    bad.set_frozen(true);  // from now on it answers nothing, not even pings
    return FakeDevice::write_all(fd, frame->substr(0, frame->size() / 2));
  });
  EXPECT_TRUE(eventually([&] { return lines_about("bad", "connection lost: no answer to a ping") > 0; }));
  EXPECT_TRUE(eventually([&] { return !online("bad"); }));
  expect_good_serves(true);
  bad.set_misdeed({});
  bad.set_frozen(false);
  EXPECT_TRUE(eventually([&] { return online("bad"); }));
  expect_good_serves(false);
}

TEST_F(EsphomeHostile, AFloodingDeviceIsDroppedWithAReasonWhileTheOtherIsServed) {
  FakeDevice good("good-node", std::nullopt);
  FakeDevice bad("bad-node", std::nullopt);
  ASSERT_NO_FATAL_FAILURE(start({{"good", good.port(), std::nullopt}, {"bad", bad.port(), std::nullopt}}));
  // Requests that each want an answer (GetTime), as fast as the socket takes them, never reading:
  // floe-esphome's answers pile up until it gives up on the device.
  bad.set_misdeed([](int fd, Transport& t) {
    auto request = t.encode(static_cast<std::uint16_t>(MsgType::GetTimeRequest), "");
    if (!request) return false;
    std::string chunk;
    for (int i = 0; i < 16384; ++i) chunk += *request;
    for (std::size_t sent = 0; sent < (std::size_t{256} << 20); sent += chunk.size()) {
      if (!FakeDevice::write_all(fd, chunk)) return false;
    }
    return false;
  });
  expect_good_serves(true);
  EXPECT_TRUE(eventually([&] {
    return lines_about("bad", "connection lost: the device does not read what floe-esphome sends") > 0;
  }, 120s)) << slurp(dir_ / "esphome.log");
  expect_good_serves(false);
  bad.set_misdeed({});
  EXPECT_TRUE(eventually([&] { return online("bad"); }));
}

TEST_F(EsphomeHostile, ADeviceSendingGarbageFromTheStartIsRetriedWithGrowingDelays) {
  FakeDevice good("good-node", std::nullopt);
  FakeDevice bad("bad-node", std::nullopt);
  // Garbage before any handshake: the connection never completes, so the delay keeps doubling.
  bad.set_misdeed([](int fd, Transport&) { return FakeDevice::write_all(fd, "\xff" + random_bytes(63, 3)); },
                  /*at_connect=*/true);
  ASSERT_NO_FATAL_FAILURE(start({{"good", good.port(), std::nullopt}, {"bad", bad.port(), std::nullopt}}, {"good"}));
  ASSERT_TRUE(eventually([&] { return lines_about("bad", "retrying in 0.8 s") >= 2; })) << "capped at max_ms";
  // The delays double from min_ms to max_ms and stay there: 0.1, 0.2, 0.4, 0.8, 0.8, ...
  expect_doubling_delays("(handshake failed|bad data)[^\\n]*; retrying in");
  expect_good_serves(true);
  bad.set_misdeed({});
  EXPECT_TRUE(eventually([&] { return online("bad"); }));
  expect_good_serves(false);
}

TEST_F(EsphomeHostile, ADeviceThatHangsUpRightAfterConnectingIsRetriedWithGrowingDelays) {
  FakeDevice good("good-node", std::nullopt);
  FakeDevice bad("bad-node", std::nullopt);
  ASSERT_NO_FATAL_FAILURE(start({{"good", good.port(), std::nullopt}, {"bad", bad.port(), std::nullopt}}));
  // Each connection completes (handshake, listing, subscription) and is closed at once: a
  // flapping device. A completed connection no longer resets the delay unless it lasted.
  bad.set_misdeed([](int, Transport&) { return false; });
  ASSERT_TRUE(eventually([&] { return lines_about("bad", "reconnecting in 0.8 s") >= 2; })) << "capped at max_ms";
  expect_doubling_delays("connection lost: [^\\n]*; reconnecting in");
  expect_good_serves(true);
  bad.set_misdeed({});
  EXPECT_TRUE(eventually([&] { return online("bad"); }));
  auto r = client_->set("bad.relay", "Switch", "true");
  EXPECT_TRUE(r) << r.error().message;
}

/// The standard listing plus a switch "Relay" (key 2) on sub-device `device_id`.
void add_relay(FakeDevice::Listing& l, std::uint32_t device_id) {
  esphome::api::ListEntitiesSwitchResponse relay;
  relay.set_key(2);
  relay.set_name("Relay");
  relay.set_device_id(device_id);
  l.entities.emplace_back(esphome::to_u16(MsgType::ListEntitiesSwitchResponse), relay.SerializeAsString());
}

TEST_F(EsphomeHostile, PartsOfANodeThatWouldShareAnIdEachGetTheirOwn) {
  FakeDevice good("good-node", std::nullopt);
  // Sub-devices "Porch" (5, standard) and "porch" (6) both slugify to "twins-porch".
  FakeDevice twins("twins-node", std::nullopt);
  twins.set_listing([](FakeDevice::Listing& l) {
    auto* porch = l.info.add_devices();
    porch->set_device_id(6);
    porch->set_name("porch");
    add_relay(l, 6);
  });
  // A 64-character configured name: "<name>-porch" cut to 64 characters was the name itself.
  const std::string longest(64, 'l');
  FakeDevice tall("tall-node", std::nullopt);
  ASSERT_NO_FATAL_FAILURE(start({{"good", good.port(), std::nullopt},
                                 {"twins", twins.port(), std::nullopt},
                                 {longest, tall.port(), std::nullopt}},
                                {"good", "twins"}));
  EXPECT_TRUE(eventually([&] { return online("twins-porch") && online("twins-porch-6"); }))
      << slurp(dir_ / "esphome.log");
  EXPECT_TRUE(eventually([&] { return online(longest) && online(std::string(58, 'l') + "-porch"); }))
      << slurp(dir_ / "esphome.log");
  // Each relay is its own: the states that arrived after declaring found their devices.
  for (const char* relay : {"twins-porch.relay", "twins-porch-6.relay", "twins.relay"}) {
    auto r = client_->set(relay, "Switch", "true");
    EXPECT_TRUE(r) << relay << ": " << r.error().message;
  }
  EXPECT_TRUE(twins.porch_relay());
  EXPECT_TRUE(provider_->alive());
  expect_good_serves(true);
}

TEST_F(EsphomeHostile, ANodeListingMoreThanANodeMayIsDroppedWithAReason) {
  FakeDevice good("good-node", std::nullopt);
  FakeDevice many("many-node", std::nullopt);
  many.set_listing([](FakeDevice::Listing& l) {
    for (std::uint32_t i = 0; i < 5000; ++i) {
      esphome::api::ListEntitiesSwitchResponse s;
      s.set_key(100 + i);
      s.set_object_id("same");  // every one clashes with the others
      s.set_name("Same");
      l.entities.emplace_back(esphome::to_u16(MsgType::ListEntitiesSwitchResponse), s.SerializeAsString());
    }
  });
  FakeDevice crowd("crowd-node", std::nullopt);
  crowd.set_listing([](FakeDevice::Listing& l) {
    for (std::uint32_t i = 0; i < 300; ++i) {
      auto* d = l.info.add_devices();
      d->set_device_id(100 + i);
      d->set_name("sub " + std::to_string(i));
    }
  });
  ASSERT_NO_FATAL_FAILURE(start({{"good", good.port(), std::nullopt},
                                 {"many", many.port(), std::nullopt},
                                 {"crowd", crowd.port(), std::nullopt}},
                                {"good"}));
  EXPECT_TRUE(eventually([&] { return lines_about("many", "the device lists more than 4096 entities") > 0; }))
      << slurp(dir_ / "esphome.log");
  EXPECT_TRUE(eventually([&] { return lines_about("crowd", "the device lists 301 sub-devices") > 0; }))
      << slurp(dir_ / "esphome.log");
  expect_good_serves(true);
  expect_good_serves(false);
  EXPECT_FALSE(online("many"));
  EXPECT_FALSE(online("crowd"));
}

TEST_F(EsphomeHostile, ANodeWhoseEntitiesAreAllOnSubDevicesDeclaresOnlyThose) {
  FakeDevice good("good-node", std::nullopt);
  FakeDevice split("split-node", std::nullopt);
  split.set_listing([](FakeDevice::Listing& l) {
    l.entities.clear();
    add_relay(l, 5);
  });
  ASSERT_NO_FATAL_FAILURE(
      start({{"good", good.port(), std::nullopt}, {"split", split.port(), std::nullopt}}, {"good"}));
  ASSERT_TRUE(eventually([&] { return online("split-porch"); })) << slurp(dir_ / "esphome.log");
  auto r = client_->set("split-porch.relay", "Switch", "true");
  EXPECT_TRUE(r) << r.error().message;
  EXPECT_TRUE(split.porch_relay());
  auto list = client_->list_devices();
  ASSERT_TRUE(list) << list.error().message;
  for (const auto& d : list->devices()) EXPECT_NE(d.name(), "split") << "a node without entities of its own";
  EXPECT_EQ(slurp(dir_ / "core.log").find("declares no entities"), std::string::npos) << slurp(dir_ / "core.log");
}

TEST_F(EsphomeHostile, ANodeNamedLikeAConfiguredDeviceDoesNotTakeItsId) {
  FakeDevice good("good-node", std::nullopt);
  FakeDevice impostor("good", std::nullopt);  // no name: in the configuration, so its node name "good" counts
  ASSERT_NO_FATAL_FAILURE(start({{"good", good.port(), std::nullopt}, {"", impostor.port(), std::nullopt}}, {"good"}));
  const std::string moved = "good-127.0.0.1_" + std::to_string(impostor.port());
  EXPECT_TRUE(eventually([&] { return online(moved); })) << slurp(dir_ / "esphome.log");
  // "good" is the configured device, whichever connected first.
  const int before = good.commands();
  expect_good_serves(true);
  EXPECT_GT(good.commands(), before);
  EXPECT_EQ(impostor.commands(), 0);
}

// Two nodes flashed with one name, neither given a name: in the configuration. The first to
// connect is declared by the name; the other gets its address appended instead of being refused
// by floe for an id already declared, and keeps it when it reconnects.
TEST_F(EsphomeHostile, TwoNodesWithOneNameAndNoConfiguredNameEachGetAnId) {
  FakeDevice first("twin", std::nullopt);
  FakeDevice second("twin", std::nullopt);
  ASSERT_NO_FATAL_FAILURE(start({{"", first.port(), std::nullopt}, {"", second.port(), std::nullopt}}, {"twin"}));
  const std::string first_moved = "twin-127.0.0.1_" + std::to_string(first.port());
  const std::string second_moved = "twin-127.0.0.1_" + std::to_string(second.port());
  ASSERT_TRUE(eventually([&] { return online(first_moved) || online(second_moved); })) << slurp(dir_ / "esphome.log");
  const std::string moved = online(first_moved) ? first_moved : second_moved;
  EXPECT_FALSE(online(moved == first_moved ? second_moved : first_moved));
  EXPECT_NE(slurp(dir_ / "esphome.log").find("which connected first"), std::string::npos);
  EXPECT_EQ(slurp(dir_ / "esphome.log").find("floe refused device"), std::string::npos) << slurp(dir_ / "esphome.log");
  // Each id reaches its own node.
  for (const std::string& id : {std::string("twin"), moved}) {
    auto t = client_->get(id + ".temperature", "Real");
    ASSERT_TRUE(t) << id << ": " << t.error().message;
    EXPECT_EQ(t->value().real(), 20.0) << id;
  }
  // The moved node keeps its id when it reconnects, while "twin" stays where it is.
  FakeDevice& moved_node = moved == first_moved ? first : second;
  const int connections = moved_node.connections();
  moved_node.set_misdeed([](int, Transport&) { return false; });  // hangs up on its client
  ASSERT_TRUE(eventually([&] { return moved_node.connections() > connections; })) << slurp(dir_ / "esphome.log");
  moved_node.set_misdeed({});
  ASSERT_TRUE(eventually([&] { return online(moved); })) << slurp(dir_ / "esphome.log");
  EXPECT_NE(slurp(dir_ / "esphome.log").find("connection lost"), std::string::npos);
  EXPECT_TRUE(online("twin"));
}

// A node dropped before it declared anything (its entities name too many sub-devices) holds no
// id: the other node with its name, connecting after it, gets the plain name.
TEST_F(EsphomeHostile, ANodeDroppedBeforeDeclaringDoesNotKeepItsNameFromAnother) {
  FakeDevice dropped("twin", std::nullopt);
  dropped.set_listing([](FakeDevice::Listing& l) {
    for (std::uint32_t i = 0; i < 300; ++i) {
      esphome::api::ListEntitiesSwitchResponse s;
      s.set_key(100 + i);
      s.set_object_id("relay_" + std::to_string(i));
      s.set_name("Relay " + std::to_string(i));
      s.set_device_id(100 + i);  // a sub-device DeviceInfo does not list, one per entity
      l.entities.emplace_back(esphome::to_u16(MsgType::ListEntitiesSwitchResponse), s.SerializeAsString());
    }
  });
  FakeDevice later("twin", std::nullopt);
  // It hangs up on every connection until the other has been dropped once.
  later.set_misdeed([](int, Transport&) { return false; }, /*at_connect=*/true);
  FakeDevice good("good-node", std::nullopt);
  ASSERT_NO_FATAL_FAILURE(start(
      {{"good", good.port(), std::nullopt}, {"", dropped.port(), std::nullopt}, {"", later.port(), std::nullopt}},
      {"good"}));
  ASSERT_TRUE(eventually([&] {
    return slurp(dir_ / "esphome.log").find("entities name 301 sub-devices") != std::string::npos;
  })) << slurp(dir_ / "esphome.log");
  later.set_misdeed({});
  EXPECT_TRUE(eventually([&] { return online("twin"); })) << slurp(dir_ / "esphome.log");
  EXPECT_FALSE(online("twin-127.0.0.1_" + std::to_string(later.port())));
}

}  // namespace
}  // namespace floe::test

#endif
