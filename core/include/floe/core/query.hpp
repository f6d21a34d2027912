// The query AST: what the text query language parses into and what the engine evaluates.
//
//   avg Dimmer where Light in group kitchen
//   count Switch where Switch == true
//   list Real where Sensor and DeviceClass == "temperature"
//   set Switch = false where Light in entity kitchen_*
//
// A query has an action, an optional target component, a filter over components (presence and
// values) and scopes that restrict which devices/entities are considered. Scopes are AND-ed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "floe/ipc/components.hpp"

namespace floe::core {

using ipc::Component;

enum class Action : std::uint8_t {
  kGet,    // the target's value per matching entity (usually one entity)
  kList,   // matching entities (with the target's value if there is a target)
  kCount,  // number of matching entities
  kSum,
  kAvg,
  kMin,
  kMax,
  kAny,    // true if the target is truthy on any matching entity (no target: any entity matches)
  kAll,    // true if the target is truthy on every matching entity (vacuously true on none)
  kSet,    // resolve the target entities of a request (execution is the core's job)
};

enum class CompareOp : std::uint8_t { kEq, kNe, kLt, kLe, kGt, kGe };

/// A literal as written: `true`, `42`, `0.5`, `"temperature"`, an enum value name such as `open`
/// (kept as text; resolved against the component's enum names when the query is bound), or a
/// colour `#ff8000` (text as well).
using Literal = std::variant<bool, std::int64_t, double, std::string>;

/// A boolean expression over one entity's components.
struct Filter {
  enum class Kind : std::uint8_t {
    kTrue,     // matches everything (an absent `where`)
    kHas,      // the entity has `component` (`Light`, `with Light`)
    kCompare,  // the entity has `component` and its value `op` `value`
    kAnd,      // all `children`
    kOr,       // any of `children`
    kNot,      // not `children[0]` (`not Light`, `without Light`)
  };
  Kind kind = Kind::kTrue;
  Component component{};
  CompareOp op = CompareOp::kEq;
  Literal value;
  std::vector<Filter> children;

  bool operator==(const Filter&) const = default;
};

struct Scope {
  enum class Kind : std::uint8_t {
    kDevice,      // `in device NAME`
    kGroup,       // `in group NAME`
    kEntityGlob,  // `in entity PATTERN` (shell-style `*` and `?`)
  };
  Kind kind = Kind::kGroup;
  std::string name;

  bool operator==(const Scope&) const = default;
};

struct Query {
  Action action = Action::kCount;
  std::optional<Component> target;  // required for sum/avg/min/max/get/set
  Filter where;                     // Kind::kTrue if absent
  std::vector<Scope> scopes;        // empty: the whole home
  std::optional<Literal> set_value; // for kSet

  bool operator==(const Query&) const = default;
};

[[nodiscard]] std::string_view to_string(Action a) noexcept;
[[nodiscard]] std::string_view to_string(CompareOp op) noexcept;
/// Canonical text of a query (parse(to_string(q)) == q). Keeps the order of operands and scopes
/// as written; see canonical().
[[nodiscard]] std::string to_string(const Query& q);
/// The same query with the operands of every `and` / `or` and its scopes in one order (by their
/// canonical text) and repeats dropped: `a and b`, `b and a` and `b and a and b` all become
/// `a and b`. The meaning is unchanged. Watchers are deduplicated by to_string(canonical(q)).
[[nodiscard]] Query canonical(Query q);

}  // namespace floe::core
