// `floectl watch` across a core restart, with the real programs: floe-core, a virtual-lights
// provider and floectl (its stdout and stderr in separate files). The watch survives SIGTERM and
// SIGKILL of the core, says so on stderr, and prints a value set after the restart; Ctrl-C ends it
// while it waits for an absent core; --no-resume keeps the old exit. Every wait is a bounded poll
// (a hang guard), never a timing threshold.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "client.hpp"
#include "support/integration.hpp"
#include "support/process.hpp"

#if defined(FLOE_CORE_BIN) && defined(VIRTUAL_LIGHTS_BIN) && defined(FLOECTL_BIN)

namespace floe::test {
namespace {

using namespace std::chrono_literals;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

class FloectlResume : public ::testing::Test {
 protected:
  void TearDown() override {
    watch_.reset();
    provider_.reset();
    core_.reset();
    if (HasFailure()) {
      for (const char* name : {"core.log", "lights.log", "watch.out", "watch.err"}) {
        std::fprintf(stderr, "---- %s\n%s\n", name, slurp(dir_ / name).c_str());
      }
    }
  }

  void start_core() {
    start_core_process({});
    ASSERT_GT(core_->pid(), 0);
    // A Welcome proves this core listens (a SIGKILLed predecessor's socket file may linger).
    ASSERT_TRUE(eventually([&] { return static_cast<bool>(client::Client::connect(options())); }))
        << "floe-core did not start serving";
  }
  /// floe-core on the test's socket directory, with `args` added.
  void start_core_process(std::vector<std::string> args) {
    args.insert(args.begin(), {"--socket-dir", sockets_});
    core_.emplace(FLOE_CORE_BIN, std::move(args), dir_ / "core.log");
  }
  /// Starts a core and `floectl --json watch ARGS... 'count where Light'`, waits for its first
  /// result, then stops the core (SIGTERM).
  void watch_then_stop_core(std::vector<std::string> args) {
    ASSERT_NO_FATAL_FAILURE(start_core());
    args.push_back("count where Light");
    ASSERT_NO_FATAL_FAILURE(start_watch(std::move(args)));
    ASSERT_TRUE(eventually([&] { return contains(watch_out(), "\"count\":0"); })) << watch_out();
    EXPECT_EQ(stop_core(SIGTERM), 0);
  }
  /// Stops the core with `sig` and returns its exit code.
  int stop_core(int sig) {
    core_->signal(sig);
    const int code = core_->finish();
    core_.reset();
    return code;
  }
  void start_provider() {
    provider_.emplace(VIRTUAL_LIGHTS_BIN,
                      std::vector<std::string>{"--name", "lamp", "--group", "lamp", "--prefix", "lamp_light_", "--count",
                                               "1", "--socket-dir", sockets_},
                      dir_ / "lights.log");
    ASSERT_GT(provider_->pid(), 0);
  }
  /// floectl watch in the background: stdout to watch.out, stderr to watch.err.
  void start_watch(std::vector<std::string> args) {
    args.insert(args.begin(), {"--socket-dir", sockets_, "--json", "watch"});
    watch_.emplace(FLOECTL_BIN, std::move(args), dir_ / "watch.err", dir_ / "watch.out");
    ASSERT_GT(watch_->pid(), 0);
  }
  std::string watch_out() const { return slurp(dir_ / "watch.out"); }
  std::string watch_err() const { return slurp(dir_ / "watch.err"); }

  /// Sets lamp_light_1's Dimmer, retrying while the provider is not (yet, again) connected.
  bool set_dimmer(const std::string& value) {
    return eventually([&] {
      auto c = client::Client::connect(options());
      if (!c) return false;
      auto r = c->set("lamp_light_1", "Dimmer", value);
      return r && r->results_size() <= 1 && (r->results().empty() || r->results(0).ok());
    });
  }
  /// Writes core.toml and returns its path.
  std::string write_config(const std::string& toml) {
    std::ofstream(dir_ / "core.toml") << toml;
    return dir_ / "core.toml";
  }
  [[nodiscard]] client::ClientOptions options() const {
    return {.socket_dir = sockets_, .timeout = 30s, .peer_name = "itest-resume"};
  }

  /// Every line of stdout is one JSON document (notices went to stderr only).
  void expect_json_lines() const {
    std::istringstream lines(watch_out());
    int n = 0;
    for (std::string line; std::getline(lines, line); ++n) {
      EXPECT_TRUE(nlohmann::json::accept(line)) << "stdout line " << n << " is not JSON: " << line;
    }
    EXPECT_GT(n, 0);
  }

  TempDir dir_{"floe-resume"};
  std::string sockets_ = dir_ / "sockets";
  std::optional<Process> core_;
  std::optional<Process> provider_;
  std::optional<Process> watch_;
};

class FloectlResumeBySignal : public FloectlResume, public ::testing::WithParamInterface<int> {};

TEST_P(FloectlResumeBySignal, WatchKeepsGoingAcrossACoreRestartAndPrintsTheNewValue) {
  const int sig = GetParam();
  ASSERT_NO_FATAL_FAILURE(start_core());
  ASSERT_NO_FATAL_FAILURE(start_provider());
  ASSERT_TRUE(set_dimmer("0.25"));
  ASSERT_NO_FATAL_FAILURE(start_watch({"avg Dimmer where Light"}));
  ASSERT_TRUE(eventually([&] { return contains(watch_out(), "\"number\":0.25"); })) << watch_out();

  EXPECT_EQ(stop_core(sig), sig == SIGKILL ? 128 + SIGKILL : 0);
  EXPECT_TRUE(eventually([&] { return contains(watch_err(), "floe-core went away"); })) << watch_err();
  EXPECT_TRUE(watch_->alive()) << "floectl watch ended with the core";
  ASSERT_NO_FATAL_FAILURE(start_core());
  EXPECT_TRUE(eventually([&] { return contains(watch_err(), "resumed"); })) << watch_err();
  ASSERT_TRUE(set_dimmer("0.75")) << "the provider did not come back";
  EXPECT_TRUE(eventually([&] { return contains(watch_out(), "\"number\":0.75"); })) << watch_out();
  EXPECT_TRUE(watch_->alive());

  watch_->signal(SIGINT);
  EXPECT_EQ(watch_->finish(), 0);
  expect_json_lines();
  EXPECT_EQ(stop_core(SIGTERM), 0);
}

INSTANTIATE_TEST_SUITE_P(Core, FloectlResumeBySignal, ::testing::Values(SIGTERM, SIGKILL),
                         [](const auto& info) { return std::string(info.param == SIGKILL ? "SIGKILL" : "SIGTERM"); });

TEST_F(FloectlResume, CtrlCWhileWaitingForAnAbsentCoreExitsZero) {
  ASSERT_NO_FATAL_FAILURE(watch_then_stop_core({}));
  ASSERT_TRUE(eventually([&] { return contains(watch_err(), "reconnecting"); })) << watch_err();
  watch_->signal(SIGINT);
  EXPECT_EQ(watch_->finish(), 0) << watch_err();  // -1: still running at the hang guard
  EXPECT_FALSE(contains(watch_err(), "resumed")) << watch_err();
  expect_json_lines();
}

TEST_F(FloectlResume, NoResumeExitsWithTheErrorWhenTheCoreStops) {
  ASSERT_NO_FATAL_FAILURE(watch_then_stop_core({"--no-resume"}));
  EXPECT_EQ(watch_->finish(), 1) << watch_err();
  EXPECT_TRUE(contains(watch_err(), "floectl: floe-core closed the connection")) << watch_err();
  EXPECT_FALSE(contains(watch_err(), "reconnecting")) << watch_err();
}

TEST_F(FloectlResume, ACoreThatRefusesTheResumedWatchEndsItWithTheRefusal) {
  ASSERT_NO_FATAL_FAILURE(watch_then_stop_core({}));
  ASSERT_TRUE(eventually([&] { return contains(watch_err(), "reconnecting"); })) << watch_err();
  // The restarted core admits only another uid: no more attempts, the refusal's exit code.
  const uid_t other = ::geteuid() == 4242 ? 4243 : 4242;
  start_core_process({"--config", write_config("allowed_uids = [" + std::to_string(other) + "]\n")});
  EXPECT_EQ(watch_->finish(), 9) << watch_err();
  EXPECT_TRUE(contains(watch_err(), "not allowed")) << watch_err();
  EXPECT_FALSE(contains(watch_err(), "resumed")) << watch_err();
}

}  // namespace
}  // namespace floe::test

#endif
