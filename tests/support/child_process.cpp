#include "support/child_process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <map>
#include <thread>

namespace floe::test {
namespace {

std::map<std::string, ChildMain>& roles() {
  static std::map<std::string, ChildMain> r;
  return r;
}

constexpr std::string_view kRoleFlag = "--floe-child=";

}  // namespace

bool register_child_role(const std::string& name, ChildMain fn) {
  roles()[name] = std::move(fn);
  return true;
}

Child::~Child() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
}

void Child::kill(int sig) {
  if (pid_ > 0) ::kill(pid_, sig);
}

int Child::wait(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) break;
    if (r < 0) return -1;
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  pid_ = -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

Result<Child> spawn_child(const std::string& role, const std::vector<std::string>& args,
                          const std::vector<int>& inherit) {
  std::vector<std::string> argv_s{"/proc/self/exe", std::string(kRoleFlag) + role};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);

  const pid_t pid = ::fork();
  if (pid < 0) return sys_error("fork");
  if (pid == 0) {
    // Child: move inherited fds out of the way first (a source may sit at a target number), then
    // place them at 3, 4, ... without CLOEXEC.
    std::vector<int> tmp;
    for (int fd : inherit) tmp.push_back(::fcntl(fd, F_DUPFD_CLOEXEC, 100));
    for (std::size_t i = 0; i < tmp.size(); ++i) {
      if (tmp[i] < 0 || ::dup2(tmp[i], 3 + static_cast<int>(i)) < 0) _exit(126);
    }
    ::execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  return Child(pid);
}

bool maybe_run_child(int argc, char** argv, int& exit_code) {
  if (argc < 2) return false;
  const std::string_view first = argv[1];
  if (first.substr(0, kRoleFlag.size()) != kRoleFlag) return false;
  const std::string name(first.substr(kRoleFlag.size()));
  const auto it = roles().find(name);
  if (it == roles().end()) {
    std::fprintf(stderr, "unknown child role '%s'\n", name.c_str());
    exit_code = 125;
    return true;
  }
  std::vector<std::string> args(argv + 2, argv + argc);
  exit_code = it->second(args);
  return true;
}

}  // namespace floe::test

// The test main: a child role if asked for one, else the GoogleTest suite.
int main(int argc, char** argv) {
  int code = 0;
  if (floe::test::maybe_run_child(argc, argv, code)) return code;
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
