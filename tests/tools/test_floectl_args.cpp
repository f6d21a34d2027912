// floectl's command line: subcommands, global options anywhere, usage errors exit 2.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "commands.hpp"

namespace floe::client {
namespace {

struct Parsed {
  ParseOutcome outcome;
  std::string out;
  std::string err;
};

Parsed parse(std::vector<std::string> args) {
  args.insert(args.begin(), "floectl");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out;
  std::ostringstream err;
  Parsed p{parse_arguments(static_cast<int>(argv.size()), argv.data(), out, err), {}, {}};
  p.out = out.str();
  p.err = err.str();
  return p;
}

TEST(FloectlArgs, SetTakesEntityComponentAndValue) {
  auto p = parse({"set", "kitchen_ceiling", "Dimmer", "0.5"});
  ASSERT_TRUE(p.outcome.invocation) << p.err;
  EXPECT_EQ(p.outcome.invocation->command, Command::kSet);
  EXPECT_EQ(p.outcome.invocation->entity, "kitchen_ceiling");
  EXPECT_EQ(p.outcome.invocation->component, "Dimmer");
  EXPECT_EQ(p.outcome.invocation->value, "0.5");
}

TEST(FloectlArgs, QueryWordsAreJoinedWhetherQuotedOrNot) {
  auto quoted = parse({"query", "avg Dimmer where Light in group kitchen"});
  auto words = parse({"query", "avg", "Dimmer", "where", "Light", "in", "group", "kitchen"});
  ASSERT_TRUE(quoted.outcome.invocation);
  ASSERT_TRUE(words.outcome.invocation);
  EXPECT_EQ(quoted.outcome.invocation->query, "avg Dimmer where Light in group kitchen");
  EXPECT_EQ(words.outcome.invocation->query, quoted.outcome.invocation->query);
}

TEST(FloectlArgs, GlobalOptionsMayComeBeforeOrAfterTheCommand) {
  auto before = parse({"--json", "--socket-dir", "/tmp/x", "--timeout", "2.5", "devices"});
  auto after = parse({"devices", "--json", "--socket-dir", "/tmp/x", "--timeout", "2.5"});
  for (const auto* p : {&before, &after}) {
    ASSERT_TRUE(p->outcome.invocation) << p->err;
    EXPECT_TRUE(p->outcome.invocation->json);
    EXPECT_EQ(p->outcome.invocation->socket_dir, "/tmp/x");
    EXPECT_DOUBLE_EQ(p->outcome.invocation->timeout_seconds, 2.5);
  }
}

TEST(FloectlArgs, WatchResumesUnlessNoResumeIsGiven) {
  auto plain = parse({"watch", "avg Dimmer where Light"});
  auto no_resume = parse({"watch", "--no-resume", "avg", "Dimmer", "where", "Light"});
  ASSERT_TRUE(plain.outcome.invocation) << plain.err;
  ASSERT_TRUE(no_resume.outcome.invocation) << no_resume.err;
  EXPECT_TRUE(plain.outcome.invocation->resume);
  EXPECT_FALSE(no_resume.outcome.invocation->resume);
  EXPECT_EQ(no_resume.outcome.invocation->query, "avg Dimmer where Light");
  // Only watch has it.
  EXPECT_EQ(parse({"query", "--no-resume", "count where Light"}).outcome.exit_code, to_int(ExitCode::kUsage));
}

TEST(FloectlArgs, DefaultsAreTheSharedSocketDirAndFiveSeconds) {
  auto p = parse({"groups"});
  ASSERT_TRUE(p.outcome.invocation);
  EXPECT_EQ(p.outcome.invocation->socket_dir, ipc::default_socket_dir());
  EXPECT_DOUBLE_EQ(p.outcome.invocation->timeout_seconds, 5.0);
  EXPECT_FALSE(p.outcome.invocation->json);
  EXPECT_EQ(p.outcome.invocation->protocol_version, ipc::kProtocolVersion);
}

TEST(FloectlArgs, EntitiesTakesAnOptionalDevice) {
  auto all = parse({"entities"});
  auto one = parse({"entities", "lights-a"});
  ASSERT_TRUE(all.outcome.invocation);
  ASSERT_TRUE(one.outcome.invocation);
  EXPECT_EQ(all.outcome.invocation->device, "");
  EXPECT_EQ(one.outcome.invocation->device, "lights-a");
}

TEST(FloectlArgs, GroupAddAndRemove) {
  auto add = parse({"group", "add", "kitchen", "lights-a"});
  auto remove = parse({"group", "remove", "kitchen", "lights-a"});
  ASSERT_TRUE(add.outcome.invocation);
  ASSERT_TRUE(remove.outcome.invocation);
  EXPECT_EQ(add.outcome.invocation->command, Command::kGroupAdd);
  EXPECT_EQ(remove.outcome.invocation->command, Command::kGroupRemove);
  EXPECT_EQ(add.outcome.invocation->group, "kitchen");
  EXPECT_EQ(add.outcome.invocation->device, "lights-a");
}

TEST(FloectlArgs, UsageErrorsExitTwoWithAMessage) {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {}, {"get", "only-entity"}, {"set", "e", "Dimmer"}, {"group"}, {"group", "add", "g"},
           {"devices", "--timeout", "0"}, {"devices", "--timeout", "soon"}, {"query"}, {"frobnicate"}}) {
    auto p = parse(args);
    EXPECT_FALSE(p.outcome.invocation);
    EXPECT_EQ(p.outcome.exit_code, 2);
    EXPECT_FALSE(p.err.empty());
  }
}

TEST(FloectlArgs, HelpExitsZeroAndListsTheExitCodes) {
  auto p = parse({"--help"});
  EXPECT_FALSE(p.outcome.invocation);
  EXPECT_EQ(p.outcome.exit_code, 0);
  EXPECT_NE(p.out.find("Exit codes"), std::string::npos);
  EXPECT_NE(p.out.find("6  the device is offline"), std::string::npos);
  EXPECT_EQ(p.out.find("protocol-version"), std::string::npos);  // hidden: tests only
}

TEST(FloectlArgs, HiddenProtocolVersionOption) {
  auto p = parse({"--protocol-version", "999", "devices"});
  ASSERT_TRUE(p.outcome.invocation);
  EXPECT_EQ(p.outcome.invocation->protocol_version, 999u);
}

}  // namespace
}  // namespace floe::client
