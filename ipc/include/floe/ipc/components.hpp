// The component catalogue (generated from components.def) and the value encodings.
//
// Every component kind has a stable numeric id (append-only, see components.def), a name and an
// encoding. Small encodings pack into one uint64 that lives in a std::atomic<uint64_t> column of
// the device tree; big encodings (text, lists) live in seqlock-protected blobs.
//
// Small encodings, bit for bit (the layout other processes read; docs/DEVICE_TREE.md):
//   marker     no value: the component's presence is the information (no column storage)
//   bool       0 or 1
//   int64      the two's-complement bits of the int64
//   real       std::bit_cast<uint64_t>(double)
//   enum       the value number, 0 .. 65535 (names in the catalogue)
//   rgb        0x00RRGGBB (bits 24..63 zero)
//   timestamp  int64 microseconds since 1970-01-01T00:00:00Z, as its two's-complement bits
// Big encodings:
//   text       UTF-8 bytes, no terminator
//   list       u32 count, then per item u32 byte length + bytes (little-endian, unpadded)
//              e.g. ["on","off"] = 02000000 02000000 "on" 03000000 "off" (17 bytes)
//
// Everything here is constexpr or thread-safe: the catalogue is immutable.
#pragma once

#include <array>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "floe/ipc/result.hpp"

namespace floe::ipc {

/// How a component's value is stored. The numbering is part of the shared-memory layout (the
/// column directory records each column's encoding) and is append-only like the catalogue.
enum class Encoding : std::uint8_t {
  kMarker = 0,
  kBool = 1,
  kInt64 = 2,
  kReal = 3,
  kEnum = 4,
  kRgb = 5,
  kTimestamp = 6,
  kText = 7,
  kList = 8,
};
inline constexpr std::uint8_t kEncodingCount = 9;

/// Big kinds live in seqlock blobs; small ones in one atomic word per slot.
[[nodiscard]] constexpr bool is_big(Encoding e) noexcept { return e == Encoding::kText || e == Encoding::kList; }
[[nodiscard]] constexpr bool is_valid_encoding(std::uint8_t raw) noexcept { return raw < kEncodingCount; }
[[nodiscard]] std::string_view to_string(Encoding e) noexcept;

/// Every component kind, with its stable id (see components.def).
enum class Component : std::uint16_t {
  kNone = 0,  // reserved: "no component"
#define FLOE_COMPONENT(id, name, encoding, doc, ...) name = id,
#include "floe/ipc/components.def"
#undef FLOE_COMPONENT
};

[[nodiscard]] constexpr std::uint16_t to_id(Component c) noexcept { return static_cast<std::uint16_t>(c); }

// ---- Values -------------------------------------------------------------------------------------

/// The value of a marker component: there is none.
struct Marker {
  friend constexpr bool operator==(Marker, Marker) noexcept = default;
};
/// An enum component's value number; the catalogue names it (enum_value_name).
struct EnumValue {
  std::uint16_t value = 0;
  friend constexpr bool operator==(EnumValue, EnumValue) noexcept = default;
};
/// An 8-bit-per-channel colour.
struct Rgb {
  std::uint8_t r = 0, g = 0, b = 0;
  [[nodiscard]] constexpr std::uint32_t packed() const noexcept {
    return (std::uint32_t{r} << 16) | (std::uint32_t{g} << 8) | std::uint32_t{b};
  }
  [[nodiscard]] static constexpr Rgb from_packed(std::uint32_t p) noexcept {
    return {static_cast<std::uint8_t>(p >> 16), static_cast<std::uint8_t>(p >> 8), static_cast<std::uint8_t>(p)};
  }
  friend constexpr bool operator==(Rgb, Rgb) noexcept = default;
};
/// A point in time with microsecond resolution (UTC).
using Timestamp = std::chrono::sys_time<std::chrono::microseconds>;

/// A small component's value. The alternative's index equals its Encoding's number, so
/// `encoding_of(v)` is `v.index()`.
using Value = std::variant<Marker, bool, std::int64_t, double, EnumValue, Rgb, Timestamp>;
static_assert(std::variant_size_v<Value> == static_cast<std::size_t>(Encoding::kText));
static_assert(std::is_same_v<std::variant_alternative_t<static_cast<std::size_t>(Encoding::kReal), Value>, double>);
static_assert(std::is_same_v<std::variant_alternative_t<static_cast<std::size_t>(Encoding::kTimestamp), Value>, Timestamp>);

[[nodiscard]] constexpr Encoding encoding_of(const Value& v) noexcept { return static_cast<Encoding>(v.index()); }

// ---- The catalogue ------------------------------------------------------------------------------

struct ComponentInfo {
  Component id;
  std::string_view name;
  Encoding encoding;
  std::string_view doc;
  std::span<const std::string_view> enum_values;  // names of values 0, 1, ... (enums only)
};

namespace detail {
// One array per component, led by a dummy so that non-enum kinds do not declare a zero-size array.
#define FLOE_COMPONENT(id, name, encoding, doc, ...) \
  inline constexpr std::string_view k##name##EnumValues[] = {"" __VA_OPT__(, ) __VA_ARGS__};
#include "floe/ipc/components.def"
#undef FLOE_COMPONENT
}  // namespace detail

/// Every kind, in catalogue (= id) order.
inline constexpr ComponentInfo kComponents[] = {
#define FLOE_COMPONENT(id, name, encoding, doc, ...) \
  {Component::name, #name, Encoding::k##encoding, doc, std::span(detail::k##name##EnumValues).subspan(1)},
#include "floe/ipc/components.def"
#undef FLOE_COMPONENT
};
inline constexpr std::size_t kComponentCount = std::size(kComponents);

/// The largest id in this build's catalogue; ids above it are unknown (a newer provider's kinds).
inline constexpr std::uint16_t kMaxComponentId = [] {
  std::uint16_t m = 0;
  for (const auto& c : kComponents) m = to_id(c.id) > m ? to_id(c.id) : m;
  return m;
}();

namespace detail {
inline constexpr auto kComponentIndexById = [] {
  std::array<std::int16_t, kMaxComponentId + 1> index{};
  for (auto& i : index) i = -1;
  for (std::size_t i = 0; i < kComponentCount; ++i) index[to_id(kComponents[i].id)] = static_cast<std::int16_t>(i);
  return index;
}();

constexpr bool ids_are_unique_and_nonzero() {
  for (std::size_t i = 0; i < kComponentCount; ++i) {
    if (to_id(kComponents[i].id) == 0) return false;
    for (std::size_t j = i + 1; j < kComponentCount; ++j) {
      if (kComponents[i].id == kComponents[j].id || kComponents[i].name == kComponents[j].name) return false;
    }
  }
  return true;
}
constexpr bool enums_and_only_enums_have_value_names() {
  for (const auto& c : kComponents) {
    if ((c.encoding == Encoding::kEnum) != !c.enum_values.empty()) return false;
    if (c.enum_values.size() > 65536) return false;
  }
  return true;
}
constexpr char ascii_lower(char c) noexcept { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }
constexpr bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  }
  return true;
}
}  // namespace detail

static_assert(detail::ids_are_unique_and_nonzero(), "components.def: duplicate id or name, or id 0");
static_assert(detail::enums_and_only_enums_have_value_names(), "components.def: enum kinds need value names");

/// The catalogue entry of `c`, or nullptr if this build does not know the id. O(1).
[[nodiscard]] constexpr const ComponentInfo* find_component(Component c) noexcept {
  const std::uint16_t id = to_id(c);
  if (id > kMaxComponentId) return nullptr;
  const std::int16_t i = detail::kComponentIndexById[id];
  return i < 0 ? nullptr : &kComponents[static_cast<std::size_t>(i)];
}
/// The catalogue entry named `name` (ASCII case-insensitive: "dimmer" finds Dimmer), or nullptr.
[[nodiscard]] constexpr const ComponentInfo* find_component(std::string_view name) noexcept {
  for (const auto& c : kComponents) {
    if (detail::iequals(c.name, name)) return &c;
  }
  return nullptr;
}
/// The name of `c`, or "" if unknown.
[[nodiscard]] constexpr std::string_view component_name(Component c) noexcept {
  const ComponentInfo* info = find_component(c);
  return info ? info->name : std::string_view{};
}
/// The name of value `v` of enum kind `c`, or "" if `c` is not an enum or `v` is not named (a value
/// from a newer catalogue).
[[nodiscard]] constexpr std::string_view enum_value_name(Component c, std::uint16_t v) noexcept {
  const ComponentInfo* info = find_component(c);
  if (info == nullptr || v >= info->enum_values.size()) return {};
  return info->enum_values[v];
}
/// The value of enum kind `c` named `name` (exact match), if any.
[[nodiscard]] constexpr std::optional<EnumValue> enum_value(Component c, std::string_view name) noexcept {
  const ComponentInfo* info = find_component(c);
  if (info == nullptr) return std::nullopt;
  for (std::size_t i = 0; i < info->enum_values.size(); ++i) {
    if (info->enum_values[i] == name) return EnumValue{static_cast<std::uint16_t>(i)};
  }
  return std::nullopt;
}

// ---- Encode / decode ----------------------------------------------------------------------------

enum class PackStatus : std::uint8_t {
  kOk,
  kWrongType,   // the Value's alternative is not the component's encoding
  kOutOfRange,  // an enum value the catalogue does not name
  kBigKind,     // text/list: not packable into a word (use the blob API)
};
[[nodiscard]] std::string_view to_string(PackStatus s) noexcept;

/// Packs `v` into its word for kind `info`. Hot path: no allocation, no Result.
[[nodiscard]] constexpr PackStatus pack(const ComponentInfo& info, const Value& v, std::uint64_t& bits) noexcept {
  if (is_big(info.encoding)) return PackStatus::kBigKind;
  if (encoding_of(v) != info.encoding) return PackStatus::kWrongType;
  switch (info.encoding) {
    case Encoding::kMarker: bits = 0; break;
    case Encoding::kBool: bits = std::get<bool>(v) ? 1 : 0; break;
    case Encoding::kInt64: bits = static_cast<std::uint64_t>(std::get<std::int64_t>(v)); break;
    case Encoding::kReal: bits = std::bit_cast<std::uint64_t>(std::get<double>(v)); break;
    case Encoding::kEnum: {
      const std::uint16_t n = std::get<EnumValue>(v).value;
      if (n >= info.enum_values.size()) return PackStatus::kOutOfRange;
      bits = n;
      break;
    }
    case Encoding::kRgb: bits = std::get<Rgb>(v).packed(); break;
    case Encoding::kTimestamp:
      bits = static_cast<std::uint64_t>(std::get<Timestamp>(v).time_since_epoch().count());
      break;
    case Encoding::kText:
    case Encoding::kList: return PackStatus::kBigKind;
  }
  return PackStatus::kOk;
}

/// Unpacks a word read from shared memory. nullopt if the bits are not a valid encoding (a bool
/// other than 0/1, an enum above 65535, an RGB with bits above 23 set: a hostile or corrupt
/// writer) or `encoding` is big. Enum numbers the catalogue does not name are accepted (a newer
/// provider's values). Hot path: no allocation.
[[nodiscard]] constexpr std::optional<Value> unpack(Encoding encoding, std::uint64_t bits) noexcept {
  switch (encoding) {
    case Encoding::kMarker: return Value{Marker{}};
    case Encoding::kBool:
      if (bits > 1) return std::nullopt;
      return Value{bits == 1};
    case Encoding::kInt64: return Value{static_cast<std::int64_t>(bits)};
    case Encoding::kReal: return Value{std::bit_cast<double>(bits)};
    case Encoding::kEnum:
      if (bits > 0xFFFF) return std::nullopt;
      return Value{EnumValue{static_cast<std::uint16_t>(bits)}};
    case Encoding::kRgb:
      if (bits > 0xFFFFFF) return std::nullopt;
      return Value{Rgb::from_packed(static_cast<std::uint32_t>(bits))};
    case Encoding::kTimestamp:
      return Value{Timestamp{std::chrono::microseconds{static_cast<std::int64_t>(bits)}}};
    case Encoding::kText:
    case Encoding::kList: break;
  }
  return std::nullopt;
}

/// pack() with an Error saying what was wrong ("Dimmer holds real, not bool"). For tools and
/// protocol boundaries.
[[nodiscard]] Result<std::uint64_t> encode(Component c, const Value& v);
/// unpack() with an Error ("Switch: 7 is not a valid bool (0 or 1)").
[[nodiscard]] Result<Value> decode(Component c, std::uint64_t bits);

/// Human-readable rendering for CLIs: enums by name ("open", or the number if unnamed), RGB as
/// "#rrggbb", timestamps as ISO 8601 UTC, markers as "present".
[[nodiscard]] std::string format_value(Component c, const Value& v);

// ---- The list blob encoding ---------------------------------------------------------------------

/// Bytes the list encoding of `items` needs: 4 + sum(4 + size).
[[nodiscard]] constexpr std::size_t encoded_list_size(std::span<const std::string> items) noexcept {
  std::size_t n = 4;
  for (const auto& s : items) n += 4 + s.size();
  return n;
}
[[nodiscard]] constexpr std::size_t encoded_list_size(std::span<const std::string_view> items) noexcept {
  std::size_t n = 4;
  for (const auto& s : items) n += 4 + s.size();
  return n;
}

/// Writes the list encoding of `items` into `out`, which must hold encoded_list_size(items) bytes.
/// Returns the bytes written. Writer side: no allocation.
std::size_t encode_list(std::span<const std::string> items, std::span<std::byte> out) noexcept;
std::size_t encode_list(std::span<const std::string_view> items, std::span<std::byte> out) noexcept;
/// Parses an untrusted list blob: every count and length is checked against the bytes present,
/// and trailing bytes are refused.
[[nodiscard]] Result<std::vector<std::string>> decode_list(std::span<const std::byte> blob);

}  // namespace floe::ipc
