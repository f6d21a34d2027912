// Interoperability with ESPHome clients nobody here wrote: the npm packages
// `@2colors/esphome-native-api` and `esphome-client` run (Node.js, real processes, real TCP)
// against floe-esphome-sim — plaintext with both, Noise encryption with esphome-client, and the
// wrong-key / missing-key refusals. The packages are installed once into <build>/tests/esphome-interop
// (npm ci from the committed package-lock.json) and reused while node_modules is there.
// Missing node/npm or an unreachable registry FAILS the test: it is never skipped silently.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

extern char** environ;

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

#ifdef FLOE_ESPHOME_SIM_BIN

const fs::path kScripts = fs::path(__FILE__).parent_path() / "esphome-interop";
// Sanitizer builds and a loaded machine make everything slower; bounds only stop hangs.
constexpr auto kScriptBound = 120s;
constexpr auto kInstallBound = 600s;
// Test keys (base64 of bytes 0..31 and 1..32).
constexpr const char* kKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
constexpr const char* kWrongKey = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Where `prog` is on PATH, or "" if nowhere.
std::string which(const std::string& prog) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    const auto candidate = fs::path(dir) / prog;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return {};
}

// A child process with stdout+stderr in `log`, started in `cwd`. Killed and reaped on destruction.
class Proc {
 public:
  Proc(std::vector<std::string> argv, const fs::path& cwd, const fs::path& log) {
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    const std::string dir = cwd.string(), out = log.string();
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0 || ::dup2(fd, 1) < 0 || ::dup2(fd, 2) < 0 || ::chdir(dir.c_str()) != 0) _exit(126);
      const int devnull = ::open("/dev/null", O_RDONLY);
      if (devnull >= 0) ::dup2(devnull, 0);
      ::execve(args[0], args.data(), environ);
      _exit(127);
    }
  }
  Proc(const Proc&) = delete;
  Proc& operator=(const Proc&) = delete;
  ~Proc() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      (void)wait_for(60s);
    }
  }
  // Exit code, 128+signal, or -1 if still running after `bound` (then it is killed).
  int wait_for(std::chrono::milliseconds bound) {
    if (pid_ <= 0) return status_;
    const auto deadline = std::chrono::steady_clock::now() + bound;
    for (;;) {
      int st = 0;
      const pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
        return status_;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &st, 0);
        pid_ = -1;
        return -1;
      }
      std::this_thread::sleep_for(20ms);
    }
  }
  void terminate() {
    if (pid_ > 0) ::kill(pid_, SIGTERM);
  }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
};

class EsphomeInterop : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    node_ = which("node");
    npm_ = which("npm");
    // The cache lives next to the test binary, i.e. in the build directory.
    work_ = fs::canonical("/proc/self/exe").parent_path() / "esphome-interop";
    fs::create_directories(work_);
    for (const char* f : {"package.json", "package-lock.json", "twocolors.cjs", "esphome_client.mjs"})
      fs::copy_file(kScripts / f, work_ / f, fs::copy_options::overwrite_existing);
    if (node_.empty() || npm_.empty()) return;
    if (fs::exists(work_ / "node_modules/@2colors/esphome-native-api/package.json") &&
        fs::exists(work_ / "node_modules/esphome-client/package.json")) {
      installed_ = true;
      return;
    }
    Proc npm({npm_, "ci", "--no-audit", "--no-fund", "--loglevel=error"}, work_, work_ / "npm-install.log");
    const int rc = npm.wait_for(kInstallBound);
    install_log_ = read_file(work_ / "npm-install.log");
    installed_ = rc == 0;
    if (!installed_) fs::remove_all(work_ / "node_modules");  // a half install must not count as cached
  }

  void SetUp() override {
    ASSERT_FALSE(node_.empty()) << "node (Node.js 20+) is not on PATH: the ESPHome interop test needs it";
    ASSERT_FALSE(npm_.empty()) << "npm is not on PATH: the ESPHome interop test installs its clients with it";
    ASSERT_TRUE(installed_) << "npm ci of @2colors/esphome-native-api and esphome-client failed in " << work_
                            << " (is the npm registry reachable?):\n" << install_log_;
    char tmpl[] = "/tmp/floe-esphome-interop-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    std::ofstream(dir_ / "sim.yaml") << R"(sensor_interval_ms: 200
devices:
  - name: plain-node
    entities:
      - {type: light, name: Desk Lamp, color_modes: [rgb, color_temperature]}
      - {type: switch, name: Heater}
      - {type: sensor, name: Temperature, unit: "°C", state: 21.0, min: 15, max: 30}
      - {type: binary_sensor, name: Door}
  - name: secure-node
    encryption_key: )" << kKey << R"(
    entities:
      - {type: light, name: Ceiling}
      - {type: switch, name: Pump}
      - {type: sensor, name: Humidity, unit: "%", state: 40, min: 0, max: 100}
)";
    sim_ = std::make_unique<Proc>(std::vector<std::string>{FLOE_ESPHOME_SIM_BIN, "--config", (dir_ / "sim.yaml").string()},
                                  dir_, dir_ / "sim.out");
    // The first stdout line is the JSON with the ports; logs follow on stderr (same file).
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < deadline) {
      std::istringstream lines(read_file(dir_ / "sim.out"));
      std::string line;
      while (std::getline(lines, line)) {
        if (line.rfind("{\"devices\"", 0) != 0) continue;
        const auto ports = nlohmann::json::parse(line);
        for (const auto& d : ports["devices"])
          (d["encrypted"].get<bool>() ? secure_port_ : plain_port_) = d["port"].get<int>();
      }
      if (plain_port_ != 0 && secure_port_ != 0) break;
      std::this_thread::sleep_for(50ms);
    }
    ASSERT_NE(plain_port_, 0) << read_file(dir_ / "sim.out");
    ASSERT_NE(secure_port_, 0) << read_file(dir_ / "sim.out");
  }

  void TearDown() override {
    if (sim_) {
      sim_->terminate();
      EXPECT_EQ(sim_->wait_for(60s), 0) << "floe-esphome-sim did not stop cleanly:\n" << read_file(dir_ / "sim.out");
    }
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

  struct Run {
    int rc = -1;
    std::string out;
  };
  Run node(const std::string& script, int port, const std::string& key = {}) {
    std::vector<std::string> argv{node_, script, "127.0.0.1", std::to_string(port)};
    if (!key.empty()) argv.push_back(key);
    const auto log = dir_ / (script + "." + std::to_string(++runs_) + ".log");
    Proc p(argv, work_, log);
    Run r;
    r.rc = p.wait_for(kScriptBound);
    r.out = read_file(log);
    return r;
  }
  std::string sim_log() const { return read_file(dir_ / "sim.out"); }

  static inline std::string node_, npm_, install_log_;
  static inline fs::path work_;
  static inline bool installed_ = false;
  fs::path dir_;
  std::unique_ptr<Proc> sim_;
  int plain_port_ = 0, secure_port_ = 0, runs_ = 0;
};

// Each script prints "step: ..." lines and "OK" only when it listed a light, a switch and a
// sensor, saw state updates, and saw the light and the switch report on and off after commands.
TEST_F(EsphomeInterop, TwoColorsClientPlaintext) {
  const auto r = node("twocolors.cjs", plain_port_);
  EXPECT_EQ(r.rc, 0) << r.out << "\n--- simulator ---\n" << sim_log();
  EXPECT_NE(r.out.find("\nOK"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Light 'Desk Lamp' -> true"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Switch 'Heater' -> false"), std::string::npos) << r.out;
  EXPECT_NE(sim_log().find("switch 'Heater' -> on"), std::string::npos);
}

TEST_F(EsphomeInterop, EsphomeClientPlaintext) {
  const auto r = node("esphome_client.mjs", plain_port_);
  EXPECT_EQ(r.rc, 0) << r.out << "\n--- simulator ---\n" << sim_log();
  EXPECT_NE(r.out.find("encrypted false"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("light-desk_lamp -> true"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("switch-heater -> false"), std::string::npos) << r.out;
}

TEST_F(EsphomeInterop, EsphomeClientNoiseEncryption) {
  const auto r = node("esphome_client.mjs", secure_port_, kKey);
  EXPECT_EQ(r.rc, 0) << r.out << "\n--- simulator ---\n" << sim_log();
  EXPECT_NE(r.out.find("encrypted true"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("light-ceiling -> true"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("switch-pump -> false"), std::string::npos) << r.out;
  EXPECT_NE(sim_log().find("switch 'Pump' -> on"), std::string::npos);
}

TEST_F(EsphomeInterop, EsphomeClientWithTheWrongKeyIsRefused) {
  const auto r = node("esphome_client.mjs", secure_port_, kWrongKey);
  EXPECT_NE(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("EncryptionKeyInvalidError"), std::string::npos) << r.out;
  EXPECT_NE(sim_log().find("wrong encryption key"), std::string::npos) << sim_log();
}

TEST_F(EsphomeInterop, EsphomeClientWithoutAKeyIsToldEncryptionIsRequired) {
  const auto r = node("esphome_client.mjs", secure_port_);
  EXPECT_NE(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("EncryptionRequiredError"), std::string::npos) << r.out;
  EXPECT_NE(sim_log().find("plaintext peer but a key is configured"), std::string::npos) << sim_log();
}

TEST_F(EsphomeInterop, BothClientsAtOnceOnOneDevice) {
  // Many clients per device: both packages connected to the same node concurrently.
  std::vector<std::string> a{node_, "twocolors.cjs", "127.0.0.1", std::to_string(plain_port_)};
  std::vector<std::string> b{node_, "esphome_client.mjs", "127.0.0.1", std::to_string(plain_port_)};
  Proc pa(a, work_, dir_ / "a.log");
  Proc pb(b, work_, dir_ / "b.log");
  EXPECT_EQ(pa.wait_for(kScriptBound), 0) << read_file(dir_ / "a.log") << "\n--- simulator ---\n" << sim_log();
  EXPECT_EQ(pb.wait_for(kScriptBound), 0) << read_file(dir_ / "b.log") << "\n--- simulator ---\n" << sim_log();
}

#else
TEST(EsphomeInterop, NeedsTheSimulator) { FAIL() << "floe-esphome-sim is not part of this build"; }
#endif

}  // namespace
