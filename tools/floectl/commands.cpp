#include "commands.hpp"

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <iostream>
#include <vector>

#include "floe/ipc/fd.hpp"
#include "format.hpp"

namespace floe::client {
namespace {

constexpr const char* kExitCodesHelp =
    "Exit codes:\n"
    "  0  success\n"
    "  1  other error (internal, provider-reported failure, lost connection; watch --no-resume)\n"
    "  2  bad command line\n"
    "  3  not found: unknown entity, device, group or component\n"
    "  4  bad value for the component\n"
    "  5  bad query (the core's error is printed with a caret under the problem)\n"
    "  6  the device is offline\n"
    "  7  timeout: no answer from floe-core or the provider\n"
    "  8  cannot connect to floe-core (the socket path tried is printed)\n"
    "  9  not authorised (uid not allowed) or protocol version mismatch\n"
    "\n"
    "The socket directory is --socket-dir, else $FLOE_SOCKET_DIR, else $XDG_RUNTIME_DIR/floe,\n"
    "else /run/floe for root, else /tmp/floe-$UID. See docs/CLIENT.md.";

std::string join_words(const std::vector<std::string>& words) {
  std::string out;
  for (const auto& w : words) {
    if (!out.empty()) out += ' ';
    out += w;
  }
  return out;
}

int report(std::ostream& err, const ClientError& e) {
  // Multi-line messages (a query error's caret rendering) start on their own line so the caret
  // stays under the text it points at.
  if (e.message.find('\n') != std::string::npos) {
    err << "floectl: error:\n" << e.message;
    if (e.message.back() != '\n') err << '\n';
  } else {
    err << "floectl: " << e.message << '\n';
  }
  return to_int(e.exit);
}

std::string now_hms() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%H:%M:%S", &tm);
  return buf;
}

ExitCode exit_code_for_set(const proto::SetResult& r) {
  if (r.code() != proto::ERROR_CODE_UNSPECIFIED) return exit_code_for(r.code());
  // A core that leaves the code unset still says why in words.
  if (r.message().find("offline") != std::string::npos) return ExitCode::kOffline;
  if (r.message().find("time") != std::string::npos) return ExitCode::kTimeout;
  return ExitCode::kGeneric;
}

int run_watch(const ClientOptions& options, const Invocation& inv, std::ostream& out, std::ostream& err) {
  // SIGINT/SIGTERM become readable data on a signalfd, so the wait loop (also the wait to
  // reconnect) can send Unwatch and leave cleanly instead of dying mid-write.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  sigset_t old_mask;
  if (::sigprocmask(SIG_BLOCK, &mask, &old_mask) != 0) {
    return report(err, {ExitCode::kGeneric, std::string("sigprocmask: ") + std::strerror(errno)});
  }
  struct RestoreMask {
    sigset_t mask;
    ~RestoreMask() { ::sigprocmask(SIG_SETMASK, &mask, nullptr); }
  } restore{old_mask};
  ipc::Fd sigfd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!sigfd) return report(err, {ExitCode::kGeneric, std::string("signalfd: ") + std::strerror(errno)});

  auto watch = ResumingWatch::start(options, inv.query);
  if (!watch) return report(err, watch.error());
  if (!inv.json) out << "watching: " << inv.query << "  (Ctrl-C to stop)" << std::endl;
  for (bool interrupted = false; !interrupted;) {
    auto next = watch->next_event(sigfd.get());
    if (!next) return report(err, next.error());
    switch (next->kind) {
      case WaitOutcome::Kind::kInterrupted: {
        // Consume the pending signals, or restoring the mask would deliver them and kill us.
        signalfd_siginfo info;
        while (::read(sigfd.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
        }
        interrupted = true;
        break;
      }
      case WaitOutcome::Kind::kLost:
        if (!inv.resume) return report(err, {ExitCode::kGeneric, next->reason});
        err << "floectl: floe-core went away (" << next->reason << "); reconnecting..." << std::endl;
        break;
      case WaitOutcome::Kind::kResumed: err << "floectl: resumed" << std::endl; break;
      case WaitOutcome::Kind::kEvent:
        if (inv.json) {
          out << to_json(next->event).dump() << std::endl;
        } else {
          out << format_watch_event(next->event, now_hms()) << std::flush;
        }
        break;
    }
  }
  if (auto done = watch->stop(); !done) return report(err, done.error());
  return 0;
}

}  // namespace

ParseOutcome parse_arguments(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  Invocation inv;
  inv.socket_dir = ipc::default_socket_dir();
  std::vector<std::string> query_words;

  CLI::App app{"floectl: ask floe-core about devices, entities and groups, read and set component values,\n"
               "run and watch queries.",
               "floectl"};
  app.footer(kExitCodesHelp);
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand: `floectl devices --json`
  app.add_option("--socket-dir", inv.socket_dir, "Directory holding floe-core's client.sock")
      ->capture_default_str();
  app.add_flag("--json", inv.json, "Machine-readable output: one JSON document per result (watch: one per line)");
  app.add_option("--timeout", inv.timeout_seconds, "Seconds to wait for an answer")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 86400.0));
  app.add_option("--protocol-version", inv.protocol_version, "Protocol version sent in Hello (testing only)")
      ->group("");

  auto* devices = app.add_subcommand("devices", "List devices: provider, online state, entity count, groups");
  auto* entities = app.add_subcommand("entities", "List entities (of one device, or all)");
  entities->add_option("device", inv.device, "Only this device's entities");
  auto* get = app.add_subcommand("get", "Read one component of an entity");
  get->add_option("entity", inv.entity, "Entity id, e.g. kitchen_ceiling")->required();
  get->add_option("component", inv.component, "Component name, e.g. Dimmer")->required();
  auto* set = app.add_subcommand("set", "Ask the entity's provider to set a component; waits for the outcome");
  set->add_option("entity", inv.entity, "Entity id")->required();
  set->add_option("component", inv.component, "Component name")->required();
  set->add_option("value", inv.value, "New value: true, 0.5, open, #ff8000, text")->required();
  auto* query = app.add_subcommand("query", "Run a query, e.g. 'avg Dimmer where Light in group kitchen'");
  query->add_option("text", query_words, "The query (quote it, or pass it as several words)")->required();
  auto* watch = app.add_subcommand("watch", "Print the query's result each time it changes, until Ctrl-C;\n"
                                              "if floe-core goes away, reconnect and watch again");
  watch->add_option("text", query_words, "The query")->required();
  bool no_resume = false;
  watch->add_flag("--no-resume", no_resume, "Exit with an error when the connection to floe-core ends");
  auto* groups = app.add_subcommand("groups", "List groups and their devices");
  auto* group = app.add_subcommand("group", "Edit a group");
  group->require_subcommand(1);
  auto* group_add = group->add_subcommand("add", "Add DEVICE to GROUP (creating the group if needed)");
  auto* group_remove = group->add_subcommand("remove", "Remove DEVICE from GROUP");
  for (auto* sub : {group_add, group_remove}) {
    sub->add_option("group", inv.group, "Group name")->required();
    sub->add_option("device", inv.device, "Device name")->required();
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e, out, err);
    return {std::nullopt, code == 0 ? 0 : to_int(ExitCode::kUsage)};
  }

  if (*devices) inv.command = Command::kDevices;
  else if (*entities) inv.command = Command::kEntities;
  else if (*get) inv.command = Command::kGet;
  else if (*set) inv.command = Command::kSet;
  else if (*query) inv.command = Command::kQuery;
  else if (*watch) inv.command = Command::kWatch;
  else if (*groups) inv.command = Command::kGroups;
  else if (*group_add) inv.command = Command::kGroupAdd;
  else if (*group_remove) inv.command = Command::kGroupRemove;
  inv.query = join_words(query_words);
  inv.resume = !no_resume;
  if ((inv.command == Command::kQuery || inv.command == Command::kWatch) && inv.query.empty()) {
    err << "floectl: the query is empty\n";
    return {std::nullopt, to_int(ExitCode::kUsage)};
  }
  return {std::move(inv), 0};
}

int execute(const Invocation& inv, std::ostream& out, std::ostream& err) {
  ClientOptions options;
  options.socket_dir = inv.socket_dir;
  options.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(inv.timeout_seconds * 1000.0)));
  options.protocol_version = inv.protocol_version;
  if (inv.command == Command::kWatch) return run_watch(options, inv, out, err);
  auto client = Client::connect(options);
  if (!client) return report(err, client.error());

  // Prints the JSON document or the human text of one successful answer.
  auto emit = [&](const auto& message, const std::string& human) {
    if (inv.json) {
      out << to_json(message).dump(2) << '\n';
    } else {
      out << human;
    }
    return 0;
  };

  switch (inv.command) {
    case Command::kDevices: {
      auto r = client->list_devices();
      return r ? emit(*r, format_devices(*r)) : report(err, r.error());
    }
    case Command::kEntities: {
      auto r = client->list_entities(inv.device);
      return r ? emit(*r, format_entities(*r)) : report(err, r.error());
    }
    case Command::kGet: {
      auto r = client->get(inv.entity, inv.component);
      return r ? emit(*r, format_value(*r, inv.component)) : report(err, r.error());
    }
    case Command::kSet: {
      auto r = client->set(inv.entity, inv.component, inv.value);
      if (!r) return report(err, r.error());
      std::string human = format_set_results(*r);
      if (r->results_size() <= 1 && (r->results().empty() || r->results(0).ok())) {
        human = inv.entity + " " + inv.component + " = " + inv.value + ": done\n";
      }
      emit(*r, human);
      for (const auto& one : r->results()) {
        if (!one.ok()) {
          return report(err, {exit_code_for_set(one), "setting " + inv.component + " on " + one.entity() + " failed: " +
                                                          (one.message().empty() ? "no reason given" : one.message())});
        }
      }
      return 0;
    }
    case Command::kQuery: {
      auto r = client->run_query(inv.query);
      if (!r) return report(err, r.error());
      if (const auto* result = std::get_if<proto::QueryResult>(&*r)) return emit(*result, format_query_result(*result));
      // A set over the matching entities: each one's outcome; the first failure sets the exit code.
      const auto& sets = std::get<proto::SetResults>(*r);
      emit(sets, sets.results().empty() ? std::string("no entity matched: nothing was set\n") : format_set_results(sets));
      for (const auto& one : sets.results()) {
        if (!one.ok()) {
          return report(err, {exit_code_for_set(one), "setting " + one.entity() + " failed: " +
                                                          (one.message().empty() ? "no reason given" : one.message())});
        }
      }
      return 0;
    }
    case Command::kWatch: break;  // handled above
    case Command::kGroups: {
      auto r = client->list_groups();
      return r ? emit(*r, format_groups(*r)) : report(err, r.error());
    }
    case Command::kGroupAdd:
    case Command::kGroupRemove: {
      const bool remove = inv.command == Command::kGroupRemove;
      auto r = client->edit_group(inv.group, inv.device, remove);
      if (!r) return report(err, r.error());
      if (inv.json) {
        out << nlohmann::json{{"ok", true}, {"group", inv.group}, {"device", inv.device}, {"removed", remove}}.dump(2)
            << '\n';
      } else {
        out << (remove ? "removed " + inv.device + " from group " + inv.group
                       : "added " + inv.device + " to group " + inv.group)
            << '\n';
      }
      return 0;
    }
  }
  return to_int(ExitCode::kGeneric);
}

int run(int argc, const char* const* argv) {
  auto parsed = parse_arguments(argc, argv, std::cout, std::cerr);
  if (!parsed.invocation) return parsed.exit_code;
  return execute(*parsed.invocation, std::cout, std::cerr);
}

}  // namespace floe::client
