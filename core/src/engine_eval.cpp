// Evaluation: the bitset scan over the packed home (HomeSlots) and its sinks.
//
// Shape of the hot loop (whole home, `avg Dimmer where Light`): for each slot word w,
//   m = lead[w]; if (!m) continue; m &= live[w] & other[w]; for each set bit s: sum += *values[64w + s]
// where lead is the sparsest required presence word and values[] holds each home slot's pointer to
// its value word in its device's tree. The loop is unrolled by two words into two lanes with their
// own accumulators, so consecutive matches do not form one long add chain.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>

#include "floe/core/engine.hpp"
#include "engine_internal.hpp"

namespace floe::core {
namespace {

using Word = std::uint64_t;
using ValuePtr = const std::atomic<Word>*;

constexpr Word kAllOnes = ~Word{0};

struct Plan {
  const Word* lead = nullptr;
  const Word* live = nullptr;
  std::array<const Word*, detail::kMaxRequired> others;  // [0, n_others) set
  std::array<const Word*, detail::kMaxExcluded> excluded;  // [0, n_excluded) set
  std::uint32_t n_others = 0;
  std::uint32_t n_excluded = 0;
  std::uint32_t count = 0;  // slot words, or scope entries when gathering
  bool gather = false;
  int shape = 0;  // 0..2: no exclusions, no residual, that many `others`; 3: the general scan
  const std::uint32_t* scope_words = nullptr;
  const Word* scope_masks = nullptr;
  // Residual program context.
  const BoundQuery* query = nullptr;
  const Snapshot* snapshot = nullptr;
  std::uint64_t* unreadable = nullptr;
};

// ---- Residual program ---------------------------------------------------------------------------

template <typename T>
bool compare(CompareOp op, T a, T b) noexcept {
  switch (op) {
    case CompareOp::kEq: return a == b;
    case CompareOp::kNe: return a != b;
    case CompareOp::kLt: return a < b;
    case CompareOp::kLe: return a <= b;
    case CompareOp::kGt: return a > b;
    case CompareOp::kGe: return a >= b;
  }
  return false;
}

bool valid_word(ipc::Encoding e, Word w) noexcept {
  switch (e) {
    case ipc::Encoding::kBool: return w <= 1;
    case ipc::Encoding::kEnum: return w <= 0xFFFF;
    case ipc::Encoding::kRgb: return w <= 0xFFFFFF;
    default: return true;
  }
}

Word presence_of(const HomeSlots& home, Component c, std::uint32_t w) noexcept {
  const SlotColumn& col = home.column(c);
  return col.presence.empty() ? 0 : col.presence[w];
}

Word compare_mask(const Plan& p, const FilterStep& st, std::uint32_t w, Word m) {
  const HomeSlots& home = p.snapshot->home().slots;
  const std::size_t base = std::size_t{w} * 64;
  Word out = 0;
  if (st.compare == CompareKind::kText) {
    for (; m != 0; m &= m - 1) {
      const int s = std::countr_zero(m);
      const DeviceRecord& d = p.snapshot->devices()[home.slot_device[base + static_cast<std::size_t>(s)]];
      auto text = d.reader().read_text(home.slot_entity[base + static_cast<std::size_t>(s)], st.component);
      if (!text) {
        ++*p.unreadable;
        continue;
      }
      if (compare(st.op, std::string_view(*text), std::string_view(st.text))) out |= Word{1} << s;
    }
    return out;
  }
  const SlotColumn& col = home.column(st.component);
  if (col.values.empty()) return 0;
  const ValuePtr* const v = col.values.data() + base;
  for (; m != 0; m &= m - 1) {
    const int s = std::countr_zero(m);
    if (v[s] == nullptr) continue;
    const Word x = v[s]->load(std::memory_order_relaxed);
    bool hit = false;
    switch (st.compare) {
      case CompareKind::kInt: hit = compare(st.op, static_cast<std::int64_t>(x), st.int_value); break;
      case CompareKind::kReal: {
        const double d = st.encoding == ipc::Encoding::kReal ? std::bit_cast<double>(x)
                                                             : static_cast<double>(static_cast<std::int64_t>(x));
        hit = compare(st.op, d, st.real_value);
        break;
      }
      case CompareKind::kWord: hit = valid_word(st.encoding, x) && compare(st.op, x, st.word); break;
      case CompareKind::kText: break;
    }
    if (hit) out |= Word{1} << s;
  }
  return out;
}

/// Runs the residual program over slot word g's candidate slots `base`; returns the matching subset.
Word run_residual(const Plan& p, std::uint32_t g, Word base) {
  std::array<Word, 66> stack;  // bind() caps the depth at 64
  std::size_t sp = 0;
  const HomeSlots& home = p.snapshot->home().slots;
  for (const FilterStep& st : p.query->residual) {
    switch (st.kind) {
      case FilterStep::Kind::kAll: stack[sp++] = base; break;
      case FilterStep::Kind::kHas: stack[sp++] = base & presence_of(home, st.component, g); break;
      case FilterStep::Kind::kCompare:
        stack[sp++] = compare_mask(p, st, g, base & presence_of(home, st.component, g));
        break;
      case FilterStep::Kind::kAnd: {
        Word r = kAllOnes;
        for (std::uint16_t i = 0; i < st.arity; ++i) r &= stack[--sp];
        stack[sp++] = r;
        break;
      }
      case FilterStep::Kind::kOr: {
        Word r = 0;
        for (std::uint16_t i = 0; i < st.arity; ++i) r |= stack[--sp];
        stack[sp++] = r;
        break;
      }
      case FilterStep::Kind::kNot: stack[sp - 1] = base & ~stack[sp - 1]; break;
    }
  }
  return sp == 0 ? base : stack[0] & base;
}

// ---- The scan -----------------------------------------------------------------------------------

/// kOthers: 0..2 for the specialised shapes (no exclusions, no residual), -1 for the general one.
template <int kOthers, bool kGather, typename Sink>
void scan(const Plan& p, Sink& sink) {
  const std::uint32_t n = p.count;
  const Word* const lead = p.lead;
  const Word* const live = p.live;
  const Word* const o0 = kOthers >= 1 ? p.others[0] : nullptr;  // only the first n_others are set
  const Word* const o1 = kOthers >= 2 ? p.others[1] : nullptr;
  const auto step = [&]<int kLane>(std::uint32_t i) {
    const std::uint32_t w = kGather ? p.scope_words[i] : i;
    Word m = lead[w];
    if constexpr (kGather) m &= p.scope_masks[i];
    if (m == 0) return;
    m &= live[w];
    if constexpr (kOthers >= 1) m &= o0[w];
    if constexpr (kOthers >= 2) m &= o1[w];
    if constexpr (kOthers < 0) {
      for (std::size_t j = 0; j < p.n_others; ++j) m &= p.others[j][w];
      for (std::size_t j = 0; j < p.n_excluded; ++j) m &= ~p.excluded[j][w];
      if (m != 0 && !p.query->residual.empty()) m = run_residual(p, w, m);
    }
    if (m != 0) sink.template take<kLane>(w, m);
  };
  std::uint32_t i = 0;
  for (; i + 1 < n; i += 2) {
    step.template operator()<0>(i);
    step.template operator()<1>(i + 1);
  }
  if (i < n) step.template operator()<0>(i);
}

template <typename Sink>
void dispatch(const Plan& p, Sink& sink) {
  if (p.gather) {
    switch (p.shape) {
      case 0: return scan<0, true>(p, sink);
      case 1: return scan<1, true>(p, sink);
      case 2: return scan<2, true>(p, sink);
      default: return scan<-1, true>(p, sink);
    }
  }
  switch (p.shape) {
    case 0: return scan<0, false>(p, sink);
    case 1: return scan<1, false>(p, sink);
    case 2: return scan<2, false>(p, sink);
    default: return scan<-1, false>(p, sink);
  }
}

// ---- Sinks --------------------------------------------------------------------------------------

struct CountSink {
  std::array<std::uint64_t, 2> n{};
  template <int kLane>
  void take(std::uint32_t, Word m) noexcept {
    n[kLane] += static_cast<std::uint64_t>(std::popcount(m));
  }
  [[nodiscard]] std::uint64_t count() const noexcept { return n[0] + n[1]; }
};

enum class Num : std::uint8_t { kBool, kInt, kReal };
enum class Want : std::uint8_t { kSum, kMin, kMax };

template <Num kNum>
using NumType = std::conditional_t<kNum == Num::kReal, double, std::int64_t>;

template <Num kNum>
NumType<kNum> as_number(Word w) noexcept {
  if constexpr (kNum == Num::kReal) return std::bit_cast<double>(w);
  else if constexpr (kNum == Num::kInt) return static_cast<std::int64_t>(w);
  else return w == 1 ? 1 : 0;  // a corrupt bool counts as false
}

template <Num kNum, Want kWant>
struct AggregateSink {
  using T = NumType<kNum>;
  // Sums of integers wrap (two's complement via unsigned) instead of overflowing into UB.
  using Acc = std::conditional_t<kWant == Want::kSum && kNum != Num::kReal, std::uint64_t, T>;
  static constexpr Acc initial() noexcept {
    if constexpr (kWant == Want::kSum) return Acc{0};
    else if constexpr (kNum == Num::kReal) return std::numeric_limits<double>::quiet_NaN();
    else if constexpr (kWant == Want::kMin) return std::numeric_limits<std::int64_t>::max();
    else return std::numeric_limits<std::int64_t>::min();
  }

  const ValuePtr* values;  // HomeSlots column of the target: one pointer per home slot
  std::array<Acc, 2> acc{initial(), initial()};
  std::array<std::uint64_t, 2> n{};

  static void fold(Acc& a, T x) noexcept {
    if constexpr (kWant == Want::kSum) {
      if constexpr (kNum == Num::kReal) a += x;
      else a += static_cast<std::uint64_t>(x);
    } else if constexpr (kNum == Num::kReal) {
      // NaN readings are skipped; a NaN accumulator means "nothing yet".
      if constexpr (kWant == Want::kMin) a = (x < a || a != a) ? x : a;
      else a = (x > a || a != a) ? x : a;
    } else if constexpr (kWant == Want::kMin) {
      a = x < a ? x : a;
    } else {
      a = x > a ? x : a;
    }
  }

  template <int kLane>
  void take(std::uint32_t w, Word m) noexcept {
    // Every matching slot has the target (it is a required kind), so its pointer is set.
    const ValuePtr* const v = values + std::size_t{w} * 64;
    n[kLane] += static_cast<std::uint64_t>(std::popcount(m));
    // Four bits per round into four accumulators: a packed word holds many matches, and one
    // chain of dependent adds (3-4 cycles each) would be slower than the loads feeding it.
    Acc a0 = acc[kLane];
    Acc a1 = initial(), a2 = initial(), a3 = initial();
    const auto next = [&]() noexcept {
      const T x = as_number<kNum>(v[std::countr_zero(m)]->load(std::memory_order_relaxed));
      m &= m - 1;
      return x;
    };
    while (m != 0) {
      fold(a0, next());
      if (m == 0) break;
      fold(a1, next());
      if (m == 0) break;
      fold(a2, next());
      if (m == 0) break;
      fold(a3, next());
    }
    if constexpr (kWant == Want::kSum) {
      a0 += a1;
      a2 += a3;
      a0 += a2;
    } else {
      fold(a0, static_cast<T>(a1));
      fold(a2, static_cast<T>(a3));
      fold(a0, static_cast<T>(a2));
    }
    acc[kLane] = a0;
  }

  [[nodiscard]] std::uint64_t count() const noexcept { return n[0] + n[1]; }
  [[nodiscard]] double result() const noexcept {
    if constexpr (kWant == Want::kSum) {
      if constexpr (kNum == Num::kReal) return acc[0] + acc[1];
      else return static_cast<double>(static_cast<std::int64_t>(acc[0] + acc[1]));
    } else {
      Acc a = acc[0];
      fold(a, static_cast<T>(acc[1]));
      return static_cast<double>(a);
    }
  }
};

/// Counts matches and truthy target values (any/all).
template <ipc::Encoding kEnc>
struct TruthSink {
  const ValuePtr* values;
  std::array<std::uint64_t, 2> n{}, truthy{};
  template <int kLane>
  void take(std::uint32_t g, Word m) noexcept {
    n[kLane] += static_cast<std::uint64_t>(std::popcount(m));
    if constexpr (kEnc == ipc::Encoding::kMarker) {
      truthy[kLane] += static_cast<std::uint64_t>(std::popcount(m));
    } else {
      const ValuePtr* const v = values + std::size_t{g} * 64;
      for (; m != 0; m &= m - 1) {
        const Word w = v[std::countr_zero(m)]->load(std::memory_order_relaxed);
        bool t;
        if constexpr (kEnc == ipc::Encoding::kReal) t = std::bit_cast<double>(w) != 0.0;
        else if constexpr (kEnc == ipc::Encoding::kBool) t = w == 1;
        else t = w != 0;
        truthy[kLane] += t ? 1 : 0;
      }
    }
  }
};

/// Collects (slot word, mask) pairs for get/list/set.
struct CollectSink {
  std::vector<std::pair<std::uint32_t, Word>> hits;
  template <int kLane>
  void take(std::uint32_t g, Word m) {
    hits.emplace_back(g, m);
  }
};

template <Num kNum, Want kWant>
void aggregate_as(const Plan& p, const ValuePtr* values, Action action, QueryResult& r) {
  AggregateSink<kNum, kWant> sink{values};
  dispatch(p, sink);
  r.count = sink.count();
  if (r.count == 0) return;
  const double x = sink.result();
  r.number = action == Action::kAvg ? x / static_cast<double>(r.count) : x;
}

template <Want kWant>
void aggregate(const Plan& p, const ValuePtr* values, Action action, ipc::Encoding enc, QueryResult& r) {
  switch (enc) {
    case ipc::Encoding::kReal: return aggregate_as<Num::kReal, kWant>(p, values, action, r);
    case ipc::Encoding::kInt64: return aggregate_as<Num::kInt, kWant>(p, values, action, r);
    default: return aggregate_as<Num::kBool, kWant>(p, values, action, r);
  }
}

template <ipc::Encoding kEnc>
void truth(const Plan& p, const ValuePtr* values, Action action, QueryResult& r) {
  TruthSink<kEnc> sink{values};
  dispatch(p, sink);
  r.count = sink.n[0] + sink.n[1];
  const std::uint64_t t = sink.truthy[0] + sink.truthy[1];
  r.truth = action == Action::kAny ? t > 0 : t == r.count;
}

EntityValue read_value(const DeviceRecord& d, ipc::EntityIndex e, Component c, ipc::Encoding enc, ValuePtr v,
                       std::uint64_t& unreadable) {
  switch (enc) {
    case ipc::Encoding::kText: {
      auto t = d.reader().read_text(e, c);
      if (t) return std::move(*t);
      ++unreadable;
      return std::monostate{};
    }
    case ipc::Encoding::kList: {
      auto l = d.reader().read_list(e, c);
      if (l) return std::move(*l);
      ++unreadable;
      return std::monostate{};
    }
    case ipc::Encoding::kMarker: return ipc::Value{ipc::Marker{}};
    default: {
      if (v == nullptr) {
        ++unreadable;
        return std::monostate{};
      }
      auto x = ipc::unpack(enc, v->load(std::memory_order_relaxed));
      if (x) return *x;
      ++unreadable;  // a corrupt word (a bool of 7): the provider is misbehaving
      return std::monostate{};
    }
  }
}

void collect(const Plan& p, const BoundQuery& q, const Snapshot& snap, QueryResult& r) {
  CollectSink sink;
  dispatch(p, sink);
  const HomeSlots& home = snap.home().slots;
  const bool with_value = q.target.has_value() && q.action != Action::kSet;
  const SlotColumn* col = q.target ? &home.column(*q.target) : nullptr;
  for (const auto& [w, mask] : sink.hits) {
    for (Word m = mask; m != 0; m &= m - 1) {
      const std::size_t s = std::size_t{w} * 64 + static_cast<std::size_t>(std::countr_zero(m));
      const DeviceRecord& d = snap.devices()[home.slot_device[s]];
      const ipc::EntityIndex e = home.slot_entity[s];
      QueryMatch match{.entity = {d.id, e}, .entity_id = d.data->entity_ids[e], .online = d.online, .value = {}};
      if (with_value) {
        const ValuePtr v = (col != nullptr && !col->values.empty()) ? col->values[s] : nullptr;
        match.value = read_value(d, e, *q.target, q.target_encoding, v, r.unreadable);
      }
      r.matches.push_back(std::move(match));
    }
  }
  r.count = r.matches.size();
  if (q.action == Action::kSet) r.set_value = q.set_value;
}

void finish_empty(const BoundQuery& q, QueryResult& r) {
  switch (q.action) {
    case Action::kAny: r.truth = false; break;
    case Action::kAll: r.truth = true; break;
    case Action::kSet: r.set_value = q.set_value; break;
    default: break;
  }
}

/// Fills `r` (the caller's, so evaluate() returns one named object: no move of the result).
void run_plan(const Plan& p, const BoundQuery& q, const Snapshot& snap, QueryResult& r) {
  const ValuePtr* values = nullptr;
  if (q.target) {
    const SlotColumn& col = snap.home().slots.column(*q.target);
    values = col.values.empty() ? nullptr : col.values.data();
  }
  switch (q.action) {
    case Action::kCount: {
      CountSink sink;
      dispatch(p, sink);
      r.count = sink.count();
      return;
    }
    case Action::kSum:
    case Action::kAvg: return aggregate<Want::kSum>(p, values, q.action, q.target_encoding, r);
    case Action::kMin: return aggregate<Want::kMin>(p, values, q.action, q.target_encoding, r);
    case Action::kMax: return aggregate<Want::kMax>(p, values, q.action, q.target_encoding, r);
    case Action::kAny:
    case Action::kAll:
      if (!q.target) {
        CountSink sink;
        dispatch(p, sink);
        r.count = sink.count();
        r.truth = q.action == Action::kAny ? r.count > 0 : true;
        return;
      }
      switch (q.target_encoding) {
        case ipc::Encoding::kMarker: return truth<ipc::Encoding::kMarker>(p, values, q.action, r);
        case ipc::Encoding::kBool: return truth<ipc::Encoding::kBool>(p, values, q.action, r);
        case ipc::Encoding::kReal: return truth<ipc::Encoding::kReal>(p, values, q.action, r);
        default: return truth<ipc::Encoding::kInt64>(p, values, q.action, r);
      }
    case Action::kGet:
    case Action::kList:
    case Action::kSet: return collect(p, q, snap, r);
  }
}

}  // namespace

QueryResult evaluate(const BoundQuery& q, const Snapshot& snap) {
  // One named result, returned on every path (NRVO: built in the caller's storage).
  QueryResult r;
  r.action = q.action;
  if (q.snapshot_version != snap.version()) {
    r.stale_binding = true;
    return r;
  }
  const HomeSlots& home = snap.home().slots;
  if (q.matches_nothing || home.word_count == 0) {
    finish_empty(q, r);
    return r;
  }
  Plan p;
  p.live = q.include_offline ? home.occupied.data() : home.online.data();
  p.lead = q.required.empty() ? p.live : home.column(q.required[0]).presence.data();
  for (std::size_t i = 1; i < q.required.size(); ++i) p.others[p.n_others++] = home.column(q.required[i]).presence.data();
  for (Component c : q.excluded) p.excluded[p.n_excluded++] = home.column(c).presence.data();
  const bool general = p.n_excluded != 0 || !q.residual.empty() || p.n_others > 2;
  p.shape = general ? 3 : static_cast<int>(p.n_others);
  p.gather = !q.whole_home;
  p.count = p.gather ? static_cast<std::uint32_t>(q.scope_words.size()) : home.word_count;
  p.scope_words = q.scope_words.data();
  p.scope_masks = q.scope_word_masks.data();
  p.query = &q;
  p.snapshot = &snap;
  p.unreadable = &r.unreadable;
  run_plan(p, q, snap, r);
  return r;
}

}  // namespace floe::core
