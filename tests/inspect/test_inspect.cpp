// floe_inspect against regions built with the real ipc code in real memfds, healthy and corrupted
// in specific ways: each corruption must give its precise diagnosis, and nothing may crash (the
// -asan build runs this file under AddressSanitizer). The floe-inspect program is run on the same
// regions to check its exit codes and output.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "floe/ipc/device_region.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/ring.hpp"
#include "floe/ipc/tree.hpp"
#include "inspect.hpp"

extern char** environ;

namespace floe::inspect {
namespace {

using ipc::Component;
using nlohmann::json;

// Entity 0 a light, entity 1 a sensor with text and list.
ipc::TreeSchema sample_schema() {
  ipc::TreeSchema schema;
  schema.entities.push_back({{{Component::Light}, {Component::Switch}, {Component::Dimmer}, {Component::Color}}});
  schema.entities.push_back({{{Component::Sensor}, {Component::Real}, {Component::Text}, {Component::TextList}}});
  return schema;
}

// A device region as floe-core makes it.
struct TestDevice {
  ipc::Region region;
  ipc::DeviceRegionLayout layout;

  static TestDevice make(const std::string& name = "floe-dev-test", const ipc::TreeSchema& schema = sample_schema()) {
    auto layout = ipc::DeviceRegionLayout::compute(
        schema, {.tx_capacity = 1024, .rx_capacity = 1024, .notify = ipc::NotifyMode::kPoll});
    EXPECT_TRUE(layout) << layout.error().to_string();
    auto region = ipc::Region::create({.name = name, .size = layout->region_size, .kind = ipc::RegionKind::kDevice});
    EXPECT_TRUE(region) << region.error().to_string();
    auto init = ipc::device_region_init({region->data(), region->size()}, *layout);
    EXPECT_TRUE(init) << init.error().to_string();
    return TestDevice{std::move(*region), std::move(*layout)};
  }
  ipc::DeviceRegionParts parts() {
    auto p = ipc::device_region_attach({region.data(), region.size()});
    EXPECT_TRUE(p);
    return *p;
  }
  std::string path() const { return "/proc/self/fd/" + std::to_string(region.fd()); }
  std::byte* ring_data(std::span<std::byte> ring) { return ring.data() + sizeof(ipc::RingHeader); }
  ipc::RingHeader& ring_header(std::span<std::byte> ring) { return *reinterpret_cast<ipc::RingHeader*>(ring.data()); }

  void fill() {
    auto w = ipc::TreeWriter::attach(parts().tree);
    ASSERT_TRUE(w);
    ASSERT_EQ(w->set(0, Component::Switch, true), ipc::TreeWriteStatus::kOk);
    ASSERT_EQ(w->set(0, Component::Dimmer, 0.5), ipc::TreeWriteStatus::kOk);
    ASSERT_EQ(w->set(0, Component::Color, ipc::Rgb{255, 128, 0}), ipc::TreeWriteStatus::kOk);
    ASSERT_EQ(w->set(1, Component::Real, 21.5), ipc::TreeWriteStatus::kOk);
    ASSERT_EQ(w->set_text(1, Component::Text, "warm"), ipc::TreeWriteStatus::kOk);
    const std::vector<std::string> items{"a", "bc"};
    ASSERT_EQ(w->set_list(1, Component::TextList, items), ipc::TreeWriteStatus::kOk);
  }
  // Pushes `n` 16-byte records into the ring.
  void push(std::span<std::byte> ring, int n) {
    auto p = ipc::RingProducer::attach(ring);
    ASSERT_TRUE(p) << p.error().to_string();
    const std::byte payload[16]{};
    for (int i = 0; i < n; ++i) ASSERT_TRUE(p->try_push(ipc::kChangeRecord, payload));
  }
};

RegionReport inspect(const std::string& path, DecodeOptions o = {}) {
  auto r = OpenedRegion::open(path);
  EXPECT_TRUE(r) << r.error().to_string();
  if (!r) return {};
  RegionReport rep = r->decode(o);
  // Every output path must cope with whatever was decoded.
  (void)format_region(rep, true, true);
  (void)to_json(rep).dump(-1, ' ', false, json::error_handler_t::replace);
  return rep;
}

std::string first_violation(const RegionReport& r) {
  return r.violations.empty() ? std::string("(none)") : r.violations.front().where + ": " + r.violations.front().what;
}

const ComponentReport* find(const RegionReport& r, std::uint32_t e, std::string_view name) {
  if (e >= r.tree.entities.size()) return nullptr;
  for (const auto& c : r.tree.entities[e].components) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

TEST(Inspect, HealthyRegionDecodesEveryPart) {
  TestDevice d = TestDevice::make();
  d.fill();
  auto parts = d.parts();
  d.push(parts.tx, 3);
  d.push(parts.rx, 2);
  auto c = ipc::RingConsumer::attach(parts.rx);
  ASSERT_TRUE(c);
  ASSERT_EQ(*c->drain([](const ipc::RecordView&) {}, 1), 1u);

  const RegionReport r = inspect(d.path());
  EXPECT_TRUE(r.violations.empty()) << first_violation(r);
  EXPECT_EQ(r.memfd_name, "floe-dev-test");
  EXPECT_EQ(r.device, "test");
  EXPECT_EQ(r.file_size, d.region.size());
  EXPECT_EQ(r.seals & ipc::kRegionSeals, ipc::kRegionSeals);
  EXPECT_FALSE(r.snapshot);
  EXPECT_EQ(r.kind, static_cast<std::uint32_t>(ipc::RegionKind::kDevice));
  EXPECT_EQ(r.creator_pid, static_cast<std::uint32_t>(::getpid()));

  ASSERT_EQ(r.rings.size(), 2u);
  const RingReport& tx = r.rings[0];
  const RingReport& rx = r.rings[1];
  EXPECT_EQ(tx.name, "tx");
  EXPECT_EQ(tx.capacity, 1024u);
  EXPECT_EQ(tx.head, 0u);
  EXPECT_EQ(tx.tail, 3 * ipc::record_bytes(16));
  EXPECT_EQ(tx.occupancy, tx.tail);
  EXPECT_EQ(tx.records_pushed, 3u);
  EXPECT_EQ(tx.pending_records, 3u);
  EXPECT_EQ(tx.walk, "ok");
  EXPECT_EQ(rx.head, ipc::record_bytes(16));
  EXPECT_EQ(rx.records_popped, 1u);
  EXPECT_EQ(rx.pending_records, 1u);
  EXPECT_FALSE(rx.overflow);

  ASSERT_TRUE(r.tree.readable);
  EXPECT_EQ(r.tree.entity_count, 2u);
  EXPECT_EQ(r.tree.entities[0].change_seq, 3u);
  EXPECT_EQ(r.tree.entities[1].change_seq, 3u);
  EXPECT_EQ(r.tree.change_total, 6u);
  EXPECT_TRUE(r.tree.odd_slots.empty());
  ASSERT_NE(find(r, 0, "Switch"), nullptr);
  EXPECT_EQ(find(r, 0, "Switch")->value, true);
  EXPECT_EQ(find(r, 0, "Dimmer")->value, 0.5);
  EXPECT_EQ(find(r, 0, "Color")->text, "#ff8000");
  EXPECT_EQ(find(r, 0, "Light")->text, "present");
  EXPECT_EQ(find(r, 1, "Text")->value, "warm");
  EXPECT_EQ(find(r, 1, "Text")->blob_seq, 2u);
  EXPECT_EQ(find(r, 1, "TextList")->value, json::array({"a", "bc"}));
}

TEST(Inspect, RegionIsMappedReadOnly) {
  TestDevice d = TestDevice::make();
  auto r = OpenedRegion::open(d.path());
  ASSERT_TRUE(r);
  ASSERT_FALSE(r->snapshot());
  // The mapping's permissions in /proc/self/maps: readable, shared, never writable.
  std::ifstream maps("/proc/self/maps");
  const auto at = reinterpret_cast<std::uintptr_t>(r->bytes().data());
  bool found = false;
  for (std::string line; std::getline(maps, line);) {
    std::uintptr_t lo = 0, hi = 0;
    char perms[5]{};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &lo, &hi, perms) == 3 && lo == at) {
      found = true;
      EXPECT_STREQ(perms, "r--s") << line;
    }
  }
  EXPECT_TRUE(found);
}

TEST(Inspect, BadRegionMagicIsDiagnosed) {
  TestDevice d = TestDevice::make();
  d.region.header_mut().magic = 0x1122334455667788ULL;
  const RegionReport r = inspect(d.path());
  ASSERT_FALSE(r.violations.empty());
  EXPECT_EQ(first_violation(r),
            "region header: bad magic 0x1122334455667788 (expected 0x314745524f4c4546, \"FLOEREG1\")");
  EXPECT_TRUE(r.rings.empty());
}

TEST(Inspect, BadLayoutVersionIsDiagnosed) {
  TestDevice d = TestDevice::make();
  d.region.header_mut().layout_version = 99;
  EXPECT_EQ(first_violation(inspect(d.path())), "region header: layout version 99 (this build reads 1)");
}

TEST(Inspect, RingIndexPastTheEndIsDiagnosed) {
  TestDevice d = TestDevice::make();
  auto parts = d.parts();
  d.ring_header(parts.rx).tail.store(1024 + 64, std::memory_order_relaxed);
  const RegionReport r = inspect(d.path());
  EXPECT_EQ(first_violation(r), "rx ring: tail 1088 is 1088 bytes past head 0, more than the capacity 1024");
  d.ring_header(parts.rx).tail.store(0, std::memory_order_relaxed);
  d.ring_header(parts.rx).head.store(16, std::memory_order_relaxed);
  EXPECT_EQ(first_violation(inspect(d.path())), "rx ring: head 16 is past tail 0");
  d.ring_header(parts.rx).head.store(3, std::memory_order_relaxed);
  EXPECT_EQ(first_violation(inspect(d.path())), "rx ring: head 3 or tail 0 is not 8-byte aligned");
}

TEST(Inspect, RecordLengthOverflowIsDiagnosed) {
  TestDevice d = TestDevice::make();
  auto parts = d.parts();
  d.push(parts.tx, 2);
  // The second record claims 4 GiB - 8 bytes of payload.
  ipc::detail::write_record_header(d.ring_data(parts.tx) + ipc::record_bytes(16), 0xFFFFFFF8u, ipc::kSetRequest, 0);
  const RegionReport r = inspect(d.path());
  EXPECT_EQ(first_violation(r),
            "tx ring: record length 4294967288 at offset 24 runs past the tail (24 bytes published from there)");
  EXPECT_EQ(r.rings[0].walk, r.violations.front().what);
}

TEST(Inspect, BadPadRecordIsDiagnosed) {
  TestDevice d = TestDevice::make();
  auto parts = d.parts();
  d.push(parts.tx, 1);
  ipc::detail::write_record_header(d.ring_data(parts.tx), 8, ipc::kPadRecord, 0);
  EXPECT_EQ(first_violation(inspect(d.path())),
            "tx ring: pad record length 8 at offset 0 does not reach the end of the data area (expected 1016)");
}

TEST(Inspect, BadRingMagicIsDiagnosed) {
  TestDevice d = TestDevice::make();
  auto parts = d.parts();
  d.ring_header(parts.tx).magic = 0;
  const RegionReport r = inspect(d.path());
  EXPECT_EQ(first_violation(r), "tx ring: bad magic 0x00000000 (expected 0x474e4952, \"RING\")");
  ASSERT_EQ(r.rings.size(), 2u);
  EXPECT_FALSE(r.rings[0].readable);
  EXPECT_TRUE(r.rings[1].readable);  // one bad part does not hide the others
  EXPECT_TRUE(r.tree.readable);
}

TEST(Inspect, DevicePartOutsideTheRegionIsDiagnosed) {
  TestDevice d = TestDevice::make();
  ipc::DeviceHeader h;
  std::memcpy(&h, d.region.data() + ipc::kRegionPayloadOffset, sizeof h);
  h.rx_offset = d.region.size();  // past the end
  std::memcpy(d.region.data() + ipc::kRegionPayloadOffset, &h, sizeof h);
  const std::string v = first_violation(inspect(d.path()));
  EXPECT_TRUE(v.starts_with("device header: a part lies outside the")) << v;
}

TEST(Inspect, CorruptTreeHeaderIsDiagnosed) {
  TestDevice d = TestDevice::make();
  auto parts = d.parts();
  auto* th = reinterpret_cast<ipc::TreeHeader*>(parts.tree.data());
  th->entity_count = 1'000'000;
  const RegionReport r = inspect(d.path());
  ASSERT_FALSE(r.violations.empty());
  EXPECT_EQ(r.violations.front().where, "tree");
  EXPECT_FALSE(r.tree.readable);
  EXPECT_EQ(r.rings.size(), 2u);
}

TEST(Inspect, SeqlockOddForeverIsFlaggedAndStuckUnderValidate) {
  TestDevice d = TestDevice::make();
  d.fill();
  auto parts = d.parts();
  auto index = ipc::detail::index_tree(parts.tree.data(), parts.tree.size(), "test");
  ASSERT_TRUE(index);
  const auto* col = index->find(1, Component::Text);
  ASSERT_NE(col, nullptr);
  const auto* blob = index->blob(*col, 1);
  ASSERT_NE(blob, nullptr);
  const_cast<ipc::TreeBlob*>(blob->desc)->lock.write_begin();  // a writer that died mid-write

  // The report flags the slot and does not hang on it.
  const RegionReport r = inspect(d.path(), {.seqlock_attempts = 100});
  EXPECT_TRUE(r.violations.empty()) << first_violation(r);
  ASSERT_EQ(r.tree.odd_slots.size(), 1u);
  EXPECT_EQ(r.tree.odd_slots[0], "entity 1 Text (seq 3)");
  const auto* text = find(r, 1, "Text");
  ASSERT_NE(text, nullptr);
  EXPECT_TRUE(text->odd);
  EXPECT_FALSE(text->ok);

  // Validate waits (bounded) and calls it stuck.
  const RegionReport v =
      inspect(d.path(), {.seqlock_attempts = 100, .seqlock_wait = std::chrono::milliseconds(20), .wait_for_odd = true});
  EXPECT_EQ(first_violation(v),
            "tree: entity 1 Text: seqlock sequence 3 stayed odd for 20 ms (writer stuck or dead mid-write)");
}

// A provider can leave thousands of blobs odd: --validate waits once for all of them (one violation
// names the first and counts the others), and not at all once another violation is found.
TEST(Inspect, ManyOddSeqlocksShareOneWaitAndOneViolation) {
  ipc::TreeSchema schema;
  for (int i = 0; i < 100; ++i) schema.entities.push_back({{{Component::Sensor}, {Component::Text}}});
  TestDevice d = TestDevice::make("floe-dev-odd", schema);
  auto parts = d.parts();
  auto index = ipc::detail::index_tree(parts.tree.data(), parts.tree.size(), "test");
  ASSERT_TRUE(index);
  for (std::uint32_t e = 0; e < 100; ++e) {
    const auto* col = index->find(e, Component::Text);
    ASSERT_NE(col, nullptr);
    const auto* blob = index->blob(*col, e);
    ASSERT_NE(blob, nullptr);
    const_cast<ipc::TreeBlob*>(blob->desc)->lock.write_begin();
  }
  const DecodeOptions validate{.seqlock_attempts = 10, .seqlock_wait = std::chrono::milliseconds(20), .wait_for_odd = true};
  const RegionReport v = inspect(d.path(), validate);
  EXPECT_EQ(v.tree.odd_slots.size(), 100u);
  ASSERT_EQ(v.violations.size(), 1u) << first_violation(v);
  EXPECT_EQ(first_violation(v), "tree: entity 0 Text: seqlock sequence 1 stayed odd for 20 ms (writer stuck or dead "
                                "mid-write); 99 other blobs too");

  d.ring_header(parts.rx).tail.store(1024 + 64, std::memory_order_relaxed);
  const RegionReport bad = inspect(d.path(), validate);
  ASSERT_EQ(bad.violations.size(), 1u) << bad.violations.back().what;
  EXPECT_EQ(bad.violations.front().where, "rx ring");
  EXPECT_EQ(bad.tree.odd_slots.size(), 100u);  // still listed, not waited on
}

// A provider (an ESPHome device on the LAN) writes texts and lists and chooses its command line: in
// the report for people no control character of theirs reaches the terminal; JSON keeps the value.
TEST(Inspect, HumanOutputEscapesTerminalControls) {
  const std::string hostile = "\x1b]0;PWNED\x07\x1b[2J";
  TestDevice d = TestDevice::make();
  auto w = ipc::TreeWriter::attach(d.parts().tree);
  ASSERT_TRUE(w);
  ASSERT_EQ(w->set_text(1, Component::Text, hostile), ipc::TreeWriteStatus::kOk);
  const std::vector<std::string> items{"\xc2\x9b" "2J"};
  ASSERT_EQ(w->set_list(1, Component::TextList, items), ipc::TreeWriteStatus::kOk);
  RegionReport r = inspect(d.path());
  r.provider = Holder{.pid = 42, .comm = "evil\x1b[2J", .cmdline = "evil --name " + hostile};
  const std::string out = format_region(r, true, true);
  EXPECT_EQ(out.find('\x1b'), std::string::npos) << out;
  EXPECT_EQ(out.find('\x07'), std::string::npos) << out;
  EXPECT_EQ(out.find("\xc2\x9b"), std::string::npos) << out;
  EXPECT_NE(out.find("\"\\x1b]0;PWNED\\x07\\x1b[2J\""), std::string::npos) << out;
  EXPECT_NE(out.find("[\"\\u009b2J\"]"), std::string::npos) << out;
  EXPECT_NE(out.find("provider    pid 42 evil\\x1b[2J (evil --name \\x1b]0;PWNED\\x07\\x1b[2J)"), std::string::npos)
      << out;
  EXPECT_EQ(find(r, 1, "Text")->value, hostile);
  EXPECT_EQ(to_json(r)["provider"]["cmdline"], "evil --name " + hostile);
}

// A memfd that is not a sealed floe region: `bytes` of content; without MFD_ALLOW_SEALING the
// kernel gives it F_SEAL_SEAL alone.
int unsealed_memfd(std::span<const std::byte> bytes) {
  const int fd = ::memfd_create("floe-dev-copy", MFD_CLOEXEC);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  return fd;
}

TEST(Inspect, TruncatedRegionIsDiagnosed) {
  TestDevice d = TestDevice::make();
  const int fd = unsealed_memfd({d.region.data(), 4096});
  const RegionReport r = inspect("/proc/self/fd/" + std::to_string(fd));
  EXPECT_TRUE(r.snapshot);  // an unsealed file is copied, never mapped
  EXPECT_EQ(first_violation(r), "region header: size field " + std::to_string(d.region.size()) +
                                    " but the file has 4096 bytes (truncated region)");
  const int tiny = unsealed_memfd({d.region.data(), 40});
  EXPECT_EQ(first_violation(inspect("/proc/self/fd/" + std::to_string(tiny))),
            "region header: truncated: 40 bytes, less than the 96-byte region header");
  ::close(fd);
  ::close(tiny);
}

TEST(Inspect, MissingSealsAreDiagnosed) {
  TestDevice d = TestDevice::make();
  const int fd = unsealed_memfd({d.region.data(), d.region.size()});
  const RegionReport r = inspect("/proc/self/fd/" + std::to_string(fd));
  EXPECT_EQ(first_violation(r), "seals: F_SEAL_SEAL present, F_SEAL_SHRINK|F_SEAL_GROW missing");
  EXPECT_TRUE(r.tree.readable);  // the rest is still decoded
  ::close(fd);
}

// --region takes any path: a FIFO must be refused, not waited on in open(), and a huge file (sparse:
// it costs no disk) refused with a clear error, not copied into memory until bad_alloc.
TEST(Inspect, FifosAndOversizedFilesAreRefused) {
  char dir[] = "/tmp/floe-inspect-test-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string fifo = std::string(dir) + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto f = OpenedRegion::open(fifo);
  ASSERT_FALSE(f);
  EXPECT_NE(f.error().to_string().find("is not a regular file or memfd"), std::string::npos) << f.error().to_string();

  const std::string big = std::string(dir) + "/big";
  const int fd = ::open(big.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, (off_t{1} << 30) + 1), 0);
  ::close(fd);
  auto b = OpenedRegion::open(big);
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().to_string().find("has 1073741825 bytes, more than the 1073741824 a floe region can have"),
            std::string::npos)
      << b.error().to_string();
  ::unlink(fifo.c_str());
  ::unlink(big.c_str());
  ::rmdir(dir);
}

TEST(Inspect, RandomCorruptionNeverCrashes) {
  TestDevice d = TestDevice::make();
  d.fill();
  auto parts = d.parts();
  d.push(parts.tx, 5);
  d.push(parts.rx, 5);
  // Snapshot of the healthy bytes, then many runs with random bytes of the headers and
  // directories overwritten (an unsealed copy, so it is read through the snapshot path too).
  std::vector<std::byte> good(d.region.data(), d.region.data() + d.region.size());
  std::mt19937_64 rng(12345);
  const std::size_t hot = static_cast<std::size_t>(parts.tree.data() - d.region.data()) + 1024;
  for (int round = 0; round < 300; ++round) {
    std::vector<std::byte> bad = good;
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < flips; ++i) {
      // Mostly the headers and directories, sometimes anywhere (ring headers, blobs).
      const std::size_t at = rng() % 2 ? rng() % hot : rng() % bad.size();
      bad[at] = static_cast<std::byte>(rng());
    }
    if (round % 2 == 0) {
      std::memcpy(d.region.data(), bad.data(), bad.size());
      (void)inspect(d.path(), {.seqlock_attempts = 10, .seqlock_wait = std::chrono::milliseconds(1),
                               .wait_for_odd = true});
    } else {
      const int fd = unsealed_memfd(bad);
      (void)inspect("/proc/self/fd/" + std::to_string(fd), {.seqlock_attempts = 10});
      ::close(fd);
    }
  }
  std::memcpy(d.region.data(), good.data(), good.size());
  EXPECT_TRUE(inspect(d.path()).violations.empty());
}

// ---- The program ------------------------------------------------------------------------------

#ifdef FLOE_INSPECT_BIN
struct Ran {
  int exit = -1;
  std::string out;
};

Ran run_inspect(std::vector<std::string> args) {
  char tmpl[] = "/tmp/floe-inspect-out-XXXXXX";
  const int out = ::mkstemp(tmpl);
  EXPECT_GE(out, 0);
  args.insert(args.begin(), FLOE_INSPECT_BIN);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out, 1);
  pid_t pid = -1;
  Ran r;
  if (::posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) == 0) {
    int st = 0;
    ::waitpid(pid, &st, 0);
    r.exit = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  posix_spawn_file_actions_destroy(&fa);
  std::ifstream in(tmpl);
  std::stringstream ss;
  ss << in.rdbuf();
  r.out = ss.str();
  ::close(out);
  ::unlink(tmpl);
  return r;
}

std::string proc_path(const TestDevice& d) { return "/proc/" + std::to_string(::getpid()) + "/fd/" + std::to_string(d.region.fd()); }

TEST(InspectProgram, ValidatePassesOnAHealthyRegionAndReportsTheFirstViolation) {
  TestDevice d = TestDevice::make();
  d.fill();
  Ran ok = run_inspect({"--validate", "--region", proc_path(d)});
  EXPECT_EQ(ok.exit, 0) << ok.out;
  EXPECT_EQ(ok.out, "ok: 1 region(s), every invariant holds\n");
  // The same region as an inherited fd (a dup without FD_CLOEXEC survives posix_spawn).
  const int inherited = ::fcntl(d.region.fd(), F_DUPFD, 50);
  ASSERT_GE(inherited, 0);
  Ran by_fd = run_inspect({"--validate", "--fd", std::to_string(inherited)});
  ::close(inherited);
  EXPECT_EQ(by_fd.exit, 0) << by_fd.out;
  EXPECT_EQ(by_fd.out, ok.out);

  auto parts = d.parts();
  d.ring_header(parts.tx).tail.store(4096, std::memory_order_relaxed);
  Ran bad = run_inspect({"--validate", "--region", proc_path(d)});
  EXPECT_EQ(bad.exit, 1) << bad.out;
  EXPECT_EQ(bad.out, "INVALID floe-dev-test: tx ring: tail 4096 is 4096 bytes past head 0, more than the capacity 1024\n");
  Ran bad_json = run_inspect({"--validate", "--json", "--region", proc_path(d)});
  EXPECT_EQ(bad_json.exit, 1);
  const json j = json::parse(bad_json.out, nullptr, false);
  EXPECT_EQ(j["valid"], false);
  EXPECT_EQ(j["where"], "tx ring");
}

TEST(InspectProgram, ReportJsonAndWatchRunOnCorruptRegionsWithoutCrashing) {
  TestDevice d = TestDevice::make();
  d.fill();
  Ran text = run_inspect({"--region", proc_path(d)});
  EXPECT_EQ(text.exit, 0) << text.out;
  EXPECT_NE(text.out.find("region floe-dev-test  (device test)"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("Dimmer"), std::string::npos) << text.out;

  Ran js = run_inspect({"--json", "--tree-only", "--region", proc_path(d)});
  ASSERT_EQ(js.exit, 0) << js.out;
  const json j = json::parse(js.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << js.out;
  ASSERT_EQ(j["regions"].size(), 1u);
  EXPECT_FALSE(j["regions"][0].contains("rings"));
  EXPECT_EQ(j["regions"][0]["tree"]["entities"][1]["components"][2]["value"], "warm");

  d.region.header_mut().magic = 7;
  Ran watch = run_inspect({"--watch", "--json", "--count", "2", "--interval", "0.05", "--region", proc_path(d)});
  EXPECT_EQ(watch.exit, 0) << watch.out;
  std::istringstream lines(watch.out);
  int n = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    const json w = json::parse(line, nullptr, false);
    ASSERT_FALSE(w.is_discarded()) << line;
    EXPECT_EQ(w["regions"][0]["violations"][0]["where"], "region header");
    EXPECT_TRUE(w["regions"][0].contains("rates"));
  }
  EXPECT_EQ(n, 2);
}

// The provider can write the region header, creator pid included: attached through a core (here
// this process, by --pid), a holder whose pid the header names is still the provider, and
// --validate calls the rewritten field a violation.
TEST(InspectProgram, AProviderCannotHideBehindTheCreatorPid) {
  TestDevice d = TestDevice::make();
  const int inherited = ::fcntl(d.region.fd(), F_DUPFD, 50);  // no FD_CLOEXEC: the child holds it
  ASSERT_GE(inherited, 0);
  char sleep_bin[] = "sleep";
  char forever[] = "600";
  char* argv[] = {sleep_bin, forever, nullptr};
  pid_t provider = -1;
  ASSERT_EQ(::posix_spawnp(&provider, "sleep", nullptr, nullptr, argv, environ), 0);
  ::close(inherited);
  struct Reap {
    pid_t pid;
    ~Reap() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reap{provider};
  d.region.header_mut().creator_pid = static_cast<std::uint32_t>(provider);
  const std::string me = std::to_string(::getpid());
  // The child holds the memfd once it runs; /proc shows it from then on.
  bool held = false;
  for (int i = 0; i < 1000 && !held; ++i) {
    held = ::access(("/proc/" + std::to_string(provider) + "/fd/50").c_str(), F_OK) == 0;
    if (!held) ::usleep(1000);
  }
  ASSERT_TRUE(held);

  Ran js = run_inspect({"--json", "--pid", me});
  EXPECT_EQ(js.exit, 0) << js.out;
  const json j = json::parse(js.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << js.out;
  ASSERT_EQ(j["regions"].size(), 1u) << js.out;
  const json& holder = j["regions"][0]["provider"];
  ASSERT_TRUE(holder.is_object()) << js.out;
  EXPECT_EQ(holder["pid"], provider);
  EXPECT_EQ(j["regions"][0]["online"], true);
  Ran v = run_inspect({"--validate", "--pid", me});
  EXPECT_EQ(v.exit, 1) << v.out;
  EXPECT_EQ(v.out, "INVALID floe-dev-test: region header: creator pid " + std::to_string(provider) +
                       " is not the core's pid " + me + " (rewritten by the provider?)\n");
}

TEST(InspectProgram, BadArgumentsAndMissingFilesExitTwo) {
  EXPECT_EQ(run_inspect({"--no-such-option"}).exit, 2);
  EXPECT_EQ(run_inspect({"--region", "/nonexistent/region"}).exit, 2);
  EXPECT_EQ(run_inspect({"--rings-only", "--tree-only", "--region", "/dev/null"}).exit, 2);
}
#endif

}  // namespace
}  // namespace floe::inspect
