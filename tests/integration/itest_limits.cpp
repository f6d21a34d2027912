// floe-core's per-peer limits ([limits], docs/CORE.md; docs/SECURITY.md) against a real floe-core
// process: a raw-protocol provider and raw clients (this test process) run into each limit, get the
// error answer or the disconnect, the core's log names the reason and the peer, and a well-behaved
// provider (virtual-lights, its own process) keeps serving gets and sets throughout.
// No timing thresholds: floods run until the core reacts (with a hang guard), recovery is polled.
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "client.pb.h"
#include "floe/ipc/channel.hpp"
#include "floe/ipc/components.hpp"
#include "floe/ipc/protocol.hpp"
#include "management.pb.h"
#include "support/integration.hpp"
#include "support/process.hpp"

#if defined(FLOE_CORE_BIN) && defined(VIRTUAL_LIGHTS_BIN)

namespace floe::core {
namespace {

using namespace std::chrono_literals;
using test::eventually;


// A client speaking client.proto on its own connection. Every answer is checked to carry no
// descriptor: the core never hands a client a mapping.
class RawClient {
 public:
  explicit RawClient(const std::string& dir) {
    if (auto ch = ipc::Channel::connect(dir + "/client.sock")) channel_.emplace(std::move(*ch));
  }
  bool hello() {
    proto::ClientRequest req;
    req.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
    req.mutable_hello()->set_role(proto::PEER_ROLE_CLIENT);
    auto r = call(req);
    return r && r->has_welcome();
  }
  std::uint64_t post(proto::ClientRequest req) {
    req.set_id(++last_id_);
    return channel_ && channel_->send(req) ? last_id_ : 0;
  }
  std::optional<proto::ClientResponse> next() {
    if (!channel_ || !test::wait_readable(channel_->fd())) return std::nullopt;
    auto packet = channel_->receive();
    if (!packet) return std::nullopt;
    EXPECT_TRUE(packet->fds.empty()) << "the core sent a client " << packet->fds.size() << " descriptors";
    proto::ClientResponse resp;
    if (!resp.ParseFromArray(packet->bytes.data(), static_cast<int>(packet->bytes.size()))) return std::nullopt;
    return resp;
  }
  /// The answer to `req` (watch events of other requests are skipped).
  std::optional<proto::ClientResponse> call(proto::ClientRequest req) {
    const std::uint64_t id = post(std::move(req));
    if (id == 0) return std::nullopt;
    for (;;) {
      auto r = next();
      if (!r || r->id() == id) return r;
    }
  }
  std::optional<proto::ClientResponse> list_devices() {
    proto::ClientRequest req;
    req.mutable_list_devices();
    return call(req);
  }
  std::optional<proto::ClientResponse> watch(const std::string& text) {
    proto::ClientRequest req;
    req.mutable_watch()->set_text(text);
    return call(req);
  }
  bool online(const std::string& device) {
    auto r = list_devices();
    if (!r || !r->has_devices()) return false;
    for (const auto& d : r->devices().devices()) {
      if (d.name() == device) return d.online();
    }
    return false;
  }

 private:
  std::optional<ipc::Channel> channel_;
  std::uint64_t last_id_ = 0;
};

// A provider speaking the management protocol by hand from this process (it never serves its rings:
// every check here is about management messages).
class RawProvider {
 public:
  explicit RawProvider(const std::string& dir) {
    if (auto ch = ipc::Channel::connect(dir + "/provider.sock")) channel_.emplace(std::move(*ch));
  }
  bool connected() const { return channel_.has_value(); }
  ipc::Channel& channel() { return *channel_; }
  bool send(proto::Envelope env) {
    env.set_id(++last_id_);
    return channel_->send(env).has_value();
  }
  /// The next envelope and its descriptors (nullopt on EOF, error or the hang guard).
  std::optional<proto::Envelope> next(std::vector<ipc::Fd>* fds = nullptr) {
    if (!test::wait_readable(channel_->fd())) return std::nullopt;
    proto::Envelope env;
    auto r = channel_->receive(env);
    if (!r) return std::nullopt;
    if (fds != nullptr) *fds = std::move(*r);
    return env;
  }
  std::optional<proto::Envelope> hello(const std::string& name) {
    proto::Envelope env;
    env.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
    env.mutable_hello()->set_peer_name(name);
    env.mutable_hello()->set_role(proto::PEER_ROLE_PROVIDER);
    if (!send(env)) return std::nullopt;
    return next();
  }
  /// AddDevice `id` with `entities` Switch entities named <id>_e<i>; the core's answer.
  std::optional<proto::Envelope> add(const std::string& id, int entities, std::vector<ipc::Fd>* fds = nullptr,
                                     const std::string& name = {}) {
    proto::Envelope env;
    auto* a = env.mutable_add_device();
    a->set_device_id(id);
    a->set_name(name);
    for (int i = 0; i < entities; ++i) {
      auto* e = a->add_entities();
      e->set_id(id + "_e" + std::to_string(i));
      e->add_components()->set_component(ipc::to_id(ipc::Component::Switch));
    }
    if (!send(env)) return std::nullopt;
    return next(fds);
  }
  std::optional<proto::Envelope> remove(const std::string& id) {
    proto::Envelope env;
    env.mutable_remove_device()->set_device_id(id);
    if (!send(env)) return std::nullopt;
    return next();
  }

 private:
  std::optional<ipc::Channel> channel_;
  std::uint64_t last_id_ = 0;
};

// An ErrorReply LIMIT naming `needle`, as a provider (Envelope) or a client (ClientResponse) gets it.
template <typename Reply>
void expect_limit(const std::optional<Reply>& r, const std::string& needle, bool fatal = false) {
  ASSERT_TRUE(r) << "no answer";
  ASSERT_TRUE(r->has_error()) << "expected an ErrorReply, got body " << r->body_case();
  EXPECT_EQ(r->error().code(), proto::ERROR_CODE_LIMIT) << r->error().message();
  EXPECT_NE(r->error().message().find(needle), std::string::npos) << r->error().message();
  EXPECT_EQ(r->error().fatal(), fatal) << r->error().message();
}

class Limits : public ::testing::Test {
 protected:
  void TearDown() override {
    lights_.reset();
    core_.reset();
    // A sanitizer build of floe-core reports into its log, which nothing else reads.
    const std::string log = test::slurp(dir_ / "core.log");
    for (const char* report : {"WARNING: ThreadSanitizer", "ERROR: AddressSanitizer", "runtime error:"}) {
      EXPECT_EQ(log.find(report), std::string::npos) << "floe-core: " << report;
    }
    if (HasFailure()) {
      std::fprintf(stderr, "---- floe-core log ----\n%s\n", test::slurp(dir_ / "core.log").c_str());
      std::fprintf(stderr, "---- virtual-lights log ----\n%s\n", test::slurp(dir_ / "lights.log").c_str());
    }
  }

  /// floe-core with `limits` as its [limits] table, and virtual-lights (device good-1, entity
  /// good_light1) online.
  void start(const std::string& limits) {
    std::ofstream(dir_ / "core.toml") << "provider_timeout_ms = 600000\n[limits]\n" << limits;
    core_.emplace(FLOE_CORE_BIN,
                  std::vector<std::string>{"--config", dir_ / "core.toml", "--socket-dir", sock_, "--log-level", "info"},
                  dir_ / "core.log");
    ASSERT_TRUE(eventually([&] { return RawClient(sock_).hello(); })) << "floe-core did not start";
    lights_.emplace(VIRTUAL_LIGHTS_BIN,
                    std::vector<std::string>{"--socket-dir", sock_, "-n", "1", "--name", "good", "--prefix", "good_light"},
                    dir_ / "lights.log");
    // One session for the whole wait: each poll is one request, far below any rate used here.
    RawClient c(sock_);
    ASSERT_TRUE(c.hello());
    ASSERT_TRUE(eventually([&] { return c.online("good-1"); }, test::kHangGuard, 200ms)) << "virtual-lights not online";
  }

  /// A new client sets good_light1's Dimmer to `level` and reads it back: the well-behaved
  /// provider and the core's request path are unaffected by whatever the test did before.
  void expect_good_provider_serves(const std::string& level) {
    RawClient c(sock_);
    ASSERT_TRUE(c.hello());
    proto::ClientRequest set;
    set.mutable_set()->set_entity("good_light1");
    set.mutable_set()->set_component("Dimmer");
    set.mutable_set()->set_value(level);
    auto r = c.call(set);
    ASSERT_TRUE(r && r->has_set()) << (r && r->has_error() ? r->error().message() : "no answer");
    ASSERT_EQ(r->set().results_size(), 1);
    EXPECT_TRUE(r->set().results(0).ok()) << r->set().results(0).message();
    proto::ClientRequest get;
    get.mutable_get()->set_entity("good_light1");
    get.mutable_get()->set_component("Dimmer");
    auto g = c.call(get);
    ASSERT_TRUE(g && g->has_value()) << (g && g->has_error() ? g->error().message() : "no answer");
    EXPECT_EQ(g->value().value().real(), std::stod(level));
    EXPECT_TRUE(g->value().online());
  }

  /// The core's log eventually holds every one of `needles` (log lines are written asynchronously).
  void expect_logged(const std::vector<std::string>& needles) {
    std::string log;
    const bool all = eventually([&] {
      log = test::slurp(dir_ / "core.log");
      for (const auto& n : needles) {
        if (log.find(n) == std::string::npos) return false;
      }
      return true;
    });
    EXPECT_TRUE(all) << "missing in the core log (one of): " << ::testing::PrintToString(needles);
  }

  std::string pid_tag() const { return "(pid " + std::to_string(::getpid()) + ", uid " + std::to_string(::getuid()) + ")"; }

  test::TempDir dir_{"floe-itest-limits"};
  std::string sock_ = dir_ / "sock";
  std::optional<test::Process> core_;
  std::optional<test::Process> lights_;
};

TEST_F(Limits, DevicesPerProviderAreCappedWithAReasonAndTheConnectionStays) {
  start("max_devices_per_provider = 2\n");
  RawProvider p(sock_);
  ASSERT_TRUE(p.connected());
  auto w = p.hello("greedy");
  ASSERT_TRUE(w && w->has_welcome());
  for (const char* id : {"greedy-1", "greedy-2"}) {
    auto g = p.add(id, 1);
    ASSERT_TRUE(g && g->has_device_grant()) << id;
  }
  expect_limit(p.add("greedy-3", 1), "limits.max_devices_per_provider = 2");
  // A refused declaration is not fatal: the connection still works.
  proto::Envelope hb;
  hb.mutable_heartbeat()->set_sequence(7);
  ASSERT_TRUE(p.send(hb));
  auto echo = p.next();
  ASSERT_TRUE(echo && echo->has_heartbeat());
  EXPECT_EQ(echo->heartbeat().sequence(), 7U);
  RawClient c(sock_);
  ASSERT_TRUE(c.hello());
  EXPECT_TRUE(c.online("greedy-2"));
  EXPECT_FALSE(c.online("greedy-3"));
  expect_logged({"provider 'greedy' " + pid_tag(), "device 'greedy-3' refused", "max_devices_per_provider"});
  expect_good_provider_serves("0.25");
}

TEST_F(Limits, DevicesLeftOfflineCountAgainstTheirUidUntilRemoved) {
  // "good-1" (virtual-lights, this uid) is known already: two more fit.
  start("max_known_devices_per_uid = 3\n");
  for (const char* id : {"hit-1", "run-1"}) {  // declare, then leave it offline by hanging up
    RawProvider p(sock_);
    auto w = p.hello(id);
    ASSERT_TRUE(w && w->has_welcome());
    auto g = p.add(id, 1);
    ASSERT_TRUE(g && g->has_device_grant()) << id;
  }
  RawProvider p(sock_);
  auto w = p.hello("again");
  ASSERT_TRUE(w && w->has_welcome());
  expect_limit(p.add("hit-2", 1), "limits.max_known_devices_per_uid = 3");
  // A known device may be declared again; once removed it no longer counts.
  auto back = p.add("hit-1", 1);
  ASSERT_TRUE(back && back->has_device_grant()) << (back ? back->DebugString() : "no answer");
  auto removed = p.remove("hit-1");
  ASSERT_TRUE(removed && !removed->has_error()) << (removed ? removed->DebugString() : "no answer");
  auto fits = p.add("hit-2", 1);
  EXPECT_TRUE(fits && fits->has_device_grant()) << (fits ? fits->DebugString() : "no answer");
  expect_logged({"device 'hit-2' refused: uid " + std::to_string(::getuid()), "max_known_devices_per_uid"});
  expect_good_provider_serves("0.4375");
}

TEST_F(Limits, EntitiesPerDeviceAndPerProviderAreCapped) {
  start("max_entities_per_device = 4\nmax_entities_per_provider = 6\n");
  RawProvider p(sock_);
  ASSERT_TRUE(p.hello("wide"));
  expect_limit(p.add("wide-a", 5), "5 entities exceed limits.max_entities_per_device = 4");
  auto a = p.add("wide-b", 4);
  ASSERT_TRUE(a && a->has_device_grant());
  expect_limit(p.add("wide-c", 3), "limits.max_entities_per_provider = 6");
  auto d = p.add("wide-d", 2);
  ASSERT_TRUE(d && d->has_device_grant());
  // A removed device gives its entities back.
  auto removed = p.remove("wide-b");
  ASSERT_TRUE(removed && removed->has_device_removed());
  auto c = p.add("wide-c", 3);
  ASSERT_TRUE(c && c->has_device_grant()) << (c && c->has_error() ? c->error().message() : "");
  expect_logged({"provider 'wide' " + pid_tag(), "max_entities_per_device", "max_entities_per_provider"});
  expect_good_provider_serves("0.5");
}

TEST_F(Limits, RegionBytesPerProviderAreCapped) {
  start("max_region_bytes_per_provider = 1048576\n");
  RawProvider p(sock_);
  ASSERT_TRUE(p.hello("bulky"));
  // 20 text entities of 64 KiB each: a region over 1 MiB by itself.
  proto::Envelope heavy;
  heavy.mutable_add_device()->set_device_id("bulky-heavy");
  for (int i = 0; i < 20; ++i) {
    auto* e = heavy.mutable_add_device()->add_entities();
    e->set_id("bulky_text" + std::to_string(i));
    auto* c = e->add_components();
    c->set_component(ipc::to_id(ipc::Component::Text));
    c->set_max_bytes(64 * 1024);
  }
  ASSERT_TRUE(p.send(heavy));
  expect_limit(p.next(), "limits.max_region_bytes_per_provider = 1048576");
  // Small devices fit until the budget is spent; a removed one gives its bytes back.
  int granted = 0;
  std::optional<proto::Envelope> last;
  for (; granted < 1000; ++granted) {
    last = p.add("bulky-" + std::to_string(granted), 1);
    if (!last || !last->has_device_grant()) break;
  }
  ASSERT_GE(granted, 1);
  expect_limit(last, "limits.max_region_bytes_per_provider = 1048576");
  auto removed = p.remove("bulky-0");
  ASSERT_TRUE(removed && removed->has_device_removed());
  auto again = p.add("bulky-" + std::to_string(granted), 1);
  ASSERT_TRUE(again && again->has_device_grant()) << (again && again->has_error() ? again->error().message() : "");
  expect_logged({"provider 'bulky' " + pid_tag(), "max_region_bytes_per_provider"});
  expect_good_provider_serves("0.3125");
}

TEST_F(Limits, AnOversizedManagementMessageIsRefusedWithItsId) {
  start("max_message_bytes = 1024\n");
  RawProvider p(sock_);
  ASSERT_TRUE(p.hello("verbose"));
  auto big = p.add("verbose-1", 1, nullptr, std::string(2000, 'x'));
  expect_limit(big, "exceeds limits.max_message_bytes = 1024");
  EXPECT_EQ(big->id(), 2U);  // the AddDevice's own id: the provider knows what was refused
  auto small = p.add("verbose-1", 1);
  ASSERT_TRUE(small && small->has_device_grant());
  expect_logged({"provider 'verbose' " + pid_tag(), "max_message_bytes"});
  expect_good_provider_serves("0.75");
}

TEST_F(Limits, AProviderFloodingMessagesIsDisconnectedAndItsDevicesGoOffline) {
  start("provider_messages_per_second = 1\nprovider_message_burst = 20\n");
  RawProvider p(sock_);
  ASSERT_TRUE(p.hello("flooder"));
  auto g = p.add("flood-1", 1);
  ASSERT_TRUE(g && g->has_device_grant());
  RawClient c(sock_);
  ASSERT_TRUE(c.hello());
  ASSERT_TRUE(c.online("flood-1"));
  // Heartbeats as fast as the core answers them, each echo read before the next is sent: the
  // core's sends never block, so an answer only arrives if the receiver has room for it.
  std::optional<proto::Envelope> limit;
  for (int sent = 0; sent < 1'000'000 && !limit; ++sent) {
    proto::Envelope hb;
    hb.mutable_heartbeat()->set_sequence(static_cast<std::uint64_t>(sent));
    if (!p.send(hb)) break;
    auto in = p.next();
    if (!in) break;  // closed without a word: the expect_limit below fails
    if (in->has_error()) limit = in;
  }
  expect_limit(limit, "management messages per second", /*fatal=*/true);
  EXPECT_TRUE(eventually([&] { return !c.online("flood-1"); }, test::kHangGuard, 100ms)) << "flood-1 still online";
  expect_logged({"provider 'flooder' " + pid_tag() + " gone (more than 1 management messages per second"});
  expect_good_provider_serves("0.125");
}

TEST_F(Limits, ProvidersBeyondTheLimitAreRefusedUntilOneLeaves) {
  start("max_providers = 2\n");  // virtual-lights is one
  std::optional<RawProvider> second(std::in_place, sock_);
  ASSERT_TRUE(second->hello("second"));
  RawProvider third(sock_);
  ASSERT_TRUE(third.connected());
  expect_limit(third.next(), "too many providers connected (2; limits.max_providers = 2)", /*fatal=*/true);
  expect_logged({"provider refused " + pid_tag() + ": too many providers connected"});
  second.reset();  // the core notices EOF and frees the slot
  EXPECT_TRUE(eventually(
      [&] {
        RawProvider again(sock_);
        auto w = again.connected() ? again.hello("again") : std::nullopt;
        return w && w->has_welcome();
      },
      test::kHangGuard, 100ms));
  expect_good_provider_serves("0.0625");
}

TEST_F(Limits, AClientOverTheRequestRateGetsLimitAndRecovers) {
  start("client_requests_per_second = 1\nclient_request_burst = 5\n");
  RawClient flood(sock_);
  ASSERT_TRUE(flood.hello());
  std::optional<proto::ClientResponse> refused;
  for (int i = 0; i < 100'000 && !refused; ++i) {
    auto r = flood.list_devices();
    ASSERT_TRUE(r) << "no answer to request " << i;
    if (r->has_error()) refused = r;
  }
  ASSERT_TRUE(refused) << "never refused";
  expect_limit(refused, "more than 1 requests per second");
  expect_logged({"client pid " + std::to_string(::getpid()) + " uid " + std::to_string(::getuid()),
                 "limits.client_requests_per_second"});
  // Another session has its own bucket, and the flooder is served again once it slows down.
  expect_good_provider_serves("0.375");
  EXPECT_TRUE(eventually([&] {
    auto r = flood.list_devices();
    return r && r->has_devices();
  }, test::kHangGuard, 300ms));
  expect_logged({"back under the request rate"});
}

TEST_F(Limits, ClientsThatNeverSayHelloAreToldAndDisconnected) {
  start("client_hello_timeout_ms = 300\n");
  // Connections that say nothing would each hold one of the max_clients places.
  RawClient silent_1(sock_);
  RawClient silent_2(sock_);
  auto told = silent_1.next();
  ASSERT_TRUE(told && told->has_error()) << "the silent client was not told";
  EXPECT_EQ(told->error().code(), proto::ERROR_CODE_TIMEOUT);
  EXPECT_TRUE(told->error().fatal());
  EXPECT_NE(told->error().message().find("no Hello within 300 ms"), std::string::npos) << told->error().message();
  EXPECT_FALSE(silent_1.next()) << "the session is closed after the error";
  auto also_told = silent_2.next();
  EXPECT_TRUE(also_told && also_told->has_error());
  // A client that says Hello is served.
  EXPECT_TRUE(eventually([&] {
    RawClient fresh(sock_);
    return fresh.hello() && fresh.list_devices().has_value();
  }));
  expect_logged({"client pid " + std::to_string(::getpid()), "no Hello within 300 ms"});
  expect_good_provider_serves("0.625");
}

TEST_F(Limits, AnOversizedClientRequestIsRefusedAndTheSessionStays) {
  start("max_request_bytes = 512\n");
  RawClient c(sock_);
  ASSERT_TRUE(c.hello());
  proto::ClientRequest q;
  q.mutable_query()->set_text("count Switch where Switch == true" + std::string(1000, ' '));
  expect_limit(c.call(q), "exceeds limits.max_request_bytes = 512");
  auto d = c.list_devices();
  EXPECT_TRUE(d && d->has_devices());
  expect_logged({"client pid " + std::to_string(::getpid()), "max_request_bytes"});
  expect_good_provider_serves("0.875");
}

TEST_F(Limits, WatchesPerClientAreCapped) {
  start("max_watches_per_client = 3\n");
  RawClient c(sock_);
  ASSERT_TRUE(c.hello());
  std::vector<std::uint64_t> ids;
  for (const char* q : {"count Switch", "count Dimmer", "list Switch"}) {
    auto r = c.watch(q);
    ASSERT_TRUE(r && r->has_watch_started()) << q;
    ids.push_back(r->watch_started().watch_id());
  }
  expect_limit(c.watch("count Light"), "limits.max_watches_per_client = 3");
  // Another client watches freely; this one may watch again after an Unwatch.
  RawClient other(sock_);
  ASSERT_TRUE(other.hello());
  auto w = other.watch("count Light");
  EXPECT_TRUE(w && w->has_watch_started());
  proto::ClientRequest unwatch;
  unwatch.mutable_unwatch()->set_watch_id(ids.front());
  auto ok = c.call(unwatch);
  ASSERT_TRUE(ok && ok->has_ok());
  auto again = c.watch("count Light");
  EXPECT_TRUE(again && again->has_watch_started());
  expect_logged({"client pid " + std::to_string(::getpid()), "watch refused"});
  expect_good_provider_serves("1.0");
}

// The one kind of region the core hands out, a device's, is sealed against resizing and re-sealing.
TEST_F(Limits, EveryGrantedRegionIsSealed) {
  start("");
  RawProvider p(sock_);
  ASSERT_TRUE(p.hello("sealcheck"));
  std::vector<ipc::Fd> fds;
  auto g = p.add("sealed-1", 2, &fds);
  ASSERT_TRUE(g && g->has_device_grant());
  ASSERT_EQ(fds.size(), 3U);
  const int region = fds[0].get();
  const int seals = ::fcntl(region, F_GET_SEALS);
  ASSERT_GE(seals, 0);
  EXPECT_EQ(seals & (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL), F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
  const off_t size = ::lseek(region, 0, SEEK_END);
  ASSERT_GT(size, 0);
  EXPECT_NE(::ftruncate(region, size * 2), 0);
  EXPECT_NE(::ftruncate(region, size / 2), 0);
  errno = 0;
  EXPECT_NE(::fcntl(region, F_ADD_SEALS, F_SEAL_WRITE), 0);
  EXPECT_EQ(errno, EPERM);  // F_SEAL_SEAL: no seal can be added or removed
  EXPECT_EQ(static_cast<std::uint64_t>(size), g->device_grant().region().size());
  expect_good_provider_serves("0.5");
}

// The core creates its socket directory 0700 and its sockets 0660 (the SO_PEERCRED allow-list
// is the second gate, CoreDaemon.RefusesUidsNotAllowed).
TEST_F(Limits, SocketsAre0660InADirectoryOnlyTheOwnerCanEnter) {
  start("");
  struct stat st {};
  ASSERT_EQ(::stat(sock_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700U);
  for (const char* name : {"/provider.sock", "/client.sock"}) {
    ASSERT_EQ(::stat((sock_ + name).c_str(), &st), 0) << name;
    EXPECT_TRUE(S_ISSOCK(st.st_mode)) << name;
    EXPECT_EQ(st.st_mode & 07777, 0660U) << name;
  }
}

// A socket directory every user may write would let anyone replace the sockets and pose as the core.
TEST_F(Limits, ASocketDirectoryEveryoneCanWriteIsRefused) {
  ASSERT_EQ(::mkdir(sock_.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(sock_.c_str(), 0777), 0);
  test::Process core(FLOE_CORE_BIN, {"--socket-dir", sock_}, dir_ / "core.log");
  EXPECT_EQ(core.finish(), 1);
  EXPECT_NE(test::slurp(dir_ / "core.log").find("is writable by every user (mode 777)"), std::string::npos)
      << test::slurp(dir_ / "core.log");
  EXPECT_FALSE(std::filesystem::exists(sock_ + "/client.sock"));
}

}  // namespace
}  // namespace floe::core

#endif  // FLOE_CORE_BIN && VIRTUAL_LIGHTS_BIN
