// What a Provider does without a core: schema checks, offline writes and availability remembered,
// removed devices, fd()/process() with nothing listening, stop() before run().
#include "floe/sdk/provider.hpp"

#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

namespace floe::sdk {
namespace {

using namespace std::chrono_literals;

ProviderOptions nowhere() {
  return {.name = "unit", .socket_dir = "/nonexistent/floe-sdk-unit", .reconnect_min = 5ms, .reconnect_max = 20ms};
}

DeviceSpec lamp() {
  return {.id = "lamp", .name = "Lamp", .groups = {},
          .entities = {{.id = "lamp_1", .name = "Lamp", .components = {Component::Light, Component::Switch, Component::Dimmer,
                                                                      {Component::Text, 8}, Component::ColorMode}}}};
}

TEST(Provider, SocketPathComesFromTheSocketDir) {
  Provider p(nowhere());
  EXPECT_EQ(p.socket_path(), "/nonexistent/floe-sdk-unit/provider.sock");
  EXPECT_GE(p.fd(), 0);
  EXPECT_FALSE(p.connected());
}

// The provider signals the core through pipes: a signal after the core closed its end must not
// end the process. An application's own choice is kept.
TEST(Provider, IgnoresSigpipeUnlessTheApplicationChose) {
  struct sigaction saved {};
  ASSERT_EQ(::sigaction(SIGPIPE, nullptr, &saved), 0);
  ::signal(SIGPIPE, SIG_DFL);
  { Provider p(nowhere()); }
  struct sigaction now {};
  ASSERT_EQ(::sigaction(SIGPIPE, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, SIG_IGN);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  ::close(pipe_fds[0]);
  EXPECT_EQ(::write(pipe_fds[1], "x", 1), -1);  // EPIPE, and the process lives on
  EXPECT_EQ(errno, EPIPE);
  ::close(pipe_fds[1]);

  static_cast<void>(::signal(SIGPIPE, +[](int) {}));
  { Provider p(nowhere()); }
  ASSERT_EQ(::sigaction(SIGPIPE, nullptr, &now), 0);
  EXPECT_NE(now.sa_handler, SIG_IGN);
  EXPECT_NE(now.sa_handler, SIG_DFL);
  ::sigaction(SIGPIPE, &saved, nullptr);
}

TEST(Provider, InvalidDevicesAreRefused) {
  Provider p(nowhere());
  ASSERT_TRUE(p.try_add_device(lamp()));
  EXPECT_FALSE(p.try_add_device(lamp())) << "duplicate device id";
  EXPECT_FALSE(p.try_add_device({.id = "", .name = "", .groups = {}, .entities = {}}));
  EXPECT_FALSE(p.try_add_device({.id = "twice", .name = "", .groups = {},
                                 .entities = {{.id = "x", .name = "", .components = {Component::Switch, Component::Switch}}}}));
  EXPECT_FALSE(p.try_add_device({.id = "dup-entity", .name = "", .groups = {},
                                 .entities = {{.id = "x", .name = "", .components = {}}, {.id = "x", .name = "", .components = {}}}}));
  EXPECT_FALSE(p.try_add_device({.id = "bad-max", .name = "", .groups = {},
                                 .entities = {{.id = "y", .name = "", .components = {{Component::Switch, 8}}}}}));
}

TEST(Provider, OfflineWritesAreCheckedAndRemembered) {
  Provider p(nowhere());
  Device& d = p.add_device(lamp());
  EXPECT_FALSE(d.online());
  EXPECT_EQ(d.entity("lamp_1"), EntityIndex{0});
  EXPECT_FALSE(d.entity("nope"));
  EXPECT_EQ(d.set("lamp_1", Component::Dimmer, 0.5), WriteStatus::kOk);
  EXPECT_EQ(d.value(0, Component::Dimmer), Value{0.5});
  EXPECT_EQ(d.set(0, Component::Dimmer, true), WriteStatus::kWrongType);
  EXPECT_EQ(d.set(0, Component::Color, ipc::Rgb{}), WriteStatus::kNoSuchComponent);
  EXPECT_EQ(d.set(1, Component::Switch, true), WriteStatus::kNoSuchEntity);
  EXPECT_EQ(d.set("nope", Component::Switch, true), WriteStatus::kNoSuchEntity);
  EXPECT_EQ(d.set(0, Component::ColorMode, ipc::EnumValue{999}), WriteStatus::kOutOfRange);
  EXPECT_EQ(d.set_text(0, Component::Text, "12345678"), WriteStatus::kOk);
  EXPECT_EQ(d.set_text(0, Component::Text, "123456789"), WriteStatus::kTooLong);
  EXPECT_EQ(d.set_text(0, Component::Dimmer, "x"), WriteStatus::kWrongType);
  EXPECT_EQ(d.value(0, Component::Dimmer), Value{0.5}) << "a refused write changes nothing";
}

TEST(Provider, AvailabilityIsRememberedOffline) {
  Provider p(nowhere());
  Device& d = p.add_device(lamp());
  EXPECT_TRUE(d.available()) << "available until said otherwise";
  d.set_available(false, "unplugged");
  EXPECT_FALSE(d.available());
  EXPECT_FALSE(d.online());
  EXPECT_TRUE(p.process()) << "the wake it causes is harmless without a core";
  d.set_available(true);
  EXPECT_TRUE(d.available());
}

TEST(Provider, RemovedDevicesAreGoneAndTheirIdCanReturn) {
  Provider p(nowhere());
  p.add_device(lamp());
  EXPECT_FALSE(p.remove_device("nope")) << "unknown id";
  ASSERT_TRUE(p.remove_device("lamp"));
  EXPECT_FALSE(p.remove_device("lamp")) << "already removed";
  EXPECT_TRUE(p.process());
  auto again = p.try_add_device(lamp());
  ASSERT_TRUE(again) << "the id is free again";
  EXPECT_EQ(again->get().set("lamp_1", Component::Dimmer, 0.25), WriteStatus::kOk);
  EXPECT_FALSE(again->get().value(0, Component::Switch)) << "a new device: nothing remembered";
}

TEST(Provider, ConcurrentOfflineWritesAreSafe) {
  Provider p(nowhere());
  Device& d = p.add_device(lamp());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&d, t] {
      for (int i = 0; i < 1000; ++i) (void)d.set(0, Component::Dimmer, (t * 1000 + i) / 4000.0);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_TRUE(d.value(0, Component::Dimmer).has_value());
}

TEST(Provider, ProcessWithoutACoreRetriesQuietlyThroughItsFd) {
  Provider p(nowhere());
  (void)p.add_device(lamp());
  int attempts = 0;
  const auto until = std::chrono::steady_clock::now() + 500ms;
  while (std::chrono::steady_clock::now() < until) {
    pollfd pfd{p.fd(), POLLIN, 0};
    if (::poll(&pfd, 1, 50) == 1) ++attempts;
    ASSERT_TRUE(p.process());
  }
  EXPECT_GE(attempts, 3) << "the reconnect timer must make fd() readable";
  EXPECT_FALSE(p.connected());
}

TEST(Provider, StopBeforeRunMakesRunReturn) {
  Provider p(nowhere());
  p.stop();
  EXPECT_TRUE(p.run());
}

TEST(Provider, StopFromAnotherThreadEndsRun) {
  Provider p(nowhere());
  std::thread stopper([&] {
    std::this_thread::sleep_for(50ms);
    p.stop();
  });
  EXPECT_TRUE(p.run());
  stopper.join();
}

}  // namespace
}  // namespace floe::sdk
