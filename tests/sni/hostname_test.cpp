#include "sni/hostname.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>

namespace gatehouse::sni {
namespace {

const std::string label63(63, 'a');
const std::string label64(64, 'a');
// 4 labels of 63 + 3 dots = 255; trimmed to exactly 253 and 254.
std::string name_of_length(std::size_t length) {
  std::string name;
  while (name.size() < length) {
    if (!name.empty()) name += '.';
    name += std::string(std::min<std::size_t>(63, length - name.size()), 'a');
  }
  if (name.back() == '.') name.back() = 'a';
  return name;
}

struct HostCase {
  std::string input;
  std::optional<std::string> expected;
};

class NormalizeHost : public ::testing::TestWithParam<HostCase> {};

TEST_P(NormalizeHost, Table) {
  const HostCase& c = GetParam();
  EXPECT_EQ(normalize_host(c.input), c.expected) << "input: \"" << c.input << "\"";
}

INSTANTIATE_TEST_SUITE_P(
    Hostname, NormalizeHost,
    ::testing::Values(
        HostCase{"mail.contoso.com", "mail.contoso.com"}, HostCase{"MAIL.Contoso.COM", "mail.contoso.com"},
        HostCase{"mail.contoso.com.", "mail.contoso.com"},
        HostCase{"mail.contoso.com..", std::nullopt},  // only one trailing dot is ignored
        HostCase{"localhost", "localhost"}, HostCase{"xn--mnchen-3ya.de", "xn--mnchen-3ya.de"},  // IDN as punycode
        HostCase{"_dmarc.contoso.com", "_dmarc.contoso.com"}, HostCase{"mbx-01.contoso.com", "mbx-01.contoso.com"},
        HostCase{"10.0.0.1", "10.0.0.1"}, HostCase{"", std::nullopt}, HostCase{".", std::nullopt},
        HostCase{".contoso.com", std::nullopt}, HostCase{"mail..contoso.com", std::nullopt},
        HostCase{"*.contoso.com", std::nullopt},  // patterns go through normalize_pattern
        HostCase{"mail*.contoso.com", std::nullopt}, HostCase{"mail contoso.com", std::nullopt},
        HostCase{"mail.contoso.com:443", std::nullopt},
        HostCase{"m\xc3\xbcnchen.de", std::nullopt},  // IDN must arrive as punycode
        HostCase{"mail/contoso.com", std::nullopt}, HostCase{std::string("mail\0x.com", 10), std::nullopt},
        HostCase{label63 + ".com", label63 + ".com"}, HostCase{label64 + ".com", std::nullopt},
        HostCase{name_of_length(253), name_of_length(253)}, HostCase{name_of_length(253) + ".", name_of_length(253)},
        HostCase{name_of_length(254), std::nullopt}));

struct PatternCase {
  std::string input;
  std::string text;  // expected normalised form when error == none
  PatternError error;
};

class NormalizePattern : public ::testing::TestWithParam<PatternCase> {};

TEST_P(NormalizePattern, Table) {
  const PatternCase& c = GetParam();
  const Pattern p = normalize_pattern(c.input);
  EXPECT_EQ(p.error, c.error) << "input: \"" << c.input << "\" got: " << describe(p.error);
  if (c.error == PatternError::none) {
    EXPECT_EQ(p.text, c.text);
  }
}

INSTANTIATE_TEST_SUITE_P(Hostname, NormalizePattern,
                         ::testing::Values(PatternCase{"mail.contoso.com", "mail.contoso.com", PatternError::none},
                                           PatternCase{"Mail.Contoso.com.", "mail.contoso.com", PatternError::none},
                                           PatternCase{"*.contoso.com", "*.contoso.com", PatternError::none},
                                           PatternCase{"*.CONTOSO.com.", "*.contoso.com", PatternError::none},
                                           PatternCase{"*.eu.contoso.com", "*.eu.contoso.com", PatternError::none},
                                           PatternCase{"*.xn--mnchen-3ya.de", "*.xn--mnchen-3ya.de",
                                                       PatternError::none},
                                           PatternCase{"*.com", "", PatternError::wildcard_tld},
                                           PatternCase{"*.com.", "", PatternError::wildcard_tld},
                                           PatternCase{"*", "", PatternError::wildcard_tld},
                                           PatternCase{"m*.contoso.com", "", PatternError::wildcard_partial},
                                           PatternCase{"*mail.contoso.com", "", PatternError::wildcard_partial},
                                           PatternCase{"ma*il.contoso.com", "", PatternError::wildcard_partial},
                                           PatternCase{"**.contoso.com", "", PatternError::wildcard_partial},
                                           PatternCase{"mail.*.contoso.com", "", PatternError::wildcard_not_leftmost},
                                           PatternCase{"*.*.contoso.com", "", PatternError::wildcard_not_leftmost},
                                           PatternCase{"mail.contoso.*", "", PatternError::wildcard_not_leftmost},
                                           PatternCase{"*.contoso..com", "", PatternError::bad_name},
                                           PatternCase{"*.con toso.com", "", PatternError::bad_name},
                                           PatternCase{"", "", PatternError::bad_name},
                                           PatternCase{"mail!.contoso.com", "", PatternError::bad_name},
                                           PatternCase{"*." + label64 + ".com", "", PatternError::bad_name}));

TEST(Hostname, DescribeNamesEveryError) {
  for (auto e : {PatternError::bad_name, PatternError::wildcard_not_leftmost, PatternError::wildcard_partial,
                 PatternError::wildcard_tld}) {
    EXPECT_FALSE(describe(e).empty());
  }
  EXPECT_NE(describe(PatternError::wildcard_tld).find("*.com"), std::string_view::npos);
}

struct MatchCase {
  std::string pattern;
  std::string host;
  bool matches;
};

class HostMatches : public ::testing::TestWithParam<MatchCase> {};

TEST_P(HostMatches, Table) {
  const MatchCase& c = GetParam();
  EXPECT_EQ(host_matches(c.pattern, c.host), c.matches) << c.pattern << " vs " << c.host;
}

INSTANTIATE_TEST_SUITE_P(Hostname, HostMatches,
                         ::testing::Values(MatchCase{"mail.contoso.com", "mail.contoso.com", true},
                                           MatchCase{"mail.contoso.com", "owa.contoso.com", false},
                                           MatchCase{"mail.contoso.com", "mail.contoso.com.au", false},
                                           MatchCase{"*.contoso.com", "mail.contoso.com", true},
                                           MatchCase{"*.contoso.com", "autodiscover.contoso.com", true},
                                           MatchCase{"*.contoso.com", "contoso.com", false},         // apex
                                           MatchCase{"*.contoso.com", "www.eu.contoso.com", false},  // two levels
                                           MatchCase{"*.contoso.com", "mailcontoso.com", false},
                                           MatchCase{"*.contoso.com", "mail.fabrikam.com", false},
                                           MatchCase{"*.contoso.com", "mail.notcontoso.com", false},
                                           MatchCase{"*.eu.contoso.com", "www.eu.contoso.com", true},
                                           MatchCase{"*.eu.contoso.com", "eu.contoso.com", false},
                                           MatchCase{"*.eu.contoso.com", "mail.contoso.com", false}));

struct ParentCase {
  std::string host;
  std::string parent;
};

class WildcardParent : public ::testing::TestWithParam<ParentCase> {};

TEST_P(WildcardParent, Table) { EXPECT_EQ(wildcard_parent(GetParam().host), GetParam().parent); }

INSTANTIATE_TEST_SUITE_P(Hostname, WildcardParent,
                         ::testing::Values(ParentCase{"mail.contoso.com", "contoso.com"},
                                           ParentCase{"www.eu.contoso.com", "eu.contoso.com"},
                                           ParentCase{"contoso.com", ""},  // "*.com" is never valid
                                           ParentCase{"localhost", ""}, ParentCase{"", ""}));

TEST(Hostname, IsWildcard) {
  EXPECT_TRUE(is_wildcard("*.contoso.com"));
  EXPECT_FALSE(is_wildcard("mail.contoso.com"));
  EXPECT_FALSE(is_wildcard("*"));
}

}  // namespace
}  // namespace gatehouse::sni
