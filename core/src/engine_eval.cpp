// Evaluation: the bitset scan over the packed home (HomeSlots) and its sinks.
//
// Shape of the hot loop (whole home, `avg Dimmer where Light`): for each slot word w,
//   m = lead[w]; if (!m) continue; m &= live[w] & other[w]; for each set bit s: sum += *values[64w + s]
// where lead is the sparsest required presence word and values[] holds each home slot's pointer to
// its value word in its device's tree. Aggregates spread the matches over four accumulators, kept
// in registers across words, so consecutive matches do not form one long add chain.
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

// What a kernel works with: the plan bind() resolved, and the query, snapshot and result it runs for.
struct Plan {
  const detail::ScanPlan& s;
  const BoundQuery& query;
  const Snapshot& snapshot;
  std::uint64_t* unreadable;
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
  const HomeSlots& home = p.snapshot.home().slots;
  const std::size_t base = std::size_t{w} * 64;
  Word out = 0;
  if (st.compare == CompareKind::kText) {
    for (; m != 0; m &= m - 1) {
      const int s = std::countr_zero(m);
      const DeviceRecord& d = p.snapshot.devices()[home.slot_device[base + static_cast<std::size_t>(s)]];
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
  const HomeSlots& home = p.snapshot.home().slots;
  for (const FilterStep& st : p.query.residual) {
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
/// One pass over the words; the sink is a local of the kernel and its take() is inlined, so its
/// counters and accumulators live in registers for the whole scan (no store and reload per word).
template <int kOthers, bool kGather, typename Sink>
[[gnu::always_inline]] inline void scan(const Plan& p, Sink& sink) {
  const detail::ScanPlan& s = p.s;
  const std::uint32_t n = s.count;
  const Word* const lead = s.lead;
  const Word* const live = s.live;
  const Word* const o0 = kOthers >= 1 ? s.others[0] : nullptr;  // only the first n_others are set
  const Word* const o1 = kOthers >= 2 ? s.others[1] : nullptr;
  const std::uint32_t* const scope_words = p.query.scope_words.data();
  const Word* const scope_masks = p.query.scope_word_masks.data();
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint32_t w = kGather ? scope_words[i] : i;
    Word m = lead[w];
    if constexpr (kGather) m &= scope_masks[i];
    if (m == 0) continue;  // the sparsest word first: most words of a large home end here
    m &= live[w];
    if constexpr (kOthers >= 1) m &= o0[w];
    if constexpr (kOthers >= 2) m &= o1[w];
    if constexpr (kOthers < 0) {
      for (std::size_t j = 0; j < s.n_others; ++j) m &= s.others[j][w];
      for (std::size_t j = 0; j < s.n_excluded; ++j) m &= ~s.excluded[j][w];
      if (m != 0 && !p.query.residual.empty()) m = run_residual(p, w, m);
    }
    if (m != 0) sink.take(w, m);
  }
}

// ---- Sinks --------------------------------------------------------------------------------------

struct CountSink {
  std::uint64_t n = 0;
  [[gnu::always_inline]] void take(std::uint32_t, Word m) noexcept { n += static_cast<std::uint64_t>(std::popcount(m)); }
  [[nodiscard]] std::uint64_t count() const noexcept { return n; }
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

/// The value of the lowest set slot of `m` (v: the word's 64 value pointers); clears that bit.
template <Num kNum>
[[gnu::always_inline]] inline NumType<kNum> pop_value(const ValuePtr* v, Word& m) noexcept {
  const NumType<kNum> x = as_number<kNum>(v[std::countr_zero(m)]->load(std::memory_order_relaxed));
  m &= m - 1;
  return x;
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
  // Four accumulators, kept across words: a packed word holds many matches, and one chain of
  // dependent adds (3-4 cycles each) would be slower than the loads feeding it.
  Acc a0 = initial(), a1 = initial(), a2 = initial(), a3 = initial();
  std::uint64_t n = 0;

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

  [[gnu::always_inline]] void take(std::uint32_t w, Word m) noexcept {
    // Every matching slot has the target (it is a required kind), so its pointer is set.
    const ValuePtr* const v = values + std::size_t{w} * 64;
    const int k = std::popcount(m);
    n += static_cast<std::uint64_t>(k);
    // Rounds of four by the popcount, then the rest: no end-of-word test after every bit.
    for (int round = k / 4; round != 0; --round) {
      fold(a0, pop_value<kNum>(v, m));
      fold(a1, pop_value<kNum>(v, m));
      fold(a2, pop_value<kNum>(v, m));
      fold(a3, pop_value<kNum>(v, m));
    }
    switch (k % 4) {
      case 3: fold(a2, pop_value<kNum>(v, m)); [[fallthrough]];
      case 2: fold(a1, pop_value<kNum>(v, m)); [[fallthrough]];
      case 1: fold(a0, pop_value<kNum>(v, m)); break;
      default: break;
    }
  }

  [[nodiscard]] std::uint64_t count() const noexcept { return n; }
  [[nodiscard]] double result() const noexcept {
    if constexpr (kWant == Want::kSum) {
      if constexpr (kNum == Num::kReal) return (a0 + a1) + (a2 + a3);
      else return static_cast<double>(static_cast<std::int64_t>(a0 + a1 + a2 + a3));
    } else {
      Acc a = a0, b = a2;
      fold(a, static_cast<T>(a1));
      fold(b, static_cast<T>(a3));
      fold(a, static_cast<T>(b));
      return static_cast<double>(a);
    }
  }
};

/// Counts matches and truthy target values (any/all).
template <ipc::Encoding kEnc>
struct TruthSink {
  const ValuePtr* values;
  std::uint64_t n = 0, truthy = 0;
  [[gnu::always_inline]] void take(std::uint32_t g, Word m) noexcept {
    n += static_cast<std::uint64_t>(std::popcount(m));
    if constexpr (kEnc == ipc::Encoding::kMarker) {
      truthy += static_cast<std::uint64_t>(std::popcount(m));
    } else {
      const ValuePtr* const v = values + std::size_t{g} * 64;
      for (; m != 0; m &= m - 1) {
        const Word w = v[std::countr_zero(m)]->load(std::memory_order_relaxed);
        bool t;
        if constexpr (kEnc == ipc::Encoding::kReal) t = std::bit_cast<double>(w) != 0.0;
        else if constexpr (kEnc == ipc::Encoding::kBool) t = w == 1;
        else t = w != 0;
        truthy += t ? 1 : 0;
      }
    }
  }
};

/// Collects (slot word, mask) pairs for get/list/set.
struct CollectSink {
  std::vector<std::pair<std::uint32_t, Word>> hits;
  void take(std::uint32_t g, Word m) {
    hits.emplace_back(g, m);
  }
};

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

// ---- Kernels: one per (action, target encoding, scan shape, scope), chosen at bind time ----------

template <int kOthers, bool kGather>
struct CountAction {
  static void run(const Plan& p, QueryResult& r) {
    CountSink sink;
    scan<kOthers, kGather>(p, sink);
    r.count = sink.count();
  }
};

template <Num kNum, Want kWant>
struct AggregateAction {
  template <int kOthers, bool kGather>
  struct Of {
    static void run(const Plan& p, QueryResult& r) {
      AggregateSink<kNum, kWant> sink{p.s.values};
      scan<kOthers, kGather>(p, sink);
      r.count = sink.count();
      if (r.count == 0) return;
      const double x = sink.result();
      r.number = p.query.action == Action::kAvg ? x / static_cast<double>(r.count) : x;
    }
  };
};

template <ipc::Encoding kEnc>
struct TruthAction {
  template <int kOthers, bool kGather>
  struct Of {
    static void run(const Plan& p, QueryResult& r) {
      TruthSink<kEnc> sink{p.s.values};
      scan<kOthers, kGather>(p, sink);
      r.count = sink.n;
      const std::uint64_t t = sink.truthy;
      r.truth = p.query.action == Action::kAny ? t > 0 : t == r.count;
    }
  };
};

/// any/all without a target: does anything match.
template <int kOthers, bool kGather>
struct MatchAction {
  static void run(const Plan& p, QueryResult& r) {
    CountAction<kOthers, kGather>::run(p, r);
    r.truth = p.query.action == Action::kAny ? r.count > 0 : true;
  }
};

/// get, list, set: the matching entities in home order.
template <int kOthers, bool kGather>
struct CollectAction {
  static void run(const Plan& p, QueryResult& r) {
    CollectSink sink;
    scan<kOthers, kGather>(p, sink);
    const BoundQuery& q = p.query;
    const Snapshot& snap = p.snapshot;
    const HomeSlots& home = snap.home().slots;
    const bool with_value = q.target.has_value() && q.action != Action::kSet;
    for (const auto& [w, mask] : sink.hits) {
      for (Word m = mask; m != 0; m &= m - 1) {
        const std::size_t s = std::size_t{w} * 64 + static_cast<std::size_t>(std::countr_zero(m));
        const DeviceRecord& d = snap.devices()[home.slot_device[s]];
        const ipc::EntityIndex e = home.slot_entity[s];
        QueryMatch match{.entity = {d.id, e}, .entity_id = d.data->entity_ids[e], .online = d.online, .value = {}};
        if (with_value) {
          const ValuePtr v = p.s.values != nullptr ? p.s.values[s] : nullptr;
          match.value = read_value(d, e, *q.target, q.target_encoding, v, r.unreadable);
        }
        r.matches.push_back(std::move(match));
      }
    }
    r.count = r.matches.size();
    if (q.action == Action::kSet) r.set_value = q.set_value;
  }
};

/// Nothing can match (a required kind nobody has, or an empty home): no scan at all.
void finish_empty(const detail::ScanPlan&, const BoundQuery& q, const Snapshot&, QueryResult& r) {
  switch (q.action) {
    case Action::kAny: r.truth = false; break;
    case Action::kAll: r.truth = true; break;
    case Action::kSet: r.set_value = q.set_value; break;
    default: break;
  }
}

template <template <int, bool> class A, int kOthers, bool kGather>
void kernel(const detail::ScanPlan& s, const BoundQuery& q, const Snapshot& snap, QueryResult& r) {
  A<kOthers, kGather>::run(Plan{s, q, snap, &r.unreadable}, r);
}

/// The instance of action A for the scan's shape (0..2 others and nothing else, or -1: general).
template <template <int, bool> class A>
detail::Kernel pick(int others, bool gather) noexcept {
  switch (others) {
    case 0: return gather ? &kernel<A, 0, true> : &kernel<A, 0, false>;
    case 1: return gather ? &kernel<A, 1, true> : &kernel<A, 1, false>;
    case 2: return gather ? &kernel<A, 2, true> : &kernel<A, 2, false>;
    default: return gather ? &kernel<A, -1, true> : &kernel<A, -1, false>;
  }
}

template <Want kWant>
detail::Kernel pick_aggregate(ipc::Encoding enc, int others, bool gather) noexcept {
  switch (enc) {
    case ipc::Encoding::kReal: return pick<AggregateAction<Num::kReal, kWant>::template Of>(others, gather);
    case ipc::Encoding::kInt64: return pick<AggregateAction<Num::kInt, kWant>::template Of>(others, gather);
    default: return pick<AggregateAction<Num::kBool, kWant>::template Of>(others, gather);
  }
}

detail::Kernel pick_kernel(const BoundQuery& q, int others, bool gather) noexcept {
  switch (q.action) {
    case Action::kCount: return pick<CountAction>(others, gather);
    case Action::kSum:
    case Action::kAvg: return pick_aggregate<Want::kSum>(q.target_encoding, others, gather);
    case Action::kMin: return pick_aggregate<Want::kMin>(q.target_encoding, others, gather);
    case Action::kMax: return pick_aggregate<Want::kMax>(q.target_encoding, others, gather);
    case Action::kAny:
    case Action::kAll:
      if (!q.target) return pick<MatchAction>(others, gather);
      switch (q.target_encoding) {
        case ipc::Encoding::kMarker: return pick<TruthAction<ipc::Encoding::kMarker>::template Of>(others, gather);
        case ipc::Encoding::kBool: return pick<TruthAction<ipc::Encoding::kBool>::template Of>(others, gather);
        case ipc::Encoding::kReal: return pick<TruthAction<ipc::Encoding::kReal>::template Of>(others, gather);
        default: return pick<TruthAction<ipc::Encoding::kInt64>::template Of>(others, gather);
      }
    case Action::kGet:
    case Action::kList:
    case Action::kSet: return pick<CollectAction>(others, gather);
  }
  return &finish_empty;
}

}  // namespace

detail::ScanPlan detail::plan_scan(const BoundQuery& q, const Snapshot& snap) noexcept {
  ScanPlan p;
  p.snapshot_serial = snap.serial();
  const HomeSlots& home = snap.home().slots;
  if (q.matches_nothing || home.word_count == 0) {
    p.kernel = &finish_empty;
    return p;
  }
  p.live = q.include_offline ? home.occupied.data() : home.online.data();
  p.lead = q.required.empty() ? p.live : home.column(q.required[0]).presence.data();
  for (std::size_t i = 1; i < q.required.size(); ++i) p.others[p.n_others++] = home.column(q.required[i]).presence.data();
  for (Component c : q.excluded) p.excluded[p.n_excluded++] = home.column(c).presence.data();
  if (q.target) {
    const SlotColumn& col = home.column(*q.target);
    p.values = col.values.empty() ? nullptr : col.values.data();
  }
  const bool gather = !q.whole_home;
  p.count = gather ? static_cast<std::uint32_t>(q.scope_words.size()) : home.word_count;
  const bool general = p.n_excluded != 0 || !q.residual.empty() || p.n_others > 2;
  p.kernel = pick_kernel(q, general ? -1 : static_cast<int>(p.n_others), gather);
  return p;
}

QueryResult evaluate(const BoundQuery& q, const Snapshot& snap) {
  // One named result, returned on every path (NRVO: built in the caller's storage).
  QueryResult r;
  r.action = q.action;
  if (snap.serial() == q.plan.snapshot_serial) [[likely]] {
    q.plan.kernel(q.plan, q, snap, r);
  } else if (q.snapshot_version != snap.version()) {
    r.stale_binding = true;
  } else {
    // The same version in another Snapshot object: resolve the pointers for this one.
    const detail::ScanPlan p = detail::plan_scan(q, snap);
    p.kernel(p, q, snap, r);
  }
  return r;
}

}  // namespace floe::core
