#include "format.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "floe/ipc/text.hpp"

namespace floe::client {
namespace {

std::size_t display_width(std::string_view s) {
  // Code points, not bytes: continuation bytes (10xxxxxx) do not advance the cursor.
  return static_cast<std::size_t>(
      std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

std::string join(const google::protobuf::RepeatedPtrField<std::string>& items, std::string_view sep) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += sep;
    out += item;
  }
  return out;
}

std::string or_dash(std::string s) { return s.empty() ? "-" : s; }

std::string state(bool online) { return online ? "online" : "offline"; }

bool is_aggregate(std::string_view action) {
  return action == "sum" || action == "avg" || action == "min" || action == "max";
}

nlohmann::json strings(const google::protobuf::RepeatedPtrField<std::string>& items) {
  auto out = nlohmann::json::array();
  for (const auto& item : items) out.push_back(item);
  return out;
}

}  // namespace

void Table::add_row(std::vector<std::string> cells) {
  for (std::string& c : cells) c = ipc::printable(c);
  rows_.push_back(std::move(cells));
}

std::string Table::render() const {
  std::vector<std::size_t> widths(headers_.size(), 0);
  for (std::size_t i = 0; i < headers_.size(); ++i) widths[i] = display_width(headers_[i]);
  for (const auto& row : rows_) {
    if (row.size() > widths.size()) widths.resize(row.size(), 0);
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], display_width(row[i]));
  }
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    std::string l;
    for (std::size_t i = 0; i < cells.size(); ++i) {
      if (i > 0) l += "  ";
      l += cells[i];
      if (i + 1 < cells.size()) l.append(widths[i] - display_width(cells[i]), ' ');
    }
    while (!l.empty() && l.back() == ' ') l.pop_back();
    out += l;
    out += '\n';
  };
  line(headers_);
  for (const auto& row : rows_) line(row);
  return out;
}

std::string format_number(double v) { return fmt::format("{}", v); }

std::string value_text(const proto::Value& v) {
  if (!v.display().empty()) return v.display();
  switch (v.kind_case()) {
    case proto::Value::kMarker: return "present";
    case proto::Value::kBoolean: return v.boolean() ? "on" : "off";
    case proto::Value::kInteger: return std::to_string(v.integer());
    case proto::Value::kReal: return format_number(v.real());
    case proto::Value::kEnumValue: return "#" + std::to_string(v.enum_value());
    case proto::Value::kRgb: return fmt::format("#{:06x}", v.rgb() & 0xFFFFFFu);
    case proto::Value::kTimestampUs: return std::to_string(v.timestamp_us()) + " us";
    case proto::Value::kText: return "\"" + v.text() + "\"";
    case proto::Value::kList: return "[" + join(v.list().items(), ", ") + "]";
    case proto::Value::KIND_NOT_SET: break;
  }
  return "-";
}

std::string format_devices(const proto::DeviceList& list) {
  if (list.devices().empty()) return "no devices (no provider has registered any yet)\n";
  Table t({"DEVICE", "NAME", "PROVIDER", "STATE", "ENTITIES", "GROUPS"});
  for (const auto& d : list.devices()) {
    t.add_row({d.name(), or_dash(d.display_name()), or_dash(d.provider()), state(d.online()),
               std::to_string(d.entity_count()), or_dash(join(d.groups(), ","))});
  }
  return t.render();
}

std::string format_entities(const proto::EntityList& list) {
  if (list.entities().empty()) return "no entities\n";
  Table t({"ENTITY", "NAME", "DEVICE", "STATE", "COMPONENTS"});
  for (const auto& e : list.entities()) {
    t.add_row({e.id(), or_dash(e.name()), e.device(), state(e.online()), or_dash(join(e.components(), " "))});
  }
  return t.render();
}

std::string format_value(const proto::EntityValue& value, std::string_view component) {
  std::string out = value.entity();
  out += ' ';
  out += component;
  out += " = ";
  // Texts and lists come from providers: no escape sequence of theirs reaches the terminal.
  out += value.has_value() ? ipc::printable(value_text(value.value())) : "-";
  if (!value.online()) out += "  (offline: last known value)";
  out += '\n';
  return out;
}

std::string format_query_result(const proto::QueryResult& r) {
  const std::string& action = r.action();
  std::string out;
  if (action == "count") {
    out = std::to_string(r.count()) + "\n";
  } else if (is_aggregate(action)) {
    if (r.has_number()) {
      out = format_number(r.number()) + "  (" + action + " over " + std::to_string(r.count()) +
            (r.count() == 1 ? " entity)\n" : " entities)\n");
    } else {
      out = "no value (nothing matched)\n";
    }
  } else if (action == "any" || action == "all") {
    out = r.has_truth() ? (r.truth() ? "true\n" : "false\n") : "-\n";
  } else if (r.matches().empty()) {
    out = "no matching entities\n";
  } else {
    const bool with_values = std::any_of(r.matches().begin(), r.matches().end(),
                                         [](const proto::EntityValue& m) { return m.has_value(); });
    Table t(with_values ? std::vector<std::string>{"ENTITY", "VALUE", "STATE"}
                        : std::vector<std::string>{"ENTITY", "STATE"});
    for (const auto& m : r.matches()) {
      if (with_values) {
        t.add_row({m.entity(), m.has_value() ? value_text(m.value()) : "-", state(m.online())});
      } else {
        t.add_row({m.entity(), state(m.online())});
      }
    }
    out = t.render();
  }
  if (r.unreadable() > 0) {
    out += "(" + std::to_string(r.unreadable()) + " entities could not be read consistently and were skipped)\n";
  }
  return out;
}

std::string format_set_results(const proto::SetResults& results) {
  if (results.results().empty()) return "ok\n";
  Table t({"ENTITY", "RESULT", "MESSAGE"});
  for (const auto& r : results.results()) {
    t.add_row({r.entity(), r.ok() ? "ok" : "failed", or_dash(r.message())});
  }
  return t.render();
}

std::string format_groups(const proto::GroupList& list) {
  if (list.groups().empty()) return "no groups\n";
  Table t({"GROUP", "DEVICES"});
  for (const auto& g : list.groups()) t.add_row({g.name(), or_dash(join(g.devices(), ","))});
  return t.render();
}

std::string format_watch_event(const proto::WatchEvent& event, std::string_view timestamp) {
  std::string head(timestamp);
  if (!event.error().empty()) return head + "  error: " + event.error() + "\n";
  std::string body = format_query_result(event.result());
  // Single-line results share the time stamp's line; tables start below it.
  if (std::count(body.begin(), body.end(), '\n') <= 1) return head + "  " + body;
  return head + "\n" + body;
}

nlohmann::json to_json(const proto::Value& v) {
  nlohmann::json j = nlohmann::json::object();
  switch (v.kind_case()) {
    case proto::Value::kMarker: j["type"] = "marker"; j["value"] = true; break;
    case proto::Value::kBoolean: j["type"] = "bool"; j["value"] = v.boolean(); break;
    case proto::Value::kInteger: j["type"] = "int64"; j["value"] = v.integer(); break;
    case proto::Value::kReal: j["type"] = "real"; j["value"] = v.real(); break;
    case proto::Value::kEnumValue: j["type"] = "enum"; j["value"] = v.enum_value(); break;
    case proto::Value::kRgb: j["type"] = "rgb"; j["value"] = fmt::format("#{:06x}", v.rgb() & 0xFFFFFFu); break;
    case proto::Value::kTimestampUs: j["type"] = "timestamp"; j["value"] = v.timestamp_us(); break;
    case proto::Value::kText: j["type"] = "text"; j["value"] = v.text(); break;
    case proto::Value::kList: j["type"] = "list"; j["value"] = strings(v.list().items()); break;
    case proto::Value::KIND_NOT_SET: j["type"] = nullptr; j["value"] = nullptr; break;
  }
  j["display"] = value_text(v);
  return j;
}

nlohmann::json to_json(const proto::DeviceList& list) {
  auto devices = nlohmann::json::array();
  for (const auto& d : list.devices()) {
    devices.push_back({{"device", d.name()},
                       {"name", d.display_name()},
                       {"provider", d.provider()},
                       {"online", d.online()},
                       {"entities", d.entity_count()},
                       {"groups", strings(d.groups())}});
  }
  return {{"devices", devices}};
}

nlohmann::json to_json(const proto::EntityList& list) {
  auto entities = nlohmann::json::array();
  for (const auto& e : list.entities()) {
    entities.push_back({{"entity", e.id()},
                        {"name", e.name()},
                        {"device", e.device()},
                        {"online", e.online()},
                        {"components", strings(e.components())}});
  }
  return {{"entities", entities}};
}

nlohmann::json to_json(const proto::EntityValue& value) {
  nlohmann::json j = {{"entity", value.entity()}, {"online", value.online()}};
  j["value"] = value.has_value() ? to_json(value.value()) : nlohmann::json(nullptr);
  return j;
}

nlohmann::json to_json(const proto::QueryResult& r) {
  nlohmann::json j = {{"action", r.action()}, {"count", r.count()}};
  if (is_aggregate(r.action())) j["number"] = r.has_number() ? nlohmann::json(r.number()) : nlohmann::json(nullptr);
  if (r.has_truth()) j["truth"] = r.truth();
  if (r.action() != "count" && !is_aggregate(r.action()) && r.action() != "any" && r.action() != "all") {
    auto matches = nlohmann::json::array();
    for (const auto& m : r.matches()) matches.push_back(to_json(m));
    j["matches"] = matches;
  }
  j["unreadable"] = r.unreadable();
  return j;
}

nlohmann::json to_json(const proto::SetResults& results) {
  auto out = nlohmann::json::array();
  for (const auto& r : results.results()) {
    nlohmann::json one = {{"entity", r.entity()}, {"ok", r.ok()}, {"message", r.message()}};
    if (!r.ok()) one["code"] = proto::ErrorCode_Name(r.code());
    out.push_back(one);
  }
  return {{"results", out}};
}

nlohmann::json to_json(const proto::GroupList& list) {
  auto groups = nlohmann::json::array();
  for (const auto& g : list.groups()) groups.push_back({{"group", g.name()}, {"devices", strings(g.devices())}});
  return {{"groups", groups}};
}

nlohmann::json to_json(const proto::WatchEvent& event) {
  nlohmann::json j = {{"watch_id", event.watch_id()}};
  if (!event.error().empty()) {
    j["error"] = event.error();
  } else {
    j["result"] = to_json(event.result());
  }
  return j;
}

}  // namespace floe::client
