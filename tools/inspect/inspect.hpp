// floe-inspect's decoding library: what a floe region holds, read from bytes that another process
// may be writing or may have corrupted. Pure functions of a byte span plus the /proc lookups that
// find regions and their holders; floe-inspect (app.cpp) only parses options and prints.
//
// Trust: every offset, count and length read from the region is checked against the span before it
// is used; the tree is indexed by ipc::TreeReader (which validates it against its canonical layout)
// and blobs are read through their seqlock with bounded attempts. Nothing here writes to the span.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "floe/ipc/result.hpp"

namespace floe::inspect {

/// One invariant that does not hold: where (e.g. "rx ring", "tree") and what, precisely.
struct Violation {
  std::string where;
  std::string what;
};

struct RingReport {
  std::string name;          // "tx" (core -> provider) or "rx" (provider -> core)
  std::uint64_t offset = 0;  // of the RingHeader, from the region's start
  std::uint64_t footprint = 0;
  bool readable = false;     // the header passed its checks: the fields below mean something
  std::uint32_t layout_version = 0;
  std::uint64_t capacity = 0;
  std::uint32_t notify_mode = 0;
  std::uint64_t head = 0;
  std::uint64_t tail = 0;
  std::uint64_t occupancy = 0;  // tail - head, bytes
  std::uint64_t high_water = 0;
  bool overflow = false;
  bool consumer_sleeping = false;
  std::uint64_t records_pushed = 0;
  std::uint64_t records_popped = 0;
  std::uint64_t notifications_sent = 0;
  std::uint64_t consumer_wakeups = 0;
  // The walk from head to tail over the record headers.
  std::string walk = "not done";   // "ok", "busy (head kept moving)", or the violation found
  std::uint64_t pending_records = 0;
};

/// One doorbell of a kDoorbells region (a provider connection's: the provider's own, then one per
/// shard of the core; floe/ipc/doorbell.hpp).
struct DoorbellReport {
  std::uint32_t index = 0;
  std::uint64_t offset = 0;  // of the DoorbellHeader, from the region's start
  bool readable = false;     // the header passed its checks: the fields below mean something
  std::uint32_t slots = 0;
  bool sleeping = false;     // its consumer thread is (about to be) blocked on the eventfd
  std::uint64_t signals = 0;  // eventfd writes made by producers
  std::uint64_t wakeups = 0;
  std::uint64_t takes = 0;    // slots its consumer was told to look at
  std::uint32_t pending = 0;  // slots marked now
};

struct ComponentReport {
  std::uint16_t id = 0;
  std::string name;      // catalogue name, or "#<id>" for a kind this build does not know
  std::string encoding;
  std::uint32_t max_bytes = 0;   // blob capacity (text, list)
  bool ok = false;               // value decoded
  std::string text;              // the value for people, or why it could not be read
  nlohmann::json value;          // typed value for --json (null when !ok)
  std::optional<std::uint32_t> blob_seq;  // text/list: the blob's seqlock sequence
  bool odd = false;              // the seqlock was odd (a write in progress, or a dead writer)
};

struct EntityReport {
  std::uint32_t index = 0;
  std::uint64_t change_seq = 0;
  std::vector<ComponentReport> components;
};

struct TreeReport {
  bool readable = false;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  std::uint32_t entity_count = 0;
  std::uint64_t change_total = 0;  // sum of every entity's change sequence
  std::vector<EntityReport> entities;
  std::vector<std::string> odd_slots;  // "entity 3 Text (seq 7)"
};

struct Holder {
  pid_t pid = 0;
  std::string comm;
  std::string cmdline;
};

struct RegionReport {
  std::string source;       // path opened (/proc/PID/fd/N, a file, /proc/self/fd/N)
  std::string memfd_name;   // from readlink, without "/memfd:" and " (deleted)"
  std::string device;       // device id (memfd/header name without "floe-dev-")
  std::uint64_t file_size = 0;
  int seals = -1;           // F_GET_SEALS, -1 if not a sealable file
  bool snapshot = false;    // not sealed against shrinking: read from a private copy, not mapped
  // RegionHeader fields (valid when header_readable).
  bool header_readable = false;
  std::uint64_t magic = 0;
  std::uint32_t layout_version = 0;
  std::uint32_t header_size = 0;
  std::uint64_t size_field = 0;
  std::uint32_t kind = 0;
  std::uint32_t creator_pid = 0;
  std::uint32_t generation = 0;
  std::uint32_t flags = 0;
  std::string header_name;
  std::optional<Holder> provider;  // another process holding the memfd (the provider)
  std::vector<Holder> other_holders;
  bool online = false;             // a provider holds it
  std::vector<RingReport> rings;
  std::vector<DoorbellReport> doorbells;  // kind kDoorbells
  TreeReport tree;
  std::vector<Violation> violations;  // in the order checked; empty = every invariant holds
};

struct DecodeOptions {
  bool values = true;  // decode component values (off for --rings-only)
  /// Attempts per seqlock read in the report (bounded: a dead writer costs this many spins).
  unsigned seqlock_attempts = 2000;
  /// How long an odd seqlock may stay odd (with the same sequence) before --validate calls it stuck.
  std::chrono::milliseconds seqlock_wait{500};
  bool wait_for_odd = false;  // apply seqlock_wait (validate); the report only flags odd slots
};

/// Decodes and checks a region held in `bytes` (the whole file: mapped or copied, 64-byte aligned).
/// `file_size` is what fstat said; `seals` what F_GET_SEALS said (-1: unknown). Never reads outside
/// `bytes`, never writes.
[[nodiscard]] RegionReport decode_region(std::span<const std::byte> bytes, std::uint64_t file_size, int seals,
                                         const DecodeOptions& options = {});

/// Sets r.device from the memfd name (or the header's name): the id after "floe-dev-".
void name_device(RegionReport& r);

/// A region opened read-only: mapped PROT_READ/MAP_SHARED when it is sealed against shrinking,
/// otherwise copied with pread (a file that can shrink under a mapping would SIGBUS the reader).
class OpenedRegion {
 public:
  /// Opens `path` O_RDONLY (a /proc/PID/fd/N link reopens the memfd itself).
  [[nodiscard]] static Result<OpenedRegion> open(const std::string& path);
  OpenedRegion(OpenedRegion&&) noexcept;
  OpenedRegion& operator=(OpenedRegion&&) noexcept;
  OpenedRegion(const OpenedRegion&) = delete;
  OpenedRegion& operator=(const OpenedRegion&) = delete;
  ~OpenedRegion();

  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  [[nodiscard]] std::uint64_t file_size() const noexcept { return size_; }
  [[nodiscard]] int seals() const noexcept { return seals_; }
  [[nodiscard]] bool snapshot() const noexcept { return copy_ != nullptr; }
  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  [[nodiscard]] std::uint64_t inode() const noexcept { return ino_; }
  [[nodiscard]] std::uint64_t device_number() const noexcept { return dev_; }
  /// Re-reads a snapshot (no-op for a mapping, which is always live).
  [[nodiscard]] Status refresh();
  /// decode_region over this region, with source, memfd name and snapshot filled in.
  [[nodiscard]] RegionReport decode(const DecodeOptions& options) const;

 private:
  OpenedRegion() = default;
  void release() noexcept;
  std::string path_;
  int fd_ = -1;
  const std::byte* data_ = nullptr;
  std::uint64_t size_ = 0;
  int seals_ = -1;
  std::uint64_t dev_ = 0, ino_ = 0;
  struct AlignedFree {
    void operator()(std::byte* p) const noexcept;
  };
  std::unique_ptr<std::byte[], AlignedFree> copy_;
};

// ---- /proc ---------------------------------------------------------------------------------------

/// The floe-core process serving `socket_dir`: the process holding a socket bound to
/// `socket_dir/client.sock` (inode from /proc/net/unix, holder from /proc/*/fd); if none is found
/// and `by_name`, the only process whose /proc/PID/exe is named floe-core. Errors say which step failed.
[[nodiscard]] Result<pid_t> find_core(const std::string& socket_dir, bool by_name);
/// /proc/PID/fd/N paths of the process's memfds named "floe-*" (its regions), by fd number.
[[nodiscard]] Result<std::vector<std::string>> region_fds(pid_t pid);
/// The memfd name a /proc/.../fd link points at ("" if it is not a memfd).
[[nodiscard]] std::string memfd_name_of(const std::string& path);
/// Which processes hold an fd to which memfd: one pass over /proc/*/fd (memfd links only).
class HolderIndex {
 public:
  /// Scans every visible process but this one.
  [[nodiscard]] static HolderIndex scan();
  /// The processes holding the file (dev, ino), but `exclude`.
  [[nodiscard]] std::vector<Holder> holders(std::uint64_t dev, std::uint64_t ino, pid_t exclude) const;

 private:
  std::vector<std::tuple<std::uint64_t, std::uint64_t, pid_t>> entries_;  // sorted (dev, ino, pid)
};
/// comm and cmdline of `pid` (empty strings if it is gone).
[[nodiscard]] Holder describe_process(pid_t pid);

// ---- Output --------------------------------------------------------------------------------------

[[nodiscard]] nlohmann::json to_json(const RegionReport& r);
/// The one-shot report for people. `rates` (watch mode) adds messages/s and changes/s columns.
struct Rates {
  double tx_per_s = 0, rx_per_s = 0, changes_per_s = 0;
};
[[nodiscard]] std::string format_region(const RegionReport& r, bool rings, bool tree, const Rates* rates = nullptr);
/// "F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL", "none", or "unknown".
[[nodiscard]] std::string seal_names(int seals);

}  // namespace floe::inspect
