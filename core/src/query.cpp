// The canonical printer of the query AST. Its output is what parse_query accepts and what watcher
// deduplication compares, so every choice here (lower-case keywords, catalogue spelling of names,
// single spaces, `==`, minimal parentheses, shortest round-tripping reals) is part of the contract
// `parse_query(to_string(q)) == q`.
#include "floe/core/query.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include "floe/core/query_parser.hpp"

namespace floe::core {
namespace {

bool is_name_char(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
         c == ':' || c == '*' || c == '?' || c == '-';
}

void append_quoted(std::string& out, std::string_view s) {
  out += '"';
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += '"';
}

// A name the lexer reads back as one token of the same text, and that the parser does not take for
// a keyword, may stay bare; anything else is quoted.
void append_name(std::string& out, std::string_view name) {
  bool bare = !name.empty() && !is_query_keyword(name);
  for (const char c : name) bare = bare && is_name_char(c);
  if (bare) {
    out += name;
  } else {
    append_quoted(out, name);
  }
}

void append_int(std::string& out, std::int64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

void append_real(std::string& out, double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest text that reads back exactly
  const std::string_view text(buf, static_cast<std::size_t>(r.ptr - buf));
  out += text;
  // "1" would read back as an integer; keep reals recognisable (nan/inf never come from the parser).
  if (text.find_first_of(".eEni") == std::string_view::npos) out += ".0";
}

// Two (or four) digits, zero-padded.
void append_digits(std::string& out, std::int64_t v, int width) {
  char buf[8];
  for (int i = width - 1; i >= 0; --i, v /= 10) buf[i] = static_cast<char>('0' + v % 10);
  out.append(buf, static_cast<std::size_t>(width));
}

// Days since 1970-01-01 as YYYY-MM-DD; false (nothing appended) outside years 0000-9999, which the
// parser cannot read back.
bool append_date(std::string& out, std::int64_t days) {
  constexpr std::int64_t kFirst = -719528;  // 0000-01-01
  constexpr std::int64_t kLast = 2932896;   // 9999-12-31
  if (days < kFirst || days > kLast) return false;
  const std::chrono::year_month_day ymd{std::chrono::sys_days{std::chrono::days{days}}};
  append_digits(out, static_cast<int>(ymd.year()), 4);
  out += '-';
  append_digits(out, static_cast<unsigned>(ymd.month()), 2);
  out += '-';
  append_digits(out, static_cast<unsigned>(ymd.day()), 2);
  return true;
}

void append_time_of_day(std::string& out, std::int64_t seconds) {
  append_digits(out, seconds / 3600, 2);
  out += ':';
  append_digits(out, seconds / 60 % 60, 2);
  out += ':';
  append_digits(out, seconds % 60, 2);
}

// Timestamp, Date and Time values print as ISO 8601 where the parser reads them back exactly
// (docs/QUERY_LANGUAGE.md), as integers elsewhere.
bool append_iso(std::string& out, Component component, std::int64_t v) {
  if (component == Component::Date) return append_date(out, v);
  if (component == Component::Time) {
    if (v < 0 || v >= 86400) return false;
    append_time_of_day(out, v);
    return true;
  }
  const ipc::ComponentInfo* info = ipc::find_component(component);
  if (info == nullptr || info->encoding != ipc::Encoding::kTimestamp) return false;
  constexpr std::int64_t kUsPerDay = 86'400'000'000;
  const std::int64_t days = v >= 0 ? v / kUsPerDay : -((-(v + 1)) / kUsPerDay) - 1;  // floor
  if (!append_date(out, days)) return false;
  const std::int64_t us = v - days * kUsPerDay;  // in range: the date is
  out += 'T';
  append_time_of_day(out, us / 1'000'000);
  if (std::int64_t frac = us % 1'000'000; frac != 0) {
    int width = 6;
    for (; frac % 10 == 0; frac /= 10) --width;
    out += '.';
    append_digits(out, frac, width);
  }
  out += 'Z';
  return true;
}

bool is_colour(std::string_view s) noexcept {
  if (s.size() != 7 || s[0] != '#') return false;
  for (const char c : s.substr(1)) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

void append_literal(std::string& out, Component component, const Literal& value) {
  if (const auto* b = std::get_if<bool>(&value)) {
    out += *b ? "true" : "false";
  } else if (const auto* i = std::get_if<std::int64_t>(&value)) {
    if (!append_iso(out, component, *i)) append_int(out, *i);
  } else if (const auto* d = std::get_if<double>(&value)) {
    append_real(out, *d);
  } else {
    const auto& s = std::get<std::string>(value);
    // Enum names and colours print bare (they are words to the lexer); text is always quoted so
    // it can never be mistaken for a keyword or a number.
    const ipc::ComponentInfo* info = ipc::find_component(component);
    const bool bare = info != nullptr && ((info->encoding == ipc::Encoding::kEnum && enum_value(component, s)) ||
                                          (info->encoding == ipc::Encoding::kRgb && is_colour(s)));
    if (bare) {
      out += s;
    } else {
      append_quoted(out, s);
    }
  }
}

void append_component(std::string& out, Component c) {
  const std::string_view name = ipc::component_name(c);
  if (name.empty()) {
    out += "<component ";  // not a catalogue id: cannot come from the parser
    append_int(out, ipc::to_id(c));
    out += '>';
  } else {
    out += name;
  }
}

// Binding strength: or < and < everything else. A child weaker than its context gets parentheses.
int precedence(Filter::Kind k) noexcept {
  switch (k) {
    case Filter::Kind::kOr: return 1;
    case Filter::Kind::kAnd: return 2;
    default: return 3;
  }
}

void append_filter(std::string& out, const Filter& f, int context) {
  const bool parens = precedence(f.kind) < context;
  if (parens) out += '(';
  switch (f.kind) {
    case Filter::Kind::kTrue:
      out += "true";  // a nested kTrue cannot come from the parser; this does not parse back
      break;
    case Filter::Kind::kHas:
      append_component(out, f.component);
      break;
    case Filter::Kind::kCompare:
      append_component(out, f.component);
      out += ' ';
      out += to_string(f.op);
      out += ' ';
      append_literal(out, f.component, f.value);
      break;
    case Filter::Kind::kAnd:
    case Filter::Kind::kOr: {
      const bool is_and = f.kind == Filter::Kind::kAnd;
      if (f.children.empty()) out += "true";
      for (std::size_t i = 0; i < f.children.size(); ++i) {
        if (i > 0) out += is_and ? " and " : " or ";
        // Same-kind children print inline: the parser flattens them anyway.
        append_filter(out, f.children[i], is_and ? 2 : 1);
      }
      break;
    }
    case Filter::Kind::kNot:
      out += "not ";
      if (f.children.empty()) {
        out += "true";
      } else {
        append_filter(out, f.children.front(), 3);
      }
      break;
  }
  if (parens) out += ')';
}

// Sorts the operands of every `and`/`or` below and at `f` by their canonical text and drops
// repeated ones; a single remaining operand replaces its `and`/`or`.
void canonicalize(Filter& f) {
  for (Filter& c : f.children) canonicalize(c);
  if (f.kind != Filter::Kind::kAnd && f.kind != Filter::Kind::kOr) return;
  std::vector<std::pair<std::string, Filter>> keyed;
  const auto add = [&](Filter&& c) {
    std::string key;
    append_filter(key, c, 1);
    keyed.emplace_back(std::move(key), std::move(c));
  };
  for (Filter& c : f.children) {
    // A child that collapsed to one operand may now be of f's own kind: flatten it again.
    if (c.kind == f.kind) {
      for (Filter& g : c.children) add(std::move(g));
    } else {
      add(std::move(c));
    }
  }
  std::sort(keyed.begin(), keyed.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  keyed.erase(std::unique(keyed.begin(), keyed.end(), [](const auto& a, const auto& b) { return a.first == b.first; }),
              keyed.end());
  if (keyed.size() == 1) {
    Filter only = std::move(keyed.front().second);
    f = std::move(only);
    return;
  }
  f.children.clear();
  for (auto& [key, c] : keyed) f.children.push_back(std::move(c));
}

}  // namespace

Query canonical(Query q) {
  canonicalize(q.where);
  const auto order = [](const Scope& s) { return std::tie(s.kind, s.name); };
  std::sort(q.scopes.begin(), q.scopes.end(), [&](const Scope& a, const Scope& b) { return order(a) < order(b); });
  q.scopes.erase(std::unique(q.scopes.begin(), q.scopes.end()), q.scopes.end());
  return q;
}

std::string_view to_string(Action a) noexcept {
  switch (a) {
    case Action::kGet: return "get";
    case Action::kList: return "list";
    case Action::kCount: return "count";
    case Action::kSum: return "sum";
    case Action::kAvg: return "avg";
    case Action::kMin: return "min";
    case Action::kMax: return "max";
    case Action::kAny: return "any";
    case Action::kAll: return "all";
    case Action::kSet: return "set";
  }
  return "?";
}

std::string_view to_string(CompareOp op) noexcept {
  switch (op) {
    case CompareOp::kEq: return "==";
    case CompareOp::kNe: return "!=";
    case CompareOp::kLt: return "<";
    case CompareOp::kLe: return "<=";
    case CompareOp::kGt: return ">";
    case CompareOp::kGe: return ">=";
  }
  return "?";
}

std::string to_string(const Query& q) {
  std::string out(to_string(q.action));
  if (q.target) {
    out += ' ';
    append_component(out, *q.target);
  }
  if (q.action == Action::kSet && q.set_value && q.target) {
    out += " = ";
    append_literal(out, *q.target, *q.set_value);
  }
  if (q.where.kind != Filter::Kind::kTrue) {
    out += " where ";
    append_filter(out, q.where, 1);
  }
  for (const Scope& s : q.scopes) {
    switch (s.kind) {
      case Scope::Kind::kGroup: out += " in group "; break;
      case Scope::Kind::kDevice: out += " in device "; break;
      case Scope::Kind::kEntityGlob: out += " in entity "; break;
    }
    append_name(out, s.name);
  }
  return out;
}

}  // namespace floe::core
