// floectl's command line (CLI11) and its commands, kept out of main.cpp so they are unit-tested.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>

#include "client.hpp"

namespace floe::client {

enum class Command { kDevices, kEntities, kGet, kSet, kQuery, kWatch, kGroups, kGroupAdd, kGroupRemove };

/// One parsed command line.
struct Invocation {
  std::string socket_dir;
  bool json = false;
  double timeout_seconds = 5.0;
  std::uint32_t protocol_version = ipc::kProtocolVersion;  // hidden option, for tests
  Command command = Command::kDevices;
  std::string entity;
  std::string component;
  std::string value;
  std::string device;  // entities [DEVICE], group add/remove
  std::string group;
  std::string query;  // query and watch: the words joined by single spaces
  bool resume = true;  // watch: reconnect and watch again when floe-core goes away (--no-resume: false)
};

/// Either an invocation to execute, or the exit code to leave with (help printed: 0; usage
/// error printed: 2).
struct ParseOutcome {
  std::optional<Invocation> invocation;
  int exit_code = 0;
};

/// Parses argv (argv[0] is the program name). Help goes to `out`, usage errors to `err`.
[[nodiscard]] ParseOutcome parse_arguments(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

/// Connects, runs the command, prints its result to `out` and problems to `err`; returns the exit
/// code (see ExitCode). `watch` runs until SIGINT or SIGTERM (then Unwatch, exit 0), resuming
/// across core restarts unless `resume` is false (ResumingWatch; notices go to `err`).
[[nodiscard]] int execute(const Invocation& invocation, std::ostream& out, std::ostream& err);

/// parse_arguments + execute on std::cout/std::cerr: floectl's main.
[[nodiscard]] int run(int argc, const char* const* argv);

}  // namespace floe::client
