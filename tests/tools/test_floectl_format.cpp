// floectl's output: aligned tables for people, JSON documents for scripts.
#include <gtest/gtest.h>

#include <string>

#include "format.hpp"

namespace floe::client {
namespace {

proto::Value real_value(double v, const std::string& display) {
  proto::Value out;
  out.set_real(v);
  out.set_display(display);
  return out;
}

TEST(FloectlTable, PadsColumnsToTheWidestCellWithoutTrailingBlanks) {
  Table t({"A", "BB", "C"});
  t.add_row({"long-cell", "x", ""});
  t.add_row({"y", "wider", "z"});
  EXPECT_EQ(t.render(),
            "A          BB     C\n"
            "long-cell  x\n"
            "y          wider  z\n");
}

TEST(FloectlTable, CountsUtf8CodePointsNotBytes) {
  Table t({"NAME", "X"});
  t.add_row({"Küche", "1"});  // 5 code points, 6 bytes
  t.add_row({"Kitch", "2"});
  EXPECT_EQ(t.render(), "NAME   X\nKüche  1\nKitch  2\n");
}

TEST(FloectlFormat, NumbersUseTheShortestExactForm) {
  EXPECT_EQ(format_number(0.5), "0.5");
  EXPECT_EQ(format_number(3.0), "3");
  EXPECT_EQ(format_number(0.1 + 0.2), "0.30000000000000004");
}

TEST(FloectlFormat, ValueTextPrefersTheCoresDisplayForm) {
  EXPECT_EQ(value_text(real_value(0.5, "0.50")), "0.50");
  proto::Value b;
  b.set_boolean(true);
  EXPECT_EQ(value_text(b), "on");
  proto::Value rgb;
  rgb.set_rgb(0xff8000);
  EXPECT_EQ(value_text(rgb), "#ff8000");
  EXPECT_EQ(value_text(proto::Value{}), "-");
}

TEST(FloectlFormat, DevicesTableShowsStateAndGroups) {
  proto::DeviceList list;
  auto* d = list.add_devices();
  d->set_name("lights-a");
  d->set_display_name("Lights A");
  d->set_provider("virtual-lights");
  d->set_online(true);
  d->set_entity_count(3);
  d->add_groups("kitchen");
  d->add_groups("living");
  auto* e = list.add_devices();
  e->set_name("lights-b");
  e->set_provider("virtual-lights");
  EXPECT_EQ(format_devices(list),
            "DEVICE    NAME      PROVIDER        STATE    ENTITIES  GROUPS\n"
            "lights-a  Lights A  virtual-lights  online   3         kitchen,living\n"
            "lights-b  -         virtual-lights  offline  0         -\n");
  EXPECT_EQ(format_devices(proto::DeviceList{}), "no devices (no provider has registered any yet)\n");
}

TEST(FloectlFormat, AggregatesPrintTheNumberAndHowManyEntities) {
  proto::QueryResult r;
  r.set_action("avg");
  r.set_count(3);
  r.set_number(0.25);
  EXPECT_EQ(format_query_result(r), "0.25  (avg over 3 entities)\n");
  r.clear_number();
  r.set_count(0);
  EXPECT_EQ(format_query_result(r), "no value (nothing matched)\n");
}

TEST(FloectlFormat, CountAnyAndAll) {
  proto::QueryResult r;
  r.set_action("count");
  r.set_count(6);
  EXPECT_EQ(format_query_result(r), "6\n");
  r.set_action("any");
  r.set_truth(false);
  EXPECT_EQ(format_query_result(r), "false\n");
}

TEST(FloectlFormat, ListPrintsATableWithValuesWhenThereIsATarget) {
  proto::QueryResult r;
  r.set_action("list");
  auto* m = r.add_matches();
  m->set_entity("kitchen_ceiling");
  m->set_online(true);
  *m->mutable_value() = real_value(0.5, "0.50");
  auto* n = r.add_matches();
  n->set_entity("hall");
  EXPECT_EQ(format_query_result(r),
            "ENTITY           VALUE  STATE\n"
            "kitchen_ceiling  0.50   online\n"
            "hall             -      offline\n");
  r.clear_matches();
  EXPECT_EQ(format_query_result(r), "no matching entities\n");
}

// A provider (an ESPHome device on the LAN) writes texts: they must not reach the terminal as
// escape sequences, in tables or in `get`; JSON keeps the value as it is (its encoder escapes it).
TEST(FloectlFormat, TextValuesCannotInjectTerminalEscapes) {
  const std::string hostile = "\x1b]0;PWNED\x07\x1b[2J";
  const std::string shown = "\"\\x1b]0;PWNED\\x07\\x1b[2J\"";
  proto::EntityValue v;
  v.set_entity("porch_sensor");
  v.set_online(true);
  v.mutable_value()->set_text(hostile);
  v.mutable_value()->set_display(hostile);
  EXPECT_EQ(format_value(v, "Text"), "porch_sensor Text = " + shown.substr(1, shown.size() - 2) + "\n");
  v.mutable_value()->clear_display();
  EXPECT_EQ(format_value(v, "Text"), "porch_sensor Text = " + shown + "\n");
  proto::QueryResult r;
  r.set_action("list");
  auto* m = r.add_matches();
  *m = v;
  m->mutable_value()->mutable_list()->add_items("\xc2\x9b" "2J");
  EXPECT_EQ(format_query_result(r), "ENTITY        VALUE       STATE\nporch_sensor  [\\u009b2J]  online\n");
  EXPECT_EQ(to_json(m->value())["value"], nlohmann::json::array({"\xc2\x9b" "2J"}));

  // Names and a provider's failure message, shown in tables, are escaped the same way.
  proto::DeviceList devices;
  auto* d = devices.add_devices();
  d->set_name("porch");
  d->set_display_name("Porch\x1b[2J");
  d->set_provider("esphome");
  d->set_online(true);
  EXPECT_NE(format_devices(devices).find("Porch\\x1b[2J"), std::string::npos) << format_devices(devices);
  EXPECT_EQ(format_devices(devices).find('\x1b'), std::string::npos);
}

TEST(FloectlFormat, UnreadableEntitiesAreMentioned) {
  proto::QueryResult r;
  r.set_action("count");
  r.set_count(2);
  r.set_unreadable(1);
  EXPECT_EQ(format_query_result(r), "2\n(1 entities could not be read consistently and were skipped)\n");
}

TEST(FloectlFormat, GetShowsOfflineValuesAsLastKnown) {
  proto::EntityValue v;
  v.set_entity("kitchen_ceiling");
  v.set_online(false);
  *v.mutable_value() = real_value(0.5, "0.50");
  EXPECT_EQ(format_value(v, "Dimmer"), "kitchen_ceiling Dimmer = 0.50  (offline: last known value)\n");
}

TEST(FloectlFormat, WatchEventsShareTheTimestampLineWhenShort) {
  proto::WatchEvent e;
  e.set_watch_id(7);
  e.mutable_result()->set_action("count");
  e.mutable_result()->set_count(2);
  EXPECT_EQ(format_watch_event(e, "12:00:00"), "12:00:00  2\n");
  proto::WatchEvent bad;
  bad.set_error("unknown group 'attic'");
  EXPECT_EQ(format_watch_event(bad, "12:00:01"), "12:00:01  error: unknown group 'attic'\n");
}

TEST(FloectlJson, ValuesCarryTypeNativeValueAndDisplay) {
  const auto j = to_json(real_value(0.5, "0.50"));
  EXPECT_EQ(j["type"], "real");
  EXPECT_EQ(j["value"], 0.5);
  EXPECT_EQ(j["display"], "0.50");
  proto::Value rgb;
  rgb.set_rgb(0x00ff10);
  EXPECT_EQ(to_json(rgb)["value"], "#00ff10");
}

TEST(FloectlJson, AggregateWithoutValueIsNull) {
  proto::QueryResult r;
  r.set_action("max");
  const auto j = to_json(r);
  EXPECT_TRUE(j["number"].is_null());
  EXPECT_EQ(j["count"], 0);
  EXPECT_FALSE(j.contains("matches"));
}

TEST(FloectlJson, SetResultsNameTheErrorCodeOfFailures) {
  proto::SetResults rs;
  auto* ok = rs.add_results();
  ok->set_entity("a");
  ok->set_ok(true);
  auto* bad = rs.add_results();
  bad->set_entity("b");
  bad->set_code(proto::ERROR_CODE_OFFLINE);
  bad->set_message("device offline");
  const auto j = to_json(rs);
  ASSERT_EQ(j["results"].size(), 2u);
  EXPECT_FALSE(j["results"][0].contains("code"));
  EXPECT_EQ(j["results"][1]["code"], "ERROR_CODE_OFFLINE");
}

TEST(FloectlJson, WatchEventIsOneCompactLine) {
  proto::WatchEvent e;
  e.set_watch_id(3);
  e.mutable_result()->set_action("count");
  e.mutable_result()->set_count(1);
  const std::string line = to_json(e).dump();
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(nlohmann::json::parse(line)["result"]["count"], 1);
}

}  // namespace
}  // namespace floe::client
