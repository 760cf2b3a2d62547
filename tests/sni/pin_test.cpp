#include "sni/pin.h"

#include <openssl/mem.h>
#include <openssl/sha.h>

#include <gtest/gtest.h>

#include "sni/certificate.h"
#include "tests/sni/test_certs.h"

namespace gatehouse::sni {
namespace {

using testing::make_cert;
using testing::TempDir;

struct ParseCase {
  std::string text;
  bool valid;
  Pin::Kind kind;
};

class ParsePin : public ::testing::TestWithParam<ParseCase> {};

TEST_P(ParsePin, Table) {
  const ParseCase& c = GetParam();
  const auto pin = parse_pin(c.text);
  ASSERT_EQ(pin.has_value(), c.valid) << "\"" << c.text << "\"";
  if (pin) {
    EXPECT_EQ(pin->kind, c.kind);
    EXPECT_EQ(pin->digest.size(), c.kind == Pin::Kind::spki_sha256 ? 32u : 20u);
  }
}

constexpr auto spki = Pin::Kind::spki_sha256;
constexpr auto sha1 = Pin::Kind::thumbprint_sha1;

INSTANTIATE_TEST_SUITE_P(
    Pin, ParsePin,
    ::testing::Values(ParseCase{"sha256/VJwSKp6ZXVdk/P6vSaM69EJ7biW17Coe6U7bahpuZV8=", true, spki},
                      ParseCase{"  sha256/VJwSKp6ZXVdk/P6vSaM69EJ7biW17Coe6U7bahpuZV8= ", true, spki},
                      ParseCase{"SHA256/VJwSKp6ZXVdk/P6vSaM69EJ7biW17Coe6U7bahpuZV8=", true, spki},
                      ParseCase{"sha256/VJwSKp6ZXVdk/P6vSaM69EJ7biW17Coe6U7bahpuZV8", false, spki},  // no padding
                      ParseCase{"sha256/AAAA", false, spki},                                         // too short
                      ParseCase{"sha256/", false, spki}, ParseCase{"sha256/not base64!!", false, spki},
                      ParseCase{"CCB34DE5336A5A9151FFAC659C0889675E820B11", true, sha1},
                      ParseCase{"ccb34de5336a5a9151ffac659c0889675e820b11", true, sha1},
                      ParseCase{"CC:B3:4D:E5:33:6A:5A:91:51:FF:AC:65:9C:08:89:67:5E:82:0B:11", true, sha1},
                      ParseCase{"cc b3 4d e5 33 6a 5a 91 51 ff ac 65 9c 08 89 67 5e 82 0b 11", true, sha1},
                      ParseCase{"\xE2\x80\x8E"
                                "cc b3 4d e5 33 6a 5a 91 51 ff ac 65 9c 08 89 67 5e 82 0b 11",
                                true, sha1},  // Windows dialog's invisible left-to-right mark
                      ParseCase{"CCB34DE5336A5A9151FFAC659C0889675E820B1", false, sha1},     // 39 digits
                      ParseCase{"CCB34DE5336A5A9151FFAC659C0889675E820B1100", false, sha1},  // 42 digits
                      ParseCase{"GCB34DE5336A5A9151FFAC659C0889675E820B11", false, sha1}, ParseCase{"", false, sha1},
                      ParseCase{"md5/abc", false, sha1}));

TEST(Pin, MatchesGeneratedCertificate) {
  TempDir dir;
  const auto files = make_cert(dir.path(), "pinned", "mbx01.contoso.com");
  const auto other = make_cert(dir.path(), "other", "mbx02.contoso.com");
  const auto cert = read_certificates(files.cert);
  const auto other_cert = read_certificates(other.cert);
  X509* leaf = cert.front().get();

  const std::string tp = thumbprint(leaf);
  std::string colons;
  for (std::size_t i = 0; i < tp.size(); i += 2) colons += (i ? ":" : "") + tp.substr(i, 2);
  for (const std::string& text : {spki_pin(leaf), tp, colons}) {
    const auto pin = parse_pin(text);
    ASSERT_TRUE(pin) << text;
    EXPECT_TRUE(pin->matches(leaf)) << text;
    EXPECT_FALSE(pin->matches(other_cert.front().get())) << text;
    EXPECT_FALSE(pin->matches(nullptr));
  }
}

TEST(Pin, SpkiPinSurvivesReissueWithSameKey) {
  // The reason to prefer SPKI pins: a renewed certificate on the same key still matches.
  TempDir dir;
  testing::RawOptions o;
  o.common_name = "mbx01.contoso.com";
  auto key = testing::raw_key(o);
  const auto first = testing::make_raw_cert(dir.path(), "first", o, key.get());
  o.valid_for = std::chrono::days(730);
  const auto second = testing::make_raw_cert(dir.path(), "second", o, key.get());
  const auto a = read_certificates(first.cert);
  const auto b = read_certificates(second.cert);
  const auto pin = parse_pin(spki_pin(a.front().get()));
  ASSERT_TRUE(pin);
  EXPECT_TRUE(pin->matches(b.front().get()));
  const auto thumb = parse_pin(thumbprint(a.front().get()));
  ASSERT_TRUE(thumb);
  EXPECT_FALSE(thumb->matches(b.front().get()));
}

}  // namespace
}  // namespace gatehouse::sni
