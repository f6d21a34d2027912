// The column-wise bitset query engine.
//
//   auto snap = registry.snapshot();
//   auto bound = bind(query, *snap);              // once per (query, snapshot version)
//   QueryResult r = evaluate(*bound, *snap);      // any number of times, from any thread
//
// bind() resolves names and literals and compiles the filter into
//   required components   presence words AND-ed (the target, `Light`, every compared component)
//   excluded components   presence words AND-NOT-ed (`without Light`, `not Light`)
//   a residual program    per-chunk bitset algebra for value comparisons, `or` and complex `not`
// and the scopes into a list of (slot word, mask) pairs (or "the whole home"). It also resolves the
// scan for that snapshot (BoundQuery::plan: the presence-word and value-column pointers, and one
// kernel compiled for the action, target encoding and filter shape), so an evaluate() against the
// same Snapshot object (same Snapshot::serial()) calls that kernel directly, with no per-call
// look-ups. Another Snapshot object of the same version (another registry's) is resolved afresh
// per call.
//
// evaluate() walks the packed home (HomeSlots: every entity of the home numbered consecutively,
// 64 home slots per word, devices sharing words): per word, the sparsest required presence word
// first (a zero word skips 64 slots), then the others, the live word (see below), the scope mask
// and the residual; then iterates the set bits (countr_zero, m &= m - 1) and loads each slot's
// value word through its pointer, relaxed (providers write concurrently; one slot is one atomic
// word, so reads are never torn).
//
// Offline devices: excluded from every action by default (an offline device's values are stale,
// so they would bias aggregates and a `set` could not reach them). BindOptions::include_offline
// includes them; list/get then report each match's `online` flag.
//
// Numbers: sum/avg/min/max accept bool (0/1), int64 and real targets and return doubles (int64
// sums are exact up to 2^53). A bool word other than 0/1 (a corrupt provider) counts as false.
// min/max skip NaN readings (all NaN: NaN); sum/avg propagate NaN. Nothing matched: no number.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "floe/core/query.hpp"
#include "floe/core/registry.hpp"
#include "floe/ipc/components.hpp"
#include "floe/ipc/result.hpp"

namespace floe::core {

struct BindOptions {
  bool include_offline = false;  // see the header comment
};

/// How a residual comparison compares a slot's word with its literal.
enum class CompareKind : std::uint8_t {
  kInt,   // int64 (and timestamp) words as signed integers
  kReal,  // real words as doubles (int literals converted); int64 words vs a fractional literal
  kWord,  // exact word equality (bool, enum, rgb): == and != only; invalid words never match
  kText,  // text blobs read through the seqlock, compared bytewise
};

/// One instruction of a residual filter program (postfix): each pushes or combines 64-bit masks.
struct FilterStep {
  enum class Kind : std::uint8_t { kAll, kHas, kCompare, kAnd, kOr, kNot };
  Kind kind = Kind::kAll;
  Component component{};
  std::uint16_t arity = 0;  // kAnd / kOr: how many masks to combine
  CompareOp op = CompareOp::kEq;
  CompareKind compare = CompareKind::kInt;
  ipc::Encoding encoding = ipc::Encoding::kMarker;  // of the compared component
  std::int64_t int_value = 0;
  double real_value = 0;
  std::uint64_t word = 0;
  std::string text;
};

/// The value a `set` asks for: the packed word of a small kind, or the text of a text kind.
struct SetValue {
  Component component{};
  std::variant<std::uint64_t, std::string> value;
  friend bool operator==(const SetValue&, const SetValue&) = default;
};

struct BoundQuery;
struct QueryResult;

namespace detail {

/// What bind() resolves for evaluate() on the snapshot it bound to: the words the scan ANDs, the
/// target's value column and the kernel compiled for this action, target encoding and filter
/// shape. Pointers into that snapshot (identified by its process-wide Snapshot::serial(), which
/// no other snapshot of any registry ever carries, even at a reused address), never into the
/// BoundQuery itself, so a copied or moved BoundQuery keeps a valid plan.
struct ScanPlan;
using Kernel = void (*)(const ScanPlan&, const BoundQuery&, const Snapshot&, QueryResult&);

inline constexpr std::size_t kMaxRequired = 8;  // presence words the scan ANDs; more go to the residual
inline constexpr std::size_t kMaxExcluded = 8;  // presence words the scan AND-NOTs; likewise

struct ScanPlan {
  std::uint64_t snapshot_serial = 0;  // the pointers below belong to that snapshot (0: none)
  Kernel kernel = nullptr;
  const std::uint64_t* lead = nullptr;  // the sparsest required presence word (or live)
  const std::uint64_t* live = nullptr;  // online (or occupied) slots
  std::array<const std::uint64_t*, kMaxRequired> others{};  // [0, n_others)
  std::array<const std::uint64_t*, kMaxExcluded> excluded{};  // [0, n_excluded)
  std::uint32_t n_others = 0;
  std::uint32_t n_excluded = 0;
  std::uint32_t count = 0;  // slot words, or scope entries
  const std::atomic<std::uint64_t>* const* values = nullptr;  // the target's column, one per home slot
};

}  // namespace detail

/// A query resolved against one snapshot. Valid only with that snapshot (same version()).
struct BoundQuery {
  Action action = Action::kCount;
  std::optional<Component> target;
  ipc::Encoding target_encoding = ipc::Encoding::kMarker;
  std::uint64_t snapshot_version = 0;
  bool include_offline = false;
  bool matches_nothing = false;  // e.g. a required kind no entity of the home has

  std::vector<Component> required;  // sparsest first
  std::vector<Component> excluded;
  std::vector<FilterStep> residual;  // empty: none
  std::uint32_t residual_depth = 0;  // stack depth the program needs

  bool whole_home = true;
  // The scope (if !whole_home) twice: over the home's chunks (what watchers index by) and over its
  // packed slot words (what evaluate() scans).
  std::vector<std::uint32_t> scope_chunks;  // ascending global chunk indices
  std::vector<std::uint64_t> scope_masks;   // the slots of each scoped chunk
  std::vector<std::uint32_t> scope_words;   // ascending HomeSlots word indices
  std::vector<std::uint64_t> scope_word_masks;  // the home slots of each scoped word

  std::optional<SetValue> set_value;

  /// Resolved for the bound snapshot; evaluate() resolves afresh for another one of that version.
  detail::ScanPlan plan;
};

/// What a matching entity carries for get/list: nothing (no target), a small value, a text or a
/// list; monostate also when a value could not be read (QueryResult::unreadable counts those).
using EntityValue = std::variant<std::monostate, ipc::Value, std::string, std::vector<std::string>>;

struct QueryMatch {
  EntityRef entity;
  std::string entity_id;
  bool online = true;
  EntityValue value;
};

struct QueryResult {
  Action action = Action::kCount;
  /// Entities that matched (for sum/avg/min/max: values aggregated; any/all: entities checked).
  std::uint64_t count = 0;
  std::optional<double> number;       // sum, avg, min, max; nullopt when nothing matched
  std::optional<bool> truth;          // any, all
  std::vector<QueryMatch> matches;    // get, list, set: in home order (device slot, entity index)
  std::optional<SetValue> set_value;  // set
  /// Text/list reads that failed (a writer stuck mid-write or too busy): those entities did not
  /// match a text comparison / carry no value.
  std::uint64_t unreadable = 0;
  /// The bound query belongs to another snapshot version: nothing was evaluated. Re-bind.
  bool stale_binding = false;
};

/// Resolves `query` against `snapshot`. Errors (Error::operation "query.bind") say what is wrong:
/// an unknown group/device/entity, a missing or unsuitable target, a literal that does not fit its
/// component, a set without a value.
[[nodiscard]] Result<BoundQuery> bind(const Query& query, const Snapshot& snapshot, const BindOptions& options = {});

/// Evaluates a bound query against the snapshot it was bound to. Any thread, lock-free; allocates
/// only for get/list/set results (and text comparisons).
[[nodiscard]] QueryResult evaluate(const BoundQuery& query, const Snapshot& snapshot);

/// bind + evaluate.
[[nodiscard]] Result<QueryResult> run(const Query& query, const Snapshot& snapshot, const BindOptions& options = {});

/// Shell-style match: `*` any run (also empty), `?` one character.
[[nodiscard]] bool glob_match(std::string_view pattern, std::string_view text) noexcept;

}  // namespace floe::core
