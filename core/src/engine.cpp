// Binding: names and literals -> a BoundQuery. Evaluation lives in engine_eval.cpp.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>

#include <fmt/format.h>

#include "floe/core/engine.hpp"
#include "engine_internal.hpp"

namespace floe::core {
namespace {

constexpr std::string_view kOp = "query.bind";

tl::unexpected<Error> bind_error(std::string message) { return logic_error(kOp, message); }

std::string literal_text(const Literal& l) {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
        else if constexpr (std::is_same_v<T, std::string>) return fmt::format("\"{}\"", v);
        else return fmt::format("{}", v);
      },
      l);
}

bool numeric(ipc::Encoding e) noexcept {
  return e == ipc::Encoding::kBool || e == ipc::Encoding::kInt64 || e == ipc::Encoding::kReal;
}

Result<const ipc::ComponentInfo*> known(Component c) {
  const ipc::ComponentInfo* info = ipc::find_component(c);
  if (info == nullptr) return bind_error(fmt::format("unknown component id {}", ipc::to_id(c)));
  return info;
}

std::optional<std::uint32_t> parse_colour(std::string_view s) {
  if (s.size() != 7 || s[0] != '#') return std::nullopt;
  std::uint32_t v = 0;
  const auto [p, ec] = std::from_chars(s.data() + 1, s.data() + 7, v, 16);
  if (ec != std::errc{} || p != s.data() + 7) return std::nullopt;
  return v;
}

std::string enum_names(const ipc::ComponentInfo& info) {
  std::string out;
  for (std::string_view n : info.enum_values) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

/// The packed word of `lit` for a small, non-marker component (set values, == on enum/rgb/bool).
Result<std::uint64_t> literal_word(const ipc::ComponentInfo& info, const Literal& lit) {
  const auto mismatch = [&] {
    return bind_error(fmt::format("{} holds {}; {} does not fit it", info.name, ipc::to_string(info.encoding),
                                  literal_text(lit)));
  };
  switch (info.encoding) {
    case ipc::Encoding::kBool:
      if (const bool* b = std::get_if<bool>(&lit)) return *b ? 1 : 0;
      return mismatch();
    case ipc::Encoding::kInt64:
    case ipc::Encoding::kTimestamp:
      if (const auto* i = std::get_if<std::int64_t>(&lit)) return static_cast<std::uint64_t>(*i);
      return mismatch();
    case ipc::Encoding::kReal:
      if (const auto* i = std::get_if<std::int64_t>(&lit)) return std::bit_cast<std::uint64_t>(static_cast<double>(*i));
      if (const auto* d = std::get_if<double>(&lit)) return std::bit_cast<std::uint64_t>(*d);
      return mismatch();
    case ipc::Encoding::kEnum:
      if (const auto* s = std::get_if<std::string>(&lit)) {
        if (auto v = ipc::enum_value(info.id, *s)) return v->value;
        return bind_error(fmt::format("{} has no value '{}' (values: {})", info.name, *s, enum_names(info)));
      }
      if (const auto* i = std::get_if<std::int64_t>(&lit)) {
        if (*i >= 0 && static_cast<std::size_t>(*i) < info.enum_values.size()) return static_cast<std::uint64_t>(*i);
        return bind_error(fmt::format("{} has no value number {} (values: {})", info.name, *i, enum_names(info)));
      }
      return mismatch();
    case ipc::Encoding::kRgb:
      if (const auto* s = std::get_if<std::string>(&lit)) {
        if (auto v = parse_colour(*s)) return *v;
        return bind_error(fmt::format("{} holds a colour: write it as \"#rrggbb\", not \"{}\"", info.name, *s));
      }
      return mismatch();
    case ipc::Encoding::kMarker:
    case ipc::Encoding::kText:
    case ipc::Encoding::kList: break;
  }
  return mismatch();
}

Result<FilterStep> compile_compare(const Filter& f) {
  auto info_r = known(f.component);
  if (!info_r) return tl::unexpected(std::move(info_r).error());
  const ipc::ComponentInfo& info = **info_r;
  FilterStep st;
  st.kind = FilterStep::Kind::kCompare;
  st.component = f.component;
  st.op = f.op;
  st.encoding = info.encoding;
  const bool equality = f.op == CompareOp::kEq || f.op == CompareOp::kNe;
  const auto mismatch = [&] {
    return bind_error(fmt::format("{} holds {}; cannot compare it with {}", info.name, ipc::to_string(info.encoding),
                                  literal_text(f.value)));
  };
  switch (info.encoding) {
    case ipc::Encoding::kMarker:
      return bind_error(fmt::format("{} is a marker with no value: test its presence (`where {}`), not {} {}",
                                    info.name, info.name, to_string(f.op), literal_text(f.value)));
    case ipc::Encoding::kList:
      return bind_error(fmt::format("{} is a list: lists cannot be compared", info.name));
    case ipc::Encoding::kText:
      if (const auto* s = std::get_if<std::string>(&f.value)) {
        st.compare = CompareKind::kText;
        st.text = *s;
        return st;
      }
      return mismatch();
    case ipc::Encoding::kInt64:
    case ipc::Encoding::kTimestamp:
      if (const auto* i = std::get_if<std::int64_t>(&f.value)) {
        st.compare = CompareKind::kInt;
        st.int_value = *i;
        return st;
      }
      if (const auto* d = std::get_if<double>(&f.value)) {
        st.compare = CompareKind::kReal;
        st.real_value = *d;
        return st;
      }
      return mismatch();
    case ipc::Encoding::kReal:
      if (const auto* i = std::get_if<std::int64_t>(&f.value)) {
        st.compare = CompareKind::kReal;
        st.real_value = static_cast<double>(*i);
        return st;
      }
      if (const auto* d = std::get_if<double>(&f.value)) {
        st.compare = CompareKind::kReal;
        st.real_value = *d;
        return st;
      }
      return mismatch();
    case ipc::Encoding::kBool:
    case ipc::Encoding::kEnum:
    case ipc::Encoding::kRgb: {
      if (!equality) {
        return bind_error(fmt::format("{} holds {}: only == and != apply, not {}", info.name,
                                      ipc::to_string(info.encoding), to_string(f.op)));
      }
      auto w = literal_word(info, f.value);
      if (!w) return tl::unexpected(std::move(w).error());
      st.compare = CompareKind::kWord;
      st.word = *w;
      return st;
    }
  }
  return mismatch();
}

constexpr std::size_t kMaxFilterDepth = 64;

FilterStep make_step(FilterStep::Kind kind, Component c = {}, std::uint16_t arity = 0) {
  FilterStep st;
  st.kind = kind;
  st.component = c;
  st.arity = arity;
  return st;
}

/// Compiles `f` to postfix steps; `depth` tracks the stack the program needs.
Status compile_subtree(const Filter& f, std::vector<FilterStep>& out, std::uint32_t& sp, std::uint32_t& max_sp,
                       std::size_t nesting) {
  if (nesting > kMaxFilterDepth) return bind_error("the filter nests too deeply");
  const auto push = [&](FilterStep st) {
    out.push_back(std::move(st));
    max_sp = std::max(max_sp, ++sp);
  };
  switch (f.kind) {
    case Filter::Kind::kTrue: push(make_step(FilterStep::Kind::kAll)); return {};
    case Filter::Kind::kHas: {
      auto info = known(f.component);
      if (!info) return tl::unexpected(std::move(info).error());
      push(make_step(FilterStep::Kind::kHas, f.component));
      return {};
    }
    case Filter::Kind::kCompare: {
      auto st = compile_compare(f);
      if (!st) return tl::unexpected(std::move(st).error());
      push(std::move(*st));
      return {};
    }
    case Filter::Kind::kAnd:
    case Filter::Kind::kOr: {
      const bool is_and = f.kind == Filter::Kind::kAnd;
      if (f.children.empty()) {  // and() is true, or() is false
        push(make_step(FilterStep::Kind::kAll));
        if (!is_and) out.push_back(make_step(FilterStep::Kind::kNot));
        return {};
      }
      if (f.children.size() > 0xFFFF) return bind_error("too many operands");
      for (const Filter& c : f.children) FLOE_TRY(compile_subtree(c, out, sp, max_sp, nesting + 1));
      out.push_back(make_step(is_and ? FilterStep::Kind::kAnd : FilterStep::Kind::kOr, {},
                              static_cast<std::uint16_t>(f.children.size())));
      sp -= static_cast<std::uint32_t>(f.children.size()) - 1;
      return {};
    }
    case Filter::Kind::kNot:
      if (f.children.size() != 1) return bind_error("`not` takes exactly one operand");
      FLOE_TRY(compile_subtree(f.children[0], out, sp, max_sp, nesting + 1));
      out.push_back(make_step(FilterStep::Kind::kNot));
      return {};
  }
  return bind_error("malformed filter");
}

void flatten_and(const Filter& f, std::vector<const Filter*>& out) {
  if (f.kind == Filter::Kind::kAnd) {
    for (const Filter& c : f.children) flatten_and(c, out);
  } else {
    out.push_back(&f);
  }
}

// Sorted (index, mask) pairs: global chunks or HomeSlots words.
struct MaskSet {
  std::vector<std::uint32_t> at;
  std::vector<std::uint64_t> masks;

  /// ORs `m` into word `i`; `i` must not be below the last word added.
  void add(std::uint32_t i, std::uint64_t m) {
    if (!at.empty() && at.back() == i) {
      masks.back() |= m;
    } else {
      at.push_back(i);
      masks.push_back(m);
    }
  }
  /// Adds the slots first..first+count-1 (ascending, like add).
  void add_range(std::uint64_t first, std::uint64_t count) {
    for (std::uint64_t s = first; s < first + count;) {
      const std::uint64_t bit = s % 64;
      const std::uint64_t n = std::min<std::uint64_t>(64 - bit, first + count - s);
      add(static_cast<std::uint32_t>(s / 64), (n == 64 ? ~std::uint64_t{0} : ((std::uint64_t{1} << n) - 1)) << bit);
      s += n;
    }
  }
};

MaskSet intersect(const MaskSet& a, const MaskSet& b) {
  MaskSet r;
  std::size_t i = 0, j = 0;
  while (i < a.at.size() && j < b.at.size()) {
    if (a.at[i] < b.at[j]) {
      ++i;
    } else if (b.at[j] < a.at[i]) {
      ++j;
    } else {
      const std::uint64_t m = a.masks[i] & b.masks[j];
      if (m != 0) {
        r.at.push_back(a.at[i]);
        r.masks.push_back(m);
      }
      ++i;
      ++j;
    }
  }
  return r;
}

// A scope over the devices' chunks and over the packed home slots.
struct ScopeSet {
  MaskSet chunks;
  MaskSet words;
};

ScopeSet intersect(const ScopeSet& a, const ScopeSet& b) { return {intersect(a.chunks, b.chunks), intersect(a.words, b.words)}; }

bool has_wildcard(std::string_view s) noexcept { return s.find_first_of("*?") != std::string_view::npos; }

void add_device(ScopeSet& s, const DeviceRecord& d) {
  for (std::uint32_t c = 0; c < d.chunk_count; ++c) s.chunks.add(d.first_chunk + c, ~std::uint64_t{0});
  s.words.add_range(d.first_slot, d.entity_count());
}

Result<ScopeSet> resolve_scope(const Scope& scope, const Snapshot& snap) {
  ScopeSet s;
  switch (scope.kind) {
    case Scope::Kind::kDevice: {
      const DeviceRecord* d = snap.device(scope.name);
      if (d == nullptr) return bind_error(fmt::format("no device named '{}'", scope.name));
      add_device(s, *d);
      return s;
    }
    case Scope::Kind::kGroup: {
      const GroupRecord* g = snap.group(scope.name);
      if (g == nullptr) return bind_error(fmt::format("no group named '{}'", scope.name));
      // Members are sorted by slot index, which is the order of chunks and home slots.
      for (DeviceId id : g->devices) {
        if (const DeviceRecord* d = snap.device(id)) add_device(s, *d);
      }
      return s;
    }
    case Scope::Kind::kEntityGlob: {
      std::vector<std::pair<std::uint32_t, std::uint64_t>> chunk_bits;
      std::vector<std::uint32_t> slots;
      const auto add = [&](const EntityRef& e) {
        const DeviceRecord* d = snap.device(e.device);
        if (d == nullptr) return;
        chunk_bits.emplace_back(d->first_chunk + e.entity / ipc::kTreeChunkSlots, std::uint64_t{1} << (e.entity % 64));
        slots.push_back(d->first_slot + e.entity);
      };
      if (!has_wildcard(scope.name)) {
        const auto e = snap.entity(scope.name);
        if (!e) return bind_error(fmt::format("no entity '{}'", scope.name));
        add(*e);
      } else {
        for (const DeviceRecord& d : snap.devices()) {
          for (std::uint32_t e = 0; e < d.entity_count(); ++e) {
            if (glob_match(scope.name, d.data->entity_ids[e])) add({d.id, e});
          }
        }
      }
      std::sort(chunk_bits.begin(), chunk_bits.end());
      for (const auto& [g, m] : chunk_bits) s.chunks.add(g, m);
      std::sort(slots.begin(), slots.end());
      for (std::uint32_t slot : slots) s.words.add(slot / 64, std::uint64_t{1} << (slot % 64));
      return s;
    }
  }
  return bind_error("malformed scope");
}

Status check_target(const Query& q, const ipc::ComponentInfo* target) {
  const std::string_view act = to_string(q.action);
  switch (q.action) {
    case Action::kGet:
    case Action::kSum:
    case Action::kAvg:
    case Action::kMin:
    case Action::kMax:
    case Action::kSet:
      if (target == nullptr) return bind_error(fmt::format("`{}` needs a target component (e.g. `{} Dimmer`)", act, act));
      break;
    case Action::kList:
    case Action::kCount:
    case Action::kAny:
    case Action::kAll: break;
  }
  if (target == nullptr) return {};
  switch (q.action) {
    case Action::kSum:
    case Action::kAvg:
    case Action::kMin:
    case Action::kMax:
      if (!numeric(target->encoding)) {
        return bind_error(fmt::format("`{}` needs a numeric target (bool, int64 or real); {} holds {}", act,
                                      target->name, ipc::to_string(target->encoding)));
      }
      break;
    case Action::kAny:
    case Action::kAll:
      if (ipc::is_big(target->encoding)) {
        return bind_error(fmt::format("`{}` needs a target with a truth value; {} holds {}", act, target->name,
                                      ipc::to_string(target->encoding)));
      }
      break;
    case Action::kSet:
      if (target->encoding == ipc::Encoding::kMarker || target->encoding == ipc::Encoding::kList) {
        return bind_error(fmt::format("`set` cannot set {}: it holds {}", target->name, ipc::to_string(target->encoding)));
      }
      if (!q.set_value) return bind_error(fmt::format("`set {}` needs a value (`set {} = ...`)", target->name, target->name));
      break;
    case Action::kGet:
    case Action::kList:
    case Action::kCount: break;
  }
  return {};
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view text) noexcept {
  // Iterative matcher with single-star backtracking: O(pattern * text) worst case, no recursion.
  std::size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

Result<BoundQuery> bind(const Query& q, const Snapshot& snap, const BindOptions& options) {
  BoundQuery b;
  b.action = q.action;
  b.snapshot_version = snap.version();
  b.include_offline = options.include_offline;
  const HomeIndex& home = snap.home();

  const ipc::ComponentInfo* target = nullptr;
  if (q.target) {
    auto info = known(*q.target);
    if (!info) return tl::unexpected(std::move(info).error());
    target = *info;
    b.target = *q.target;
    b.target_encoding = target->encoding;
  }
  FLOE_TRY(check_target(q, target));
  if (q.action == Action::kSet) {
    SetValue sv{.component = *q.target, .value = std::uint64_t{0}};
    if (target->encoding == ipc::Encoding::kText) {
      const auto* s = std::get_if<std::string>(&*q.set_value);
      if (s == nullptr) return bind_error(fmt::format("{} holds text; {} does not fit it", target->name, literal_text(*q.set_value)));
      sv.value = *s;
    } else {
      auto w = literal_word(*target, *q.set_value);
      if (!w) return tl::unexpected(std::move(w).error());
      sv.value = *w;
    }
    b.set_value = std::move(sv);
  }

  // The filter: top-level conjuncts become presence algebra where they can.
  std::vector<Component> required, excluded;
  if (target != nullptr) required.push_back(*q.target);
  std::vector<const Filter*> conjuncts;
  flatten_and(q.where, conjuncts);
  std::vector<FilterStep> residual;
  std::uint32_t sp = 0, max_sp = 0, residual_terms = 0;
  for (const Filter* f : conjuncts) {
    switch (f->kind) {
      case Filter::Kind::kTrue: continue;
      case Filter::Kind::kHas: {
        auto info = known(f->component);
        if (!info) return tl::unexpected(std::move(info).error());
        required.push_back(f->component);
        continue;
      }
      case Filter::Kind::kNot:
        if (f->children.size() == 1 && f->children[0].kind == Filter::Kind::kHas) {
          auto info = known(f->children[0].component);
          if (!info) return tl::unexpected(std::move(info).error());
          excluded.push_back(f->children[0].component);
          continue;
        }
        break;
      case Filter::Kind::kCompare: required.push_back(f->component); break;
      case Filter::Kind::kAnd:
      case Filter::Kind::kOr: break;
    }
    FLOE_TRY(compile_subtree(*f, residual, sp, max_sp, 0));
    ++residual_terms;
  }
  std::sort(required.begin(), required.end());
  required.erase(std::unique(required.begin(), required.end()), required.end());
  std::sort(excluded.begin(), excluded.end());
  excluded.erase(std::unique(excluded.begin(), excluded.end()), excluded.end());
  for (Component c : required) {
    if (std::binary_search(excluded.begin(), excluded.end(), c) || home.column(c).population == 0) {
      b.matches_nothing = true;
    }
  }
  // An excluded kind nobody has excludes nothing.
  std::erase_if(excluded, [&](Component c) { return home.column(c).population == 0; });
  // Sparsest first: its zero words skip most chunks before any other word is loaded.
  std::stable_sort(required.begin(), required.end(), [&](Component x, Component y) {
    return home.column(x).population < home.column(y).population;
  });
  // The scan keeps a fixed number of words per chunk (no allocation in evaluate); the rest go to
  // the residual program.
  while (required.size() > detail::kMaxRequired) {
    residual.push_back(make_step(FilterStep::Kind::kHas, required.back()));
    max_sp = std::max(max_sp, ++sp);
    ++residual_terms;
    required.pop_back();
  }
  while (excluded.size() > detail::kMaxExcluded) {
    residual.push_back(make_step(FilterStep::Kind::kHas, excluded.back()));
    residual.push_back(make_step(FilterStep::Kind::kNot));
    max_sp = std::max(max_sp, ++sp);
    ++residual_terms;
    excluded.pop_back();
  }
  if (residual_terms > 1) {
    if (residual_terms > 0xFFFF) return bind_error("too many filter terms");
    residual.push_back(make_step(FilterStep::Kind::kAnd, {}, static_cast<std::uint16_t>(residual_terms)));
  }
  if (max_sp > kMaxFilterDepth) return bind_error("the filter nests too deeply");
  b.required = std::move(required);
  b.excluded = std::move(excluded);
  b.residual = std::move(residual);
  b.residual_depth = max_sp;

  // Scopes, AND-ed.
  if (!q.scopes.empty()) {
    b.whole_home = false;
    std::optional<ScopeSet> acc;
    for (const Scope& sc : q.scopes) {
      auto s = resolve_scope(sc, snap);
      if (!s) return tl::unexpected(std::move(s).error());
      acc = acc ? intersect(*acc, *s) : std::move(*s);
    }
    b.scope_chunks = std::move(acc->chunks.at);
    b.scope_masks = std::move(acc->chunks.masks);
    b.scope_words = std::move(acc->words.at);
    b.scope_word_masks = std::move(acc->words.masks);
  }
  b.plan = detail::plan_scan(b, snap);
  return b;
}

Result<QueryResult> run(const Query& query, const Snapshot& snapshot, const BindOptions& options) {
  auto b = bind(query, snapshot, options);
  if (!b) return tl::unexpected(std::move(b).error());
  return evaluate(*b, snapshot);
}

}  // namespace floe::core
