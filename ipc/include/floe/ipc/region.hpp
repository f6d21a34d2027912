// Region: a sealed memfd mapped into this process, starting with a RegionHeader.
//
// The creator (the core) makes the memfd, sizes it, writes the header and seals it against
// shrinking, growing and re-sealing, so no peer can make another process's mapping SIGBUS.
// A receiver never trusts a received fd: open() checks seals, size and header before mapping.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "floe/ipc/fd.hpp"
#include "floe/ipc/platform.hpp"
#include "floe/ipc/result.hpp"

namespace floe::ipc {

inline constexpr std::uint64_t kRegionMagic = 0x314745524F4C4546ULL;  // "FLOEREG1" little-endian
inline constexpr std::uint32_t kRegionLayoutVersion = 1;
/// Seals every region carries; open() refuses an fd missing any of them.
inline constexpr int kRegionSeals = 0x0002 /*F_SEAL_SHRINK*/ | 0x0004 /*F_SEAL_GROW*/ | 0x0001 /*F_SEAL_SEAL*/;

/// First bytes of every region. Shared-memory data: plain, standard layout, no pointers.
/// Written once by the creator before sealing; immutable afterwards except `generation`/`flags`.
struct RegionHeader {
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t header_size;   // sizeof(RegionHeader) as the creator saw it
  std::uint64_t size;          // total bytes of the region, header included
  std::uint32_t kind;          // what the payload is (RegionKind); the layer above interprets it
  std::uint32_t creator_pid;
  std::atomic<std::uint32_t> generation;  // bumped by the creator when the region is reused
  std::atomic<std::uint32_t> flags;       // RegionFlags
  char name[32];                          // NUL-terminated, for inspectors and logs
  std::uint64_t reserved[3];              // zero; pads the header to 96 bytes
};
static_assert(std::is_standard_layout_v<RegionHeader>);
static_assert(sizeof(RegionHeader) == 96);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

/// Byte offset where a region's payload may start (header rounded up to a cache line).
inline constexpr std::size_t kRegionPayloadOffset = 128;

enum class RegionKind : std::uint32_t { kRaw = 0, kRingPair = 1, kDevice = 2, kDoorbells = 3 };
enum class RegionAccess { kReadWrite, kReadOnly };

struct RegionCreateOptions {
  std::string_view name;       // memfd name (shows in /proc/PID/fd) and header name; truncated to 31
  std::size_t size = 0;        // total bytes; rounded up to the page size
  RegionKind kind = RegionKind::kRaw;
};

struct RegionOpenOptions {
  RegionAccess access = RegionAccess::kReadWrite;
  std::size_t expected_size = 0;  // 0: accept any size the header and fstat agree on
  std::size_t min_size = 0;       // refuse regions smaller than this (payload needs)
  bool require_kind = false;
  RegionKind kind = RegionKind::kRaw;
};

/// A mapped region. Move-only; unmaps (and closes its fd) on destruction.
/// The mapping itself may be shared by any thread; the object is not thread-safe.
class Region {
 public:
  /// memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING), ftruncate, write header, seal, mmap shared.
  [[nodiscard]] static Result<Region> create(const RegionCreateOptions& options);
  /// Verifies seals (kRegionSeals), fstat size, then pread()s and checks the header (magic,
  /// layout version, header size, size field == fstat size) before mapping. Refuses anything else
  /// with an Error saying exactly what was wrong. kReadOnly maps PROT_READ.
  [[nodiscard]] static Result<Region> open(Fd fd, const RegionOpenOptions& options = {});

  Region(Region&& other) noexcept;
  Region& operator=(Region&& other) noexcept;
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  ~Region();

  [[nodiscard]] std::byte* data() const noexcept { return base_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  [[nodiscard]] bool read_only() const noexcept { return read_only_; }
  [[nodiscard]] const RegionHeader& header() const noexcept {
    return *reinterpret_cast<const RegionHeader*>(base_);
  }
  [[nodiscard]] RegionHeader& header_mut() noexcept { return *reinterpret_cast<RegionHeader*>(base_); }
  /// The bytes after the header: [kRegionPayloadOffset, size).
  [[nodiscard]] std::span<std::byte> payload() const noexcept {
    return {base_ + kRegionPayloadOffset, size_ - kRegionPayloadOffset};
  }

  /// A new fd for the same memfd to hand to a peer. kReadOnly reopens /proc/self/fd/N with
  /// O_RDONLY, so the receiver cannot map it writable.
  [[nodiscard]] Result<Fd> share(RegionAccess access = RegionAccess::kReadWrite) const;

 private:
  Region(Fd fd, std::byte* base, std::size_t size, bool read_only) noexcept
      : fd_(std::move(fd)), base_(base), size_(size), read_only_(read_only) {}
  void unmap() noexcept;

  Fd fd_;
  std::byte* base_ = nullptr;
  std::size_t size_ = 0;
  bool read_only_ = false;
};

/// Current seals of a memfd (fcntl F_GET_SEALS).
[[nodiscard]] Result<int> get_seals(int fd);

}  // namespace floe::ipc
