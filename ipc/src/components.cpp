#include "floe/ipc/components.hpp"

#include <charconv>
#include <cstdio>
#include <cstring>

namespace floe::ipc {

static_assert(std::endian::native == std::endian::little,
              "the list blob encoding and the tree layout are little-endian; a big-endian port must byte-swap");

std::string_view to_string(Encoding e) noexcept {
  switch (e) {
    case Encoding::kMarker: return "marker";
    case Encoding::kBool: return "bool";
    case Encoding::kInt64: return "int64";
    case Encoding::kReal: return "real";
    case Encoding::kEnum: return "enum";
    case Encoding::kRgb: return "rgb";
    case Encoding::kTimestamp: return "timestamp";
    case Encoding::kText: return "text";
    case Encoding::kList: return "list";
  }
  return "invalid";
}

std::string_view to_string(PackStatus s) noexcept {
  switch (s) {
    case PackStatus::kOk: return "ok";
    case PackStatus::kWrongType: return "value type does not match the component's encoding";
    case PackStatus::kOutOfRange: return "enum value not named in the catalogue";
    case PackStatus::kBigKind: return "text/list components are blobs, not packable values";
  }
  return "invalid";
}

namespace {

std::string describe(Component c) {
  const std::string_view name = component_name(c);
  return name.empty() ? "component #" + std::to_string(to_id(c)) : std::string(name);
}

}  // namespace

Result<std::uint64_t> encode(Component c, const Value& v) {
  const ComponentInfo* info = find_component(c);
  if (info == nullptr) return logic_error("component.encode", describe(c) + " is not in the catalogue");
  std::uint64_t bits = 0;
  switch (pack(*info, v, bits)) {
    case PackStatus::kOk: return bits;
    case PackStatus::kWrongType:
      return logic_error("component.encode", describe(c) + " holds " + std::string(to_string(info->encoding)) +
                                                 ", not " + std::string(to_string(encoding_of(v))));
    case PackStatus::kOutOfRange:
      return logic_error("component.encode", describe(c) + ": enum value " +
                                                 std::to_string(std::get<EnumValue>(v).value) + " is not one of its " +
                                                 std::to_string(info->enum_values.size()) + " named values");
    case PackStatus::kBigKind:
      return logic_error("component.encode", describe(c) + " holds " + std::string(to_string(info->encoding)) +
                                                 ", which is a blob: use the text/list API");
  }
  return logic_error("component.encode", "unreachable");
}

Result<Value> decode(Component c, std::uint64_t bits) {
  const ComponentInfo* info = find_component(c);
  if (info == nullptr) return logic_error("component.decode", describe(c) + " is not in the catalogue");
  if (is_big(info->encoding)) {
    return logic_error("component.decode", describe(c) + " holds " + std::string(to_string(info->encoding)) +
                                               ", which is a blob, not a packed word");
  }
  if (auto v = unpack(info->encoding, bits)) return *v;
  char hex[24];
  std::snprintf(hex, sizeof hex, "0x%llx", static_cast<unsigned long long>(bits));
  return logic_error("component.decode", describe(c) + ": " + hex + " is not a valid " +
                                             std::string(to_string(info->encoding)) + " encoding");
}

std::string format_value(Component c, const Value& v) {
  struct Visitor {
    Component c;
    std::string operator()(Marker) const { return "present"; }
    std::string operator()(bool b) const { return b ? "true" : "false"; }
    std::string operator()(std::int64_t i) const { return std::to_string(i); }
    std::string operator()(double d) const {
      char buf[32];
      const auto r = std::to_chars(buf, buf + sizeof buf, d);
      return std::string(buf, r.ptr);
    }
    std::string operator()(EnumValue e) const {
      const std::string_view name = enum_value_name(c, e.value);
      return name.empty() ? std::to_string(e.value) : std::string(name);
    }
    std::string operator()(Rgb rgb) const {
      char buf[8];
      std::snprintf(buf, sizeof buf, "#%02x%02x%02x", rgb.r, rgb.g, rgb.b);
      return buf;
    }
    std::string operator()(Timestamp t) const {
      using namespace std::chrono;
      // Years 0001-9999 only: a provider may store any 64-bit count, and far outside that range
      // the calendar arithmetic below overflows (and ISO 8601 needs more than four digits).
      constexpr std::int64_t kFirst = -62'135'596'800'000'000;   // 0001-01-01T00:00:00Z
      constexpr std::int64_t kLast = 253'402'300'799'999'999;    // 9999-12-31T23:59:59.999999Z
      const std::int64_t us = t.time_since_epoch().count();
      if (us < kFirst || us > kLast) return std::to_string(us) + "us since 1970";
      const auto day = floor<days>(t);
      const year_month_day ymd{day};
      const hh_mm_ss<microseconds> tod{t - day};
      char buf[48];
      std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02lld:%02lld:%02lld.%06lldZ", static_cast<int>(ymd.year()),
                    static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                    static_cast<long long>(tod.hours().count()), static_cast<long long>(tod.minutes().count()),
                    static_cast<long long>(tod.seconds().count()), static_cast<long long>(tod.subseconds().count()));
      return buf;
    }
  };
  return std::visit(Visitor{c}, v);
}

namespace {

template <typename Items>
std::size_t encode_list_impl(const Items& items, std::span<std::byte> out) noexcept {
  std::byte* p = out.data();
  const auto put_u32 = [&](std::uint32_t x) {
    std::memcpy(p, &x, 4);
    p += 4;
  };
  put_u32(static_cast<std::uint32_t>(items.size()));
  for (const auto& s : items) {
    put_u32(static_cast<std::uint32_t>(s.size()));
    if (!s.empty()) std::memcpy(p, s.data(), s.size());
    p += s.size();
  }
  return static_cast<std::size_t>(p - out.data());
}

}  // namespace

std::size_t encode_list(std::span<const std::string> items, std::span<std::byte> out) noexcept {
  return encode_list_impl(items, out);
}
std::size_t encode_list(std::span<const std::string_view> items, std::span<std::byte> out) noexcept {
  return encode_list_impl(items, out);
}

Result<std::vector<std::string>> decode_list(std::span<const std::byte> blob) {
  std::size_t at = 0;
  const auto get_u32 = [&](std::uint32_t& x) {
    if (blob.size() - at < 4) return false;
    std::memcpy(&x, blob.data() + at, 4);
    at += 4;
    return true;
  };
  std::uint32_t count = 0;
  if (!get_u32(count)) return logic_error("list.decode", "blob of " + std::to_string(blob.size()) + " bytes has no count");
  // Each item needs at least its 4-byte length: a lying count cannot make us reserve much.
  if (count > (blob.size() - at) / 4) {
    return logic_error("list.decode", "count " + std::to_string(count) + " cannot fit in " +
                                          std::to_string(blob.size()) + " bytes");
  }
  std::vector<std::string> items;
  items.reserve(count);
  for (std::uint32_t i = 0; i < count; ++i) {
    std::uint32_t len = 0;
    if (!get_u32(len)) return logic_error("list.decode", "item " + std::to_string(i) + " length runs past the end");
    if (len > blob.size() - at) {
      return logic_error("list.decode", "item " + std::to_string(i) + " claims " + std::to_string(len) +
                                            " bytes, only " + std::to_string(blob.size() - at) + " left");
    }
    items.emplace_back(reinterpret_cast<const char*>(blob.data() + at), len);
    at += len;
  }
  if (at != blob.size()) {
    return logic_error("list.decode", std::to_string(blob.size() - at) + " trailing bytes after " +
                                          std::to_string(count) + " items");
  }
  return items;
}

}  // namespace floe::ipc
