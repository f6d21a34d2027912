// libFuzzer target: the ring consumer reading a region a hostile producer controls. Run by
// `scripts/fuzz ring_consumer` (seeds: tests/fuzz/corpus/ring_consumer).
//
// The input is what the producer wrote: a few honest pushes first (their count and sizes from the
// first bytes), then the rest of the input is laid over the ring's memory — header indices and data
// area alike — at an offset the input chooses. The consumer, attached before the scribble as in
// the core, must yield only records inside the data area or report corruption with a message; a
// consumer attached after the scribble must refuse a bad header or behave the same.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>

#include "floe/ipc/ring.hpp"

namespace {

using namespace floe::ipc;

constexpr std::size_t kCapacity = 1024;

struct Free {
  void operator()(std::byte* p) const { std::free(p); }
};

void drain(RingConsumer& consumer, std::span<const std::byte> data_area) {
  for (int step = 0; step < 256; ++step) {
    RecordView view;
    const PopStatus s = consumer.peek(view);
    if (s == PopStatus::kEmpty) return;
    if (s == PopStatus::kCorrupt) {
      if (consumer.error() == nullptr || consumer.error()->message.empty()) std::abort();
      return;
    }
    if (view.payload.data() < data_area.data() ||
        view.payload.data() + view.payload.size() > data_area.data() + data_area.size()) {
      std::abort();
    }
    unsigned sum = 0;  // touch every byte: ASan reports a span that strays outside the allocation
    for (std::byte b : view.payload) sum += static_cast<unsigned>(b);
    (void)sum;
    consumer.pop();
    if (step % 8 == 7) consumer.release();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* input, std::size_t size) {
  const std::size_t footprint = ring_footprint(kCapacity);
  // Exactly the ring's footprint, so ASan flags any read past the data area.
  std::unique_ptr<std::byte, Free> storage{static_cast<std::byte*>(std::aligned_alloc(floe::kCacheLine, footprint))};
  const std::span<std::byte> memory{storage.get(), footprint};
  if (!ring_init(memory, {.capacity = kCapacity, .notify = NotifyMode::kSpin})) std::abort();
  auto producer = RingProducer::attach(memory);
  auto consumer = RingConsumer::attach(memory);
  if (!producer || !consumer) std::abort();

  std::size_t at = 0;
  const auto next = [&]() -> std::uint8_t { return at < size ? input[at++] : 0; };
  std::byte payload[256]{};
  for (int pushes = next() % 16; pushes > 0; --pushes) (void)producer->try_push(1 + next() % 4, {payload, next()});
  const std::span<const std::byte> data_area{memory.data() + sizeof(RingHeader), kCapacity};
  // Consume a little so head and the wrap point move.
  for (int pops = next() % 4; pops > 0; --pops) {
    RecordView view;
    if (consumer->peek(view) != PopStatus::kRecord) break;
    consumer->pop();
  }
  consumer->release();

  // The scribble: [offset lo, offset hi] then bytes copied over the region from that offset.
  const std::size_t offset = (static_cast<std::size_t>(next()) | static_cast<std::size_t>(next()) << 8) % footprint;
  const std::size_t n = std::min(size - std::min(at, size), footprint - offset);
  if (n > 0) std::memcpy(memory.data() + offset, input + at, n);

  drain(*consumer, data_area);
  if (auto late = RingConsumer::attach(memory)) drain(*late, data_area);
  else if (late.error().message.empty()) std::abort();
  return 0;
}
