#include "floe/core/query_parser.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "floe/core/query.hpp"

namespace floe::core {

// Failures print queries as text, not as bytes.
void PrintTo(const Query& q, std::ostream* os) { *os << to_string(q); }

namespace {

using C = Component;

// ---- AST builders -------------------------------------------------------------------------------

Filter has(Component c) {
  Filter f;
  f.kind = Filter::Kind::kHas;
  f.component = c;
  return f;
}
Filter compare(Component c, CompareOp op, Literal v) {
  Filter f;
  f.kind = Filter::Kind::kCompare;
  f.component = c;
  f.op = op;
  f.value = std::move(v);
  return f;
}
Filter negate(Filter inner) {
  Filter f;
  f.kind = Filter::Kind::kNot;
  f.children.push_back(std::move(inner));
  return f;
}
Filter all_of(std::vector<Filter> children) {
  Filter f;
  f.kind = Filter::Kind::kAnd;
  f.children = std::move(children);
  return f;
}
Filter any_of(std::vector<Filter> children) {
  Filter f;
  f.kind = Filter::Kind::kOr;
  f.children = std::move(children);
  return f;
}
Scope scope(Scope::Kind kind, std::string name) { return Scope{kind, std::move(name)}; }
Literal text(const char* s) { return std::string(s); }

Query parsed(std::string_view text) {
  auto r = parse_query(text);
  if (!r) {
    ADD_FAILURE() << "parse failed:\n" << r.error().message;
    return {};
  }
  return std::move(*r);
}

ParseError failure(std::string_view text) {
  auto r = parse_query_detailed(text);
  if (auto* q = std::get_if<Query>(&r)) {
    ADD_FAILURE() << "parsed, but should have failed: " << to_string(*q);
    return {};
  }
  return std::get<ParseError>(std::move(r));
}

// ---- The examples of the issue, with their ASTs -------------------------------------------------

const char* const kExamples[] = {
    "avg Dimmer where Light in group kitchen",
    "count Switch where Switch == true",
    "list Real where Sensor and DeviceClass == \"temperature\"",
    "count where Light and not Switch",
    "any Switch in device esp-kitchen",
    "max Real where Sensor and (DeviceClass == \"temperature\" or DeviceClass == \"humidity\")",
    "get Dimmer in entity kitchen_ceiling",
    "set Switch = true where Light in group kitchen in entity *_ceiling",
    "count where CoverState == open",
};

TEST(QueryParser, AvgOfDimmerOverLightsInAGroup) {
  Query want;
  want.action = Action::kAvg;
  want.target = C::Dimmer;
  want.where = has(C::Light);
  want.scopes = {scope(Scope::Kind::kGroup, "kitchen")};
  EXPECT_EQ(parsed(kExamples[0]), want);
}

TEST(QueryParser, CountWithATargetAndABoolComparison) {
  Query want;
  want.action = Action::kCount;
  want.target = C::Switch;
  want.where = compare(C::Switch, CompareOp::kEq, true);
  EXPECT_EQ(parsed(kExamples[1]), want);
}

TEST(QueryParser, ListWithPresenceAndTextComparison) {
  Query want;
  want.action = Action::kList;
  want.target = C::Real;
  want.where = all_of({has(C::Sensor), compare(C::DeviceClass, CompareOp::kEq, text("temperature"))});
  EXPECT_EQ(parsed(kExamples[2]), want);
}

TEST(QueryParser, CountWithoutTargetAndANegation) {
  Query want;
  want.action = Action::kCount;
  want.where = all_of({has(C::Light), negate(has(C::Switch))});
  EXPECT_EQ(parsed(kExamples[3]), want);
}

TEST(QueryParser, AnyInADeviceWhoseNameHasADash) {
  Query want;
  want.action = Action::kAny;
  want.target = C::Switch;
  want.scopes = {scope(Scope::Kind::kDevice, "esp-kitchen")};
  EXPECT_EQ(parsed(kExamples[4]), want);
}

TEST(QueryParser, MaxWithAParenthesisedOr) {
  Query want;
  want.action = Action::kMax;
  want.target = C::Real;
  want.where = all_of({has(C::Sensor), any_of({compare(C::DeviceClass, CompareOp::kEq, text("temperature")),
                                               compare(C::DeviceClass, CompareOp::kEq, text("humidity"))})});
  EXPECT_EQ(parsed(kExamples[5]), want);
}

TEST(QueryParser, GetInAnEntity) {
  Query want;
  want.action = Action::kGet;
  want.target = C::Dimmer;
  want.scopes = {scope(Scope::Kind::kEntityGlob, "kitchen_ceiling")};
  EXPECT_EQ(parsed(kExamples[6]), want);
}

TEST(QueryParser, SetWithAFilterAndTwoScopes) {
  Query want;
  want.action = Action::kSet;
  want.target = C::Switch;
  want.set_value = true;
  want.where = has(C::Light);
  want.scopes = {scope(Scope::Kind::kGroup, "kitchen"), scope(Scope::Kind::kEntityGlob, "*_ceiling")};
  EXPECT_EQ(parsed(kExamples[7]), want);
}

TEST(QueryParser, EnumValueIsKeptAsItsName) {
  Query want;
  want.action = Action::kCount;
  want.where = compare(C::CoverState, CompareOp::kEq, text("open"));
  EXPECT_EQ(parsed(kExamples[8]), want);
}

TEST(QueryParser, EveryActionParses) {
  const std::pair<const char*, Action> actions[] = {
      {"get Dimmer", Action::kGet}, {"list", Action::kList}, {"count", Action::kCount},
      {"sum Integer", Action::kSum}, {"avg Real", Action::kAvg}, {"min Dimmer", Action::kMin},
      {"max Integer", Action::kMax}, {"any", Action::kAny}, {"all Switch", Action::kAll},
      {"set Dimmer to 0.5", Action::kSet}};
  for (const auto& [text, action] : actions) EXPECT_EQ(parsed(text).action, action) << text;
}

// ---- Precedence, parentheses, not / with / without ----------------------------------------------

TEST(QueryParser, AndBindsTighterThanOr) {
  EXPECT_EQ(parsed("count where Light or Switch and Sensor").where,
            any_of({has(C::Light), all_of({has(C::Switch), has(C::Sensor)})}));
  EXPECT_EQ(parsed("count where Light and Switch or Sensor").where,
            any_of({all_of({has(C::Light), has(C::Switch)}), has(C::Sensor)}));
}

TEST(QueryParser, ParenthesesOverridePrecedence) {
  EXPECT_EQ(parsed("count where (Light or Switch) and Sensor").where,
            all_of({any_of({has(C::Light), has(C::Switch)}), has(C::Sensor)}));
}

TEST(QueryParser, ChainsAndRedundantParenthesesFlatten) {
  const Filter flat = all_of({has(C::Light), has(C::Switch), has(C::Sensor)});
  EXPECT_EQ(parsed("count where Light and Switch and Sensor").where, flat);
  EXPECT_EQ(parsed("count where (Light and Switch) and Sensor").where, flat);
  EXPECT_EQ(parsed("count where Light and (Switch and (Sensor))").where, flat);
  EXPECT_EQ(parsed("count where ((Light))").where, has(C::Light));
  EXPECT_EQ(parsed("count where Light or (Switch or Sensor)").where,
            any_of({has(C::Light), has(C::Switch), has(C::Sensor)}));
}

TEST(QueryParser, NotBindsTighterThanAnd) {
  EXPECT_EQ(parsed("count where not Light and Switch").where, all_of({negate(has(C::Light)), has(C::Switch)}));
  EXPECT_EQ(parsed("count where not (Light and Switch)").where, negate(all_of({has(C::Light), has(C::Switch)})));
  EXPECT_EQ(parsed("count where not not Light").where, negate(negate(has(C::Light))));
  EXPECT_EQ(parsed("count where not Switch == true").where, negate(compare(C::Switch, CompareOp::kEq, true)));
}

TEST(QueryParser, WithIsPresenceAndWithoutIsItsNegation) {
  EXPECT_EQ(parsed("count where with Light").where, has(C::Light));
  EXPECT_EQ(parsed("count where without Light").where, negate(has(C::Light)));
  EXPECT_EQ(parsed("count where Light and without Switch or with Sensor").where,
            any_of({all_of({has(C::Light), negate(has(C::Switch))}), has(C::Sensor)}));
}

TEST(QueryParser, KeywordsAndComponentNamesAreCaseInsensitive) {
  EXPECT_EQ(parsed("COUNT switch WHERE SWITCH == TRUE"), parsed("count Switch where Switch == true"));
  EXPECT_EQ(parsed("Avg dimmer Where light In Group kitchen"), parsed(kExamples[0]));
}

// ---- Literals -----------------------------------------------------------------------------------

TEST(QueryParser, EveryComparisonOperator) {
  const std::pair<const char*, CompareOp> ops[] = {{"==", CompareOp::kEq}, {"=", CompareOp::kEq},
                                                   {"!=", CompareOp::kNe}, {"<", CompareOp::kLt},
                                                   {"<=", CompareOp::kLe}, {">", CompareOp::kGt},
                                                   {">=", CompareOp::kGe}};
  for (const auto& [op, want] : ops) {
    EXPECT_EQ(parsed(std::string("count where Integer ") + op + " 3").where, compare(C::Integer, want, std::int64_t{3}))
        << op;
  }
}

TEST(QueryParser, OperatorsNeedNoSpaces) {
  EXPECT_EQ(parsed("count where Dimmer>=-0.5 and(Switch!=false)").where,
            all_of({compare(C::Dimmer, CompareOp::kGe, -0.5), compare(C::Switch, CompareOp::kNe, false)}));
}

TEST(QueryParser, IntegersFillTheWholeInt64Range) {
  EXPECT_EQ(parsed("count where Integer == 9223372036854775807").where.value,
            Literal{std::numeric_limits<std::int64_t>::max()});
  EXPECT_EQ(parsed("count where Integer == -9223372036854775808").where.value,
            Literal{std::numeric_limits<std::int64_t>::min()});
}

TEST(QueryParser, RealsTakeADecimalPointOrAnExponent) {
  EXPECT_EQ(parsed("count where Real > 0.25").where.value, Literal{0.25});
  EXPECT_EQ(parsed("count where Real > -2.5e3").where.value, Literal{-2500.0});
  EXPECT_EQ(parsed("count where Real > 1e-3").where.value, Literal{0.001});
  EXPECT_EQ(parsed("count where Real > 6.02E+23").where.value, Literal{6.02e23});
}

TEST(QueryParser, IntegerLiteralsWidenToRealComponents) {
  EXPECT_EQ(parsed("count where Dimmer < 1").where.value, Literal{1.0});
  EXPECT_EQ(parsed("set ColorTemperature = 2700").set_value, Literal{2700.0});
}

TEST(QueryParser, TimestampsAreMicrosecondIntegers) {
  EXPECT_EQ(parsed("count where Timestamp >= 1700000000000000").where,
            compare(C::Timestamp, CompareOp::kGe, std::int64_t{1700000000000000}));
}

std::int64_t utc_us(std::chrono::sys_days day, std::chrono::microseconds time_of_day) {
  return (std::chrono::sys_time<std::chrono::microseconds>(day) + time_of_day).time_since_epoch().count();
}

TEST(QueryParser, TimestampsTakeIso8601TimesWithTheirUtcOffset) {
  using namespace std::chrono;
  const std::int64_t ten = utc_us(sys_days{2026y / November / 27}, hours{10});
  const Filter want = compare(C::Timestamp, CompareOp::kGt, ten);
  EXPECT_EQ(parsed("count Timestamp where Timestamp > 2026-11-27T10:00:00Z").where, want);
  EXPECT_EQ(parsed("count where Timestamp > 2026-11-27t10:00:00z").where, want);
  EXPECT_EQ(parsed("count where Timestamp > 2026-11-27T11:30:00+01:30").where, want);
  EXPECT_EQ(parsed("count where Timestamp > 2026-11-27T08:00:00-02:00").where, want);
  EXPECT_EQ(parsed("count where Timestamp>2026-11-27T10:00Z").where, want) << "seconds may be left out";
  EXPECT_EQ(parsed("count where Timestamp > 2026-11-27T10:00:00.25Z").where.value, Literal{ten + 250'000});
  EXPECT_EQ(parsed("count where Timestamp > 2026-11-27T10:00:00.000001Z").where.value, Literal{ten + 1});
  EXPECT_EQ(parsed("count where Timestamp > 1970-01-01T00:00:00Z").where.value, Literal{std::int64_t{0}});
  EXPECT_EQ(parsed("count where Timestamp < 1969-12-31T23:59:59.999999Z").where.value, Literal{std::int64_t{-1}});
  EXPECT_EQ(parsed("count where Timestamp > 2024-02-29T00:00:00Z").where.value,
            Literal{utc_us(sys_days{2024y / February / 29}, {})});
  EXPECT_EQ(parsed("count where Timestamp > 2026-11-27T00:30:00+01:00").where.value,
            Literal{utc_us(sys_days{2026y / November / 26}, hours{23} + minutes{30})})
      << "an offset can move the time to the day before";
  EXPECT_EQ(parsed("count where Timestamp >= 1700000000000000").where.value, Literal{std::int64_t{1700000000000000}})
      << "integers are still microseconds";
}

TEST(QueryParser, DatesAndTimesOfDayTakeIso8601Too) {
  using namespace std::chrono;
  EXPECT_EQ(parsed("count where Date == 2026-11-27").where,
            compare(C::Date, CompareOp::kEq, std::int64_t{sys_days{2026y / November / 27}.time_since_epoch().count()}));
  EXPECT_EQ(parsed("count where Date < 1969-12-31").where.value, Literal{std::int64_t{-1}});
  EXPECT_EQ(parsed("count where Date < 0000-01-01").where.value, Literal{std::int64_t{-719528}});
  EXPECT_EQ(parsed("count where Time >= 10:00").where, compare(C::Time, CompareOp::kGe, std::int64_t{36000}));
  EXPECT_EQ(parsed("count where Time < 23:59:59").where.value, Literal{std::int64_t{86399}});
  EXPECT_EQ(parsed("count where Time == 00:00:00").where.value, Literal{std::int64_t{0}});
  EXPECT_EQ(parsed("count where Date == 20").where.value, Literal{std::int64_t{20}}) << "integers are days";
}

TEST(QueryParser, IsoWordsElsewhereAreStillNamesOrErrors) {
  EXPECT_EQ(parsed("count in group 2026-11-27").scopes, std::vector<Scope>{scope(Scope::Kind::kGroup, "2026-11-27")});
  EXPECT_EQ(parsed("count in group 2026-11-27T10:00:00+01:00").scopes,
            std::vector<Scope>{scope(Scope::Kind::kGroup, "2026-11-27T10:00:00+01:00")});
  EXPECT_EQ(to_string(parsed("count in group 2026-11-27T10:00:00+01:00")), "count in group \"2026-11-27T10:00:00+01:00\"");
}

TEST(QueryParser, StringsUnescapeQuotesAndBackslashes) {
  EXPECT_EQ(parsed(R"(count where Text == "say \"hi\" \\ bye")").where.value, text(R"(say "hi" \ bye)"));
  EXPECT_EQ(parsed(R"(count where Text == "")").where.value, text(""));
  EXPECT_EQ(parsed("count where Text == \"Küche\"").where.value, text("Küche"));
}

TEST(QueryParser, EnumNamesAreCaseInsensitiveAndMayBeQuoted) {
  const Filter want = compare(C::ClimateMode, CompareOp::kNe, text("heat"));
  EXPECT_EQ(parsed("count where ClimateMode != heat").where, want);
  EXPECT_EQ(parsed("count where ClimateMode != HEAT").where, want);
  EXPECT_EQ(parsed("count where ClimateMode != \"heat\"").where, want);
}

TEST(QueryParser, ColoursAreLowerCasedText) {
  EXPECT_EQ(parsed("count where Color == #FF8000").where, compare(C::Color, CompareOp::kEq, text("#ff8000")));
  EXPECT_EQ(parsed("set Color = \"#00ff00\"").set_value, Literal{text("#00ff00")});
}

// ---- Scopes -------------------------------------------------------------------------------------

TEST(QueryParser, ScopesRepeatInOrderAndNamesMayBeQuoted) {
  const Query q = parsed(R"(list Light in group "living room" in device esp32.hall:1 in entity "in" in group 42)");
  const std::vector<Scope> want = {scope(Scope::Kind::kGroup, "living room"), scope(Scope::Kind::kDevice, "esp32.hall:1"),
                                   scope(Scope::Kind::kEntityGlob, "in"), scope(Scope::Kind::kGroup, "42")};
  EXPECT_EQ(q.scopes, want);
  EXPECT_EQ(q.target, C::Light);
}

TEST(QueryParser, EntityPatternsKeepGlobCharacters) {
  EXPECT_EQ(parsed("count in entity kitchen_?_*").scopes, std::vector<Scope>{scope(Scope::Kind::kEntityGlob, "kitchen_?_*")});
  EXPECT_EQ(parsed("count in device 2024-01-01").scopes, std::vector<Scope>{scope(Scope::Kind::kDevice, "2024-01-01")});
}

// ---- Errors: position, expected text, message ---------------------------------------------------

struct ErrorCase {
  const char* text;
  std::size_t position;
  std::size_t length;
  const char* expected;
  const char* message_contains;
};

void expect_error(const ErrorCase& c) {
  SCOPED_TRACE(c.text);
  const ParseError e = failure(c.text);
  EXPECT_EQ(e.position, c.position);
  EXPECT_EQ(e.length, c.length);
  EXPECT_EQ(e.expected, c.expected);
  EXPECT_NE(e.message.find(c.message_contains), std::string::npos) << e.message;
}

TEST(QueryParserErrors, UnknownComponentSuggestsTheClosestName) {
  expect_error({"avg Dimer", 4, 5, "a numeric component to avg (int64 or real)",
                "unknown component 'Dimer' — did you mean 'Dimmer'?"});
  expect_error({"count where Swtich", 12, 6, "a component, 'not', 'with', 'without' or '('",
                "did you mean 'Switch'?"});
  expect_error({"count Frobnicator", 6, 11, "a component, 'where', 'in' or end of query",
                "unknown component 'Frobnicator'"});
  EXPECT_EQ(failure("count Frobnicator").message.find("did you mean"), std::string::npos);
}

TEST(QueryParserErrors, MisspelledKeywordAfterATarget) {
  expect_error({"count Switch whre Switch == true", 13, 4, "'where', 'in' or end of query",
                "expected 'where', 'in' or end of query, found 'whre'"});
  // Where a component could stand, a keyword is a candidate too.
  expect_error({"count whre Switch", 6, 4, "a component, 'where', 'in' or end of query", "did you mean 'where'?"});
}

TEST(QueryParserErrors, UnknownActionSuggestsOne) {
  expect_error({"cuont where Light", 0, 5, "an action (get, list, count, sum, avg, min, max, any, all or set)",
                "did you mean 'count'?"});
  expect_error({"", 0, 0, "an action (get, list, count, sum, avg, min, max, any, all or set)", "empty query"});
  expect_error({"   ", 0, 0, "an action (get, list, count, sum, avg, min, max, any, all or set)", "empty query"});
}

TEST(QueryParserErrors, AggregatesAndGetAndSetNeedATarget) {
  expect_error({"sum where Light", 4, 5, "a numeric component to sum (int64 or real)", "sum needs a target"});
  expect_error({"avg", 3, 0, "a numeric component to avg (int64 or real)", "found end of query"});
  expect_error({"get in group kitchen", 4, 2, "a component to get", "get needs a target"});
  expect_error({"set where Light", 4, 5, "a component to set", "found keyword 'where'"});
}

TEST(QueryParserErrors, AggregatesNeedANumericTarget) {
  expect_error({"avg Switch", 4, 6, "a numeric component to avg (int64 or real)",
                "avg needs a numeric target (int64 or real), but Switch is a bool"});
  expect_error({"min DeviceClass", 4, 11, "a numeric component to min (int64 or real)", "DeviceClass is text"});
  expect_error({"max Light", 4, 5, "a numeric component to max (int64 or real)", "Light is a marker"});
}

TEST(QueryParserErrors, MarkersAndListsHaveNoValueToCompare) {
  expect_error({"count where Light == true", 18, 2, "'and', 'or', 'in' or end of query",
                "Light is a marker (presence only) and has no value to compare"});
  expect_error({"count where TextList == \"a\"", 21, 2, "'and', 'or', 'in' or end of query", "TextList is a list"});
}

TEST(QueryParserErrors, OrderingDoesNotApplyToTextBoolEnumOrColour) {
  expect_error({"count where DeviceClass < \"t\"", 24, 1, "'==' or '!='", "'<' does not apply to DeviceClass (text)"});
  expect_error({"count where Switch >= true", 19, 2, "'==' or '!='", "'>=' does not apply to Switch (a bool)"});
  expect_error({"count where CoverState > open", 23, 1, "'==' or '!='", "an enum"});
  expect_error({"count where Color <= #ffffff", 18, 2, "'==' or '!='", "rgb"});
}

TEST(QueryParserErrors, LiteralOfTheWrongType) {
  expect_error({"count where Switch == 3", 22, 1, "true or false", "Switch holds a bool: expected true or false, found '3'"});
  expect_error({"count where Dimmer == \"x\"", 22, 3, "a number", "Dimmer holds a real: expected a number, found \"x\""});
  expect_error({"count where Integer == 2.5", 23, 3, "an integer", "Integer holds an int64"});
  expect_error({"count where DeviceClass == temperature", 27, 11, "a quoted string", "DeviceClass holds text"});
  expect_error({"count where Color == red", 21, 3, "a colour #rrggbb", "Color holds an rgb colour"});
  expect_error({"count where Color == #ff80", 21, 5, "a colour #rrggbb", "found '#ff80'"});
  expect_error({"count where Timestamp > 1.5", 24, 3,
                "an integer (microseconds since 1970-01-01 UTC) or a UTC time such as 2026-11-27T10:00:00Z", "timestamp"});
  expect_error({"count where Integer == 2026-11-27", 23, 10, "an integer", "Integer holds an int64"});
  expect_error({"count where Switch ==", 21, 0, "true or false", "found end of query"});
}

TEST(QueryParserErrors, BadIso8601LiteralsPointAtTheBadField) {
  constexpr const char* kTs = "an integer (microseconds since 1970-01-01 UTC) or a UTC time such as 2026-11-27T10:00:00Z";
  constexpr const char* kDate = "an integer (days since 1970-01-01) or a date such as 2026-11-27";
  constexpr const char* kTime = "an integer (seconds since midnight) or a time such as 10:00:00";
  // "count where Timestamp > " is 24 bytes: the literal starts at 24.
  expect_error({"count where Timestamp > 2026-13-27T10:00:00Z", 29, 2, kTs, "month 13 out of range 01..12"});
  expect_error({"count where Timestamp > 2026-11-00T10:00:00Z", 32, 2, kTs, "day 00 out of range 01..31"});
  expect_error({"count where Timestamp > 2026-02-29T10:00:00Z", 24, 10, kTs, "no such date: 2026-02-29"});
  expect_error({"count where Timestamp > 2026-11-27T24:00:00Z", 35, 2, kTs, "hour 24 out of range 00..23"});
  expect_error({"count where Timestamp > 2026-11-27T10:60:00Z", 38, 2, kTs, "minute 60 out of range 00..59"});
  expect_error({"count where Timestamp > 2026-11-27T10:00:61Z", 41, 2, kTs, "second 61 out of range 00..59"});
  expect_error({"count where Timestamp > 2026-11-27T10:00:00", 43, 0, kTs, "expected the UTC offset"});
  expect_error({"count where Timestamp > 2026-11-27T10:00:00+1:00", 44, 1, kTs, "offset hour: expected 2 digits"});
  expect_error({"count where Timestamp > 2026-11-27", 34, 0, kTs, "expected 'T' and a time"});
  expect_error({"count where Timestamp > 2026-11-27 10:00:00Z", 34, 0, kTs, "expected 'T' and a time"});
  expect_error({"count where Timestamp > 2026-11-27T10:00:00.1234567Z", 43, 8, kTs, "1 to 6 digits"});
  expect_error({"count where Timestamp > 2026-11-27T10:00:00.Z", 43, 1, kTs, "1 to 6 digits"});
  expect_error({"count where Timestamp > 26-11-27T10:00:00Z", 24, 2, kTs, "year: expected 4 digits"});
  expect_error({"count where Timestamp > 2026-11-27T10:00:00Zulu", 44, 3, kTs, "unexpected 'ulu' after the timestamp"});
  expect_error({"count where Timestamp > 2026-11-27T10.00Z", 37, 1, kTs, "expected ':' after the hour"});
  // Cut short: the error stays inside the input (found by the fuzzer: "2026-" pointed past the end).
  expect_error({"count where Timestamp <= 2026-", 30, 0, kTs, "month: expected 2 digits"});
  // "count where Date == " is 20 bytes.
  expect_error({"count where Date == 2026-11-27T10:00:00Z", 30, 10, kDate, "after the date"});
  expect_error({"count where Date == 2026.11.27", 24, 1, kDate, "expected '-' after the year"});
  expect_error({"count where Date > 2026-11", 26, 0, kDate, "expected '-' after the month"});
  // "count where Time == " is 20 bytes.
  expect_error({"count where Time == 10:00:00.5", 28, 2, kTime, "whole seconds"});
  expect_error({"count where Time == 10-00", 22, 1, kTime, "expected ':' after the hour"});
  expect_error({"count where Time == 10:00Z", 25, 1, kTime, "after the time of day"});
  expect_error({"count where Time == 2026-11-27", 20, 3, kTime, "hour: expected 2 digits"});
}

TEST(QueryParserErrors, EnumLiteralMustNameAValueAndTheErrorListsThem) {
  expect_error({"count where CoverState == opn", 26, 3,
                "one of CoverState's values (unknown, open, closed, opening, closing, stopped)",
                "unknown CoverState value 'opn' — did you mean 'open'? (values: unknown, open, closed, opening, closing, "
                "stopped)"});
  expect_error({"count where FanDirection == 1", 28, 1, "one of FanDirection's values (forward, reverse)",
                "FanDirection holds an enum"});
}

TEST(QueryParserErrors, SetValueMustFitTheTarget) {
  expect_error({"set Switch = 1", 13, 1, "true or false", "Switch holds a bool"});
  expect_error({"set Dimmer to \"bright\"", 14, 8, "a number", "Dimmer holds a real"});
  expect_error({"set ClimateMode = warm", 18, 4, "one of ClimateMode's values (off, heat_cool, cool, heat, fan_only, dry, auto)",
                "unknown ClimateMode value 'warm'"});
  expect_error({"set Light = true", 4, 5, "a component with a settable value", "Light is a marker"});
  expect_error({"set TextList = \"a\"", 4, 8, "a component with a settable value", "TextList is a list"});
  expect_error({"set Switch true", 11, 4, "'=' or 'to'", "expected '=' or 'to', found keyword 'true'"});
  expect_error({"set Switch == true", 11, 2, "'=' or 'to'", "found '=='"});
}

TEST(QueryParserErrors, IntegerOverflowIsAnError) {
  expect_error({"count where Integer > 9223372036854775808", 22, 19,
                "an integer from -9223372036854775808 to 9223372036854775807", "does not fit in int64"});
  expect_error({"count where Real > -99999999999999999999", 19, 21,
                "an integer from -9223372036854775808 to 9223372036854775807", "integer out of range"});
  expect_error({"count where Real > 1e999", 19, 5, "a real within about 1e-308 .. 1e308", "real out of range"});
}

TEST(QueryParserErrors, LexicalErrors) {
  expect_error({"count where Text == \"open", 20, 5, "a closing '\"'", "unterminated string"});
  expect_error({"count where Text == \"a\\nb\"", 22, 2, "\\\" or \\\\", "unknown escape '\\n'"});
  expect_error({"count where Switch ! true", 19, 1, "a comparison ('==', '!=', '<', '<=', '>', '>=')", "'!='"});
  expect_error({"count in group Küche", 16, 2, "a word, a number, a quoted string, a comparison or a parenthesis",
                "unexpected character 'ü'"});
  expect_error({"count where Color == #", 21, 1, "a colour such as #ff8000", "'#' must start a colour"});
}

TEST(QueryParserErrors, StructuralErrors) {
  expect_error({"count where (Light or Switch", 28, 0, "'and', 'or' or ')'", "the '(' at column 13 is not closed"});
  expect_error({"count where Light)", 17, 1, "'and', 'or', 'in' or end of query", "found ')'"});
  expect_error({"count where", 11, 0, "a component, 'not', 'with', 'without' or '('", "found end of query"});
  expect_error({"count where Light and", 21, 0, "a component, 'not', 'with', 'without' or '('", "found end of query"});
  expect_error({"count where Light Switch", 18, 6, "'and', 'or', 'in' or end of query", "found 'Switch'"});
  expect_error({"count in kitchen", 9, 7, "'group', 'device' or 'entity'", "found 'kitchen'"});
  expect_error({"count in group", 14, 0, "a group name", "found end of query"});
  expect_error({"count in group where Light", 15, 5, "a group name", "quote it to use it as a name"});
  expect_error({"count in device \"\"", 16, 2, "a device name", "empty string"});
  expect_error({"count in entity kitchen where Light", 24, 5, "'in' or end of query", "found keyword 'where'"});
  expect_error({"count where with Switch == true", 24, 2, "'and', 'or', 'in' or end of query",
                "'with Switch' tests presence only"});
  expect_error({"count where Light without Switch", 18, 7, "'and', 'or', 'in' or end of query",
                "found keyword 'without'"});
}

TEST(QueryParserErrors, TooLongQueriesAreRefused) {
  std::string text = "count where Light";
  text.append(kMaxQueryLength, ' ');
  const ParseError e = failure(text);
  EXPECT_EQ(e.position, kMaxQueryLength);
  EXPECT_EQ(e.length, text.size() - kMaxQueryLength);
  EXPECT_EQ(e.expected, "at most 4096 bytes");
  // Exactly at the limit is fine.
  text.resize(kMaxQueryLength);
  EXPECT_TRUE(parse_query(text));
}

TEST(QueryParserErrors, QueriesWhoseCanonicalFormIsTooLongAreRefused) {
  // `Dimmer>1` prints as `Dimmer > 1.0`: a query that fits but whose canonical text would not must
  // fail, or it could not be re-parsed from its canonical form.
  std::string text = "count where Dimmer>1";
  while (text.size() + 13 <= kMaxQueryLength) text += " or Dimmer>1";
  ASSERT_LE(text.size(), kMaxQueryLength);
  const ParseError e = failure(text);
  EXPECT_EQ(e.position, 0U);
  EXPECT_EQ(e.expected, "a shorter query");
  EXPECT_NE(e.message.find("canonical form"), std::string::npos);
}

TEST(QueryParserErrors, NestingDeeperThanTheLimitIsRefusedWithoutRecursingFurther) {
  const auto nested = [](std::size_t depth, std::string_view open, std::string_view close) {
    std::string s = "count where ";
    for (std::size_t i = 0; i < depth; ++i) s += open;
    s += "Light";
    for (std::size_t i = 0; i < depth; ++i) s += close;
    return s;
  };
  EXPECT_TRUE(parse_query(nested(kMaxQueryDepth, "(", ")")));
  EXPECT_TRUE(parse_query(nested(kMaxQueryDepth, "not ", "")));
  const ParseError parens = failure(nested(kMaxQueryDepth + 1, "(", ")"));
  EXPECT_EQ(parens.position, 12 + kMaxQueryDepth);
  EXPECT_EQ(parens.expected, "at most 32 nested '(' and 'not'");
  const ParseError nots = failure(nested(kMaxQueryDepth + 1, "not ", ""));
  EXPECT_EQ(nots.position, 12 + 4 * kMaxQueryDepth);
  // Far past the limit (a hostile input that would overflow a naive recursive parser).
  EXPECT_FALSE(parse_query(nested(2000, "(", ")")));
}

TEST(QueryParserErrors, EveryErrorPositionIsInsideTheInput) {
  for (const char* text : {"", "count where", "count where (", "set Switch =", "avg", "count \"", "x"}) {
    const ParseError e = failure(text);
    EXPECT_LE(e.position + e.length, std::string_view(text).size()) << text;
    EXPECT_FALSE(e.message.empty()) << text;
    EXPECT_FALSE(e.expected.empty()) << text;
  }
}

// ---- Rendering ----------------------------------------------------------------------------------

TEST(QueryParserRendering, CaretUnderTheOffendingToken) {
  const auto r = parse_query("count Switch whre Switch == true");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().operation, "parse_query");
  EXPECT_EQ(r.error().message,
            "count Switch whre Switch == true\n"
            "             ^^^^ expected 'where', 'in' or end of query, found 'whre'");
}

TEST(QueryParserRendering, CaretAtTheEndForMissingInput) {
  const std::string text = "count where Light and";
  EXPECT_EQ(render_parse_error(text, failure(text)),
            "count where Light and\n"
            "                     ^ expected a component, 'not', 'with', 'without' or '(', found end of query");
}

TEST(QueryParserRendering, ColumnsCountCodePointsAndControlCharactersBecomeSpaces) {
  const std::string text = "count\twhere Text == \"Küche\" and Lihgt";
  const std::string rendered = render_parse_error(text, failure(text));
  EXPECT_EQ(rendered.substr(0, rendered.find('\n')), "count where Text == \"Küche\" and Lihgt");
  // "Lihgt" starts at byte 33 but column 32 (ü is two bytes).
  EXPECT_EQ(rendered.substr(rendered.find('\n') + 1, 38), std::string(32, ' ') + "^^^^^ ");
}

TEST(QueryParserRendering, LongQueriesShowAWindowAroundTheError) {
  std::string text = "count where Light";
  for (int i = 0; i < 40; ++i) text += " and Light";
  text += " and Frobnicator";
  const std::string rendered = render_parse_error(text, failure(text));
  const std::string first_line = rendered.substr(0, rendered.find('\n'));
  EXPECT_EQ(first_line.substr(0, 3), "...");
  EXPECT_LE(first_line.size(), 110U);
  const std::size_t caret = rendered.find('^') - rendered.find('\n') - 1;
  EXPECT_EQ(first_line.substr(caret, 11), "Frobnicator");
}

// ---- Printing and round trips -------------------------------------------------------------------

TEST(QueryPrinter, ActionAndOperatorNames) {
  EXPECT_EQ(to_string(Action::kAvg), "avg");
  EXPECT_EQ(to_string(Action::kSet), "set");
  EXPECT_EQ(to_string(CompareOp::kEq), "==");
  EXPECT_EQ(to_string(CompareOp::kGe), ">=");
}

TEST(QueryPrinter, EveryExampleRoundTrips) {
  for (const char* text : kExamples) {
    const Query q = parsed(text);
    const std::string canonical = to_string(q);
    EXPECT_EQ(parsed(canonical), q) << text << "\n -> " << canonical;
    EXPECT_EQ(to_string(parsed(canonical)), canonical);
  }
}

TEST(QueryPrinter, CanonicalFormOfTheExamples) {
  EXPECT_EQ(to_string(parsed(kExamples[5])),
            "max Real where Sensor and (DeviceClass == \"temperature\" or DeviceClass == \"humidity\")");
  EXPECT_EQ(to_string(parsed(kExamples[7])), "set Switch = true where Light in group kitchen in entity *_ceiling");
  EXPECT_EQ(to_string(parsed(kExamples[8])), "count where CoverState == open");
}

TEST(QueryPrinter, DifferentSpellingsOfOneQueryPrintTheSame) {
  const std::vector<std::vector<const char*>> groups = {
      {"count Switch where Switch == true", "COUNT switch WHERE switch=true", "  count   Switch where (Switch==TRUE) ",
       "count switch where ((switch = true))"},
      {"set Dimmer = 0.5 in group kitchen", "set dimmer to 5E-1 in group \"kitchen\"", "SET Dimmer TO 0.50 IN GROUP kitchen",
       "set Dimmer = 5e-1 in group kitchen"},
      {"count where Light and not Switch", "count where with Light and without Switch",
       "count where (Light) and (not Switch)"},
      {"count where Light and Switch and Sensor", "count where (Light and Switch) and Sensor",
       "count where Light and (Switch and Sensor)"},
      {"count where CoverState == open", "count where coverstate == OPEN", "count where CoverState == \"Open\""},
      {"count where Color != #ff8000", "count where color != #FF8000", "count where Color != \"#Ff8000\""},
      {"avg Dimmer where Dimmer > 1.0", "avg Dimmer where Dimmer > 1", "avg Dimmer where Dimmer > 1e0",
       "avg Dimmer where Dimmer>100e-2"},
  };
  for (const auto& group : groups) {
    std::string first;
    for (const char* text : group) {
      auto r = parse_query(text);
      if (!r) {
        ADD_FAILURE() << text << "\n" << r.error().message;
        continue;
      }
      const std::string canonical = to_string(*r);
      if (first.empty()) first = canonical;
      EXPECT_EQ(canonical, first) << text;
    }
  }
}

TEST(QueryPrinter, NamesThatNeedQuotesAreQuoted) {
  EXPECT_EQ(to_string(parsed(R"(count in group "living room" in device "in" in entity "a\"b\\c" in group 42)")),
            R"(count in group "living room" in device "in" in entity "a\"b\\c" in group 42)");
  EXPECT_EQ(to_string(parsed(R"(count in group "kitchen")")), "count in group kitchen");
}

TEST(QueryPrinter, RealsKeepAPointAndPrintShortest) {
  EXPECT_EQ(to_string(parsed("count where Real == 2")), "count where Real == 2.0");
  EXPECT_EQ(to_string(parsed("count where Real == 0.1")), "count where Real == 0.1");
  EXPECT_EQ(to_string(parsed("count where Real == 1e300")), "count where Real == 1e+300");
  EXPECT_EQ(to_string(parsed("count where Real == -0.0")), "count where Real == -0.0");
  const Query q = parsed("count where Real == 1e300");
  EXPECT_EQ(parsed(to_string(q)), q);
}

TEST(QueryPrinter, TimestampsDatesAndTimesPrintAsIso8601) {
  EXPECT_EQ(to_string(parsed("count where Timestamp >= 1700000000000000")),
            "count where Timestamp >= 2023-11-14T22:13:20Z");
  EXPECT_EQ(to_string(parsed("count where Timestamp > 2026-11-27T11:30:00.250+01:30")),
            "count where Timestamp > 2026-11-27T10:00:00.25Z");
  EXPECT_EQ(to_string(parsed("count where Timestamp > -1")), "count where Timestamp > 1969-12-31T23:59:59.999999Z");
  EXPECT_EQ(to_string(parsed("count where Date == 20")), "count where Date == 1970-01-21");
  EXPECT_EQ(to_string(parsed("count where Time < 86399")), "count where Time < 23:59:59");
  // Outside what ISO 8601 here can spell (years 0000-9999, a day's seconds): integers.
  EXPECT_EQ(to_string(parsed("count where Timestamp < -9223372036854775808")),
            "count where Timestamp < -9223372036854775808");
  EXPECT_EQ(to_string(parsed("count where Date > 2932897")), "count where Date > 2932897");
  EXPECT_EQ(to_string(parsed("count where Time > 86400")), "count where Time > 86400");
  EXPECT_EQ(to_string(parsed("count where Time > -1")), "count where Time > -1");
  EXPECT_EQ(to_string(parsed("count where Integer > 20")), "count where Integer > 20");
  for (const char* text : {"count where Timestamp > 9999-12-31T23:59:59.999999Z", "count where Timestamp > 0000-01-01T00:00:00Z",
                           "count where Date == 9999-12-31", "count where Date == 0000-01-01"}) {
    EXPECT_EQ(to_string(parsed(text)), text);
  }
}

TEST(QueryCanonical, OperandsOfAndAndOrAndScopesSortAndRepeatsGo) {
  const auto canon = [](std::string_view text) { return to_string(canonical(parsed(text))); };
  EXPECT_EQ(canon("count where Switch and Light"), "count where Light and Switch");
  EXPECT_EQ(canon("count where Light and Switch"), "count where Light and Switch");
  EXPECT_EQ(canon("count where Switch or Light"), "count where Light or Switch");
  EXPECT_EQ(canon("count where Switch and Light and Switch"), "count where Light and Switch");
  EXPECT_EQ(canon("count where Light and Light"), "count where Light");
  EXPECT_EQ(canon("count where Dimmer > 0.5 and Light"), "count where Dimmer > 0.5 and Light");
  EXPECT_EQ(canon("count where Light and Dimmer > 0.5"), "count where Dimmer > 0.5 and Light");
  EXPECT_EQ(canon("count where (Switch or Light) and Sensor"), canon("count where Sensor and (Light or Switch)"));
  EXPECT_EQ(canon("count where not (Switch or Light)"), "count where not (Light or Switch)");
  // A collapsed repeat is flattened into its parent.
  EXPECT_EQ(canon("count where (Switch and Light or Light and Switch) and Sensor"),
            "count where Light and Sensor and Switch");
  EXPECT_EQ(canon("count in group b in device a in group a in group b"), "count in device a in group a in group b");
  // Different meanings stay different.
  EXPECT_NE(canon("count where Light and not Switch"), canon("count where Switch and not Light"));
  EXPECT_NE(canon("count where Light and Switch"), canon("count where Light or Switch"));
  EXPECT_NE(canon("count where Light and (Switch or Sensor)"), canon("count where (Light and Switch) or Sensor"));
}

TEST(QueryCanonical, IsIdempotentAndRoundTrips) {
  for (const char* text : kExamples) {
    const Query c = canonical(parsed(text));
    EXPECT_EQ(canonical(c), c) << text;
    EXPECT_EQ(canonical(parsed(to_string(c))), c) << text;
  }
}

TEST(QueryPrinter, ParenthesesOnlyWhereNeeded) {
  EXPECT_EQ(to_string(parsed("count where ((Light or Switch)) and not (Sensor or Cover) or Valve")),
            "count where (Light or Switch) and not (Sensor or Cover) or Valve");
  EXPECT_EQ(to_string(parsed("count where not (not Light)")), "count where not not Light");
}

}  // namespace
}  // namespace floe::core
