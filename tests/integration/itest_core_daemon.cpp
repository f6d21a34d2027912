// floe-core as a real process: a raw-protocol provider (its own child process) and an in-test
// client exercise the handshake, grants, get/set through the rings, crash, reconnect and shutdown.
// An SDK provider (a child driven over a control socket) covers the device lifecycle: a device
// becoming unreachable and reachable (Device::set_available), a device withdrawn
// (Provider::remove_device), declared groups on every registration, watch events while the
// client's own set waits; a silent raw provider is timed out; floectl and virtual-lights run the
// request path in every ring notification strategy. A stress test has several clients fire query
// sets over several entities while requests succeed, fail and time out and devices come and go.
// Waits are bounded polls, never thresholds.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <set>
#include <map>
#include <sstream>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "client.pb.h"
#include "floe/ipc/channel.hpp"
#include "floe/ipc/device_region.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/protocol.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/ring.hpp"
#include "floe/ipc/tree.hpp"
#include "floe/sdk/provider.hpp"
#include "management.pb.h"
#include "support/child_process.hpp"
#include "support/environment.hpp"
#include "support/integration.hpp"

extern char** environ;

#ifdef FLOE_CORE_BIN

namespace floe::core {
namespace {

using namespace std::chrono_literals;
using sdk::Component;

constexpr int kGuardMs = 30000;  // hang guard for one answer (sanitizer builds on a busy machine)

bool wait_readable(int fd, int timeout_ms = kGuardMs) {
  return test::wait_readable(fd, std::chrono::milliseconds(timeout_ms));
}

using test::count_fds;
using test::eventually;
using test::slurp;

// Text commands over a SOCK_SEQPACKET pair, one per packet.
bool send_text(int fd, const std::string& s) { return ::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size()); }
std::optional<std::string> recv_text(int fd, int timeout_ms = kGuardMs) {
  if (!wait_readable(fd, timeout_ms)) return std::nullopt;
  char buf[512];
  const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  if (n <= 0) return std::nullopt;
  return std::string(buf, static_cast<std::size_t>(n));
}

int child_fail(int code, const std::string& what) {
  std::fprintf(stderr, "provider child: %s\n", what.c_str());
  return code;
}

// floe-core itself, with FLOE_SOCKET_DIR = args[0]; args[1] = "log=FILE" sends its output (at
// level info) to FILE; extra args follow.
FLOE_CHILD_ROLE(core) {
  ::setenv("FLOE_SOCKET_DIR", args.at(0).c_str(), 1);
  std::size_t first = 1;
  std::string level = "warn";
  if (args.size() > 1 && args[1].starts_with("log=")) {
    const int log = ::open(args[1].substr(4).c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log < 0 || ::dup2(log, 1) < 0 || ::dup2(log, 2) < 0) return 126;
    level = "info";
    first = 2;
  }
  std::vector<std::string> argv_s = {FLOE_CORE_BIN, "--log-level", level};
  for (std::size_t i = first; i < args.size(); ++i) argv_s.push_back(args[i]);
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
  // Signals through pipes (as every provider does): one sent after the core closed its end must
  // fail with EPIPE, not end this process.
  ::signal(SIGPIPE, SIG_IGN);
  int tx_efd = (*fds)[1].get();
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
      // The core closed its end of the tx signal (it let the device go): stop watching it, or
      // every poll would return at once.
      if ((p[0].revents & (POLLHUP | POLLERR)) != 0 && (p[0].revents & POLLIN) == 0) tx_efd = -1;
      if (p[1].revents != 0) {
        // The core's liveness probe is answered; anything else (EOF first) ends the provider.
        proto::Envelope in;
        if (!ch->receive(in) || !in.has_heartbeat()) return 0;
        if (!ch->send(in)) return 0;
      }
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

sdk::DeviceSpec lamp_spec() {
  return {.id = "lamp", .name = "Lamp", .groups = {"kitchen"},
          .entities = {{.id = "lamp_light", .name = "Lamp light",
                        .components = {Component::Light, Component::Switch, Component::Dimmer}}}};
}
sdk::DeviceSpec fan_spec() {
  return {.id = "fan", .name = "Fan", .groups = {"bedroom"},
          .entities = {{.id = "fan_switch", .name = "Fan switch", .components = {Component::Switch}}}};
}

// Serves `provider` and the test's commands on the control socket `ctl` (-1: none), one per
// packet, each answered with what `run` returns for it. Returns 0 once the test closes `ctl`, 2 if
// poll fails, 3 if the provider does.
int serve_with_commands(sdk::Provider& provider, int ctl, const std::function<std::string(const std::string&)>& run) {
  for (;;) {
    pollfd p[2] = {{provider.fd(), POLLIN, 0}, {ctl, POLLIN, 0}};  // a negative fd is ignored
    if (::poll(p, 2, -1) < 0 && errno != EINTR) return 2;
    if (p[0].revents != 0 && !provider.process()) return 3;
    if (p[1].revents == 0) continue;
    char buf[256];
    const ssize_t n = ::recv(ctl, buf, sizeof buf, 0);
    if (n <= 0) return 0;  // the test closed the control socket
    (void)send_text(ctl, run(std::string(buf, static_cast<std::size_t>(n))));
  }
}

// An SDK provider with devices "lamp" and "fan", driven through fd 3 (a control socket) with
// commands answered "ok" (or an error text): "unavail REASON", "avail", "remove ID", "add fan",
// "hold" (keep requests unanswered; each one reported as "request"), "answer" (succeed the held
// ones), "dimmer X" (write lamp_light Dimmer), "ramp N" (write lamp_light Dimmer N times, i/N for
// i = 1..N, pausing 100 us between writes so that each one is drained on its own). args: socket dir.
FLOE_CHILD_ROLE(sdk_provider) {
  const int ctl = 3;
  sdk::Provider provider({.name = "lifecycle", .socket_dir = args.at(0)});
  sdk::Device* lamp = &provider.add_device(lamp_spec());
  provider.add_device(fan_spec());
  bool hold = false;
  std::deque<sdk::Request> held;
  provider.on_request([&](sdk::Request& r) {
    if (r.value() == nullptr) return r.fail("text is not supported here");
    if (auto s = r.device().set(r.entity(), r.component(), *r.value()); s != sdk::WriteStatus::kOk) {
      return r.fail(std::string(ipc::to_string(s)));
    }
    if (!hold) return r.succeed();
    held.push_back(std::move(r));
    (void)send_text(ctl, "request");
  });
  return serve_with_commands(provider, ctl, [&](const std::string& cmd) {
    const std::string arg = cmd.find(' ') == std::string::npos ? "" : cmd.substr(cmd.find(' ') + 1);
    std::string reply = "ok";
    if (cmd.starts_with("unavail")) {
      lamp->set_available(false, arg);
    } else if (cmd == "avail") {
      lamp->set_available(true);
    } else if (cmd.starts_with("remove ")) {
      if (arg == "lamp") lamp = nullptr;
      if (auto r = provider.remove_device(arg); !r) reply = r.error().to_string();
    } else if (cmd == "add fan") {
      if (auto r = provider.try_add_device(fan_spec()); !r) reply = r.error().to_string();
    } else if (cmd == "hold") {
      hold = true;
    } else if (cmd == "answer") {
      for (auto& r : held) r.succeed();
      held.clear();
    } else if (cmd.starts_with("ramp ")) {
      const int n = std::stoi(arg);
      for (int i = 1; i <= n && reply == "ok"; ++i) {
        if (lamp == nullptr || lamp->set(0, Component::Dimmer, static_cast<double>(i) / n) != sdk::WriteStatus::kOk) {
          reply = "write failed";
        }
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    } else if (cmd.starts_with("dimmer ")) {
      if (lamp == nullptr || lamp->set(0, Component::Dimmer, std::stod(arg)) != sdk::WriteStatus::kOk) reply = "write failed";
    } else {
      reply = "unknown command";
    }
    return reply;
  });
}

// A raw-protocol provider that declares device "mute" and then never reads its socket again
// (a stuck provider). It waits for the test to close fd 3, then reports 0 if the core has
// closed the management socket meanwhile. args: socket dir.
FLOE_CHILD_ROLE(silent_provider) {
  auto ch = ipc::Channel::connect(args.at(0) + "/provider.sock");
  if (!ch) return 10;
  proto::Envelope hello;
  hello.set_id(1);
  hello.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
  hello.mutable_hello()->set_peer_name("silent");
  hello.mutable_hello()->set_role(proto::PEER_ROLE_PROVIDER);
  if (!ch->send(hello)) return 11;
  // Hello and AddDevice are both sent before anything is awaited, so however slowly this
  // process runs, the core has them before it can judge the provider silent.
  proto::Envelope add;
  add.set_id(2);
  add.mutable_add_device()->set_device_id("mute");
  auto* e = add.mutable_add_device()->add_entities();
  e->set_id("mute_switch");
  e->add_components()->set_component(ipc::to_id(Component::Switch));
  if (!ch->send(add)) return 13;
  proto::Envelope welcome;
  if (!ch->receive(welcome) || !welcome.has_welcome()) return 12;
  proto::Envelope grant;
  if (!ch->receive(grant) || !grant.has_device_grant()) return 14;
  (void)send_text(3, "declared");
  // Silent from here on: block until the test closes the control socket.
  char c;
  while (::recv(3, &c, 1, 0) > 0) {
  }
  // Whatever the core sent (its probe) precedes the end of the stream.
  for (;;) {
    proto::Envelope in;
    auto r = ch->receive(in);
    if (!r) return r.error().code == ECONNRESET || r.error().code == 0 || r.error().code == EPIPE ? 0 : 20;
    if (!in.has_heartbeat()) return 21;
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
  std::uint64_t post(proto::ClientRequest req) {
    req.set_id(++id_);
    if (!channel_ || !channel_->send(req)) return 0;
    return id_;
  }
  std::optional<proto::ClientResponse> call(proto::ClientRequest req) {
    const std::uint64_t id = post(std::move(req));
    for (;;) {
      auto r = receive();
      if (!r || r->id() == id || r->id() == 0) return r;  // skips watch events of earlier watches
    }
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
  static proto::ClientRequest set_request(const std::string& entity, const std::string& component,
                                          const std::string& value) {
    proto::ClientRequest req;
    req.mutable_set()->set_entity(entity);
    req.mutable_set()->set_component(component);
    req.mutable_set()->set_value(value);
    return req;
  }
  std::optional<proto::ClientResponse> set(const std::string& entity, const std::string& component,
                                           const std::string& value) {
    return call(set_request(entity, component, value));
  }
  std::optional<proto::ClientResponse> devices() {
    proto::ClientRequest req;
    req.mutable_list_devices();
    return call(req);
  }
  /// The device named `name` in ListDevices, if listed.
  std::optional<proto::DeviceInfo> device(const std::string& name) {
    auto r = devices();
    if (!r || !r->has_devices()) return std::nullopt;
    for (const auto& d : r->devices().devices()) {
      if (d.name() == name) return d;
    }
    return std::nullopt;
  }
  bool online(const std::string& name) {
    auto d = device(name);
    return d && d->online();
  }
  bool in_group(const std::string& name, const std::string& group) {
    auto d = device(name);
    return d && std::find(d->groups().begin(), d->groups().end(), group) != d->groups().end();
  }
  /// Starts a watch on `query`: the Watch request's id (its events carry it), or 0 with the
  /// reason in `failure`.
  std::uint64_t start_watch(const std::string& query, std::string& failure) {
    proto::ClientRequest req;
    req.mutable_watch()->set_text(query);
    auto started = call(req);
    if (started && started->has_watch_started()) return started->id();
    failure = !started ? "no answer" : started->has_error() ? started->error().message() : started->DebugString();
    return 0;
  }
  ipc::Channel& channel() { return *channel_; }

 private:
  std::optional<ipc::Channel> channel_;
  std::uint64_t id_ = 0;
};

class CoreDaemon : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/floe-itest-core-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    sock_dir_ = dir_ + "/sock";
    log_ = dir_ + "/core.log";
  }
  void TearDown() override {
    if (ctl_ >= 0) ::close(ctl_);
    provider_.reset();
    core_.reset();
    if (HasFailure() && std::filesystem::exists(log_)) std::fprintf(stderr, "---- floe-core log ----\n%s\n", slurp(log_).c_str());
    std::filesystem::remove_all(dir_);
  }
  /// floe-core with its log in log_ and, if given, this configuration.
  void start_logged_core(const std::string& config = {}) {
    std::vector<std::string> extra = {"log=" + log_};
    if (!config.empty()) {
      std::ofstream(dir_ + "/core.toml") << config;
      extra.push_back("--config");
      extra.push_back(dir_ + "/core.toml");
    }
    start_core(extra);
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

  // The SDK provider child (role sdk_provider) with its control socket in ctl_.
  void start_provider() {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    auto p = test::spawn_child("sdk_provider", {sock_dir_}, {sv[1]});
    ::close(sv[1]);
    ASSERT_TRUE(p) << p.error().to_string();
    provider_.emplace(std::move(*p));
    ctl_ = sv[0];
  }
  /// A logged core (with `config`), a hello'd client and the SDK provider with both its devices online.
  Client start_core_and_provider(const std::string& config = {}) {
    start_logged_core(config);
    Client client(sock_dir_);
    EXPECT_TRUE(client.hello());
    start_provider();
    if (!eventually([&] { return client.online("lamp") && client.online("fan"); })) {
      ADD_FAILURE() << "the SDK provider's devices did not come online";
    }
    return client;
  }
  std::string command(const std::string& cmd) {
    if (!send_text(ctl_, cmd)) return "control socket closed";
    auto r = recv_text(ctl_);
    return r ? *r : "no answer";
  }

  std::string dir_, sock_dir_, log_;
  std::optional<test::Child> core_;
  std::optional<test::Child> provider_;
  int ctl_ = -1;
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
  // What the client sent is quoted bounded and escaped.
  r = client.get(std::string(60'000, 'n') + "\x1b", "Dimmer");
  ASSERT_TRUE(r && r->has_error());
  EXPECT_LT(r->error().message().size(), 300u);
  EXPECT_NE(r->error().message().find(std::string(64, 'n') + "...(60001 bytes)"), std::string::npos)
      << r->error().message().substr(0, 300);
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
  // Settled: start_core's readiness probe connected and left, and a client loop closes that
  // session's descriptor when it notices (soon, but not before this line for sure).
  std::size_t fds_before = count_fds(core_pid);
  ASSERT_TRUE(eventually([&] {
    std::this_thread::sleep_for(100ms);
    const std::size_t now = count_fds(core_pid);
    return std::exchange(fds_before, now) == now;
  }));

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

  // Nor may one on another directory that names the live core's state file: each would
  // overwrite the other's devices and groups.
  const std::string config = sock_dir_ + "/shared-state.toml";
  std::ofstream(config) << "state_file = \"" << sock_dir_ << "/state.json\"\n";
  const std::string log = sock_dir_ + "/second.log";
  auto third = test::spawn_child("core", {sock_dir_ + "/second", "log=" + log, "--config", config}, {});
  ASSERT_TRUE(third) << third.error().to_string();
  EXPECT_NE(third->wait(30s), 0);
  EXPECT_NE(slurp(log).find("is in use by another floe-core"), std::string::npos) << slurp(log);

  // After SIGKILL the old sockets are stale: a new core starts at once, with no waiting by the
  // caller, even while the kernel may still be tearing the old listener down.
  core_->kill(SIGKILL);
  EXPECT_EQ(core_->wait(30s), 128 + SIGKILL);
  core_.reset();
  start_core();
  // start_core() may have connected to the dying listener: the new core is there once a Hello
  // is answered (it replaces the stale socket files without anyone removing them).
  EXPECT_TRUE(eventually([&] {
    auto ch = ipc::Channel::connect(sock_dir_ + "/client.sock");
    if (!ch) return false;
    proto::ClientRequest req;
    req.set_id(1);
    req.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
    if (!ch->send(req) || !wait_readable(ch->fd(), kGuardMs)) return false;
    proto::ClientResponse resp;
    return ch->receive(resp) && resp.has_welcome();
  }));
  EXPECT_EQ(stop_core(), 0);
}

TEST_F(CoreDaemon, UnavailableDeviceGoesOfflineFailsRequestsAtOnceAndComesBack) {
  Client client = start_core_and_provider();
  ASSERT_FALSE(HasFailure());
  auto ok = client.set("lamp_light", "Dimmer", "0.5");
  ASSERT_TRUE(ok && ok->has_set()) << (ok && ok->has_error() ? ok->error().message() : "no answer");

  ASSERT_EQ(command("unavail wifi lost"), "ok");
  ASSERT_TRUE(eventually([&] { return !client.online("lamp"); }));
  EXPECT_TRUE(client.online("fan"));  // only that device
  auto refused = client.set("lamp_light", "Dimmer", "0.7");
  ASSERT_TRUE(refused && refused->has_error());
  EXPECT_EQ(refused->error().code(), proto::ERROR_CODE_OFFLINE);
  proto::ClientRequest fan_out;  // a set query lists an offline device's entity as not reached
  fan_out.mutable_query()->set_text("set Switch = true where Light");
  auto fo = client.call(fan_out);
  ASSERT_TRUE(fo && fo->has_set()) << (fo && fo->has_error() ? fo->error().message() : "no answer");
  ASSERT_EQ(fo->set().results_size(), 1);
  EXPECT_EQ(fo->set().results(0).entity(), "lamp_light");
  EXPECT_FALSE(fo->set().results(0).ok());
  EXPECT_EQ(fo->set().results(0).code(), proto::ERROR_CODE_OFFLINE);
  EXPECT_EQ(fo->set().results(0).message(), "device 'lamp' is offline");
  auto last = client.get("lamp_light", "Dimmer");  // the last value still reads, marked offline
  ASSERT_TRUE(last && last->has_value());
  EXPECT_FALSE(last->value().online());
  EXPECT_EQ(last->value().value().real(), 0.5);
  // The core logs the reason after it publishes the change: the line may come a moment later.
  EXPECT_TRUE(eventually([&] { return slurp(log_).find("wifi lost") != std::string::npos; })) << slurp(log_);

  // A restarted core hears it again when the provider reconnects: once "fan" (declared after
  // "lamp") is online, lamp's availability has been processed too.
  ASSERT_EQ(stop_core(), 0);
  start_logged_core();
  Client c2(sock_dir_);
  ASSERT_TRUE(c2.hello());
  ASSERT_TRUE(eventually([&] { return c2.online("fan"); }));
  EXPECT_FALSE(c2.online("lamp"));

  ASSERT_EQ(command("avail"), "ok");
  ASSERT_TRUE(eventually([&] { return c2.online("lamp"); }));
  auto back = c2.set("lamp_light", "Dimmer", "0.25");
  ASSERT_TRUE(back && back->has_set()) << (back && back->has_error() ? back->error().message() : "no answer");
  auto now = c2.get("lamp_light", "Dimmer");
  ASSERT_TRUE(now && now->has_value());
  EXPECT_EQ(now->value().value().real(), 0.25);
  EXPECT_EQ(stop_core(), 0);
}

TEST_F(CoreDaemon, RemovedDeviceIsGoneFromRegistryStateAndFdsAndCanReturn) {
  Client client = start_core_and_provider();
  ASSERT_FALSE(HasFailure());
  const pid_t core_pid = core_->pid();
  const std::size_t fds_with_fan = count_fds(core_pid);

  ASSERT_EQ(command("remove fan"), "ok");
  ASSERT_TRUE(eventually([&] { return !client.device("fan"); }));
  auto gone = client.get("fan_switch", "Switch");
  ASSERT_TRUE(gone && gone->has_error());
  EXPECT_EQ(gone->error().code(), proto::ERROR_CODE_NOT_FOUND);
  EXPECT_TRUE(client.online("lamp"));
  // Its region is closed (a snapshot may hold it a little longer). The SDK provider has doorbells,
  // so the device had no eventfds of its own: the connection's stay.
  EXPECT_TRUE(eventually([&] { return count_fds(core_pid) + 1 <= fds_with_fan; }))
      << "core fds " << count_fds(core_pid) << ", with the fan " << fds_with_fan;
  EXPECT_NE(command("remove fan").find("no device 'fan'"), std::string::npos)
      << "a second removal is an error in the SDK";

  // The state file forgets it: a restarted core does not list it.
  ASSERT_EQ(stop_core(), 0);
  EXPECT_EQ(slurp(sock_dir_ + "/state.json").find("fan_switch"), std::string::npos);
  start_logged_core();
  Client c2(sock_dir_);
  ASSERT_TRUE(c2.hello());
  ASSERT_TRUE(eventually([&] { return c2.online("lamp"); }));
  EXPECT_FALSE(c2.device("fan"));

  // Declared again: a new device, with its declared group, and requests work.
  ASSERT_EQ(command("add fan"), "ok");
  ASSERT_TRUE(eventually([&] { return c2.online("fan"); }));
  EXPECT_TRUE(c2.in_group("fan", "bedroom"));
  auto s = c2.set("fan_switch", "Switch", "true");
  ASSERT_TRUE(s && s->has_set()) << (s && s->has_error() ? s->error().message() : "no answer");
  EXPECT_EQ(stop_core(), 0);
}

TEST_F(CoreDaemon, SetsRacingADeviceRemovalAreAnsweredAtOnceNeverTimedOut) {
  // A removal fails the device's pending sets OFFLINE at once and posts the detach to the device's
  // shard. A set that passed its online check just before, and was added to the pending table
  // after that sweep, still reached the ring (the shard had not detached yet) and then waited out
  // the whole request timeout. The shard now fails the device's pending sets again once detached.
  Client client = start_core_and_provider();
  ASSERT_FALSE(HasFailure());
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, offline{0}, not_found{0}, timed_out{0}, other{0};
  std::vector<std::thread> hammers;
  for (int t = 0; t < 2; ++t) {
    hammers.emplace_back([&] {
      Client c(sock_dir_);
      if (!c.hello()) return ++other, void();
      while (!stop.load()) {
        auto s = c.set("fan_switch", "Switch", "true");
        if (!s) return ++other, void();
        if (s->has_set()) {
          ++ok;
          continue;
        }
        switch (s->error().code()) {
          case proto::ERROR_CODE_OFFLINE: ++offline; break;
          case proto::ERROR_CODE_NOT_FOUND: ++not_found; break;
          case proto::ERROR_CODE_TIMEOUT: ++timed_out; break;
          default: ++other; break;
        }
      }
    });
  }
  for (int round = 0; round < 150; ++round) {
    ASSERT_EQ(command("remove fan"), "ok");
    ASSERT_TRUE(eventually([&] { return !client.device("fan"); }));
    ASSERT_EQ(command("add fan"), "ok");
    ASSERT_TRUE(eventually([&] { return client.online("fan"); }));
  }
  stop = true;
  for (auto& h : hammers) h.join();
  EXPECT_EQ(timed_out.load(), 0) << ok << " ok, " << offline << " offline, " << not_found << " not found";
  EXPECT_EQ(other.load(), 0);
  EXPECT_GT(ok.load(), 0);
}

TEST_F(CoreDaemon, ASetSentTheMomentADeviceShowsOnlineReachesIt) {
  // A client session writes a set onto the device's tx ring itself, so the device must not show
  // online before its shard holds the ring (it did: the registry said online first, and a set in
  // that window was refused as "offline").
  Client client = start_core_and_provider();
  ASSERT_FALSE(HasFailure());
  for (int round = 0; round < 200; ++round) {
    ASSERT_EQ(command("remove fan"), "ok");
    ASSERT_TRUE(eventually([&] { return !client.device("fan"); }));
    ASSERT_EQ(command("add fan"), "ok");
    // A get reads the registry without waiting for the core's metadata lock (a device listing
    // waits for it, and so never sees a declaration half done): poll it flat out.
    ASSERT_TRUE(eventually(
        [&] {
          auto g = client.get("fan_switch", "Switch");
          return g && g->has_value() && g->value().online();
        },
        test::kHangGuard, 0ms));
    auto s = client.set("fan_switch", "Switch", round % 2 == 0 ? "true" : "false");
    ASSERT_TRUE(s && s->has_set()) << "round " << round << ": "
                                   << (s && s->has_error() ? s->error().message() : "no answer");
  }
}

TEST_F(CoreDaemon, DeclaredGroupsAreRejoinedOnEveryRegistration) {
  Client client = start_core_and_provider();
  ASSERT_FALSE(HasFailure());
  ASSERT_TRUE(eventually([&] { return client.online("lamp") && client.in_group("lamp", "kitchen"); }));
  proto::ClientRequest leave;
  leave.mutable_edit_group()->set_group("kitchen");
  leave.mutable_edit_group()->set_device("lamp");
  leave.mutable_edit_group()->set_remove(true);
  auto r = client.call(leave);
  ASSERT_TRUE(r && r->has_ok()) << (r && r->has_error() ? r->error().message() : "no answer");
  proto::ClientRequest join;
  join.mutable_edit_group()->set_group("upstairs");
  join.mutable_edit_group()->set_device("lamp");
  ASSERT_TRUE(client.call(join));
  EXPECT_FALSE(client.in_group("lamp", "kitchen"));

  // A new registration (the core restarts, the provider reconnects) joins the declared group
  // again; a group the user added stays.
  ASSERT_EQ(stop_core(), 0);
  start_logged_core();
  Client c2(sock_dir_);
  ASSERT_TRUE(c2.hello());
  ASSERT_TRUE(eventually([&] { return c2.online("lamp"); }));
  EXPECT_TRUE(c2.in_group("lamp", "kitchen"));
  EXPECT_TRUE(c2.in_group("lamp", "upstairs"));
  EXPECT_EQ(stop_core(), 0);
}

TEST_F(CoreDaemon, WatchEventsFlowWhileTheClientsOwnSetWaits) {
  Client client = start_core_and_provider();
  ASSERT_FALSE(HasFailure());
  ASSERT_TRUE(eventually([&] { return client.online("lamp"); }));
  ASSERT_EQ(command("dimmer 0.1"), "ok");
  ASSERT_TRUE(eventually([&] {
    auto g = client.get("lamp_light", "Dimmer");
    return g && g->has_value() && g->value().value().real() == 0.1;
  }));
  std::string why;
  const std::uint64_t watch_req = client.start_watch("avg Dimmer where Light", why);
  ASSERT_NE(watch_req, 0U) << why;

  // The provider keeps the request; the client's set is pending until the test says "answer".
  ASSERT_EQ(command("hold"), "ok");
  auto held_set = Client::set_request("lamp_light", "Switch", "true");
  held_set.mutable_set()->set_timeout_ms(600'000);  // the test, not a clock, decides when it ends
  const std::uint64_t set_id = client.post(held_set);
  ASSERT_NE(set_id, 0U);
  ASSERT_EQ(recv_text(ctl_), "request");
  ASSERT_EQ(command("dimmer 0.9"), "ok");
  // The watch reports 0.9 while the set still waits (it cannot finish before "answer").
  bool saw = false;
  while (!saw) {
    auto m = client.receive();
    ASSERT_TRUE(m) << "no watch event while the set was pending";
    ASSERT_NE(m->id(), set_id) << "the set finished without its answer";
    if (m->id() == watch_req && m->has_watch_event() && m->watch_event().result().number() == 0.9) saw = true;
  }
  ASSERT_EQ(command("answer"), "ok");
  for (;;) {
    auto m = client.receive();
    ASSERT_TRUE(m) << "the set never completed";
    if (m->id() != set_id) continue;
    ASSERT_TRUE(m->has_set()) << (m->has_error() ? m->error().message() : "");
    EXPECT_TRUE(m->set().results(0).ok());
    break;
  }
  EXPECT_EQ(stop_core(), 0);
}

// A set no longer holds its session: while the provider keeps sets unanswered, the same connection
// is served (a get), and every set gets exactly one answer, whoever gives it: the provider, the
// deadline, or a full ring. Past the in-flight limit the session just reads more slowly; a client
// that leaves with sets in flight harms nobody when their answers come later.
TEST_F(CoreDaemon, HeldSetsDoNotHoldTheSessionAndEachGetsExactlyOneAnswer) {
  Client client = start_core_and_provider();
  ASSERT_FALSE(HasFailure());
  ASSERT_EQ(command("hold"), "ok");

  // Ten held sets, then a get on the same connection: answered while the sets wait.
  std::set<std::uint64_t> held;
  for (int i = 0; i < 10; ++i) {
    auto req = Client::set_request("lamp_light", "Switch", i % 2 == 0 ? "true" : "false");
    req.mutable_set()->set_timeout_ms(600'000);  // the test, not a clock, decides when they end
    const std::uint64_t id = client.post(req);
    ASSERT_NE(id, 0U);
    held.insert(id);
  }
  for (int i = 0; i < 10; ++i) ASSERT_EQ(recv_text(ctl_), "request") << "held request " << i;
  auto got = client.get("lamp_light", "Dimmer");
  ASSERT_TRUE(got && got->has_value()) << "a get behind held sets was not answered";
  ASSERT_EQ(command("answer"), "ok");
  std::multiset<std::uint64_t> answered;
  while (answered.size() < held.size()) {
    auto m = client.receive();
    ASSERT_TRUE(m) << answered.size() << " of " << held.size() << " held sets answered";
    if (!held.contains(m->id())) continue;
    EXPECT_TRUE(m->has_set() && m->set().results(0).ok()) << (m->has_error() ? m->error().message() : "");
    answered.insert(m->id());
  }
  EXPECT_EQ(std::set<std::uint64_t>(answered.begin(), answered.end()), held);

  // More sets than a session keeps in flight (256), all left unanswered with a short deadline:
  // each one is answered exactly once, with TIMEOUT (it reached the provider) or LIMIT (the ring
  // was full), and the session keeps serving.
  constexpr int kFlood = 300;
  std::set<std::uint64_t> flood;
  for (int i = 0; i < kFlood; ++i) {
    auto req = Client::set_request("lamp_light", "Switch", "true");
    req.mutable_set()->set_timeout_ms(300);
    const std::uint64_t id = client.post(req);
    ASSERT_NE(id, 0U);
    flood.insert(id);
  }
  std::map<std::uint64_t, int> answers;
  int timeouts = 0;
  for (std::size_t seen = 0; seen < flood.size();) {
    auto m = client.receive();
    ASSERT_TRUE(m) << seen << " of " << kFlood << " flooded sets answered";
    if (!flood.contains(m->id())) continue;
    ++seen;
    ++answers[m->id()];
    ASSERT_TRUE(m->has_error()) << "a held set succeeded";
    EXPECT_TRUE(m->error().code() == proto::ERROR_CODE_TIMEOUT || m->error().code() == proto::ERROR_CODE_LIMIT)
        << m->error().message();
    if (m->error().code() == proto::ERROR_CODE_TIMEOUT) ++timeouts;
  }
  EXPECT_EQ(answers.size(), flood.size());
  for (const auto& [id, n] : answers) EXPECT_EQ(n, 1) << "set " << id << " answered " << n << " times";
  EXPECT_GT(timeouts, 0);
  // The provider reported each set that reached it; late answers to timed-out sets go nowhere.
  for (int i = 0; i < timeouts; ++i) ASSERT_EQ(recv_text(ctl_), "request") << "flooded request " << i;
  ASSERT_EQ(command("answer"), "ok");
  got = client.get("lamp_light", "Dimmer");
  ASSERT_TRUE(got && got->has_value());

  // A client that leaves with sets in flight; their answers arrive after its session ended.
  {
    Client leaving(sock_dir_);
    ASSERT_TRUE(leaving.hello());
    for (int i = 0; i < 5; ++i) {
      auto req = Client::set_request("lamp_light", "Switch", "true");
      req.mutable_set()->set_timeout_ms(600'000);
      ASSERT_NE(leaving.post(req), 0U);
    }
    for (int i = 0; i < 5; ++i) ASSERT_EQ(recv_text(ctl_), "request");
  }
  ASSERT_EQ(command("answer"), "ok");
  ASSERT_EQ(command("dimmer 0.5"), "ok");
  const auto v = wait_value(client, "Dimmer", 0.5);
  EXPECT_TRUE(v && v->has_value() && v->value().value().real() == 0.5) << "the core stopped serving";
  EXPECT_EQ(stop_core(), 0);
}

// A query's set over several entities is as asynchronous as a single set: while its requests are
// held, the same connection is served, and the answer comes once, with every entity's outcome.
TEST_F(CoreDaemon, AQuerysSetOverSeveralEntitiesDoesNotHoldTheSession) {
  Client client = start_core_and_provider();
  ASSERT_FALSE(HasFailure());
  ASSERT_TRUE(eventually([&] { return client.online("lamp") && client.online("fan"); }));
  ASSERT_EQ(command("hold"), "ok");
  proto::ClientRequest q;
  q.mutable_query()->set_text("set Switch = true");  // lamp_light and fan_switch
  const std::uint64_t id = client.post(q);
  ASSERT_NE(id, 0U);
  for (int i = 0; i < 2; ++i) ASSERT_EQ(recv_text(ctl_), "request") << "held request " << i;
  auto got = client.get("lamp_light", "Dimmer");
  ASSERT_TRUE(got && got->has_value()) << "a get behind a held query set was not answered";
  ASSERT_EQ(command("answer"), "ok");
  std::optional<proto::ClientResponse> answer;
  for (;;) {
    auto m = client.receive();
    ASSERT_TRUE(m) << "the query's set was not answered";
    if (m->id() != id) continue;
    answer = std::move(m);
    break;
  }
  ASSERT_TRUE(answer->has_set()) << (answer->has_error() ? answer->error().message() : "");
  std::set<std::string> entities;
  for (const auto& r : answer->set().results()) {
    EXPECT_TRUE(r.ok()) << r.entity() << ": " << r.message();
    entities.insert(r.entity());
  }
  EXPECT_EQ(entities, (std::set<std::string>{"fan_switch", "lamp_light"}));
  // Exactly one answer: nothing more for that id arrives before the answer to a later request.
  proto::ClientRequest later;
  later.mutable_list_devices();
  const std::uint64_t later_id = client.post(later);
  for (;;) {
    auto m = client.receive();
    ASSERT_TRUE(m) << "no answer to the later request";
    EXPECT_NE(m->id(), id) << "the query's set was answered twice";
    if (m->id() == later_id) break;
  }
  EXPECT_EQ(stop_core(), 0);
}

// ---- A query's set over several entities, under load --------------------------------------------

constexpr int kMultisetEntities = 4;  // per device: ID_s0 .. ID_s3; the even ones also have Light
constexpr int kNeverObeyed = 3;       // ID_s3: the provider refuses or holds every request for it
constexpr const char* kStableDevice = "a0";  // never taken offline during the run
const std::vector<std::string> kMultisetDevices = {"a0", "a1", "a2", "b0", "b1"};

sdk::DeviceSpec multiset_device(const std::string& id) {
  sdk::DeviceSpec spec{.id = id, .name = id, .groups = {}, .entities = {}};
  for (int i = 0; i < kMultisetEntities; ++i) {
    sdk::EntitySpec e{.id = id + "_s" + std::to_string(i), .name = id + " switch " + std::to_string(i),
                      .components = {Component::Switch}};
    if (i % 2 == 0) e.components.emplace_back(Component::Light);
    spec.entities.push_back(std::move(e));
  }
  return spec;
}

// An SDK provider for the query set stress test. It declares the devices named in args[2]
// (comma-separated; entities as in multiset_device) and settles each request at random (seeded
// with args[3]): obeyed, refused with "refused by ENTITY", or held unanswered so that the core
// times it out; requests for entities ID_s3 are never obeyed (so a success reported for one was
// made up by the core). Once more than 256 are held the oldest is obeyed late, usually after the
// core gave up on it (an answer nobody waits for). With args[4] == "ctl", fd 3 is a control socket
// taking "unavail ID", "avail ID", "remove ID" and "add ID", each answered "ok" or an error text.
// args: socket dir, provider name, device ids, seed [, "ctl"].
FLOE_CHILD_ROLE(multiset_provider) {
  const int ctl = args.size() > 4 && args[4] == "ctl" ? 3 : -1;
  sdk::Provider provider({.name = args.at(1), .socket_dir = args.at(0)});
  std::map<std::string, sdk::Device*> devices;
  std::istringstream ids(args.at(2));
  for (std::string id; std::getline(ids, id, ',');) devices[id] = &provider.add_device(multiset_device(id));
  std::minstd_rand rng(static_cast<std::uint32_t>(std::stoul(args.at(3))));
  std::deque<sdk::Request> held;
  provider.on_request([&](sdk::Request& r) {
    const auto roll = rng() % 100;
    if (roll < 67 && r.entity() != kNeverObeyed && r.value() != nullptr) {
      (void)r.device().set(r.entity(), r.component(), *r.value());
      return r.succeed();
    }
    if (roll < 92) return r.fail("refused by " + r.entity_id());
    held.push_back(std::move(r));
    if (held.size() > 256) {
      held.front().succeed();
      held.pop_front();
    }
  });
  return serve_with_commands(provider, ctl, [&](const std::string& cmd) {
    const std::string verb = cmd.substr(0, cmd.find(' '));
    const std::string id = cmd.find(' ') == std::string::npos ? "" : cmd.substr(cmd.find(' ') + 1);
    const auto it = devices.find(id);
    std::string reply = "ok";
    if (verb == "add") {
      auto added = provider.try_add_device(multiset_device(id));
      if (added) devices[id] = &added->get();
      else reply = added.error().to_string();
    } else if (it == devices.end()) {
      reply = "no device '" + id + "'";
    } else if (verb == "unavail" || verb == "avail") {
      it->second->set_available(verb == "avail", "churn");
    } else if (verb == "remove") {
      devices.erase(it);
      if (auto r = provider.remove_device(id); !r) reply = r.error().to_string();
    } else {
      reply = "unknown command";
    }
    return reply;
  });
}

// The query sets the stress test sends, each with the entities it addresses (of the devices that
// are online when the core evaluates it).
struct MultisetQuery {
  const char* text;
  bool (*addresses)(const std::string& device, int index);
};
const MultisetQuery kMultisetQueries[] = {
    {"set Switch = true", [](const std::string&, int) { return true; }},
    {"set Switch = false where Light", [](const std::string&, int i) { return i % 2 == 0; }},
    {"set Switch = true in entity *_s1", [](const std::string&, int i) { return i == 1; }},
    {"set Switch = false in entity a0_*", [](const std::string& d, int) { return d == "a0"; }},
    {"set Switch = true where not Light in entity b*",
     [](const std::string& d, int i) { return d[0] == 'b' && i % 2 == 1; }},
};

// How each entity's request ended, over the whole run (all clients).
struct MultisetTally {
  std::atomic<std::uint64_t> query_sets{0}, gets{0};
  std::atomic<std::uint64_t> ok{0}, refused{0}, timed_out{0}, offline{0}, ring_full{0};
  [[nodiscard]] bool every_outcome_seen() const {
    return ok.load() > 0 && refused.load() > 0 && timed_out.load() > 0 && offline.load() > 0;
  }
};

constexpr int kMultisetTimeoutMs = 200;  // the core's request_timeout_ms in the stress test

// A response in a few words, for failure messages (the lite runtime has no DebugString).
std::string describe(const proto::ClientResponse& m) {
  if (m.has_error()) return "error " + proto::ErrorCode_Name(m.error().code()) + " '" + m.error().message() + "'";
  if (m.has_value()) {
    return "the value '" + m.value().value().display() + "' of " + m.value().entity() +
           (m.value().online() ? " (online)" : " (offline)");
  }
  if (m.has_set()) return "the outcomes of " + std::to_string(m.set().results_size()) + " entities";
  return "a response of kind " + std::to_string(m.body_case());
}

// Splits "a1_s3" into ("a1", 3); nullopt for an entity the stress test does not declare.
std::optional<std::pair<std::string, int>> multiset_entity(const std::string& entity) {
  for (const auto& d : kMultisetDevices) {
    for (int i = 0; i < kMultisetEntities; ++i) {
      if (entity == d + "_s" + std::to_string(i)) return std::pair{d, i};
    }
  }
  return std::nullopt;
}

// What is wrong with one entity's outcome in a query set's answer (empty: nothing), counting it.
std::string check_set_result(const proto::SetResult& r, const std::string& device, int index, MultisetTally& tally) {
  // A failed entity carries the code that says why, and it agrees with the message.
  const auto code_is = [&](proto::ErrorCode want) { return r.code() == want; };
  const std::string& msg = r.message();
  if (r.ok()) {
    ++tally.ok;
    if (index == kNeverObeyed) return "ok, but its provider never obeys it";
    return msg.empty() && r.code() == proto::ERROR_CODE_UNSPECIFIED ? "" : "ok with message '" + msg + "'";
  }
  if (msg == "refused by " + r.entity() && code_is(proto::ERROR_CODE_PROVIDER)) {
    ++tally.refused;
    return "";
  }
  if (msg == "the provider did not answer within " + std::to_string(kMultisetTimeoutMs) + " ms" &&
      code_is(proto::ERROR_CODE_TIMEOUT)) {
    ++tally.timed_out;
    return "";
  }
  const bool offline = msg == "the device is offline" || msg == "the device was removed" ||
                       msg == "device '" + device + "' is offline" ||
                       msg == "device '" + device + "' went offline" ||
                       msg == "device '" + device + "' is unreachable (churn)";
  if (offline && code_is(proto::ERROR_CODE_OFFLINE) && device != kStableDevice) {
    ++tally.offline;
    return "";
  }
  if (msg == "the device's request ring is full (provider not keeping up)" && code_is(proto::ERROR_CODE_LIMIT)) {
    ++tally.ring_full;
    return "";
  }
  return "failed with code " + std::to_string(r.code()) + " and message '" + msg + "'";
}

// What is wrong with the answer to query set `q` (empty: nothing): it must list each entity it
// addresses at most once, all of them on the device that stays online, each with a known outcome.
std::string check_query_set(const MultisetQuery& q, const proto::ClientResponse& m, MultisetTally& tally) {
  if (!m.has_set()) return "answered " + describe(m);
  std::set<std::string> listed;
  std::string problems;
  for (const auto& r : m.set().results()) {
    const auto entity = multiset_entity(r.entity());
    if (!entity || !q.addresses(entity->first, entity->second)) {
      problems += " lists '" + r.entity() + "', which it does not address;";
    } else if (!listed.insert(r.entity()).second) {
      problems += " lists " + r.entity() + " twice;";
    } else if (auto why = check_set_result(r, entity->first, entity->second, tally); !why.empty()) {
      problems += " " + r.entity() + " " + why + ";";
    }
  }
  for (int i = 0; i < kMultisetEntities; ++i) {
    const std::string e = std::string(kStableDevice) + "_s" + std::to_string(i);
    if (q.addresses(kStableDevice, i) && !listed.contains(e)) problems += " leaves out " + e + ";";
  }
  return problems.empty() ? "" : "'" + std::string(q.text) + "':" + problems;
}

// What is wrong with the answer to a get of `entity`'s Switch (empty: nothing). A removed device's
// entities are unknown until it is declared again; the stable device is always online.
std::string check_get(const std::string& entity, const proto::ClientResponse& m) {
  if (m.has_value() && m.value().entity() == entity && m.value().value().has_boolean() &&
      (m.value().online() || !entity.starts_with(kStableDevice))) {
    return "";
  }
  if (m.has_error() && m.error().code() == proto::ERROR_CODE_NOT_FOUND && entity.starts_with("a2")) return "";
  return "get " + entity + " answered " + describe(m);
}

// One client of the stress test: keeps up to 24 requests in flight on its connection (two query
// sets for each get) until `stop`, then collects the remaining answers. Each request must be
// answered exactly once: an answer to a request already answered, or to none, is a problem.
// Returns the problems: the first 20 found in answers, then why it stopped early if it did.
std::vector<std::string> run_multiset_client(const std::string& sock_dir, std::uint32_t seed, std::stop_token stop,
                                             MultisetTally& tally) {
  constexpr std::size_t kInFlight = 24;
  std::vector<std::string> problems;
  std::size_t more = 0;
  const auto problem = [&](std::string p) {
    if (problems.size() < 20) problems.push_back(std::move(p));
    else ++more;
  };
  const auto finish = [&](const std::string& why) {
    if (more > 0) problems.push_back("and " + std::to_string(more) + " more problems");
    if (!why.empty()) problems.push_back(why);
    return problems;
  };
  Client client(sock_dir);
  if (!client.connected() || !client.hello()) return finish("could not connect");
  std::minstd_rand rng(seed);
  struct Sent {
    const MultisetQuery* query = nullptr;  // else a get of `entity`
    std::string entity;
  };
  std::map<std::uint64_t, Sent> waiting;
  std::set<std::uint64_t> answered;
  while (!stop.stop_requested() || !waiting.empty()) {
    while (!stop.stop_requested() && waiting.size() < kInFlight) {
      proto::ClientRequest req;
      Sent sent;
      if (rng() % 3 == 0) {
        sent.entity = kMultisetDevices[rng() % kMultisetDevices.size()] + "_s" + std::to_string(rng() % kMultisetEntities);
        req.mutable_get()->set_entity(sent.entity);
        req.mutable_get()->set_component("Switch");
      } else {
        sent.query = &kMultisetQueries[rng() % std::size(kMultisetQueries)];
        req.mutable_query()->set_text(sent.query->text);
      }
      const std::uint64_t id = client.post(req);
      if (id == 0) return finish("the connection failed");
      waiting.emplace(id, std::move(sent));
    }
    auto m = client.receive(kGuardMs);
    if (!m) {
      return finish(std::to_string(waiting.size()) + " requests never answered, the first " +
                    std::to_string(waiting.begin()->first));
    }
    const auto it = waiting.find(m->id());
    if (it == waiting.end()) {
      problem((answered.contains(m->id()) ? "a second answer to request " : "an answer to no request: ") +
              std::to_string(m->id()) + ": " + describe(*m));
      continue;
    }
    std::string why;
    if (it->second.query != nullptr) {
      ++tally.query_sets;
      why = check_query_set(*it->second.query, *m, tally);
    } else {
      ++tally.gets;
      why = check_get(it->second.entity, *m);
    }
    if (!why.empty()) problem("request " + std::to_string(m->id()) + ": " + why);
    answered.insert(m->id());
    waiting.erase(it);
  }
  // A second answer sent along with the first arrives before the answer to a later request.
  proto::ClientRequest last;
  last.mutable_list_devices();
  const std::uint64_t last_id = client.post(last);
  for (;;) {
    auto m = client.receive(kGuardMs);
    if (!m) return finish("no answer to the last request");
    if (m->id() == last_id) break;
    problem((answered.contains(m->id()) ? "a second answer to request " : "an answer to no request: ") +
            std::to_string(m->id()) + ": " + describe(*m));
  }
  return finish({});
}

// Clients fire query sets over several entities (and gets) concurrently while the providers obey
// some requests, refuse some and leave some to time out, and devices go offline and come back: a
// device made unreachable, a provider killed and restarted, a device removed and declared again.
// Each entity's request completes on whichever thread settles it (a shard reading the provider's
// answer, the session at the deadline, the main thread taking the device offline, or the submitter
// at once), and the last one answers the client. Every query set must get exactly one answer, which
// lists each entity it addresses at most once (all of those on the device that stays online) with
// a known outcome; the core survives and still serves a new client afterwards.
TEST_F(CoreDaemon, ConcurrentQuerySetsAreEachAnsweredOnceWithEveryEntityWhileDevicesComeAndGo) {
  start_logged_core("worker_threads = 2\nrequest_timeout_ms = " + std::to_string(kMultisetTimeoutMs) + "\n");
  Client observer(sock_dir_);
  ASSERT_TRUE(observer.hello());
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  auto a = test::spawn_child("multiset_provider", {sock_dir_, "multiset-a", "a0,a1,a2", "1", "ctl"}, {sv[1]});
  ::close(sv[1]);
  ASSERT_TRUE(a) << a.error().to_string();
  provider_.emplace(std::move(*a));
  ctl_ = sv[0];
  std::optional<test::Child> b;
  std::uint32_t b_seed = 100;
  const auto start_b = [&] {
    auto c = test::spawn_child("multiset_provider", {sock_dir_, "multiset-b", "b0,b1", std::to_string(b_seed++)}, {});
    if (c) b.emplace(std::move(*c));
    return static_cast<bool>(c);
  };
  ASSERT_TRUE(start_b());
  const auto all_online = [&] {
    return std::all_of(kMultisetDevices.begin(), kMultisetDevices.end(), [&](const auto& d) { return observer.online(d); });
  };
  ASSERT_TRUE(eventually(all_online)) << "the providers' devices did not come online";
  // The core has not exited (waitid with WNOWAIT leaves it to be reaped by stop_core).
  const auto core_running = [&] {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(core_->pid()), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == 0;
  };

  constexpr int kClients = 4;
  MultisetTally tally;
  std::vector<std::vector<std::string>> problems(kClients);
  std::atomic<int> clients_done{0};
  int rounds = 0;
  {
    // Joined (after a stop request) however this block is left.
    std::vector<std::jthread> clients;
    for (int c = 0; c < kClients; ++c) {
      clients.emplace_back([&, c](std::stop_token stop) {
        problems[c] = run_multiset_client(sock_dir_, static_cast<std::uint32_t>(c + 1), stop, tally);
        ++clients_done;
      });
    }
    // Rounds of churn, at least 10 (more in a soak, FLOE_STRESS_SCALE > 1) and until every kind of
    // outcome has been seen (bounded), unless a client gave up. The pauses only let sets meet each
    // state; nothing depends on their length. (TSan slows this test little: it mostly waits.)
    const int min_rounds = static_cast<int>(std::max<std::uint64_t>(10, test::scaled(10)));
    const int max_rounds = min_rounds + 90;
    for (; clients_done.load() == 0 && (rounds < min_rounds || (!tally.every_outcome_seen() && rounds < max_rounds));
         ++rounds) {
      ASSERT_EQ(command("unavail a1"), "ok");
      std::this_thread::sleep_for(20ms);
      b->kill(SIGKILL);
      ASSERT_EQ(b->wait(), 128 + SIGKILL);
      b.reset();
      ASSERT_TRUE(eventually([&] { return !observer.online("b0") && !observer.online("b1"); }));
      ASSERT_TRUE(start_b());
      ASSERT_EQ(command("remove a2"), "ok");
      std::this_thread::sleep_for(20ms);
      ASSERT_EQ(command("avail a1"), "ok");
      ASSERT_EQ(command("add a2"), "ok");
      ASSERT_TRUE(eventually(all_online)) << "round " << rounds << ": the devices did not all come back";
      std::this_thread::sleep_for(50ms);
      ASSERT_TRUE(core_running()) << "floe-core exited during round " << rounds;
    }
  }
  const auto n = [](const std::atomic<std::uint64_t>& a) { return static_cast<unsigned long long>(a.load()); };
  std::printf("[ multiset ] %d rounds, %llu query sets, %llu gets; entity outcomes: %llu ok, %llu refused, %llu timed out, "
              "%llu offline, %llu ring full\n",
              rounds, n(tally.query_sets), n(tally.gets), n(tally.ok), n(tally.refused), n(tally.timed_out),
              n(tally.offline), n(tally.ring_full));
  for (int c = 0; c < kClients; ++c) {
    for (const auto& p : problems[c]) ADD_FAILURE() << "client " << c << ": " << p;
  }
  EXPECT_TRUE(tally.every_outcome_seen()) << "the run did not produce every kind of outcome";
  ASSERT_TRUE(core_running()) << "floe-core exited";
  Client fresh(sock_dir_);
  ASSERT_TRUE(fresh.hello());
  auto g = fresh.get("a0_s0", "Switch");
  ASSERT_TRUE(g && g->has_value()) << (g ? describe(*g) : "no answer");
  EXPECT_TRUE(g->value().online());
  EXPECT_EQ(stop_core(), 0);
}

// A watcher that stops reading while its watch keeps changing is neither disconnected nor left with
// a stale value: events it has no room for are conflated (a watch event is the whole current
// result, so only the newest one per watch is kept), and when it reads again the last event it
// gets holds the last value written. (It used to be disconnected once 4,096 events queued.)
TEST_F(CoreDaemon, ASlowWatcherGetsTheLatestResultAndIsNotDisconnected) {
  Client client = start_core_and_provider();
  ASSERT_FALSE(HasFailure());
  ASSERT_TRUE(eventually([&] { return client.online("lamp"); }));
  std::string why;
  const std::uint64_t watch_req = client.start_watch("max Dimmer where Light", why);
  ASSERT_NE(watch_req, 0U) << why;

  // The client does not read while the provider writes 8,000 values, each drained on its own.
  constexpr int kWrites = 8000;
  ASSERT_EQ(command("ramp " + std::to_string(kWrites)), "ok");
  Client other(sock_dir_);
  ASSERT_TRUE(other.hello());
  ASSERT_TRUE(eventually([&] {
    auto g = other.get("lamp_light", "Dimmer");
    return g && g->has_value() && g->value().value().real() == 1.0;
  }));

  // Now read: events until the final value, never an error.
  std::size_t events = 0;
  double last = -1;
  while (last != 1.0) {
    auto m = client.receive();
    ASSERT_TRUE(m) << "the watcher's connection ended after " << events << " events (last value " << last << ")";
    ASSERT_FALSE(m->has_error()) << m->error().message();
    if (m->id() != watch_req || !m->has_watch_event()) continue;
    ++events;
    last = m->watch_event().result().number();
  }
  EXPECT_LT(events, static_cast<std::size_t>(kWrites)) << "no event was conflated";
  // The session is still serving requests.
  auto g = client.get("lamp_light", "Dimmer");
  ASSERT_TRUE(g && g->has_value());
  EXPECT_EQ(g->value().value().real(), 1.0);
  EXPECT_EQ(stop_core(), 0);
}

// floe-core stops on SIGTERM even while a client's socket is full and the client does not read
// (its session thread must not sit in a blocking send).
TEST_F(CoreDaemon, StopsWhileAWatcherDoesNotRead) {
  Client client = start_core_and_provider();
  ASSERT_FALSE(HasFailure());
  ASSERT_TRUE(eventually([&] { return client.online("lamp"); }));
  std::string why;
  ASSERT_NE(client.start_watch("max Dimmer where Light", why), 0U) << why;
  ASSERT_EQ(command("ramp 3000"), "ok");  // fills the socket: the session thread waits to send
  EXPECT_EQ(stop_core(), 0);
}

// A client that stops reading (its socket full of watch events) is disconnected after
// limits.client_stall_timeout_ms, with a log line, and its place comes back: with max_clients = 2
// a third client gets in only once the stalled one is gone.
TEST_F(CoreDaemon, AClientThatStopsReadingIsDisconnectedAfterTheStallTimeoutAndItsPlaceComesBack) {
  Client client = start_core_and_provider("max_clients = 2\n[limits]\nclient_stall_timeout_ms = 300\n");
  ASSERT_FALSE(HasFailure());
  std::optional<Client> staller(std::in_place, sock_dir_);
  ASSERT_TRUE(staller->hello());
  std::string why;
  ASSERT_NE(staller->start_watch("max Dimmer where Light", why), 0U) << why;
  // Events until its socket is full (it never reads again) and the core gives up on it; under
  // load the shard may coalesce changes into fewer events, so the writes go on until then.
  ASSERT_TRUE(eventually([&] {
    if (slurp(log_).find("limits.client_stall_timeout_ms); disconnecting") != std::string::npos) return true;
    EXPECT_EQ(command("ramp 500"), "ok");
    return false;
  })) << "the stalled client was not disconnected";
  ASSERT_TRUE(eventually([&] {
    Client third(sock_dir_);
    return third.hello();
  })) << "the stalled client's place was not given back";
  // The client that reads was not disturbed.
  auto g = client.get("lamp_light", "Dimmer");
  ASSERT_TRUE(g && g->has_value());
  EXPECT_EQ(g->value().value().real(), 1.0);
  EXPECT_EQ(stop_core(), 0);
}

// A client that takes one small packet now and then keeps its socket full: that is not keeping up,
// and it is disconnected like one that reads nothing. The session sends again (and restarts the
// stall clock) only on EPOLLOUT, which a Unix socket reports once the reader has drained about
// three quarters of the send buffer, not after every packet it takes.
TEST_F(CoreDaemon, AClientReadingATrickleFromAFullSocketIsStillDisconnected) {
  Client client = start_core_and_provider("[limits]\nclient_stall_timeout_ms = 1000\n");
  ASSERT_FALSE(HasFailure());
  Client trickle(sock_dir_);
  ASSERT_TRUE(trickle.hello());
  std::string why;
  ASSERT_NE(trickle.start_watch("max Dimmer where Light", why), 0U) << why;
  int packets_read = 0;
  ASSERT_TRUE(eventually([&] {
    if (slurp(log_).find("limits.client_stall_timeout_ms); disconnecting") != std::string::npos) return true;
    EXPECT_EQ(command("ramp 500"), "ok");
    char packet[ipc::kMaxPacketBytes];
    if (::recv(trickle.channel().fd(), packet, sizeof packet, MSG_DONTWAIT) > 0) ++packets_read;
    std::this_thread::sleep_for(50ms);
    return false;
  })) << "the client reading a trickle was not disconnected (it read " << packets_read << " packets)";
  EXPECT_GT(packets_read, 0);
  EXPECT_EQ(stop_core(), 0);
}

// What floe-core holds for clients that do not read is bounded over all sessions, not only per
// session (64 MiB each): limits.max_queued_client_bytes. A client with many watches that stops
// reading fills its queue with their events; past the core-wide limit, a session holding more
// than its share (the limit over max_clients) is disconnected at once, and the others go on.
TEST_F(CoreDaemon, ClientsThatDoNotReadShareOneCoreWideLimitOfQueuedBytes) {
  Client client = start_core_and_provider(
      "max_clients = 4\n[limits]\nmax_queued_client_bytes = 65536\nmax_watches_per_client = 4096\n"
      "client_stall_timeout_ms = 600000\n");
  ASSERT_FALSE(HasFailure());
  Client hog(sock_dir_);
  ASSERT_TRUE(hog.hello());
  std::string why;
  for (int i = 0; i < 3000; ++i) ASSERT_NE(hog.start_watch("list Dimmer where Light", why), 0U) << why;
  // It reads nothing from here on: every change queues an event per watch (coalesced per watch).
  ASSERT_TRUE(eventually([&] {
    if (slurp(log_).find("(limits.max_queued_client_bytes 65536); disconnecting") != std::string::npos) return true;
    EXPECT_EQ(command("ramp 50"), "ok");
    return false;
  })) << "the client over its share was not disconnected";
  // Its connection is closed: what it still finds in its socket ends with end-of-file (or a reset).
  ASSERT_TRUE(eventually([&] {
    char packet[ipc::kMaxPacketBytes];
    const ssize_t n = ::recv(hog.channel().fd(), packet, sizeof packet, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
  })) << "the hog's connection stayed open";
  // The client that reads was not disturbed, and a new one gets in.
  EXPECT_EQ(command("ramp 1"), "ok");
  auto g = client.get("lamp_light", "Dimmer");
  ASSERT_TRUE(g && g->has_value());
  Client another(sock_dir_);
  EXPECT_TRUE(another.hello());
  EXPECT_EQ(stop_core(), 0);
}

// The same for refusals: a client that floods requests the core refuses (each answered with an
// error) and never reads fills its socket; its session thread must still let floe-core stop.
TEST_F(CoreDaemon, StopsWhileAClientFloodsRefusedRequestsAndDoesNotRead) {
  Client client = start_core_and_provider();
  ASSERT_FALSE(HasFailure());
  proto::ClientRequest get;
  get.mutable_get()->set_entity("no_such_entity");
  get.mutable_get()->set_component("Switch");
  const std::string bytes = get.SerializeAsString();
  // Until the core stops reading (its answers fill the client's receive queue, then its session
  // waits to send) and this socket's own send buffer is full: MSG_DONTWAIT, so the test never blocks.
  std::size_t sent = 0;
  int idle_rounds = 0;
  while (idle_rounds < 50) {
    if (::send(client.channel().fd(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL) > 0) {
      ++sent;
      idle_rounds = 0;
    } else {
      ASSERT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK) << std::strerror(errno);
      ++idle_rounds;
      std::this_thread::sleep_for(10ms);
    }
  }
  EXPECT_GT(sent, 100U);
  EXPECT_EQ(stop_core(), 0);
}

// Client sessions share the client loops (no thread per connection): max_clients sessions are
// all served by a handful of threads, one more is refused with a reason, and a closed session
// gives its place back.
TEST_F(CoreDaemon, ManyClientsShareTheClientLoopsAndOneOverMaxClientsIsRefused) {
  constexpr std::size_t kClients = 200;
  start_logged_core("worker_threads = 2\nclient_threads = 2\nmax_clients = 200\n");
  ASSERT_FALSE(HasFailure());
  const pid_t core_pid = core_->pid();
  auto threads = [&] {
    std::error_code ec;
    const std::filesystem::directory_iterator it("/proc/" + std::to_string(core_pid) + "/task", ec);
    return ec ? std::size_t{0} : static_cast<std::size_t>(std::distance(it, std::filesystem::directory_iterator{}));
  };
  const std::size_t threads_before = threads();
  // A client whose connection start_core's readiness probe left behind may still hold a place
  // until its loop notices it is gone.
  ASSERT_TRUE(eventually([&] {
    Client probe(sock_dir_);
    return probe.hello();
  }));
  std::vector<std::unique_ptr<Client>> clients;
  for (std::size_t i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<Client>(sock_dir_));
    ASSERT_TRUE(clients.back()->hello()) << "client " << i;
  }
  // Every one of them is served, each on a connection of its own.
  for (std::size_t i = 0; i < kClients; ++i) {
    auto r = clients[i]->devices();
    ASSERT_TRUE(r && r->has_devices()) << "client " << i;
  }
  const std::size_t threads_with_clients = threads();
  EXPECT_LT(threads_with_clients, threads_before + 8) << "threads: " << threads_before << " before the clients, "
                                                      << threads_with_clients << " with " << kClients;
  // One more is refused, with the reason, sent as soon as it connects (read before sending
  // anything: the core closes the refused connection, and a request still unread then would turn
  // the close into a reset that hides the reason).
  {
    Client extra(sock_dir_);
    auto r = extra.receive();
    ASSERT_TRUE(r && r->has_error()) << (r ? r->DebugString() : "no answer");
    EXPECT_EQ(r->error().code(), proto::ERROR_CODE_LIMIT);
    EXPECT_TRUE(r->error().fatal());
    EXPECT_NE(r->error().message().find("max_clients = 200"), std::string::npos) << r->error().message();
  }
  // A client that leaves gives its place back.
  clients.pop_back();
  ASSERT_TRUE(eventually([&] {
    Client again(sock_dir_);
    return again.hello();
  })) << "the place of the client that left was not given back";
  // The others were not disturbed.
  auto r = clients.front()->devices();
  EXPECT_TRUE(r && r->has_devices());
  EXPECT_EQ(stop_core(), 0);
}

// Stress for the client loops: clients connect, watch, send sets and leave at every point (at
// once, after reading part of their answers, after a half-close, or after all of them) while a
// writer keeps watch events flowing and the provider answers. The core must neither crash nor
// race (the sanitizer builds run this), answer every client that stays, and give back every
// place: at the end max_clients fresh clients all connect and are served.
TEST_F(CoreDaemon, ClientsLeavingMidRequestAndMidWatchLeaveTheCoreWhole) {
  constexpr std::size_t kMaxClients = 16;
  start_logged_core("client_threads = 2\nmax_clients = 16\n");
  ASSERT_FALSE(HasFailure());
  {
    Client probe(sock_dir_);
    ASSERT_TRUE(probe.hello());
    start_provider();
    ASSERT_TRUE(eventually([&] { return probe.online("lamp") && probe.online("fan"); }));
  }
  std::atomic<bool> done{false};
  std::thread writer([&] {  // watch events on the shards' threads, the whole time
    while (!done.load() && command("ramp 100") == "ok") {
    }
  });
  const int rounds = static_cast<int>(test::scaled(60, 10));
  std::atomic<int> complete{0};
  std::atomic<int> answered_sets{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t) * 7919U + 1U);
      for (int round = 0; round < rounds; ++round) {
        Client c(sock_dir_);
        if (!c.connected() || !c.hello()) {
          ADD_FAILURE() << "client " << t << " round " << round << " was not welcomed";
          return;
        }
        proto::ClientRequest watch;
        watch.mutable_watch()->set_text("max Dimmer where Light");
        (void)c.post(watch);
        std::set<std::uint64_t> sets;
        for (int k = 0; k < 8; ++k) {
          const bool lamp = (rng() % 2) == 0;
          sets.insert(lamp ? c.post(Client::set_request("lamp_light", "Dimmer", std::to_string((rng() % 100) / 100.0)))
                           : c.post(Client::set_request("fan_switch", "Switch", (rng() % 2) != 0 ? "true" : "false")));
        }
        switch (rng() % 4) {
          case 0: break;  // gone at once, everything in flight
          case 1:         // reads a little, then goes
            (void)c.receive(2000);
            break;
          case 2:  // stops sending, then goes without reading
            ::shutdown(c.channel().fd(), SHUT_WR);
            std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 3));
            break;
          default: {  // stays for every set's answer (events of the watch come in between)
            std::size_t left = sets.size();
            while (left > 0) {
              auto m = c.receive();
              if (!m) {
                ADD_FAILURE() << "client " << t << " round " << round << ": " << left << " sets never answered";
                return;
              }
              if (sets.erase(m->id()) == 0) continue;
              --left;
              answered_sets.fetch_add(1);
              if (!m->has_set()) {
                ADD_FAILURE() << "a set was answered " << m->ShortDebugString();
                return;
              }
            }
            complete.fetch_add(1);
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  done.store(true);
  writer.join();
  ASSERT_FALSE(HasFailure());
  EXPECT_GT(complete.load(), 0) << "no client stayed for its answers";
  // Every place was given back (a departed client's place returns once its loop has noticed).
  std::vector<std::unique_ptr<Client>> fresh;
  ASSERT_TRUE(eventually([&] {
    fresh.clear();
    for (std::size_t i = 0; i < kMaxClients; ++i) {
      fresh.push_back(std::make_unique<Client>(sock_dir_));
      if (!fresh.back()->connected() || !fresh.back()->hello()) return false;
    }
    return true;
  })) << "fewer than max_clients places came back";
  for (auto& c : fresh) {
    auto g = c->get("lamp_light", "Dimmer");
    EXPECT_TRUE(g && g->has_value());
  }
  fresh.clear();
  EXPECT_EQ(stop_core(), 0);
}

TEST_F(CoreDaemon, SilentProviderIsDisconnectedWithAReasonAndItsDevicesGoOffline) {
  start_logged_core("provider_timeout_ms = 300\n");
  Client client(sock_dir_);
  ASSERT_TRUE(client.hello());
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
  auto silent = test::spawn_child("silent_provider", {sock_dir_}, {sv[1]});
  ::close(sv[1]);
  ASSERT_TRUE(silent);
  ASSERT_EQ(recv_text(sv[0]), "declared");
  // Online at first (the grant came), offline once the timeout has passed without a word.
  ASSERT_TRUE(eventually([&] {
    auto d = client.device("mute");
    return d && !d->online() && slurp(log_).find("'silent'") != std::string::npos;
  }));
  const std::string log = slurp(log_);
  EXPECT_NE(log.find("provider 'silent'"), std::string::npos) << log;
  EXPECT_NE(log.find("silent for"), std::string::npos) << log;
  EXPECT_NE(log.find("provider_timeout_ms = 300"), std::string::npos) << log;
  ::close(sv[0]);
  EXPECT_EQ(silent->wait(60s), 0) << "the core did not close the silent provider's socket";
  auto r = client.set("mute_switch", "Switch", "true");
  ASSERT_TRUE(r && r->has_error());
  EXPECT_EQ(r->error().code(), proto::ERROR_CODE_OFFLINE);
  EXPECT_EQ(stop_core(), 0);
}

#if defined(VIRTUAL_LIGHTS_BIN) && defined(FLOECTL_BIN)

// Starts a program with stdout and stderr in `log`; its pid (-1: not started).
pid_t spawn_program(const std::vector<std::string>& argv_s, const std::string& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::vector<char*> argv;
  for (const auto& a : argv_s) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

// Runs a program to completion; its exit code (-1: not run).
int run_program(const std::vector<std::string>& argv_s, const std::string& log) {
  const pid_t pid = spawn_program(argv_s, log);
  if (pid < 0) return -1;
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

class NotifyModes : public CoreDaemon, public ::testing::WithParamInterface<const char*> {};

TEST_P(NotifyModes, FloectlSetReachesTheProviderAndTheChangeIsVisible) {
  start_logged_core(std::string("worker_threads = 1\n[rings]\nnotify = \"") + GetParam() + "\"\n");
  const std::string vl_log = dir_ + "/virtual-lights.log";
  const pid_t vl = spawn_program({VIRTUAL_LIGHTS_BIN, "--count", "2", "--socket-dir", sock_dir_}, vl_log);
  ASSERT_GT(vl, 0);
  test::Child lights(vl);  // killed and reaped at the end

  Client client(sock_dir_);
  ASSERT_TRUE(client.hello());
  ASSERT_TRUE(eventually([&] { return client.online("virtual-lights-2"); })) << slurp(vl_log);
  const std::string out = dir_ + "/floectl.log";
  const std::string ctl = FLOECTL_BIN;
  for (const char* level : {"0.3", "0.8"}) {
    ASSERT_EQ(run_program({ctl, "--timeout", "60", "--socket-dir", sock_dir_, "set", "light_2", "Dimmer", level}, out), 0) << slurp(out);
    // The provider wrote the change record before its answer: the value is there at once.
    ASSERT_EQ(run_program({ctl, "--timeout", "60", "--socket-dir", sock_dir_, "--json", "get", "light_2", "Dimmer"}, out), 0) << slurp(out);
    EXPECT_NE(slurp(out).find(level), std::string::npos) << slurp(out);
    auto g = client.get("light_2", "Dimmer");
    ASSERT_TRUE(g && g->has_value());
    EXPECT_EQ(g->value().value().real(), std::stod(level));
  }
  // A refusal travels back the same way.
  EXPECT_NE(run_program({ctl, "--timeout", "60", "--socket-dir", sock_dir_, "set", "light_1", "Dimmer", "1.5"}, out), 0);
  EXPECT_NE(slurp(out).find("0.0 .. 1.0"), std::string::npos) << slurp(out);
  EXPECT_EQ(stop_core(), 0);
}

INSTANTIATE_TEST_SUITE_P(EveryStrategy, NotifyModes, ::testing::Values("eventfd", "futex", "spin", "poll"),
                         [](const auto& info) { return std::string(info.param); });

#endif  // VIRTUAL_LIGHTS_BIN && FLOECTL_BIN

}  // namespace
}  // namespace floe::core

#endif  // FLOE_CORE_BIN
