// The canonical printer of the query AST. Its output is what parse_query accepts and what watcher
// deduplication compares, so every choice here (lower-case keywords, catalogue spelling of names,
// single spaces, `==`, minimal parentheses, shortest round-tripping reals) is part of the contract
// `parse_query(to_string(q)) == q`.
#include "floe/core/query.hpp"

#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>

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
    append_int(out, *i);
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

}  // namespace

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
