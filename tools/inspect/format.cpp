// floe-inspect's output: JSON documents for scripts, aligned tables for people (floectl's Table).
#include <fmt/format.h>

#include "floe/ipc/notify.hpp"
#include "floe/ipc/region.hpp"
#include "floe/ipc/text.hpp"
#include "format.hpp"  // floectl's Table
#include "inspect.hpp"

namespace floe::inspect {
namespace {

using nlohmann::json;

std::string_view mode_name(std::uint32_t m) {
  switch (static_cast<ipc::NotifyMode>(m)) {
    case ipc::NotifyMode::kEventfd: return "eventfd";
    case ipc::NotifyMode::kFutex: return "futex";
    case ipc::NotifyMode::kSpin: return "spin";
    case ipc::NotifyMode::kPoll: return "poll";
  }
  return "unknown";
}

/// `table` with every line indented by two spaces.
std::string indented(const std::string& table) {
  std::string out;
  for (std::size_t at = 0; at < table.size();) {
    const auto nl = table.find('\n', at);
    out += "  " + table.substr(at, nl == std::string::npos ? std::string::npos : nl - at + 1);
    if (nl == std::string::npos) break;
    at = nl + 1;
  }
  return out;
}

std::string_view kind_name(std::uint32_t k) {
  switch (static_cast<ipc::RegionKind>(k)) {
    case ipc::RegionKind::kRaw: return "raw";
    case ipc::RegionKind::kRingPair: return "ring-pair";
    case ipc::RegionKind::kDevice: return "device";
    case ipc::RegionKind::kDoorbells: return "doorbells";
  }
  return "unknown";
}

json holder_json(const Holder& h) { return {{"pid", h.pid}, {"name", h.comm}, {"cmdline", h.cmdline}}; }

json ring_json(const RingReport& r) {
  json j = {{"name", r.name}, {"offset", r.offset}, {"footprint", r.footprint}, {"readable", r.readable}};
  if (!r.readable) return j;
  j.update({{"layout_version", r.layout_version},
            {"capacity", r.capacity},
            {"notify_mode", mode_name(r.notify_mode)},
            {"head", r.head},
            {"tail", r.tail},
            {"occupancy", r.occupancy},
            {"high_water", r.high_water},
            {"overflow", r.overflow},
            {"consumer_sleeping", r.consumer_sleeping},
            {"records_pushed", r.records_pushed},
            {"records_popped", r.records_popped},
            {"notifications_sent", r.notifications_sent},
            {"consumer_wakeups", r.consumer_wakeups},
            {"pending_records", r.pending_records},
            {"walk", r.walk}});
  return j;
}

json tree_json(const TreeReport& t) {
  json j = {{"readable", t.readable}, {"offset", t.offset}, {"size", t.size}};
  if (!t.readable) return j;
  j["entity_count"] = t.entity_count;
  j["change_total"] = t.change_total;
  j["odd_slots"] = t.odd_slots;
  auto entities = json::array();
  for (const auto& e : t.entities) {
    json je = {{"index", e.index}, {"change_seq", e.change_seq}};
    auto comps = json::array();
    for (const auto& c : e.components) {
      json jc = {{"component", c.name}, {"id", c.id}, {"encoding", c.encoding}, {"ok", c.ok}, {"text", c.text},
                 {"value", c.value}};
      if (c.max_bytes != 0) jc["max_bytes"] = c.max_bytes;
      if (c.blob_seq) {
        jc["seq"] = *c.blob_seq;
        jc["odd"] = c.odd;
      }
      comps.push_back(std::move(jc));
    }
    je["components"] = std::move(comps);
    entities.push_back(std::move(je));
  }
  j["entities"] = std::move(entities);
  return j;
}

std::string rate(double v) { return fmt::format("{:.1f}", v); }

}  // namespace

json to_json(const RegionReport& r) {
  json j = {{"source", r.source},
            {"memfd_name", r.memfd_name},
            {"device", r.device},
            {"size", r.file_size},
            {"seals", seal_names(r.seals)},
            {"snapshot", r.snapshot},
            {"online", r.online},
            {"provider", r.provider ? holder_json(*r.provider) : json(nullptr)}};
  if (r.header_readable) {
    j["header"] = {{"magic", fmt::format("{:#018x}", r.magic)},
                   {"layout_version", r.layout_version},
                   {"header_size", r.header_size},
                   {"size", r.size_field},
                   {"kind", kind_name(r.kind)},
                   {"creator_pid", r.creator_pid},
                   {"generation", r.generation},
                   {"flags", r.flags},
                   {"name", r.header_name}};
  }
  auto others = json::array();
  for (const auto& h : r.other_holders) others.push_back(holder_json(h));
  j["other_holders"] = std::move(others);
  auto rings = json::array();
  for (const auto& ring : r.rings) rings.push_back(ring_json(ring));
  j["rings"] = std::move(rings);
  if (!r.doorbells.empty()) {
    auto bells = json::array();
    for (const auto& d : r.doorbells) {
      bells.push_back({{"index", d.index}, {"offset", d.offset}, {"readable", d.readable}, {"slots", d.slots},
                       {"sleeping", d.sleeping}, {"signals", d.signals}, {"wakeups", d.wakeups},
                       {"takes", d.takes}, {"pending", d.pending}});
    }
    j["doorbells"] = std::move(bells);
  }
  j["tree"] = tree_json(r.tree);
  auto v = json::array();
  for (const auto& x : r.violations) v.push_back({{"where", x.where}, {"what", x.what}});
  j["violations"] = std::move(v);
  return j;
}

std::string format_region(const RegionReport& r, bool rings, bool tree, const Rates* rates) {
  // Names, values and command lines come from the provider: ipc::printable keeps their escape
  // sequences off the operator's terminal.
  std::string out = fmt::format("region {}{}\n", ipc::printable(r.memfd_name.empty() ? r.source : r.memfd_name),
                                r.device.empty() ? "" : fmt::format("  (device {})", ipc::printable(r.device)));
  out += fmt::format("  source      {}{}\n", r.source, r.snapshot ? "  (unsealed: read from a copy)" : "");
  out += fmt::format("  size        {} bytes\n  seals       {}\n", r.file_size, seal_names(r.seals));
  if (r.header_readable) {
    out += fmt::format("  header      magic {:#018x}, layout v{}, kind {}, generation {}, flags {:#x}, "
                       "creator pid {}\n",
                       r.magic, r.layout_version, kind_name(r.kind), r.generation, r.flags, r.creator_pid);
  }
  if (r.provider) {
    out += fmt::format("  provider    pid {} {} ({})\n", r.provider->pid, ipc::printable(r.provider->comm),
                       ipc::printable(r.provider->cmdline));
  } else {
    out += "  provider    none attached\n";
  }
  for (const auto& h : r.other_holders) out += fmt::format("  also held   pid {} {}\n", h.pid, ipc::printable(h.comm));
  out += fmt::format("  state       {}\n", r.online ? "online" : "offline");

  if (rings && !r.rings.empty()) {
    std::vector<std::string> headers{"ring", "capacity", "head", "tail", "used", "high-water", "overflow",
                                     "sleeping", "pushed", "popped", "notified", "wakeups", "pending", "walk"};
    if (rates) headers.insert(headers.begin() + 1, "msg/s");
    client::Table t(headers);
    for (const auto& ring : r.rings) {
      std::vector<std::string> row(headers.size(), "-");
      row.front() = ring.name;
      row.back() = "unreadable";
      if (!ring.readable) {
        t.add_row(std::move(row));
        continue;
      }
      row = {ring.name,
                                   std::to_string(ring.capacity),
                                   std::to_string(ring.head),
                                   std::to_string(ring.tail),
                                   fmt::format("{} ({:.0f}%)", ring.occupancy,
                                               100.0 * static_cast<double>(ring.occupancy) /
                                                   static_cast<double>(ring.capacity)),
                                   std::to_string(ring.high_water),
                                   ring.overflow ? "yes" : "no",
                                   ring.consumer_sleeping ? "yes" : "no",
                                   std::to_string(ring.records_pushed),
                                   std::to_string(ring.records_popped),
                                   std::to_string(ring.notifications_sent),
                                   std::to_string(ring.consumer_wakeups),
                                   std::to_string(ring.pending_records),
                                   ring.walk};
      if (rates) row.insert(row.begin() + 1, rate(ring.name == "tx" ? rates->tx_per_s : rates->rx_per_s));
      t.add_row(std::move(row));
    }
    out += "\n";
    out += indented(t.render());
  }
  if (rings && !r.doorbells.empty()) {
    // Doorbell 0 is the provider's (rung by the core for the tx rings), 1 + i shard i's.
    client::Table t({"doorbell", "consumer", "slots", "sleeping", "signals", "wakeups", "takes", "pending"});
    for (const auto& d : r.doorbells) {
      if (!d.readable) {
        t.add_row({std::to_string(d.index), "-", "-", "-", "-", "-", "-", "unreadable"});
        continue;
      }
      t.add_row({std::to_string(d.index), d.index == 0 ? "provider" : fmt::format("shard {}", d.index - 1),
                 std::to_string(d.slots), d.sleeping ? "yes" : "no", std::to_string(d.signals),
                 std::to_string(d.wakeups), std::to_string(d.takes), std::to_string(d.pending)});
    }
    out += "\n";
    out += indented(t.render());
  }
  if (tree && r.tree.readable) {
    out += fmt::format("\n  tree        {} entities, {} bytes at {}, {} changes{}\n", r.tree.entity_count, r.tree.size,
                       r.tree.offset, r.tree.change_total,
                       rates ? fmt::format(" ({} changes/s)", rate(rates->changes_per_s)) : std::string());
    for (const auto& s : r.tree.odd_slots) out += fmt::format("  ODD SEQLOCK {}\n", s);
    for (const auto& e : r.tree.entities) {
      out += fmt::format("  entity {:<4} seq {}\n", e.index, e.change_seq);
      for (const auto& c : e.components) {
        out += fmt::format("    {:<18} {:<9} {}{}\n", c.name, c.encoding, ipc::printable(c.text),
                           c.blob_seq ? fmt::format("  [seq {}{}]", *c.blob_seq, c.odd ? " ODD" : "") : "");
      }
    }
  }
  if (!r.violations.empty()) {
    out += "\n";
    for (const auto& v : r.violations) out += fmt::format("  VIOLATION   {}: {}\n", v.where, v.what);
  }
  return out;
}

}  // namespace floe::inspect
