// The client library against a scripted fake core on a real client socket: handshake, error codes
// mapped to exit codes, timeouts, and watch events that arrive while a request waits.
#include <sys/eventfd.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "client.hpp"
#include "floe/ipc/answer_parts.hpp"
#include "floe/ipc/channel.hpp"

namespace floe::client {
namespace {

using Handler = std::function<bool(ipc::Channel&, const proto::ClientRequest&)>;  // false: hang up

// Accepts `connections` connections one after the other and feeds every request to `handler`
// until it returns false (hang up) or the client leaves.
class FakeCore {
 public:
  explicit FakeCore(Handler handler, int connections = 1) {
    char tmpl[] = "/tmp/floectl-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    auto l = ipc::Listener::bind(dir_ + "/client.sock");
    EXPECT_TRUE(l) << l.error().to_string();
    listener_.emplace(std::move(*l));
    thread_ = std::thread([this, connections, handler = std::move(handler)] {
      for (int i = 0; i < connections && !leaving_.load(); ++i) {
        auto ch = listener_->accept();
        if (!ch) break;
        for (;;) {
          proto::ClientRequest req;
          if (!ch->receive(req) || !handler(*ch, req)) break;
        }
      }
      done_.store(true);
    });
  }
  ~FakeCore() {
    // Unblock accept() if fewer clients came than expected.
    leaving_.store(true);
    while (!done_.load()) {
      if (auto c = ipc::Channel::connect(dir_ + "/client.sock")) {}
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    thread_.join();
    listener_.reset();
    std::filesystem::remove_all(dir_);
  }
  [[nodiscard]] ClientOptions options() const {
    ClientOptions o;
    o.socket_dir = dir_;
    o.timeout = std::chrono::milliseconds(2000);
    return o;
  }

 private:
  std::string dir_;
  std::optional<ipc::Listener> listener_;
  std::atomic<bool> leaving_{false};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

bool welcome(ipc::Channel& ch, const proto::ClientRequest& req) {
  proto::ClientResponse r;
  r.set_id(req.id());
  r.mutable_welcome()->set_protocol_version(ipc::kProtocolVersion);
  r.mutable_welcome()->set_core_name("fake");
  return static_cast<bool>(ch.send(r));
}

bool error(ipc::Channel& ch, std::uint64_t id, proto::ErrorCode code, const std::string& msg, bool fatal = false) {
  proto::ClientResponse r;
  r.set_id(id);
  r.mutable_error()->set_code(code);
  r.mutable_error()->set_message(msg);
  r.mutable_error()->set_fatal(fatal);
  return static_cast<bool>(ch.send(r)) && !fatal;
}

TEST(FloectlClient, HandshakeSendsHelloAsAClientAndKeepsTheWelcome) {
  FakeCore core([](ipc::Channel& ch, const proto::ClientRequest& req) {
    if (req.has_hello()) {
      EXPECT_EQ(req.hello().role(), proto::PEER_ROLE_CLIENT);
      EXPECT_EQ(req.hello().protocol_version(), ipc::kProtocolVersion);
      return welcome(ch, req);
    }
    return false;
  });
  auto c = Client::connect(core.options());
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(c->welcome().core_name(), "fake");
}

TEST(FloectlClient, ProtocolMismatchIsExitNine) {
  FakeCore core([](ipc::Channel& ch, const proto::ClientRequest& req) {
    EXPECT_EQ(req.hello().protocol_version(), 999u);
    return error(ch, req.id(), proto::ERROR_CODE_PROTOCOL_VERSION, "floe-core speaks protocol 1, not 999", true);
  });
  auto options = core.options();
  options.protocol_version = 999;
  auto c = Client::connect(options);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().exit, ExitCode::kUnauthorized);
  EXPECT_NE(c.error().message.find("999"), std::string::npos);
}

TEST(FloectlClient, HangupDuringTheHandshakeIsReportedAsUnauthorised) {
  FakeCore core([](ipc::Channel&, const proto::ClientRequest&) { return false; });
  auto c = Client::connect(core.options());
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().exit, ExitCode::kUnauthorized);
}

TEST(FloectlClient, ErrorRepliesMapToDistinctExitCodes) {
  FakeCore core([](ipc::Channel& ch, const proto::ClientRequest& req) {
    if (req.has_hello()) return welcome(ch, req);
    if (req.has_get()) return error(ch, req.id(), proto::ERROR_CODE_NOT_FOUND, "no entity 'nope'");
    if (req.has_query()) return error(ch, req.id(), proto::ERROR_CODE_BAD_QUERY, "count whre\n      ^^^^ expected");
    if (req.has_set()) return error(ch, req.id(), proto::ERROR_CODE_OFFLINE, "device lights-a is offline");
    return error(ch, req.id(), proto::ERROR_CODE_BAD_VALUE, "not a number");
  });
  auto c = Client::connect(core.options());
  ASSERT_TRUE(c) << c.error().message;
  auto g = c->get("nope", "Dimmer");
  ASSERT_FALSE(g);
  EXPECT_EQ(g.error().exit, ExitCode::kNotFound);
  auto q = c->query("count whre");
  ASSERT_FALSE(q);
  EXPECT_EQ(q.error().exit, ExitCode::kBadQuery);
  EXPECT_NE(q.error().message.find("^^^^"), std::string::npos);
  auto s = c->set("a", "Dimmer", "0.5");
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().exit, ExitCode::kOffline);
  auto e = c->edit_group("g", "d", false);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().exit, ExitCode::kBadValue);
}

TEST(FloectlClient, NoAnswerIsATimeout) {
  FakeCore core([](ipc::Channel& ch, const proto::ClientRequest& req) {
    if (req.has_hello()) return welcome(ch, req);
    return true;  // never answers
  });
  auto options = core.options();
  options.timeout = std::chrono::milliseconds(50);
  auto c = Client::connect(options);
  ASSERT_TRUE(c) << c.error().message;
  auto d = c->list_devices();
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().exit, ExitCode::kTimeout);
}

TEST(FloectlClient, ConnectFailureNamesThePathItTried) {
  ClientOptions o;
  o.socket_dir = "/nonexistent/floe-dir";
  auto c = Client::connect(o);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().exit, ExitCode::kConnect);
  EXPECT_NE(c.error().message.find("/nonexistent/floe-dir/client.sock"), std::string::npos);
}

proto::ClientResponse many_devices(std::uint64_t id, int n) {
  proto::ClientResponse r;
  r.set_id(id);
  for (int i = 0; i < n; ++i) {
    auto* d = r.mutable_devices()->add_devices();
    d->set_name("device-with-a-name-of-some-length-" + std::to_string(i));
    d->set_online(i % 2 == 0);
  }
  return r;
}

bool send_packets(ipc::Channel& ch, const std::vector<std::string>& packets) {
  for (const auto& p : packets) {
    if (!ch.send(std::as_bytes(std::span(p)))) return false;
  }
  return true;
}

TEST(FloectlClient, AnAnswerSplitOverPacketsIsJoinedAndWatchEventsAroundItStay) {
  const proto::ClientResponse big = many_devices(0, 4000);
  ASSERT_GT(big.ByteSizeLong(), ipc::kMaxPacketBytes);
  FakeCore core([&big](ipc::Channel& ch, const proto::ClientRequest& req) {
    if (req.has_hello()) {
      EXPECT_TRUE(req.hello().split_answers()) << "the library joins split answers, so it must ask for them";
      return welcome(ch, req);
    }
    proto::ClientResponse ev;
    ev.mutable_watch_event()->set_watch_id(4);
    if (!ch.send(ev)) return false;
    proto::ClientResponse answer = big;
    answer.set_id(req.id());
    auto parts = ipc::split_answer(answer);
    EXPECT_TRUE(parts) << parts.error().to_string();
    EXPECT_GT(parts->size(), 2U);
    return send_packets(ch, *parts) && static_cast<bool>(ch.send(ev));
  });
  auto c = Client::connect(core.options());
  ASSERT_TRUE(c) << c.error().message;
  auto d = c->list_devices();
  ASSERT_TRUE(d) << d.error().message;
  proto::ClientResponse got;
  *got.mutable_devices() = std::move(*d);
  EXPECT_EQ(got.devices().SerializeAsString(), big.devices().SerializeAsString());
  for (int i = 0; i < 2; ++i) {
    auto e = c->next_event(-1, std::chrono::milliseconds(2000));
    ASSERT_TRUE(e) << e.error().message;
    EXPECT_EQ(e->event.watch_id(), 4U);
  }
}

TEST(FloectlClient, AnAnswerCutShortIsATimeoutThatSaysSo) {
  FakeCore core([](ipc::Channel& ch, const proto::ClientRequest& req) {
    if (req.has_hello()) return welcome(ch, req);
    auto parts = ipc::split_answer(many_devices(req.id(), 4000));
    EXPECT_TRUE(parts);
    parts->resize(1);  // the rest never comes
    return send_packets(ch, *parts);
  });
  auto options = core.options();
  options.timeout = std::chrono::milliseconds(200);
  auto c = Client::connect(options);
  ASSERT_TRUE(c) << c.error().message;
  auto d = c->list_devices();
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().exit, ExitCode::kTimeout);
  EXPECT_NE(d.error().message.find("part of an answer"), std::string::npos) << d.error().message;
  // The rest could still come and be taken for the next answer: the connection is given up.
  EXPECT_TRUE(d.error().connection_lost);
  auto again = c->list_devices();
  ASSERT_FALSE(again);
  EXPECT_TRUE(again.error().connection_lost) << again.error().message;
}

TEST(FloectlClient, AFatalErrorInsteadOfTheRestOfAnAnswerIsWhatTheClientSees) {
  FakeCore core([](ipc::Channel& ch, const proto::ClientRequest& req) {
    if (req.has_hello()) return welcome(ch, req);
    auto parts = ipc::split_answer(many_devices(req.id(), 4000));
    EXPECT_TRUE(parts);
    parts->resize(1);
    return send_packets(ch, *parts) && error(ch, 0, proto::ERROR_CODE_MALFORMED, "8 malformed requests in a row", true);
  });
  auto c = Client::connect(core.options());
  ASSERT_TRUE(c) << c.error().message;
  auto d = c->list_devices();
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message.find("8 malformed requests in a row"), std::string::npos) << d.error().message;
}

TEST(FloectlClient, SomethingElseBetweenThePacketsOfAnAnswerIsAnError) {
  FakeCore core([](ipc::Channel& ch, const proto::ClientRequest& req) {
    if (req.has_hello()) return welcome(ch, req);
    auto parts = ipc::split_answer(many_devices(req.id(), 4000));
    EXPECT_TRUE(parts);
    proto::ClientResponse ev;
    ev.mutable_watch_event()->set_watch_id(4);
    std::string between = ev.SerializeAsString();
    parts->insert(parts->begin() + 1, between);
    return send_packets(ch, *parts);
  });
  auto c = Client::connect(core.options());
  ASSERT_TRUE(c) << c.error().message;
  auto d = c->list_devices();
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().exit, ExitCode::kGeneric);
  EXPECT_NE(d.error().message.find("broken split answer"), std::string::npos) << d.error().message;
  EXPECT_TRUE(d.error().connection_lost);
}

TEST(FloectlClient, WatchEventsArrivingDuringARequestAreQueuedInOrder) {
  FakeCore core([](ipc::Channel& ch, const proto::ClientRequest& req) {
    if (req.has_hello()) return welcome(ch, req);
    proto::ClientResponse r;
    if (req.has_watch()) {
      r.set_id(req.id());
      r.mutable_watch_started()->set_watch_id(42);
      return static_cast<bool>(ch.send(r));
    }
    if (req.has_list_groups()) {
      for (int i = 1; i <= 2; ++i) {  // two events overtake the answer
        proto::ClientResponse ev;
        ev.set_id(1);
        ev.mutable_watch_event()->set_watch_id(42);
        ev.mutable_watch_event()->mutable_result()->set_action("count");
        ev.mutable_watch_event()->mutable_result()->set_count(static_cast<std::uint64_t>(i));
        if (!ch.send(ev)) return false;
      }
      r.set_id(req.id());
      r.mutable_groups();
      return static_cast<bool>(ch.send(r));
    }
    if (req.has_unwatch()) {
      EXPECT_EQ(req.unwatch().watch_id(), 42u);
      r.set_id(req.id());
      r.mutable_ok();
      return static_cast<bool>(ch.send(r));
    }
    return false;
  });
  auto c = Client::connect(core.options());
  ASSERT_TRUE(c) << c.error().message;
  auto id = c->watch("count where Light");
  ASSERT_TRUE(id) << id.error().message;
  EXPECT_EQ(*id, 42u);
  ASSERT_TRUE(c->list_groups());
  for (std::uint64_t want = 1; want <= 2; ++want) {
    auto ev = c->next_event(-1, std::chrono::milliseconds(2000));
    ASSERT_TRUE(ev) << ev.error().message;
    ASSERT_EQ(ev->kind, WaitOutcome::Kind::kEvent);
    EXPECT_EQ(ev->event.result().count(), want);
  }
  // Nothing more: an interrupt ends the wait.
  const int efd = ::eventfd(1, EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  auto ev = c->next_event(efd, std::chrono::milliseconds(2000));
  ::close(efd);
  ASSERT_TRUE(ev) << ev.error().message;
  EXPECT_EQ(ev->kind, WaitOutcome::Kind::kInterrupted);
  EXPECT_TRUE(c->unwatch(42));
}

TEST(FloectlClient, UnwatchDropsOnlyThatWatchsQueuedEvents) {
  FakeCore core([next_watch = std::uint64_t{42}](ipc::Channel& ch, const proto::ClientRequest& req) mutable {
    if (req.has_hello()) return welcome(ch, req);
    proto::ClientResponse r;
    r.set_id(req.id());
    if (req.has_watch()) {
      r.mutable_watch_started()->set_watch_id(next_watch++);
    } else if (req.has_list_groups()) {
      for (std::uint64_t watch : {42, 43}) {  // an event of each watch overtakes the answer
        proto::ClientResponse ev;
        ev.mutable_watch_event()->set_watch_id(watch);
        ev.mutable_watch_event()->mutable_result()->set_action("count");
        ev.mutable_watch_event()->mutable_result()->set_count(watch);
        if (!ch.send(ev)) return false;
      }
      r.mutable_groups();
    } else if (req.has_unwatch()) {
      r.mutable_ok();
    } else {
      return false;
    }
    return static_cast<bool>(ch.send(r));
  });
  auto c = Client::connect(core.options());
  ASSERT_TRUE(c) << c.error().message;
  ASSERT_EQ(c->watch("count where Light").value_or(0), 42u);
  ASSERT_EQ(c->watch("count where Switch").value_or(0), 43u);
  ASSERT_TRUE(c->list_groups());
  ASSERT_TRUE(c->unwatch(42));
  auto ev = c->next_event(-1, std::chrono::milliseconds(2000));
  ASSERT_TRUE(ev) << ev.error().message;
  ASSERT_EQ(ev->kind, WaitOutcome::Kind::kEvent);
  EXPECT_EQ(ev->event.watch_id(), 43u) << "the other watch's event is still there";
  const int efd = ::eventfd(1, EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  auto none = c->next_event(efd, std::chrono::milliseconds(2000));
  ::close(efd);
  ASSERT_TRUE(none) << none.error().message;
  EXPECT_EQ(none->kind, WaitOutcome::Kind::kInterrupted) << "the unwatched watch's event is gone";
}

TEST(FloectlClient, BackoffDoublesFromFirstAndStopsAtMax) {
  const Backoff b{.first = std::chrono::milliseconds(50), .max = std::chrono::milliseconds(2000)};
  EXPECT_EQ(b.delay(0).count(), 50);
  EXPECT_EQ(b.delay(1).count(), 100);
  EXPECT_EQ(b.delay(5).count(), 1600);
  EXPECT_EQ(b.delay(6).count(), 2000);
  EXPECT_EQ(b.delay(1000).count(), 2000);  // no overflow however long the core stays away
  const Backoff odd{.first = std::chrono::milliseconds(0), .max = std::chrono::milliseconds(3)};
  EXPECT_EQ(odd.delay(0).count(), 1);  // never a busy loop
  EXPECT_EQ(odd.delay(9).count(), 3);
}

// A watch event carrying `count`.
bool send_count(ipc::Channel& ch, std::uint64_t watch_id, std::uint64_t count) {
  proto::ClientResponse ev;
  ev.mutable_watch_event()->set_watch_id(watch_id);
  ev.mutable_watch_event()->mutable_result()->set_action("count");
  ev.mutable_watch_event()->mutable_result()->set_count(count);
  return static_cast<bool>(ch.send(ev));
}

// Connection n (1, 2, ...) starts watch n, sends count n and, on the first connection, hangs up.
// `refuse_second`: the second connection's Watch is refused as a bad query instead.
Handler restarting_core(std::atomic<int>& connections, bool refuse_second) {
  return [&connections, refuse_second](ipc::Channel& ch, const proto::ClientRequest& req) {
    if (req.has_hello()) {
      connections.fetch_add(1);
      return welcome(ch, req);
    }
    const int n = connections.load();
    if (req.has_watch()) {
      if (n == 2 && refuse_second) return error(ch, req.id(), proto::ERROR_CODE_BAD_QUERY, "unknown component");
      proto::ClientResponse r;
      r.set_id(req.id());
      r.mutable_watch_started()->set_watch_id(static_cast<std::uint64_t>(n));
      return ch.send(r) && send_count(ch, static_cast<std::uint64_t>(n), static_cast<std::uint64_t>(n)) && n != 1;
    }
    if (req.has_unwatch()) {
      proto::ClientResponse r;
      r.set_id(req.id());
      r.mutable_ok();
      return static_cast<bool>(ch.send(r));
    }
    return false;
  };
}

TEST(FloectlClient, ResumingWatchReportsTheLossReconnectsAndWatchesAgain) {
  std::atomic<int> connections{0};
  FakeCore core(restarting_core(connections, false), 2);
  auto w = ResumingWatch::start(core.options(), "count where Light");
  ASSERT_TRUE(w) << w.error().message;
  EXPECT_EQ(w->watch_id(), 1u);
  std::vector<WaitOutcome::Kind> kinds;
  std::vector<std::uint64_t> counts;
  while (counts.size() < 2) {
    auto next = w->next_event();
    ASSERT_TRUE(next) << next.error().message;
    kinds.push_back(next->kind);
    if (next->kind == WaitOutcome::Kind::kEvent) counts.push_back(next->event.result().count());
    if (next->kind == WaitOutcome::Kind::kLost) {
      EXPECT_NE(next->reason.find("closed"), std::string::npos) << next->reason;
    }
  }
  using K = WaitOutcome::Kind;
  EXPECT_EQ(kinds, (std::vector<K>{K::kEvent, K::kLost, K::kResumed, K::kEvent}));
  EXPECT_EQ(counts, (std::vector<std::uint64_t>{1, 2}));
  EXPECT_EQ(w->resumes(), 1u);
  EXPECT_EQ(w->watch_id(), 2u);
  EXPECT_TRUE(w->stop());
}

TEST(FloectlClient, ResumingWatchEndsWhenTheCoreRefusesTheWatchOnResume) {
  std::atomic<int> connections{0};
  FakeCore core(restarting_core(connections, true), 2);
  auto w = ResumingWatch::start(core.options(), "count where Light");
  ASSERT_TRUE(w) << w.error().message;
  auto first = w->next_event();
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_EQ(first->kind, WaitOutcome::Kind::kEvent);
  auto gone = w->next_event();
  ASSERT_TRUE(gone) << gone.error().message;
  EXPECT_EQ(gone->kind, WaitOutcome::Kind::kLost);
  auto refused = w->next_event();
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().exit, ExitCode::kBadQuery);
  EXPECT_FALSE(refused.error().connection_lost);
  EXPECT_EQ(w->watch_id(), 0u);
  EXPECT_TRUE(w->stop());  // nothing to end
}

TEST(FloectlClient, ResumingWatchWaitingForAnAbsentCoreEndsOnInterrupt) {
  std::atomic<int> connections{0};
  std::optional<FakeCore> core;
  core.emplace(restarting_core(connections, false), 1);
  auto w = ResumingWatch::start(core->options(), "count where Light");
  ASSERT_TRUE(w) << w.error().message;
  for (auto want : {WaitOutcome::Kind::kEvent, WaitOutcome::Kind::kLost}) {
    auto next = w->next_event();
    ASSERT_TRUE(next && next->kind == want) << (next ? "another outcome" : next.error().message);
  }
  core.reset();  // no core at all now: every attempt fails to connect
  const int efd = ::eventfd(1, EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  auto next = w->next_event(efd);
  ::close(efd);
  ASSERT_TRUE(next) << next.error().message;
  EXPECT_EQ(next->kind, WaitOutcome::Kind::kInterrupted);
}

}  // namespace
}  // namespace floe::client
