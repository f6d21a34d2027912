// The text query language: parser with positioned errors (docs/QUERY_LANGUAGE.md).
//
//   auto q = parse_query("avg Dimmer where Light in group kitchen");
//   if (!q) std::cerr << q.error().message << '\n';
//       // count Switch whre Switch == true
//       //              ^^^^ expected 'where', 'in' or end of query, found 'whre'
//
// The parser checks the query against the component catalogue (names, encodings, enum values), so a
// Query it returns is well-typed: every comparison literal and set value already has the type the
// engine needs (see "Literal normal form" below). to_string(const Query&) in query.hpp prints the
// canonical text, and parse_query(to_string(q)) == q for every q this parser returns.
//
// Literal normal form of a successfully parsed Query, by the component's encoding:
//   bool -> bool, int64 and timestamp -> int64_t, real -> double (integer literals widened),
//   enum -> std::string holding the catalogue's spelling of the value name, rgb -> std::string
//   "#rrggbb" in lower case, text -> std::string (unescaped).
// Filters are flattened: a kAnd has no kAnd child and a kOr no kOr child, and both have at least two
// children; `with X` is kHas, `without X` is kNot over kHas.
//
// Everything here is a pure function of its arguments: any thread.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <variant>

#include "floe/core/query.hpp"
#include "floe/ipc/result.hpp"

namespace floe::core {

/// Longest query text accepted, in bytes (input, and the canonical form of what it parses to, so
/// that a parsed query always re-parses from its canonical text).
inline constexpr std::size_t kMaxQueryLength = 4096;
/// Deepest nesting of '(' and 'not' accepted: hostile input gets an error, not a stack overflow.
inline constexpr std::size_t kMaxQueryDepth = 32;

/// Why and where a query did not parse. `position` and `length` are byte offsets into the text
/// (position <= text.size(); length may be 0, e.g. at the end of the query).
struct ParseError {
  std::size_t position = 0;
  std::size_t length = 0;
  std::string expected;  // what would have been accepted there: "'where', 'in' or end of query"
  std::string message;   // the whole sentence: "expected 'where', 'in' or end of query, found 'whre'"

  bool operator==(const ParseError&) const = default;
};

/// Parses `text`, keeping the error structured (for editors, tests and tools that highlight).
[[nodiscard]] std::variant<Query, ParseError> parse_query_detailed(std::string_view text);

/// Parses `text`. On failure the Error's operation is "parse_query" and its message is
/// render_parse_error(text, ...): two lines meant to be printed on their own, with the caret
/// under the offending part.
[[nodiscard]] Result<Query> parse_query(std::string_view text);

/// The query (or, if it is long, a window of it around the error) and a line with carets under
/// `error`'s span followed by its message. Control characters show as spaces; columns count UTF-8
/// code points. No trailing newline.
[[nodiscard]] std::string render_parse_error(std::string_view text, const ParseError& error);

/// True if `word` is a keyword of the language (ASCII case-insensitive): such names must be quoted
/// in scopes (`in group "in"`).
[[nodiscard]] bool is_query_keyword(std::string_view word) noexcept;

}  // namespace floe::core
