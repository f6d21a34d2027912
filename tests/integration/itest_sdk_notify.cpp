// The provider SDK's waiting on its tx rings, per notify mode, against the real floe-core: a
// provider process (a child of this binary, driven over a control socket) serves devices; a client
// sets them through the core many times in a row; devices come and go while the futex bridge
// waits. In futex mode the SDK waits on the rings' futex words (futex_waitv, one thread per up to
// 127 devices; FLOE_SDK_NO_FUTEX_WAITV=1 forces the one-thread-per-device fallback); in spin mode
// it never sleeps. No timing thresholds: only answers, values and thread counts are checked.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "client.hpp"
#include "floe/ipc/channel.hpp"
#include "floe/sdk/provider.hpp"
#include "support/child_process.hpp"
#include "support/integration.hpp"

namespace floe::sdk {
namespace {

using namespace std::chrono_literals;
using client::Client;
using test::eventually;
using test::slurp;

#ifdef FLOE_CORE_BIN

// Threads of this process named `name` (all of them if empty).
std::size_t thread_count(const std::string& name = {}) {
  std::size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (const dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      if (name.empty() || slurp(std::string("/proc/self/task/") + e->d_name + "/comm") == name + "\n") ++n;
    }
    ::closedir(d);
  }
  return n;
}

bool send_text(int fd, const std::string& s) {
  return ::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
}
std::optional<std::string> recv_text(int fd) {
  if (!test::wait_readable(fd)) return std::nullopt;
  char buf[256];
  const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  if (n <= 0) return std::nullopt;
  return std::string(buf, static_cast<std::size_t>(n));
}

DeviceSpec lamp(int i) {
  const std::string n = std::to_string(i);
  return {.id = "lamp-" + n, .entities = {{.id = "lamp_" + n, .components = {Component::Dimmer}}}};
}

// floe-core with its log in args[1] and the configuration file args[2]; socket dir args[0].
FLOE_CHILD_ROLE(notify_core) {
  ::setenv("FLOE_SOCKET_DIR", args.at(0).c_str(), 1);
  const int log = ::open(args.at(1).c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (log < 0 || ::dup2(log, 1) < 0 || ::dup2(log, 2) < 0) return 126;
  std::vector<std::string> argv_s = {FLOE_CORE_BIN, "--log-level", "info", "--config", args.at(2)};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  ::execv(FLOE_CORE_BIN, argv.data());
  std::perror("execv");
  return 127;
}

// An SDK provider serving lamp-1 .. lamp-N (args: socket dir, N, "fallback" or "waitv", "bells" or
// "nobells"), driven through process() from its own loop. Commands on fd 3, each answered:
// "add K", "remove K", "threads" (the SDK's futex bridge threads, then all threads), "quit".
FLOE_CHILD_ROLE(notify_provider) {
  if (args.at(2) == "fallback") ::setenv("FLOE_SDK_NO_FUTEX_WAITV", "1", 1);
  const int ctl = 3;
  Provider provider({.name = "notify-test", .socket_dir = args.at(0), .doorbells = args.at(3) == "bells"});
  for (int i = 1; i <= std::stoi(args.at(1)); ++i) provider.add_device(lamp(i));
  provider.on_request([](Request& r) {
    if (r.value() == nullptr) return r.fail("a lamp takes a Dimmer level");
    if (r.device().set(r.entity(), r.component(), *r.value()) != WriteStatus::kOk) return r.fail("not written");
    r.succeed();
  });
  for (;;) {
    pollfd fds[2] = {{provider.fd(), POLLIN, 0}, {ctl, POLLIN, 0}};
    if (::poll(fds, 2, 1000) < 0 && errno != EINTR) return 2;
    if (auto s = provider.process(); !s) {
      std::fprintf(stderr, "provider: %s\n", s.error().to_string().c_str());
      return 3;
    }
    if ((fds[1].revents & (POLLIN | POLLHUP)) == 0) continue;
    char buf[128];
    const ssize_t n = ::recv(ctl, buf, sizeof buf, 0);
    if (n <= 0) return 4;
    std::istringstream cmd(std::string(buf, static_cast<std::size_t>(n)));
    std::string verb;
    int k = 0;
    cmd >> verb >> k;
    std::string reply = "ok";
    if (verb == "add") {
      if (!provider.try_add_device(lamp(k))) reply = "refused";
    } else if (verb == "remove") {
      if (!provider.remove_device(lamp(k).id)) reply = "refused";
    } else if (verb == "clash") {
      // A device whose entity id is lamp-1's: valid to the SDK, refused by the core (CONFLICT).
      DeviceSpec clash{.id = "clash-" + std::to_string(k), .entities = {{.id = "lamp_1", .components = {Component::Dimmer}}}};
      if (!provider.try_add_device(clash)) reply = "refused";
    } else if (verb == "threads") {
      reply = std::to_string(thread_count("floe-sdk-futex")) + " " + std::to_string(thread_count());
    } else if (verb == "quit") {
      (void)send_text(ctl, reply);
      return 0;
    } else {
      reply = "unknown";
    }
    if (!send_text(ctl, reply)) return 5;
  }
}

struct Mode {
  const char* notify;  // the core's [rings] notify
  const char* bridge;  // "waitv" or "fallback" (FLOE_SDK_NO_FUTEX_WAITV=1 in the provider)
  const char* name;
  bool core_bells = true;  // the core's [rings] doorbells
  bool sdk_bells = true;   // the provider's ProviderOptions::doorbells
  /// Doorbells are used only when both sides want them, with eventfd rings.
  [[nodiscard]] bool bells() const { return core_bells && sdk_bells && std::string(notify) == "eventfd"; }
};
void PrintTo(const Mode& m, std::ostream* os) { *os << m.name; }

class SdkNotify : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override { sock_dir_ = dir_ / "sock"; }
  void TearDown() override {
    if (ctl_ >= 0) ::close(ctl_);
    if (HasFailure()) {
      std::fprintf(stderr, "---- floe-core log ----\n%s\n", slurp(dir_ / "core.log").c_str());
      std::fprintf(stderr, "---- provider log ----\n%s\n", slurp(dir_ / "provider.log").c_str());
    }
  }

  void start(int devices, const std::string& limits = "") {
    const std::string config = dir_ / "core.toml";
    std::ofstream(config) << "worker_threads = 1\n[rings]\nnotify = \"" << GetParam().notify << "\"\n"
                          << "doorbells = " << (GetParam().core_bells ? "true" : "false") << "\n"
                          << (limits.empty() ? "" : "[limits]\n" + limits);
    auto core = test::spawn_child("notify_core", {sock_dir_, dir_ / "core.log", config}, {});
    ASSERT_TRUE(core) << core.error().to_string();
    core_.emplace(std::move(*core));
    ASSERT_TRUE(eventually([&] { return static_cast<bool>(ipc::Channel::connect(sock_dir_ + "/client.sock")); }))
        << "floe-core did not start listening";

    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    // The provider's stderr (SDK logs) goes to provider.log: set up in the child by redirecting here.
    const int saved = ::dup(2);
    const int log = ::open((dir_ / "provider.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    ASSERT_GE(log, 0);
    ::dup2(log, 2);
    auto provider =
        test::spawn_child("notify_provider",
                          {sock_dir_, std::to_string(devices), GetParam().bridge, GetParam().sdk_bells ? "bells" : "nobells"},
                          {sv[1]});
    ::dup2(saved, 2);
    ::close(saved);
    ::close(log);
    ::close(sv[1]);
    ctl_ = sv[0];
    ASSERT_TRUE(provider) << provider.error().to_string();
    provider_.emplace(std::move(*provider));

    auto c = Client::connect({.socket_dir = sock_dir_, .timeout = 60s, .peer_name = "itest-sdk-notify"});
    ASSERT_TRUE(c) << c.error().message;
    client_.emplace(std::move(*c));
  }

  std::string command(const std::string& cmd) {
    if (!send_text(ctl_, cmd)) return "control socket closed";
    return recv_text(ctl_).value_or("no answer");
  }

  bool online(int i) {
    auto v = client_->get("lamp_" + std::to_string(i), "Dimmer");
    return v && v->online();
  }

  /// Sets lamp_i's Dimmer through the core; empty if the provider answered ok, else why not.
  std::string set(int i, double level) {
    std::ostringstream value;
    value << level;
    auto r = client_->set("lamp_" + std::to_string(i), "Dimmer", value.str());
    if (!r) return "client: " + r.error().message;
    if (r->results_size() != 1) return "results: " + std::to_string(r->results_size());
    if (!r->results(0).ok()) return "refused: " + r->results(0).message();
    auto v = client_->get("lamp_" + std::to_string(i), "Dimmer");
    if (!v) return "get: " + v.error().message;
    if (v->value().real() != level) return "value " + std::to_string(v->value().real()) + " after set " + value.str();
    return {};
  }

  int stop() {
    EXPECT_EQ(command("quit"), "ok");
    const int provider_rc = provider_->wait(60s);
    provider_.reset();
    core_->kill(SIGTERM);
    EXPECT_EQ(core_->wait(60s), 0);
    core_.reset();
    return provider_rc;
  }

  test::TempDir dir_{"floe-sdk-notify"};
  std::string sock_dir_;
  std::optional<test::Child> core_;
  std::optional<test::Child> provider_;
  std::optional<Client> client_;
  int ctl_ = -1;
};

TEST_P(SdkNotify, SetsReachTheProviderAndAreAnsweredManyTimesInARow) {
  start(3);
  ASSERT_TRUE(eventually([&] { return online(1) && online(2) && online(3); }));
  // Alternating devices: each set finds the provider asleep on (futex), or spinning over, a ring
  // that has been idle since the last one.
  for (int round = 0; round < 60; ++round) {
    const int lamp_no = 1 + round % 3;
    const double level = static_cast<double>(round % 10) / 10.0;
    ASSERT_EQ(set(lamp_no, level), "") << "round " << round;
  }
  // Several sets back to back on one device, without a get between them.
  for (int i = 1; i <= 20; ++i) {
    auto r = client_->set("lamp_2", "Dimmer", std::to_string(static_cast<double>(i) / 20.0));
    ASSERT_TRUE(r && r->results_size() == 1 && r->results(0).ok()) << (r ? r->DebugString() : r.error().message);
  }
  EXPECT_EQ(set(2, 0.25), "");
  // Futex mode waits through bridge threads (one for three devices, or one each without
  // futex_waitv); the other modes start none.
  std::istringstream threads(command("threads"));
  std::size_t bridges = 99;
  threads >> bridges;
  const std::string notify = GetParam().notify, bridge = GetParam().bridge;
  EXPECT_EQ(bridges, notify != "futex" ? 0U : bridge == "fallback" ? 3U : 1U);
  // The core says whether the connection got doorbells.
  const std::string log = slurp(dir_ / "core.log");
  EXPECT_NE(log.find("provider 'notify-test' connected"), std::string::npos) << log;
  EXPECT_EQ(log.find(", no doorbells)") == std::string::npos, GetParam().bells()) << log;
  EXPECT_EQ(stop(), 0);
}

TEST_P(SdkNotify, DevicesAddedAndRemovedWhileTheProviderWaitsAreServed) {
  start(2);
  ASSERT_TRUE(eventually([&] { return online(1) && online(2); }));
  ASSERT_EQ(set(1, 0.5), "");
  // Added while the bridge (futex) waits on the others' words.
  ASSERT_EQ(command("add 3"), "ok");
  ASSERT_TRUE(eventually([&] { return online(3); }));
  for (int round = 0; round < 10; ++round) {
    ASSERT_EQ(set(3, static_cast<double>(round) / 10.0), "") << "round " << round;
    ASSERT_EQ(set(1, static_cast<double>(round) / 20.0), "") << "round " << round;
  }
  // Removed while waited on: the others keep being served, the removed one is refused.
  ASSERT_EQ(command("remove 1"), "ok");
  ASSERT_TRUE(eventually([&] { return !online(1); }));
  auto gone = client_->set("lamp_1", "Dimmer", "0.1");
  EXPECT_TRUE(!gone || gone->results_size() != 1 || !gone->results(0).ok()) << gone->DebugString();
  for (int round = 0; round < 10; ++round) {
    ASSERT_EQ(set(2, static_cast<double>(round) / 10.0), "") << "round " << round;
    ASSERT_EQ(set(3, static_cast<double>(round) / 20.0), "") << "round " << round;
  }
  // Back again (a new grant, a new ring to wait on).
  ASSERT_EQ(command("add 1"), "ok");
  ASSERT_TRUE(eventually([&] { return online(1); }));
  for (int round = 0; round < 10; ++round) {
    ASSERT_EQ(set(1, static_cast<double>(round) / 10.0), "") << "round " << round;
    ASSERT_EQ(set(2, static_cast<double>(round) / 20.0), "") << "round " << round;
  }
  EXPECT_EQ(stop(), 0);
}

INSTANTIATE_TEST_SUITE_P(Modes, SdkNotify,
                         ::testing::Values(Mode{"futex", "waitv", "futex"}, Mode{"futex", "fallback", "futex_fallback"},
                                           Mode{"spin", "waitv", "spin"}, Mode{"eventfd", "waitv", "eventfd"},
                                           Mode{"eventfd", "waitv", "eventfd_core_without_doorbells", false, true},
                                           Mode{"eventfd", "waitv", "eventfd_sdk_without_doorbells", true, false},
                                           Mode{"poll", "waitv", "poll"}),
                         [](const auto& info) { return std::string(info.param.name); });

class SdkDoorbells : public SdkNotify {};

// Declarations the core refuses after giving them a doorbell slot give it back: with 64 slots
// (max_devices_per_provider = 10, rounded up to a word), 70 refused declarations and then a real
// device must leave that device a slot its requests can ring.
TEST_P(SdkDoorbells, RefusedDeclarationsDoNotUseUpTheSlots) {
  start(1, "max_devices_per_provider = 10\n");
  ASSERT_TRUE(eventually([&] { return online(1); }));
  for (int k = 1; k <= 70; ++k) ASSERT_EQ(command("clash " + std::to_string(k)), "ok");
  ASSERT_EQ(command("add 2"), "ok");
  ASSERT_TRUE(eventually([&] { return online(2); })) << slurp(dir_ / "provider.log");
  for (int round = 0; round < 5; ++round) {
    ASSERT_EQ(set(2, static_cast<double>(round) / 10.0), "") << "round " << round;
    ASSERT_EQ(set(1, static_cast<double>(round) / 20.0), "") << "round " << round;
  }
  const std::string log = slurp(dir_ / "core.log");
  EXPECT_NE(log.find("device 'clash-70'"), std::string::npos) << "the clashes were not refused by the core";
  EXPECT_EQ(stop(), 0);
}

INSTANTIATE_TEST_SUITE_P(Eventfd, SdkDoorbells, ::testing::Values(Mode{"eventfd", "waitv", "doorbells"}),
                         [](const auto& info) { return std::string(info.param.name); });

class SdkFutexBridge : public SdkNotify {};

// 130 futex-mode devices: more than one futex_waitv call can hold, so two bridge threads, not 130.
// Every device is answered, whichever bridge watches it.
TEST_P(SdkFutexBridge, ManyDevicesAreAllServedByAFewBridgeThreads) {
  constexpr int kDevices = 130;
  start(kDevices);
  ASSERT_TRUE(eventually([&] {
    for (int i = kDevices; i >= 1; --i) {
      if (!online(i)) return false;
    }
    return true;
  }));
  for (int i = 1; i <= kDevices; ++i) ASSERT_EQ(set(i, 0.5), "") << "lamp_" << i;
  for (int i = kDevices; i >= 1; i -= 7) ASSERT_EQ(set(i, 0.75), "") << "lamp_" << i;
  std::istringstream threads(command("threads"));
  std::size_t bridges = 0, all = 0;
  threads >> bridges >> all;
  ASSERT_GT(all, 0U);
  if (std::string(GetParam().bridge) == "fallback") {
    EXPECT_EQ(bridges, static_cast<std::size_t>(kDevices));
  } else {
    EXPECT_EQ(bridges, 2U);  // ceil(130 / 127)
  }
  EXPECT_EQ(stop(), 0);
}

INSTANTIATE_TEST_SUITE_P(Futex, SdkFutexBridge,
                         ::testing::Values(Mode{"futex", "waitv", "waitv"}, Mode{"futex", "fallback", "fallback"}),
                         [](const auto& info) { return std::string(info.param.name); });

#endif  // FLOE_CORE_BIN

}  // namespace
}  // namespace floe::sdk
