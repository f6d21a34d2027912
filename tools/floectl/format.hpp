// How floectl shows the core's answers: aligned tables and short lines for people, JSON documents
// (nlohmann_json) for scripts. Pure functions of the protobuf messages, so they are unit-tested.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "client.pb.h"

namespace floe::client {

/// A text table: columns padded to their widest cell (counted in UTF-8 code points), two spaces
/// apart, no trailing blanks.
class Table {
 public:
  explicit Table(std::vector<std::string> headers) : headers_(std::move(headers)) {}
  /// Every cell is shown through ipc::printable: names, values and messages come from providers,
  /// and no escape sequence of theirs may reach the terminal.
  void add_row(std::vector<std::string> cells);
  [[nodiscard]] bool empty() const noexcept { return rows_.empty(); }
  /// Header line, then one line per row; every line ends in '\n'.
  [[nodiscard]] std::string render() const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

/// Shortest text that reads back as the same double ("0.5", "3", "1e-07").
[[nodiscard]] std::string format_number(double v);
/// The value's display form, or one derived from its typed field if the core left display empty.
[[nodiscard]] std::string value_text(const proto::Value& v);

[[nodiscard]] std::string format_devices(const proto::DeviceList& list);
[[nodiscard]] std::string format_entities(const proto::EntityList& list);
[[nodiscard]] std::string format_value(const proto::EntityValue& value, std::string_view component);
[[nodiscard]] std::string format_query_result(const proto::QueryResult& result);
[[nodiscard]] std::string format_set_results(const proto::SetResults& results);
[[nodiscard]] std::string format_groups(const proto::GroupList& list);
/// One watch event for people: a time stamp and the result (lists span several lines).
[[nodiscard]] std::string format_watch_event(const proto::WatchEvent& event, std::string_view timestamp);

[[nodiscard]] nlohmann::json to_json(const proto::Value& v);
[[nodiscard]] nlohmann::json to_json(const proto::DeviceList& list);
[[nodiscard]] nlohmann::json to_json(const proto::EntityList& list);
[[nodiscard]] nlohmann::json to_json(const proto::EntityValue& value);
[[nodiscard]] nlohmann::json to_json(const proto::QueryResult& result);
[[nodiscard]] nlohmann::json to_json(const proto::SetResults& results);
[[nodiscard]] nlohmann::json to_json(const proto::GroupList& list);
[[nodiscard]] nlohmann::json to_json(const proto::WatchEvent& event);

}  // namespace floe::client
