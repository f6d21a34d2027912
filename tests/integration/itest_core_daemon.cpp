// floe-core as a real process: a raw-protocol provider (its own child process) and an in-test
// client exercise the handshake, grants, get/set through the rings, crash, reconnect and shutdown.
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "client.pb.h"
#include "floe/ipc/channel.hpp"
#include "floe/ipc/device_region.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/protocol.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/ring.hpp"
#include "floe/ipc/tree.hpp"
#include "management.pb.h"
#include "support/child_process.hpp"

#ifdef FLOE_CORE_BIN

namespace floe::core {
namespace {

using namespace std::chrono_literals;

bool wait_readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int r = 0;
  do {
    r = ::poll(&p, 1, timeout_ms);
  } while (r < 0 && errno == EINTR);
  return r == 1;
}

template <typename F>
bool eventually(F&& f, std::chrono::milliseconds limit = 20s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return f();
}

int child_fail(int code, const std::string& what) {
  std::fprintf(stderr, "provider child: %s\n", what.c_str());
  return code;
}

// floe-core itself, with FLOE_SOCKET_DIR = args[0]; extra args follow.
FLOE_CHILD_ROLE(core) {
  ::setenv("FLOE_SOCKET_DIR", args.at(0).c_str(), 1);
  std::vector<std::string> argv_s = {FLOE_CORE_BIN, "--log-level", "warn"};
  for (std::size_t i = 1; i < args.size(); ++i) argv_s.push_back(args[i]);
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  ::execv(FLOE_CORE_BIN, argv.data());
  return 127;
}

// A provider speaking the raw protocol: device "lamp" with entity "lamp_light" (Light, Switch,
// Dimmer). args: socket dir, initial dimmer ("-" = write nothing). Obeys SetRequests until killed.
FLOE_CHILD_ROLE(provider) {
  const std::string dir = args.at(0);
  auto ch = ipc::Channel::connect(dir + "/provider.sock");
  if (!ch) return child_fail(10, ch.error().to_string());
  proto::Envelope hello;
  hello.set_id(1);
  hello.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
  hello.mutable_hello()->set_peer_name("raw-lights");
  hello.mutable_hello()->set_role(proto::PEER_ROLE_PROVIDER);
  if (!ch->send(hello)) return child_fail(11, "send hello");
  proto::Envelope welcome;
  if (auto r = ch->receive(welcome); !r || !welcome.has_welcome()) return child_fail(12, "no welcome");

  proto::Envelope add;
  add.set_id(2);
  auto* a = add.mutable_add_device();
  a->set_device_id("lamp");
  a->set_name("Lamp");
  a->add_groups("kitchen");
  auto* e = a->add_entities();
  e->set_id("lamp_light");
  e->set_name("Lamp light");
  for (auto c : {ipc::Component::Light, ipc::Component::Switch, ipc::Component::Dimmer}) {
    e->add_components()->set_component(ipc::to_id(c));
  }
  if (!ch->send(add)) return child_fail(13, "send add");
  proto::Envelope grant;
  auto fds = ch->receive(grant);
  if (!fds) return child_fail(14, fds.error().to_string());
  if (!grant.has_device_grant()) return child_fail(15, "no grant: " + grant.error().message());
  if (fds->size() != 3) return child_fail(16, "expected 3 fds");
  auto region = ipc::Region::open(std::move((*fds)[0]));
  if (!region) return child_fail(17, region.error().to_string());
  auto parts = ipc::device_region_attach({region->data(), region->size()});
  if (!parts) return child_fail(18, parts.error().to_string());
  auto writer = ipc::TreeWriter::attach(parts->tree);
  if (!writer) return child_fail(19, writer.error().to_string());
  const int tx_efd = (*fds)[1].get();
  auto rx = ipc::RingProducer::attach(parts->rx, (*fds)[2].get());
  auto tx = ipc::RingConsumer::attach(parts->tx, tx_efd);
  if (!rx || !tx) return child_fail(20, "ring attach");

  auto changed = [&](ipc::Component c) {
    ipc::ChangeRecord rec{0, ipc::to_id(c), 0, writer->change_seq(0)};
    (void)rx->try_push(ipc::kChangeRecord, std::as_bytes(std::span(&rec, 1)));
  };
  if (args.at(1) != "-") {
    if (writer->set(0, ipc::Component::Dimmer, std::stod(args.at(1))) != ipc::TreeWriteStatus::kOk) return child_fail(21, "set");
    changed(ipc::Component::Dimmer);
  }
  for (;;) {
    if (tx->prepare_sleep()) {
      pollfd p[2] = {{tx_efd, POLLIN, 0}, {ch->fd(), POLLIN, 0}};
      ::poll(p, 2, 200);
      if (p[1].revents != 0) return 0;  // the core closed the socket
      (void)ipc::eventfd_drain(tx_efd);
    }
    tx->finish_sleep();
    auto n = tx->drain([&](const ipc::RecordView& v) {
      auto req = ipc::read_record<ipc::SetRequest>(v.payload);
      if (!req || v.type != ipc::kSetRequest) return;
      const auto c = static_cast<ipc::Component>(req->component);
      auto value = ipc::decode(c, req->value_bits);
      auto st = value ? writer->set(req->entity, c, *value) : ipc::TreeWriteStatus::kWrongType;
      if (st == ipc::TreeWriteStatus::kOk) changed(c);
      const std::string msg = st == ipc::TreeWriteStatus::kOk ? "" : std::string(ipc::to_string(st));
      std::vector<std::byte> out(sizeof(ipc::RequestResult) + msg.size());
      ipc::RequestResult res{req->request_id, static_cast<std::uint32_t>(st == ipc::TreeWriteStatus::kOk ? 0 : 1),
                             static_cast<std::uint32_t>(msg.size())};
      std::memcpy(out.data(), &res, sizeof res);
      std::memcpy(out.data() + sizeof res, msg.data(), msg.size());
      (void)rx->try_push(ipc::kRequestResult, out);
    });
    if (!n) return child_fail(22, n.error().to_string());
  }
}

class Client {
 public:
  explicit Client(const std::string& dir) {
    auto ch = ipc::Channel::connect(dir + "/client.sock");
    EXPECT_TRUE(ch) << ch.error().to_string();
    if (ch) channel_.emplace(std::move(*ch));
  }
  bool connected() const { return channel_.has_value(); }
  std::optional<proto::ClientResponse> receive(int timeout_ms = 20000) {
    if (!wait_readable(channel_->fd(), timeout_ms)) return std::nullopt;
    proto::ClientResponse resp;
    if (!channel_->receive(resp)) return std::nullopt;
    return resp;
  }
  std::optional<proto::ClientResponse> call(proto::ClientRequest req) {
    req.set_id(++id_);
    if (!channel_->send(req)) return std::nullopt;
    auto r = receive();
    if (r) {
      EXPECT_EQ(r->id(), req.id());
    }
    return r;
  }
  bool hello(std::uint32_t version = ipc::kProtocolVersion) {
    proto::ClientRequest req;
    req.mutable_hello()->set_protocol_version(version);
    req.mutable_hello()->set_role(proto::PEER_ROLE_CLIENT);
    auto r = call(req);
    return r && r->has_welcome();
  }
  std::optional<proto::ClientResponse> get(const std::string& entity, const std::string& component) {
    proto::ClientRequest req;
    req.mutable_get()->set_entity(entity);
    req.mutable_get()->set_component(component);
    return call(req);
  }
  std::optional<proto::ClientResponse> set(const std::string& entity, const std::string& component,
                                           const std::string& value) {
    proto::ClientRequest req;
    req.mutable_set()->set_entity(entity);
    req.mutable_set()->set_component(component);
    req.mutable_set()->set_value(value);
    return call(req);
  }
  std::optional<proto::ClientResponse> devices() {
    proto::ClientRequest req;
    req.mutable_list_devices();
    return call(req);
  }
  ipc::Channel& channel() { return *channel_; }

 private:
  std::optional<ipc::Channel> channel_;
  std::uint64_t id_ = 0;
};

std::size_t count_fds(pid_t pid) {
  std::size_t n = 0;
  const std::string path = "/proc/" + std::to_string(pid) + "/fd";
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(path)) ++n;
  return n;
}

class CoreDaemon : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/floe-itest-core-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    sock_dir_ = dir_ + "/sock";
  }
  void TearDown() override {
    core_.reset();
    std::filesystem::remove_all(dir_);
  }
  void start_core(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {sock_dir_};
    for (auto& a : extra) args.push_back(a);
    auto c = test::spawn_child("core", args, {});
    ASSERT_TRUE(c) << c.error().to_string();
    core_.emplace(std::move(*c));
    ASSERT_TRUE(eventually([&] { return static_cast<bool>(ipc::Channel::connect(sock_dir_ + "/client.sock")); }))
        << "floe-core did not start listening";
  }
  int stop_core() {
    core_->kill(SIGTERM);
    const int rc = core_->wait(30s);
    core_.reset();
    return rc;
  }
  std::optional<proto::ClientResponse> wait_value(Client& c, const std::string& comp, double want) {
    std::optional<proto::ClientResponse> last;
    eventually([&] {
      last = c.get("lamp_light", comp);
      return last && last->has_value() && last->value().value().real() == want;
    });
    return last;
  }

  std::string dir_, sock_dir_;
  std::optional<test::Child> core_;
};

TEST_F(CoreDaemon, RefusesAWrongProtocolVersionWithAClearError) {
  start_core();
  auto ch = ipc::Channel::connect(sock_dir_ + "/provider.sock");
  ASSERT_TRUE(ch);
  proto::Envelope hello;
  hello.mutable_hello()->set_protocol_version(ipc::kProtocolVersion + 1);
  hello.mutable_hello()->set_peer_name("future");
  ASSERT_TRUE(ch->send(hello));
  ASSERT_TRUE(wait_readable(ch->fd(), 20000));
  proto::Envelope reply;
  ASSERT_TRUE(ch->receive(reply));
  ASSERT_TRUE(reply.has_error());
  EXPECT_EQ(reply.error().code(), proto::ERROR_CODE_PROTOCOL_VERSION);
  EXPECT_EQ(reply.error().message(), "provider speaks protocol 2, core speaks 1");
  EXPECT_TRUE(reply.error().fatal());
  // The core closes the connection and keeps serving others.
  ASSERT_TRUE(wait_readable(ch->fd(), 20000));
  auto eof = ch->receive();
  EXPECT_FALSE(eof);
  Client client(sock_dir_);
  EXPECT_TRUE(client.hello());
  EXPECT_EQ(stop_core(), 0);
}

TEST_F(CoreDaemon, ClientErrorsAreClearAndTheSessionSurvives) {
  start_core();
  Client client(sock_dir_);
  // A request before Hello is refused, fatally.
  {
    Client early(sock_dir_);
    proto::ClientRequest req;
    req.mutable_list_devices();
    auto r = early.call(req);
    ASSERT_TRUE(r && r->has_error());
    EXPECT_EQ(r->error().code(), proto::ERROR_CODE_MALFORMED);
  }
  ASSERT_TRUE(client.hello());
  auto r = client.get("nope", "Dimmer");
  ASSERT_TRUE(r && r->has_error());
  EXPECT_EQ(r->error().code(), proto::ERROR_CODE_NOT_FOUND);
  EXPECT_NE(r->error().message().find("nope"), std::string::npos);
  const std::byte garbage[] = {std::byte{0x0a}, std::byte{0x7f}, std::byte{1}};
  ASSERT_TRUE(client.channel().send(garbage));
  auto m = client.receive();
  ASSERT_TRUE(m && m->has_error());
  EXPECT_EQ(m->error().code(), proto::ERROR_CODE_MALFORMED);
  proto::ClientRequest q;
  q.mutable_query()->set_text("count Switch whre Switch == true");
  auto bq = client.call(q);
  ASSERT_TRUE(bq && bq->has_error());
  EXPECT_EQ(bq->error().code(), proto::ERROR_CODE_BAD_QUERY);
  auto d = client.devices();
  ASSERT_TRUE(d && d->has_devices());
  EXPECT_EQ(stop_core(), 0);
}

TEST_F(CoreDaemon, RefusesUidsNotAllowed) {
  std::ofstream(dir_ + "/core.toml") << "allowed_uids = [" << (::geteuid() + 4242) << "]\n";
  start_core({"--config", dir_ + "/core.toml"});
  Client client(sock_dir_);
  auto r = client.receive();
  ASSERT_TRUE(r && r->has_error());
  EXPECT_EQ(r->error().code(), proto::ERROR_CODE_UNAUTHORIZED);
  EXPECT_EQ(stop_core(), 0);
}

TEST_F(CoreDaemon, ProviderGrantGetSetCrashReconnectAndShutdown) {
  start_core();
  Client client(sock_dir_);
  ASSERT_TRUE(client.hello());
  const pid_t core_pid = core_->pid();
  const std::size_t fds_before = count_fds(core_pid);

  auto provider = test::spawn_child("provider", {sock_dir_, "0.25"}, {});
  ASSERT_TRUE(provider);
  auto v = wait_value(client, "Dimmer", 0.25);
  ASSERT_TRUE(v && v->has_value()) << (v && v->has_error() ? v->error().message() : "no answer");
  EXPECT_TRUE(v->value().online());
  EXPECT_EQ(v->value().value().display().empty(), false);

  // A set travels through the tx ring, the provider answers, the value is there.
  auto s = client.set("lamp_light", "Dimmer", "0.75");
  ASSERT_TRUE(s);
  ASSERT_TRUE(s->has_set()) << s->error().message();
  ASSERT_EQ(s->set().results_size(), 1);
  EXPECT_TRUE(s->set().results(0).ok());
  auto after = client.get("lamp_light", "Dimmer");
  ASSERT_TRUE(after && after->has_value());
  EXPECT_EQ(after->value().value().real(), 0.75);

  auto bad = client.set("lamp_light", "Switch", "maybe");
  ASSERT_TRUE(bad && bad->has_error());
  EXPECT_EQ(bad->error().code(), proto::ERROR_CODE_BAD_VALUE);

  // The device joined its declared group; a query over it sees the value.
  proto::ClientRequest q;
  q.mutable_query()->set_text("avg Dimmer where Light in group kitchen");
  auto qr = client.call(q);
  ASSERT_TRUE(qr && qr->has_query()) << (qr && qr->has_error() ? qr->error().message() : "");
  EXPECT_EQ(qr->query().count(), 1U);
  EXPECT_EQ(qr->query().number(), 0.75);

  // kill -9: offline, the core survives, and nothing leaks but the kept region (one fd).
  provider->kill(SIGKILL);
  provider->wait();
  ASSERT_TRUE(eventually([&] {
    auto d = client.devices();
    return d && d->has_devices() && d->devices().devices_size() == 1 && !d->devices().devices(0).online();
  }));
  ASSERT_TRUE(eventually([&] { return count_fds(core_pid) == fds_before + 1; }))
      << "core fds: " << count_fds(core_pid) << ", before the provider: " << fds_before;
  auto off = client.set("lamp_light", "Dimmer", "0.5");
  ASSERT_TRUE(off && off->has_error());
  EXPECT_EQ(off->error().code(), proto::ERROR_CODE_OFFLINE);
  auto last = client.get("lamp_light", "Dimmer");  // the region is kept: the last value reads
  ASSERT_TRUE(last && last->has_value());
  EXPECT_FALSE(last->value().online());
  EXPECT_EQ(last->value().value().real(), 0.75);

  // Reconnect with the same schema: the same region, so the state is kept; sets work again.
  auto again = test::spawn_child("provider", {sock_dir_, "-"}, {});
  ASSERT_TRUE(again);
  ASSERT_TRUE(eventually([&] {
    auto g = client.get("lamp_light", "Dimmer");
    return g && g->has_value() && g->value().online();
  }));
  EXPECT_EQ(client.get("lamp_light", "Dimmer")->value().value().real(), 0.75);
  auto s2 = client.set("lamp_light", "Switch", "true");
  ASSERT_TRUE(s2 && s2->has_set()) << (s2 && s2->has_error() ? s2->error().message() : "");
  EXPECT_TRUE(client.get("lamp_light", "Switch")->value().value().boolean());

  // SIGTERM: exit 0, sockets gone, metadata saved.
  EXPECT_EQ(stop_core(), 0);
  EXPECT_FALSE(std::filesystem::exists(sock_dir_ + "/provider.sock"));
  EXPECT_FALSE(std::filesystem::exists(sock_dir_ + "/client.sock"));
  EXPECT_TRUE(std::filesystem::exists(sock_dir_ + "/state.json"));
  again->wait(20s);

  // Restart: the device is known (offline) with its group.
  start_core();
  Client c2(sock_dir_);
  ASSERT_TRUE(c2.hello());
  auto d = c2.devices();
  ASSERT_TRUE(d && d->has_devices());
  ASSERT_EQ(d->devices().devices_size(), 1);
  EXPECT_EQ(d->devices().devices(0).name(), "lamp");
  EXPECT_FALSE(d->devices().devices(0).online());
  ASSERT_EQ(d->devices().devices(0).groups_size(), 1);
  EXPECT_EQ(d->devices().devices(0).groups(0), "kitchen");
  EXPECT_EQ(stop_core(), 0);
}

TEST_F(CoreDaemon, ASecondCoreRefusesALiveOneAndReplacesAKilledOneAtOnce) {
  start_core();
  // A second core on the same directory must not steal the sockets of a live one.
  auto second = test::spawn_child("core", {sock_dir_}, {});
  ASSERT_TRUE(second) << second.error().to_string();
  EXPECT_NE(second->wait(30s), 0);
  ASSERT_TRUE(static_cast<bool>(ipc::Channel::connect(sock_dir_ + "/client.sock")));

  // After SIGKILL the old sockets are stale: a new core starts at once, with no waiting by the
  // caller, even while the kernel may still be tearing the old listener down.
  core_->kill(SIGKILL);
  EXPECT_EQ(core_->wait(30s), 128 + SIGKILL);
  core_.reset();
  start_core();
  Client c(sock_dir_);
  EXPECT_TRUE(c.hello());
  EXPECT_EQ(stop_core(), 0);
}

}  // namespace
}  // namespace floe::core

#endif  // FLOE_CORE_BIN
