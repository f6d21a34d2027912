// floe-esphome end to end: real floe-core, real floe-esphome and floectl processes, and ESPHome
// devices on real TCP sockets speaking the native API through the real codec (plaintext and Noise).
// The devices are small ones served by a thread of this test (FakeDevice, tests/support), so a test
// can change a sensor, make a device go silent or vanish and come back on the same port. Hang guards
// are bounded polls, never timing thresholds.
#include <signal.h>

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "floe/esphome/transport.hpp"
#include "support/esphome_fake.hpp"
#include "support/integration.hpp"
#include "support/process.hpp"

namespace floe::test {
namespace {

#if defined(FLOE_CORE_BIN) && defined(FLOE_ESPHOME_BIN) && defined(FLOECTL_BIN)
#define FLOE_ESPHOME_PROGRAMS 1
#endif

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using esphome::Psk;
using nlohmann::json;

struct Ran {
  int exit = -1;
  std::string out;
};

class EsphomeProvider : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef FLOE_ESPHOME_PROGRAMS
    GTEST_SKIP() << "floe-core, floe-esphome or floectl is not built";
#else
    char tmpl[] = "/tmp/floe-esphome-it-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    sockets_ = dir_ + "/sockets";
#endif
  }
  void TearDown() override {
    sim_.reset();
    provider_.reset();
    core_.reset();
    if (HasFailure() && !dir_.empty()) {
      for (const char* name : {"core.log", "esphome.log", "floe-esphome.yaml", "sim.log", "sim.yaml"}) {
        std::string text = slurp(dir_ + "/" + name);
        if (text.size() > 8000) text = text.substr(0, 3000) + "\n...\n" + text.substr(text.size() - 5000);
        std::fprintf(stderr, "---- %s\n%s\n", name, text.c_str());
      }
    }
    if (!dir_.empty()) fs::remove_all(dir_);
  }

#ifdef FLOE_ESPHOME_PROGRAMS
  struct Entry {
    std::string name;
    std::uint16_t port;
    std::optional<Psk> key;
  };

  // floe-esphome-sim serving `yaml`; the ports it chose (from its JSON line), empty if it failed.
  std::vector<std::uint16_t> start_sim(const std::string& yaml) {
#ifdef FLOE_ESPHOME_SIM_BIN
    std::ofstream(dir_ + "/sim.yaml") << yaml;
    const std::string out = dir_ + "/sim.out";
    sim_.reset();
    sim_.emplace(FLOE_ESPHOME_SIM_BIN,
                 std::vector<std::string>{"--config", dir_ + "/sim.yaml", "--sensor-interval-ms", "100"},
                 dir_ + "/sim.log", out);
    std::vector<std::uint16_t> ports;
    eventually([&] {
      auto j = json::parse(slurp(out), nullptr, false);
      if (j.is_discarded() || !j.contains("devices")) return !sim_->alive();
      for (const auto& d : j["devices"]) ports.push_back(d["port"].get<std::uint16_t>());
      return true;
    });
    return ports;
#else
    (void)yaml;
    return {};
#endif
  }

  void start(const std::vector<Entry>& devices, const std::string& extra = "") {
    std::ofstream yaml(dir_ + "/floe-esphome.yaml");
    yaml << "reconnect: {min_ms: 100, max_ms: 500}\n" << extra << "devices:\n";
    for (const auto& d : devices) {
      yaml << "  - host: 127.0.0.1\n    port: " << d.port << "\n    name: " << d.name << "\n    groups: [esphome]\n";
      if (d.key) yaml << "    encryption_key: \"" << esphome::encode_psk(*d.key) << "\"\n";
    }
    yaml.close();
    core_.emplace(FLOE_CORE_BIN, std::vector<std::string>{"--socket-dir", sockets_}, dir_ + "/core.log");
    ASSERT_TRUE(eventually([&] { return fs::exists(sockets_ + "/client.sock") || !core_->alive(); }));
    ASSERT_TRUE(core_->alive()) << "floe-core exited";
    provider_.emplace(FLOE_ESPHOME_BIN,
                      std::vector<std::string>{"--config", dir_ + "/floe-esphome.yaml", "--socket-dir", sockets_, "-v"},
                      dir_ + "/esphome.log");
  }

  Ran floectl(std::vector<std::string> args) {
    const std::string log = dir_ + "/floectl-" + std::to_string(runs_++) + ".out";
    args.insert(args.begin(), {"--socket-dir", sockets_, "--timeout", "20"});
    Process p(FLOECTL_BIN, args, log);
    Ran r;
    r.exit = p.finish();
    r.out = slurp(log);
    fs::remove(log);
    return r;
  }
  json value_of(const std::string& entity, const std::string& component) {
    auto r = floectl({"--json", "get", entity, component});
    if (r.exit != 0) return nullptr;
    auto j = json::parse(r.out, nullptr, false);
    if (j.is_discarded() || !j.contains("value") || !j["value"].contains("value")) return nullptr;
    return j["value"]["value"];
  }
  bool online(const std::string& device) {
    auto r = floectl({"--json", "devices"});
    if (r.exit != 0) return false;
    auto j = json::parse(r.out, nullptr, false);
    if (j.is_discarded()) return false;
    for (const auto& d : j["devices"]) {
      if (d["device"] == device) return d["online"] == true;
    }
    return false;
  }
  bool logged(const std::string& text) { return slurp(dir_ + "/esphome.log").find(text) != std::string::npos; }
#endif

  std::string dir_;
  std::string sockets_;
  std::optional<Process> core_;
  std::optional<Process> provider_;
  std::optional<Process> sim_;
  int runs_ = 0;
};

#ifdef FLOE_ESPHOME_PROGRAMS

TEST_F(EsphomeProvider, PlaintextAndEncryptedDevicesAppearReportStatesAndObeySets) {
  FakeDevice plain("plain-node", std::nullopt);
  FakeDevice secure("secure-node", key_from(3));
  ASSERT_TRUE(plain.bound() && secure.bound());
  start({{"plain", plain.port(), std::nullopt}, {"secure", secure.port(), key_from(3)}});

  for (const char* d : {"plain", "plain-porch", "secure", "secure-porch"}) {
    ASSERT_TRUE(eventually([&] { return online(d); })) << d << " never came online";
  }
  auto entities = floectl({"--json", "entities", "plain"});
  ASSERT_EQ(entities.exit, 0) << entities.out;
  for (const char* id : {"plain.light", "plain.relay", "plain.temperature"}) {
    EXPECT_NE(entities.out.find(id), std::string::npos) << id << " missing from " << entities.out;
  }
  EXPECT_EQ(floectl({"query", "count where Light in group esphome"}).out, "2\n");

  // Sensor values and their static components.
  EXPECT_TRUE(eventually([&] { return value_of("plain.temperature", "Real") == json(20.0); }));
  EXPECT_EQ(value_of("secure.temperature", "Unit"), json("°C"));
  EXPECT_EQ(value_of("secure.temperature", "AccuracyDecimals"), json(1));
  plain.set_temperature(23.5F);
  EXPECT_TRUE(eventually([&] { return value_of("plain.temperature", "Real") == json(23.5); }))
      << value_of("plain.temperature", "Real").dump();

  // Sets: the device obeys, its state answer completes the request, the new state shows.
  auto on = floectl({"set", "plain.light", "Switch", "true"});
  EXPECT_EQ(on.exit, 0) << on.out;
  EXPECT_EQ(value_of("plain.light", "Switch"), json(true));
  auto dim = floectl({"set", "secure.light", "Dimmer", "0.5"});
  EXPECT_EQ(dim.exit, 0) << dim.out;
  EXPECT_EQ(value_of("secure.light", "Dimmer"), json(0.5));
  auto relay = floectl({"set", "secure.relay", "Switch", "true"});
  EXPECT_EQ(relay.exit, 0) << relay.out;
  EXPECT_EQ(value_of("secure.relay", "Switch"), json(true));
  EXPECT_EQ(value_of("secure-porch.relay", "Switch"), json(false)) << "same key, other sub-device";
  auto porch = floectl({"set", "plain-porch.relay", "Switch", "true"});
  EXPECT_EQ(porch.exit, 0) << porch.out;
  EXPECT_TRUE(plain.porch_relay()) << "device_id echoed in the command";
  EXPECT_EQ(value_of("plain-porch.relay", "Switch"), json(true));
  EXPECT_EQ(value_of("plain.relay", "Switch"), json(false));

  // A read-only sensor refuses; the devices answered GetTime and ignored the unknown type.
  auto ro = floectl({"set", "plain.temperature", "Real", "5"});
  EXPECT_NE(ro.exit, 0) << ro.out;
  EXPECT_NE(ro.out.find("read-only"), std::string::npos) << ro.out;
  EXPECT_GT(plain.time_answers(), 0);
  EXPECT_GT(secure.time_answers(), 0);
  EXPECT_TRUE(provider_->alive());
}

TEST_F(EsphomeProvider, WrongKeyAndEncryptionMismatchAreLoggedAndLeaveOthersAlone) {
  FakeDevice good("good-node", std::nullopt);
  FakeDevice locked("locked-node", key_from(7));
  FakeDevice needs_key("needs-key-node", key_from(9));
  FakeDevice open("open-node", std::nullopt);
  start({{"good", good.port(), std::nullopt},
         {"locked", locked.port(), key_from(8)},      // wrong key
         {"needskey", needs_key.port(), std::nullopt},  // encrypted device, no key configured
         {"open", open.port(), key_from(9)}});          // plaintext device, key configured
  ASSERT_TRUE(eventually([&] { return online("good"); }));
  // One clear line per device, naming it and the cause.
  auto line = [&](const std::string& label, std::uint16_t port, const std::string& cause) {
    return eventually([&] {
      const std::string log = slurp(dir_ + "/esphome.log");
      const auto at = log.find(label + " (127.0.0.1:" + std::to_string(port) + "): handshake failed: ");
      return at != std::string::npos && log.find(cause, at) < log.find('\n', at);
    });
  };
  EXPECT_TRUE(line("locked", locked.port(), "wrong encryption key"));
  EXPECT_TRUE(line("needskey", needs_key.port(), "encryption"));
  EXPECT_TRUE(line("open", open.port(), "encryption"));
  for (const char* d : {"locked", "needskey", "open"}) EXPECT_FALSE(online(d)) << d;

  auto set = floectl({"set", "good.relay", "Switch", "true"});
  EXPECT_EQ(set.exit, 0) << set.out;
  EXPECT_EQ(value_of("good.relay", "Switch"), json(true));
  EXPECT_TRUE(provider_->alive());
}

TEST_F(EsphomeProvider, ABadConfigFileExitsTwoNamingFileAndLine) {
  const std::string path = dir_ + "/bad.yaml";
  std::ofstream(path) << "devices:\n  - host: 127.0.0.1\n    port: 99999\n";
  const std::string log = dir_ + "/bad.log";
  Process p(FLOE_ESPHOME_BIN, {"--config", path}, log);
  EXPECT_EQ(p.finish(), 2);
  EXPECT_NE(slurp(log).find(path + ":3: 'port' = 99999 is out of range [1, 65535]"), std::string::npos) << slurp(log);
  Process missing(FLOE_ESPHOME_BIN, {"--config", dir_ + "/none.yaml"}, log);
  EXPECT_EQ(missing.finish(), 2);
  EXPECT_NE(slurp(log).find(dir_ + "/none.yaml"), std::string::npos) << slurp(log);
}

TEST_F(EsphomeProvider, SilentDeviceFailsTheRequestWithATimeout) {
  FakeDevice quiet("quiet-node", std::nullopt);
  start({{"quiet", quiet.port(), std::nullopt}}, "request_timeout_ms: 1000\n");
  ASSERT_TRUE(eventually([&] { return online("quiet"); }));
  // The device's first states must be in before the set: floe-esphome completes a set with the
  // entity's next state message, and the initial one, arriving after the command, would do. The
  // relay's "false" proves nothing (a Switch never written reads false too); the temperature is
  // the last state of the device's initial burst, so once it reads 20 the relay's is in as well.
  ASSERT_TRUE(eventually([&] { return value_of("quiet.temperature", "Real") == json(20.0); }));
  quiet.set_silent(true);
  auto set = floectl({"set", "quiet.relay", "Switch", "true"});
  EXPECT_NE(set.exit, 0) << set.out;
  EXPECT_NE(set.out.find("did not report the new state"), std::string::npos) << set.out;
  EXPECT_EQ(quiet.commands(), 1) << "the command reached the device";
  quiet.set_silent(false);
  auto again = floectl({"set", "quiet.relay", "Switch", "false"});
  EXPECT_EQ(again.exit, 0) << again.out;
}

TEST_F(EsphomeProvider, AStateSayingTheOppositeDoesNotPassForTheAnswerToASet) {
  FakeDevice quiet("quiet-node", std::nullopt);
  start({{"quiet", quiet.port(), std::nullopt}}, "request_timeout_ms: 1000\n");
  ASSERT_TRUE(eventually([&] { return online("quiet"); }));
  ASSERT_TRUE(eventually([&] { return value_of("quiet.relay", "Switch") == json(false); }));
  ASSERT_TRUE(eventually([&] { return value_of("quiet.temperature", "Real") == json(20.0); }));
  quiet.set_silent(true);  // it takes the command and never reports the result
  Ran set;
  std::thread setter([&] { set = floectl({"set", "quiet.relay", "Switch", "true"}); });
  ASSERT_TRUE(eventually([&] { return quiet.commands() == 1; }));
  // Then a relay state of "off" arrives, as one the device sent before it took the command would:
  // it is not the device's answer to "on", so the set still fails when its time is up.
  quiet.set_misdeed([](int fd, esphome::Transport& t) {
    esphome::api::SwitchStateResponse off;
    off.set_key(2);
    off.set_state(false);
    auto frame = t.encode(static_cast<std::uint16_t>(esphome::MsgType::SwitchStateResponse), off.SerializeAsString());
    return frame && FakeDevice::write_all(fd, *frame);
  });
  setter.join();
  EXPECT_NE(set.exit, 0) << set.out;
  EXPECT_NE(set.out.find("did not report the new state"), std::string::npos) << set.out;
  EXPECT_EQ(value_of("quiet.relay", "Switch"), json(false)) << "floe shows what the device reported";
  // A state that agrees completes the next set.
  quiet.set_misdeed({});
  quiet.set_silent(false);
  auto again = floectl({"set", "quiet.relay", "Switch", "true"});
  EXPECT_EQ(again.exit, 0) << again.out;
  EXPECT_EQ(value_of("quiet.relay", "Switch"), json(true));
}

TEST_F(EsphomeProvider, AnIdleDeviceIsPingedAndAFrozenOneIsDroppedAndReconnected) {
  FakeDevice idle("idle-node", std::nullopt);
  start({{"idle", idle.port(), std::nullopt}}, "keepalive_ms: 200\n");
  ASSERT_TRUE(eventually([&] { return online("idle"); }));
  EXPECT_TRUE(eventually([&] { return idle.pings() >= 2; })) << "keepalive pings";

  idle.set_frozen(true);  // the connection stays open, nothing comes back
  EXPECT_TRUE(eventually([&] { return logged("idle (127.0.0.1:" + std::to_string(idle.port()) + "): connection lost: no answer to a ping"); }));
  EXPECT_TRUE(eventually([&] { return !online("idle"); }));
  idle.set_frozen(false);
  EXPECT_TRUE(eventually([&] { return online("idle"); }));
  auto set = floectl({"set", "idle.relay", "Switch", "true"});
  EXPECT_EQ(set.exit, 0) << set.out;
}

TEST_F(EsphomeProvider, ADeviceThatGoesAwayFailsRequestsAtOnceAndComesBack) {
  std::optional<FakeDevice> flaky(std::in_place, "flaky-node", key_from(1));
  FakeDevice steady("steady-node", std::nullopt);
  const std::uint16_t port = flaky->port();
  start({{"flaky", port, key_from(1)}, {"steady", steady.port(), std::nullopt}});
  ASSERT_TRUE(eventually([&] { return online("flaky") && online("steady"); }));
  ASSERT_EQ(floectl({"set", "flaky.relay", "Switch", "true"}).exit, 0);

  flaky.reset();  // the device vanishes: connections closed, port refused
  ASSERT_TRUE(eventually([&] { return logged("flaky (127.0.0.1:" + std::to_string(port) + "): connection lost"); }));
  EXPECT_TRUE(eventually([&] { return !online("flaky") && !online("flaky-porch"); })) << "its devices go offline";
  auto gone = floectl({"set", "flaky.relay", "Switch", "false"});
  EXPECT_EQ(gone.exit, 6) << "a set to an unreachable device fails at once as offline: " << gone.out;
  auto other = floectl({"set", "steady.relay", "Switch", "true"});
  EXPECT_EQ(other.exit, 0) << "the other device is unaffected: " << other.out;

  flaky.emplace("flaky-node", key_from(1), port);  // back on the same port
  ASSERT_TRUE(flaky->bound());
  ASSERT_TRUE(eventually([&] { return online("flaky") && online("flaky-porch"); })) << "and come back";
  EXPECT_EQ(floectl({"set", "flaky.relay", "Switch", "true"}).exit, 0);
  EXPECT_EQ(value_of("flaky.relay", "Switch"), json(true));
  EXPECT_TRUE(provider_->alive());
}

// The simulated fleet, as the demo runs it: floe-esphome-sim with a plaintext node (and a
// sub-device), an encrypted one and one whose key floe-esphome gets wrong.
std::string sim_yaml(const std::vector<std::uint16_t>& ports) {
  auto port = [&](std::size_t i) { return std::to_string(i < ports.size() ? ports[i] : 0); };
  const std::string entities = "      - {type: light, name: Light, color_modes: [rgb]}\n"
                               "      - {type: switch, name: Relay}\n"
                               "      - {type: sensor, name: Temperature, unit: \"°C\", min: 15, max: 30}\n";
  return "devices:\n"
         "  - name: lamp-node\n    port: " + port(0) + "\n    sub_devices: [{id: 1, name: Extension}]\n    entities:\n" +
         entities + "      - {type: switch, name: Extension Relay, device_id: 1}\n" +
         "  - name: vault-node\n    port: " + port(1) + "\n    encryption_key: \"" + esphome::encode_psk(key_from(5)) +
         "\"\n    entities:\n" + entities +
         "  - name: wrong-node\n    port: " + port(2) + "\n    encryption_key: \"" + esphome::encode_psk(key_from(6)) +
         "\"\n    entities:\n      - {type: switch, name: Relay}\n";
}

TEST_F(EsphomeProvider, SimulatedFleetServedThroughFloeGoesOfflineWithTheSimulatorAndComesBack) {
#ifndef FLOE_ESPHOME_SIM_BIN
  GTEST_SKIP() << "floe-esphome-sim is not built";
#else
  const auto ports = start_sim(sim_yaml({}));
  ASSERT_EQ(ports.size(), 3u) << slurp(dir_ + "/sim.log");
  start({{"lamp", ports[0], std::nullopt}, {"vault", ports[1], key_from(5)}, {"wrong", ports[2], key_from(7)}});
  for (const char* d : {"lamp", "lamp-extension", "vault"}) {
    ASSERT_TRUE(eventually([&] { return online(d); })) << d << " never came online";
  }
  EXPECT_TRUE(eventually([&] { return logged("wrong (127.0.0.1:" + std::to_string(ports[2]) + "): handshake failed: wrong encryption key"); }));

  // Sensor values change (the simulator moves them every 100 ms).
  const json first = value_of("vault.temperature", "Real");
  ASSERT_TRUE(first.is_number()) << first.dump();
  EXPECT_TRUE(eventually([&] { return value_of("vault.temperature", "Real") != first; }));

  // Lights and switches, plaintext and encrypted, and the sub-device's switch.
  for (const auto& [entity, component, value] : std::vector<std::array<std::string, 3>>{
           {"lamp.light", "Switch", "true"}, {"vault.light", "Dimmer", "0.25"}, {"vault.relay", "Switch", "true"},
           {"lamp.relay", "Switch", "true"}, {"lamp-extension.extension_relay", "Switch", "true"}}) {
    auto r = floectl({"set", entity, component, value});
    EXPECT_EQ(r.exit, 0) << entity << ": " << r.out;
    auto got = value_of(entity, component);
    EXPECT_EQ(got, value == "true" ? json(true) : json(std::stod(value))) << entity << " " << got.dump();
  }

  // The simulator dies: every device goes offline, requests fail at once.
  sim_->signal(SIGKILL);
  EXPECT_EQ(sim_->finish(), 128 + SIGKILL);
  ASSERT_TRUE(eventually([&] { return !online("lamp") && !online("lamp-extension") && !online("vault"); }));
  auto offline = floectl({"set", "vault.relay", "Switch", "false"});
  EXPECT_EQ(offline.exit, 6) << offline.out;

  // It comes back on the same ports: so do the devices, with their state.
  std::vector<std::uint16_t> again;
  ASSERT_TRUE(eventually([&] {
    again = start_sim(sim_yaml(ports));  // a retry if a port is still held for a moment
    return again == ports;
  })) << slurp(dir_ + "/sim.log");
  for (const char* d : {"lamp", "lamp-extension", "vault"}) {
    ASSERT_TRUE(eventually([&] { return online(d); })) << d << " did not come back";
  }
  auto back = floectl({"set", "vault.relay", "Switch", "true"});
  EXPECT_EQ(back.exit, 0) << back.out;
  EXPECT_EQ(value_of("vault.relay", "Switch"), json(true));
  EXPECT_TRUE(provider_->alive());
#endif
}

#endif

}  // namespace
}  // namespace floe::test
