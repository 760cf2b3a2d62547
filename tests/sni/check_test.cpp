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

  CheckRun run(const std::string& toml, bool strict = false, bool exchange = false) {
    const auto file = dir_ / "gatehouse.toml";
    testing::write_text(file, toml);
    std::ostringstream out;
    std::ostringstream err;
    CheckRun result;
    result.code = run_check(file, {.strict = strict, .exchange = exchange}, out, err);
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
  EXPECT_EQ(run_check(dir_ / "nope.toml", {}, out, err), 1);
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

// --- check --exchange --------------------------------------------------------

// Line of the line that ends with "# @marker" (1-based), as the warnings name it.
int marker_line(const std::string& text, const std::string& marker) {
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n)
    if (line.ends_with("# @" + marker)) return n;
  ADD_FAILURE() << "no marker " << marker << " in\n" << text;
  return 0;
}

// The warning lines of a run.
std::vector<std::string> warnings(const CheckRun& run) {
  std::vector<std::string> found;
  std::istringstream in(run.out);
  for (std::string line; std::getline(in, line);)
    if (line.starts_with("warning: ")) found.push_back(line);
  return found;
}

class ExchangeCheck : public RunCheck {
 protected:
  void SetUp() override {
    make_cert(dir_.path(), "mail", "mail.contoso.com", {"mail.contoso.com", "autodiscover.contoso.com"});
  }
  static std::string xlistener(const std::string& extra = "alpn = [\"h2\", \"http/1.1\"]\n") {
    return listener("https", "l7", extra);
  }
  // A route on mail.contoso.com; `marker` ("# @m") ends the paths line.
  static std::string xroute(const std::string& paths, const std::string& pool, const std::string& extra = "",
                            const std::string& marker = "") {
    return "[[route]]\nlistener = \"https\"\nhosts = [\"mail.contoso.com\"]\npaths = [" + paths + "] " + marker +
           "\npool = \"" + pool + "\"\n" + extra + "\n";
  }
  static std::string autodiscover_route(const std::string& marker = "") {
    return "[[route]]\nlistener = \"https\"\nhosts = [\"autodiscover.contoso.com\"] " + marker +
           "\npaths = [\"/Autodiscover\"]\npool = \"autodiscover\"\n\n";
  }
  static std::string xpool(const std::string& name, const std::string& health_path, const std::string& marker = "") {
    return "[[pool]]\nname = \"" + name + "\"\nservers = [\"mbx01\"]\ntls = \"plain\"\nhealth = { kind = \"http\", " +
           "path = \"" + health_path + "\" } " + marker + "\n\n";
  }
  static std::string server() { return "[[server]]\nname = \"mbx01\"\naddress = \"127.0.0.1:8443\"\n\n"; }
  // What Exchange wants: alpn written, /ecp kept to a range, long polls at
  // 65m, Autodiscover on the certificate, every pool probing its vdir.
  static std::string good_routes() {
    return xroute("\"/owa\"", "owa") + xroute("\"/ecp\", \"/powershell\"", "owa", "allow = [\"10.0.0.0/8\"]\n") +
           xroute("\"/mapi\", \"/Microsoft-Server-ActiveSync\"", "mapi", "idle_timeout = \"65m\"\n") +
           autodiscover_route();
  }
  static std::string good_pools() {
    return server() + xpool("owa", "/owa/healthcheck.htm") + xpool("mapi", "/mapi/healthcheck.htm") +
           xpool("autodiscover", "/Autodiscover/healthcheck.htm");
  }
  static std::string good() { return certificate("contoso", "mail") + xlistener() + good_routes() + good_pools(); }

  // Exactly one warning with --exchange, at `marker`'s line, with `key` and
  // every one of `words`; --strict makes it exit 2; without --exchange the
  // report has no warning.
  void expect_one(const std::string& toml, const std::string& marker, const std::string& key,
                  const std::vector<std::string>& words, int code = 0) {
    const auto r = run(toml, false, true);
    EXPECT_EQ(r.code, code) << r.out << r.err;
    const auto found = warnings(r);
    ASSERT_EQ(found.size(), 1u) << r.out;
    EXPECT_THAT(found[0], HasSubstr("warning: " + config_file() + ":" + std::to_string(marker_line(toml, marker)) +
                                    ": " + key + ": "));
    for (const auto& word : words) EXPECT_THAT(found[0], HasSubstr(word));
    if (code == 0) {
      EXPECT_EQ(run(toml, true, true).code, 2) << "--strict fails on the Exchange warning";
    }
    const auto plain = run(toml);
    EXPECT_EQ(plain.code, code) << plain.out << plain.err;
    EXPECT_THAT(plain.out, HasSubstr("check: " + plural(code, "error") + ", 0 warnings\n"));
  }
  static std::string plural(int n, const std::string& noun) {
    return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
  }
};

TEST_F(ExchangeCheck, GoodConfigIsSilent) {
  const auto r = run(good(), true, true);
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("check: 0 errors, 0 warnings\n"));
}

TEST_F(ExchangeCheck, LongPollsUnderFifteenMinutes) {
  // The listener's 5m default.
  std::string toml = certificate("contoso", "mail") + xlistener() + good_routes() +
                     xroute("\"/rpc\"", "mapi", "", "# @paths") + good_pools();
  expect_one(toml, "paths", "route[4].paths",
             {"route carries /rpc with an idle_timeout of 5m (listener https's): ActiveSync Direct Push and "
              "RPC/MAPI over HTTP hold requests open for up to an hour",
              "set idle_timeout = \"65m\" on the route"});
  // A route's own timeout that is too short is the key to change.
  toml = certificate("contoso", "mail") + xlistener() + good_routes() +
         xroute("\"/Microsoft-Server-ActiveSync/Ping\"", "mapi", "idle_timeout = \"10m\" # @timeout\n") + good_pools();
  expect_one(toml, "timeout", "route[4].idle_timeout",
             {"route carries /Microsoft-Server-ActiveSync with an idle_timeout of 10m: "});
}

TEST_F(ExchangeCheck, LongPollsThroughASlashRoute) {
  // "/" on a host without a route of its own for /rpc carries RPC over HTTP.
  const std::string toml = certificate("contoso", "mail") + xlistener() + good_routes() +
                           "[[route]] # @route\nlistener = \"https\"\nhosts = [\"mail.contoso.com\"]\n"
                           "pool = \"owa\"\n\n" +
                           good_pools();
  // No paths key: the warning names the route's table.
  expect_one(toml, "route", "route[4]",
             {"route (paths = [\"/\"]) carries /rpc with an idle_timeout of 5m",
              "or give these directories routes of their own with it"});
}

TEST_F(ExchangeCheck, AdminCenterOpenToEveryAddress) {
  std::string toml =
      certificate("contoso", "mail") + xlistener() + xroute("\"/owa\", \"/ecp\"", "owa", "", "# @paths") + good_pools();
  expect_one(toml, "paths", "route[0].paths",
             {"route lets every client address reach /ecp (the Exchange admin center): add allow = [\"internal "
              "ranges\"] to the route"});
  // "/" without a guarded route for /ecp and /powershell reaches both...
  const std::string slash =
      "[[route]] # @slash\nlistener = \"https\"\nhosts = [\"mail.contoso.com\"]\npool = \"owa\"\n"
      "idle_timeout = \"65m\"\n\n";
  toml = certificate("contoso", "mail") + xlistener() + slash + good_pools();
  expect_one(toml, "slash", "route[0]",
             {"route (paths = [\"/\"]) lets every client address reach /ecp (the Exchange admin center), /powershell "
              "(remote PowerShell): "});
  // ...and is fine beside one.
  const auto guarded = run(good() + slash, false, true);
  EXPECT_THAT(guarded.out, HasSubstr("check: 0 errors, 0 warnings\n"));
}

TEST_F(ExchangeCheck, AutodiscoverNotOnTheCertificate) {
  make_cert(dir_.path(), "mail", "mail.contoso.com", {"mail.contoso.com"});
  const std::string toml = certificate("contoso", "mail") + xlistener() + xroute("\"/owa\"", "owa") +
                           autodiscover_route("# @hosts") + good_pools();
  // Uncovered, the host is an error anyway; --exchange says what Exchange needs.
  expect_one(toml, "hosts", "route[1].hosts",
             {"Outlook and mobile clients look up autodiscover.contoso.com for the mail domain contoso.com, but no "
              "certificate of listener https covers it",
              "add autodiscover.contoso.com as a SAN to certificate \"contoso\"", "HTTP redirect method",
              "_autodiscover._tcp.contoso.com SRV record"},
             1);
}

TEST_F(ExchangeCheck, HealthProbeOnSlash) {
  const std::string toml = certificate("contoso", "mail") + xlistener() + good_routes() + server() +
                           xpool("owa", "/", "# @health") + xpool("mapi", "/mapi/healthcheck.htm") +
                           xpool("autodiscover", "/Autodiscover/healthcheck.htm");
  expect_one(toml, "health", "pool \"owa\".health.path",
             {"health probes \"/\", which IIS answers while an Exchange protocol's application pool is down: probe "
              "/owa/healthcheck.htm; the pool serves /owa, /ecp, /powershell: a pool per protocol"});
}

TEST_F(ExchangeCheck, H2BesideWindowsLogins) {
  const std::string toml = certificate("contoso", "mail") +
                           "[[listener]] # @listener\nname = \"https\"\nbind = \"127.0.0.1:0\"\nmode = \"l7\"\n\n" +
                           good_routes() + good_pools();
  expect_one(toml, "listener", "listener \"https\"",
             {"offers h2 (the l7 default) and its routes (/powershell, /mapi, /microsoft-server-activesync, "
              "/autodiscover) carry "
              "Windows logins: a request with NTLM or Negotiate over h2 is answered HTTP_1_1_REQUIRED",
              "set alpn = [\"http/1.1\"] if old clients mishandle that"});
}

}  // namespace
}  // namespace gatehouse::sni
