// libFuzzer entry point for the query parser and printer. Not built by the default CMake build
// (tests/CMakeLists.txt only globs test_/stress_/itest_ files); build by hand with clang:
//
//   clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined \
//     -Icore/include -Iipc/include tests/fuzz/fuzz_query_parser.cpp \
//     core/src/query.cpp core/src/query_parser.cpp -o fuzz_query_parser
//   ./fuzz_query_parser -max_len=512 -dict=tests/fuzz/query_parser.dict tests/fuzz/corpus/query_parser
//
// The same invariants as tests/core/test_query_fuzz.cpp: errors point inside the input and say
// something; a success prints canonical text that parses back to the same query and prints the same.
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
  return 0;
}
