#include "floe/ipc/tree.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <new>

#include "floe/ipc/text.hpp"

namespace floe::ipc {
namespace {

constexpr std::uint64_t align_up(std::uint64_t x, std::uint64_t a) noexcept { return (x + a - 1) / a * a; }
constexpr std::size_t kLookupStride = std::size_t{kMaxComponentId} + 1;

constexpr std::uint64_t slot_bit(EntityIndex e) noexcept { return std::uint64_t{1} << (e % kTreeChunkSlots); }
constexpr std::uint64_t occupied_mask(std::uint32_t entity_count, std::uint32_t chunk) noexcept {
  const std::uint32_t in_chunk = std::min(kTreeChunkSlots, entity_count - chunk * kTreeChunkSlots);
  return in_chunk == kTreeChunkSlots ? ~std::uint64_t{0} : (std::uint64_t{1} << in_chunk) - 1;
}

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

std::string describe(Component c) {
  const std::string_view name = component_name(c);
  return name.empty() ? "component #" + std::to_string(to_id(c)) : std::string(name);
}

/// Where layout version 1 puts every section, given the counts. All inputs are bounded by the
/// limits before this is called, so nothing overflows.
struct Sections {
  std::uint64_t chunk_dir, column_dir, change_seq, values, values_size, blob_dir, blob_area, blob_area_size, total;
};
Sections place(std::uint64_t chunk_count, std::uint64_t column_count, std::uint64_t small_columns,
               std::uint64_t blob_count, std::uint64_t blob_bytes) noexcept {
  Sections s{};
  s.chunk_dir = sizeof(TreeHeader);
  s.column_dir = align_up(s.chunk_dir + chunk_count * sizeof(TreeChunk), kTreeAlignment);
  s.change_seq = align_up(s.column_dir + column_count * sizeof(TreeColumn), kTreeAlignment);
  s.values = s.change_seq + chunk_count * kTreeWordColumnBytes;
  s.values_size = small_columns * kTreeWordColumnBytes;
  s.blob_dir = s.values + s.values_size;
  s.blob_area = align_up(s.blob_dir + blob_count * sizeof(TreeBlob), kTreeAlignment);
  s.blob_area_size = blob_bytes;
  s.total = align_up(s.blob_area + blob_bytes, kTreeAlignment);
  return s;
}

bool is_small_stored(Encoding e) noexcept { return e != Encoding::kMarker && !is_big(e); }

template <typename T>
T load_shared(const T& field) noexcept {
  // The provider may be writing the directory right now: read it with atomic loads, then only
  // ever use the local copy.
  return std::atomic_ref<T>(const_cast<T&>(field)).load(std::memory_order_relaxed);
}

/// Copies `count` T's out of shared memory with atomic word loads (the provider may be writing
/// them right now), through a word buffer so no object is accessed as the wrong type.
template <typename T>
std::vector<T> snapshot(const std::byte* src, std::size_t count) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) % 8 == 0);
  std::vector<std::uint64_t> words(count * sizeof(T) / 8);
  if (!words.empty()) seqlock_copy_out(words.data(), src, words.size() * 8);
  std::vector<T> out(count);
  if (count != 0) std::memcpy(out.data(), words.data(), count * sizeof(T));
  return out;
}

}  // namespace

// ---- Layout -------------------------------------------------------------------------------------

Result<TreeLayout> TreeLayout::compute(const TreeSchema& schema) {
  constexpr std::string_view op = "tree.layout";
  const std::size_t n = schema.entities.size();
  if (n > kTreeMaxEntities) {
    return logic_error(op, std::to_string(n) + " entities exceed the limit of " + std::to_string(kTreeMaxEntities) +
                               " per device");
  }
  const auto entity_count = static_cast<std::uint32_t>(n);
  const std::uint32_t chunk_count = (entity_count + kTreeChunkSlots - 1) / kTreeChunkSlots;

  struct ColumnBuild {
    Encoding encoding;
    std::uint64_t presence = 0;
    std::array<std::uint32_t, kTreeChunkSlots> capacity{};
  };
  std::vector<std::map<std::uint16_t, ColumnBuild>> per_chunk(chunk_count);

  for (EntityIndex e = 0; e < entity_count; ++e) {
    const auto& decls = schema.entities[e].components;
    const std::string who = "entity " + std::to_string(e);
    if (decls.size() > kTreeMaxComponentsPerEntity) {
      return logic_error(op, who + " declares " + std::to_string(decls.size()) + " components, over the limit of " +
                                 std::to_string(kTreeMaxComponentsPerEntity));
    }
    auto& chunk = per_chunk[e / kTreeChunkSlots];
    for (const ComponentDecl& d : decls) {
      const ComponentInfo* info = find_component(d.component);
      if (info == nullptr) return logic_error(op, who + " declares " + describe(d.component) + ", not in the catalogue");
      auto [it, inserted] = chunk.try_emplace(to_id(d.component), ColumnBuild{info->encoding});
      if (!inserted && (it->second.presence & slot_bit(e)) != 0) {
        return logic_error(op, who + " declares " + std::string(info->name) + " twice");
      }
      std::uint32_t cap = 0;
      if (is_big(info->encoding)) {
        cap = d.max_bytes != 0 ? d.max_bytes
                               : (info->encoding == Encoding::kText ? kTreeDefaultTextBytes : kTreeDefaultListBytes);
        if (cap > kTreeMaxBlobBytes) {
          return logic_error(op, who + ": " + std::string(info->name) + " blob of " + std::to_string(cap) +
                                     " bytes exceeds the limit of " + std::to_string(kTreeMaxBlobBytes));
        }
        if (info->encoding == Encoding::kList && cap < 4) {
          return logic_error(op, who + ": " + std::string(info->name) +
                                     " list blob needs at least 4 bytes (its count), not " + std::to_string(cap));
        }
      } else if (d.max_bytes != 0) {
        return logic_error(op, who + ": " + std::string(info->name) + " is " + std::string(to_string(info->encoding)) +
                                   "; max_bytes applies only to text and list components");
      }
      it->second.presence |= slot_bit(e);
      it->second.capacity[e % kTreeChunkSlots] = cap;
    }
  }

  TreeLayout layout;
  std::uint32_t small_columns = 0;
  std::uint32_t blob_count = 0;
  std::uint64_t blob_bytes = 0;
  for (std::uint32_t c = 0; c < chunk_count; ++c) {
    if (per_chunk[c].size() > kTreeMaxColumnsPerChunk) {
      return logic_error(op, "chunk " + std::to_string(c) + " has " + std::to_string(per_chunk[c].size()) +
                                 " component kinds, over the limit of " + std::to_string(kTreeMaxColumnsPerChunk));
    }
    layout.chunks.push_back(TreeChunk{static_cast<std::uint32_t>(layout.columns.size()),
                                      static_cast<std::uint32_t>(per_chunk[c].size()), occupied_mask(entity_count, c)});
    for (const auto& [id, col] : per_chunk[c]) {  // std::map: sorted by id
      TreeColumn tc{};
      tc.component = id;
      tc.encoding = static_cast<std::uint8_t>(col.encoding);
      tc.presence = col.presence;
      if (is_small_stored(col.encoding)) {
        tc.offset = small_columns++;  // index for now; placed below
      } else if (is_big(col.encoding)) {
        tc.first_blob = blob_count;
        for (std::uint64_t p = col.presence; p != 0; p &= p - 1) {
          const std::uint32_t cap = col.capacity[static_cast<std::size_t>(std::countr_zero(p))];
          layout.blobs.push_back(TreeBlobPlan{cap, blob_bytes});  // relative for now
          blob_bytes += align_up(cap, 8);
          ++blob_count;
        }
      }
      layout.columns.push_back(tc);
    }
  }

  const Sections s = place(chunk_count, layout.columns.size(), small_columns, blob_count, blob_bytes);
  if (s.total > kTreeMaxBytes) {
    return logic_error(op, "the tree needs " + std::to_string(s.total) + " bytes, over the limit of " +
                               std::to_string(kTreeMaxBytes));
  }
  for (TreeColumn& tc : layout.columns) {
    const auto enc = static_cast<Encoding>(tc.encoding);
    if (is_small_stored(enc)) tc.offset = s.values + tc.offset * kTreeWordColumnBytes;
    else if (is_big(enc)) tc.offset = s.blob_dir + std::uint64_t{tc.first_blob} * sizeof(TreeBlob);
  }
  for (TreeBlobPlan& b : layout.blobs) b.data_offset += s.blob_area;

  TreeHeader& h = layout.header;
  h.magic = kTreeMagic;
  h.layout_version = kTreeLayoutVersion;
  h.header_size = sizeof(TreeHeader);
  h.entity_count = entity_count;
  h.chunk_count = chunk_count;
  h.column_count = static_cast<std::uint32_t>(layout.columns.size());
  h.blob_count = blob_count;
  h.total_size = s.total;
  h.chunk_dir_offset = s.chunk_dir;
  h.column_dir_offset = s.column_dir;
  h.change_seq_offset = s.change_seq;
  h.values_offset = s.values;
  h.values_size = s.values_size;
  h.blob_dir_offset = s.blob_dir;
  h.blob_area_offset = s.blob_area;
  h.blob_area_size = s.blob_area_size;
  return layout;
}

Status tree_init(std::span<std::byte> tree, const TreeLayout& layout) {
  constexpr std::string_view op = "tree.init";
  const TreeHeader& h = layout.header;
  if (reinterpret_cast<std::uintptr_t>(tree.data()) % kTreeAlignment != 0) {
    return logic_error(op, "the tree must start at a 64-byte aligned address");
  }
  if (h.total_size < sizeof(TreeHeader) || tree.size() < h.total_size) {
    return logic_error(op, "region too small: the tree needs " + std::to_string(h.total_size) +
                               " bytes, the span holds " + std::to_string(tree.size()));
  }
  if (layout.chunks.size() != h.chunk_count || layout.columns.size() != h.column_count ||
      layout.blobs.size() != h.blob_count) {
    return logic_error(op, "layout directories disagree with its header (not from TreeLayout::compute?)");
  }
  std::byte* base = tree.data();
  std::memset(base, 0, static_cast<std::size_t>(h.total_size));
  std::memcpy(base, &h, sizeof h);
  if (!layout.chunks.empty()) {
    std::memcpy(base + h.chunk_dir_offset, layout.chunks.data(), layout.chunks.size() * sizeof(TreeChunk));
  }
  if (!layout.columns.empty()) {
    std::memcpy(base + h.column_dir_offset, layout.columns.data(), layout.columns.size() * sizeof(TreeColumn));
  }
  // Start the atomics' lifetimes in this process (other processes map the bytes as they are).
  const auto start_words = [&](std::uint64_t offset, std::uint64_t count) {
    for (std::uint64_t i = 0; i < count; ++i) new (base + offset + i * 8) std::atomic<std::uint64_t>{0};
  };
  start_words(h.change_seq_offset, std::uint64_t{h.chunk_count} * kTreeChunkSlots);
  start_words(h.values_offset, h.values_size / sizeof(std::uint64_t));
  auto* blobs = reinterpret_cast<TreeBlob*>(base + h.blob_dir_offset);
  for (std::size_t i = 0; i < layout.blobs.size(); ++i) {
    auto* b = new (&blobs[i]) TreeBlob{};
    b->capacity = layout.blobs[i].capacity;
    b->data_offset = layout.blobs[i].data_offset;
  }
  // Self-check: what we wrote must be what every reader accepts.
  if (auto idx = detail::index_tree(base, tree.size(), op); !idx) return tl::unexpected(std::move(idx).error());
  return {};
}

// ---- Validation ---------------------------------------------------------------------------------

namespace detail {

Result<TreeIndex> index_tree(std::byte* base, std::size_t size, std::string_view op) {
  const auto fail = [&](const std::string& msg) { return logic_error(op, msg); };
  if (size < sizeof(TreeHeader)) {
    return fail("a span of " + std::to_string(size) + " bytes cannot hold a tree header (" +
                std::to_string(sizeof(TreeHeader)) + ")");
  }
  if (reinterpret_cast<std::uintptr_t>(base) % kTreeAlignment != 0) {
    return fail("the tree must start at a 64-byte aligned address");
  }
  const TreeHeader h = snapshot<TreeHeader>(base, 1)[0];
  if (h.magic != kTreeMagic) return fail("bad magic " + hex(h.magic) + ", expected \"TREE\" (" + hex(kTreeMagic) + ")");
  if (h.layout_version != kTreeLayoutVersion) {
    return fail("layout version " + std::to_string(h.layout_version) + ", this build reads " +
                std::to_string(kTreeLayoutVersion));
  }
  if (h.header_size != sizeof(TreeHeader)) {
    return fail("header size " + std::to_string(h.header_size) + ", expected " + std::to_string(sizeof(TreeHeader)));
  }
  if (h.entity_count > kTreeMaxEntities) {
    return fail("entity count " + std::to_string(h.entity_count) + " exceeds the limit of " +
                std::to_string(kTreeMaxEntities));
  }
  const std::uint32_t chunk_count = (h.entity_count + kTreeChunkSlots - 1) / kTreeChunkSlots;
  if (h.chunk_count != chunk_count) {
    return fail("chunk count " + std::to_string(h.chunk_count) + " does not match " + std::to_string(h.entity_count) +
                " entities (" + std::to_string(chunk_count) + " chunks)");
  }
  if (h.total_size > size) {
    return fail("the header claims " + std::to_string(h.total_size) + " bytes but the span holds only " +
                std::to_string(size));
  }
  if (h.total_size > kTreeMaxBytes || h.total_size % kTreeAlignment != 0 || h.total_size < sizeof(TreeHeader)) {
    return fail("total size " + std::to_string(h.total_size) + " is not a multiple of 64 between " +
                std::to_string(sizeof(TreeHeader)) + " and " + std::to_string(kTreeMaxBytes));
  }
  if (h.column_count > std::uint64_t{chunk_count} * kTreeMaxColumnsPerChunk) {
    return fail("column count " + std::to_string(h.column_count) + " exceeds " + std::to_string(kTreeMaxColumnsPerChunk) +
                " per chunk");
  }
  if (h.blob_count > std::uint64_t{h.entity_count} * kTreeMaxComponentsPerEntity) {
    return fail("blob count " + std::to_string(h.blob_count) + " exceeds " +
                std::to_string(kTreeMaxComponentsPerEntity) + " per entity");
  }

  // Every section inside the tree (the products cannot overflow: the counts are bounded above).
  const std::uint64_t total = h.total_size;
  struct Section {
    const char* name;
    std::uint64_t offset, length;
  };
  const Section sections[] = {
      {"chunk directory", h.chunk_dir_offset, std::uint64_t{h.chunk_count} * sizeof(TreeChunk)},
      {"column directory", h.column_dir_offset, std::uint64_t{h.column_count} * sizeof(TreeColumn)},
      {"change sequences", h.change_seq_offset, std::uint64_t{h.chunk_count} * kTreeWordColumnBytes},
      {"value columns", h.values_offset, h.values_size},
      {"blob directory", h.blob_dir_offset, std::uint64_t{h.blob_count} * sizeof(TreeBlob)},
      {"blob area", h.blob_area_offset, h.blob_area_size},
  };
  for (const Section& s : sections) {
    if (s.offset % 8 != 0 || s.offset > total || s.length > total - s.offset) {
      return fail(std::string(s.name) + " [" + std::to_string(s.offset) + ", +" + std::to_string(s.length) +
                  ") is misaligned or runs past the end of the tree (" + std::to_string(total) + " bytes)");
    }
  }
  if (h.values_size % kTreeWordColumnBytes != 0) {
    return fail("value columns size " + std::to_string(h.values_size) + " is not a whole number of columns");
  }
  const auto misplaced = [&](const char* name, std::uint64_t got, std::uint64_t want) {
    return fail(std::string(name) + " at offset " + std::to_string(got) + " overlaps another section or is misplaced" +
                " (layout v1 puts it at " + std::to_string(want) + ")");
  };
  // Placement with the header's own small-column and blob sizes; each is checked against what the
  // directories imply before it is relied on.
  const Sections want = place(chunk_count, h.column_count, h.values_size / kTreeWordColumnBytes, h.blob_count,
                              h.blob_area_size);
  if (h.chunk_dir_offset != want.chunk_dir) return misplaced("chunk directory", h.chunk_dir_offset, want.chunk_dir);
  if (h.column_dir_offset != want.column_dir) return misplaced("column directory", h.column_dir_offset, want.column_dir);
  if (h.change_seq_offset != want.change_seq) return misplaced("change sequences", h.change_seq_offset, want.change_seq);
  if (h.values_offset != want.values) return misplaced("value columns", h.values_offset, want.values);
  if (h.blob_dir_offset != want.blob_dir) return misplaced("blob directory", h.blob_dir_offset, want.blob_dir);
  if (h.blob_area_offset != want.blob_area) return misplaced("blob area", h.blob_area_offset, want.blob_area);
  if (h.total_size != want.total) {
    return fail("total size " + std::to_string(h.total_size) + " does not match the sections (" +
                std::to_string(want.total) + ")");
  }

  // Directories: copy, then validate the copies.
  const std::vector<TreeChunk> chunks = snapshot<TreeChunk>(base + h.chunk_dir_offset, chunk_count);
  const std::vector<TreeColumn> columns = snapshot<TreeColumn>(base + h.column_dir_offset, h.column_count);

  std::uint32_t next_column = 0;
  std::uint64_t small_columns = 0;
  std::uint64_t blobs = 0;
  for (std::uint32_t c = 0; c < chunk_count; ++c) {
    const TreeChunk& ch = chunks[c];
    const std::string where = "chunk " + std::to_string(c);
    if (ch.occupied != occupied_mask(h.entity_count, c)) {
      return fail(where + ": occupied word " + hex(ch.occupied) + " does not match the entity count");
    }
    if (ch.first_column != next_column || ch.column_count > kTreeMaxColumnsPerChunk ||
        ch.column_count > h.column_count - next_column) {
      return fail(where + ": columns [" + std::to_string(ch.first_column) + ", +" + std::to_string(ch.column_count) +
                  ") are not the next ones of the directory (" + std::to_string(next_column) + " of " +
                  std::to_string(h.column_count) + ")");
    }
    std::array<std::uint32_t, kTreeChunkSlots> per_slot{};
    std::uint16_t prev_id = 0;
    for (std::uint32_t k = ch.first_column; k < ch.first_column + ch.column_count; ++k) {
      const TreeColumn& col = columns[k];
      const std::string what = where + ", column " + std::to_string(k);
      if (col.component == 0 || col.component <= prev_id) {
        return fail(what + ": component id " + std::to_string(col.component) +
                    " is zero, duplicated or out of order");
      }
      prev_id = col.component;
      if (!is_valid_encoding(col.encoding)) return fail(what + ": invalid encoding " + std::to_string(col.encoding));
      const auto enc = static_cast<Encoding>(col.encoding);
      if (const ComponentInfo* info = find_component(static_cast<Component>(col.component));
          info != nullptr && info->encoding != enc) {
        return fail(what + ": " + std::string(info->name) + " stored as " + std::string(to_string(enc)) +
                    ", the catalogue says " + std::string(to_string(info->encoding)));
      }
      if (col.presence == 0 || (col.presence & ~ch.occupied) != 0) {
        return fail(what + ": presence word " + hex(col.presence) + " is empty or marks slots without entities");
      }
      for (std::uint64_t p = col.presence; p != 0; p &= p - 1) {
        if (++per_slot[static_cast<std::size_t>(std::countr_zero(p))] > kTreeMaxComponentsPerEntity) {
          return fail(what + ": an entity has more than " + std::to_string(kTreeMaxComponentsPerEntity) +
                      " components");
        }
      }
      std::uint64_t want_offset = 0;
      std::uint32_t want_first_blob = 0;
      if (is_small_stored(enc)) {
        want_offset = h.values_offset + small_columns++ * kTreeWordColumnBytes;
      } else if (is_big(enc)) {
        want_first_blob = static_cast<std::uint32_t>(blobs);
        want_offset = h.blob_dir_offset + blobs * sizeof(TreeBlob);
        blobs += static_cast<std::uint64_t>(std::popcount(col.presence));
      }
      if (col.offset != want_offset || col.first_blob != want_first_blob) {
        return fail(what + ": offset " + std::to_string(col.offset) + " (first blob " +
                    std::to_string(col.first_blob) + ") overlaps another column or is misplaced (layout v1: " +
                    std::to_string(want_offset) + ", first blob " + std::to_string(want_first_blob) + ")");
      }
      if (small_columns * kTreeWordColumnBytes > h.values_size) {
        return fail(what + ": more value columns than the value area holds (" + std::to_string(h.values_size) +
                    " bytes)");
      }
      if (blobs > h.blob_count) {
        return fail(what + ": more blobs than the blob directory holds (" + std::to_string(h.blob_count) + ")");
      }
    }
    next_column += ch.column_count;
  }
  if (next_column != h.column_count) {
    return fail("the chunks cover " + std::to_string(next_column) + " columns, the header says " +
                std::to_string(h.column_count));
  }
  if (small_columns * kTreeWordColumnBytes != h.values_size) {
    return fail("value area of " + std::to_string(h.values_size) + " bytes, the directory has " +
                std::to_string(small_columns) + " value columns");
  }
  if (blobs != h.blob_count) {
    return fail("blob count " + std::to_string(h.blob_count) + ", the directory has " + std::to_string(blobs) +
                " blob slots");
  }

  // Blob descriptors: capacity and data offset are fixed by the creator; copy and check them.
  auto* blob_dir = reinterpret_cast<const TreeBlob*>(base + h.blob_dir_offset);
  std::vector<TreeBlobRef> blob_refs(h.blob_count);
  std::uint64_t next_data = h.blob_area_offset;
  std::uint32_t max_capacity = 0;
  for (std::uint32_t b = 0; b < h.blob_count; ++b) {
    const std::uint32_t cap = load_shared(blob_dir[b].capacity);
    const std::uint64_t data = load_shared(blob_dir[b].data_offset);
    if (cap == 0 || cap > kTreeMaxBlobBytes) {
      return fail("blob " + std::to_string(b) + ": capacity " + std::to_string(cap) + " is not in 1.." +
                  std::to_string(kTreeMaxBlobBytes));
    }
    if (data != next_data || align_up(cap, 8) > h.blob_area_offset + h.blob_area_size - data) {
      return fail("blob " + std::to_string(b) + ": data at " + std::to_string(data) + " (+" + std::to_string(cap) +
                  ") overlaps another blob or runs past the blob area (layout v1 puts it at " +
                  std::to_string(next_data) + ")");
    }
    blob_refs[b] = TreeBlobRef{&blob_dir[b], base + data, cap};
    next_data += align_up(cap, 8);
    max_capacity = std::max(max_capacity, cap);
  }
  if (next_data != h.blob_area_offset + h.blob_area_size) {
    return fail("blob area of " + std::to_string(h.blob_area_size) + " bytes, the blobs use " +
                std::to_string(next_data - h.blob_area_offset));
  }

  // All valid: build the process-local index.
  TreeIndex idx;
  idx.base = base;
  idx.size = h.total_size;
  idx.entity_count = h.entity_count;
  idx.change_seq = reinterpret_cast<const std::atomic<std::uint64_t>*>(base + h.change_seq_offset);
  idx.max_blob_capacity = max_capacity;
  idx.blobs = std::move(blob_refs);
  idx.columns.reserve(columns.size());
  for (const TreeColumn& col : columns) {
    const auto enc = static_cast<Encoding>(col.encoding);
    idx.columns.push_back(TreeColumnView{
        static_cast<Component>(col.component), enc, col.presence,
        is_small_stored(enc) ? reinterpret_cast<const std::atomic<std::uint64_t>*>(base + col.offset) : nullptr,
        col.first_blob});
  }
  idx.lookup.assign(std::size_t{chunk_count} * kLookupStride, -1);
  idx.chunks.reserve(chunk_count);
  for (std::uint32_t c = 0; c < chunk_count; ++c) {
    const TreeChunk& ch = chunks[c];
    idx.chunks.push_back(TreeChunkView{ch.occupied,
                                       std::span<const TreeColumnView>(idx.columns).subspan(ch.first_column,
                                                                                            ch.column_count),
                                       idx.change_seq + std::size_t{c} * kTreeChunkSlots});
    for (std::uint32_t k = ch.first_column; k < ch.first_column + ch.column_count; ++k) {
      if (columns[k].component <= kMaxComponentId) {
        idx.lookup[std::size_t{c} * kLookupStride + columns[k].component] = static_cast<std::int32_t>(k);
      }
    }
  }
  return idx;
}

const TreeColumnView* TreeIndex::find(EntityIndex e, Component c) const noexcept {
  if (e >= entity_count) return nullptr;
  const std::uint32_t chunk = e / kTreeChunkSlots;
  const std::uint16_t id = to_id(c);
  const TreeColumnView* col = nullptr;
  if (id <= kMaxComponentId) {
    const std::int32_t k = lookup[std::size_t{chunk} * kLookupStride + id];
    if (k < 0) return nullptr;
    col = &columns[static_cast<std::size_t>(k)];
  } else {
    // An id newer than this build's catalogue: not in the table, search the chunk's columns.
    for (const TreeColumnView& v : chunks[chunk].columns) {
      if (v.component == c) col = &v;
    }
    if (col == nullptr) return nullptr;
  }
  return (col->presence & slot_bit(e)) != 0 ? col : nullptr;
}

const TreeBlobRef* TreeIndex::blob(const TreeColumnView& col, EntityIndex e) const noexcept {
  // Only a text or list column of this index owns blobs; a column from another index (or another
  // read of a tree the provider rewrote) must not pick a descriptor, let alone one past the end.
  if (!is_big(col.encoding)) return nullptr;
  const std::uint64_t below = col.presence & (slot_bit(e) - 1);
  const std::size_t at = std::size_t{col.first_blob} + static_cast<std::size_t>(std::popcount(below));
  return at < blobs.size() ? &blobs[at] : nullptr;
}

}  // namespace detail

// ---- Writer -------------------------------------------------------------------------------------

std::string_view to_string(TreeWriteStatus s) noexcept {
  switch (s) {
    case TreeWriteStatus::kOk: return "ok";
    case TreeWriteStatus::kNoSuchEntity: return "no such entity";
    case TreeWriteStatus::kNoSuchComponent: return "the entity does not have that component";
    case TreeWriteStatus::kWrongType: return "value type does not match the component's encoding";
    case TreeWriteStatus::kOutOfRange: return "enum value not named in the catalogue";
    case TreeWriteStatus::kTooLong: return "longer than the blob's capacity";
  }
  return "invalid";
}

Result<TreeWriter> TreeWriter::attach(std::span<std::byte> tree) {
  auto idx = detail::index_tree(tree.data(), tree.size(), "tree.writer.attach");
  if (!idx) return tl::unexpected(std::move(idx).error());
  return TreeWriter(std::move(*idx));
}

TreeWriter::TreeWriter(detail::TreeIndex index)
    : index_(std::move(index)), scratch_(align_up(index_.max_blob_capacity, 8) / 8) {}

void TreeWriter::bump(EntityIndex e) noexcept {
  // Writer-local: the only writer of this word, so load + store instead of an RMW.
  auto& seq = const_cast<std::atomic<std::uint64_t>&>(index_.change_seq[e]);
  // SYNC(tree-change): publishes the value (or blob) written just before; pairs with the
  // acquire load in TreeReader::change_seq.
  seq.store(seq.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

TreeWriteStatus TreeWriter::set(EntityIndex e, Component c, const Value& v) noexcept {
  const TreeColumnView* col = index_.find(e, c);
  if (col == nullptr) return e >= index_.entity_count ? TreeWriteStatus::kNoSuchEntity : TreeWriteStatus::kNoSuchComponent;
  const ComponentInfo* info = find_component(c);
  if (info == nullptr) return TreeWriteStatus::kNoSuchComponent;  // an id newer than this build
  std::uint64_t bits = 0;
  switch (pack(*info, v, bits)) {
    case PackStatus::kOk: break;
    case PackStatus::kOutOfRange: return TreeWriteStatus::kOutOfRange;
    case PackStatus::kWrongType:
    case PackStatus::kBigKind: return TreeWriteStatus::kWrongType;
  }
  if (col->values == nullptr) return TreeWriteStatus::kOk;  // a marker: nothing to store
  // The handle was attached to writable memory; the view is const for readers' sake.
  auto& word = const_cast<std::atomic<std::uint64_t>&>(col->values[e % kTreeChunkSlots]);
  word.store(bits, std::memory_order_relaxed);  // ordered before the readers' view by bump()'s release
  bump(e);
  return TreeWriteStatus::kOk;
}

TreeWriteStatus TreeWriter::resolve_blob(EntityIndex e, Component c, Encoding expected, std::size_t n,
                                         const detail::TreeBlobRef*& ref) const noexcept {
  const TreeColumnView* col = index_.find(e, c);
  if (col == nullptr) return e >= index_.entity_count ? TreeWriteStatus::kNoSuchEntity : TreeWriteStatus::kNoSuchComponent;
  if (col->encoding != expected) return TreeWriteStatus::kWrongType;
  ref = index_.blob(*col, e);
  if (ref == nullptr) return TreeWriteStatus::kWrongType;
  if (n > ref->capacity) return TreeWriteStatus::kTooLong;
  return TreeWriteStatus::kOk;
}

void TreeWriter::commit_blob(EntityIndex e, const detail::TreeBlobRef& ref, std::size_t n) noexcept {
  auto* desc = const_cast<TreeBlob*>(ref.desc);
  desc->lock.write_begin();
  desc->length.store(n, std::memory_order_relaxed);  // inside the seqlock, like the bytes
  seqlock_copy_in(const_cast<std::byte*>(ref.data), scratch_.data(), align_up(n, 8));
  desc->lock.write_end();
  bump(e);
}

TreeWriteStatus TreeWriter::set_text(EntityIndex e, Component c, std::string_view text) noexcept {
  const detail::TreeBlobRef* ref = nullptr;
  if (const auto s = resolve_blob(e, c, Encoding::kText, text.size(), ref); s != TreeWriteStatus::kOk) return s;
  const std::size_t n = text.size();
  if (n % 8 != 0) scratch_[n / 8] = 0;  // no stale bytes after the text in the last word
  if (n != 0) std::memcpy(scratch_.data(), text.data(), n);
  commit_blob(e, *ref, n);
  return TreeWriteStatus::kOk;
}

template <typename Items>
TreeWriteStatus TreeWriter::set_list_impl(EntityIndex e, Component c, const Items& items) noexcept {
  const detail::TreeBlobRef* ref = nullptr;
  const std::size_t n = encoded_list_size(items);
  if (const auto s = resolve_blob(e, c, Encoding::kList, n, ref); s != TreeWriteStatus::kOk) return s;
  if (n % 8 != 0) scratch_[n / 8] = 0;
  encode_list(items, std::as_writable_bytes(std::span(scratch_)).first(n));
  commit_blob(e, *ref, n);
  return TreeWriteStatus::kOk;
}

TreeWriteStatus TreeWriter::set_list(EntityIndex e, Component c, std::span<const std::string> items) noexcept {
  return set_list_impl(e, c, items);
}
TreeWriteStatus TreeWriter::set_list(EntityIndex e, Component c, std::span<const std::string_view> items) noexcept {
  return set_list_impl(e, c, items);
}

std::uint64_t TreeWriter::change_seq(EntityIndex e) const noexcept {
  return e < index_.entity_count ? index_.change_seq[e].load(std::memory_order_relaxed) : 0;
}

// ---- Reader -------------------------------------------------------------------------------------

Result<TreeReader> TreeReader::attach(std::span<const std::byte> tree) {
  // The index keeps a non-const base for the writer's sake; a reader only ever loads through it.
  auto idx = detail::index_tree(const_cast<std::byte*>(tree.data()), tree.size(), "tree.reader.attach");
  if (!idx) return tl::unexpected(std::move(idx).error());
  return TreeReader(std::move(*idx));
}

std::optional<std::uint64_t> TreeReader::get_raw(EntityIndex e, Component c) const noexcept {
  const TreeColumnView* col = index_.find(e, c);
  if (col == nullptr || col->values == nullptr) return std::nullopt;
  return col->values[e % kTreeChunkSlots].load(std::memory_order_relaxed);
}

std::optional<Value> TreeReader::get(EntityIndex e, Component c) const noexcept {
  const TreeColumnView* col = index_.find(e, c);
  if (col == nullptr || is_big(col->encoding)) return std::nullopt;
  if (col->encoding == Encoding::kMarker) return Value{Marker{}};
  return unpack(col->encoding, col->values[e % kTreeChunkSlots].load(std::memory_order_relaxed));
}

std::uint64_t TreeReader::change_seq(EntityIndex e) const noexcept {
  if (e >= index_.entity_count) return 0;
  // SYNC(tree-change): pairs with TreeWriter::bump's release store; values loaded after this are
  // at least as new as the write that produced this sequence.
  return index_.change_seq[e].load(std::memory_order_acquire);
}

const TreeColumnView* TreeReader::column(std::uint32_t chunk, Component c) const noexcept {
  if (chunk >= index_.chunks.size()) return nullptr;
  const std::uint16_t id = to_id(c);
  if (id > kMaxComponentId) {
    for (const TreeColumnView& v : index_.chunks[chunk].columns) {
      if (v.component == c) return &v;
    }
    return nullptr;
  }
  const std::int32_t k = index_.lookup[std::size_t{chunk} * kLookupStride + id];
  return k < 0 ? nullptr : &index_.columns[static_cast<std::size_t>(k)];
}

Result<std::vector<std::uint64_t>> TreeReader::read_blob(EntityIndex e, Component c, Encoding expected,
                                                         unsigned max_attempts, std::string_view op,
                                                         std::size_t& length) const {
  const std::string who = "entity " + std::to_string(e);
  const TreeColumnView* col = index_.find(e, c);
  if (col == nullptr) {
    if (e >= index_.entity_count) {
      return logic_error(op, who + " is out of range (the device has " + std::to_string(index_.entity_count) +
                                 " entities)");
    }
    return logic_error(op, who + " has no " + describe(c) + " component");
  }
  if (col->encoding != expected) {
    return logic_error(op, who + ": " + describe(c) + " is " + std::string(to_string(col->encoding)) + ", not " +
                               std::string(to_string(expected)));
  }
  const detail::TreeBlobRef* blob = index_.blob(*col, e);
  if (blob == nullptr) return logic_error(op, who + ": " + describe(c) + " has no blob");
  const detail::TreeBlobRef& ref = *blob;
  std::vector<std::uint64_t> buf(align_up(ref.capacity, 8) / 8);
  std::uint64_t len = 0;
  // A writer that changes the blob during every copy (a hostile provider can) must not make one
  // read copy a 64 KiB blob thousands of times: the copies are bounded in bytes.
  const std::uint64_t by_budget =
      std::max(kBlobReadCopyBudget / std::max<std::uint64_t>(align_up(ref.capacity, 8), 1), kBlobReadMinCopies);
  const auto max_copies = static_cast<unsigned>(std::min<std::uint64_t>(by_budget, max_attempts));
  const SeqlockRead r = ref.desc->lock.read(
      [&] {
        len = ref.desc->length.load(std::memory_order_relaxed);
        // The length is untrusted: never copy more than the capacity we validated at attach.
        seqlock_copy_out(buf.data(), ref.data, align_up(std::min<std::uint64_t>(len, ref.capacity), 8));
      },
      max_attempts, max_copies);
  switch (r) {
    case SeqlockRead::kOk: break;
    case SeqlockRead::kWriterStuck:
      return logic_error(op, who + ": " + describe(c) + ": writer stuck mid-write (sequence odd for " +
                                 std::to_string(max_attempts) + " attempts)");
    case SeqlockRead::kContended:
      return logic_error(op, who + ": " + describe(c) + ": the writer changed it during every attempt (at most " +
                                 std::to_string(max_copies) + " copies)");
  }
  if (len > ref.capacity) {
    return logic_error(op, who + ": " + describe(c) + ": stored length " + std::to_string(len) +
                               " exceeds the blob's capacity " + std::to_string(ref.capacity) +
                               " (corrupt or hostile writer)");
  }
  length = static_cast<std::size_t>(len);
  return buf;
}

Result<std::string> TreeReader::read_text(EntityIndex e, Component c, unsigned max_attempts) const {
  std::size_t n = 0;
  auto buf = read_blob(e, c, Encoding::kText, max_attempts, "tree.read_text", n);
  if (!buf) return tl::unexpected(std::move(buf).error());
  return valid_utf8(std::string_view(reinterpret_cast<const char*>(buf->data()), n));
}

Result<std::vector<std::string>> TreeReader::read_list(EntityIndex e, Component c, unsigned max_attempts) const {
  std::size_t n = 0;
  auto buf = read_blob(e, c, Encoding::kList, max_attempts, "tree.read_list", n);
  if (!buf) return tl::unexpected(std::move(buf).error());
  if (n == 0) return std::vector<std::string>{};  // never written
  auto items = decode_list(std::as_bytes(std::span(*buf)).first(n));
  if (!items) {
    return logic_error("tree.read_list", "entity " + std::to_string(e) + ": " + describe(c) + ": " +
                                             items.error().to_string());
  }
  for (auto& item : *items) item = valid_utf8(item);
  return items;
}

std::vector<TreeEntryInfo> TreeReader::components(EntityIndex e) const {
  std::vector<TreeEntryInfo> out;
  if (e >= index_.entity_count) return out;
  for (const TreeColumnView& col : index_.chunks[e / kTreeChunkSlots].columns) {
    if ((col.presence & slot_bit(e)) == 0) continue;
    const detail::TreeBlobRef* blob = index_.blob(col, e);
    out.push_back(TreeEntryInfo{col.component, col.encoding, blob != nullptr ? blob->capacity : 0});
  }
  return out;
}

std::optional<std::uint32_t> TreeReader::blob_seq(EntityIndex e, Component c) const noexcept {
  const TreeColumnView* col = index_.find(e, c);
  const detail::TreeBlobRef* blob = col != nullptr ? index_.blob(*col, e) : nullptr;
  if (blob == nullptr) return std::nullopt;
  return blob->desc->lock.seq.load(std::memory_order_acquire);
}

TreeSchema TreeReader::schema() const {
  TreeSchema s;
  s.entities.resize(index_.entity_count);
  for (EntityIndex e = 0; e < index_.entity_count; ++e) {
    for (const TreeEntryInfo& c : components(e)) s.entities[e].components.push_back({c.component, c.max_bytes});
  }
  return s;
}

}  // namespace floe::ipc
