// A hostile provider against a real floe-core. The hostile side is a child process of this test
// speaking the raw management protocol (region attacks), or this process itself on a raw channel
// (message attacks). Every case also runs an honest provider (the real virtual-lights program,
// built on the SDK) and a client (the floe client library): after each attack floe-core is still
// up, the hostile peer was disconnected where that is the right answer, with the reason in the
// core's log, the core's fd count is back to its level before the attack, and the honest devices
// still answer get and set with their state intact. Waits are bounded polls, never thresholds.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "client.hpp"
#include "floe/ipc/channel.hpp"
#include "floe/ipc/device_region.hpp"
#include "floe/ipc/doorbell.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/protocol.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/ring.hpp"
#include "floe/sdk/records.hpp"
#include "management.pb.h"
#include "support/child_process.hpp"
#include "support/integration.hpp"
#include "support/process.hpp"

#if defined(FLOE_CORE_BIN) && defined(VIRTUAL_LIGHTS_BIN)

namespace floe::test {
namespace {

using namespace std::chrono_literals;

constexpr int kCtl = 3;  // the hostile child's control socket (SOCK_SEQPACKET to the test)

// ---- small helpers on raw sockets ------------------------------------------------------------

bool readable(int fd, int timeout_ms) { return wait_readable(fd, std::chrono::milliseconds(timeout_ms)); }

bool send_text(int fd, const std::string& s) {
  return ::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
}

std::optional<std::string> recv_text(int fd, int timeout_ms = static_cast<int>(kHangGuard.count())) {
  if (!readable(fd, timeout_ms)) return std::nullopt;
  char buf[1024];
  const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  if (n <= 0) return std::nullopt;
  return std::string(buf, static_cast<std::size_t>(n));
}

proto::Envelope hello_envelope(const std::string& name) {
  proto::Envelope e;
  e.set_id(1);
  e.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
  e.mutable_hello()->set_peer_name(name);
  e.mutable_hello()->set_role(proto::PEER_ROLE_PROVIDER);
  return e;
}

// Device "evil": a light (Light, Switch, Dimmer), a text sensor and a list, so the core reads
// word columns, a text blob and a list blob out of the region the hostile provider scribbles on.
proto::Envelope evil_device(const std::string& id = "evil") {
  proto::Envelope e;
  e.set_id(2);
  auto* a = e.mutable_add_device();
  a->set_device_id(id);
  a->set_name("Evil");
  auto* light = a->add_entities();
  light->set_id(id + "_light");
  for (auto c : {ipc::Component::Light, ipc::Component::Switch, ipc::Component::Dimmer}) {
    light->add_components()->set_component(ipc::to_id(c));
  }
  auto* text = a->add_entities();
  text->set_id(id + "_text");
  text->add_components()->set_component(ipc::to_id(ipc::Component::Sensor));
  auto* t = text->add_components();
  t->set_component(ipc::to_id(ipc::Component::Text));
  t->set_max_bytes(64);
  auto* list = a->add_entities();
  list->set_id(id + "_list");
  list->add_components()->set_component(ipc::to_id(ipc::Component::TextList));
  return e;
}

// ---- the hostile provider (child role) --------------------------------------------------------

int child_fail(const std::string& what) {
  (void)send_text(kCtl, "error: " + what);
  return 1;
}

// True once the core has closed the management socket (waits up to `timeout_ms` for news).
// Anything the core sends meanwhile (answers, probes) is read and dropped.
bool core_closed(ipc::Channel& ch, int timeout_ms) {
  while (readable(ch.fd(), timeout_ms)) {
    auto p = ch.receive();
    if (!p) return p.error().code != EAGAIN;
    timeout_ms = 0;
  }
  return false;
}

// Blocks until the test closes the control socket.
int idle_until_released(int rc = 0) {
  char c;
  while (::recv(kCtl, &c, 1, 0) > 0) {
  }
  return rc;
}

struct Grant {
  ipc::Channel channel;
  ipc::Region region;
  ipc::DeviceRegionParts parts;
  ipc::Fd tx_efd;
  ipc::Fd rx_efd;
};

std::optional<Grant> connect_and_declare(const std::string& dir, std::string& error) {
  auto ch = ipc::Channel::connect(dir + "/provider.sock");
  if (!ch) return error = ch.error().to_string(), std::nullopt;
  if (!ch->send(hello_envelope("hostile")) || !ch->send(evil_device())) return error = "send", std::nullopt;
  proto::Envelope welcome;
  if (!ch->receive(welcome) || !welcome.has_welcome()) return error = "no welcome", std::nullopt;
  proto::Envelope grant;
  auto fds = ch->receive(grant);
  if (!fds || !grant.has_device_grant() || fds->size() != 3) {
    return error = "no grant: " + (fds ? grant.error().message() : fds.error().to_string()), std::nullopt;
  }
  auto region = ipc::Region::open(std::move((*fds)[0]));
  if (!region) return error = region.error().to_string(), std::nullopt;
  auto parts = ipc::device_region_attach({region->data(), region->size()});
  if (!parts) return error = parts.error().to_string(), std::nullopt;
  return Grant{std::move(*ch), std::move(*region), *parts, std::move((*fds)[1]), std::move((*fds)[2])};
}

ipc::RingHeader& ring_header(std::span<std::byte> ring) { return *reinterpret_cast<ipc::RingHeader*>(ring.data()); }

void fill_random(std::span<std::byte> bytes, std::mt19937_64& rng) {
  for (std::size_t i = 0; i + 8 <= bytes.size(); i += 8) {
    const std::uint64_t v = rng();
    std::memcpy(bytes.data() + i, &v, 8);
  }
}

std::string errno_name(int rc) { return rc == 0 ? "ok" : std::string(::strerrordesc_np(errno)); }

// Ring index attacks on the rx ring (the hostile side is its producer): each leaves the ring in a
// state no honest producer can reach. Returns false if the attack could not be set up.
bool break_rx_ring(Grant& g, const std::string& how, std::string& error) {
  auto producer = ipc::RingProducer::attach(g.parts.rx, g.rx_efd.get());
  if (!producer) return error = producer.error().to_string(), false;
  ipc::RingHeader& h = ring_header(g.parts.rx);
  const std::uint64_t cap = h.capacity;
  std::byte* data = g.parts.rx.data() + h.data_offset;
  // One honest record first, consumed by the core, so head is off zero.
  const ipc::ChangeRecord rec{0, ipc::to_id(ipc::Component::Dimmer), 0, 0};
  if (!producer->try_push(ipc::kChangeRecord, std::as_bytes(std::span(&rec, 1)))) return error = "push", false;
  const std::uint64_t tail = h.tail.load(std::memory_order_acquire);
  if (!eventually([&] { return h.head.load(std::memory_order_acquire) == tail; })) return error = "core never consumed", false;
  const std::uint64_t pos = tail & (cap - 1);
  auto header_at = [&](std::uint64_t at, std::uint32_t length, std::uint16_t type) {
    const ipc::RecordHeader r{length, type, 0};
    std::memcpy(data + (at & (cap - 1)), &r, sizeof r);
  };
  if (how == "tail_unaligned") {
    header_at(pos, 0, ipc::kChangeRecord);
    h.tail.store(tail + 3, std::memory_order_release);
  } else if (how == "tail_beyond") {
    h.tail.store(tail + cap * 4 + 64, std::memory_order_release);
  } else if (how == "tail_behind") {
    h.tail.store(tail - 16, std::memory_order_release);
  } else if (how == "length_past_end") {
    // A record claiming the whole published ring, running past the end of the data area.
    header_at(pos, static_cast<std::uint32_t>(cap - 16), ipc::kChangeRecord);
    h.tail.store(tail + cap, std::memory_order_release);
  } else if (how == "length_past_tail") {
    header_at(pos, 4096, ipc::kChangeRecord);
    h.tail.store(tail + 64, std::memory_order_release);
  } else if (how == "pad_in_the_middle") {
    header_at(pos, 24, ipc::kPadRecord);
    h.tail.store(tail + 64, std::memory_order_release);
  } else {
    return error = "unknown ring attack " + how, false;
  }
  ipc::eventfd_signal(g.rx_efd.get());
  return true;
}

// args: socket dir, attack, [variant / seed]. Reports "granted" (or "error: ...") on fd 3, then
// the attack's outcome, then waits for the test to close fd 3.
// A provider running as another uid: drops to uid args[1] (gid 0, so the 0660 socket stays
// reachable and the answer comes from the core, not from file modes), says Hello as "hostile" and
// asks the core to "declare" or "remove" device "evil". Tells the test the answer: "error CODE
// MESSAGE", "granted" or "removed".
FLOE_CHILD_ROLE(other_uid) {
  const std::string& dir = args.at(0);
  const auto uid = static_cast<uid_t>(std::stoul(args.at(1)));
  const bool declare = args.at(2) == "declare";
  if (::setgroups(0, nullptr) != 0 || ::setgid(0) != 0 || ::setuid(uid) != 0) {
    return child_fail("cannot become uid " + args.at(1));
  }
  auto ch = ipc::Channel::connect(dir + "/provider.sock");
  if (!ch) return child_fail(ch.error().to_string());
  proto::Envelope remove;
  remove.set_id(2);
  remove.mutable_remove_device()->set_device_id("evil");
  if (!ch->send(hello_envelope("hostile")) || !ch->send(declare ? evil_device() : remove)) return child_fail("send");
  proto::Envelope welcome;
  if (!ch->receive(welcome) || !welcome.has_welcome()) return child_fail("no welcome");
  proto::Envelope answer;
  if (auto fds = ch->receive(answer); !fds) return child_fail("no answer: " + fds.error().to_string());
  if (answer.has_error()) {
    (void)send_text(kCtl, "error " + proto::ErrorCode_Name(answer.error().code()) + " " + answer.error().message());
  } else {
    (void)send_text(kCtl, answer.has_device_grant() ? "granted" : answer.has_device_removed() ? "removed" : "other");
  }
  return idle_until_released();
}

// A raw provider connection that asked for doorbells and declared "evil": the channel, the
// doorbell region, the Welcome's other descriptors (1: its eventfd, 2..: the shards') and the grant.
struct BellConnection {
  ipc::Channel channel;
  ipc::Region bells;
  std::vector<ipc::Fd> eventfds;
  proto::DoorbellGrant grant;
};

std::optional<BellConnection> connect_with_bells(const std::string& dir, std::string& error) {
  auto ch = ipc::Channel::connect(dir + "/provider.sock");
  if (!ch) return error = ch.error().to_string(), std::nullopt;
  proto::Envelope hello = hello_envelope("hostile");
  hello.mutable_hello()->set_doorbells(true);
  if (!ch->send(hello)) return error = "send hello", std::nullopt;
  proto::Envelope welcome;
  auto wfds = ch->receive(welcome);
  if (!wfds || !welcome.has_welcome() || !welcome.welcome().has_doorbells() || wfds->size() < 3) {
    return error = "no welcome with doorbells", std::nullopt;
  }
  auto bells = ipc::Region::open(std::move((*wfds)[0]));
  if (!bells) return error = bells.error().to_string(), std::nullopt;
  if (!ch->send(evil_device())) return error = "send", std::nullopt;
  proto::Envelope grant;
  auto fds = ch->receive(grant);
  if (!fds || !grant.has_device_grant() || fds->size() != 1) return error = "no doorbell grant", std::nullopt;
  wfds->erase(wfds->begin());
  return BellConnection{std::move(*ch), std::move(*bells), std::move(*wfds), welcome.welcome().doorbells()};
}

// Asks for doorbells, declares "evil" and then writes random bytes over the whole doorbell region
// (headers, flags, pending bits of every slot), signalling every shard's eventfd, until the test
// says stop. Only its own consumers can be mis-woken: the doorbells are this connection's.
int scribble_bells(const std::string& dir, std::uint64_t seed) {
  std::string error;
  auto c = connect_with_bells(dir, error);
  if (!c) return child_fail(error);
  const std::span<std::byte> doorbells{c->bells.data() + ipc::kRegionPayloadOffset,
                                       c->bells.size() - ipc::kRegionPayloadOffset};
  (void)send_text(kCtl, "granted");
  std::mt19937_64 rng(seed);
  long rounds = 0;
  while (!readable(kCtl, 0)) {
    fill_random(doorbells, rng);
    for (std::size_t i = 1; i < c->eventfds.size(); ++i) ipc::eventfd_signal(c->eventfds[i].get());
    ++rounds;
    if (core_closed(c->channel, 1)) return child_fail("the core closed the connection after " + std::to_string(rounds) + " rounds");
  }
  (void)send_text(kCtl, "rounds " + std::to_string(rounds));
  return idle_until_released();
}

// Asks for doorbells, declares "evil", then tries to make the core's shards block: it clears
// O_NONBLOCK on its ends of the shards' signal pipes and keeps them full from a thread each (when
// they were eventfds, sharing one open file description with the core, that made the core's own
// writes block: a counter one short of its maximum), and keeps every pending bit of the shards'
// doorbells set, so a shard that signalled itself through that fd to come back would block for
// ever. Runs until the test says stop.
int block_shards(const std::string& dir) {
  std::string error;
  auto c = connect_with_bells(dir, error);
  if (!c) return child_fail(error);
  auto bells = ipc::doorbell_region_attach({c->bells.data(), c->bells.size()}, 1 + c->grant.shards(), c->grant.slots());
  if (!bells) return child_fail(bells.error().to_string());
  std::atomic<bool> stop{false};
  std::vector<std::thread> fillers;
  for (std::size_t i = 1; i < c->eventfds.size(); ++i) {
    const int fd = c->eventfds[i].get();
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    fillers.emplace_back([fd, &stop] {
      const std::uint64_t almost_full = 0xfffffffffffffffeULL;
      // Blocks while the pipe (or counter) is full; refills the moment the core reads it.
      while (!stop.load()) (void)!::write(fd, &almost_full, sizeof almost_full);
    });
  }
  (void)send_text(kCtl, "granted");
  while (!readable(kCtl, 0)) {
    for (std::size_t b = 1; b < bells->size(); ++b) {
      for (std::uint32_t slot = 0; slot < (*bells)[b].slots(); slot += 61) (*bells)[b].ring(slot, -1);
    }
  }
  stop = true;
  // The fillers may be blocked in write(2): end the process without joining them.
  std::_Exit(0);
}

// Declares "evil" (signals per device, no doorbells) and answers every request it is sent, but
// never reads the signals the core sends it, and tries to make the core's next signal block: it
// clears O_NONBLOCK on its end, shrinks the pipe to one page and writes a counter one short of the
// maximum into it (which, were it an eventfd shared with the core, would make the core's next
// write block for good). It raises its sleeping flag whenever its ring is empty, so that requests
// are signalled. Answers "status" with "answered N unread U of C" (U bytes left unread in a pipe of
// C bytes), and "stop" the same way, for the last time.
int ignore_signals(const std::string& dir) {
  std::string error;
  auto g = connect_and_declare(dir, error);
  if (!g) return child_fail(error);
  const int fd = g->tx_efd.get();
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  (void)::fcntl(fd, F_SETPIPE_SZ, 4096);
  const std::uint64_t almost_full = 0xfffffffffffffffeULL;
  (void)!::write(fd, &almost_full, sizeof almost_full);
  auto tx = ipc::RingConsumer::attach(g->parts.tx, fd);
  auto rx = ipc::RingProducer::attach(g->parts.rx, g->rx_efd.get());
  if (!tx || !rx) return child_fail("attach the rings");
  (void)send_text(kCtl, "granted");
  long answered = 0;
  const int capacity = ::fcntl(fd, F_GETPIPE_SZ);
  auto report = [&] {
    int unread = -1;
    (void)::ioctl(fd, FIONREAD, &unread);
    return send_text(kCtl, fmt::format("answered {} unread {} of {}", answered, unread, capacity));
  };
  for (;;) {
    if (readable(kCtl, 0)) {
      const auto command = recv_text(kCtl, 1000);
      (void)report();
      if (command != "status") break;
    }
    auto n = tx->drain([&](const ipc::RecordView& view) {
      auto req = sdk::decode_request(view.type, view.payload);
      if (!req) return;
      const auto result = sdk::encode_result(req->id, ipc::RequestStatus::kOk, {});
      while (!rx->try_push(ipc::kRequestResult, result)) std::this_thread::yield();
      ++answered;
    });
    if (!n) return child_fail(n.error().to_string());
    if (*n == 0) (void)tx->prepare_sleep();  // and never sleeps
  }
  return idle_until_released();
}

FLOE_CHILD_ROLE(hostile) {
  // Signals through pipes (as every provider does): one sent after the core closed its end must
  // fail with EPIPE, not end this process before it reports.
  ::signal(SIGPIPE, SIG_IGN);
  const std::string& dir = args.at(0);
  const std::string& attack = args.at(1);
  if (attack == "scribble_bells") return scribble_bells(dir, std::stoull(args.at(2)));
  if (attack == "block_shards") return block_shards(dir);
  if (attack == "ignore_signals") return ignore_signals(dir);
  std::string error;
  auto g = connect_and_declare(dir, error);
  if (!g) return child_fail(error);
  (void)send_text(kCtl, "granted");

  if (attack == "idle") return idle_until_released();

  if (attack == "not_utf8") {
    // Bytes that are not UTF-8 in its text and in an item of its list (well-formed writes
    // otherwise), and every request it is sent failed with a message of 1,023 ASCII bytes and
    // then a two-byte character (valid UTF-8, but the core's 1,024-byte cut falls inside it),
    // and a stray byte.
    auto tree = ipc::TreeWriter::attach(g->parts.tree);
    auto tx = ipc::RingConsumer::attach(g->parts.tx, g->tx_efd.get());
    auto rx = ipc::RingProducer::attach(g->parts.rx, g->rx_efd.get());
    if (!tree || !tx || !rx) return child_fail("attach the tree and rings");
    const std::vector<std::string> items{"fine", "bad \xc3\x28 item"};
    if (tree->set_text(1, ipc::Component::Text, "ok \xff\xfe \xc3") != ipc::TreeWriteStatus::kOk ||
        tree->set_list(2, ipc::Component::TextList, std::span<const std::string>(items)) != ipc::TreeWriteStatus::kOk) {
      return child_fail("write the text and the list");
    }
    (void)send_text(kCtl, "written");
    const std::string message = std::string(1023, 'a') + "\xc3\xa9\xff";
    while (!readable(kCtl, 0)) {
      auto n = tx->drain([&](const ipc::RecordView& view) {
        auto req = sdk::decode_request(view.type, view.payload);
        if (!req) return;
        const auto result = sdk::encode_result(req->id, ipc::RequestStatus::kFailed, message);
        while (!rx->try_push(ipc::kRequestResult, result)) std::this_thread::yield();
      });
      if (!n) return child_fail(n.error().to_string());
      if (*n == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return idle_until_released();
  }

  if (attack == "hang_up") {
    // Drops its connection but lives on, its region still mapped; tells the test the region's inode.
    struct stat st {};
    (void)::fstat(g->region.fd(), &st);
    (void)::shutdown(g->channel.fd(), SHUT_RDWR);
    (void)send_text(kCtl, "inode " + std::to_string(st.st_ino));
    return idle_until_released();
  }

  if (attack == "scribble") {
    // Random bytes over the whole region (region header, device header, tree, both rings), again
    // and again, signalling both of the core's eventfds, until the core hangs up.
    std::mt19937_64 rng(std::stoull(args.at(2)));
    std::span<std::byte> all{g->region.data(), g->region.size()};
    int rounds = 0;
    bool closed = false;
    for (const auto end = std::chrono::steady_clock::now() + kHangGuard; !closed && std::chrono::steady_clock::now() < end;) {
      fill_random(all, rng);
      ipc::eventfd_signal(g->rx_efd.get());
      ipc::eventfd_signal(g->tx_efd.get());
      ++rounds;
      closed = core_closed(g->channel, 1);
    }
    (void)send_text(kCtl, closed ? "closed after " + std::to_string(rounds) + " rounds" : "still connected");
    return idle_until_released();
  }

  if (attack == "scribble_tree") {
    // Garbage in the tree (values, presence, change sequences, blob descriptors and seqlocks)
    // announced by well-formed change records with absurd contents, and results for requests
    // that do not exist, until the test says stop. The rings themselves stay well-formed.
    std::mt19937_64 rng(std::stoull(args.at(2)));
    auto producer = ipc::RingProducer::attach(g->parts.rx, g->rx_efd.get());
    if (!producer) return child_fail(producer.error().to_string());
    long rounds = 0;
    while (!readable(kCtl, 0)) {
      fill_random(g->parts.tree, rng);
      for (int i = 0; i < 16; ++i) {
        const ipc::ChangeRecord rec{static_cast<std::uint32_t>(rng() % 8 == 0 ? rng() : rng() % 4),
                                    static_cast<std::uint16_t>(rng()), static_cast<std::uint16_t>(rng()), rng()};
        (void)producer->try_push(ipc::kChangeRecord, std::as_bytes(std::span(&rec, 1)));
      }
      std::vector<std::byte> result(sizeof(ipc::RequestResult) + rng() % 64);
      fill_random(result, rng);
      (void)producer->try_push(ipc::kRequestResult, result);
      std::vector<std::byte> odd(rng() % 200);  // wrong sizes and unknown types
      (void)producer->try_push(static_cast<std::uint16_t>(1 + rng() % 8), odd);
      ++rounds;
      if (core_closed(g->channel, 0)) return child_fail("the core closed the connection after " + std::to_string(rounds) + " rounds");
    }
    (void)send_text(kCtl, "rounds " + std::to_string(rounds));
    return idle_until_released();
  }

  if (attack == "ring") {
    if (!break_rx_ring(*g, args.at(2), error)) return child_fail(error);
    (void)send_text(kCtl, core_closed(*&g->channel, static_cast<int>(kHangGuard.count())) ? "closed" : "still connected");
    return idle_until_released();
  }

  if (attack == "tx_head") {
    // The hostile side consumes the tx ring: it claims to have consumed far more than was ever
    // published. The core, the producer, must not believe it (no write past the ring).
    ring_header(g->parts.tx).head.store(std::uint64_t{1} << 40, std::memory_order_release);
    (void)send_text(kCtl, "done");
    return idle_until_released();
  }

  if (attack == "seals") {
    // The region cannot change size or take new seals, so the core's mapping stays valid.
    const int fd = g->region.fd();
    struct stat before {};
    ::fstat(fd, &before);
    std::string out;
    out += "grow=" + errno_name(::ftruncate(fd, before.st_size * 2));
    out += " shrink=" + errno_name(::ftruncate(fd, 4096));
    out += " zero=" + errno_name(::ftruncate(fd, 0));
    out += " seal_write=" + errno_name(::fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE));
    out += " seal_future=" + errno_name(::fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE));
    const char byte = 1;
    out += " pwrite_past_end=" + errno_name(::pwrite(fd, &byte, 1, before.st_size) == 1 ? 0 : -1);
    out += " fallocate=" + errno_name(::fallocate(fd, 0, 0, before.st_size * 2));
    out += " punch_hole=" +
           errno_name(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, before.st_size));
    // Mapping past the end gives pages that fault: a grandchild touches one.
    const pid_t pid = ::fork();
    if (pid == 0) {
      const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
      void* p = ::mmap(nullptr, static_cast<std::size_t>(before.st_size) + page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) ::_exit(3);
      static_cast<volatile char*>(p)[before.st_size] = 1;
      ::_exit(0);
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
    out += std::string(" mmap_past_end=") + (WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "writable" : "faults");
    struct stat after {};
    ::fstat(fd, &after);
    out += " size=" + std::string(after.st_size == before.st_size ? "same" : "changed");
    (void)send_text(kCtl, out);
    return idle_until_released();
  }

  if (attack == "flood") {
    // As many messages as the socket takes, never reading an answer: heartbeats, availability
    // flips, requests about devices that are not ours, messages a provider must not send.
    std::vector<proto::Envelope> kinds(5);
    kinds[0].mutable_heartbeat()->set_sequence(7);
    kinds[1].mutable_device_availability()->set_device_id("evil");
    kinds[2].mutable_device_availability()->set_device_id("evil");
    kinds[2].mutable_device_availability()->set_available(true);
    kinds[3].mutable_remove_device()->set_device_id("honest-1");
    kinds[4].mutable_welcome()->set_core_name("not a core");
    // And change records on its ring, as fast as the core takes them (the ring overflows).
    auto producer = ipc::RingProducer::attach(g->parts.rx, g->rx_efd.get());
    if (!producer) return child_fail(producer.error().to_string());
    if (auto r = g->channel.set_nonblocking(true); !r) return child_fail(r.error().to_string());
    long sent = 0;
    for (std::uint64_t id = 10; !readable(kCtl, 0); ++id) {
      const ipc::ChangeRecord rec{0, ipc::to_id(ipc::Component::Dimmer), 0, id};
      (void)producer->try_push(ipc::kChangeRecord, std::as_bytes(std::span(&rec, 1)));
      auto& e = kinds[id % kinds.size()];
      e.set_id(id);
      if (auto r = g->channel.send(e); !r) {
        if (r.error().code == EAGAIN) continue;
        break;  // disconnected
      }
      ++sent;
    }
    (void)send_text(kCtl, "sent " + std::to_string(sent));
    return idle_until_released();
  }

  return child_fail("unknown attack " + attack);
}

// ---- message attacks, from this process on a raw channel ----------------------------------------

// SCM_MAX_FD: the most descriptors the kernel carries in one message.
constexpr std::size_t kKernelMaxFds = 253;

/// A provider connection that sends whatever it is told, fds included (more than Channel allows).
class RawPeer {
 public:
  explicit RawPeer(const std::string& sockets) {
    auto c = ipc::Channel::connect(sockets + "/provider.sock");
    EXPECT_TRUE(c) << c.error().to_string();
    if (c) channel_.emplace(std::move(*c));
  }
  bool hello(const std::string& name = "raw") {
    if (!send(hello_envelope(name))) return false;
    auto a = answer();
    return a && a->has_welcome();
  }
  bool send(const proto::Envelope& e) { return channel_ && channel_->send(e).has_value(); }
  /// One packet of `bytes` (may be empty) with `fds` (any number up to the kernel's).
  bool send_raw(std::string_view bytes, const std::vector<int>& fds = {}) {
    return send_packet(channel_->fd(), std::as_bytes(std::span(bytes.data(), bytes.size())), fds);
  }
  /// The next envelope from the core (nullopt on EOF or after the hang guard).
  std::optional<proto::Envelope> answer() {
    if (!channel_ || !readable(channel_->fd(), static_cast<int>(kHangGuard.count()))) return std::nullopt;
    proto::Envelope e;
    if (!channel_->receive(e)) return std::nullopt;
    return e;
  }
  /// Reads until the core closes the connection; the ErrorReply it sent before, if any.
  std::optional<proto::ErrorReply> closed_with() {
    std::optional<proto::ErrorReply> last;
    while (channel_ && readable(channel_->fd(), static_cast<int>(kHangGuard.count()))) {
      auto p = channel_->receive();
      if (!p) return p.error().code == ECONNRESET ? last : std::nullopt;
      proto::Envelope e;
      if (e.ParseFromArray(p->bytes.data(), static_cast<int>(p->bytes.size())) && e.has_error()) last = e.error();
    }
    return std::nullopt;
  }
  /// True if the core, asked for a Heartbeat echo, still answers on this connection.
  bool still_served() {
    proto::Envelope hb;
    hb.set_id(0x7fff'ffff'ffff'fff0);
    hb.mutable_heartbeat()->set_sequence(~std::uint64_t{0});
    if (!send(hb)) return false;
    for (auto a = answer(); a; a = answer()) {
      if (a->has_heartbeat() && a->id() == hb.id()) return a->heartbeat().sequence() == hb.heartbeat().sequence();
    }
    return false;
  }

 private:
  std::optional<ipc::Channel> channel_;
};

std::string bytes_of(const proto::Envelope& e) { return e.SerializeAsString(); }
bool parses(std::string_view bytes) {
  proto::Envelope e;
  return e.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

/// Descriptors of every kind a process can hold: memfds (sealed and not), eventfds, a socket
/// pair, a pipe, /dev/null, a directory. Closed on destruction.
struct FdZoo {
  FdZoo() {
    fds.push_back(::memfd_create("zoo", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    (void)::ftruncate(fds.back(), 1 << 20);
    (void)::fcntl(fds.back(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    fds.push_back(::memfd_create("zoo-open", MFD_CLOEXEC));
    fds.push_back(::eventfd(0, EFD_CLOEXEC));
    fds.push_back(::eventfd(5, EFD_CLOEXEC | EFD_SEMAPHORE));
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) fds.insert(fds.end(), {sv[0], sv[1]});
    int pp[2];
    if (::pipe2(pp, O_CLOEXEC) == 0) fds.insert(fds.end(), {pp[0], pp[1]});
    fds.push_back(::open("/dev/null", O_RDWR | O_CLOEXEC));
    fds.push_back(::open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  }
  ~FdZoo() {
    for (int fd : fds) ::close(fd);
  }
  /// `n` descriptors cycling through the zoo.
  std::vector<int> take(std::size_t n) const {
    std::vector<int> out;
    for (std::size_t i = 0; i < n; ++i) out.push_back(fds[i % fds.size()]);
    return out;
  }
  std::vector<int> fds;
};

// ---- the fixture ------------------------------------------------------------------------------

class HostileProvider : public ::testing::Test {
 protected:
  void TearDown() override {
    release_hostile();
    impatient_.reset();
    client_.reset();
    honest_.reset();
    if (core_) {
      core_->signal(SIGTERM);
      EXPECT_EQ(core_->finish(), 0) << "floe-core did not stop cleanly";
      core_.reset();
    }
    if (HasFailure()) {
      dir_.keep();
      for (const char* name : {"core.log", "honest.log"}) {
        std::string text = slurp(dir_ / name);
        if (text.size() > 12000) text = text.substr(0, 4000) + "\n...\n" + text.substr(text.size() - 8000);
        std::fprintf(stderr, "---- %s (kept in %s)\n%s\n", name, dir_.path().c_str(), text.c_str());
      }
    }
  }

  /// floe-core (logging at info), virtual-lights as provider "honest" (honest-1, honest-2 with
  /// entities light_1, light_2), a client, honest state set; then a first, idle connection of the
  /// hostile provider declares "evil" and leaves, so that the fd baseline includes its region.
  void start(const std::string& top_level_config = "", const std::string& more_tables = "") {
    // The message rate limit is low enough that even a core slowed down by a sanitizer reads a
    // flood faster than it, and high enough for every other case here.
    std::ofstream(dir_ / "core.toml") << top_level_config << "provider_timeout_ms = 600000\nworker_threads = 2\n"
                                      << "[limits]\nprovider_messages_per_second = 100\nprovider_message_burst = 1000\n"
                                      << more_tables;
    core_.emplace(FLOE_CORE_BIN,
                  std::vector<std::string>{"--socket-dir", sockets(), "--config", dir_ / "core.toml", "--log-level", "info"},
                  dir_ / "core.log");
    ASSERT_TRUE(eventually([&] { return connect_client() || !core_->alive(); }));
    ASSERT_TRUE(core_->alive()) << "floe-core exited";
    honest_.emplace(VIRTUAL_LIGHTS_BIN,
                    std::vector<std::string>{"--name", "honest", "--count", "2", "--group", "home", "--socket-dir", sockets()},
                    dir_ / "honest.log");
    ASSERT_TRUE(eventually([&] { return online("honest-1") && online("honest-2"); })) << "the honest devices";
    ASSERT_TRUE(set("light_1", "Dimmer", "0.25"));
    ASSERT_TRUE(set("light_2", "Switch", "true"));
    start_hostile({"idle"});
    ASSERT_TRUE(eventually([&] { return online("evil"); }));
    release_hostile();
    ASSERT_TRUE(eventually([&] { return !online("evil") && known("evil"); }));
    ASSERT_TRUE(eventually([&] {
      baseline_ = count_fds(core_->pid());
      std::this_thread::sleep_for(100ms);
      return count_fds(core_->pid()) == baseline_;
    }));
  }

  std::string sockets() const { return dir_ / "s"; }

  /// A second client whose requests give up after 2 s (for devices that never answer).
  client::Client& impatient() {
    if (!impatient_) {
      auto c = client::Client::connect({.socket_dir = sockets(), .timeout = 2s, .peer_name = "impatient"});
      EXPECT_TRUE(c) << c.error().message;
      impatient_.emplace(std::move(*c));
    }
    return *impatient_;
  }

  bool connect_client() {
    auto c = client::Client::connect({.socket_dir = sockets(), .timeout = 20s, .peer_name = "itest"});
    if (!c) return false;
    client_.emplace(std::move(*c));
    return true;
  }

  std::optional<proto::DeviceInfo> device(const std::string& id) {
    auto list = client_->list_devices();
    if (!list) return std::nullopt;
    for (const auto& d : list->devices()) {
      if (d.name() == id) return d;
    }
    return std::nullopt;
  }
  bool online(const std::string& id) {
    auto d = device(id);
    return d && d->online();
  }
  bool known(const std::string& id) { return device(id).has_value(); }

  bool set(const std::string& entity, const std::string& component, const std::string& value) {
    auto r = client_->set(entity, component, value);
    if (!r) ADD_FAILURE() << "set " << entity << " " << component << " = " << value << ": " << r.error().message;
    return r.has_value();
  }
  std::optional<proto::Value> get(const std::string& entity, const std::string& component) {
    auto r = client_->get(entity, component);
    if (!r) return std::nullopt;
    return r->value();
  }

  /// The honest provider's devices: still online, their state as set in start() plus whatever
  /// the test changed since, and a set/get round trip works.
  void expect_honest_intact(double dimmer = 0.25) {
    EXPECT_TRUE(online("honest-1") && online("honest-2"));
    auto d = get("light_1", "Dimmer");
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->real(), dimmer);
    auto s = get("light_2", "Switch");
    ASSERT_TRUE(s.has_value());
    EXPECT_TRUE(s->boolean());
    const double next = dimmer == 0.75 ? 0.5 : 0.75;
    EXPECT_TRUE(set("light_1", "Dimmer", std::to_string(next)));
    auto after = get("light_1", "Dimmer");
    ASSERT_TRUE(after.has_value());
    EXPECT_EQ(after->real(), next);
    EXPECT_TRUE(core_->alive());
  }

  /// The core's fds settle back to the baseline taken in start().
  void expect_no_fd_leak() {
    impatient_.reset();  // its session's fds are not part of the baseline
    std::size_t now = 0;
    EXPECT_TRUE(eventually([&] { return (now = count_fds(core_->pid())) == baseline_; }))
        << "floe-core holds " << now << " fds, " << baseline_ << " before the attack";
  }

  /// Lines of the core's log containing every one of `parts`, in order.
  std::size_t log_lines(const std::vector<std::string>& parts) {
    const std::string log = slurp(dir_ / "core.log");
    std::size_t n = 0;
    for (std::size_t at = 0; at < log.size();) {
      const std::size_t end = std::min(log.find('\n', at), log.size());
      std::size_t from = at;
      bool all = true;
      for (const auto& p : parts) {
        const std::size_t f = log.find(p, from);
        if (f == std::string::npos || f > end) {
          all = false;
          break;
        }
        from = f + p.size();
      }
      n += all ? 1 : 0;
      at = end + 1;
    }
    return n;
  }
  /// Runs `attack`, then waits for one more log line with `parts` than there was before it.
  bool logs_one_more(const std::vector<std::string>& parts, const std::function<void()>& attack) {
    const std::size_t before = log_lines(parts);
    attack();
    return eventually([&] { return log_lines(parts) > before; });
  }

  /// Starts the hostile child with `args` after the socket dir; waits for "granted".
  void start_hostile(const std::vector<std::string>& args) {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    std::vector<std::string> all = {sockets()};
    all.insert(all.end(), args.begin(), args.end());
    auto c = spawn_child("hostile", all, {sv[1]});
    ::close(sv[1]);
    ASSERT_TRUE(c) << c.error().to_string();
    hostile_.emplace(std::move(*c));
    ctl_ = sv[0];
    auto first = recv_text(ctl_);
    ASSERT_EQ(first.value_or("no answer"), "granted");
  }
  std::string hostile_says() { return recv_text(ctl_).value_or("no answer"); }
  void release_hostile() {
    if (ctl_ >= 0) ::close(ctl_);
    ctl_ = -1;
    if (hostile_) {
      EXPECT_EQ(hostile_->wait(), 0) << "the hostile child failed";
    }
    hostile_.reset();
  }

  TempDir dir_{"floe-hostile"};
  std::optional<Process> core_;
  std::optional<Process> honest_;
  std::optional<client::Client> client_;
  std::optional<client::Client> impatient_;
  std::optional<Child> hostile_;
  int ctl_ = -1;
  std::size_t baseline_ = 0;
};

TEST_F(HostileProvider, AProviderOfAnotherUidCannotTakeOverOrRemoveAnOfflineDevice) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a provider as another uid";
  // start() leaves "evil" offline, declared by this (root) process's hostile child.
  ASSERT_NO_FATAL_FAILURE(start("allowed_uids = [0, 65534]\n"));
  ASSERT_EQ(::chmod(sockets().c_str(), 0750), 0);
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  for (const char* what : {"declare", "remove"}) {
    const std::size_t before = log_lines({"uid 65534", "device 'evil' belongs to uid 0"});
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    auto child = spawn_child("other_uid", {sockets(), "65534", what}, {sv[1]});
    ::close(sv[1]);
    ASSERT_TRUE(child) << child.error().to_string();
    const std::string said = recv_text(sv[0]).value_or("no answer");
    EXPECT_EQ(said.rfind("error ERROR_CODE_CONFLICT ", 0), 0U) << what << ": " << said;
    EXPECT_NE(said.find("device 'evil' belongs to uid 0"), std::string::npos) << what << ": " << said;
    EXPECT_NE(said.find("runs as uid 65534"), std::string::npos) << what << ": " << said;
    ::close(sv[0]);
    EXPECT_EQ(child->wait(), 0) << what;
    // The refusal is in the core's log, naming the provider's uid.
    EXPECT_TRUE(eventually([&] { return log_lines({"uid 65534", "device 'evil' belongs to uid 0"}) > before; }))
        << what;
    EXPECT_TRUE(known("evil")) << what;
    EXPECT_FALSE(online("evil")) << what;
  }
  // Its own uid declares it again and is granted it.
  start_hostile({"idle"});
  EXPECT_TRUE(eventually([&] { return online("evil"); }));
  release_hostile();
  expect_honest_intact();
  expect_no_fd_leak();
}

TEST_F(HostileProvider, ScribblingOverTheWholeRegionGetsItDisconnectedWithAReason) {
  ASSERT_NO_FATAL_FAILURE(start());
  start_hostile({"scribble", "1"});
  const std::string said = hostile_says();
  EXPECT_EQ(said.rfind("closed after ", 0), 0u) << said;
  EXPECT_TRUE(eventually([&] { return !online("evil"); }));
  release_hostile();
  EXPECT_EQ(log_lines({"provider 'hostile' (", ") gone (corrupt ring of device 'evil': "}), 1u);
  // The clients' reads of the scribbled device are answered, whatever they contain.
  for (const char* c : {"Switch", "Dimmer"}) (void)get("evil_light", c);
  (void)get("evil_text", "Text");
  (void)get("evil_list", "TextList");
  EXPECT_TRUE(client_->query("avg Dimmer where Light"));
  // Declared again, the scribbled device gets a grant of a new region: the core does not hand the
  // old one, whose structure the provider may have broken, to anyone.
  {
    RawPeer again(sockets());
    ASSERT_TRUE(again.hello("hostile"));
    ASSERT_TRUE(again.send(evil_device()));
    auto a = again.answer();
    ASSERT_TRUE(a && a->has_device_grant()) << (a ? a->DebugString() : "no answer");
    EXPECT_TRUE(eventually([&] { return online("evil"); }));
  }
  EXPECT_EQ(log_lines({"device 'evil' its last provider corrupted its region: new region"}), 1u);
  expect_honest_intact();
  expect_no_fd_leak();
}

TEST_F(HostileProvider, GarbageInItsDoorbellsHurtsNobodyElse) {
  ASSERT_NO_FATAL_FAILURE(start());
  start_hostile({"scribble_bells", "7"});
  EXPECT_TRUE(eventually([&] { return online("evil"); }));
  // While the garbage flows, the honest provider's devices (on the same shards) are served.
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(set("light_1", "Dimmer", i % 2 ? "0.5" : "0.75")) << "round " << i;
    ASSERT_TRUE(set("light_2", "Switch", i % 2 ? "false" : "true")) << "round " << i;
  }
  ASSERT_TRUE(set("light_1", "Dimmer", "0.25"));
  ASSERT_TRUE(set("light_2", "Switch", "true"));
  ASSERT_TRUE(send_text(ctl_, "stop"));
  const std::string said = hostile_says();
  EXPECT_EQ(said.rfind("rounds ", 0), 0u) << said;
  EXPECT_TRUE(core_->alive());
  release_hostile();
  EXPECT_TRUE(eventually([&] { return !online("evil"); }));
  expect_honest_intact();
  // Its doorbell region and eventfds went with the connection.
  expect_no_fd_leak();
}

TEST_F(HostileProvider, ItsShardSignalsMadeBlockingAndFullNeverBlockAShard) {
  ASSERT_NO_FATAL_FAILURE(start());
  start_hostile({"block_shards"});
  // Both honest lights (one per shard) keep answering: no shard is stuck in write(2).
  for (int i = 0; i < 20; ++i) {
    for (const char* light : {"light_1", "light_2"}) {
      auto r = client_->set(light, "Dimmer", i % 2 ? "0.5" : "0.75");
      ASSERT_TRUE(r) << r.error().message;
      ASSERT_TRUE(r->results_size() == 1 && r->results(0).ok()) << light << " round " << i << ": " << r->DebugString();
    }
  }
  ASSERT_TRUE(set("light_1", "Dimmer", "0.25"));
  EXPECT_TRUE(core_->alive());
  ASSERT_TRUE(send_text(ctl_, "stop"));
  release_hostile();
  EXPECT_TRUE(eventually([&] { return !online("evil"); }));
  expect_honest_intact();
}

TEST_F(HostileProvider, SignalsItNeverReadsNeverBlockTheCore) {
  // Without doorbells: a signal per device, written by the client loop that takes the set.
  ASSERT_NO_FATAL_FAILURE(start("", "[rings]\ndoorbells = false\n"));
  start_hostile({"ignore_signals"});
  EXPECT_TRUE(eventually([&] { return online("evil"); }));
  // Sets until its pipe is full (only a request that finds its flag raised is signalled, so how
  // many that takes varies), then more: the honest light, set through the same client session
  // (so the same client loop), keeps answering in between.
  unsigned sent = 0;
  unsigned answered = 0;
  int unread = 0;
  int capacity = 0;
  const auto ask = [&](const char* command) {
    if (!send_text(ctl_, command)) return false;
    const std::string said = hostile_says();
    const bool parsed = std::sscanf(said.c_str(), "answered %u unread %d of %d", &answered, &unread, &capacity) == 3;
    EXPECT_TRUE(parsed) << said;
    return parsed;
  };
  for (int batch = 0; batch < 40 && (capacity == 0 || unread < capacity); ++batch) {
    for (int i = 0; i < 500; ++i, ++sent) {
      auto r = client_->set("evil_light", "Switch", i % 2 ? "true" : "false");
      ASSERT_TRUE(r) << "set " << sent << ": " << r.error().message;
      ASSERT_TRUE(r->results_size() == 1 && r->results(0).ok()) << "set " << sent << ": " << r->DebugString();
      if (i % 100 == 0) {
        ASSERT_TRUE(set("light_1", "Dimmer", i % 200 ? "0.5" : "0.75")) << "set " << sent;
      }
    }
    ASSERT_TRUE(ask("status"));
  }
  // The pipe filled up, so the core's later signals found it full, and went on.
  EXPECT_GT(capacity, 0);
  EXPECT_EQ(unread, capacity) << "after " << sent << " sets";
  for (int i = 0; i < 200; ++i, ++sent) {
    auto r = client_->set("evil_light", "Switch", i % 2 ? "true" : "false");
    ASSERT_TRUE(r && r->results_size() == 1 && r->results(0).ok()) << "set " << sent << " on a full pipe";
  }
  ASSERT_TRUE(set("light_1", "Dimmer", "0.25"));
  ASSERT_TRUE(ask("stop"));
  EXPECT_EQ(answered, sent);
  EXPECT_TRUE(core_->alive());
  release_hostile();
  EXPECT_TRUE(eventually([&] { return !online("evil"); }));
  expect_honest_intact();
  expect_no_fd_leak();
}

TEST_F(HostileProvider, ARegionItsLastProviderStillMapsGoesToNoOtherProvider) {
  ASSERT_NO_FATAL_FAILURE(start());
  // It declares "evil", then drops its connection and lives on, the region mapped writable.
  start_hostile({"hang_up"});
  const std::string said = hostile_says();
  ASSERT_EQ(said.rfind("inode ", 0), 0u) << said;
  const std::string first_inode = said.substr(6);
  EXPECT_TRUE(eventually([&] { return known("evil") && !online("evil"); }));
  // Another process (this one) declares it, as the same provider: a new region, not the one the
  // first can still write into.
  std::string error;
  std::optional<Grant> next;
  EXPECT_TRUE(logs_one_more({"device 'evil'", "still runs and maps its region: new region"},
                            [&] { next = connect_and_declare(sockets(), error); }));
  ASSERT_TRUE(next) << error;
  struct stat st {};
  ASSERT_EQ(::fstat(next->region.fd(), &st), 0);
  EXPECT_NE(std::to_string(st.st_ino), first_inode);
  EXPECT_TRUE(eventually([&] { return online("evil"); }));
  next.reset();
  EXPECT_TRUE(eventually([&] { return !online("evil"); }));
  release_hostile();
  // Its last holder gone (and the one before), the next declaration keeps the region and its state.
  EXPECT_TRUE(logs_one_more({"device 'evil' online", "state kept"}, [&] { next = connect_and_declare(sockets(), error); }));
  ASSERT_TRUE(next) << error;
  next.reset();
  EXPECT_TRUE(eventually([&] { return !online("evil"); }));
  expect_honest_intact();
  expect_no_fd_leak();
}

TEST_F(HostileProvider, GarbageInTheTreeWithAbsurdChangeRecordsIsSurvived) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto watch = client_->watch("avg Dimmer where Light");
  ASSERT_TRUE(watch) << watch.error().message;
  start_hostile({"scribble_tree", "42"});
  // While the garbage flows the core keeps answering about every entity, the hostile ones too.
  for (int i = 0; i < 20; ++i) {
    (void)get("evil_light", "Dimmer");
    (void)get("evil_light", "Switch");
    (void)get("evil_text", "Text");
    (void)get("evil_list", "TextList");
    EXPECT_TRUE(client_->query("count where Switch == true")) << "query " << i;
    EXPECT_TRUE(client_->query("avg Dimmer where Light")) << "query " << i;
  }
  // Nobody answers the hostile device's requests: the set times out, and only that set.
  {
    auto s = impatient().set("evil_light", "Switch", "true");
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().exit, client::ExitCode::kTimeout) << s.error().message;
  }
  ASSERT_TRUE(send_text(ctl_, "stop"));
  EXPECT_EQ(hostile_says().rfind("rounds ", 0), 0u);
  EXPECT_TRUE(online("evil")) << "the rings stayed well-formed: no reason to disconnect";
  release_hostile();
  EXPECT_TRUE(eventually([&] { return !online("evil"); }));
  expect_honest_intact();
  expect_no_fd_leak();
}

TEST_F(HostileProvider, ImpossibleRingIndicesGetItDisconnectedWithAReason) {
  ASSERT_NO_FATAL_FAILURE(start());
  // Each attack: the shard logs the corruption, the main loop disconnects the provider naming
  // the device and the reason, and the device is declared again (rings re-initialised) next time.
  for (const char* how : {"tail_unaligned", "tail_beyond", "tail_behind", "length_past_end", "length_past_tail",
                          "pad_in_the_middle"}) {
    EXPECT_TRUE(logs_one_more({"provider 'hostile' (", ") gone (corrupt ring of device 'evil': "}, [&] {
      ASSERT_NO_FATAL_FAILURE(start_hostile({"ring", how}));
      EXPECT_EQ(hostile_says(), "closed") << how;
    })) << how;
    EXPECT_TRUE(eventually([&] { return !online("evil"); })) << how;
    release_hostile();
    if (HasFailure()) break;
  }
  EXPECT_EQ(log_lines({"device ring corrupt (rx of device"}), 6u);
  expect_honest_intact();
  expect_no_fd_leak();
}

TEST_F(HostileProvider, AnImpossibleConsumerIndexOnTheRequestRingFailsItsOwnRequestsOnly) {
  ASSERT_NO_FATAL_FAILURE(start());
  start_hostile({"tx_head"});
  EXPECT_EQ(hostile_says(), "done");
  for (int i = 0; i < 3; ++i) {
    auto r = impatient().set("evil_light", "Switch", i % 2 == 0 ? "true" : "false");
    EXPECT_FALSE(r) << "a set through a ring whose head is impossible cannot succeed";
  }
  expect_honest_intact();
  release_hostile();
  expect_no_fd_leak();
}

TEST_F(HostileProvider, TheRegionCannotBeResizedOrResealed) {
  ASSERT_NO_FATAL_FAILURE(start());
  start_hostile({"seals"});
  const std::string report = hostile_says();
  const std::string perm = ::strerrordesc_np(EPERM);
  for (const char* what : {"grow", "shrink", "zero", "seal_write", "seal_future", "pwrite_past_end", "fallocate"}) {
    EXPECT_NE(report.find(std::string(what) + "=" + perm), std::string::npos) << what << " in: " << report;
  }
  EXPECT_NE(report.find("mmap_past_end=faults"), std::string::npos) << report;
  EXPECT_NE(report.find("size=same"), std::string::npos) << report;
  // The core still reads the whole region (every column, both blobs) without a fault.
  EXPECT_TRUE(get("evil_light", "Dimmer").has_value());
  EXPECT_TRUE(get("evil_text", "Text").has_value());
  EXPECT_TRUE(get("evil_list", "TextList").has_value());
  expect_honest_intact();
  release_hostile();
  expect_no_fd_leak();
}

TEST_F(HostileProvider, AFloodOfMessagesIsCutOffWithAReasonAndEveryoneElseIsServed) {
  ASSERT_NO_FATAL_FAILURE(start());
  start_hostile({"flood"});
  // The management message rate limit (limits.provider_messages_per_second) ends it.
  EXPECT_TRUE(eventually([&] {
    return log_lines({"provider 'hostile' (", ") gone (more than ", "management messages per second"}) == 1;
  }));
  // Get/set round trips of the honest provider go on through the flood.
  double last = 0.25;
  for (int i = 0; i < 20; ++i) {
    last = i % 2 == 0 ? 0.5 : 0.25;
    ASSERT_TRUE(set("light_1", "Dimmer", i % 2 == 0 ? "0.5" : "0.25")) << "round " << i;
    auto v = get("light_1", "Dimmer");
    ASSERT_TRUE(v.has_value()) << "round " << i;
    EXPECT_EQ(v->real(), last);
  }
  ASSERT_TRUE(send_text(ctl_, "stop"));
  const std::string said = hostile_says();
  EXPECT_EQ(said.rfind("sent ", 0), 0u) << said;
  release_hostile();
  EXPECT_TRUE(eventually([&] { return !online("evil"); }));
  expect_honest_intact(last);
  expect_no_fd_leak();
}

TEST_F(HostileProvider, MalformedMessagesGetAClearErrorAndFatalOnesADisconnectWithAReason) {
  ASSERT_NO_FATAL_FAILURE(start());

  // Fatal: each on its own connection, which the core closes after saying why (and logging it).
  struct Fatal {
    std::string what;
    bool hello_first;
    std::string bytes;
    std::string reason;  // in the ErrorReply (if one is sent) and in the log line
  };
  std::string garbage(300, '\0');
  std::mt19937_64 rng(7);
  do {
    for (auto& c : garbage) c = static_cast<char>(rng());
  } while (parses(garbage));
  std::string truncated = bytes_of(evil_device("cut"));
  truncated.resize(truncated.size() - 5);
  ASSERT_FALSE(parses(truncated));
  proto::Envelope add_first = evil_device("early");
  proto::Envelope nameless = hello_envelope("");
  proto::Envelope long_name = hello_envelope(std::string(1000, 'x'));
  proto::Envelope client_role = hello_envelope("raw");
  client_role.mutable_hello()->set_role(proto::PEER_ROLE_CLIENT);
  const std::vector<Fatal> fatal = {
      {"garbage before Hello", false, garbage, "packet is not a floe.proto.Envelope"},
      {"AddDevice before Hello", false, bytes_of(add_first), "the first message must be Hello"},
      {"empty peer name", false, bytes_of(nameless), "Hello.peer_name must be 1..64 bytes"},
      {"1000-byte peer name", false, bytes_of(long_name), "Hello.peer_name must be 1..64 bytes"},
      {"a newline in the peer name (a forged log line)", false, bytes_of(hello_envelope("raw\nprovider 'x' connected")),
       "without control characters (got 'raw\\x0aprovider 'x' connected')"},
      {"client role on the provider socket", false, bytes_of(client_role), "this is the provider socket"},
      {"garbage after Hello", true, garbage, "packet is not a floe.proto.Envelope"},
      {"truncated AddDevice", true, truncated, "packet is not a floe.proto.Envelope"},
  };
  for (const auto& f : fatal) {
    const std::vector<std::string> line = f.hello_first ? std::vector<std::string>{"provider 'raw' (", ") gone (", f.reason}
                                                        : std::vector<std::string>{"provider connection (", ") closed before Hello: ", f.reason};
    EXPECT_TRUE(logs_one_more(line, [&] {
      RawPeer p(sockets());
      if (f.hello_first) {
        ASSERT_TRUE(p.hello()) << f.what;
      }
      ASSERT_TRUE(p.send_raw(f.bytes)) << f.what;
      auto err = p.closed_with();
      ASSERT_TRUE(err.has_value()) << f.what << ": no ErrorReply before the core hung up";
      EXPECT_EQ(err->code(), proto::ERROR_CODE_MALFORMED) << f.what;
      EXPECT_TRUE(err->fatal()) << f.what;
      EXPECT_NE(err->message().find(f.reason), std::string::npos) << f.what << ": " << err->message();
    })) << f.what;
  }
  // Packets the channel itself refuses: an empty one (indistinguishable from a hang-up) and one
  // beyond the packet limit. The core closes those sessions too, and logs why.
  {
    RawPeer p(sockets());
    ASSERT_TRUE(p.hello("raw-empty"));
    ASSERT_TRUE(p.send_raw(""));
    EXPECT_FALSE(p.closed_with().has_value());
    EXPECT_TRUE(eventually([&] { return log_lines({"provider 'raw-empty' (", ") gone ("}) == 1; }));
  }
  {
    RawPeer p(sockets());
    ASSERT_TRUE(p.hello("raw-big"));
    ASSERT_TRUE(p.send_raw(std::string(ipc::kMaxPacketBytes + 4096, '\x08')));
    EXPECT_FALSE(p.closed_with().has_value());
    EXPECT_TRUE(eventually([&] { return log_lines({"provider 'raw-big' (", ") gone (", "packet truncated"}) == 1; }));
  }

  // Not fatal: an ErrorReply naming the problem, and the session goes on.
  std::optional<RawPeer> peer(std::in_place, sockets());
  RawPeer& p = *peer;
  ASSERT_TRUE(p.hello());
  auto expect_refused = [&](proto::Envelope e, proto::ErrorCode code, const std::string& reason) {
    e.set_id(4242);
    EXPECT_TRUE(logs_one_more({"provider 'raw' (", "): ", reason}, [&] {
      ASSERT_TRUE(p.send(e)) << reason;
      auto a = p.answer();
      ASSERT_TRUE(a && a->has_error()) << reason << ": " << (a ? a->DebugString() : "no answer");
      EXPECT_EQ(a->id(), 4242u);
      EXPECT_EQ(a->error().code(), code) << a->error().message();
      EXPECT_FALSE(a->error().fatal());
      EXPECT_NE(a->error().message().find(reason), std::string::npos) << a->error().message();
    })) << reason;
  };
  proto::Envelope e;
  e.mutable_welcome()->set_core_name("me");
  expect_refused(e, proto::ERROR_CODE_MALFORMED, "unexpected message on the provider socket");
  expect_refused(hello_envelope("again"), proto::ERROR_CODE_MALFORMED, "unexpected message on the provider socket");
  e.Clear();
  e.mutable_device_grant()->set_device_id("evil");
  expect_refused(e, proto::ERROR_CODE_MALFORMED, "unexpected message on the provider socket");
  // A field of the right number with the wrong wire type: whatever protobuf makes of it, the
  // core answers and goes on.
  {
    const std::string wrong_type("\x30\x01", 2);  // field 6 (add_device, a message) as a varint
    ASSERT_TRUE(p.send_raw(wrong_type));
    if (parses(wrong_type)) {
      auto a = p.answer();
      ASSERT_TRUE(a && a->has_error());
      EXPECT_EQ(a->error().code(), proto::ERROR_CODE_MALFORMED);
    }
  }
  ASSERT_TRUE(p.still_served()) << "a connection the core answered must still be served";

  // Another provider's device, its entity ids, its requests.
  expect_refused(evil_device("honest-1"), proto::ERROR_CODE_CONFLICT, "belongs to connected provider 'honest'");
  e.Clear();
  e.mutable_remove_device()->set_device_id("honest-1");
  expect_refused(e, proto::ERROR_CODE_NOT_FOUND, "device 'honest-1' is not declared by provider 'raw'");
  e.Clear();
  e.mutable_device_availability()->set_device_id("honest-2");
  expect_refused(e, proto::ERROR_CODE_NOT_FOUND, "device 'honest-2' is not declared on this connection");
  e.Clear();
  e.mutable_device_availability()->set_device_id("no-such-device");
  e.mutable_device_availability()->set_available(true);
  expect_refused(e, proto::ERROR_CODE_NOT_FOUND, "device 'no-such-device' is not declared on this connection");
  {
    proto::Envelope thief = evil_device("thief");
    thief.mutable_add_device()->mutable_entities(0)->set_id("light_1");
    thief.set_id(4243);
    ASSERT_TRUE(p.send(thief));
    auto a = p.answer();
    ASSERT_TRUE(a && a->has_error()) << "an entity id another device has: " << (a ? a->DebugString() : "no answer");
    EXPECT_NE(a->error().message().find("light_1"), std::string::npos) << a->error().message();
  }

  // Absurd values.
  proto::Envelope absurd = evil_device("absurd");
  absurd.mutable_add_device()->mutable_entities(0)->mutable_components(0)->set_component(0xFFFF'FFFF);
  expect_refused(absurd, proto::ERROR_CODE_MALFORMED, "unknown component id 4294967295");
  absurd = evil_device("absurd");
  absurd.mutable_add_device()->mutable_entities(1)->mutable_components(1)->set_max_bytes(0xFFFF'FFFF);
  expect_refused(absurd, proto::ERROR_CODE_MALFORMED, "4294967295");
  absurd = evil_device(std::string(300, 'a'));
  expect_refused(absurd, proto::ERROR_CODE_MALFORMED, "must be 1..64 characters");
  {
    // What a provider sent is quoted bounded and escaped, in the answer and in the log line.
    absurd = evil_device(std::string(10'000, 'a') + "\n");
    absurd.set_id(4250);
    ASSERT_TRUE(p.send(absurd));
    auto a = p.answer();
    ASSERT_TRUE(a && a->has_error()) << (a ? a->DebugString() : "no answer");
    EXPECT_NE(a->error().message().find("'" + std::string(64, 'a') + "...(10001 bytes)'"), std::string::npos)
        << a->error().message().substr(0, 300);
    EXPECT_LT(a->error().message().size(), 300u);
    e.Clear();
    e.mutable_remove_device()->set_device_id("gone\x1b[2J");
    expect_refused(e, proto::ERROR_CODE_NOT_FOUND, "device 'gone\\x1b[2J' is not declared by provider 'raw'");
  }
  absurd = evil_device("absurd");
  absurd.mutable_add_device()->clear_entities();
  expect_refused(absurd, proto::ERROR_CODE_MALFORMED, "declares no entities");
  absurd = evil_device("absurd");
  absurd.mutable_add_device()->mutable_entities(2)->set_id("absurd_light");
  {
    absurd.set_id(4244);
    ASSERT_TRUE(p.send(absurd));
    auto a = p.answer();
    ASSERT_TRUE(a && a->has_error()) << "duplicate entity ids: " << (a ? a->DebugString() : "no answer");
  }
  {
    // As many entities as one packet holds: granted or refused, but answered; a grant is given back.
    proto::Envelope many;
    many.set_id(4245);
    auto* a = many.mutable_add_device();
    a->set_device_id("crowd");
    for (int i = 0; many.ByteSizeLong() < ipc::kMaxPacketBytes - 64; ++i) {
      auto* ent = a->add_entities();
      ent->set_id("c" + std::to_string(i));
      ent->add_components()->set_component(ipc::to_id(ipc::Component::Switch));
    }
    ASSERT_TRUE(p.send(many));
    auto ans = p.answer();
    ASSERT_TRUE(ans && (ans->has_device_grant() || ans->has_error())) << (ans ? ans->DebugString() : "no answer");
    if (ans->has_device_grant()) {
      proto::Envelope rm;
      rm.set_id(4246);
      rm.mutable_remove_device()->set_device_id("crowd");
      ASSERT_TRUE(p.send(rm));
      auto gone = p.answer();
      EXPECT_TRUE(gone && gone->has_device_removed());
    }
  }
  EXPECT_TRUE(p.still_served());
  peer.reset();
  expect_honest_intact();
  expect_no_fd_leak();
}

TEST_F(HostileProvider, StringsThatAreNotUtf8AreAnsweredAndNotLoggedPerPacket) {
  ASSERT_NO_FATAL_FAILURE(start());
  // protobuf refuses a string field that is not UTF-8 and by default writes a line to stderr for
  // each one, so peers could fill the core's log with them. The core reports each such packet
  // itself (the provider's disconnect reason, the client's MALFORMED answer) and routes protobuf's
  // own lines to debug.
  const auto not_utf8 = [](std::string bytes) {
    bytes.replace(bytes.find("QQQQ"), 4, "\xff\xfe\xfd\xfc");
    return bytes;
  };
  const std::string bad_provider_packet = not_utf8(bytes_of(evil_device("QQQQ")));
  ASSERT_FALSE(parses(bad_provider_packet)) << "the test needs bytes protobuf refuses";
  proto::ClientRequest get;
  get.mutable_get()->set_entity("QQQQ");
  get.mutable_get()->set_component("Dimmer");
  const std::string bad_client_packet = not_utf8(get.SerializeAsString());

  for (int i = 0; i < 5; ++i) {
    RawPeer p(sockets());
    ASSERT_TRUE(p.hello("raw-utf8"));
    ASSERT_TRUE(p.send_raw(bad_provider_packet));
    auto err = p.closed_with();
    ASSERT_TRUE(err.has_value()) << "no ErrorReply before the core hung up";
    EXPECT_EQ(err->code(), proto::ERROR_CODE_MALFORMED);
  }
  auto ch = ipc::Channel::connect(sockets() + "/client.sock");
  ASSERT_TRUE(ch) << ch.error().to_string();
  const auto call = [&](std::string_view bytes) -> std::optional<proto::ClientResponse> {
    if (!ch->send(std::as_bytes(std::span(bytes.data(), bytes.size())))) return std::nullopt;
    if (!readable(ch->fd(), static_cast<int>(kHangGuard.count()))) return std::nullopt;
    proto::ClientResponse r;
    if (!ch->receive(r)) return std::nullopt;
    return r;
  };
  proto::ClientRequest hello;
  hello.set_id(1);
  hello.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
  hello.mutable_hello()->set_role(proto::PEER_ROLE_CLIENT);
  auto welcome = call(hello.SerializeAsString());
  ASSERT_TRUE(welcome && !welcome->has_error()) << (welcome ? welcome->DebugString() : "no answer");
  for (int i = 0; i < 5; ++i) {
    auto r = call(bad_client_packet);
    ASSERT_TRUE(r && r->has_error()) << "packet " << i << ": " << (r ? r->DebugString() : "no answer");
    EXPECT_EQ(r->error().code(), proto::ERROR_CODE_MALFORMED);
  }
  EXPECT_TRUE(eventually([&] { return log_lines({"provider 'raw-utf8' (", ") gone (", "not a floe.proto.Envelope"}) == 5; }))
      << "the core's own report of each bad provider packet";
  EXPECT_EQ(slurp(dir_ / "core.log").find("UTF-8"), std::string::npos) << "protobuf's line, once per packet";
  expect_honest_intact();
}

TEST_F(HostileProvider, TextsAndMessagesThatAreNotUtf8ReachClientsReadable) {
  ASSERT_NO_FATAL_FAILURE(start());
  start_hostile({"not_utf8"});
  ASSERT_EQ(hostile_says(), "written");
  // Client answers are protobuf, whose parser refuses a string that is not UTF-8: the core sends
  // what it read from the tree with every bad byte as U+FFFD, never the raw bytes.
  auto text = get("evil_text", "Text");
  ASSERT_TRUE(text.has_value()) << "the answer could not be read";
  EXPECT_EQ(text->text(), "ok \xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd");
  auto list = get("evil_list", "TextList");
  ASSERT_TRUE(list.has_value()) << "the answer could not be read";
  ASSERT_EQ(list->list().items_size(), 2);
  EXPECT_EQ(list->list().items(0), "fine");
  EXPECT_EQ(list->list().items(1), "bad \xef\xbf\xbd( item");
  auto q = client_->query("list Text");
  ASSERT_TRUE(q) << q.error().message;
  auto watch = client_->watch("list TextList");
  ASSERT_TRUE(watch) << watch.error().message;
  auto event = client_->next_event(-1, std::chrono::duration_cast<std::chrono::milliseconds>(kHangGuard));
  ASSERT_TRUE(event) << event.error().message;
  EXPECT_TRUE(event->event.error().empty()) << event->event.error();
  EXPECT_TRUE(event->event.has_result());
  // Its failure message is cut at 1,024 bytes, at a character: the two-byte one does not fit.
  auto s = client_->set("evil_light", "Switch", "true");
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find(std::string(1023, 'a')), std::string::npos) << s.error().message;
  EXPECT_EQ(s.error().message.find("\xc3"), std::string::npos) << "half a character";
  release_hostile();
  expect_honest_intact();
}

TEST_F(HostileProvider, HugeDescriptorPayloadsAreClosedAndTheSenderDisconnected) {
  ASSERT_NO_FATAL_FAILURE(start());
  const FdZoo zoo;
  proto::Envelope hb;
  hb.set_id(9);
  hb.mutable_heartbeat()->set_sequence(1);
  struct Case {
    std::string what;
    bool hello_first;
    std::string bytes;
    std::size_t fds;
    std::string reason;  // in the log line
  };
  const std::vector<Case> cases = {
      {"the kernel's maximum with a valid message", true, bytes_of(hb), kKernelMaxFds, "control data truncated"},
      {"the kernel's maximum with garbage", true, std::string(64, '\xff'), kKernelMaxFds, "control data truncated"},
      {"the kernel's maximum and no bytes", true, "", kKernelMaxFds, "control data truncated"},
      {"the kernel's maximum before Hello", false, bytes_of(hello_envelope("raw")), kKernelMaxFds, "control data truncated"},
      {"the channel's maximum with a valid message", true, bytes_of(hb), ipc::kMaxPacketFds,
       "providers do not send file descriptors"},
      {"the channel's maximum with garbage", true, std::string("\x0a\x7f\x01", 3), ipc::kMaxPacketFds,
       "packet is not a floe.proto.Envelope"},
      {"the channel's maximum and no bytes", true, "", ipc::kMaxPacketFds, "providers do not send file descriptors"},
      {"one fd with Hello", false, bytes_of(hello_envelope("raw")), 1, "providers do not send file descriptors"},
  };
  for (const auto& c : cases) {
    const std::vector<std::string> line = c.hello_first ? std::vector<std::string>{"provider 'raw' (", ") gone (", c.reason}
                                                        : std::vector<std::string>{"provider connection (", ") closed before Hello: ", c.reason};
    EXPECT_TRUE(logs_one_more(line, [&] {
      RawPeer p(sockets());
      if (c.hello_first) {
        ASSERT_TRUE(p.hello()) << c.what;
      }
      ASSERT_TRUE(p.send_raw(c.bytes, zoo.take(c.fds))) << c.what << ": " << std::strerror(errno);
      (void)p.closed_with();
    })) << c.what;
    // Every descriptor that reached the core was closed with the session.
    expect_no_fd_leak();
    if (HasFailure()) break;
  }
  expect_honest_intact();
}

}  // namespace
}  // namespace floe::test

#endif
