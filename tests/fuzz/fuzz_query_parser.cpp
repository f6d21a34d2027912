// libFuzzer entry point for the query parser and printer. Built in the fuzzer build and run by
// `scripts/fuzz query_parser` (seeds: tests/fuzz/corpus/query_parser, dictionary query_parser.dict).
//
// The same invariants as tests/core/test_query_fuzz.cpp: errors point inside the input and say
// something; a success prints canonical text that parses back to the same query and prints the same,
// and canonical() (operands in order, for watcher deduplication) is idempotent and round-trips.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <variant>

#include "floe/core/query.hpp"
#include "floe/core/query_parser.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace floe::core;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto r = parse_query_detailed(text);
  if (const auto* e = std::get_if<ParseError>(&r)) {
    if (e->position > text.size() || e->length > text.size() - e->position) std::abort();
    if (e->message.empty() || e->expected.empty()) std::abort();
    if (render_parse_error(text, *e).empty()) std::abort();
    return 0;
  }
  const Query& q = std::get<Query>(r);
  const std::string canonical = to_string(q);
  auto again = parse_query_detailed(canonical);
  const auto* q2 = std::get_if<Query>(&again);
  if (q2 == nullptr || !(*q2 == q) || to_string(*q2) != canonical) std::abort();
  // Operand order (watcher deduplication): canonical() is idempotent and its text parses back to it.
  const Query ordered = floe::core::canonical(q);
  auto ordered_again = parse_query_detailed(to_string(ordered));
  const auto* q3 = std::get_if<Query>(&ordered_again);
  if (q3 == nullptr || !(*q3 == ordered) || !(floe::core::canonical(ordered) == ordered)) std::abort();
  return 0;
}
