// Single values: durations, addresses and how they print.

#include <gtest/gtest.h>

#include "conf/config.h"

namespace gatehouse::conf {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

TEST(ParseDuration, AcceptsUnitsAndCombinations) {
  const std::pair<const char*, Duration> cases[] = {
      {"500ms", milliseconds(500)}, {"30s", seconds(30)},     {"5m", minutes(5)},     {"1h", hours(1)},
      {"1h30m", minutes(90)},       {"0s", Duration(0)},      {"1m30s", seconds(90)}, {"2s500ms", milliseconds(2500)},
      {"65m", minutes(65)},         {"87600h", hours(87600)},
  };
  for (auto [text, expected] : cases) {
    auto parsed = parse_duration(text);
    ASSERT_TRUE(parsed) << text;
    EXPECT_EQ(*parsed, expected) << text;
  }
}

TEST(ParseDuration, RejectsMalformed) {
  const char* cases[] = {"",         "5",
                         "-1s",      "1x",
                         "s",        "1.5s",
                         " 1s",      "1s ",
                         "1 s",      "1S",
                         "ms",       "1d",
                         "1hh",      "+1s",
                         "1h-",      "99999999999999999999s",
                         "9999999h", "1000000000000000ms"};
  for (const char* text : cases) EXPECT_FALSE(parse_duration(text)) << '"' << text << '"';
}

TEST(ParseAddress, AcceptsHostPortAndBracketedV6) {
  const std::tuple<const char*, const char*, std::uint16_t> cases[] = {
      {"0.0.0.0:443", "0.0.0.0", 443},
      {"127.0.0.1:0", "127.0.0.1", 0},
      {"10.0.1.11:65535", "10.0.1.11", 65535},
      {"[::1]:8443", "::1", 8443},
      {"[::]:443", "::", 443},
      {"[fd00::12]:993", "fd00::12", 993},
      {"localhost:9901", "localhost", 9901},
      {"mbx01.contoso.com:443", "mbx01.contoso.com", 443},
      {"mbx01.contoso.com.:443", "mbx01.contoso.com.", 443},
  };
  for (auto [text, host, port] : cases) {
    auto parsed = parse_address(text);
    ASSERT_TRUE(parsed) << text;
    EXPECT_EQ(parsed->host, host) << text;
    EXPECT_EQ(parsed->port, port) << text;
  }
}

TEST(ParseAddress, RejectsMalformed) {
  const char* cases[] = {"",          "0.0.0.0",      "0.0.0.0:",  ":443",         "host:65536",
                         "host:-1",   "host:4a",      "host:+443", "::1:443",      "[::1]",
                         "[::1]443",  "[::1]:",       "[]:443",    "[zz::]:443",   "[127.0.0.1]:443",
                         "1.2.3:443", "999.1.1.1:80", "a..b:80",   "bad host:80",  "host:0443443",
                         "[::1:443",  "*:443",        "host:80 ",  "host:00000080"};
  for (const char* text : cases) EXPECT_FALSE(parse_address(text)) << '"' << text << '"';
}

TEST(Address, PrintsBracketsForV6) {
  EXPECT_EQ((Address{"0.0.0.0", 443}).to_string(), "0.0.0.0:443");
  EXPECT_EQ((Address{"::1", 8443}).to_string(), "[::1]:8443");
  EXPECT_EQ((Address{"mail.contoso.com", 0}).to_string(), "mail.contoso.com:0");
  for (const char* text : {"[fd00::12]:993", "127.0.0.1:0", "localhost:9901"})
    EXPECT_EQ(parse_address(text)->to_string(), text);
}

TEST(Diagnostic, PrintsFileLineKeyMessage) {
  EXPECT_EQ((Diagnostic{"gh.toml", 12, "listener \"https\".bind", "bad"}).to_string(),
            "gh.toml:12: listener \"https\".bind: bad");
  EXPECT_EQ((Diagnostic{"gh.toml", 0, "", "cannot read"}).to_string(), "gh.toml: cannot read");
}

TEST(EnumNames, MatchTheConfigSpelling) {
  EXPECT_EQ(to_string(ListenerMode::l7), "l7");
  EXPECT_EQ(to_string(ListenerMode::l4), "l4");
  EXPECT_EQ(to_string(ListenerMode::passthrough), "passthrough");
  EXPECT_EQ(to_string(BackendTls::verify), "verify");
  EXPECT_EQ(to_string(BackendTls::insecure), "insecure");
  EXPECT_EQ(to_string(BackendTls::plain), "plain");
  EXPECT_EQ(to_string(Balance::round_robin), "round_robin");
  EXPECT_EQ(to_string(Balance::least_conn), "least_conn");
  EXPECT_EQ(to_string(Balance::random_two), "random_two");
  EXPECT_EQ(to_string(Balance::maglev), "maglev");
}

}  // namespace
}  // namespace gatehouse::conf
