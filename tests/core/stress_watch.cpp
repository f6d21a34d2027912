// Watchers under concurrency, wired as the core will wire them: a provider thread writes device
// trees and pushes change records through real rx rings (tiny, so they overflow; and now and then
// it "loses" a record on purpose and raises the overflow flag itself); a shard thread drains the
// rings into feeds, turns overflow flags into rescans and flushes; a client thread subscribes and
// unsubscribes identical and different queries and edits the registry. At the end every live
// subscription's last report must equal a fresh evaluation: nothing was missed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "floe/core/engine.hpp"
#include "floe/core/query_parser.hpp"
#include "floe/core/registry.hpp"
#include "floe/core/watch.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/ring.hpp"
#include "floe/ipc/tree.hpp"
#include "support/environment.hpp"

namespace floe::core {
namespace {

using C = ipc::Component;

std::size_t page_round(std::size_t n) {
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}

/// A device as the core would create it: a region holding the tree, then the rx ring.
struct Device {
  std::shared_ptr<ipc::Region> region;
  std::shared_ptr<const ipc::TreeReader> reader;
  std::optional<ipc::TreeWriter> writer;
  std::optional<ipc::RingProducer> producer;  // provider side
  std::optional<ipc::RingConsumer> consumer;  // core side
  std::optional<WatchFeed> feed;
  DeviceId id;
  std::vector<std::vector<C>> components;  // per entity, the writable (non-marker) ones
};

constexpr std::size_t kRingCapacity = 256;  // ~10 change records: overflows often

Device make_device(const ipc::TreeSchema& schema) {
  Device d;
  auto layout = ipc::TreeLayout::compute(schema);
  EXPECT_TRUE(layout) << layout.error().to_string();
  const std::size_t ring_offset = ipc::kRegionPayloadOffset + (layout->size() + 63) / 64 * 64;
  auto region = ipc::Region::create(
      {.name = "watch-dev", .size = page_round(ring_offset + ipc::ring_footprint(kRingCapacity)), .kind = ipc::RegionKind::kDevice});
  EXPECT_TRUE(region) << region.error().to_string();
  d.region = std::make_shared<ipc::Region>(std::move(*region));
  EXPECT_TRUE(ipc::tree_init(d.region->payload(), *layout));
  auto reader = ipc::TreeReader::attach(d.region->payload());
  auto writer = ipc::TreeWriter::attach(d.region->payload());
  EXPECT_TRUE(reader && writer);
  d.reader = std::make_shared<const ipc::TreeReader>(std::move(*reader));
  d.writer.emplace(std::move(*writer));
  const std::span<std::byte> ring(d.region->data() + ring_offset, ipc::ring_footprint(kRingCapacity));
  EXPECT_TRUE(ipc::ring_init(ring, {.capacity = kRingCapacity, .notify = ipc::NotifyMode::kSpin, .poll_interval = std::chrono::microseconds(100)}));
  auto producer = ipc::RingProducer::attach(ring);
  auto consumer = ipc::RingConsumer::attach(ring);
  EXPECT_TRUE(producer && consumer);
  d.producer.emplace(std::move(*producer));
  d.consumer.emplace(std::move(*consumer));
  for (const ipc::EntityDecl& e : schema.entities) {
    std::vector<C> cs;
    for (const ipc::ComponentDecl& c : e.components) {
      if (ipc::find_component(c.component)->encoding != ipc::Encoding::kMarker) cs.push_back(c.component);
    }
    d.components.push_back(std::move(cs));
  }
  return d;
}

std::vector<std::string> ids(const std::string& prefix, std::size_t n) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; ++i) out.push_back(prefix + std::to_string(i));
  return out;
}

/// What one live subscription last heard.
struct Seen {
  std::mutex mu;
  std::optional<Result<QueryResult>> last;
  std::uint64_t calls = 0;
};

struct Live {
  std::string text;
  WatchHandle handle;
  std::shared_ptr<Seen> seen;
};

const char* const kQueries[] = {
    "avg Dimmer where Light",
    "AVG dimmer WHERE light",  // the same watcher as the line above
    "max Dimmer in group upstairs",
    "count where Switch == true",
    "list Switch where Switch == true in group downstairs",
    "any Switch in device gamma",
    "sum Dimmer where Dimmer > 0.5",
    "min Dimmer where not Light in group upstairs",
    "list Dimmer where Light in entity a1*",
    "count Light",  // reads no values: only registry edits change it
};

TEST(WatchStress, LiveSubscriptionsEndOnAFreshEvaluationDespiteOverflowsAndChurn) {
  Registry registry;
  std::vector<Device> devices;
  {
    ipc::TreeSchema a, b, c;
    for (int i = 0; i < 70; ++i) {  // two chunks
      if (i % 2 == 0) {
        a.entities.push_back({{{C::Light}, {C::Dimmer}, {C::Switch}}});
      } else {
        a.entities.push_back({{{C::Dimmer}}});
      }
    }
    for (int i = 0; i < 10; ++i) b.entities.push_back({{{C::Light}, {C::Dimmer}, {C::Switch}}});
    for (int i = 0; i < 5; ++i) c.entities.push_back({{{C::Switch}}});
    devices.push_back(make_device(a));
    devices.push_back(make_device(b));
    devices.push_back(make_device(c));
  }
  const char* const names[] = {"alpha", "beta", "gamma"};
  const char* const prefixes[] = {"a", "b", "c"};
  for (std::size_t i = 0; i < devices.size(); ++i) {
    Device& d = devices[i];
    auto id = registry.add_device({.name = names[i], .provider = "stress", .entity_ids = ids(prefixes[i], d.reader->entity_count()),
                                   .entity_names = {}, .reader = d.reader, .keepalive = d.region, .online = true});
    ASSERT_TRUE(id) << id.error().to_string();
    d.id = *id;
  }
  auto up = registry.create_group("upstairs");
  auto down = registry.create_group("downstairs");
  ASSERT_TRUE(up && down);
  ASSERT_TRUE(registry.add_to_group(*up, devices[0].id));
  ASSERT_TRUE(registry.add_to_group(*down, devices[1].id));
  ASSERT_TRUE(registry.add_to_group(*down, devices[2].id));

  WatchHub hub(registry);
  for (Device& d : devices) {
    auto feed = hub.attach(d.id);
    ASSERT_TRUE(feed) << feed.error().to_string();
    d.feed.emplace(std::move(*feed));
  }

  const std::uint64_t writes = test::scaled(60000, 2000);
  const std::uint64_t churn = test::scaled(3000, 200);
  std::atomic<bool> writer_done{false};

  // The provider: write the tree, then push the record; a full ring raises the overflow flag.
  std::thread provider([&] {
    std::mt19937_64 rng(1);
    const auto push = [&](Device& d, ipc::EntityIndex e, C c, bool lose) {
      const ChangeRecord r{.entity = e, .component = ipc::to_id(c), .reserved = 0, .seq = d.writer->change_seq(e)};
      if (lose || !d.producer->try_push(kChangeRecordType, {reinterpret_cast<const std::byte*>(&r), sizeof r})) {
        // SYNC(watch-overflow): release, after the tree write; the shard's exchange(acq_rel)
        // acquires it, so its rescan sees this write's sequence.
        d.producer->header().overflow.store(1, std::memory_order_release);
      }
    };
    const auto write = [&](Device& d, ipc::EntityIndex e, C c, double x, bool lose) {
      const ipc::Value v = c == C::Switch ? ipc::Value{x > 0.5} : ipc::Value{x};
      ASSERT_EQ(d.writer->set(e, c, v), ipc::TreeWriteStatus::kOk);
      push(d, e, c, lose);
    };
    std::uniform_real_distribution<double> value(0.0, 1.0);
    for (std::uint64_t i = 0; i < writes; ++i) {
      Device& d = devices[rng() % devices.size()];
      const auto e = static_cast<ipc::EntityIndex>(rng() % d.reader->entity_count());
      const auto& cs = d.components[e];
      // Coarse values so that unchanged results (no report) happen too.
      write(d, e, cs[rng() % cs.size()], static_cast<double>(rng() % 5) / 4, rng() % 97 == 0);
      if (i % 512 == 0) std::this_thread::yield();
    }
    // The final known state: everything 0.25 / false, except every seventh entity, 0.75 / true,
    // whose records are lost: only a rescan can find those.
    for (Device& d : devices) {
      for (ipc::EntityIndex e = 0; e < d.reader->entity_count(); ++e) {
        for (C c : d.components[e]) write(d, e, c, e % 7 == 0 ? 0.75 : 0.25, e % 7 == 0);
      }
    }
    writer_done.store(true, std::memory_order_release);  // SYNC(stress-done): every push above
  });

  // The shard: drain each rx ring into its feed, rescan on overflow, flush.
  std::thread shard([&] {
    std::vector<ChangeRecord> batch;
    const auto round = [&] {
      for (Device& d : devices) {
        batch.clear();
        auto n = d.consumer->drain([&](const ipc::RecordView& v) {
          if (v.type != kChangeRecordType) return;
          if (auto r = decode_change_record(v.payload)) batch.push_back(*r);
        });
        ASSERT_TRUE(n) << n.error().to_string();
        d.feed->on_change(batch);
        // SYNC(watch-overflow): acquire the writes before the flag. Cleared before the rescan,
        // so an overflow during the rescan raises it again for the next round.
        if (d.consumer->header().overflow.exchange(0, std::memory_order_acq_rel) != 0) d.feed->on_overflow();
      }
      hub.flush();
    };
    while (!writer_done.load(std::memory_order_acquire)) round();  // SYNC(stress-done)
    round();
  });

  // The clients: subscribe/unsubscribe concurrently; toggle gamma's online flag and beta's group.
  std::vector<Live> live;
  std::thread client([&] {
    std::mt19937_64 rng(2);
    bool beta_upstairs = false, gamma_online = true;
    for (std::uint64_t i = 0; i < churn; ++i) {
      const unsigned op = static_cast<unsigned>(rng() % 10);
      if (op < 5 || live.empty()) {
        Live l{.text = kQueries[rng() % std::size(kQueries)], .handle = {}, .seen = std::make_shared<Seen>()};
        auto h = hub.subscribe(l.text, [seen = l.seen](const Result<QueryResult>& r) {
          std::lock_guard g(seen->mu);
          seen->last = r;
          ++seen->calls;
        });
        ASSERT_TRUE(h) << h.error().to_string();
        l.handle = std::move(*h);
        {
          std::lock_guard g(l.seen->mu);
          ASSERT_GE(l.seen->calls, 1U) << "the current result is delivered during subscribe";
        }
        live.push_back(std::move(l));
      } else if (op < 9) {
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(rng() % live.size()));
      } else if (rng() % 2 == 0) {
        gamma_online = !gamma_online;
        ASSERT_TRUE(registry.set_online(devices[2].id, gamma_online));
      } else {
        beta_upstairs = !beta_upstairs;
        ASSERT_TRUE(beta_upstairs ? registry.add_to_group(*up, devices[1].id) : registry.remove_from_group(*up, devices[1].id));
      }
      if (live.size() > 24) live.erase(live.begin());
    }
    ASSERT_TRUE(registry.set_online(devices[2].id, false));  // a known final registry state
    // Keep one subscription of every query alive to the end.
    for (const char* text : kQueries) {
      Live l{.text = text, .handle = {}, .seen = std::make_shared<Seen>()};
      auto h = hub.subscribe(l.text, [seen = l.seen](const Result<QueryResult>& r) {
        std::lock_guard g(seen->mu);
        seen->last = r;
        ++seen->calls;
      });
      ASSERT_TRUE(h);
      l.handle = std::move(*h);
      live.push_back(std::move(l));
    }
  });

  provider.join();
  shard.join();
  client.join();
  hub.flush();  // the client's last registry edit may have come after the shard's last round

  const WatchStats stats = hub.stats();
  EXPECT_GT(stats.rescans, devices.size()) << "forced overflows must have caused rescans beyond the attach ones";
  EXPECT_GT(stats.records, 0U);
  EXPECT_EQ(stats.ignored_records, 0U) << "a genuine provider sends no bogus records";
  EXPECT_LE(hub.watcher_count(), std::size(kQueries) - 1) << "the two spellings of avg share a watcher";

  auto snap = registry.snapshot();
  for (Live& l : live) {
    auto fresh = run(*parse_query(l.text), *snap);
    std::lock_guard g(l.seen->mu);
    ASSERT_TRUE(l.seen->last.has_value()) << l.text;
    ASSERT_EQ(fresh.has_value(), l.seen->last->has_value()) << l.text;
    if (fresh) {
      EXPECT_TRUE(same_result(*fresh, **l.seen->last))
          << l.text << ": reported count " << (*l.seen->last)->count << ", fresh " << fresh->count;
    }
  }
  live.clear();
  EXPECT_EQ(hub.watcher_count(), 0U);
}

}  // namespace
}  // namespace floe::core
