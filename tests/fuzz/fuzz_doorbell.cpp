// libFuzzer target: a doorbell consumer (the core's shard, or the SDK) reading a doorbell its peer
// can write. Run by `scripts/fuzz doorbell` (seeds: tests/fuzz/corpus/doorbell).
//
// The input's first two bytes choose the slot count, the next two an offset; the rest is laid over
// the doorbell's memory (exactly its footprint, so ASan flags any read past it) at that offset.
// A consumer attached before the scribble (as in floe) must report only slots below its slot count,
// each once per take, and never read outside the memory; one attached after must refuse a header
// that does not add up or behave the same.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "floe/ipc/doorbell.hpp"

namespace {

using namespace floe::ipc;

struct Free {
  void operator()(std::byte* p) const { std::free(p); }
};

void exercise(Doorbell& bell) {
  for (int round = 0; round < 3; ++round) {
    std::vector<bool> seen(bell.slots(), false);
    std::uint32_t last = 0;
    bool first = true;
    bell.take([&](std::uint32_t slot) {
      if (slot >= bell.slots()) std::abort();             // a slot it never had
      if (!first && slot <= last) std::abort();           // in order, each once
      if (seen[slot]) std::abort();
      seen[slot] = true;
      last = slot;
      first = false;
    });
    (void)bell.any_pending();
    if (bell.prepare_sleep()) bell.finish_sleep();
    bell.ring(static_cast<std::uint32_t>(round * 977), -1);  // -1: a signal would be EBADF, harmless
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* input, std::size_t size) {
  if (size < 4) return 0;
  const std::uint32_t slots = 1 + (static_cast<std::uint32_t>(input[0]) | (static_cast<std::uint32_t>(input[1]) << 8)) % 4096;
  const std::size_t footprint = doorbell_footprint(slots);
  const std::size_t offset = (static_cast<std::size_t>(input[2]) | (static_cast<std::size_t>(input[3]) << 8)) % footprint;
  std::unique_ptr<std::byte, Free> storage{static_cast<std::byte*>(std::aligned_alloc(floe::kCacheLine, footprint))};
  const std::span<std::byte> memory{storage.get(), footprint};
  if (!doorbell_init(memory, slots)) std::abort();
  auto before = Doorbell::attach(memory);
  if (!before) std::abort();
  const std::size_t n = std::min(size - 4, footprint - offset);
  std::memcpy(memory.data() + offset, input + 4, n);
  exercise(*before);
  if (auto after = Doorbell::attach(memory)) exercise(*after);
  return 0;
}
