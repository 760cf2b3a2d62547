#include "sni/index.h"

#include <gtest/gtest.h>

#include <map>

#include "tests/sni/test_certs.h"

namespace gatehouse::sni {
namespace {

using testing::make_cert;
using testing::make_raw_cert;
using testing::RawOptions;
using testing::TempDir;

// One set of certificates for the whole suite: key generation is the slow part.
class SniIndexTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const auto& d = dir_->path();
    auto add = [](const std::string& name, const testing::CertFiles& files) {
      auto cert = testing::load(name, files);
      certs_->push_back(cert);
    };
    certs_ = new std::vector<std::shared_ptr<const LoadedCertificate>>();
    // Listener order matters for ties; "san" is first and so the default.
    add("san", make_cert(d, "san", "mail.contoso.com", {"mail.contoso.com", "autodiscover.contoso.com"}, "rsa2048"));
    add("wild", make_cert(d, "wild", "*.contoso.com", {"*.contoso.com"}, "ec256"));
    add("both-rsa", make_cert(d, "both-rsa", "both.fabrikam.com", {}, "rsa2048"));
    add("both-ec", make_cert(d, "both-ec", "both.fabrikam.com", {}, "ec256"));
    add("old-exact", make_cert(d, "old-exact", "old.contoso.com", {}, "ec256", /*expired=*/true));
    add("expired-only", make_cert(d, "expired-only", "expired.fabrikam.com", {}, "ec256", /*expired=*/true));
    add("expired-rsa", make_cert(d, "expired-rsa", "renewed.fabrikam.com", {}, "rsa2048", /*expired=*/true));
    add("renewed-ec", make_cert(d, "renewed-ec", "renewed.fabrikam.com", {}, "ec256"));
    add("only-ec", make_cert(d, "only-ec", "ec.fabrikam.com", {}, "ec256"));
    add("cn-and-san", make_cert(d, "cn-and-san", "a.example.org", {"b.example.org"}, "ec256"));
    RawOptions cn_only;
    cn_only.common_name = "legacy.example.org";
    add("cn-only", make_raw_cert(d, "cn-only", cn_only));
    add("eu-wild", make_cert(d, "eu-wild", "*.eu.fabrikam.com", {}, "ec256"));
  }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
    delete dir_;
    dir_ = nullptr;
  }

  static TempDir* dir_;
  static std::vector<std::shared_ptr<const LoadedCertificate>>* certs_;
};

TempDir* SniIndexTest::dir_ = nullptr;
std::vector<std::shared_ptr<const LoadedCertificate>>* SniIndexTest::certs_ = nullptr;

struct SelectCase {
  std::string what;
  std::string server_name;
  bool ecdsa;
  bool strict;
  std::string certificate;  // "" when rejected
  MatchKind kind;
};

TEST_F(SniIndexTest, SelectTable) {
  const std::vector<SelectCase> cases = {
      {"exact SAN", "mail.contoso.com", true, false, "san", MatchKind::exact},
      {"second SAN", "autodiscover.contoso.com", true, false, "san", MatchKind::exact},
      {"exact beats wildcard even for ECDSA clients", "mail.contoso.com", true, false, "san", MatchKind::exact},
      {"uppercase", "MAIL.Contoso.COM", false, false, "san", MatchKind::exact},
      {"trailing dot", "autodiscover.contoso.com.", false, false, "san", MatchKind::exact},
      {"wildcard one level", "owa.contoso.com", true, false, "wild", MatchKind::wildcard},
      {"wildcard uppercase", "OWA.CONTOSO.COM", true, false, "wild", MatchKind::wildcard},
      {"wildcard two levels: default", "www.eu.contoso.com", true, false, "san", MatchKind::default_certificate},
      {"apex is not under the wildcard", "contoso.com", true, false, "san", MatchKind::default_certificate},
      {"no SNI", "", true, false, "san", MatchKind::default_certificate},
      {"unknown", "www.northwind.com", true, false, "san", MatchKind::default_certificate},
      {"malformed", "bad name!", true, false, "san", MatchKind::default_certificate},
      {"a '*' from a client is not a pattern", "*.contoso.com", true, false, "san", MatchKind::default_certificate},
      {"strict: unknown rejected", "www.northwind.com", true, true, "", MatchKind::rejected},
      {"strict: no SNI rejected", "", true, true, "", MatchKind::rejected},
      {"strict: known still served", "mail.contoso.com", true, true, "san", MatchKind::exact},
      {"strict: wildcard still served", "owa.contoso.com", true, true, "wild", MatchKind::wildcard},
      {"ECDSA client gets ECDSA", "both.fabrikam.com", true, false, "both-ec", MatchKind::exact},
      {"RSA-only client gets RSA", "both.fabrikam.com", false, false, "both-rsa", MatchKind::exact},
      {"RSA-only client, only ECDSA exists", "ec.fabrikam.com", false, false, "only-ec", MatchKind::exact},
      {"expired exact loses to a valid wildcard", "old.contoso.com", true, false, "wild", MatchKind::wildcard},
      {"expired used when nothing else covers", "expired.fabrikam.com", true, false, "expired-only", MatchKind::exact},
      {"expired RSA passed over even for RSA clients", "renewed.fabrikam.com", false, false, "renewed-ec",
       MatchKind::exact},
      {"CN ignored when a SAN exists", "a.example.org", true, false, "san", MatchKind::default_certificate},
      {"SAN of the CN+SAN certificate", "b.example.org", true, false, "cn-and-san", MatchKind::exact},
      {"CN used when there is no SAN", "legacy.example.org", true, false, "cn-only", MatchKind::exact},
      {"deeper wildcard", "www.eu.fabrikam.com", true, false, "eu-wild", MatchKind::wildcard},
      {"deeper wildcard's apex", "eu.fabrikam.com", true, false, "san", MatchKind::default_certificate},
  };
  const SniIndex lenient(*certs_, "", false);
  const SniIndex strict(*certs_, "", true);
  for (const auto& c : cases) {
    const SniIndex& index = c.strict ? strict : lenient;
    const Selection s = index.select(c.server_name, c.ecdsa);
    EXPECT_EQ(s.kind, c.kind) << c.what << ": got " << to_string(s.kind);
    if (c.certificate.empty()) {
      EXPECT_EQ(s.certificate, nullptr) << c.what;
    } else {
      ASSERT_NE(s.certificate, nullptr) << c.what;
      EXPECT_EQ(s.certificate->name, c.certificate) << c.what;
    }
  }
}

TEST_F(SniIndexTest, TiesGoByListenerOrder) {
  TempDir d;
  auto first = testing::load("first", make_cert(d.path(), "first", "tie.contoso.com"));
  auto second = testing::load("second", make_cert(d.path(), "second", "tie.contoso.com"));
  EXPECT_EQ(SniIndex({first, second}, "", false).select("tie.contoso.com", true).certificate->name, "first");
  EXPECT_EQ(SniIndex({second, first}, "", false).select("tie.contoso.com", true).certificate->name, "second");
}

TEST_F(SniIndexTest, NamedDefault) {
  const SniIndex index(*certs_, "wild", false);
  ASSERT_NE(index.default_certificate(), nullptr);
  EXPECT_EQ(index.default_certificate()->name, "wild");
  const Selection s = index.select("unknown.northwind.com", true);
  EXPECT_EQ(s.kind, MatchKind::default_certificate);
  EXPECT_EQ(s.certificate->name, "wild");
}

TEST_F(SniIndexTest, UnknownDefaultNameThrows) {
  EXPECT_THROW(SniIndex(*certs_, "nope", false), std::invalid_argument);
}

TEST_F(SniIndexTest, EmptyIndexRejects) {
  const SniIndex index({}, "", false);
  EXPECT_EQ(index.select("mail.contoso.com", true).kind, MatchKind::rejected);
  EXPECT_EQ(index.default_certificate(), nullptr);
}

TEST_F(SniIndexTest, CoveringHasNoDefault) {
  const SniIndex index(*certs_, "", false);
  EXPECT_EQ(index.covering("mail.contoso.com").certificate->name, "san");
  EXPECT_EQ(index.covering("www.northwind.com").kind, MatchKind::rejected);
  EXPECT_EQ(index.covering("www.northwind.com").certificate, nullptr);
  // Route patterns: only a wildcard for the same parent covers "*.parent".
  EXPECT_EQ(index.covering("*.contoso.com").certificate->name, "wild");
  EXPECT_EQ(index.covering("*.contoso.com").kind, MatchKind::wildcard);
  EXPECT_EQ(index.covering("*.fabrikam.com").certificate, nullptr);
  EXPECT_EQ(index.covering("*.eu.contoso.com").certificate, nullptr);
}

TEST_F(SniIndexTest, ExpiryIsRelativeToNow) {
  const SniIndex index(*certs_, "", false);
  // 400 days ago old-exact was valid and beats the wildcard again.
  const auto then = Clock::now() - std::chrono::days(400) + std::chrono::hours(2);
  const Selection s = index.select("old.contoso.com", true, then);
  ASSERT_NE(s.certificate, nullptr);
  EXPECT_EQ(s.certificate->name, "old-exact");
  EXPECT_EQ(s.kind, MatchKind::exact);
}

TEST_F(SniIndexTest, Covers) {
  const auto& san = *certs_->at(0);
  const auto& wild = *certs_->at(1);
  EXPECT_TRUE(covers(san, "mail.contoso.com"));
  EXPECT_FALSE(covers(san, "owa.contoso.com"));
  EXPECT_TRUE(covers(wild, "owa.contoso.com"));
  EXPECT_FALSE(covers(wild, "contoso.com"));
  EXPECT_FALSE(covers(wild, "a.b.contoso.com"));
}

TEST(MatchKind, Names) {
  EXPECT_EQ(to_string(MatchKind::exact), "exact");
  EXPECT_EQ(to_string(MatchKind::wildcard), "wildcard");
  EXPECT_EQ(to_string(MatchKind::default_certificate), "default");
  EXPECT_EQ(to_string(MatchKind::rejected), "rejected");
}

}  // namespace
}  // namespace gatehouse::sni
