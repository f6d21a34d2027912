#include "floe/ipc/doorbell.hpp"

#include <fmt/format.h>

#include <cstring>
#include <new>

#include "floe/ipc/notify.hpp"
#include "floe/ipc/region.hpp"

namespace floe::ipc {
namespace {

constexpr std::uint64_t round_up(std::uint64_t v, std::uint64_t to) noexcept { return (v + to - 1) / to * to; }

struct Geometry {
  std::uint32_t slots = 0;
  std::uint32_t words = 0;
  std::uint32_t summary_words = 0;
  std::uint64_t summary_offset = 0;
  std::uint64_t pending_offset = 0;
  std::uint64_t footprint = 0;
};

Geometry geometry(std::uint32_t slots) noexcept {
  Geometry g;
  g.slots = static_cast<std::uint32_t>(round_up(slots == 0 ? 1 : slots, 64));
  g.words = g.slots / 64;
  g.summary_words = static_cast<std::uint32_t>(round_up(g.words, 64) / 64);
  g.summary_offset = sizeof(DoorbellHeader);
  // The summary and the pending words on lines of their own: producers of different slots then
  // share a line only with the slots next to theirs.
  g.pending_offset = g.summary_offset + round_up(std::uint64_t{g.summary_words} * 8, kCacheLine);
  g.footprint = g.pending_offset + round_up(std::uint64_t{g.words} * 8, kCacheLine);
  return g;
}

}  // namespace

std::size_t doorbell_footprint(std::uint32_t slots) noexcept { return geometry(slots).footprint; }

Status doorbell_init(std::span<std::byte> memory, std::uint32_t slots) {
  constexpr std::string_view op = "doorbell.init";
  if (slots == 0 || slots > kDoorbellMaxSlots) {
    return logic_error(op, fmt::format("{} slots: a doorbell has 1..{}", slots, kDoorbellMaxSlots));
  }
  const Geometry g = geometry(slots);
  if (memory.data() == nullptr || reinterpret_cast<std::uintptr_t>(memory.data()) % kCacheLine != 0 ||
      memory.size() < g.footprint) {
    return logic_error(op, fmt::format("needs {} bytes, 64-aligned; got {}", g.footprint, memory.size()));
  }
  std::memset(memory.data(), 0, g.footprint);
  auto* h = new (memory.data()) DoorbellHeader{};
  h->magic = kDoorbellMagic;
  h->layout_version = kDoorbellLayoutVersion;
  h->slots = g.slots;
  h->summary_words = g.summary_words;
  h->summary_offset = g.summary_offset;
  h->pending_offset = g.pending_offset;
  return {};
}

Result<Doorbell> Doorbell::attach(std::span<std::byte> memory) {
  constexpr std::string_view op = "doorbell.attach";
  if (memory.data() == nullptr || reinterpret_cast<std::uintptr_t>(memory.data()) % kCacheLine != 0 ||
      memory.size() < sizeof(DoorbellHeader)) {
    return logic_error(op, fmt::format("span of {} bytes is smaller than a doorbell header", memory.size()));
  }
  auto* h = reinterpret_cast<DoorbellHeader*>(memory.data());
  // Each field read once (read_once): the peer may rewrite them.
  const std::uint32_t magic = read_once(h->magic);
  const std::uint32_t version = read_once(h->layout_version);
  const std::uint32_t slots = read_once(h->slots);
  if (magic != kDoorbellMagic) return logic_error(op, fmt::format("bad magic {:#x}", magic));
  if (version != kDoorbellLayoutVersion) {
    return logic_error(op, fmt::format("layout version {} (this build reads {})", version, kDoorbellLayoutVersion));
  }
  if (slots == 0 || slots > kDoorbellMaxSlots || slots % 64 != 0) {
    return logic_error(op, fmt::format("bad slot count {}", slots));
  }
  const Geometry g = geometry(slots);
  const std::uint32_t summary_words = read_once(h->summary_words);
  const std::uint64_t summary_offset = read_once(h->summary_offset);
  const std::uint64_t pending_offset = read_once(h->pending_offset);
  if (summary_words != g.summary_words || summary_offset != g.summary_offset || pending_offset != g.pending_offset) {
    return logic_error(op, "summary or pending offsets do not match the slot count");
  }
  if (memory.size() < g.footprint) {
    return logic_error(op, fmt::format("{} slots need {} bytes; the span has {}", slots, g.footprint, memory.size()));
  }
  Doorbell d;
  d.header_ = h;
  d.summary_ = reinterpret_cast<std::atomic<std::uint64_t>*>(memory.data() + g.summary_offset);
  d.pending_ = reinterpret_cast<std::atomic<std::uint64_t>*>(memory.data() + g.pending_offset);
  d.words_ = g.words;
  d.summary_words_ = g.summary_words;
  return d;
}

void Doorbell::ring(std::uint32_t slot, int eventfd) noexcept {
  if (slot >= words_ * 64) return;
  const std::uint32_t w = slot / 64;
  const std::uint64_t bit = std::uint64_t{1} << (slot % 64);
  const std::uint64_t sbit = std::uint64_t{1} << (w % 64);
  // SYNC(bell-take): orders the ring's tail store before the bit test below, paired with the
  // fence in take(): if the bit is still set we skip our store, and the consumer that clears it
  // afterwards sees our tail.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // SYNC(bell-pending): release pairs with the consumer's acquire exchange in take(). Acquire too:
  // if our bit lands after the consumer cleared this word, its clearing of the summary word came
  // before, so the summary test below cannot read a stale "already set" and skip the store.
  if ((pending_[w].load(std::memory_order_relaxed) & bit) == 0) pending_[w].fetch_or(bit, std::memory_order_acq_rel);
  if ((summary_[w / 64].load(std::memory_order_relaxed) & sbit) == 0) {
    summary_[w / 64].fetch_or(sbit, std::memory_order_release);
  }
  // SYNC(bell-sleep): full fence between marking the slot and reading the flag, paired with the
  // consumer's fence between raising the flag and re-reading the summary (prepare_sleep).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (header_->sleeping.load(std::memory_order_relaxed) == 0) return;
  // One sleep costs at most one signal, however many producers find the flag up.
  if (header_->sleeping.exchange(0, std::memory_order_acquire) != 1) return;
  eventfd_signal(eventfd);
  header_->signals.fetch_add(1, std::memory_order_relaxed);
}

std::uint32_t Doorbell::pending_count() const noexcept {
  std::uint32_t n = 0;
  for (std::uint32_t w = 0; w < words_; ++w) {
    n += static_cast<std::uint32_t>(__builtin_popcountll(pending_[w].load(std::memory_order_relaxed)));
  }
  return n;
}

bool Doorbell::any_pending() const noexcept {
  for (std::uint32_t s = 0; s < summary_words_; ++s) {
    if (summary_[s].load(std::memory_order_relaxed) != 0) return true;
  }
  return false;
}

bool Doorbell::prepare_sleep() noexcept {
  if (any_pending()) return false;
  header_->sleeping.store(1, std::memory_order_release);
  // SYNC(bell-sleep): see ring().
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (any_pending()) {
    header_->sleeping.store(0, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void Doorbell::finish_sleep() noexcept {
  header_->sleeping.store(0, std::memory_order_relaxed);
  header_->wakeups.store(header_->wakeups.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

std::size_t doorbell_region_size(std::uint32_t count, std::uint32_t slots) noexcept {
  return kRegionPayloadOffset + std::size_t{count} * doorbell_footprint(slots);
}

Status doorbell_region_init(std::span<std::byte> region, std::uint32_t count, std::uint32_t slots) {
  if (count == 0 || region.size() < doorbell_region_size(count, slots)) {
    return logic_error("doorbell.region_init", fmt::format("{} doorbells of {} slots need {} bytes; got {}", count,
                                                           slots, doorbell_region_size(count, slots), region.size()));
  }
  const std::size_t each = doorbell_footprint(slots);
  for (std::uint32_t i = 0; i < count; ++i) {
    FLOE_TRY(doorbell_init(region.subspan(kRegionPayloadOffset + i * each, each), slots));
  }
  return {};
}

Result<std::vector<Doorbell>> doorbell_region_attach(std::span<std::byte> region, std::uint32_t count,
                                                     std::uint32_t slots) {
  constexpr std::string_view op = "doorbell.region_attach";
  if (count == 0 || count > 1024 || slots == 0 || slots > kDoorbellMaxSlots) {
    return logic_error(op, fmt::format("{} doorbells of {} slots: out of range", count, slots));
  }
  if (region.size() < doorbell_region_size(count, slots)) {
    return logic_error(op, fmt::format("{} doorbells of {} slots need {} bytes; the region has {}", count, slots,
                                       doorbell_region_size(count, slots), region.size()));
  }
  const std::size_t each = doorbell_footprint(slots);
  std::vector<Doorbell> out;
  out.reserve(count);
  for (std::uint32_t i = 0; i < count; ++i) {
    auto d = Doorbell::attach(region.subspan(kRegionPayloadOffset + i * each, each));
    if (!d) return logic_error(op, fmt::format("doorbell {}: {}", i, d.error().message));
    if (d->slots() != geometry(slots).slots) {
      return logic_error(op, fmt::format("doorbell {} has {} slots, {} were announced", i, d->slots(), slots));
    }
    out.push_back(std::move(*d));
  }
  return out;
}

}  // namespace floe::ipc
