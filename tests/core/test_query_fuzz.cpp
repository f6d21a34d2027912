// Bounded random fuzzing of the query parser and printer. Query text comes from people and tools
// we do not control, so for ANY bytes: no crash (the asan pass runs this under ASan+UBSan), every
// error points inside the input and says something, and every success prints a canonical text that
// parses back to the same AST and prints identically. Four input sources: random bytes, soup of the
// grammar's tokens, mutations of valid queries, and random valid ASTs printed and re-parsed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "floe/core/query.hpp"
#include "floe/core/query_parser.hpp"
#include "support/environment.hpp"

namespace floe::core {
namespace {

using ipc::ComponentInfo;
using ipc::Encoding;

std::string escaped(std::string_view s) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f || c == '\\') {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

struct Outcome {
  std::uint64_t parsed = 0;
  std::uint64_t refused = 0;
};

// Checks the invariants on one input; false (with a failure recorded) if one is broken.
bool check(std::string_view text, Outcome& outcome) {
  auto r = parse_query_detailed(text);
  if (const auto* e = std::get_if<ParseError>(&r)) {
    ++outcome.refused;
    if (e->position > text.size() || e->length > text.size() - e->position || e->message.empty() ||
        e->expected.empty()) {
      ADD_FAILURE() << "bad error {" << e->position << ", " << e->length << ", '" << e->expected << "', '"
                    << e->message << "'} for \"" << escaped(text) << "\"";
      return false;
    }
    if (render_parse_error(text, *e).empty()) {
      ADD_FAILURE() << "empty rendering for \"" << escaped(text) << "\"";
      return false;
    }
    return true;
  }
  ++outcome.parsed;
  const Query& q = std::get<Query>(r);
  const std::string canonical = to_string(q);
  auto again = parse_query_detailed(canonical);
  if (const auto* e = std::get_if<ParseError>(&again)) {
    ADD_FAILURE() << "canonical form does not parse: \"" << escaped(canonical) << "\" (from \"" << escaped(text)
                  << "\"): " << e->message;
    return false;
  }
  if (std::get<Query>(again) != q || to_string(std::get<Query>(again)) != canonical) {
    ADD_FAILURE() << "round trip changed the query: \"" << escaped(text) << "\" -> \"" << escaped(canonical) << "\" -> \""
                  << escaped(to_string(std::get<Query>(again))) << "\"";
    return false;
  }
  // Operand order (watcher deduplication): canonical() is idempotent and its text parses back to it.
  const Query ordered = floe::core::canonical(q);
  const std::string ordered_text = to_string(ordered);
  auto ordered_again = parse_query_detailed(ordered_text);
  const auto* oq = std::get_if<Query>(&ordered_again);
  if (oq == nullptr || *oq != ordered || floe::core::canonical(ordered) != ordered) {
    ADD_FAILURE() << "canonical() broke an invariant: \"" << escaped(text) << "\" -> \"" << escaped(ordered_text) << "\"";
    return false;
  }
  return true;
}

// ---- Random valid ASTs --------------------------------------------------------------------------

class AstGenerator {
 public:
  explicit AstGenerator(std::mt19937_64& rng) : rng_(rng) {}

  Query query() {
    Query q;
    q.action = static_cast<Action>(below(10));
    switch (q.action) {
      case Action::kSum:
      case Action::kAvg:
      case Action::kMin:
      case Action::kMax: q.target = pick([](const ComponentInfo& c) { return c.encoding == Encoding::kInt64 || c.encoding == Encoding::kReal; })->id; break;
      case Action::kGet: q.target = pick([](const ComponentInfo&) { return true; })->id; break;
      case Action::kSet: {
        const ComponentInfo* info = pick(settable);
        q.target = info->id;
        q.set_value = literal(*info);
        break;
      }
      default:
        if (chance(2)) q.target = pick([](const ComponentInfo&) { return true; })->id;
        break;
    }
    if (!chance(5)) q.where = filter(below(5));
    for (std::uint64_t n = below(4); n > 0; --n) q.scopes.push_back(Scope{static_cast<Scope::Kind>(below(3)), name()});
    return q;
  }

 private:
  static bool settable(const ComponentInfo& c) { return c.encoding != Encoding::kMarker && c.encoding != Encoding::kList; }

  std::uint64_t below(std::uint64_t n) { return rng_() % n; }
  bool chance(std::uint64_t one_in) { return below(one_in) == 0; }

  template <typename Pred>
  const ComponentInfo* pick(Pred pred) {
    for (;;) {
      const ComponentInfo& c = ipc::kComponents[below(ipc::kComponentCount)];
      if (pred(c)) return &c;
    }
  }

  // Parser normal form: kAnd/kOr have >= 2 children, none of their own kind.
  Filter filter(std::uint64_t depth) {
    Filter f;
    const std::uint64_t kind = depth == 0 ? below(2) : below(5);
    if (kind == 0) {
      f.kind = Filter::Kind::kHas;
      f.component = pick([](const ComponentInfo&) { return true; })->id;
    } else if (kind == 1) {
      const ComponentInfo* info = pick(settable);
      f.kind = Filter::Kind::kCompare;
      f.component = info->id;
      const bool ordered = info->encoding == Encoding::kInt64 || info->encoding == Encoding::kReal ||
                           info->encoding == Encoding::kTimestamp;
      f.op = ordered ? static_cast<CompareOp>(below(6)) : (chance(2) ? CompareOp::kEq : CompareOp::kNe);
      f.value = literal(*info);
    } else if (kind == 2) {
      f.kind = Filter::Kind::kNot;
      f.children.push_back(filter(depth - 1));
    } else {
      f.kind = kind == 3 ? Filter::Kind::kAnd : Filter::Kind::kOr;
      for (std::uint64_t n = 2 + below(3); n > 0; --n) {
        Filter child = filter(depth - 1);
        while (child.kind == f.kind) child = filter(depth - 1);
        f.children.push_back(std::move(child));
      }
    }
    return f;
  }

  Literal literal(const ComponentInfo& info) {
    switch (info.encoding) {
      case Encoding::kBool: return chance(2);
      case Encoding::kInt64:
      case Encoding::kTimestamp: {
        // Half of the timestamps, dates and times within what prints as ISO 8601 (years 0000-9999).
        constexpr std::int64_t kFirstDay = -719528, kDays = 719528 + 2932897;
        if (chance(2) && info.encoding == Encoding::kTimestamp) {
          const auto day = kFirstDay + static_cast<std::int64_t>(below(kDays));
          return day * 86'400'000'000 + static_cast<std::int64_t>(below(86'400'000'000));
        }
        if (chance(2) && info.id == ipc::Component::Date) return kFirstDay + static_cast<std::int64_t>(below(kDays));
        if (chance(2) && info.id == ipc::Component::Time) return static_cast<std::int64_t>(below(86'400));
        return integer();
      }
      case Encoding::kReal: return real();
      case Encoding::kEnum: return std::string(info.enum_values[below(info.enum_values.size())]);
      case Encoding::kRgb: {
        static constexpr char kHex[] = "0123456789abcdef";
        std::string s = "#";
        for (int i = 0; i < 6; ++i) s += kHex[below(16)];
        return s;
      }
      case Encoding::kText: return bytes(below(12));
      case Encoding::kMarker:
      case Encoding::kList: break;
    }
    return false;
  }

  std::int64_t integer() {
    switch (below(4)) {
      case 0: return std::numeric_limits<std::int64_t>::min() + static_cast<std::int64_t>(below(2));
      case 1: return std::numeric_limits<std::int64_t>::max() - static_cast<std::int64_t>(below(2));
      case 2: return static_cast<std::int64_t>(below(2001)) - 1000;
      default: return static_cast<std::int64_t>(rng_());
    }
  }

  double real() {
    switch (below(4)) {
      case 0: return static_cast<double>(static_cast<std::int64_t>(below(2001)) - 1000) / 8.0;
      case 1: return static_cast<double>(static_cast<std::int64_t>(rng_())) * 1e-9;
      default: {
        for (;;) {
          const std::uint64_t bits = rng_();
          double d;
          std::memcpy(&d, &bits, sizeof d);
          if (std::isfinite(d)) return d;  // includes subnormals and -0.0
        }
      }
    }
  }

  std::string bytes(std::uint64_t n) {
    static constexpr char kSpecial[] = {'"', '\\', ' ', '\n', '\0', '\t', 'a', 'Z', '#', '('};
    std::string s;
    for (; n > 0; --n) s += chance(2) ? kSpecial[below(sizeof kSpecial)] : static_cast<char>(rng_());
    return s;
  }

  std::string name() {
    static constexpr std::string_view kNames[] = {"kitchen", "esp-kitchen", "*_ceiling", "living room", "in",  "WHERE",
                                                  "42",      "-1.5e3",      "a.b:c?",    "Küche",       "x\"y", "back\\slash"};
    if (chance(2)) return std::string(kNames[below(std::size(kNames))]);
    std::string s = bytes(1 + below(8));
    return s;
  }

  std::mt19937_64& rng_;
};

// ---- Token soup ---------------------------------------------------------------------------------

std::string token_soup(std::mt19937_64& rng) {
  static constexpr std::string_view kVocabulary[] = {
      "get", "list", "count", "sum", "avg", "min", "max", "any", "all", "set", "where", "WHERE", "and", "or", "Or",
      "not", "with", "without", "in", "group", "device", "entity", "to", "true", "FALSE", "(", ")", "(", ")", "==",
      "=", "!=", "<", "<=", ">", ">=", "!", "0", "-1", "42", "2.5", "-0.0", "1e308", "1e999", "9223372036854775807",
      "9223372036854775808", "-9223372036854775808", "\"temperature\"", "\"\"", "\"a\\\"b\"", "\"unterminated",
      "\"bad\\q\"", "#ff8000", "#FFF", "#", "open", "heat", "OPEN", "kitchen", "*_ceiling", "esp-kitchen", "Küche",
      "Light", "Switch", "Dimmer", "Dimer", "Color", "CoverState", "Sensor", "DeviceClass", "Real", "Integer", "Text",
      "TextList", "Timestamp", "ClimateMode", "coverstate", "\t", "\n", ";", ",", "\x01", "\xff", "Date", "Time",
      "2026-11-27T10:00:00Z", "2026-11-27T10:00:00.25+01:30", "2026-02-30", "2026-11-27", "10:00", "23:59:59", "T", "Z",
      "+01:00", "-01:00", "24:00:00"};
  // Half the soups start like a query, so that the rest of the soup reaches deeper into the grammar.
  std::string s = rng() % 2 ? std::string(kVocabulary[rng() % 10]) + " " : std::string();
  for (std::uint64_t n = rng() % 16; n > 0; --n) {
    s += kVocabulary[rng() % std::size(kVocabulary)];
    if (rng() % 8 != 0) s += ' ';
  }
  return s;
}

// ---- Mutations ----------------------------------------------------------------------------------

std::string mutate(std::mt19937_64& rng, std::string s) {
  static constexpr char kInteresting[] = "()\"\\=<>!# .-_*?eE0123456789aZ";
  for (std::uint64_t n = rng() % 2 ? 1 : 1 + rng() % 4; n > 0; --n) {
    const std::size_t at = s.empty() ? 0 : rng() % (s.size() + 1);
    switch (rng() % 5) {
      case 0: s.insert(at, 1, rng() % 2 ? kInteresting[rng() % (sizeof kInteresting - 1)] : static_cast<char>(rng())); break;
      case 1:
        if (at < s.size()) s.erase(at, 1 + rng() % 3);
        break;
      case 2:
        if (at + 1 < s.size()) std::swap(s[at], s[at + 1]);
        break;
      case 3:
        if (at < s.size()) s[at] = static_cast<char>(rng());
        break;
      default:
        if (at < s.size()) s.insert(at, s.substr(at, 1 + rng() % 8));  // repeat a piece
        break;
    }
  }
  return s;
}

// ---- The drivers --------------------------------------------------------------------------------

constexpr std::uint64_t kPerSource = 50'000;

TEST(QueryFuzz, RandomBytesAreRefusedCleanly) {
  std::mt19937_64 rng(0xF10E'0001);
  Outcome outcome;
  const std::uint64_t rounds = test::scaled(kPerSource, 1000);
  for (std::uint64_t i = 0; i < rounds; ++i) {
    std::string s(rng() % 48, '\0');
    const bool printable = rng() % 2 == 0;
    for (char& c : s) c = printable ? static_cast<char>(0x20 + rng() % 0x5f) : static_cast<char>(rng());
    ASSERT_TRUE(check(s, outcome));
  }
  EXPECT_GT(outcome.refused, rounds / 2);
}

TEST(QueryFuzz, TokenSoupNeverBreaksAnInvariant) {
  std::mt19937_64 rng(0xF10E'0002);
  Outcome outcome;
  const std::uint64_t rounds = test::scaled(kPerSource, 1000);
  for (std::uint64_t i = 0; i < rounds; ++i) ASSERT_TRUE(check(token_soup(rng), outcome));
  EXPECT_GT(outcome.refused, 0U);
  EXPECT_GT(outcome.parsed, 0U);  // the soup does form real queries now and then
}

TEST(QueryFuzz, MutatedValidQueriesNeverBreakAnInvariant) {
  std::mt19937_64 rng(0xF10E'0003);
  std::vector<std::string> seeds = {
      "avg Dimmer where Light in group kitchen",
      "count Switch where Switch == true",
      "list Real where Sensor and DeviceClass == \"temperature\"",
      "count where Light and not Switch",
      "any Switch in device esp-kitchen",
      "max Real where Sensor and (DeviceClass == \"temperature\" or DeviceClass == \"humidity\")",
      "get Dimmer in entity kitchen_ceiling",
      "set Switch = true where Light in group kitchen in entity *_ceiling",
      "count where CoverState == open",
      "count where Color != #ff8000 and Integer >= -42 and Timestamp < 1700000000000000",
      "count Timestamp where Timestamp > 2026-11-27T10:00:00Z",
      "count where Timestamp <= 2026-11-27T10:00:00.123456-05:30 or Date == 2026-11-27 and Time < 10:00",
      "count where Switch and Light or Sensor and (Real > 2 or Light) in group b in group a",
  };
  AstGenerator gen(rng);
  for (int i = 0; i < 200; ++i) seeds.push_back(to_string(gen.query()));
  Outcome outcome;
  const std::uint64_t rounds = test::scaled(kPerSource, 1000);
  for (std::uint64_t i = 0; i < rounds; ++i) {
    ASSERT_TRUE(check(mutate(rng, seeds[rng() % seeds.size()]), outcome));
  }
  EXPECT_GT(outcome.refused, rounds / 10);
  EXPECT_GT(outcome.parsed, rounds / 20);
}

TEST(QueryFuzz, RandomValidAstsRoundTripThroughTheirCanonicalText) {
  std::mt19937_64 rng(0xF10E'0004);
  AstGenerator gen(rng);
  const std::uint64_t rounds = test::scaled(kPerSource, 1000);
  std::uint64_t too_long = 0;
  for (std::uint64_t i = 0; i < rounds; ++i) {
    const Query q = gen.query();
    const std::string text = to_string(q);
    auto r = parse_query_detailed(text);
    if (text.size() > kMaxQueryLength) {  // refused by design: its canonical form is over the limit
      ASSERT_TRUE(std::holds_alternative<ParseError>(r)) << text.size();
      ++too_long;
      continue;
    }
    if (const auto* e = std::get_if<ParseError>(&r)) {
      FAIL() << "a valid AST's canonical text does not parse:\n" << escaped(render_parse_error(text, *e));
    }
    ASSERT_EQ(std::get<Query>(r), q) << escaped(text) << "\n -> " << escaped(to_string(std::get<Query>(r)));
    ASSERT_EQ(to_string(std::get<Query>(r)), text);
  }
  EXPECT_LT(too_long, rounds / 100);
}

// Deep nesting of every kind, far past the limit: an error, never a stack overflow.
TEST(QueryFuzz, HostileNestingIsRefusedNotRecursed) {
  Outcome outcome;
  for (const std::string_view unit : {"(", "not ", "not (", "(not "}) {
    std::string s = "count where ";
    for (int i = 0; i < 10'000; ++i) s += unit;
    s.resize(kMaxQueryLength);
    ASSERT_TRUE(check(s, outcome));
  }
  EXPECT_EQ(outcome.refused, 4U);
}

}  // namespace
}  // namespace floe::core
