// A device's slice of the distributed device tree, in shared memory.
//
// The core sizes and initialises the tree from the device's declared schema (TreeLayout::compute,
// tree_init) inside the device's region; the provider attaches a TreeWriter (one writer per
// device) and writes component values directly; any thread of any process attaches a TreeReader
// (a read-only mapping is enough) and reads lock-free.
//
// Layout (offsets relative to the tree's start, every section 64-byte aligned; docs/DEVICE_TREE.md
// has the diagram):
//
//   0                  TreeHeader                 magic "TREE", version, counts, section offsets
//   chunk_dir_offset   TreeChunk[chunk_count]     per 64-entity chunk: its columns, occupied slots
//   column_dir_offset  TreeColumn[column_count]   per (chunk, component): id, encoding, presence
//                                                 word, offset of the column
//   change_seq_offset  atomic<u64>[chunks * 64]   per-slot change sequence, bumped by every write
//   values_offset      atomic<u64>[64] per small (non-marker) column, in directory order
//   blob_dir_offset    TreeBlob[blob_count]       per (big column, present slot): seqlock, length,
//                                                 capacity, offset of the bytes
//   blob_area_offset   blob bytes                 each blob 8-aligned, capacity rounded up to 8
//   total_size
//
// Entity e lives in chunk e / 64, slot e % 64. Everything the reader needs per slot derives from
// (chunk, slot): there is no per-entity record.
//
// Memory orderings (the SYNC pairs):
//   tree-change    writer: value store (relaxed) or blob seqlock write, THEN change_seq store
//                  (release); reader: change_seq load (acquire), then the value. A reader that sees
//                  a new sequence sees that write's value or a newer one.
//   seqlock-*      blobs use SeqlockWord, exactly the seed's orderings (seqlock.hpp).
// Small values alone are single atomic words: a relaxed load is always a whole value.
//
// Trust: the provider can write anything anywhere in the region at any time. Both handles copy
// the header and directories with atomic loads at attach, validate every count, offset and length
// against the span and against the canonical layout, and from then on use only their validated
// process-local copy; the only words they read from shared memory afterwards are values, change
// sequences and blob contents, and a blob's length is checked against its (local) capacity
// before anything is copied.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "floe/ipc/components.hpp"
#include "floe/ipc/platform.hpp"
#include "floe/ipc/result.hpp"
#include "floe/ipc/seqlock.hpp"

namespace floe::ipc {

inline constexpr std::uint32_t kTreeMagic = 0x45455254U;  // "TREE" as bytes in memory (little-endian)
inline constexpr std::uint16_t kTreeLayoutVersion = 1;
/// Entity slots per chunk: one bit each in a presence word.
inline constexpr std::uint32_t kTreeChunkSlots = 64;
/// The tree must start at an offset aligned to this (region payloads are).
inline constexpr std::size_t kTreeAlignment = kCacheLine;

// Limits, checked by TreeLayout::compute and by every attach.
inline constexpr std::uint32_t kTreeMaxEntities = 4096;
inline constexpr std::uint32_t kTreeMaxComponentsPerEntity = 64;
inline constexpr std::uint32_t kTreeMaxColumnsPerChunk = 256;
inline constexpr std::uint32_t kTreeMaxBlobBytes = 64 * 1024;
inline constexpr std::uint64_t kTreeMaxBytes = std::uint64_t{256} << 20;
/// Blob capacities used when a schema declares 0 for a big kind.
/// A text or list read copies the blob again each time the writer changed it meanwhile: at most
/// this many bytes in all, and never fewer than kBlobReadMinCopies copies (8 of a 64 KiB blob).
inline constexpr std::uint64_t kBlobReadCopyBudget = 512 * 1024;
inline constexpr std::uint64_t kBlobReadMinCopies = 8;
inline constexpr std::uint32_t kTreeDefaultTextBytes = 256;
inline constexpr std::uint32_t kTreeDefaultListBytes = 1024;

/// An entity's index within its device: chunk = index / 64, slot = index % 64.
using EntityIndex = std::uint32_t;

// ---- Shared-memory data (plain, offsets not pointers) -------------------------------------------

/// The tree's first bytes. Written once by the creator (tree_init) before the region is shared.
struct TreeHeader {
  std::uint32_t magic;           // kTreeMagic
  std::uint16_t layout_version;  // kTreeLayoutVersion
  std::uint16_t header_size;     // sizeof(TreeHeader)
  std::uint32_t entity_count;
  std::uint32_t chunk_count;     // ceil(entity_count / 64)
  std::uint32_t column_count;    // entries of the column directory, all chunks
  std::uint32_t blob_count;      // entries of the blob directory
  std::uint64_t total_size;      // bytes of the whole tree, header included
  std::uint64_t chunk_dir_offset;
  std::uint64_t column_dir_offset;
  std::uint64_t change_seq_offset;
  std::uint64_t values_offset;
  std::uint64_t values_size;
  std::uint64_t blob_dir_offset;
  std::uint64_t blob_area_offset;
  std::uint64_t blob_area_size;
  std::uint64_t reserved[4];
};
static_assert(std::is_standard_layout_v<TreeHeader> && std::is_trivially_copyable_v<TreeHeader>);
static_assert(sizeof(TreeHeader) == 128);
static_assert(offsetof(TreeHeader, entity_count) == 8);
static_assert(offsetof(TreeHeader, total_size) == 24);
static_assert(offsetof(TreeHeader, blob_area_size) == 88);

/// One 64-slot chunk: its columns are column_dir[first_column, first_column + column_count),
/// sorted by component id.
struct TreeChunk {
  std::uint32_t first_column;
  std::uint32_t column_count;
  std::uint64_t occupied;  // slots that hold an entity (all 64 except in the last chunk)
};
static_assert(std::is_standard_layout_v<TreeChunk> && std::is_trivially_copyable_v<TreeChunk>);
static_assert(sizeof(TreeChunk) == 16);

/// One component kind within one chunk.
///   marker:  offset 0, no storage (the presence word is the data)
///   small:   offset of std::atomic<uint64_t>[64], values[slot]
///   big:     offset of TreeBlob[popcount(presence)], one per present slot in slot order;
///            first_blob is the index of the first of them in the blob directory
struct TreeColumn {
  std::uint16_t component;  // Component id (may be one this build does not know: a newer provider)
  std::uint8_t encoding;    // Encoding
  std::uint8_t reserved0;
  std::uint32_t first_blob;  // big kinds only, else 0
  std::uint64_t presence;    // which slots of the chunk have this component
  std::uint64_t offset;
};
static_assert(std::is_standard_layout_v<TreeColumn> && std::is_trivially_copyable_v<TreeColumn>);
static_assert(sizeof(TreeColumn) == 24);
static_assert(offsetof(TreeColumn, presence) == 8 && offsetof(TreeColumn, offset) == 16);

/// One big value (text or list) of one slot. `capacity` and `data_offset` are fixed by the creator;
/// `length` is written by the writer inside the seqlock.
struct TreeBlob {
  SeqlockWord lock;
  std::uint32_t capacity;              // max bytes (declared); the data area is capacity rounded up to 8
  std::atomic<std::uint64_t> length;   // bytes in use; untrusted: readers check it against capacity
  std::uint64_t data_offset;           // of the bytes, relative to the tree's start; 8-aligned
  std::uint64_t reserved;
};
static_assert(std::is_standard_layout_v<TreeBlob>);
static_assert(sizeof(TreeBlob) == 32);
static_assert(offsetof(TreeBlob, capacity) == 4 && offsetof(TreeBlob, length) == 8 &&
              offsetof(TreeBlob, data_offset) == 16);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<std::uint64_t>) == 8);

/// Bytes of one column of small values and of one chunk's change sequences.
inline constexpr std::size_t kTreeWordColumnBytes = kTreeChunkSlots * sizeof(std::uint64_t);

// ---- Schema and layout --------------------------------------------------------------------------

/// One component of an entity. `max_bytes` is the blob capacity of a text/list component (0: the
/// default, kTreeDefaultTextBytes / kTreeDefaultListBytes); it must be 0 for small kinds.
struct ComponentDecl {
  Component component = Component::kNone;
  std::uint32_t max_bytes = 0;
  friend bool operator==(const ComponentDecl&, const ComponentDecl&) = default;
};
struct EntityDecl {
  std::vector<ComponentDecl> components;
  friend bool operator==(const EntityDecl&, const EntityDecl&) = default;
};
/// What a device declares: its entities (index = position) and their components.
struct TreeSchema {
  std::vector<EntityDecl> entities;
  friend bool operator==(const TreeSchema&, const TreeSchema&) = default;
};

/// Where one blob's bytes go.
struct TreeBlobPlan {
  std::uint32_t capacity;
  std::uint64_t data_offset;
};

/// The computed layout of a tree: exactly the header and directories tree_init writes.
struct TreeLayout {
  TreeHeader header{};
  std::vector<TreeChunk> chunks;
  std::vector<TreeColumn> columns;
  std::vector<TreeBlobPlan> blobs;

  /// Bytes the tree occupies (a multiple of 64).
  [[nodiscard]] std::size_t size() const noexcept { return static_cast<std::size_t>(header.total_size); }

  /// Sizes and places everything. Errors: too many entities, too many components on one entity,
  /// a component declared twice on one entity, an unknown component, max_bytes on a small kind,
  /// a blob over kTreeMaxBlobBytes, a tree over kTreeMaxBytes.
  [[nodiscard]] static Result<TreeLayout> compute(const TreeSchema& schema);
};

/// Creator only (the core), before the memory is shared: zeroes `tree`'s first layout.size()
/// bytes and writes the header, directories and blob descriptors, then validates the result as a
/// reader would. Every value starts as 0 bits (false, 0, 0.0, enum value 0, black, the epoch),
/// every text and list empty (a list blob of length 0 reads as the empty list). Errors: `tree`
/// smaller than the layout or not 64-byte aligned.
[[nodiscard]] Status tree_init(std::span<std::byte> tree, const TreeLayout& layout);

// ---- Process-local handles ----------------------------------------------------------------------

/// A column as the query engine sees it: AND `presence` words across columns of a chunk, iterate
/// the set bits with ctz and load `values[slot]` (relaxed).
struct TreeColumnView {
  Component component;     // may be an id this build does not know
  Encoding encoding;
  std::uint64_t presence;  // validated at attach (a local copy; the provider cannot change it)
  const std::atomic<std::uint64_t>* values;  // 64 words for small kinds; nullptr for markers and big kinds
  std::uint32_t first_blob;                  // big kinds: index of this column's first blob
};

struct TreeChunkView {
  std::uint64_t occupied;                          // slots that hold an entity
  std::span<const TreeColumnView> columns;         // sorted by component id
  const std::atomic<std::uint64_t>* change_seq;    // 64 words, change_seq[slot]
};

/// A component of an entity, for inspectors.
struct TreeEntryInfo {
  Component component;
  Encoding encoding;
  std::uint32_t max_bytes;  // blob capacity for big kinds, else 0
};

namespace detail {
struct TreeBlobRef {
  const TreeBlob* desc;
  const std::byte* data;
  std::uint32_t capacity;  // local copy, validated
};
/// The validated, process-local index both handles use. Move-only: `chunks[i].columns` points
/// into `columns`.
struct TreeIndex {
  TreeIndex() = default;
  TreeIndex(TreeIndex&&) noexcept = default;
  TreeIndex& operator=(TreeIndex&&) noexcept = default;
  TreeIndex(const TreeIndex&) = delete;
  TreeIndex& operator=(const TreeIndex&) = delete;

  std::byte* base = nullptr;
  std::uint64_t size = 0;
  std::uint32_t entity_count = 0;
  std::vector<TreeColumnView> columns;
  std::vector<TreeChunkView> chunks;
  std::vector<TreeBlobRef> blobs;
  std::vector<std::int32_t> lookup;  // [chunk * (kMaxComponentId + 1) + id] -> column index, -1
  const std::atomic<std::uint64_t>* change_seq = nullptr;
  std::uint32_t max_blob_capacity = 0;

  [[nodiscard]] const TreeColumnView* find(EntityIndex e, Component c) const noexcept;
  /// The blob of entity `e` in `col` (a column of this index that has `e`); nullptr if `col` is
  /// not a text or list column or its blob lies outside this index.
  [[nodiscard]] const TreeBlobRef* blob(const TreeColumnView& col, EntityIndex e) const noexcept;
};
/// Validates the tree at `base` (`size` bytes of span) and builds the index. `operation` names the
/// caller in errors.
[[nodiscard]] Result<TreeIndex> index_tree(std::byte* base, std::size_t size, std::string_view operation);
}  // namespace detail

/// Outcome of a write. Hot path: an enum, not a Result.
enum class TreeWriteStatus : std::uint8_t {
  kOk,
  kNoSuchEntity,     // entity index >= entity count
  kNoSuchComponent,  // the entity does not have that component in its schema
  kWrongType,        // value's type is not the component's encoding (or text vs list vs small)
  kOutOfRange,       // an enum value the catalogue does not name
  kTooLong,          // text or encoded list larger than the blob's capacity
};
[[nodiscard]] std::string_view to_string(TreeWriteStatus s) noexcept;

/// The provider's handle: the one writer of a device's tree. Move-only and not thread-safe: use it
/// from one thread (or serialise externally). Writing a value stores it, then bumps the slot's change sequence.
class TreeWriter {
 public:
  /// Validates the header and directories (as TreeReader::attach does) and precomputes lookups.
  [[nodiscard]] static Result<TreeWriter> attach(std::span<std::byte> tree);

  /// Sets a small component. Markers carry no value: setting one (with Marker{}) succeeds and
  /// changes nothing. O(1): a table lookup, one relaxed store, one release store.
  [[nodiscard]] TreeWriteStatus set(EntityIndex e, Component c, const Value& v) noexcept;
  /// Sets a text component (UTF-8, not checked). kTooLong if over its capacity.
  [[nodiscard]] TreeWriteStatus set_text(EntityIndex e, Component c, std::string_view text) noexcept;
  /// Sets a list component (encoding: components.hpp). kTooLong if the encoding exceeds capacity.
  [[nodiscard]] TreeWriteStatus set_list(EntityIndex e, Component c, std::span<const std::string> items) noexcept;
  [[nodiscard]] TreeWriteStatus set_list(EntityIndex e, Component c, std::span<const std::string_view> items) noexcept;

  [[nodiscard]] std::uint32_t entity_count() const noexcept { return index_.entity_count; }
  /// The slot's change sequence (number of writes to the entity so far).
  [[nodiscard]] std::uint64_t change_seq(EntityIndex e) const noexcept;

 private:
  explicit TreeWriter(detail::TreeIndex index);
  template <typename Items>
  TreeWriteStatus set_list_impl(EntityIndex e, Component c, const Items& items) noexcept;
  TreeWriteStatus resolve_blob(EntityIndex e, Component c, Encoding expected, std::size_t n,
                               const detail::TreeBlobRef*& ref) const noexcept;
  void commit_blob(EntityIndex e, const detail::TreeBlobRef& ref, std::size_t n) noexcept;
  void bump(EntityIndex e) noexcept;

  detail::TreeIndex index_;
  std::vector<std::uint64_t> scratch_;  // one blob's worth, 8-aligned: texts and lists are staged here
};

/// A reader's handle. Any thread, any process, read-only mapping OK; all methods are const and may
/// be called concurrently. Move-only; attach again for another handle.
class TreeReader {
 public:
  /// Validates EVERY count, offset and length of the header and directories against the span and
  /// the canonical layout, and refuses the tree with an Error saying what is wrong.
  [[nodiscard]] static Result<TreeReader> attach(std::span<const std::byte> tree);

  [[nodiscard]] std::uint32_t entity_count() const noexcept { return index_.entity_count; }
  [[nodiscard]] std::size_t size_bytes() const noexcept { return static_cast<std::size_t>(index_.size); }

  /// True if entity `e` has component `c`.
  [[nodiscard]] bool has(EntityIndex e, Component c) const noexcept { return index_.find(e, c) != nullptr; }
  /// The current value of a small component; nullopt if the entity lacks it, it is a big kind, or
  /// the stored bits are not a valid encoding (a corrupt or hostile writer: see get_raw).
  [[nodiscard]] std::optional<Value> get(EntityIndex e, Component c) const noexcept;
  /// The stored word of a small component, unvalidated.
  [[nodiscard]] std::optional<std::uint64_t> get_raw(EntityIndex e, Component c) const noexcept;
  /// A consistent copy of a text component, as valid UTF-8 (a writer's bytes that are not become
  /// U+FFFD: see valid_utf8; the same for every item of a list). Errors: no such entity/component, not a text, the
  /// writer stuck mid-write or too busy for `max_attempts` tries, a length over the capacity.
  [[nodiscard]] Result<std::string> read_text(EntityIndex e, Component c,
                                              unsigned max_attempts = kSeqlockDefaultAttempts) const;
  /// A consistent copy of a list component; the same errors, plus a malformed encoding.
  [[nodiscard]] Result<std::vector<std::string>> read_list(EntityIndex e, Component c,
                                                           unsigned max_attempts = kSeqlockDefaultAttempts) const;
  /// The entity's change sequence (acquire: values read after it are at least that new); 0 for an
  /// entity index out of range.
  [[nodiscard]] std::uint64_t change_seq(EntityIndex e) const noexcept;

  /// For the query engine: every chunk with its columns, presence words and value arrays.
  [[nodiscard]] std::span<const TreeChunkView> chunks() const noexcept { return index_.chunks; }
  /// Chunk `chunk`'s column of `c`, or nullptr. O(1).
  [[nodiscard]] const TreeColumnView* column(std::uint32_t chunk, Component c) const noexcept;

  /// For inspectors: the components of entity `e` in id order (empty if out of range).
  [[nodiscard]] std::vector<TreeEntryInfo> components(EntityIndex e) const;
  /// For inspectors: the seqlock sequence of (e, c)'s blob (acquire; odd while a write is in
  /// progress); nullopt if the entity has no such text or list component.
  [[nodiscard]] std::optional<std::uint32_t> blob_seq(EntityIndex e, Component c) const noexcept;
  /// The whole schema back: components in id order, blob capacities as stored (never 0).
  [[nodiscard]] TreeSchema schema() const;

 private:
  explicit TreeReader(detail::TreeIndex index) : index_(std::move(index)) {}
  [[nodiscard]] Result<std::vector<std::uint64_t>> read_blob(EntityIndex e, Component c, Encoding expected,
                                                             unsigned max_attempts, std::string_view op,
                                                             std::size_t& length) const;

  detail::TreeIndex index_;
};

}  // namespace floe::ipc
