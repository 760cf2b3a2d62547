// `gatehouse check` on small configs written to temporary directories, with
// certificates from the project's own tooling.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sstream>

#include "sni/tooling.h"
#include "tests/sni/test_certs.h"

namespace gatehouse::sni {
namespace {

using ::testing::AllOf;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using testing::make_cert;
using ::testing::Not;
using testing::TempDir;

struct CheckRun {
  int code = -1;
  std::string out;
  std::string err;
};

class RunCheck : public ::testing::Test {
 protected:
  // A certificate block for `name` with files STEM.crt/.key in the temp dir.
  static std::string certificate(const std::string& name, const std::string& stem) {
    return "[[certificate]]\nname = \"" + name + "\"\ncert = \"" + stem + ".crt\"\nkey = \"" + stem + ".key\"\n\n";
  }
  static std::string listener(const std::string& name = "https", const std::string& mode = "l7",
                              const std::string& extra = "") {
    return "[[listener]]\nname = \"" + name + "\"\nbind = \"127.0.0.1:0\"\nmode = \"" + mode + "\"\n" + extra + "\n";
  }
  static std::string route(const std::string& hosts, const std::string& on = "https") {
    return "[[route]]\nlistener = \"" + on + "\"\nhosts = [" + hosts + "]\npool = \"owa\"\n\n";
  }
  static std::string pool(const std::string& tls = "plain") {
    return "[[server]]\nname = \"mbx01\"\naddress = \"127.0.0.1:8443\"\n\n"
           "[[pool]]\nname = \"owa\"\nservers = [\"mbx01\"]\ntls = \"" +
           tls + "\"\n";
  }

  CheckRun run(const std::string& toml, bool strict = false) {
    const auto file = dir_ / "gatehouse.toml";
    testing::write_text(file, toml);
    std::ostringstream out;
    std::ostringstream err;
    CheckRun result;
    result.code = run_check(file, strict, out, err);
    result.out = out.str();
    result.err = err.str();
    return result;
  }

  std::string config_file() const { return (dir_ / "gatehouse.toml").string(); }

  TempDir dir_;
};

TEST_F(RunCheck, AllCoveredIsZero) {
  make_cert(dir_.path(), "mail", "mail.contoso.com", {"mail.contoso.com", "autodiscover.contoso.com"});
  make_cert(dir_.path(), "wild", "*.contoso.com");
  const auto r =
      run(certificate("contoso-san", "mail") + certificate("contoso-wild", "wild") + listener() +
          route(R"("mail.contoso.com", "Autodiscover.contoso.com", "owa.contoso.com", "*.contoso.com")") + pool());
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_THAT(r.out, HasSubstr("listener https (l7, 127.0.0.1:0): default certificate contoso-san"));
  EXPECT_THAT(r.out, ContainsRegex("mail\\.contoso\\.com +contoso-san +exact"));
  EXPECT_THAT(r.out, ContainsRegex("autodiscover\\.contoso\\.com +contoso-san +exact"));
  EXPECT_THAT(r.out, ContainsRegex("owa\\.contoso\\.com +contoso-wild +wildcard"));
  EXPECT_THAT(r.out, ContainsRegex("\\*\\.contoso\\.com +contoso-wild +wildcard"));
  EXPECT_THAT(r.out, HasSubstr("check: 0 errors, 0 warnings\n"));
}

TEST_F(RunCheck, MissingIsAnErrorWithTheOneLabelHint) {
  make_cert(dir_.path(), "wild", "*.contoso.com");
  const auto r = run(certificate("contoso-wild", "wild") + listener() +
                     route(R"("owa.contoso.com", "www.eu.contoso.com", "contoso.com")") + pool());
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_THAT(r.out, ContainsRegex("www\\.eu\\.contoso\\.com +- +MISSING"));
  EXPECT_THAT(r.out, ContainsRegex("\ncontoso\\.com +- +MISSING|  contoso\\.com +- +MISSING"));
  EXPECT_THAT(r.err, AllOf(HasSubstr(config_file() + ":"), HasSubstr("route[0].hosts"),
                           HasSubstr("no certificate of listener https covers www.eu.contoso.com"),
                           HasSubstr("covers exactly one label"), HasSubstr("*.eu.contoso.com")));
  EXPECT_THAT(r.err, HasSubstr("does not cover the bare contoso.com"));
  EXPECT_THAT(r.out, HasSubstr("check: 2 errors, 0 warnings\n"));
}

TEST_F(RunCheck, InsecurePoolWarnsAndStrictMakesItTwo) {
  make_cert(dir_.path(), "mail", "mail.contoso.com");
  const std::string toml =
      certificate("contoso", "mail") + listener() + route(R"("mail.contoso.com")") + pool("insecure");
  const auto lenient = run(toml);
  EXPECT_EQ(lenient.code, 0) << lenient.out << lenient.err;
  EXPECT_THAT(lenient.out,
              AllOf(HasSubstr("warning: "), HasSubstr("insecure"), HasSubstr("check: 0 errors, 1 warning\n")));
  const auto strict = run(toml, /*strict=*/true);
  EXPECT_EQ(strict.code, 2) << strict.out << strict.err;
}

TEST_F(RunCheck, KeyMismatchNamesTheFiles) {
  make_cert(dir_.path(), "mail", "mail.contoso.com");
  make_cert(dir_.path(), "other", "other.contoso.com");
  const std::string toml = "[[certificate]]\nname = \"contoso\"\ncert = \"mail.crt\"\nkey = \"other.key\"\n\n" +
                           listener() + route(R"("mail.contoso.com")") + pool();
  const auto r = run(toml);
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_THAT(r.err, AllOf(HasSubstr(config_file() + ":1: certificate \"contoso\": "),
                           HasSubstr("other.key: private key does not match certificate"), HasSubstr("mail.crt")));
  EXPECT_THAT(r.out, HasSubstr("certificate contoso did not load"));
  EXPECT_THAT(r.out, HasSubstr("check: 2 errors"));  // the load error and the host it leaves uncovered
}

TEST_F(RunCheck, ConfigErrorsArePrinted) {
  const auto r = run("[[listener]]\nname = \"https\"\nbind = \"not an address\"\nmode = \"l7\"\nbogus = 1\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr(config_file() + ":"));
  EXPECT_THAT(r.out, ContainsRegex("check: [1-9][0-9]* errors?, "));
}

TEST_F(RunCheck, MissingConfigFile) {
  std::ostringstream out;
  std::ostringstream err;
  EXPECT_EQ(run_check(dir_ / "nope.toml", false, out, err), 1);
  EXPECT_THAT(err.str(), HasSubstr("nope.toml"));
}

TEST_F(RunCheck, ExpiredAndExpiringCertificatesWarn) {
  make_cert(dir_.path(), "old", "old.contoso.com", {}, "ec256", /*expired=*/true);
  NewCertificateOptions soon;
  soon.common_name = "soon.contoso.com";
  soon.key = "ec256";
  soon.days = 10;
  write_certificate(soon, dir_ / "soon");
  const auto r = run(certificate("old", "old") + certificate("soon", "soon") + listener() +
                     route(R"("old.contoso.com", "soon.contoso.com")") + pool());
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("certificate \"old\": "), HasSubstr("expired on"),
                           HasSubstr("certificate \"soon\": "), HasSubstr("expires on"), HasSubstr("in 9 days")));
  EXPECT_THAT(r.out, ContainsRegex("old\\.contoso\\.com +old \\(expired\\) +exact"));
  EXPECT_THAT(r.out, HasSubstr("check: 0 errors, 2 warnings\n"));
  EXPECT_EQ(run(certificate("old", "old") + certificate("soon", "soon") + listener() +
                    route(R"("old.contoso.com", "soon.contoso.com")") + pool(),
                true)
                .code,
            2);
}

TEST_F(RunCheck, Sha1AndMissingServerAuthWarn) {
  testing::RawOptions o;
  o.common_name = "legacy.contoso.com";
  o.rsa_bits = 2048;
  o.digest = EVP_sha1();
  o.eku = {NID_client_auth};
  testing::make_raw_cert(dir_.path(), "legacy", o);
  const auto r = run(certificate("legacy", "legacy") + listener() + route(R"("legacy.contoso.com")") + pool());
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("signed with sha1WithRSAEncryption"), HasSubstr("without Server Authentication")));
  EXPECT_THAT(r.out, HasSubstr("check: 0 errors, 2 warnings\n"));
}

TEST_F(RunCheck, WildcardRouteServedByExactNamesWarns) {
  make_cert(dir_.path(), "mail", "mail.contoso.com", {"mail.contoso.com", "autodiscover.contoso.com"});
  const auto r = run(certificate("contoso-san", "mail") + listener() + route(R"("*.contoso.com")") + pool());
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, AllOf(HasSubstr("warning: "),
                           HasSubstr("route host *.contoso.com is served by a non-wildcard "
                                     "certificate (contoso-san)"),
                           HasSubstr("mail.contoso.com, autodiscover.contoso.com")));
  EXPECT_THAT(r.out, ContainsRegex("\\*\\.contoso\\.com +contoso-san +exact names only"));
  // With no name below it at all, the wildcard route is simply MISSING.
  const auto missing = run(certificate("contoso-san", "mail") + listener() + route(R"("*.fabrikam.com")") + pool());
  EXPECT_EQ(missing.code, 1);
  EXPECT_THAT(missing.out, ContainsRegex("\\*\\.fabrikam\\.com +- +MISSING"));
}

TEST_F(RunCheck, CertificateNotOnTheListenerIsNamed) {
  make_cert(dir_.path(), "mail", "mail.contoso.com");
  make_cert(dir_.path(), "wild", "*.contoso.com");
  const auto r = run(certificate("contoso-san", "mail") + certificate("contoso-wild", "wild") +
                     listener("https", "l7", "certificates = [\"contoso-san\"]") +
                     route(R"("mail.contoso.com", "owa.contoso.com")") + pool());
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("certificate contoso-wild covers it but is not in the listener's certificates"));
}

TEST_F(RunCheck, RsaAndEcdsaBothShown) {
  make_cert(dir_.path(), "rsa", "mail.contoso.com", {}, "rsa2048");
  make_cert(dir_.path(), "ec", "mail.contoso.com", {}, "ec256");
  const auto r = run(certificate("mail-rsa", "rsa") + certificate("mail-ec", "ec") + listener() +
                     route(R"("mail.contoso.com")") + pool());
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("mail-ec (ECDSA), mail-rsa (RSA)"));
}

TEST_F(RunCheck, L4CheckedPassthroughNoted) {
  make_cert(dir_.path(), "imap", "imap.contoso.com");
  const auto r = run(certificate("imap", "imap") + listener("imaps", "l4") + route(R"("imap.contoso.com")", "imaps") +
                     listener("pass", "passthrough", "pool = \"owa\"") + pool());
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("listener imaps (l4, 127.0.0.1:0)"));
  EXPECT_THAT(r.out, ContainsRegex("imap\\.contoso\\.com +imap +exact"));
  EXPECT_THAT(r.out, HasSubstr("listener pass (passthrough, 127.0.0.1:0): TLS passes through"));
}

TEST_F(RunCheck, MailListenersSayHowTheyRelay) {
  make_cert(dir_.path(), "mail", "mail.contoso.com");
  const auto r = run(certificate("mail", "mail") + listener("submission", "l4", "starttls = \"smtp\"\npool = \"owa\"") +
                     listener("smtp", "tcp", "pool = \"owa\"") + pool());
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("listener submission (l4, STARTTLS smtp, 127.0.0.1:0): default certificate mail"));
  EXPECT_THAT(r.out, HasSubstr("listener smtp (tcp, 127.0.0.1:0): plain TCP relay, no certificate here"));
  // The SMTP listener's pool sends mail unverified (tls = "plain"): a warning.
  EXPECT_THAT(r.out + r.err, HasSubstr("whose servers are not verified"));
}

TEST_F(RunCheck, StrictSniListener) {
  make_cert(dir_.path(), "mail", "mail.contoso.com");
  const auto r = run(certificate("contoso", "mail") + listener("https", "l7", "strict_sni = true") +
                     route(R"("mail.contoso.com", "owa.contoso.com")") + pool());
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("strict SNI"));
  EXPECT_THAT(r.err, HasSubstr("the handshake is refused (strict_sni)"));
  EXPECT_THAT(r.err, Not(HasSubstr("default certificate")));
}

}  // namespace
}  // namespace gatehouse::sni
