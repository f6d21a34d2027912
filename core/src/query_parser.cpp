// Recursive-descent parser of the query language (grammar: docs/QUERY_LANGUAGE.md).
//
// The lexer runs lazily, one token ahead of nothing: the parser only ever looks at the current
// token, so the first error in reading order is the one reported, whether lexical or grammatical.
// No exceptions: every step returns false after recording the error, and the caller unwinds.
#include "floe/core/query_parser.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace floe::core {
namespace {

using ipc::ComponentInfo;
using ipc::Encoding;

constexpr std::array<std::string_view, 23> kKeywords = {
    "get", "list",  "count", "sum",     "avg", "min",    "max",   "any",    "all", "set",  "where", "and",
    "or",  "not",   "with",  "without", "in",  "group",  "device", "entity", "to",  "true", "false",
};

struct ActionName {
  std::string_view name;
  Action action;
};
constexpr ActionName kActions[] = {
    {"get", Action::kGet}, {"list", Action::kList}, {"count", Action::kCount}, {"sum", Action::kSum},
    {"avg", Action::kAvg}, {"min", Action::kMin},   {"max", Action::kMax},     {"any", Action::kAny},
    {"all", Action::kAll}, {"set", Action::kSet},
};
constexpr std::string_view kActionList = "get, list, count, sum, avg, min, max, any, all or set";

bool iequals(std::string_view a, std::string_view b) noexcept { return ipc::detail::iequals(a, b); }

bool is_word_char(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
         c == ':' || c == '*' || c == '?' || c == '-';
}
bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
bool is_space(char c) noexcept { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_hex(char c) noexcept { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
char lower(char c) noexcept { return ipc::detail::ascii_lower(c); }

// Bytes of the UTF-8 sequence led by `c` (1 for a stray continuation or invalid byte).
std::size_t utf8_length(unsigned char c) noexcept {
  if (c >= 0xF0 && c <= 0xF4) return 4;
  if (c >= 0xE0) return c <= 0xEF ? 3 : 1;
  if (c >= 0xC2) return 2;
  return 1;
}

// Optimal string alignment distance, ASCII case-insensitive: a swap of neighbours counts once, so
// "Swtich" is as close to "Switch" as "Dimer" is to "Dimmer".
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev2(b.size() + 1), prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const bool same = lower(a[i - 1]) == lower(b[j - 1]);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (same ? 0 : 1)});
      if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) && lower(a[i - 2]) == lower(b[j - 1])) {
        cur[j] = std::min(cur[j], prev2[j - 2] + 1);
      }
    }
    std::swap(prev2, prev);
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// The closest candidate within a typo's reach, or "" if none is close enough to be a useful guess.
template <typename Range>
std::string_view closest(std::string_view word, const Range& candidates) {
  if (word.size() > 64) return {};
  std::string_view best;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (const std::string_view c : candidates) {
    const std::size_t d = edit_distance(word, c);
    const std::size_t reach = c.size() <= 4 ? 1 : 2;
    if (d <= reach && d < best_distance) {
      best = c;
      best_distance = d;
    }
  }
  return best;
}

std::string_view encoding_noun(Encoding e) noexcept {
  switch (e) {
    case Encoding::kMarker: return "a marker";
    case Encoding::kBool: return "a bool";
    case Encoding::kInt64: return "an int64";
    case Encoding::kReal: return "a real";
    case Encoding::kEnum: return "an enum";
    case Encoding::kRgb: return "an rgb colour";
    case Encoding::kTimestamp: return "a timestamp";
    case Encoding::kText: return "text";
    case Encoding::kList: return "a list";
  }
  return "a value";
}

std::string enum_values_list(const ComponentInfo& info) {
  std::string out;
  for (std::size_t i = 0; i < info.enum_values.size(); ++i) {
    if (i > 0) out += ", ";
    out += info.enum_values[i];
  }
  return out;
}

bool is_numeric(Encoding e) noexcept { return e == Encoding::kInt64 || e == Encoding::kReal; }

// ---- ISO 8601 literals (Timestamp, Date, Time) ---------------------------------------------------
//
//   Timestamp  2026-11-27T10:00:00Z, 2026-11-27T10:00:00.25+01:00  -> microseconds since the epoch
//   Date       2026-11-27                                           -> days since 1970-01-01
//   Time       10:00, 10:00:00                                       -> seconds since midnight
// Years 0000-9999 (proleptic Gregorian); a timestamp needs its UTC offset (`Z` or `+hh:mm`), since a
// local time would mean whatever the core's time zone is.

enum class IsoKind : std::uint8_t { kTimestamp, kDate, kTime };

/// Where inside the literal it went wrong, and why.
struct IsoError {
  std::size_t offset = 0;
  std::size_t length = 0;
  std::string message;
};

class IsoReader {
 public:
  explicit IsoReader(std::string_view s) : s_(s) {}

  /// The whole literal as `kind`, or the first error.
  std::variant<std::int64_t, IsoError> read(IsoKind kind) {
    std::int64_t v = 0;
    bool ok = false;
    switch (kind) {
      case IsoKind::kDate: ok = date(v); break;
      case IsoKind::kTime: ok = time_of_day(v, nullptr); break;
      case IsoKind::kTimestamp: ok = timestamp(v); break;
    }
    if (ok && at_ != s_.size()) {
      ok = fail(at_, s_.size() - at_, "unexpected '" + std::string(s_.substr(at_, 16)) + "' after the " + std::string(noun(kind)));
    }
    if (!ok) return std::move(error_);
    return v;
  }

  static std::string_view noun(IsoKind kind) noexcept {
    switch (kind) {
      case IsoKind::kDate: return "date";
      case IsoKind::kTime: return "time of day";
      case IsoKind::kTimestamp: return "timestamp";
    }
    return "value";
  }

 private:
  bool fail(std::size_t offset, std::size_t length, std::string message) {
    error_ = IsoError{offset, length, std::move(message)};
    return false;
  }

  // Exactly `n` digits, their value within [lo, hi].
  bool field(std::size_t n, int lo, int hi, std::string_view what, int& out) {
    const std::size_t from = at_;
    int v = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (at_ >= s_.size() || !is_digit(s_[at_])) {
        std::size_t end = from;
        while (end < s_.size() && is_digit(s_[end])) ++end;
        return fail(from, std::max<std::size_t>(end - from, 1),
                    std::string(what) + ": expected " + std::to_string(n) + " digits");
      }
      v = v * 10 + (s_[at_] - '0');
      ++at_;
    }
    if (at_ < s_.size() && is_digit(s_[at_])) {
      return fail(from, n + 1, std::string(what) + ": expected " + std::to_string(n) + " digits");
    }
    if (v < lo || v > hi) {
      const auto padded = [n](int x) {
        std::string t = std::to_string(x);
        return std::string(n > t.size() ? n - t.size() : 0, '0') + t;
      };
      return fail(from, n, std::string(what) + " " + std::string(s_.substr(from, n)) + " out of range " + padded(lo) +
                               ".." + padded(hi));
    }
    out = v;
    return true;
  }

  bool expect(char c, std::string_view what) {
    if (at_ < s_.size() && s_[at_] == c) {
      ++at_;
      return true;
    }
    return fail(at_, at_ < s_.size() ? 1 : 0, "expected '" + std::string(1, c) + "' " + std::string(what));
  }

  // YYYY-MM-DD -> days since 1970-01-01.
  bool date(std::int64_t& days) {
    const std::size_t from = at_;
    int y = 0, m = 0, d = 0;
    if (!field(4, 0, 9999, "year", y) || !expect('-', "after the year (YYYY-MM-DD)") ||
        !field(2, 1, 12, "month", m) || !expect('-', "after the month (YYYY-MM-DD)") || !field(2, 1, 31, "day", d)) {
      return false;
    }
    const std::chrono::year_month_day ymd{std::chrono::year{y}, std::chrono::month{static_cast<unsigned>(m)},
                                          std::chrono::day{static_cast<unsigned>(d)}};
    if (!ymd.ok()) return fail(from, at_ - from, "no such date: " + std::string(s_.substr(from, at_ - from)));
    days = std::chrono::sys_days{ymd}.time_since_epoch().count();
    return true;
  }

  // hh:mm[:ss[.f{1,6}]] -> seconds since midnight (and microseconds, if `micros` may take them).
  bool time_of_day(std::int64_t& seconds, std::int64_t* micros) {
    int h = 0, mi = 0, sec = 0;
    if (!field(2, 0, 23, "hour", h) || !expect(':', "after the hour (hh:mm:ss)") || !field(2, 0, 59, "minute", mi)) {
      return false;
    }
    if (at_ < s_.size() && s_[at_] == ':') {
      ++at_;
      if (!field(2, 0, 59, "second", sec)) return false;
      if (at_ < s_.size() && s_[at_] == '.') {
        const std::size_t from = at_;
        ++at_;
        std::int64_t f = 0;
        std::size_t n = 0;
        while (at_ < s_.size() && is_digit(s_[at_])) {
          if (n < 6) f = f * 10 + (s_[at_] - '0');
          ++n;
          ++at_;
        }
        if (micros == nullptr) return fail(from, at_ - from, "a time of day is whole seconds: no fraction");
        if (n == 0 || n > 6) return fail(from, std::max<std::size_t>(at_ - from, 1), "fraction of a second: 1 to 6 digits (microseconds)");
        for (; n < 6; ++n) f *= 10;
        *micros = f;
      }
    }
    seconds = std::int64_t{h} * 3600 + std::int64_t{mi} * 60 + sec;
    return true;
  }

  // date 'T' time ('Z' | ('+' | '-') hh:mm) -> microseconds since the epoch, UTC.
  bool timestamp(std::int64_t& us) {
    std::int64_t days = 0, seconds = 0, micros = 0;
    if (!date(days)) return false;
    if (at_ >= s_.size() || (s_[at_] != 'T' && s_[at_] != 't')) {
      return fail(at_, at_ < s_.size() ? 1 : 0,
                  "expected 'T' and a time with its UTC offset after the date (2026-11-27T10:00:00Z)");
    }
    ++at_;
    if (!time_of_day(seconds, &micros)) return false;
    std::int64_t offset = 0;
    if (at_ < s_.size() && (s_[at_] == 'Z' || s_[at_] == 'z')) {
      ++at_;
    } else if (at_ < s_.size() && (s_[at_] == '+' || s_[at_] == '-')) {
      const bool minus = s_[at_] == '-';
      ++at_;
      int oh = 0, om = 0;
      if (!field(2, 0, 23, "offset hour", oh) || !expect(':', "in the UTC offset (+hh:mm)") ||
          !field(2, 0, 59, "offset minute", om)) {
        return false;
      }
      offset = (std::int64_t{oh} * 3600 + std::int64_t{om} * 60) * (minus ? -1 : 1);
    } else {
      return fail(at_, at_ < s_.size() ? 1 : 0, "expected the UTC offset: 'Z' or +hh:mm / -hh:mm");
    }
    us = ((days * 86400) + seconds - offset) * 1'000'000 + micros;
    return true;
  }

  std::string_view s_;
  std::size_t at_ = 0;
  IsoError error_;
};

enum class Tok : std::uint8_t { kWord, kInteger, kReal, kString, kColour, kOp, kLParen, kRParen, kEnd };

struct Token {
  Tok kind = Tok::kEnd;
  std::size_t position = 0;
  std::size_t length = 0;
  std::string_view text;    // the source bytes
  std::string value;        // kString: the unescaped contents
  CompareOp op = CompareOp::kEq;
  bool single_equals = false;  // kOp written as '=' (accepted as '==' in comparisons; required by set)
};

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  std::variant<Query, ParseError> run() {
    if (text_.size() > kMaxQueryLength) {
      fail(kMaxQueryLength, text_.size() - kMaxQueryLength, "at most " + std::to_string(kMaxQueryLength) + " bytes",
           "query too long: " + std::to_string(text_.size()) + " bytes, at most " +
               std::to_string(kMaxQueryLength));
      return std::move(*error_);
    }
    Query q;
    if (!parse_query(q)) return std::move(*error_);
    if (const std::size_t canonical = to_string(q).size(); canonical > kMaxQueryLength) {
      fail(0, text_.size(), "a shorter query",
           "query too long: its canonical form is " + std::to_string(canonical) + " bytes, at most " +
               std::to_string(kMaxQueryLength));
      return std::move(*error_);
    }
    return q;
  }

 private:
  // ---- Errors -----------------------------------------------------------------------------------

  bool fail(std::size_t position, std::size_t length, std::string expected, std::string message) {
    error_ = ParseError{position, length, std::move(expected), std::move(message)};
    return false;
  }
  bool fail_at_token(std::string expected, std::string message) {
    return fail(tok_.position, tok_.length, std::move(expected), std::move(message));
  }
  // "expected X, found Y" at the current token.
  bool fail_expected(std::string expected) {
    std::string message = "expected " + expected + ", found " + describe(tok_);
    return fail_at_token(std::move(expected), std::move(message));
  }

  static std::string describe(const Token& t) {
    if (t.kind == Tok::kEnd) return "end of query";
    constexpr std::size_t kShown = 40;
    std::string shown;
    for (const char c : t.text.substr(0, kShown)) {
      shown += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
    }
    if (t.text.size() > kShown) shown += "...";
    if (t.kind == Tok::kString) return shown;  // keeps its own quotes
    if (t.kind == Tok::kWord && is_query_keyword(t.text)) return "keyword '" + shown + "'";
    return "'" + shown + "'";
  }

  // ---- Lexer ------------------------------------------------------------------------------------

  // Reads the next token into tok_; false on a lexical error.
  bool advance() {
    while (at_ < text_.size() && is_space(text_[at_])) ++at_;
    tok_ = Token{};
    tok_.position = at_;
    if (at_ == text_.size()) {
      tok_.kind = Tok::kEnd;
      return true;
    }
    const std::size_t start = at_;
    const char c = text_[at_];
    const auto next_is = [&](char n) { return at_ + 1 < text_.size() && text_[at_ + 1] == n; };
    if (c == '(' || c == ')') {
      tok_.kind = c == '(' ? Tok::kLParen : Tok::kRParen;
      ++at_;
    } else if (c == '=' || c == '!' || c == '<' || c == '>') {
      tok_.kind = Tok::kOp;
      const bool eq = next_is('=');
      switch (c) {
        case '=': tok_.op = CompareOp::kEq; tok_.single_equals = !eq; break;
        case '<': tok_.op = eq ? CompareOp::kLe : CompareOp::kLt; break;
        case '>': tok_.op = eq ? CompareOp::kGe : CompareOp::kGt; break;
        default:
          if (!eq) {
            return fail(start, 1, "a comparison ('==', '!=', '<', '<=', '>', '>=')",
                        "unexpected '!': write '!=' to compare or 'not' to negate");
          }
          tok_.op = CompareOp::kNe;
          break;
      }
      at_ += eq ? 2 : 1;
    } else if (c == '"') {
      if (!lex_string()) return false;
    } else if (c == '#') {
      ++at_;
      while (at_ < text_.size() && is_word_char(text_[at_])) ++at_;
      if (at_ == start + 1) return fail(start, 1, "a colour such as #ff8000", "'#' must start a colour such as #ff8000");
      tok_.kind = Tok::kColour;
    } else if (is_digit(c) || (c == '-' && at_ + 1 < text_.size() && is_digit(text_[at_ + 1]))) {
      lex_number();
    } else if (is_word_char(c)) {
      while (at_ < text_.size() && is_word_char(text_[at_])) ++at_;
      tok_.kind = Tok::kWord;
    } else {
      const std::size_t n = std::min(utf8_length(static_cast<unsigned char>(c)), text_.size() - start);
      std::string shown = static_cast<unsigned char>(c) < 0x20 || c == 0x7f
                              ? "control character " + std::to_string(static_cast<int>(c))
                              : "character '" + std::string(text_.substr(start, n)) + "'";
      return fail(start, n, "a word, a number, a quoted string, a comparison or a parenthesis",
                  "unexpected " + shown + " (names with other characters must be quoted)");
    }
    tok_.length = at_ - start;
    tok_.text = text_.substr(start, tok_.length);
    return true;
  }

  bool lex_string() {
    const std::size_t start = at_;
    ++at_;
    while (at_ < text_.size()) {
      const char c = text_[at_];
      if (c == '"') {
        ++at_;
        tok_.kind = Tok::kString;
        return true;
      }
      if (c == '\\') {
        if (at_ + 1 < text_.size() && (text_[at_ + 1] == '"' || text_[at_ + 1] == '\\')) {
          tok_.value += text_[at_ + 1];
          at_ += 2;
          continue;
        }
        if (at_ + 1 >= text_.size()) break;  // unterminated
        const std::size_t n = std::min(utf8_length(static_cast<unsigned char>(text_[at_ + 1])), text_.size() - at_ - 1);
        return fail(at_, 1 + n, "\\\" or \\\\",
                    "unknown escape '\\" + std::string(text_.substr(at_ + 1, n)) +
                        "' in a string: only \\\" and \\\\ are escapes");
      }
      tok_.value += c;
      ++at_;
    }
    return fail(start, text_.size() - start, "a closing '\"'", "unterminated string: missing the closing '\"'");
  }

  // -?digits[.digits][(e|E)[+-]digits]; glued to more word characters it is a word ("2024-01-01").
  void lex_number() {
    const auto digits = [&] {
      const std::size_t from = at_;
      while (at_ < text_.size() && is_digit(text_[at_])) ++at_;
      return at_ > from;
    };
    if (text_[at_] == '-') ++at_;
    digits();
    bool real = false;
    if (at_ + 1 < text_.size() && text_[at_] == '.' && is_digit(text_[at_ + 1])) {
      ++at_;
      digits();
      real = true;
    }
    if (at_ < text_.size() && (text_[at_] == 'e' || text_[at_] == 'E')) {
      std::size_t e = at_ + 1;
      if (e < text_.size() && (text_[e] == '+' || text_[e] == '-')) ++e;
      if (e < text_.size() && is_digit(text_[e])) {
        at_ = e;
        digits();
        real = true;
      }
    }
    tok_.kind = real ? Tok::kReal : Tok::kInteger;
    if (at_ < text_.size() && is_word_char(text_[at_])) {
      // A '+' between digits stays in the word: the UTC offset of 2026-11-27T10:00:00+01:00.
      const auto offset_plus = [&] {
        return text_[at_] == '+' && is_digit(text_[at_ - 1]) && at_ + 1 < text_.size() && is_digit(text_[at_ + 1]);
      };
      while (at_ < text_.size() && (is_word_char(text_[at_]) || offset_plus())) ++at_;
      tok_.kind = Tok::kWord;
    }
  }

  // ---- Grammar ----------------------------------------------------------------------------------

  bool at_keyword(std::string_view k) const { return tok_.kind == Tok::kWord && iequals(tok_.text, k); }

  bool parse_query(Query& q) {
    if (!advance()) return false;
    if (tok_.kind == Tok::kEnd) {
      return fail(0, 0, "an action (" + std::string(kActionList) + ")",
                  "empty query: expected an action (" + std::string(kActionList) + ")");
    }
    const ActionName* action = nullptr;
    if (tok_.kind == Tok::kWord) {
      for (const ActionName& a : kActions) {
        if (iequals(tok_.text, a.name)) action = &a;
      }
    }
    if (action == nullptr) {
      std::string expected = "an action (" + std::string(kActionList) + ")";
      std::string message = "expected " + expected + ", found " + describe(tok_);
      std::array<std::string_view, std::size(kActions)> names{};
      for (std::size_t i = 0; i < names.size(); ++i) names[i] = kActions[i].name;
      if (tok_.kind == Tok::kWord) {
        if (const std::string_view guess = closest(tok_.text, names); !guess.empty()) {
          message += " — did you mean '" + std::string(guess) + "'?";
        }
      }
      return fail_at_token(std::move(expected), std::move(message));
    }
    q.action = action->action;
    if (!advance()) return false;
    if (q.action == Action::kSet) {
      if (!parse_set(q)) return false;
    } else if (!parse_target(q)) {
      return false;
    }
    const char* expected_next = "'where', 'in' or end of query";
    if (at_keyword("where")) {
      if (!advance() || !parse_or(q.where, 0)) return false;
      expected_next = "'and', 'or', 'in' or end of query";
    }
    while (at_keyword("in")) {
      Scope s;
      if (!parse_scope(s)) return false;
      q.scopes.push_back(std::move(s));
      expected_next = "'in' or end of query";
    }
    if (tok_.kind != Tok::kEnd) return fail_expected(expected_next);
    return true;
  }

  bool parse_target(Query& q) {
    const bool needs_target = q.action == Action::kGet || q.action == Action::kSum || q.action == Action::kAvg ||
                              q.action == Action::kMin || q.action == Action::kMax;
    const bool needs_numeric = needs_target && q.action != Action::kGet;
    const std::string action(to_string(q.action));
    const bool no_target_here = tok_.kind == Tok::kEnd || at_keyword("where") || at_keyword("in");
    if (no_target_here && !needs_target) return true;
    std::string expected = needs_numeric ? "a numeric component to " + action + " (int64 or real)"
                           : needs_target ? "a component to " + action
                                          : "a component, 'where', 'in' or end of query";
    if (no_target_here) {
      return fail_at_token(expected, action + " needs a target: expected " + expected + ", found " + describe(tok_));
    }
    const ComponentInfo* info = nullptr;
    if (!parse_component(info, expected, {"where", "in"})) return false;
    if (needs_numeric && !is_numeric(info->encoding)) {
      return fail_at_token(expected, action + " needs a numeric target (int64 or real), but " +
                                         std::string(info->name) + " is " +
                                         std::string(encoding_noun(info->encoding)));
    }
    q.target = info->id;
    return advance();
  }

  bool parse_set(Query& q) {
    const ComponentInfo* info = nullptr;
    if (tok_.kind == Tok::kEnd || at_keyword("where") || at_keyword("in")) {
      return fail_expected("a component to set");
    }
    if (!parse_component(info, "a component to set", {})) return false;
    if (info->encoding == Encoding::kMarker || info->encoding == Encoding::kList) {
      return fail_at_token("a component with a settable value",
                           std::string(info->name) + " is " + std::string(encoding_noun(info->encoding)) +
                               (info->encoding == Encoding::kMarker ? " (presence only)" : "") +
                               ": it has no value that set can write");
    }
    q.target = info->id;
    if (!advance()) return false;
    if (!(tok_.kind == Tok::kOp && tok_.single_equals) && !at_keyword("to")) return fail_expected("'=' or 'to'");
    if (!advance()) return false;
    Literal value;
    if (!parse_literal(*info, value)) return false;
    q.set_value = std::move(value);
    return advance();
  }

  // The current token must name a component; on success tok_ is still that token.
  bool parse_component(const ComponentInfo*& info, const std::string& expected,
                       std::initializer_list<std::string_view> keywords_here) {
    if (tok_.kind != Tok::kWord || is_query_keyword(tok_.text)) return fail_expected(expected);
    info = ipc::find_component(tok_.text);
    if (info != nullptr) return true;
    std::vector<std::string_view> candidates;
    for (const ComponentInfo& c : ipc::kComponents) candidates.push_back(c.name);
    candidates.insert(candidates.end(), keywords_here.begin(), keywords_here.end());
    std::string message = "unknown component '" + std::string(tok_.text.substr(0, 64)) + "'";
    if (const std::string_view guess = closest(tok_.text, candidates); !guess.empty()) {
      message += " — did you mean '" + std::string(guess) + "'?";
    }
    return fail_at_token(expected, std::move(message));
  }

  // or := and ('or' and)*
  bool parse_or(Filter& out, std::size_t depth) {
    Filter first;
    if (!parse_and(first, depth)) return false;
    if (!at_keyword("or")) {
      out = std::move(first);
      return true;
    }
    Filter result;
    result.kind = Filter::Kind::kOr;
    append_flattened(result, std::move(first));
    while (at_keyword("or")) {
      if (!advance()) return false;
      Filter next;
      if (!parse_and(next, depth)) return false;
      append_flattened(result, std::move(next));
    }
    out = std::move(result);
    return true;
  }

  // and := unary ('and' unary)*
  bool parse_and(Filter& out, std::size_t depth) {
    Filter first;
    if (!parse_unary(first, depth)) return false;
    if (!at_keyword("and")) {
      out = std::move(first);
      return true;
    }
    Filter result;
    result.kind = Filter::Kind::kAnd;
    append_flattened(result, std::move(first));
    while (at_keyword("and")) {
      if (!advance()) return false;
      Filter next;
      if (!parse_unary(next, depth)) return false;
      append_flattened(result, std::move(next));
    }
    out = std::move(result);
    return true;
  }

  // `(a and b) and c` is `a and b and c`: one canonical shape per meaning up to order.
  static void append_flattened(Filter& parent, Filter child) {
    if (child.kind == parent.kind) {
      for (Filter& grandchild : child.children) parent.children.push_back(std::move(grandchild));
    } else {
      parent.children.push_back(std::move(child));
    }
  }

  // unary := 'not' unary | 'without' C | 'with' C | '(' or ')' | primary
  bool parse_unary(Filter& out, std::size_t depth) {
    const bool opens = at_keyword("not") || tok_.kind == Tok::kLParen;
    if (opens && depth >= kMaxQueryDepth) {
      return fail_at_token("at most " + std::to_string(kMaxQueryDepth) + " nested '(' and 'not'",
                           "nesting too deep: at most " + std::to_string(kMaxQueryDepth) +
                               " levels of '(' and 'not'");
    }
    if (at_keyword("not")) {
      if (!advance()) return false;
      Filter inner;
      if (!parse_unary(inner, depth + 1)) return false;
      out = Filter{};
      out.kind = Filter::Kind::kNot;
      out.children.push_back(std::move(inner));
      return true;
    }
    if (tok_.kind == Tok::kLParen) {
      const std::size_t open = tok_.position;
      if (!advance() || !parse_or(out, depth + 1)) return false;
      if (tok_.kind != Tok::kRParen) {
        std::string expected = "'and', 'or' or ')'";
        std::string message = "expected " + expected + ", found " + describe(tok_) + " (the '(' at column " +
                              std::to_string(open + 1) + " is not closed)";
        return fail_at_token(std::move(expected), std::move(message));
      }
      return advance();
    }
    if (at_keyword("with") || at_keyword("without")) {
      const bool without = at_keyword("without");
      const std::string keyword(without ? "without" : "with");
      if (!advance()) return false;
      const ComponentInfo* info = nullptr;
      if (!parse_component(info, "a component after '" + keyword + "'", {})) return false;
      Filter has;
      has.kind = Filter::Kind::kHas;
      has.component = info->id;
      if (!advance()) return false;
      if (tok_.kind == Tok::kOp) {
        return fail_at_token("'and', 'or', 'in' or end of query",
                             "'" + keyword + " " + std::string(info->name) +
                                 "' tests presence only: drop '" + keyword + "' to compare the value");
      }
      if (without) {
        out = Filter{};
        out.kind = Filter::Kind::kNot;
        out.children.push_back(std::move(has));
      } else {
        out = std::move(has);
      }
      return true;
    }
    return parse_primary(out);
  }

  // primary := Component [cmp literal]
  bool parse_primary(Filter& out) {
    const ComponentInfo* info = nullptr;
    if (!parse_component(info, "a component, 'not', 'with', 'without' or '('", {"not", "with", "without"})) return false;
    out = Filter{};
    out.component = info->id;
    if (!advance()) return false;
    if (tok_.kind != Tok::kOp) {
      out.kind = Filter::Kind::kHas;
      return true;
    }
    const std::string name(info->name);
    if (info->encoding == Encoding::kMarker) {
      return fail_at_token("'and', 'or', 'in' or end of query",
                           name + " is a marker (presence only) and has no value to compare: write '" + name +
                               "' alone");
    }
    if (info->encoding == Encoding::kList) {
      return fail_at_token("'and', 'or', 'in' or end of query",
                           name + " is a list: only its presence can be tested, write '" + name + "' alone");
    }
    const bool ordering = tok_.op != CompareOp::kEq && tok_.op != CompareOp::kNe;
    const bool ordered = is_numeric(info->encoding) || info->encoding == Encoding::kTimestamp;
    if (ordering && !ordered) {
      return fail_at_token("'==' or '!='", "'" + std::string(to_string(tok_.op)) + "' does not apply to " + name +
                                               " (" + std::string(encoding_noun(info->encoding)) +
                                               "): only '==' and '!=' do");
    }
    out.kind = Filter::Kind::kCompare;
    out.op = tok_.op;
    if (!advance()) return false;
    if (!parse_literal(*info, out.value)) return false;
    return advance();
  }

  // The current token as a value of `info`'s encoding, in the AST's normal form.
  bool parse_literal(const ComponentInfo& info, Literal& out) {
    const std::string name(info.name);
    const auto wrong = [&](std::string expected) {
      std::string message = name + " holds " + std::string(encoding_noun(info.encoding)) + ": expected " + expected +
                            ", found " + describe(tok_);
      return fail_at_token(std::move(expected), std::move(message));
    };
    switch (info.encoding) {
      case Encoding::kBool:
        if (at_keyword("true") || at_keyword("false")) {
          out = at_keyword("true");
          return true;
        }
        return wrong("true or false");
      case Encoding::kInt64:
      case Encoding::kTimestamp: {
        const std::optional<IsoKind> iso = iso_kind(info);
        std::string expected = !iso                          ? "an integer"
                               : *iso == IsoKind::kTimestamp ? "an integer (microseconds since 1970-01-01 UTC) or a "
                                                               "UTC time such as 2026-11-27T10:00:00Z"
                               : *iso == IsoKind::kDate ? "an integer (days since 1970-01-01) or a date such as 2026-11-27"
                                                        : "an integer (seconds since midnight) or a time such as 10:00:00";
        if (iso && tok_.kind == Tok::kWord && is_digit(tok_.text.front())) return parse_iso(*iso, expected, out);
        if (tok_.kind != Tok::kInteger) return wrong(std::move(expected));
        std::int64_t v = 0;
        if (!parse_int(v)) return false;
        out = v;
        return true;
      }
      case Encoding::kReal:
        if (tok_.kind == Tok::kInteger) {
          std::int64_t v = 0;
          if (!parse_int(v)) return false;
          out = static_cast<double>(v);
          return true;
        }
        if (tok_.kind == Tok::kReal) {
          double v = 0;
          const auto r = std::from_chars(tok_.text.data(), tok_.text.data() + tok_.text.size(), v);
          if (r.ec != std::errc{} || r.ptr != tok_.text.data() + tok_.text.size()) {
            return fail_at_token("a real within about 1e-308 .. 1e308",
                                 "real out of range: " + std::string(tok_.text.substr(0, 64)));
          }
          out = v;
          return true;
        }
        return wrong("a number");
      case Encoding::kEnum: {
        std::string expected = "one of " + name + "'s values (" + enum_values_list(info) + ")";
        if (tok_.kind != Tok::kWord && tok_.kind != Tok::kString) return wrong(std::move(expected));
        const std::string_view word = tok_.kind == Tok::kWord ? tok_.text : std::string_view(tok_.value);
        for (const std::string_view v : info.enum_values) {
          if (iequals(v, word)) {
            out = std::string(v);
            return true;
          }
        }
        std::string message = "unknown " + name + " value " + describe(tok_);
        if (const std::string_view guess = closest(word, info.enum_values); !guess.empty()) {
          message += " — did you mean '" + std::string(guess) + "'?";
        }
        message += " (values: " + enum_values_list(info) + ")";
        return fail_at_token(std::move(expected), std::move(message));
      }
      case Encoding::kRgb: {
        const std::string_view s = tok_.kind == Tok::kColour ? tok_.text
                                   : tok_.kind == Tok::kString ? std::string_view(tok_.value)
                                                               : std::string_view{};
        const bool ok = s.size() == 7 && s[0] == '#' && std::all_of(s.begin() + 1, s.end(), is_hex);
        if (!ok) return wrong("a colour #rrggbb");
        std::string colour(s);
        for (char& c : colour) c = lower(c);
        out = std::move(colour);
        return true;
      }
      case Encoding::kText:
        if (tok_.kind == Tok::kWord) {
          // The likeliest slip: a bare word where text needs quotes. Say how to write it.
          return fail_at_token("a quoted string", name + " holds text: expected a quoted string, found " +
                                                      describe(tok_) + " (write \"" +
                                                      std::string(tok_.text.substr(0, 40)) + "\")");
        }
        if (tok_.kind != Tok::kString) return wrong("a quoted string");
        out = tok_.value;
        return true;
      case Encoding::kMarker:
      case Encoding::kList: break;  // refused by the callers
    }
    return wrong("a value");
  }

  static std::optional<IsoKind> iso_kind(const ComponentInfo& info) noexcept {
    if (info.encoding == Encoding::kTimestamp) return IsoKind::kTimestamp;
    if (info.id == Component::Date) return IsoKind::kDate;
    if (info.id == Component::Time) return IsoKind::kTime;
    return std::nullopt;
  }

  // The current word as an ISO 8601 literal; an error points into it.
  bool parse_iso(IsoKind kind, const std::string& expected, Literal& out) {
    auto r = IsoReader(tok_.text).read(kind);
    if (auto* v = std::get_if<std::int64_t>(&r)) {
      out = *v;
      return true;
    }
    const IsoError& e = std::get<IsoError>(r);
    // A literal cut short ("2026-") is wrong just past its end: keep the span inside the token, so
    // the caret stays inside the input (the fuzzer found the span one past the end).
    const std::size_t offset = std::min(e.offset, tok_.text.size());
    const std::size_t length = std::min(e.length, tok_.text.size() - offset);
    return fail(tok_.position + offset, length, expected,
                "bad " + std::string(IsoReader::noun(kind)) + " '" + std::string(tok_.text.substr(0, 64)) + "': " +
                    e.message);
  }

  bool parse_int(std::int64_t& v) {
    const auto r = std::from_chars(tok_.text.data(), tok_.text.data() + tok_.text.size(), v);
    if (r.ec != std::errc{} || r.ptr != tok_.text.data() + tok_.text.size()) {
      return fail_at_token("an integer from -9223372036854775808 to 9223372036854775807",
                           "integer out of range: " + std::string(tok_.text.substr(0, 64)) +
                               " does not fit in int64");
    }
    return true;
  }

  // scope := 'in' ('group' NAME | 'device' NAME | 'entity' PATTERN)
  bool parse_scope(Scope& s) {
    if (!advance()) return false;
    std::string noun;
    if (at_keyword("group")) {
      s.kind = Scope::Kind::kGroup;
      noun = "a group name";
    } else if (at_keyword("device")) {
      s.kind = Scope::Kind::kDevice;
      noun = "a device name";
    } else if (at_keyword("entity")) {
      s.kind = Scope::Kind::kEntityGlob;
      noun = "an entity pattern";
    } else {
      return fail_expected("'group', 'device' or 'entity'");
    }
    if (!advance()) return false;
    switch (tok_.kind) {
      case Tok::kWord:
        if (is_query_keyword(tok_.text)) {
          return fail_at_token(noun, "expected " + noun + ", found " + describe(tok_) +
                                         " (quote it to use it as a name: \"" + std::string(tok_.text) + "\")");
        }
        [[fallthrough]];
      case Tok::kInteger:
      case Tok::kReal:
        s.name = std::string(tok_.text);
        break;
      case Tok::kString:
        if (tok_.value.empty()) return fail_at_token(noun, "expected " + noun + ", found an empty string");
        s.name = tok_.value;
        break;
      default: return fail_expected(noun);
    }
    return advance();
  }

  std::string_view text_;
  std::size_t at_ = 0;
  Token tok_;
  std::optional<ParseError> error_;
};

// Columns on screen of text_[from, to): UTF-8 continuation bytes take none.
std::size_t columns(std::string_view text) {
  std::size_t n = 0;
  for (const char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

}  // namespace

bool is_query_keyword(std::string_view word) noexcept {
  return std::any_of(kKeywords.begin(), kKeywords.end(), [&](std::string_view k) { return iequals(k, word); });
}

std::variant<Query, ParseError> parse_query_detailed(std::string_view text) { return Parser(text).run(); }

Result<Query> parse_query(std::string_view text) {
  auto r = parse_query_detailed(text);
  if (auto* q = std::get_if<Query>(&r)) return std::move(*q);
  return tl::unexpected(Error{"parse_query", 0, render_parse_error(text, std::get<ParseError>(r))});
}

std::string render_parse_error(std::string_view text, const ParseError& error) {
  const std::size_t position = std::min(error.position, text.size());
  const std::size_t end = std::min(position + error.length, text.size());
  // Long queries show a window around the error, cut on UTF-8 boundaries.
  constexpr std::size_t kBefore = 40, kWidth = 100;
  std::size_t from = 0, to = text.size();
  if (columns(text) > kWidth) {
    from = position > kBefore ? position - kBefore : 0;
    while (from > 0 && (static_cast<unsigned char>(text[from]) & 0xC0) == 0x80) --from;
    to = std::min(text.size(), from + kWidth);
    while (to < text.size() && (static_cast<unsigned char>(text[to]) & 0xC0) == 0x80) ++to;
  }
  std::string line = from > 0 ? "..." : "";
  const std::size_t lead = line.size();
  for (const char c : text.substr(from, to - from)) {
    line += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? ' ' : c;
  }
  if (to < text.size()) line += "...";

  const std::size_t caret_column = lead + columns(text.substr(from, position - from));
  const std::size_t shown_end = std::min(end, to);
  const std::size_t carets = shown_end > position ? std::max<std::size_t>(1, columns(text.substr(position, shown_end - position))) : 1;
  std::string out = std::move(line);
  out += '\n';
  out.append(caret_column, ' ');
  out.append(carets, '^');
  out += ' ';
  out += error.message;
  return out;
}

}  // namespace floe::core
