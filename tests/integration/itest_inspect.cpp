// floe-inspect against a live system: a real floe-core and a virtual-lights provider under a
// stream of floectl writes while floe-inspect attaches, reads and detaches again and again. Its
// JSON must match what floectl says and what was just set; --validate must pass on the live
// system; and the writes must all succeed (the inspector disturbs nothing). Waits are bounded polls.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

extern char** environ;

namespace floe::test {
namespace {

#if defined(FLOE_CORE_BIN) && defined(VIRTUAL_LIGHTS_BIN) && defined(FLOECTL_BIN) && defined(FLOE_INSPECT_BIN)
#define FLOE_INSPECT_PROGRAMS 1
#endif

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

constexpr auto kBound = 60s;  // only stops a hang; sanitizer builds are slow

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool eventually(const std::function<bool()>& ok) {
  for (const auto end = std::chrono::steady_clock::now() + kBound; std::chrono::steady_clock::now() < end;) {
    if (ok()) return true;
    std::this_thread::sleep_for(100ms);
  }
  return ok();
}

// A program run with posix_spawn, its stdout+stderr in `log`; SIGKILLed and reaped if still alive
// when it goes out of scope.
class Spawned {
 public:
  Spawned(const std::string& program, const std::vector<std::string>& args, const std::string& log) {
    std::vector<std::string> all{program};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (::posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  Spawned(const Spawned&) = delete;
  Spawned& operator=(const Spawned&) = delete;
  ~Spawned() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      (void)reap(true);
    }
  }
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] bool alive() { return pid_ > 0 && !reap(false); }
  /// Exit code (128 + signal if killed), or -1 if it did not end within the bound.
  int finish() {
    if (!eventually([&] { return !alive(); })) return -1;
    return code_;
  }
  void kill(int sig) const { ::kill(pid_, sig); }

 private:
  bool reap(bool block) {
    int st = 0;
    if (::waitpid(pid_, &st, block ? 0 : WNOHANG) != pid_) return false;
    code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    pid_ = -1;
    return true;
  }
  pid_t pid_ = -1;
  int code_ = -1;
};

struct Ran {
  int exit = -1;
  std::string out;
};

class InspectLive : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef FLOE_INSPECT_PROGRAMS
    GTEST_SKIP() << "floe-core, virtual-lights, floectl or floe-inspect is not built";
#else
    char tmpl[] = "/tmp/floe-itest-inspect-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    sockets_ = dir_ + "/sockets";
#endif
  }
  void TearDown() override {
    provider_.reset();
    core_.reset();
    if (HasFailure()) {
      for (const char* log : {"/core.log", "/provider.log"}) {
        std::fprintf(stderr, "---- %s\n%s\n", log, read_all(dir_ + log).c_str());
      }
    }
    if (!dir_.empty()) fs::remove_all(dir_);
  }

#ifdef FLOE_INSPECT_PROGRAMS
  Ran run(const std::string& program, std::vector<std::string> args) {
    const std::string log = dir_ + "/run-" + std::to_string(runs_.fetch_add(1)) + ".out";
    Ran r;
    {
      Spawned p(program, args, log);
      r.exit = p.finish();
    }
    r.out = read_all(log);
    fs::remove(log);
    return r;
  }
  Ran floectl(std::vector<std::string> args) {
    args.insert(args.begin(), {"--socket-dir", sockets_, "--timeout", "20"});
    return run(FLOECTL_BIN, std::move(args));
  }
  Ran inspect(std::vector<std::string> args) {
    args.insert(args.begin(), {"--socket-dir", sockets_});
    return run(FLOE_INSPECT_BIN, std::move(args));
  }
  json inspect_json(std::vector<std::string> args) {
    args.insert(args.begin(), "--json");
    const Ran r = inspect(std::move(args));
    EXPECT_EQ(r.exit, 0) << r.out;
    const json j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    // A failed run still has the keys the checks read (const json's operator[] on a missing key is
    // undefined behaviour), with no regions, so the assertions fail cleanly.
    if (j.is_discarded() || !j.is_object() || !j.contains("regions")) {
      return json{{"core_pid", nullptr}, {"regions", json::array()}};
    }
    return j;
  }
  int online(bool want) {
    const Ran r = floectl({"--json", "devices"});
    const json j = json::parse(r.out, nullptr, false);
    if (r.exit != 0 || j.is_discarded()) return -1;
    int n = 0;
    for (const auto& d : j["devices"]) n += d["online"] == want ? 1 : 0;
    return n;
  }
  void start() {
    core_.emplace(FLOE_CORE_BIN, std::vector<std::string>{"--socket-dir", sockets_}, dir_ + "/core.log");
    ASSERT_TRUE(eventually([&] { return fs::exists(sockets_ + "/client.sock") || !core_->alive(); }));
    ASSERT_TRUE(core_->alive());
    provider_.emplace(VIRTUAL_LIGHTS_BIN,
                      std::vector<std::string>{"--name", "kitchen", "--group", "kitchen", "--prefix",
                                               "kitchen_light_", "--count", "3", "--socket-dir", sockets_},
                      dir_ + "/provider.log");
    ASSERT_TRUE(eventually([&] { return online(true) == 3; })) << "the provider's 3 devices never came online";
  }

  // What every report of the healthy live system must say.
  void expect_known_state(const json& j) {
    EXPECT_EQ(j["core_pid"], core_->pid());
    // The 3 devices' regions, and the provider connection's doorbells.
    ASSERT_EQ(j["regions"].size(), 4u) << j.dump(2);
    std::set<std::string> devices;
    int bell_regions = 0;
    for (const auto& r : j["regions"]) {
      if (r["header"]["kind"] == "doorbells") {
        ++bell_regions;
        EXPECT_TRUE(r["memfd_name"].get<std::string>().starts_with("floe-bells-")) << r["memfd_name"];
        EXPECT_TRUE(r["violations"].empty()) << r["violations"].dump();
        EXPECT_EQ(r["provider"]["pid"], provider_->pid());
        // The provider's doorbell and one per shard of the core (2 worker threads by default here).
        ASSERT_GE(r["doorbells"].size(), 2u) << r.dump(2);
        for (const auto& d : r["doorbells"]) {
          EXPECT_EQ(d["readable"], true);
          EXPECT_GE(d["slots"].get<int>(), 64);
        }
        continue;
      }
      devices.insert(r["device"].get<std::string>());
      EXPECT_EQ(r["memfd_name"], "floe-dev-" + r["device"].get<std::string>());
      EXPECT_TRUE(r["violations"].empty()) << r["violations"].dump();
      EXPECT_EQ(r["seals"], "F_SEAL_SEAL|F_SEAL_SHRINK|F_SEAL_GROW");
      EXPECT_EQ(r["header"]["creator_pid"], core_->pid());
      EXPECT_EQ(r["online"], true);
      EXPECT_EQ(r["provider"]["pid"], provider_->pid());
      EXPECT_EQ(r["provider"]["name"], "virtual-lights");
      ASSERT_EQ(r["rings"].size(), 2u);
      for (const auto& ring : r["rings"]) {
        EXPECT_EQ(ring["readable"], true);
        EXPECT_LE(ring["head"].get<std::uint64_t>(), ring["tail"].get<std::uint64_t>());
      }
      ASSERT_EQ(r["tree"]["entity_count"], 1);
      std::set<std::string> comps;
      for (const auto& c : r["tree"]["entities"][0]["components"]) {
        comps.insert(c["component"].get<std::string>());
        EXPECT_EQ(c["ok"], true) << c.dump();
      }
      EXPECT_EQ(comps, (std::set<std::string>{"Light", "Switch", "Dimmer", "Color"}));
    }
    EXPECT_EQ(devices, (std::set<std::string>{"kitchen-1", "kitchen-2", "kitchen-3"}));
    EXPECT_EQ(bell_regions, 1);
  }
  const json* component(const json& region, const std::string& name) {
    for (const auto& c : region["tree"]["entities"][0]["components"]) {
      if (c["component"] == name) return &c;
    }
    return nullptr;
  }
#endif

  std::string dir_;
  std::string sockets_;
  std::optional<Spawned> core_;
  std::optional<Spawned> provider_;
  std::atomic<int> runs_{0};
};

#ifdef FLOE_INSPECT_PROGRAMS

TEST_F(InspectLive, AttachesRepeatedlyUnderWriteLoadAndReportsTheKnownState) {
  start();

  // A stream of writes to kitchen_light_1 for as long as the inspector works.
  std::atomic<bool> stop{false};
  std::atomic<int> writes{0};
  std::vector<Ran> failed;
  std::thread writer([&] {
    for (int i = 0; !stop.load(std::memory_order_relaxed); ++i) {
      Ran r = floectl({"set", "kitchen_light_1", "Dimmer", i % 2 ? "0.25" : "0.75"});
      if (r.exit != 0) failed.push_back(std::move(r));
      writes.fetch_add(1, std::memory_order_relaxed);
    }
  });
  ASSERT_TRUE(eventually([&] { return writes.load() >= 2; }));

  for (int round = 0; round < 6; ++round) {
    expect_known_state(inspect_json({}));
    const Ran v = inspect({"--validate"});
    EXPECT_EQ(v.exit, 0) << v.out;
    EXPECT_EQ(v.out, "ok: 4 region(s), every invariant holds\n");
    const Ran text = inspect({});
    EXPECT_EQ(text.exit, 0) << text.out;
    EXPECT_NE(text.out.find("(device kitchen-2)"), std::string::npos) << text.out;
  }
  // A value just set with floectl is in the tree the inspector reads.
  const Ran set = floectl({"set", "kitchen_light_2", "Dimmer", "0.375"});
  ASSERT_EQ(set.exit, 0) << set.out;
  const json one = inspect_json({"--device", "kitchen-2"});
  ASSERT_EQ(one["regions"].size(), 1u);
  const json* dimmer = component(one["regions"][0], "Dimmer");
  ASSERT_NE(dimmer, nullptr);
  EXPECT_EQ((*dimmer)["value"], 0.375);
  EXPECT_GE(one["regions"][0]["tree"]["entities"][0]["change_seq"].get<std::uint64_t>(), 1u);

  // The other modes and filters, still under load.
  expect_known_state(inspect_json({"--pid", std::to_string(core_->pid())}));
  EXPECT_EQ(inspect_json({"--provider", "kitchen"})["regions"].size(), 4u);
  EXPECT_EQ(inspect_json({"--provider", "nobody"})["regions"].size(), 0u);
  const json rings = inspect_json({"--rings-only"});
  ASSERT_EQ(rings["regions"].size(), 4u);
  EXPECT_FALSE(rings["regions"][0].contains("tree"));
  const Ran watch = inspect({"--watch", "--json", "--count", "3", "--interval", "0.2"});
  EXPECT_EQ(watch.exit, 0) << watch.out;
  std::istringstream lines(watch.out);
  int refreshes = 0;
  for (std::string line; std::getline(lines, line); ++refreshes) {
    const json w = json::parse(line, nullptr, false);
    ASSERT_FALSE(w.is_discarded()) << line;
    ASSERT_EQ(w["regions"].size(), 4u);
    for (const auto& r : w["regions"]) EXPECT_GE(r["rates"]["rx_messages_per_s"].get<double>(), 0.0);
  }
  EXPECT_EQ(refreshes, 3);

  stop = true;
  writer.join();
  for (const auto& f : failed) ADD_FAILURE() << "a write failed while the inspector attached: " << f.out;
  EXPECT_TRUE(core_->alive());
  EXPECT_TRUE(provider_->alive());
  // The load went through the rings the inspector read: kitchen-1's tx counted its requests.
  const json after = inspect_json({"--device", "kitchen-1"});
  ASSERT_EQ(after["regions"].size(), 1u);
  EXPECT_GE(after["regions"][0]["rings"][0]["records_pushed"].get<int>(), writes.load());
  EXPECT_EQ(inspect({"--validate"}).exit, 0);
  const Ran get = floectl({"--json", "get", "kitchen_light_2", "Dimmer"});
  EXPECT_EQ(get.exit, 0) << get.out;
}

TEST_F(InspectLive, AKilledProviderShowsAsOfflineAndTheRegionsStayValid) {
  start();
  provider_->kill(SIGKILL);
  EXPECT_EQ(provider_->finish(), 128 + SIGKILL);
  ASSERT_TRUE(eventually([&] { return online(false) == 3; }));
  // The connection's doorbells go with it, once its shards have let the devices go.
  ASSERT_TRUE(eventually([&] { return inspect_json({})["regions"].size() == 3u; }));
  const json j = inspect_json({});
  ASSERT_EQ(j["regions"].size(), 3u);
  for (const auto& r : j["regions"]) {
    EXPECT_EQ(r["online"], false);
    EXPECT_TRUE(r["provider"].is_null());
    EXPECT_TRUE(r["violations"].empty()) << r["violations"].dump();
  }
  const Ran v = inspect({"--validate"});
  EXPECT_EQ(v.exit, 0) << v.out;
}

TEST_F(InspectLive, NoCoreIsAClearErrorNotACrash) {
  const Ran r = inspect({});
  EXPECT_EQ(r.exit, 2) << r.out;
  EXPECT_NE(r.out.find("floe-inspect: find_core: no process holds"), std::string::npos) << r.out;
}

#endif

}  // namespace
}  // namespace floe::test
