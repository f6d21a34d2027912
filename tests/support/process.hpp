// A program of the build (floe-core, floe-esphome, floectl, ...) run by an integration test as a
// real process: posix_spawn, stdin from /dev/null, output appended to a log file, SIGKILLed and
// reaped if still running when the handle goes; or a short command run to its end with its output
// captured (run_shell). Header-only so a test that needs it pays nothing in the shared support
// library.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <cstdio>
#include <string>
#include <vector>

#include "support/integration.hpp"

extern char** environ;

namespace floe::test {

class Process {
 public:
  /// Starts `path` with `args`; stdout and stderr go to `log`, or stdout to `out` when it is given.
  /// pid() is -1 if the spawn failed.
  Process(const std::string& path, std::vector<std::string> args, const std::string& log, const std::string& out = "") {
    args.insert(args.begin(), path);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out.empty()) {
      posix_spawn_file_actions_adddup2(&fa, 2, 1);
    } else {
      posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    }
    if (::posix_spawn(&pid_, path.c_str(), &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  ~Process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      (void)finish();
    }
  }
  /// The pid while it runs (-1 once reaped or if the spawn failed).
  [[nodiscard]] pid_t pid() const { return pid_; }
  /// False once it has exited (it is then reaped and its code kept for finish()).
  [[nodiscard]] bool alive() {
    if (pid_ <= 0) return false;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == 0) return true;
    pid_ = -1;
    code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return false;
  }
  void signal(int sig) const {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  /// Waits for the exit; the code (128+signal when killed), or -1 if it had to be killed after
  /// the hang guard.
  int finish() {
    if (pid_ <= 0 || eventually([&] { return !alive(); })) return code_;
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int code_ = -1;
};

/// What a command run by run_shell printed, and how it ended.
struct ShellOutput {
  int code = -1;     // its exit code; -1 if it could not run or was killed
  std::string text;  // what it wrote to stdout (and to stderr when the command says 2>&1)
};

/// Runs `command` with /bin/sh to its end and captures its standard output.
inline ShellOutput run_shell(const std::string& command) {
  ShellOutput out;
  FILE* p = ::popen(command.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  std::size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.text.append(buf, n);
  const int status = ::pclose(p);
  out.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

}  // namespace floe::test
