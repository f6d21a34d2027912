// Answers over one packet (64 KiB), against the real floe-core: two virtual-lights processes
// declare enough lights, with long ids, that the device list, a list query, a set over all of
// them and a watch of them each exceed a packet. The client library and floectl get them whole,
// split over packets; a client that did not ask for split answers gets a LIMIT error that says
// why, and its session goes on.
#include <sys/resource.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "client.hpp"
#include "floe/ipc/channel.hpp"
#include "floe/ipc/protocol.hpp"
#include "support/integration.hpp"
#include "support/process.hpp"

namespace floe {
namespace {

using namespace std::chrono_literals;

#if defined(FLOE_CORE_BIN) && defined(VIRTUAL_LIGHTS_BIN) && defined(FLOECTL_BIN)

// Entity ids up to the 64-character limit make each entry of a list long.
const std::string kPrefix = "a-light-with-a-deliberately-long-entity-id-number-";

test::ShellOutput floectl(const std::string& sockets, const std::string& args) {
  return test::run_shell(std::string(FLOECTL_BIN) + " --socket-dir " + sockets + " --timeout 10 " + args + " 2>&1");
}

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = 0; (at = text.find(what, at)) != std::string::npos; at += what.size()) ++n;
  return n;
}

// A client speaking the protocol by hand, without split_answers in its Hello.
class PlainClient {
 public:
  explicit PlainClient(const std::string& dir) {
    auto ch = ipc::Channel::connect(dir + "/" + std::string(ipc::kClientSocketName));
    EXPECT_TRUE(ch) << ch.error().to_string();
    if (!ch) return;
    channel_.emplace(std::move(*ch));
    proto::ClientRequest hello;
    hello.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
    hello.mutable_hello()->set_peer_name("plain");
    hello.mutable_hello()->set_role(proto::PEER_ROLE_CLIENT);
    auto welcome = call(hello);
    EXPECT_TRUE(welcome.has_welcome()) << welcome.DebugString();
  }
  proto::ClientResponse call(proto::ClientRequest& req) {
    proto::ClientResponse resp;
    if (!channel_) return resp;
    req.set_id(next_id_++);
    EXPECT_TRUE(channel_->send(req));
    return receive();
  }
  proto::ClientResponse receive() {
    proto::ClientResponse resp;
    if (!channel_) return resp;
    auto got = channel_->receive(resp);
    EXPECT_TRUE(got) << got.error().to_string();
    EXPECT_FALSE(resp.more()) << "split although the client did not ask for it";
    return resp;
  }

 private:
  std::optional<ipc::Channel> channel_;
  std::uint64_t next_id_ = 1;
};

TEST(LargeAnswers, ListsQueriesSetsAndWatchesOverOnePacketArriveWhole) {
  // Each light costs floe-core about four descriptors; children inherit the raised limit.
  rlimit rl{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
  rl.rlim_cur = rl.rlim_max;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &rl), 0);
  const std::size_t per_provider = std::min<std::size_t>(1000, (rl.rlim_cur - 512) / 10);
  ASSERT_GE(per_provider, 700U) << "RLIMIT_NOFILE's hard limit (" << rl.rlim_max << ") is too low for this test";
  const std::size_t lights = 2 * per_provider;

  test::TempDir dir("floe-large");
  const std::string sockets = dir / "sockets";
  test::Process core(FLOE_CORE_BIN, {"--socket-dir", sockets, "--log-level", "warn"}, dir / "core.log");
  ASSERT_GT(core.pid(), 0);
  std::vector<std::unique_ptr<test::Process>> providers;
  for (const char* side : {"a", "b"}) {
    providers.push_back(std::make_unique<test::Process>(
        VIRTUAL_LIGHTS_BIN,
        std::vector<std::string>{"--socket-dir", sockets, "--count", std::to_string(per_provider), "--name",
                                 std::string("bulk-") + side, "--prefix", kPrefix + side + "-"},
        dir / "lights.log"));
    ASSERT_GT(providers.back()->pid(), 0);
  }
  client::ClientOptions options;
  options.socket_dir = sockets;
  options.timeout = 10s;
  std::optional<client::Client> c;
  ASSERT_TRUE(test::eventually([&] {
    if (!c) {
      if (auto got = client::Client::connect(options)) c.emplace(std::move(*got));
      if (!c) return false;
    }
    auto n = c->query("count where Light");
    return n && n->count() == lights;
  }, 5 * test::kHangGuard)) << "the lights did not all come online: " << test::slurp(dir / "core.log");

  // The device list: every device, once, online.
  auto devices = c->list_devices();
  ASSERT_TRUE(devices) << devices.error().message;
  ASSERT_EQ(static_cast<std::size_t>(devices->devices_size()), lights);
  ASSERT_GT(devices->ByteSizeLong(), ipc::kMaxPacketBytes) << "the test needs answers over one packet";
  std::set<std::string> names;
  for (const auto& d : devices->devices()) {
    EXPECT_TRUE(d.online()) << d.name();
    names.insert(d.name());
  }
  EXPECT_EQ(names.size(), lights);

  // A list query: every light with its Switch, in one answer.
  auto listed = c->query("list Switch where Light");
  ASSERT_TRUE(listed) << listed.error().message;
  EXPECT_EQ(listed->count(), lights);
  ASSERT_EQ(static_cast<std::size_t>(listed->matches_size()), lights);
  std::set<std::string> entities;
  for (const auto& m : listed->matches()) entities.insert(m.entity());
  EXPECT_EQ(entities.size(), lights);
  EXPECT_GT(listed->ByteSizeLong(), ipc::kMaxPacketBytes);

  // A watch of them all: its first event is the whole list, and so is the one after a change.
  auto watch = c->watch("list Switch where Light");
  ASSERT_TRUE(watch) << watch.error().message;
  auto first = c->next_event(-1, 10s);
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_EQ(static_cast<std::size_t>(first->event.result().matches_size()), lights);

  // A set over all of them: one result per light, every one reached.
  auto set = c->run_query("set Switch = true where Light");
  ASSERT_TRUE(set) << set.error().message;
  const auto* results = std::get_if<proto::SetResults>(&*set);
  ASSERT_NE(results, nullptr);
  ASSERT_EQ(static_cast<std::size_t>(results->results_size()), lights);
  for (const auto& r : results->results()) EXPECT_TRUE(r.ok()) << r.entity() << ": " << r.message();
  EXPECT_GT(results->ByteSizeLong(), ipc::kMaxPacketBytes);

  // Events come until one shows every light on (watch events carry the newest result).
  bool all_on = false;
  for (int i = 0; i < 200 && !all_on; ++i) {
    auto ev = c->next_event(-1, 10s);
    ASSERT_TRUE(ev) << ev.error().message;
    const auto& result = ev->event.result();
    ASSERT_EQ(static_cast<std::size_t>(result.matches_size()), lights);
    all_on = std::all_of(result.matches().begin(), result.matches().end(),
                         [](const proto::EntityValue& m) { return m.value().has_boolean() && m.value().boolean(); });
  }
  EXPECT_TRUE(all_on);

  // A watcher that stops reading while its events pile up: the core keeps only the newest event
  // of each watch queued, replacing one split answer by another, and whatever reaches the
  // watcher must still be whole events, ending with the last state.
  auto slow = client::Client::connect(options);
  ASSERT_TRUE(slow) << slow.error().message;
  ASSERT_TRUE(slow->watch("list Switch where Light"));
  constexpr int kRounds = 11;  // the last one switches them off
  for (int round = 0; round < kRounds; ++round) {
    auto toggled = c->run_query(round % 2 == 0 ? "set Switch = false where Light" : "set Switch = true where Light");
    ASSERT_TRUE(toggled) << toggled.error().message;
  }
  bool all_off = false;
  int events = 0;
  while (!all_off) {
    auto ev = slow->next_event(-1, 10s);
    ASSERT_TRUE(ev) << ev.error().message << " after " << events << " events";
    ++events;
    const auto& result = ev->event.result();
    ASSERT_EQ(static_cast<std::size_t>(result.matches_size()), lights) << "event " << events;
    all_off = std::none_of(result.matches().begin(), result.matches().end(),
                           [](const proto::EntityValue& m) { return m.value().boolean(); });
  }
  // Each round changes every light; a few events fit the socket, the rest replace each other.
  EXPECT_LE(events, kRounds) << "an event per round reached the watcher: nothing was replaced";

  // floectl joins them too.
  const auto json = floectl(sockets, "--json devices");
  EXPECT_EQ(json.code, 0) << json.text.substr(0, 400);
  EXPECT_EQ(occurrences(json.text, "\"online\": true"), lights);
  const auto text = floectl(sockets, "query 'list where Light'");
  EXPECT_EQ(text.code, 0) << text.text.substr(0, 400);
  EXPECT_EQ(occurrences(text.text, kPrefix), lights);

  // A client that did not ask for split answers is refused, told why, and served on.
  PlainClient plain(sockets);
  proto::ClientRequest req;
  req.mutable_list_devices();
  auto refused = plain.call(req);
  ASSERT_TRUE(refused.has_error()) << refused.ShortDebugString().substr(0, 300);
  EXPECT_EQ(refused.error().code(), proto::ERROR_CODE_LIMIT);
  EXPECT_NE(refused.error().message().find("split_answers"), std::string::npos) << refused.error().message();
  req.Clear();
  req.mutable_query()->set_text("count where Light");
  auto counted = plain.call(req);
  ASSERT_TRUE(counted.has_query()) << counted.ShortDebugString();
  EXPECT_EQ(counted.query().count(), lights);
  // Its watch's event that does not fit arrives as that watch's event, with the reason.
  req.Clear();
  req.mutable_watch()->set_text("list where Light");
  auto started = plain.call(req);
  ASSERT_TRUE(started.has_watch_started()) << started.ShortDebugString();
  auto refused_event = plain.receive();
  ASSERT_TRUE(refused_event.has_watch_event()) << refused_event.ShortDebugString().substr(0, 300);
  EXPECT_EQ(refused_event.watch_event().watch_id(), started.watch_started().watch_id());
  EXPECT_FALSE(refused_event.watch_event().has_result());
  EXPECT_NE(refused_event.watch_event().error().find("split_answers"), std::string::npos)
      << refused_event.watch_event().error();
  req.Clear();
  req.mutable_query()->set_text("count where Light");
  counted = plain.call(req);
  ASSERT_TRUE(counted.has_query()) << counted.ShortDebugString();
  EXPECT_EQ(counted.query().count(), lights);
  // Refusals keep coming (a watch of a big result changing often): the log gets the 1st, 2nd,
  // 4th, 8th, ... of them, not a line each.
  for (int i = 0; i < 6; ++i) {
    req.Clear();
    req.mutable_list_devices();
    refused = plain.call(req);
    ASSERT_TRUE(refused.has_error()) << refused.ShortDebugString().substr(0, 300);
  }

  for (auto& p : providers) {
    p->signal(SIGTERM);
    EXPECT_EQ(p->finish(), 0);
  }
  core.signal(SIGTERM);
  EXPECT_EQ(core.finish(), 0);
  // At least 8 refusals (more if the watch's result changed): logged as "(N refused so far)" with
  // N = 1, 2, 4, 8, ...
  const std::string log = test::slurp(dir / "core.log");
  std::vector<unsigned long> logged;
  const std::string tag = " refused so far)";
  for (auto at = log.find(tag); at != std::string::npos; at = log.find(tag, at + 1)) {
    const auto open = log.rfind('(', at);
    ASSERT_NE(open, std::string::npos);
    logged.push_back(std::stoul(log.substr(open + 1, at - open - 1)));
  }
  ASSERT_GE(logged.size(), 4U) << log;
  for (std::size_t i = 0; i < logged.size(); ++i) EXPECT_EQ(logged[i], 1UL << i) << log;
  EXPECT_EQ(occurrences(log, "or say Hello with split_answers"), logged.size()) << log;
}

#endif

}  // namespace
}  // namespace floe
