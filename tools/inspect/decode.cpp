// decode_region: every check a reader of a floe region can make, in layout order, each one before
// the bytes it guards are used. See docs/INSPECT.md for the list of invariants.
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <thread>

#include "floe/ipc/components.hpp"
#include "floe/ipc/device_region.hpp"
#include "floe/ipc/doorbell.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/ring.hpp"
#include "floe/ipc/tree.hpp"
#include "inspect.hpp"

namespace floe::inspect {
namespace {

using nlohmann::json;

constexpr std::string_view kDevicePrefix = "floe-dev-";
constexpr unsigned kWalkAttempts = 64;

/// A plain field of a header written once before sharing: copied, never referenced.
template <typename T>
T field(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// An atomic field (8- or 4-byte aligned inside a validated header): one acquire load through
/// atomic_ref on read-only memory, which on every target floe supports is a plain aligned load.
template <typename T>
T atomic_field(const std::byte* p) noexcept {
  return std::atomic_ref<T>(*const_cast<T*>(reinterpret_cast<const T*>(p))).load(std::memory_order_acquire);
}

bool is_power_of_two(std::uint64_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

class Checker {
 public:
  Checker(std::span<const std::byte> bytes, RegionReport& r, const DecodeOptions& o) : bytes_(bytes), r_(r), o_(o) {}

  void run() {
    if (!region_header()) return;
    if (r_.kind == static_cast<std::uint32_t>(ipc::RegionKind::kDoorbells)) return doorbells();
    if (r_.kind != static_cast<std::uint32_t>(ipc::RegionKind::kDevice)) return;  // nothing more is defined
    auto parts = ipc::device_region_attach(
        {const_cast<std::byte*>(bytes_.data()), bytes_.size()});  // reads only: the span is never written
    if (!parts) return fail("device header", parts.error().message);
    const auto base = reinterpret_cast<std::uintptr_t>(bytes_.data());
    ring("tx", parts->tx, reinterpret_cast<std::uintptr_t>(parts->tx.data()) - base);
    ring("rx", parts->rx, reinterpret_cast<std::uintptr_t>(parts->rx.data()) - base);
    tree(parts->tree, reinterpret_cast<std::uintptr_t>(parts->tree.data()) - base);
  }

 private:
  void fail(std::string where, std::string what) { r_.violations.push_back({std::move(where), std::move(what)}); }

  bool region_header() {
    const std::byte* p = bytes_.data();
    if (bytes_.size() < sizeof(ipc::RegionHeader)) {
      fail("region header", fmt::format("truncated: {} bytes, less than the {}-byte region header", bytes_.size(),
                                        sizeof(ipc::RegionHeader)));
      return false;
    }
    r_.magic = field<std::uint64_t>(p + offsetof(ipc::RegionHeader, magic));
    r_.layout_version = field<std::uint32_t>(p + offsetof(ipc::RegionHeader, layout_version));
    r_.header_size = field<std::uint32_t>(p + offsetof(ipc::RegionHeader, header_size));
    r_.size_field = field<std::uint64_t>(p + offsetof(ipc::RegionHeader, size));
    r_.kind = field<std::uint32_t>(p + offsetof(ipc::RegionHeader, kind));
    r_.creator_pid = field<std::uint32_t>(p + offsetof(ipc::RegionHeader, creator_pid));
    r_.generation = atomic_field<std::uint32_t>(p + offsetof(ipc::RegionHeader, generation));
    r_.flags = atomic_field<std::uint32_t>(p + offsetof(ipc::RegionHeader, flags));
    const auto* name = reinterpret_cast<const char*>(p + offsetof(ipc::RegionHeader, name));
    r_.header_name.assign(name, ::strnlen(name, sizeof(ipc::RegionHeader::name)));
    r_.header_readable = true;

    if (r_.magic != ipc::kRegionMagic) {
      fail("region header", fmt::format("bad magic {:#018x} (expected {:#018x}, \"FLOEREG1\")", r_.magic,
                                        ipc::kRegionMagic));
      return false;
    }
    if (r_.layout_version != ipc::kRegionLayoutVersion) {
      fail("region header", fmt::format("layout version {} (this build reads {})", r_.layout_version,
                                        ipc::kRegionLayoutVersion));
      return false;
    }
    if (r_.header_size != sizeof(ipc::RegionHeader)) {
      fail("region header", fmt::format("header size {} (expected {})", r_.header_size, sizeof(ipc::RegionHeader)));
      return false;
    }
    if (r_.size_field != r_.file_size) {
      fail("region header", fmt::format("size field {} but the file has {} bytes{}", r_.size_field, r_.file_size,
                                        r_.size_field > r_.file_size ? " (truncated region)" : ""));
      return false;
    }
    if (r_.kind > static_cast<std::uint32_t>(ipc::RegionKind::kDoorbells)) {
      fail("region header", fmt::format("unknown region kind {}", r_.kind));
      return false;
    }
    // Without these seals a peer could shrink the file under every mapping of it (SIGBUS).
    const int need = ipc::kRegionSeals;
    if (r_.seals >= 0 && (r_.seals & need) != need) {
      fail("seals", fmt::format("{} present, {} missing", seal_names(r_.seals), seal_names(need & ~r_.seals)));
    } else if (r_.seals < 0) {
      fail("seals", "not a sealable file (F_GET_SEALS failed): not a memfd");
    }
    return true;
  }

  /// Doorbells back to back from the payload offset, to the end of the region.
  void doorbells() {
    std::uint64_t at = ipc::kRegionPayloadOffset;
    // The region is the doorbells rounded up to whole pages: zeros after the last one.
    auto padding_from = [&](std::uint64_t from) {
      return bytes_.size() - from < 4096 &&
             std::all_of(bytes_.begin() + static_cast<std::ptrdiff_t>(from), bytes_.end(),
                         [](std::byte b) { return b == std::byte{0}; });
    };
    for (std::uint32_t i = 0; at < bytes_.size() && !padding_from(at); ++i) {
      DoorbellReport& d = r_.doorbells.emplace_back();
      d.index = i;
      d.offset = at;
      const std::string where = fmt::format("doorbell {}", i);
      // Doorbell::attach validates everything it reads (a copy of each field, checked before use)
      // and only reads; the span is never written.
      auto bell = ipc::Doorbell::attach({const_cast<std::byte*>(bytes_.data()) + at, bytes_.size() - at});
      if (!bell) return fail(where, bell.error().message);
      d.readable = true;
      d.slots = bell->slots();
      const std::byte* h = bytes_.data() + at;
      d.sleeping = atomic_field<std::uint32_t>(h + offsetof(ipc::DoorbellHeader, sleeping)) != 0;
      d.signals = atomic_field<std::uint64_t>(h + offsetof(ipc::DoorbellHeader, signals));
      d.wakeups = atomic_field<std::uint64_t>(h + offsetof(ipc::DoorbellHeader, wakeups));
      d.takes = atomic_field<std::uint64_t>(h + offsetof(ipc::DoorbellHeader, takes));
      // Through the handle: its offsets were checked once and are not read again from the region,
      // which the provider may be rewriting.
      d.pending = bell->pending_count();
      at += ipc::doorbell_footprint(d.slots);
    }
    if (r_.doorbells.empty()) fail("doorbells", "the region holds no doorbell");
  }

  void ring(const std::string& name, std::span<std::byte> span, std::uint64_t offset) {
    RingReport& rr = r_.rings.emplace_back();
    rr.name = name;
    rr.offset = offset;
    rr.footprint = span.size();
    const std::string where = name + " ring";
    const std::byte* h = span.data();
    if (span.size() < sizeof(ipc::RingHeader)) {
      return fail(where, fmt::format("{} bytes, less than a ring header ({})", span.size(), sizeof(ipc::RingHeader)));
    }
    const auto magic = field<std::uint32_t>(h + offsetof(ipc::RingHeader, magic));
    if (magic != ipc::kRingMagic) {
      return fail(where, fmt::format("bad magic {:#010x} (expected {:#010x}, \"RING\")", magic, ipc::kRingMagic));
    }
    rr.layout_version = field<std::uint32_t>(h + offsetof(ipc::RingHeader, layout_version));
    if (rr.layout_version != ipc::kRingLayoutVersion) {
      return fail(where, fmt::format("layout version {} (this build reads {})", rr.layout_version,
                                     ipc::kRingLayoutVersion));
    }
    rr.capacity = field<std::uint64_t>(h + offsetof(ipc::RingHeader, capacity));
    const auto data_offset = field<std::uint64_t>(h + offsetof(ipc::RingHeader, data_offset));
    if (!is_power_of_two(rr.capacity) || rr.capacity < 256) {
      return fail(where, fmt::format("capacity {} is not a power of two >= 256", rr.capacity));
    }
    if (data_offset < sizeof(ipc::RingHeader) || data_offset % kCacheLine != 0 || data_offset > span.size() ||
        rr.capacity > span.size() - data_offset) {
      return fail(where, fmt::format("data area [{}, +{}) does not fit the ring's {} bytes", data_offset, rr.capacity,
                                     span.size()));
    }
    rr.notify_mode = field<std::uint32_t>(h + offsetof(ipc::RingHeader, notify_mode));
    if (rr.notify_mode < 1 || rr.notify_mode > 4) {
      return fail(where, fmt::format("unknown notify mode {}", rr.notify_mode));
    }
    rr.readable = true;
    rr.records_pushed = atomic_field<std::uint64_t>(h + offsetof(ipc::RingHeader, records_pushed));
    rr.notifications_sent = atomic_field<std::uint64_t>(h + offsetof(ipc::RingHeader, notifications_sent));
    rr.high_water = atomic_field<std::uint64_t>(h + offsetof(ipc::RingHeader, high_water));
    rr.records_popped = atomic_field<std::uint64_t>(h + offsetof(ipc::RingHeader, records_popped));
    rr.consumer_wakeups = atomic_field<std::uint64_t>(h + offsetof(ipc::RingHeader, consumer_wakeups));
    rr.overflow = atomic_field<std::uint32_t>(h + offsetof(ipc::RingHeader, overflow)) != 0;
    rr.consumer_sleeping = atomic_field<std::uint32_t>(h + offsetof(ipc::RingHeader, consumer_sleeping)) != 0;
    const std::byte* data = h + data_offset;

    const auto load_head = [h] {
      // SYNC(head): acquire, as the producer does: bytes at or above head are not yet reused.
      return atomic_field<std::uint64_t>(h + offsetof(ipc::RingHeader, head));
    };
    for (unsigned attempt = 0; attempt < kWalkAttempts; ++attempt) {
      // head, tail, head again: when both heads agree, head and tail held at the same instant (the
      // consumer never passes a tail, the producer never passes head + capacity), so the checks
      // below are exact for a live ring, not artefacts of reading two moving indices.
      rr.head = load_head();
      // SYNC(tail): acquire, as a consumer does: the records below tail are fully written.
      rr.tail = atomic_field<std::uint64_t>(h + offsetof(ipc::RingHeader, tail));
      if (load_head() != rr.head) continue;
      if (rr.head % ipc::kRecordAlign != 0 || rr.tail % ipc::kRecordAlign != 0) {
        rr.walk = "indices misaligned";
        return fail(where, fmt::format("head {} or tail {} is not {}-byte aligned", rr.head, rr.tail,
                                       ipc::kRecordAlign));
      }
      if (rr.head > rr.tail) {
        rr.walk = "head past tail";
        return fail(where, fmt::format("head {} is past tail {}", rr.head, rr.tail));
      }
      rr.occupancy = rr.tail - rr.head;
      if (rr.occupancy > rr.capacity) {
        rr.walk = "indices out of range";
        return fail(where, fmt::format("tail {} is {} bytes past head {}, more than the capacity {}", rr.tail,
                                       rr.occupancy, rr.head, rr.capacity));
      }
      std::string problem = walk(data, rr);
      if (problem.empty()) {
        rr.walk = "ok";
        return;
      }
      // The consumer may have released (and the producer reused) bytes while we walked them: only a
      // problem found while head stood still is the ring's.
      if (load_head() == rr.head) {
        rr.walk = problem;
        return fail(where, problem);
      }
    }
    rr.occupancy = rr.tail >= rr.head ? rr.tail - rr.head : 0;
    rr.walk = "busy (head kept moving; not checked)";
  }

  /// Walks the record headers from head to tail; "" if every length is consistent.
  static std::string walk(const std::byte* data, RingReport& rr) {
    rr.pending_records = 0;
    const std::uint64_t cap = rr.capacity;
    for (std::uint64_t at = rr.head; at != rr.tail;) {
      const std::uint64_t avail = rr.tail - at;
      const std::uint64_t pos = at & (cap - 1);
      const std::uint64_t to_end = cap - pos;
      const ipc::RecordHeader rec = ipc::detail::read_record_header(data + pos);
      if (rec.type == ipc::kPadRecord) {
        if (rec.length != to_end - sizeof(ipc::RecordHeader)) {
          return fmt::format("pad record length {} at offset {} does not reach the end of the data area "
                             "(expected {})",
                             rec.length, pos, to_end - sizeof(ipc::RecordHeader));
        }
        if (to_end > avail) {
          return fmt::format("pad record at offset {} spans {} bytes but only {} are published", pos, to_end, avail);
        }
        at += to_end;
        continue;
      }
      const std::uint64_t size = ipc::record_bytes(rec.length);
      if (size > avail) {
        return fmt::format("record length {} at offset {} runs past the tail ({} bytes published from there)",
                           rec.length, pos, avail);
      }
      if (size > to_end) {
        return fmt::format("record length {} at offset {} runs past the end of the {}-byte data area", rec.length,
                           pos, cap);
      }
      ++rr.pending_records;
      at += size;
    }
    return {};
  }

  void tree(std::span<std::byte> span, std::uint64_t offset) {
    TreeReport& t = r_.tree;
    t.offset = offset;
    t.size = span.size();
    // One validation, one index: the provider can rewrite the tree between two reads of it, so
    // every lookup below goes through this reader and never mixes two views.
    auto reader = ipc::TreeReader::attach(span);
    if (!reader) return fail("tree", reader.error().message);
    t.readable = true;
    t.entity_count = reader->entity_count();
    std::vector<OddSlot> odd;
    for (std::uint32_t e = 0; e < t.entity_count; ++e) {
      EntityReport& er = t.entities.emplace_back();
      er.index = e;
      er.change_seq = reader->change_seq(e);
      t.change_total += er.change_seq;
      if (!o_.values && !o_.wait_for_odd) continue;
      for (const auto& info : reader->components(e)) {
        ComponentReport c = component(*reader, e, info);
        if (c.odd) {
          t.odd_slots.push_back(fmt::format("entity {} {} (seq {})", e, c.name, *c.blob_seq));
          odd.push_back({e, info.component, c.name, *c.blob_seq});
        }
        if (o_.values) er.components.push_back(std::move(c));
      }
    }
    if (o_.wait_for_odd) stuck_check(*reader, std::move(odd));
  }

  ComponentReport component(const ipc::TreeReader& reader, std::uint32_t e, const ipc::TreeEntryInfo& info) const {
    ComponentReport c;
    c.id = ipc::to_id(info.component);
    const std::string_view known = ipc::component_name(info.component);
    c.name = known.empty() ? fmt::format("#{}", c.id) : std::string(known);
    c.encoding = std::string(ipc::to_string(info.encoding));
    c.max_bytes = info.max_bytes;
    if (ipc::is_big(info.encoding)) {
      c.blob_seq = reader.blob_seq(e, info.component);
      c.odd = c.blob_seq && (*c.blob_seq & 1U) != 0;
      if (info.encoding == ipc::Encoding::kText) {
        auto text = reader.read_text(e, info.component, o_.seqlock_attempts);
        if (text) {
          c.ok = true;
          c.value = *text;
          c.text = fmt::format("\"{}\"", *text);
        } else {
          c.text = fmt::format("unreadable: {}", text.error().message);
        }
      } else {
        auto list = reader.read_list(e, info.component, o_.seqlock_attempts);
        if (list) {
          c.ok = true;
          c.value = *list;
          std::string s = "[";
          for (std::size_t i = 0; i < list->size(); ++i) s += fmt::format("{}\"{}\"", i ? ", " : "", (*list)[i]);
          c.text = s + "]";
        } else {
          c.text = fmt::format("unreadable: {}", list.error().message);
        }
      }
      return c;
    }
    const auto raw = reader.get_raw(e, info.component);
    if (info.encoding == ipc::Encoding::kMarker) {
      c.ok = true;
      c.value = true;
      c.text = "present";
      return c;
    }
    if (!raw) {
      c.text = "unreadable";
      return c;
    }
    const auto v = ipc::unpack(info.encoding, *raw);
    if (!v) {
      c.text = fmt::format("invalid {} bits {:#x}", c.encoding, *raw);
      return c;
    }
    c.ok = true;
    c.text = ipc::format_value(info.component, *v);
    switch (info.encoding) {
      case ipc::Encoding::kBool: c.value = std::get<bool>(*v); break;
      case ipc::Encoding::kInt64: c.value = std::get<std::int64_t>(*v); break;
      case ipc::Encoding::kReal: {
        const double d = std::get<double>(*v);
        c.value = std::isfinite(d) ? json(d) : json(c.text);
        break;
      }
      default: c.value = c.text; break;  // enum name, "#rrggbb", ISO 8601
    }
    return c;
  }

  /// A text or list blob whose seqlock sequence was odd when its component was read.
  struct OddSlot {
    std::uint32_t entity;
    ipc::Component component;
    std::string name;
    std::uint32_t seq;
  };

  /// --validate: an odd sequence is a write in progress unless it stays odd, unchanged, for the
  /// whole bounded wait (a writer that died mid-write). One wait for all the odd blobs of the tree
  /// (a provider can leave thousands odd), and none once a violation is found: --validate reports
  /// only the first.
  void stuck_check(const ipc::TreeReader& reader, std::vector<OddSlot> odd) {
    if (odd.empty() || !r_.violations.empty()) return;
    const auto deadline = std::chrono::steady_clock::now() + o_.seqlock_wait;
    for (;;) {
      // A blob whose writer moved on is not stuck.
      std::erase_if(odd, [&](const OddSlot& s) { return reader.blob_seq(s.entity, s.component) != s.seq; });
      if (odd.empty()) return;
      if (std::chrono::steady_clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    const OddSlot& s = odd.front();
    fail("tree", fmt::format("entity {} {}: seqlock sequence {} stayed odd for {} ms (writer stuck or dead "
                             "mid-write){}",
                             s.entity, s.name, s.seq, o_.seqlock_wait.count(),
                             odd.size() > 1 ? fmt::format("; {} other blobs too", odd.size() - 1) : ""));
  }

  std::span<const std::byte> bytes_;
  RegionReport& r_;
  const DecodeOptions& o_;
};

}  // namespace

std::string seal_names(int seals) {
  if (seals < 0) return "unknown";
  std::string out;
  const std::pair<int, const char*> names[] = {
      {0x0001, "F_SEAL_SEAL"}, {0x0002, "F_SEAL_SHRINK"}, {0x0004, "F_SEAL_GROW"},
      {0x0008, "F_SEAL_WRITE"}, {0x0010, "F_SEAL_FUTURE_WRITE"}};
  for (const auto& [bit, name] : names) {
    if ((seals & bit) != 0) out += (out.empty() ? "" : "|") + std::string(name);
  }
  return out.empty() ? "none" : out;
}

void name_device(RegionReport& r) {
  // The memfd name is whole; the header keeps only its first 31 bytes.
  const std::string& name = !r.memfd_name.empty() ? r.memfd_name : r.header_name;
  r.device = name.starts_with(kDevicePrefix) ? name.substr(kDevicePrefix.size()) : std::string();
}

RegionReport decode_region(std::span<const std::byte> bytes, std::uint64_t file_size, int seals,
                           const DecodeOptions& options) {
  RegionReport r;
  r.file_size = file_size;
  r.seals = seals;
  Checker(bytes.first(std::min<std::uint64_t>(bytes.size(), file_size)), r, options).run();
  name_device(r);
  return r;
}

}  // namespace floe::inspect
