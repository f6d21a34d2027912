// Real child processes for integration tests: fork + exec of the test binary itself, in a named
// role, with chosen fds inherited at fixed numbers.
//
//   FLOE_CHILD_ROLE(echo) { ... return 0; }            // defined at namespace scope in a test file
//   auto child = spawn_child("echo", {"arg"}, {sock.get()});   // sock becomes fd 3 in the child
//   EXPECT_EQ(child->wait(), 0);
//
// The test binary's main (support/test_main.cpp behaviour, via gtest_main replacement) runs the
// role instead of the tests when started as `<binary> --floe-child=<role> args...`.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "floe/ipc/result.hpp"

namespace floe::test {

using ChildMain = std::function<int(const std::vector<std::string>& args)>;

/// Registers a role; used through FLOE_CHILD_ROLE.
bool register_child_role(const std::string& name, ChildMain fn);

/// A running child. wait() reaps it; the destructor kills (SIGKILL) and reaps a child still running.
class Child {
 public:
  explicit Child(pid_t pid) : pid_(pid) {}
  Child(Child&& o) noexcept : pid_(o.pid_) { o.pid_ = -1; }
  Child& operator=(Child&&) = delete;
  ~Child();
  [[nodiscard]] pid_t pid() const { return pid_; }
  /// Waits for exit (up to `timeout`, then SIGKILL). Returns the exit code, 128+signal if killed
  /// by a signal, or -1 on timeout.
  int wait(std::chrono::milliseconds timeout = std::chrono::seconds(120));
  void kill(int sig);

 private:
  pid_t pid_;
};

/// fork + execv(/proc/self/exe --floe-child=role args...). `inherit[i]` becomes fd 3+i in the child;
/// every other fd is closed by CLOEXEC.
[[nodiscard]] Result<Child> spawn_child(const std::string& role, const std::vector<std::string>& args,
                                        const std::vector<int>& inherit);

/// Called by main(): if argv names a child role, runs it and returns true with its exit code.
bool maybe_run_child(int argc, char** argv, int& exit_code);

}  // namespace floe::test

#define FLOE_CHILD_ROLE(name)                                                               \
  static int floe_child_role_##name(const std::vector<std::string>& args);                 \
  [[maybe_unused]] static const bool floe_child_registered_##name =                         \
      ::floe::test::register_child_role(#name, floe_child_role_##name);                     \
  static int floe_child_role_##name([[maybe_unused]] const std::vector<std::string>& args)
