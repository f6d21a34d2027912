// The provider SDK against a fake floe-core written here: this process listens on a temporary
// FLOE_SOCKET_DIR, answers Hello and AddDevice with real sealed device regions and eventfds, pushes
// SetRequests into tx rings and reads change records and results from rx rings. The providers are
// real processes: the virtual-lights example and SDK programs in child roles of this binary.
// "Restarting the core" closes every socket and region and listens again at the same path.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "floe/ipc/channel.hpp"
#include "floe/ipc/device_region.hpp"
#include "floe/ipc/doorbell.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/protocol.hpp"
#include "floe/ipc/region.hpp"
#include "floe/sdk/provider.hpp"
#include "management.pb.h"
#include "support/child_process.hpp"
#include "support/integration.hpp"

namespace floe::sdk {
namespace {

using namespace std::chrono_literals;
using ipc::Component;
using Clock = std::chrono::steady_clock;

using test::wait_readable;

// ---- The fake core ------------------------------------------------------------------------------

struct Rx {
  std::vector<ipc::ChangeRecord> changes;
  struct Result {
    std::uint64_t id;
    ipc::RequestStatus status;
    std::string message;
  };
  std::vector<Result> results;
};

struct FakeDevice {
  proto::AddDevice decl;
  ipc::Region region;
  ipc::Fd tx_signal, rx_signal;  // our ends of the signal pipes: tx write end, rx read end
  ipc::RingProducer tx;
  ipc::RingConsumer rx;
  ipc::TreeReader reader;
  Rx seen;

  void poll_rx() {
    auto n = rx.drain([&](const ipc::RecordView& v) {
      if (v.type == ipc::kChangeRecord) {
        if (auto c = ipc::read_record<ipc::ChangeRecord>(v.payload)) seen.changes.push_back(*c);
      } else if (v.type == ipc::kRequestResult) {
        auto r = ipc::read_record<ipc::RequestResult>(v.payload);
        ASSERT_TRUE(r);
        ASSERT_LE(sizeof(*r) + r->message_length, v.payload.size());
        seen.results.push_back({r->request_id, static_cast<ipc::RequestStatus>(r->status),
                                std::string(reinterpret_cast<const char*>(v.payload.data() + sizeof(*r)), r->message_length)});
      }
    });
    ASSERT_TRUE(n) << n.error().to_string();
  }
  void request(std::uint64_t id, std::uint32_t entity, Component c, const RequestValue& value) {
    auto bytes = encode_request(id, entity, c, value);
    ASSERT_TRUE(bytes) << bytes.error().to_string();
    const auto type = std::holds_alternative<std::string>(value) ? ipc::kSetTextRequest : ipc::kSetRequest;
    ASSERT_TRUE(tx.try_push(type, *bytes));
  }
  // Polls the rx ring until the result of request `id` arrives.
  std::optional<Rx::Result> result(std::uint64_t id, std::chrono::milliseconds timeout = 10s) {
    const auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      poll_rx();
      for (const auto& r : seen.results) {
        if (r.id == id) return r;
      }
      std::this_thread::sleep_for(1ms);
    }
    return std::nullopt;
  }
  // Polls until the tree holds `want` for (entity, c).
  bool wait_value(std::uint32_t entity, Component c, const ipc::Value& want, std::chrono::milliseconds timeout = 10s) {
    const auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      poll_rx();
      if (reader.get(entity, c) == want) return true;
      std::this_thread::sleep_for(1ms);
    }
    return false;
  }
  bool saw_change(std::uint32_t entity, Component c) const {
    for (const auto& r : seen.changes) {
      if (r.entity == entity && r.component == ipc::to_id(c)) return true;
    }
    return false;
  }
};

// The schema an AddDevice declares.
ipc::TreeSchema schema_of(const proto::AddDevice& add) {
  ipc::TreeSchema schema;
  for (const auto& e : add.entities()) {
    ipc::EntityDecl decl;
    for (const auto& c : e.components()) {
      decl.components.push_back({.component = static_cast<Component>(c.component()), .max_bytes = c.max_bytes()});
    }
    schema.entities.push_back(std::move(decl));
  }
  return schema;
}

class FakeCore {
 public:
  explicit FakeCore(const std::string& dir, ipc::DeviceRegionOptions region_options = {})
      : dir_(dir), region_options_(region_options) {
    auto l = ipc::Listener::bind(dir + "/" + std::string(ipc::kProviderSocketName));
    EXPECT_TRUE(l) << l.error().to_string();
    listener_.emplace(std::move(*l));
  }

  // Accepts the next provider and reads its Hello.
  std::optional<proto::Hello> accept(std::chrono::milliseconds timeout = 15s) {
    if (!wait_readable(listener_->fd(), timeout)) return std::nullopt;
    auto ch = listener_->accept();
    if (!ch) return std::nullopt;
    channel_.emplace(std::move(*ch));
    proto::Envelope env;
    if (!receive(env) || !env.has_hello()) return std::nullopt;
    hello_id_ = env.id();
    return env.hello();
  }
  void welcome() { ASSERT_TRUE(channel_->send(welcome_envelope())); }
  // Welcomes with doorbells for `shards` shards (64 slots each) but sends `signals` signal pipe
  // ends after the region (1 + shards is right): as floe-core does, the read end of the provider's
  // doorbell signal, then the write end of each shard's.
  void welcome_with_bells(std::uint32_t shards, std::size_t signals) {
    auto region = ipc::Region::create({.name = "fake-bells", .size = ipc::doorbell_region_size(1 + shards, 64),
                                       .kind = ipc::RegionKind::kDoorbells});
    ASSERT_TRUE(region) << region.error().to_string();
    ASSERT_TRUE(ipc::doorbell_region_init({region->data(), region->size()}, 1 + shards, 64));
    auto shared = region->share();
    ASSERT_TRUE(shared);
    std::vector<ipc::SignalPipe>& pipes = bell_pipes_;  // our ends stay open, as a core's do
    pipes.clear();
    std::vector<int> fds{shared->get()};
    for (std::size_t i = 0; i < signals; ++i) {
      auto p = ipc::make_signal_pipe();
      ASSERT_TRUE(p);
      fds.push_back(i == 0 ? p->read.get() : p->write.get());
      pipes.push_back(std::move(*p));
    }
    proto::Envelope env = welcome_envelope();
    auto* g = env.mutable_welcome()->mutable_doorbells();
    g->set_slots(64);
    g->set_shards(shards);
    g->set_size(region->size());
    ASSERT_TRUE(channel_->send(env, fds));
    bells_.emplace(std::move(*region));
  }
  // Reads one AddDevice and answers it with a doorbell grant (the region alone) naming `slot` and
  // `shard`, whatever they are.
  void grant_with_bell(std::uint32_t slot, std::uint32_t shard) {
    proto::Envelope env;
    ASSERT_TRUE(receive(env) && env.has_add_device());
    auto layout = ipc::DeviceRegionLayout::compute(schema_of(env.add_device()), region_options_);
    ASSERT_TRUE(layout);
    auto region = ipc::Region::create({.name = "fake-dev", .size = layout->region_size, .kind = ipc::RegionKind::kDevice});
    ASSERT_TRUE(region && ipc::device_region_init({region->data(), region->size()}, *layout));
    auto shared = region->share();
    ASSERT_TRUE(shared);
    proto::Envelope reply;
    reply.set_id(env.id());
    auto* g = reply.mutable_device_grant();
    g->set_device_id(env.add_device().device_id());
    g->set_handle(1);
    g->mutable_region()->set_name("fake-dev");
    g->mutable_region()->set_size(region->size());
    g->mutable_region()->add_fd_roles(proto::FD_ROLE_REGION);
    g->set_doorbell_slot(slot);
    g->set_shard(shard);
    const int fds[] = {shared->get()};
    ASSERT_TRUE(channel_->send(reply, fds));
  }
  void refuse_hello(proto::ErrorCode code, const std::string& message) {
    proto::Envelope env;
    env.set_id(hello_id_);
    env.mutable_error()->set_code(code);
    env.mutable_error()->set_message(message);
    env.mutable_error()->set_fatal(true);
    ASSERT_TRUE(channel_->send(env));
    channel_.reset();
  }
  // Reads one AddDevice; answers it with a grant (or refuses it with `refusal`).
  FakeDevice* add_device(const std::string& refusal = {}) {
    proto::Envelope env;
    if (!receive(env)) return nullptr;
    EXPECT_TRUE(env.has_add_device()) << "expected AddDevice, got body " << env.body_case();
    if (!env.has_add_device()) return nullptr;
    if (!refusal.empty()) {
      proto::Envelope err;
      err.set_id(env.id());
      err.mutable_error()->set_code(proto::ERROR_CODE_CONFLICT);
      err.mutable_error()->set_message(refusal);
      EXPECT_TRUE(channel_->send(err));
      return nullptr;
    }
    return grant(env);
  }
  bool connected_peer_closed(std::chrono::milliseconds timeout) {
    if (!wait_readable(channel_->fd(), timeout)) return false;
    proto::Envelope env;
    return !receive(env);
  }
  std::vector<std::unique_ptr<FakeDevice>>& devices() { return devices_; }
  /// Grants from now on carry eventfds, as a core older than signal pipes sent.
  void send_eventfds() { send_eventfds_ = true; }
  /// Closes the connection, as a core that exits does.
  void hang_up() {
    channel_.reset();
    devices_.clear();
    bell_pipes_.clear();
  }

 private:
  // The Welcome answering the last Hello, for a new session.
  proto::Envelope welcome_envelope() {
    proto::Envelope env;
    env.set_id(hello_id_);
    env.mutable_welcome()->set_protocol_version(ipc::kProtocolVersion);
    env.mutable_welcome()->set_core_name("fake-core");
    env.mutable_welcome()->set_session_id(++session_);
    return env;
  }
  // The next envelope that is not the SDK's periodic Heartbeat (which this fake leaves unanswered).
  bool receive(proto::Envelope& env, std::chrono::milliseconds timeout = 10s) {
    do {
      if (!wait_readable(channel_->fd(), timeout)) return false;
      if (!channel_->receive(env)) return false;
    } while (env.has_heartbeat());
    return true;
  }

  FakeDevice* grant(const proto::Envelope& env) {
    const auto& add = env.add_device();
    auto layout = ipc::DeviceRegionLayout::compute(schema_of(add), region_options_);
    EXPECT_TRUE(layout) << layout.error().to_string();
    auto region = ipc::Region::create({.name = add.device_id(), .size = layout->region_size, .kind = ipc::RegionKind::kDevice});
    EXPECT_TRUE(region) << region.error().to_string();
    EXPECT_TRUE(ipc::device_region_init({region->data(), region->size()}, *layout));
    // Signal pipes, as floe-core sends them: we keep the tx write end and the rx read end. As a
    // core older than signal pipes did (send_eventfds()): one eventfd each way, shared.
    auto tx_pipe = send_eventfds_ ? eventfd_pair() : ipc::make_signal_pipe();
    auto rx_pipe = send_eventfds_ ? eventfd_pair() : ipc::make_signal_pipe();
    auto parts = ipc::device_region_attach({region->data(), region->size()});
    EXPECT_TRUE(tx_pipe && rx_pipe && parts);
    auto tx = ipc::RingProducer::attach(parts->tx, tx_pipe->write.get());
    auto rx = ipc::RingConsumer::attach(parts->rx, rx_pipe->read.get());
    auto reader = ipc::TreeReader::attach(parts->tree);
    EXPECT_TRUE(tx && rx && reader);
    auto shared = region->share();
    EXPECT_TRUE(shared);

    proto::Envelope reply;
    reply.set_id(env.id());
    auto* g = reply.mutable_device_grant();
    g->set_device_id(add.device_id());
    g->set_handle((devices_.size() + 1) << 32 | session_);
    g->mutable_region()->set_name(add.device_id());
    g->mutable_region()->set_size(region->size());
    g->mutable_region()->add_fd_roles(proto::FD_ROLE_REGION);
    g->mutable_region()->add_fd_roles(proto::FD_ROLE_TX_EVENTFD);
    g->mutable_region()->add_fd_roles(proto::FD_ROLE_RX_EVENTFD);
    const int fds[] = {shared->get(), tx_pipe->read.get(), rx_pipe->write.get()};
    EXPECT_TRUE(channel_->send(reply, fds));
    devices_.push_back(std::unique_ptr<FakeDevice>(new FakeDevice{add, std::move(*region), std::move(tx_pipe->write),
                                                                  std::move(rx_pipe->read), std::move(*tx), std::move(*rx),
                                                                  std::move(*reader), {}}));
    return devices_.back().get();
  }

  // An eventfd as both "ends" of a signal (two descriptors of one open file description).
  static Result<ipc::SignalPipe> eventfd_pair() {
    auto e = ipc::make_eventfd(/*nonblocking=*/true);
    if (!e) return tl::unexpected(e.error());
    ipc::Fd dup(::fcntl(e->get(), F_DUPFD_CLOEXEC, 0));
    return ipc::SignalPipe{.read = std::move(*e), .write = std::move(dup)};
  }

  std::string dir_;
  bool send_eventfds_ = false;
  ipc::DeviceRegionOptions region_options_;
  std::optional<ipc::Listener> listener_;
  std::optional<ipc::Channel> channel_;
  std::vector<std::unique_ptr<FakeDevice>> devices_;
  std::uint64_t hello_id_ = 0;
  std::uint64_t session_ = 0;
  std::optional<ipc::Region> bells_;
  std::vector<ipc::SignalPipe> bell_pipes_;
};

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/floe-sdk-itest-XXXXXX";
    path = ::mkdtemp(tmpl);
    ::setenv("FLOE_SOCKET_DIR", path.c_str(), 1);
  }
  ~TempDir() {
    ::unsetenv("FLOE_SOCKET_DIR");
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// ---- Provider programs --------------------------------------------------------------------------

// Runs another program (args[0]) with the rest of args; the environment is inherited.
FLOE_CHILD_ROLE(exec_program) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execv(argv[0], argv.data());
  std::perror("execv");
  return 127;
}

Provider* g_provider = nullptr;
extern "C" void stop_provider(int) { g_provider->stop(); }

DeviceSpec one_light(const std::string& id) {
  return {.id = id, .name = id, .groups = {"test"},
          .entities = {{.id = id + "_e", .name = id, .components = {Component::Light, Component::Switch, Component::Dimmer,
                                                                   Component::Text}}}};
}

// Answers each request a few ms later from a worker thread of its own (as a provider waiting for
// its physical device would), in order; runs its own loop with run().
FLOE_CHILD_ROLE(late_answers) {
  Provider provider({.name = "late", .reconnect_min = 20ms, .reconnect_max = 200ms});
  provider.add_device(one_light("late-1"));
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Request> queue;
  bool done = false;
  std::thread worker([&] {
    for (;;) {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return done || !queue.empty(); });
      if (queue.empty()) return;
      Request req = std::move(queue.front());
      queue.pop_front();
      lock.unlock();
      std::this_thread::sleep_for(3ms);
      if (req.value() != nullptr) (void)req.device().set(req.entity(), req.component(), *req.value());
      if (req.text() != nullptr) (void)req.device().set_text(req.entity(), req.component(), *req.text());
      req.succeed();
    }
  });
  provider.on_request([&](Request& r) {
    {
      std::lock_guard lock(mu);
      queue.push_back(std::move(r));
    }
    cv.notify_one();
  });
  g_provider = &provider;
  ::signal(SIGTERM, stop_provider);
  auto ran = provider.run();
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_one();
  worker.join();
  return ran ? 0 : 1;
}

// Integrates with a foreign loop (poll on fd(), then process()); once its device is online it
// writes `args[0]` Dimmer values as fast as it can, so a small rx ring overflows.
FLOE_CHILD_ROLE(flood) {
  const int writes = std::stoi(args.at(0));
  Provider provider({.name = "flood", .reconnect_min = 20ms, .reconnect_max = 200ms});
  auto& dev = provider.add_device(one_light("flood-1"));
  g_provider = &provider;
  static std::atomic<bool> stop{false};
  ::signal(SIGTERM, [](int) { stop = true; });
  bool flooded = false;
  while (!stop) {
    pollfd p{provider.fd(), POLLIN, 0};
    (void)::poll(&p, 1, 20);
    if (!provider.process()) return 2;
    if (dev.online() && !flooded) {
      for (int i = 1; i <= writes; ++i) {
        if (dev.set(0, Component::Dimmer, i / static_cast<double>(writes)) != WriteStatus::kOk) return 3;
      }
      flooded = true;
    }
  }
  return 0;
}

// ---- Tests --------------------------------------------------------------------------------------

#ifdef VIRTUAL_LIGHTS_BIN
TEST(SdkFakeCore, VirtualLightsDeclaresObeysAndRewritesItsStateAfterACoreRestart) {
  TempDir dir;
  auto core = std::make_unique<FakeCore>(dir.path);
  auto child = test::spawn_child("exec_program", {VIRTUAL_LIGHTS_BIN, "--count", "2", "--group", "kitchen"}, {});
  ASSERT_TRUE(child) << child.error().to_string();

  auto hello = core->accept();
  ASSERT_TRUE(hello);
  EXPECT_EQ(hello->protocol_version(), ipc::kProtocolVersion);
  EXPECT_EQ(hello->peer_name(), "virtual-lights");
  EXPECT_EQ(hello->role(), proto::PEER_ROLE_PROVIDER);
  core->welcome();
  FakeDevice* d1 = core->add_device();
  FakeDevice* d2 = core->add_device();
  ASSERT_TRUE(d1 && d2);
  EXPECT_EQ(d1->decl.device_id(), "virtual-lights-1");
  EXPECT_EQ(d2->decl.device_id(), "virtual-lights-2");
  ASSERT_EQ(d1->decl.entities_size(), 1);
  EXPECT_EQ(d1->decl.entities(0).id(), "light_1");
  ASSERT_EQ(d1->decl.groups_size(), 1);
  EXPECT_EQ(d1->decl.groups(0), "kitchen");
  std::vector<std::uint32_t> comps;
  for (const auto& c : d1->decl.entities(0).components()) comps.push_back(c.component());
  EXPECT_EQ(comps, (std::vector<std::uint32_t>{1, 2, 3, 4}));  // Light, Switch, Dimmer, Color

  // The initial values arrive through the tree and the rx ring.
  ASSERT_TRUE(d1->wait_value(0, Component::Color, ipc::Rgb{255, 255, 255}));
  EXPECT_TRUE(d1->saw_change(0, Component::Switch));

  d1->request(7, 0, Component::Dimmer, ipc::Value{0.75});
  auto r7 = d1->result(7);
  ASSERT_TRUE(r7);
  EXPECT_EQ(r7->status, ipc::RequestStatus::kOk) << r7->message;
  EXPECT_EQ(d1->reader.get(0, Component::Dimmer), ipc::Value{0.75});
  EXPECT_TRUE(d1->saw_change(0, Component::Dimmer));

  d1->request(8, 0, Component::Dimmer, ipc::Value{1.5});
  auto r8 = d1->result(8);
  ASSERT_TRUE(r8);
  EXPECT_EQ(r8->status, ipc::RequestStatus::kUnsupported);
  EXPECT_NE(r8->message.find("0.0 .. 1.0"), std::string::npos) << r8->message;

  d2->request(9, 0, Component::Switch, ipc::Value{true});
  d2->request(10, 0, Component::Light, ipc::Value{ipc::Marker{}});       // the example refuses it
  d2->request(11, 0, Component::ColorTemperature, ipc::Value{3000.0});   // not in the schema: the SDK
  d2->request(12, 3, Component::Switch, ipc::Value{true});               // no such entity: the SDK
  auto r9 = d2->result(9), r10 = d2->result(10), r11 = d2->result(11), r12 = d2->result(12);
  ASSERT_TRUE(r9 && r10 && r11 && r12);
  EXPECT_EQ(r9->status, ipc::RequestStatus::kOk);
  EXPECT_EQ(d2->reader.get(0, Component::Switch), ipc::Value{true});
  EXPECT_EQ(r10->status, ipc::RequestStatus::kUnsupported);
  EXPECT_EQ(r11->status, ipc::RequestStatus::kUnsupported);
  EXPECT_NE(r11->message.find("ColorTemperature"), std::string::npos) << r11->message;
  EXPECT_EQ(r12->status, ipc::RequestStatus::kUnsupported);

  // Restart the core: everything closes; a new one listens at the same path a little later.
  core.reset();
  std::this_thread::sleep_for(300ms);
  core = std::make_unique<FakeCore>(dir.path);
  hello = core->accept();
  ASSERT_TRUE(hello) << "the provider did not reconnect";
  core->welcome();
  d1 = core->add_device();
  d2 = core->add_device();
  ASSERT_TRUE(d1 && d2);
  // The new regions start zeroed; the provider rewrites its last known state.
  EXPECT_TRUE(d1->wait_value(0, Component::Dimmer, ipc::Value{0.75}));
  EXPECT_TRUE(d2->wait_value(0, Component::Switch, ipc::Value{true}));
  EXPECT_TRUE(d1->wait_value(0, Component::Color, ipc::Rgb{255, 255, 255}));
  EXPECT_TRUE(d1->saw_change(0, Component::Dimmer));

  d1->request(20, 0, Component::Color, ipc::Value{ipc::Rgb{1, 2, 3}});
  auto r20 = d1->result(20);
  ASSERT_TRUE(r20);
  EXPECT_EQ(r20->status, ipc::RequestStatus::kOk);

  child->kill(SIGTERM);
  EXPECT_EQ(child->wait(10s), 0);
}
#endif

TEST(SdkFakeCore, RequestsCanBeAnsweredLaterFromAnotherThread) {
  TempDir dir;
  FakeCore core(dir.path);
  auto child = test::spawn_child("late_answers", {}, {});
  ASSERT_TRUE(child) << child.error().to_string();
  ASSERT_TRUE(core.accept());
  core.welcome();
  FakeDevice* d = core.add_device();
  ASSERT_TRUE(d);
  for (std::uint64_t id = 1; id <= 20; ++id) d->request(id, 0, Component::Dimmer, ipc::Value{id / 20.0});
  d->request(21, 0, Component::Text, std::string("hello from the core"));
  for (std::uint64_t id = 1; id <= 21; ++id) {
    auto r = d->result(id);
    ASSERT_TRUE(r) << "no result for request " << id;
    EXPECT_EQ(r->status, ipc::RequestStatus::kOk) << r->message;
  }
  EXPECT_TRUE(d->wait_value(0, Component::Dimmer, ipc::Value{1.0}));
  auto text = d->reader.read_text(0, Component::Text);
  ASSERT_TRUE(text);
  EXPECT_EQ(*text, "hello from the core");
  child->kill(SIGTERM);
  EXPECT_EQ(child->wait(10s), 0);
}

// A core older than signal pipes sent eventfds in its grants: the SDK reads and writes them the
// same way (and its futex bridges and come-backs never write the grant's fds).
TEST(SdkFakeCore, AnOlderCoresEventfdsStillWork) {
  TempDir dir;
  FakeCore core(dir.path);
  auto child = test::spawn_child("late_answers", {}, {});
  ASSERT_TRUE(child) << child.error().to_string();
  ASSERT_TRUE(core.accept());
  core.welcome();
  core.send_eventfds();
  FakeDevice* d = core.add_device();
  ASSERT_TRUE(d);
  for (std::uint64_t id = 1; id <= 20; ++id) {
    d->request(id, 0, Component::Dimmer, ipc::Value{id / 20.0});
    auto r = d->result(id);
    ASSERT_TRUE(r) << "no result for request " << id;
    EXPECT_EQ(r->status, ipc::RequestStatus::kOk) << r->message;
  }
  EXPECT_TRUE(d->wait_value(0, Component::Dimmer, ipc::Value{1.0}));
  child->kill(SIGTERM);
  EXPECT_EQ(child->wait(10s), 0);
}

TEST(SdkFakeCore, RefusedProtocolAndRefusedDeviceAreRetriedWithoutCrashing) {
  TempDir dir;
  FakeCore core(dir.path);
  auto child = test::spawn_child("late_answers", {}, {});
  ASSERT_TRUE(child) << child.error().to_string();
  ASSERT_TRUE(core.accept());
  core.refuse_hello(proto::ERROR_CODE_PROTOCOL_VERSION, "fake core speaks protocol 99");
  // It comes back (at its maximum backoff, 200 ms here) and this time is welcomed.
  ASSERT_TRUE(core.accept(5s));
  core.welcome();
  EXPECT_EQ(core.add_device("device id owned by another provider"), nullptr);
  // Still alive and connected: it does not re-declare a refused device on its own.
  EXPECT_FALSE(core.connected_peer_closed(300ms));
  child->kill(SIGTERM);
  EXPECT_EQ(child->wait(10s), 0);
}

// A core whose doorbells do not add up (an eventfd short of the shards it announces) ends the
// connection; the SDK's next Hello asks for none, and it works on signals per device.
// ... and only the next: the connection after that one asks again (the core may have been fixed or
// replaced meanwhile).
TEST(SdkFakeCore, UnusableDoorbellsEndTheConnectionAndTheNextHelloAsksForNone) {
  TempDir dir;
  FakeCore core(dir.path);
  auto child = test::spawn_child("late_answers", {}, {});
  ASSERT_TRUE(child) << child.error().to_string();
  auto hello = core.accept();
  ASSERT_TRUE(hello);
  EXPECT_TRUE(hello->doorbells()) << "the SDK asks for doorbells by default";
  core.welcome_with_bells(2, 2);
  EXPECT_TRUE(core.connected_peer_closed(5s));
  auto again = core.accept(5s);
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->doorbells());
  core.welcome();
  FakeDevice* d = core.add_device();
  ASSERT_TRUE(d);
  d->request(1, 0, Component::Dimmer, ipc::Value{0.5});
  auto r = d->result(1);
  ASSERT_TRUE(r) << "no result";
  EXPECT_EQ(r->status, ipc::RequestStatus::kOk) << r->message;
  core.hang_up();
  auto third = core.accept(5s);
  ASSERT_TRUE(third);
  EXPECT_TRUE(third->doorbells()) << "one connection without doorbells, then they are asked for again";
  child->kill(SIGTERM);
  EXPECT_EQ(child->wait(10s), 0);
}

// A grant naming a shard or slot beyond the doorbells is refused; the SDK stays up and connected.
TEST(SdkFakeCore, ADoorbellGrantOutOfRangeIsRefusedWithoutCrashing) {
  TempDir dir;
  FakeCore core(dir.path);
  auto child = test::spawn_child("late_answers", {}, {});
  ASSERT_TRUE(child) << child.error().to_string();
  ASSERT_TRUE(core.accept());
  core.welcome_with_bells(2, 3);
  core.grant_with_bell(0, 0xFFFFFFFF);
  EXPECT_FALSE(core.connected_peer_closed(300ms));
  child->kill(SIGTERM);
  EXPECT_EQ(child->wait(10s), 0);
}

TEST(SdkFakeCore, AFullRxRingLosesRecordsButNeverTheLatestValue) {
  TempDir dir;
  FakeCore core(dir.path, {.tx_capacity = 1024, .rx_capacity = 256});
  auto child = test::spawn_child("flood", {"5000"}, {});
  ASSERT_TRUE(child) << child.error().to_string();
  ASSERT_TRUE(core.accept());
  core.welcome();
  FakeDevice* d = core.add_device();
  ASSERT_TRUE(d);
  // The fake core does not drain while the provider floods; only then does it look.
  const auto until = Clock::now() + 10s;
  while (d->reader.get(0, Component::Dimmer) != ipc::Value{1.0} && Clock::now() < until) std::this_thread::sleep_for(2ms);
  EXPECT_EQ(d->reader.get(0, Component::Dimmer), ipc::Value{1.0});
  EXPECT_EQ(d->rx.header().overflow.exchange(0, std::memory_order_acquire), 1u) << "the provider must flag the overflow";
  d->poll_rx();
  EXPECT_LT(d->seen.changes.size(), 5000u);
  EXPECT_GE(d->reader.change_seq(0), 5000u);
  child->kill(SIGTERM);
  EXPECT_EQ(child->wait(10s), 0);
}

}  // namespace
}  // namespace floe::sdk
