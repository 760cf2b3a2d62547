// Loading whole files: every class of error with its file, line and key path,
// a config that uses every key of the schema, and the defaults conf resolves.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "conf/config.h"

namespace gatehouse::conf {
namespace {

namespace fs = std::filesystem;
using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;

const std::string pin_a = "sha256/" + std::string(43, 'A') + "=";

// Files the configs name. conf only checks they are readable; content is sni/'s.
class Files {
 public:
  Files() {
    std::random_device random;
    dir_ =
        fs::temp_directory_path() / ("gatehouse-conf-" + std::to_string(::getpid()) + "-" + std::to_string(random()));
    fs::create_directories(dir_ / "certs");
    fs::create_directories(dir_ / "adir");
    for (const char* name : {"cert.pem", "key.pem", "certs/mail.crt", "certs/mail.key", "ecdsa.crt", "ecdsa.key",
                             "clients.pem", "clients.crl", "backend-ca.pem"})
      std::ofstream(dir_ / name) << "x\n";
    std::ofstream(dir_ / "tickets.bin") << std::string(80, 'k');  // one key, as the format requires
  }
  ~Files() {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  const fs::path& dir() const { return dir_; }
  fs::path config() const { return dir_ / "gatehouse.toml"; }

 private:
  fs::path dir_;
};

const Files& files() {
  static Files instance;
  return instance;
}

std::string dump(const LoadResult& result) {
  std::string text;
  for (auto& d : result.errors) text += "  error: " + d.to_string() + "\n";
  for (auto& d : result.warnings) text += "  warning: " + d.to_string() + "\n";
  return text;
}

// The smallest valid file; error cases append to it.
const std::string base = R"([[certificate]]
name = "main"
cert = "cert.pem"
key = "key.pem"

[[server]]
name = "mbx01"
address = "10.0.1.11:443"
pin = ")" + pin_a + R"("

[[pool]]
name = "owa"
servers = ["mbx01"]

[[server]]
name = "mx01"
address = "10.0.1.25:25"

[[pool]]
name = "relay"
servers = ["mx01"]
tls = "plain"

[[listener]]
name = "https"
bind = "127.0.0.1:0"

[[route]]
listener = "https"
pool = "owa"
)";
const int base_lines = static_cast<int>(std::count(base.begin(), base.end(), '\n'));

TEST(Load, BaseConfigIsValid) {
  auto result = load_string(base, files().config());
  ASSERT_TRUE(result.ok()) << dump(result);
  EXPECT_TRUE(result.warnings.empty()) << dump(result);
}

TEST(Load, MailListenersWarnWhereTlsEndsTooSoon) {
  // An SMTP STARTTLS listener in front of unverified servers; TLS ended on
  // port 25, which hides Exchange's certificate from sending servers.
  auto result = load_string(base +
                                "[[listener]]\nname = \"submission\"\nbind = \"127.0.0.1:0\"\nmode = \"l4\"\n"
                                "starttls = \"smtp\"\npool = \"relay\"\n"
                                "[[listener]]\nname = \"smtp\"\nbind = \"127.0.0.1:25\"\nmode = \"l4\"\n"
                                "pool = \"owa\"\n"
                                "[[listener]]\nname = \"smtp-relay\"\nbind = \"127.0.0.2:25\"\nmode = \"tcp\"\n"
                                "pool = \"relay\"\n",
                            files().config());
  ASSERT_TRUE(result.ok()) << dump(result);
  ASSERT_EQ(result.warnings.size(), 2u) << dump(result);
  EXPECT_EQ(result.warnings[0].key, "listener \"submission\".pool");
  EXPECT_THAT(result.warnings[0].message, ::testing::HasSubstr("not verified (tls = \"plain\")"));
  EXPECT_EQ(result.warnings[1].key, "listener \"smtp\".bind");
  EXPECT_THAT(result.warnings[1].message, ::testing::HasSubstr("Domain Security"));
}

struct ErrorCase {
  const char* name;
  bool after_base;  // the text is appended to `base`; `line` counts from the text's first line
  std::string toml;
  const char* key;      // a substring of the key path
  const char* message;  // a substring of the message
  int line;
  std::size_t count = 1;  // how many errors in all: one mistake gives one message
};

void PrintTo(const ErrorCase& c, std::ostream* out) { *out << c.name; }

class ConfigError : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(ConfigError, IsReportedWithFileLineAndKey) {
  const ErrorCase& c = GetParam();
  std::string text = c.after_base ? base + c.toml : c.toml;
  int line = c.after_base ? base_lines + c.line : c.line;
  auto result = load_string(text, files().config());
  EXPECT_FALSE(result.config.has_value());
  bool found = std::any_of(result.errors.begin(), result.errors.end(), [&](const Diagnostic& d) {
    return d.key.find(c.key) != std::string::npos && d.message.find(c.message) != std::string::npos && d.line == line;
  });
  EXPECT_TRUE(found) << "wanted line " << line << ", key ~ " << c.key << ", message ~ " << c.message << "\ngot:\n"
                     << dump(result);
  EXPECT_EQ(result.errors.size(), c.count) << dump(result);
  for (auto& d : result.errors) {
    EXPECT_EQ(d.file, files().config().string());
    EXPECT_FALSE(d.key.empty()) << d.to_string();
  }
}

const ErrorCase error_cases[] = {
    // TOML syntax.
    {"syntax_unquoted_value", false, "[[listener]]\nname = \"a\"\nbind = 0.0.0.0:443\n", "listener.bind",
     "TOML syntax error", 3},
    {"syntax_multiline_inline_table", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nhealth = { kind = \"http\",\n  path = \"/\" }\n", "health",
     "must fit on one line", 4},
    {"syntax_duplicate_key", true, "[[pool]]\nname = \"p2\"\nname = \"p3\"\n", "pool.name", "redefine", 3},
    {"syntax_server_table_twice", true, "[server]\nworkers = 1\n[server]\n", "server", "'server'", 3},

    // Unknown keys, at every level.
    {"unknown_top_level", false, "listeners = []\n", "listeners", "did you mean \"listener\"", 1},
    {"unknown_top_level_setting", false, "workers = 4\n", "workers", "belongs in the [global] table", 1},
    {"unknown_in_global", true, "[global]\nworkres = 2\n", "global.workres", "did you mean \"workers\"", 2},
    // [server], the settings table's old name, reports under that name.
    {"unknown_in_server", true, "[server]\nworkres = 2\n", "server.workres", "did you mean \"workers\"", 2},
    {"unknown_in_certificate", true,
     "[[certificate]]\nname = \"c2\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
     "chain = \"x\"\n",
     "certificate \"c2\".chain", "known keys: \"name\", \"cert\", \"key\", \"ocsp\"", 5},
    {"unknown_in_listener", true, "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nbnid = \"x\"\n",
     "listener \"b\".bnid", "did you mean \"bind\"", 4},  // no route for "b" is only a warning
    {"unknown_in_route", true, "[[route]]\nlistener = \"https\"\npool = \"owa\"\nhost = [\"a.contoso.com\"]\n",
     "route[1].host", "did you mean \"hosts\"", 4},
    {"unknown_in_server_table", true, "[[server]]\nname = \"mbx02\"\naddress = \"10.0.0.2:443\"\nwieght = 2\n",
     "server \"mbx02\".wieght", "did you mean \"weight\"", 4},
    {"unknown_in_pool", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nbalancing = \"maglev\"\n",
     "pool \"p2\".balancing", "did you mean \"balance\"", 4},
    {"unknown_in_health", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nhealth = { kind = \"http\", intervall = \"5s\" }\n",
     "pool \"p2\".health.intervall", "did you mean \"interval\"", 4},

    // Wrong types.
    {"type_string_for_int", true, "[global]\nworkers = \"4\"\n", "global.workers",
     "expected an integer, got a string (\"4\")", 2},
    {"type_int_for_string", true, "[[listener]]\nname = \"b\"\nbind = 443\n", "listener \"b\".bind",
     "expected a string, got an integer (443)", 3},
    {"type_bool", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nstrict_sni = \"yes\"\n[[route]]\n"
     "listener = \"b\"\npool = \"owa\"\n",
     "strict_sni", "expected true or false", 4},
    {"type_array", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\ncertificates = \"main\"\n[[route]]\n"
     "listener = \"b\"\npool = \"owa\"\n",
     "listener \"b\".certificates", "expected an array of strings", 4},
    {"type_array_element", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\", 2]\n", "pool \"p2\".servers[1]",
     "expected a string, got an integer (2)", 3},
    {"type_float_for_int", true, "[[server]]\nname = \"mbx02\"\naddress = \"10.0.0.2:443\"\nweight = 1.5\n", "weight",
     "got a float", 4},
    {"type_table_not_array", false, "[listener]\nname = \"a\"\n", "listener", "write [[listener]] (double brackets)",
     1},
    {"type_health_not_table", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nhealth = \"http\"\n",
     "pool \"p2\".health", "expected a table", 4},

    // Enum values.
    {"enum_mode", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"l8\"\n[[route]]\n"
     "listener = \"b\"\npool = \"owa\"\n",
     "listener \"b\".mode", "use one of \"l7\", \"l4\", \"passthrough\", \"tcp\"", 4},
    {"enum_listener_tls", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\ntls = \"tls12\"\n[[route]]\n"
     "listener = \"b\"\npool = \"owa\"\n",
     "listener \"b\".tls", "\"modern\", \"tls13\"", 4},
    {"enum_client_certificates", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "client_certificates = \"required\"\n[[route]]\nlistener = \"b\"\npool = \"owa\"\n",
     "client_certificates", "\"none\", \"optional\", \"require\"", 4},
    {"enum_proxy_protocol", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"l4\"\n"
     "pool = \"owa\"\nproxy_protocol = \"v3\"\n",
     "proxy_protocol", "\"\", \"v1\", \"v2\"", 6},
    {"enum_affinity", true, "[[route]]\nlistener = \"https\"\npool = \"owa\"\naffinity = \"sticky\"\n", "affinity",
     "\"none\", \"source_ip\", \"cookie\"", 4},
    {"enum_balance", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nbalance = \"rr\"\n", "balance",
     "\"round_robin\", \"least_conn\", \"random_two\", \"maglev\"", 4},
    {"enum_pool_tls", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\ntls = \"verified\"\n", "pool \"p2\".tls",
     "\"verify\", \"insecure\", \"plain\"", 4},
    {"enum_health_kind", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nhealth = { kind = \"https\" }\n",
     "health.kind", "\"none\", \"tcp\", \"tls\", \"http\"", 4},
    {"enum_hash_key", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nhash_key = \"ip\"\n", "hash_key",
     "\"header:NAME\"", 4},
    {"enum_hash_key_bad_header", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nhash_key = \"header:\"\n",
     "hash_key", "not a valid hash_key", 4},

    // Durations.
    {"duration_no_unit", true, "[[route]]\nlistener = \"https\"\npool = \"owa\"\nidle_timeout = \"5\"\n",
     "route[1].idle_timeout", "is not a duration", 4},
    {"duration_negative", true, "[global]\ndrain_timeout = \"-1s\"\n", "global.drain_timeout", "is not a duration", 2},
    {"duration_bad_unit", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nhandshake_timeout = \"1x\"\n"
     "[[route]]\nlistener = \"b\"\npool = \"owa\"\n",
     "handshake_timeout", "\"500ms\"", 4},
    {"duration_overflow", true, "[global]\ndrain_timeout = \"99999999999999999999s\"\n", "drain_timeout",
     "at most ten years", 2},
    {"duration_empty", true, "[global]\ndrain_timeout = \"\"\n", "drain_timeout", "is not a duration", 2},
    {"duration_zero_interval", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\n"
     "health = { kind = \"tcp\", interval = \"0s\" }\n",
     "health.interval", "longer than zero", 4},
    {"duration_zero_connect_timeout", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nconnect_timeout = \"0s\"\n", "connect_timeout",
     "longer than zero", 4},

    // Addresses.
    {"address_missing_port", true, "[[listener]]\nname = \"b\"\nbind = \"0.0.0.0\"\n", "listener \"b\".bind",
     "the port is missing", 3},
    {"address_unbracketed_v6", true, "[[listener]]\nname = \"b\"\nbind = \"::1:443\"\n", "bind", "needs brackets", 3},
    {"address_bad_port", true, "[[listener]]\nname = \"b\"\nbind = \"0.0.0.0:70000\"\n", "bind", "port from 0 to 65535",
     3},
    {"address_admin", true, "[global]\nadmin = \"localhost:\"\n", "global.admin", "is not an address", 2},
    {"address_server_port_zero", true, "[[server]]\nname = \"mbx02\"\naddress = \"10.0.0.2:0\"\n",
     "server \"mbx02\".address", "real port", 3},

    // Duplicates.
    {"duplicate_certificate", true, "[[certificate]]\nname = \"main\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
     "certificate \"main\".name", "already defined at line 1", 2},
    {"duplicate_listener", true, "[[listener]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\n", "listener \"https\".name",
     "already defined at line 24", 2},
    {"duplicate_server", true, "[[server]]\nname = \"mbx01\"\naddress = \"10.0.1.12:443\"\n", "server \"mbx01\".name",
     "already defined at line 6", 2},
    {"duplicate_pool", true, "[[pool]]\nname = \"owa\"\nservers = [\"mbx01\"]\n", "pool \"owa\".name",
     "already defined at line 11", 2},
    {"duplicate_bind", false,
     "[[certificate]]\nname = \"c\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
     "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:443\"\nmode = \"l4\"\npool = \"p\"\n"
     "[[listener]]\nname = \"b\"\nbind = \"0.0.0.0:443\"\nmode = \"l4\"\npool = \"p\"\n"
     "[[server]]\nname = \"s\"\naddress = \"10.0.0.1:443\"\n[[pool]]\nname = \"p\"\nservers = [\"s\"]\ntls = "
     "\"plain\"\n",
     "listener \"b\".bind", "already bound by listener \"a\" (line 5)", 12},

    // Dangling references.
    {"dangling_route_listener", true, "[[route]]\nlistener = \"htps\"\npool = \"owa\"\n", "route[1].listener",
     "no [[listener]] named \"htps\"; did you mean \"https\"?", 2},
    {"dangling_route_pool", true, "[[route]]\nlistener = \"https\"\npool = \"ecp\"\n", "route[1].pool",
     "no [[pool]] named \"ecp\"; defined: \"owa\"", 3},
    {"dangling_pool_server", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\", \"mbx09\"]\n",
     "pool \"p2\".servers[1]", "no [[server]] named \"mbx09\"", 3},
    {"dangling_pool_fallback", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nfallback = \"dr\"\n",
     "pool \"p2\".fallback", "no [[pool]] named \"dr\"", 4},
    {"pool_fallback_itself", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nfallback = \"p2\"\n",
     "pool \"p2\".fallback", "cannot fall back to itself", 4},
    {"pool_fallback_cycle", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nfallback = \"p3\"\n"
     "[[pool]]\nname = \"p3\"\nservers = [\"mbx01\"]\nfallback = \"p2\"\n",
     "pool \"p2\".fallback", "the fallback chain p2 -> p3 -> p2 comes back to a pool it left", 4},
    {"dangling_listener_certificate", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "certificates = [\"main\", \"other\"]\n[[route]]\nlistener = \"b\"\npool = \"owa\"\n",
     "listener \"b\".certificates[1]", "no [[certificate]] named \"other\"", 4},
    {"dangling_default_certificate", true,
     "[[certificate]]\nname = \"second\"\ncert = \"cert.pem\"\n"
     "key = \"key.pem\"\n[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\ncertificates = [\"main\"]\n"
     "default_certificate = \"second\"\n[[route]]\nlistener = \"b\"\npool = \"owa\"\n",
     "listener \"b\".default_certificate", "not one of this listener's certificates", 9},
    {"dangling_listener_pool", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"l4\"\n"
     "pool = \"imap\"\n",
     "listener \"b\".pool", "no [[pool]] named \"imap\"", 5},

    // Unreadable files.
    {"unreadable_cert", true, "[[certificate]]\nname = \"c2\"\ncert = \"missing.crt\"\nkey = \"key.pem\"\n",
     "certificate \"c2\".cert", "No such file or directory", 3},
    {"unreadable_key", true, "[[certificate]]\nname = \"c2\"\ncert = \"cert.pem\"\nkey = \"certs/missing.key\"\n",
     "certificate \"c2\".key", "resolved against the config file's directory", 4},
    {"unreadable_pool_ca", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nca = \"/nonexistent/ca.pem\"\n",
     "pool \"p2\".ca", "cannot read \"/nonexistent/ca.pem\"", 4},
    {"unreadable_client_ca", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "client_certificates = \"require\"\nclient_ca = \"adir\"\n[[route]]\nlistener = \"b\"\npool = \"owa\"\n",
     "listener \"b\".client_ca", "is a directory", 5},
    {"unreadable_ticket_keys", true, "[global]\nticket_keys = \"tickets.missing\"\n", "global.ticket_keys",
     "cannot read", 2},
    {"unreadable_ocsp_response", true,
     "[[certificate]]\nname = \"c2\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
     "ocsp = \"missing.der\"\n",
     "certificate \"c2\".ocsp", "cannot read", 5},
    {"certificate_empty_path", true, "[[certificate]]\nname = \"c2\"\ncert = \"\"\nkey = \"key.pem\"\n",
     "certificate \"c2\".cert", "must name a PEM certificate file", 3},

    // Keys that only make sense in some modes.
    {"l7_listener_pool", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\npool = \"owa\"\n[[route]]\n"
     "listener = \"b\"\npool = \"owa\"\n",
     "listener \"b\".pool", "only for l4, passthrough and tcp", 4},
    {"l7_listener_proxy_protocol", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "proxy_protocol = \"v2\"\n[[route]]\nlistener = \"b\"\npool = \"owa\"\n",
     "proxy_protocol", "only for l4, passthrough and tcp", 4},
    {"l4_route_paths", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"l4\"\n[[route]]\n"
     "listener = \"b\"\npool = \"owa\"\npaths = [\"/owa\"]\n",
     "route[1].paths", "only applies to routes on l7", 8},
    {"passthrough_route_cookie", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "mode = \"passthrough\"\n[[route]]\nlistener = \"b\"\npool = \"relay\"\naffinity = \"cookie\"\n",
     "route[1].affinity", "use \"source_ip\"", 8},
    {"starttls_on_l7", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nstarttls = \"smtp\"\n[[route]]\nlistener = \"b\"\n"
     "pool = \"owa\"\n",
     "listener \"b\".starttls", "starttls is for l4 listeners", 4},
    {"starttls_unknown_protocol", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"l4\"\npool = \"owa\"\nstarttls = \"lmtp\"\n",
     "listener \"b\".starttls", "\"smtp\", \"imap\", \"pop3\"", 6},
    {"greeting_name_without_starttls", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"l4\"\npool = \"owa\"\n"
     "greeting_name = \"mx.contoso.com\"\n",
     "listener \"b\".greeting_name", "set starttls", 6},
    {"greeting_name_injects_a_line", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"l4\"\npool = \"owa\"\nstarttls = \"smtp\"\n"
     "greeting_name = \"mx\\r\\n250 STARTTLS\"\n",
     "listener \"b\".greeting_name", "not a host name", 7},
    {"tcp_route_hosts", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\n[[route]]\nlistener = \"b\"\n"
     "hosts = [\"a.contoso.com\"]\npool = \"relay\"\n",
     "route[1].hosts", "no SNI to route by", 7},
    {"tcp_listener_certificates", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"relay\"\ncertificates = "
     "[\"main\"]\n",
     "listener \"b\".certificates", "a tcp listener does not terminate TLS", 6},
    {"passthrough_pool_adds_tls", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\ntls = \"insecure\"\n[[listener]]\nname = \"b\"\n"
     "bind = \"127.0.0.1:0\"\nmode = \"passthrough\"\npool = \"p2\"\n",
     "pool \"p2\".tls", "set tls = \"plain\"", 4},
    {"passthrough_fallback_adds_tls", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mx01\"]\ntls = \"plain\"\nfallback = \"owa\"\n[[listener]]\nname = \"b\"\n"
     "bind = \"127.0.0.1:0\"\nmode = \"passthrough\"\npool = \"p2\"\n",
     "pool \"owa\".tls", "relays the client's own TLS", 11 - base_lines},
    {"starttls_pool_on_plain_l4", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nstarttls = true\n[[listener]]\nname = \"b\"\n"
     "bind = \"127.0.0.1:0\"\nmode = \"l4\"\npool = \"p2\"\n",
     "pool \"p2\".starttls", "for pools of l4 listeners with starttls", 4},
    {"starttls_pool_without_tls", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\ntls = \"plain\"\nstarttls = true\n", "pool \"p2\".starttls",
     "tls = \"plain\" says no TLS", 5},
    {"starttls_pool_http_probe", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nstarttls = true\nhealth = { kind = \"http\" }\n",
     "pool \"p2\".health.kind", "use kind = \"tcp\"", 5},
    {"starttls_pool_two_protocols", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nstarttls = true\n[[listener]]\nname = \"b\"\n"
     "bind = \"127.0.0.1:0\"\nmode = \"l4\"\nstarttls = \"imap\"\npool = \"p2\"\n[[listener]]\nname = \"c\"\n"
     "bind = \"127.0.0.1:0\"\nmode = \"l4\"\nstarttls = \"pop3\"\npool = \"p2\"\n",
     "pool \"p2\".starttls", "different protocols (imap and pop3)", 4},
    {"redirect_certificates", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"redirect\"\n"
     "idle_timeout = \"5s\"\ncertificates = [\"main\"]\n",
     "listener \"b\".certificates", "use mode = \"l7\" to serve HTTPS here", 6},
    {"passthrough_certificates", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"passthrough\"\n"
     "pool = \"relay\"\ncertificates = [\"main\"]\n",
     "listener \"b\".certificates", "does not terminate TLS", 6},
    {"passthrough_default_certificate", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "mode = \"passthrough\"\npool = \"relay\"\ndefault_certificate = \"main\"\n",
     "default_certificate", "does not terminate TLS", 6},
    {"passthrough_strict_sni", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"passthrough\"\n"
     "pool = \"relay\"\nstrict_sni = true\n",
     "strict_sni", "does not terminate TLS", 6},
    {"passthrough_tls", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"passthrough\"\n"
     "pool = \"relay\"\ntls = \"modern\"\n",
     "listener \"b\".tls", "does not terminate TLS", 6},
    {"passthrough_alpn", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"passthrough\"\n"
     "pool = \"relay\"\nalpn = [\"h2\"]\n",
     "alpn", "does not terminate TLS", 6},
    {"passthrough_client_certificates", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "mode = \"passthrough\"\npool = \"relay\"\nclient_certificates = \"optional\"\nclient_ca = \"clients.pem\"\n",
     "client_certificates", "does not terminate TLS", 6, 2},
    {"passthrough_client_crl", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "mode = \"passthrough\"\npool = \"relay\"\nclient_crl = \"clients.crl\"\n",
     "listener \"b\".client_crl", "does not terminate TLS", 6},
    {"passthrough_client_verify_depth", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "mode = \"passthrough\"\npool = \"relay\"\nclient_verify_depth = 3\n",
     "listener \"b\".client_verify_depth", "does not terminate TLS", 6},
    {"client_verify_depth_range", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "client_certificates = \"require\"\nclient_ca = \"clients.pem\"\nclient_verify_depth = 0\n[[route]]\n"
     "listener = \"b\"\npool = \"owa\"\n",
     "listener \"b\".client_verify_depth", "between 1 and 16", 6},
    {"unreadable_client_crl", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "client_certificates = \"require\"\nclient_ca = \"clients.pem\"\nclient_crl = \"missing.crl\"\n[[route]]\n"
     "listener = \"b\"\npool = \"owa\"\n",
     "listener \"b\".client_crl", "cannot read", 6},
    {"client_certificates_without_ca", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "client_certificates = \"require\"\n[[route]]\nlistener = \"b\"\npool = \"owa\"\n",
     "listener \"b\".client_certificates", "need client_ca", 4},
    {"terminating_without_certificate", false,
     "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\nmode = \"l4\"\n"
     "pool = \"p\"\n[[server]]\nname = \"s\"\naddress = \"10.0.0.1:443\"\n[[pool]]\nname = \"p\"\n"
     "servers = [\"s\"]\ntls = \"plain\"\n",
     "listener \"a\".mode", "no [[certificate]]", 4},
    {"l7_alpn_unknown", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nalpn = [\"h2\", \"imap\"]\n"
     "[[route]]\nlistener = \"b\"\npool = \"owa\"\n",
     "alpn[1]", "speaks only", 4},
    {"l4_forwards_nowhere", true, "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\nmode = \"l4\"\n",
     "listener \"b\".pool", "forwards nowhere", 1},
    {"no_listener", false, "[[certificate]]\nname = \"c\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n", "listener",
     "nothing to serve", 0},

    // Value checks.
    {"workers_negative", true, "[global]\nworkers = -1\n", "global.workers", "at least 0", 2},
    {"max_connections_zero", true, "[global]\nmax_connections = 0\n", "global.max_connections", "at least 1", 2},
    {"listener_max_connections_negative", true,
     "[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n"
     "max_connections = -5\n[[route]]\nlistener = \"b\"\npool = \"owa\"\n",
     "listener \"b\".max_connections", "at least 0", 4},
    {"weight_too_big", true, "[[server]]\nname = \"mbx02\"\naddress = \"10.0.0.2:443\"\nweight = 257\n",
     "server \"mbx02\".weight", "between 0 and 256", 4},
    {"health_rise_zero", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nhealth = { kind = \"tcp\", rise = 0 }\n", "health.rise",
     "at least 1", 4},
    {"health_fall_zero", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nhealth = { kind = \"tcp\", fall = 0 }\n", "health.fall",
     "at least 1", 4},
    {"health_expect_600", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\n[pool.health]\nkind = \"http\"\n"
     "expect = 600\n",
     "pool \"p2\".health.expect", "between 100 and 599", 6},
    {"health_expect_99", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\nhealth = { expect = 99 }\n",
     "health.expect", "between 100 and 599", 4},
    {"health_path_relative", true,
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\"]\n"
     "health = { kind = \"http\", path = \"owa/healthcheck.htm\" }\n",
     "health.path", "must start with \"/\"", 4},
    {"route_path_relative", true, "[[route]]\nlistener = \"https\"\npool = \"owa\"\npaths = [\"/ecp\", \"owa\"]\n",
     "route[1].paths[1]", "must start with \"/\"", 4},
    {"route_paths_empty", true, "[[route]]\nlistener = \"https\"\npool = \"owa\"\npaths = []\n", "route[1].paths",
     "matches nothing", 4},
    {"host_wildcard_tld", true, "[[route]]\nlistener = \"https\"\npool = \"owa\"\nhosts = [\"*.com\"]\n",
     "route[1].hosts[0]", "never \"*.com\"", 4},
    {"host_wildcard_not_leftmost", true,
     "[[route]]\nlistener = \"https\"\npool = \"owa\"\n"
     "hosts = [\"mail.contoso.com\", \"mail.*.contoso.com\"]\n",
     "hosts[1]", "only allowed as the left-most label", 4},
    {"host_wildcard_partial", true, "[[route]]\nlistener = \"https\"\npool = \"owa\"\nhosts = [\"m*.contoso.com\"]\n",
     "hosts[0]", "must be a whole label", 4},
    {"host_star_alone", true, "[[route]]\nlistener = \"https\"\npool = \"owa\"\nhosts = [\"*\"]\n", "hosts[0]",
     "omit hosts", 4},
    {"host_with_port", true, "[[route]]\nlistener = \"https\"\npool = \"owa\"\nhosts = [\"mail.contoso.com:443\"]\n",
     "hosts[0]", "no port", 4},
    {"host_bad_character", true, "[[route]]\nlistener = \"https\"\npool = \"owa\"\nhosts = [\"mail contoso.com\"]\n",
     "hosts[0]", "not allowed in a host name", 4},
    {"host_empty_label", true, "[[route]]\nlistener = \"https\"\npool = \"owa\"\nhosts = [\"mail..contoso.com\"]\n",
     "hosts[0]", "empty label", 4},
    {"pin_short_base64", true, "[[server]]\nname = \"mbx02\"\naddress = \"10.0.0.2:443\"\npin = \"sha256/AAAA=\"\n",
     "server \"mbx02\".pin", "base64 of a 32-byte", 4},
    {"pin_hex_39_digits", true,
     "[[server]]\nname = \"mbx02\"\naddress = \"10.0.0.2:443\"\n"
     "pin = \"" +
         std::string(39, 'A') + "\"\n",
     "pin", "40 hex digits", 4},
    {"pin_not_hex", true,
     "[[server]]\nname = \"mbx02\"\naddress = \"10.0.0.2:443\"\n"
     "pin = \"" +
         std::string(39, 'A') + "G\"\n",
     "pin", "gatehouse cert pin HOST:PORT", 4},
    {"pin_invisible_character", true,
     "[[server]]\nname = \"mbx02\"\naddress = \"10.0.0.2:443\"\n"
     "pin = \"\xE2\x80\x8E" +
         std::string(40, 'A') + "\"\n",
     "pin", "invisible", 4},
    {"verify_without_pin_or_ca", true,
     "[[server]]\nname = \"mbx02\"\naddress = \"10.0.0.2:443\"\n[[pool]]\n"
     "name = \"p2\"\nservers = [\"mbx01\", \"mbx02\"]\n",
     "pool \"p2\".servers",
     "server \"mbx02\" has no pin and pool \"p2\" has no ca, so its certificate cannot be verified; set pin "
     "(gatehouse cert pin HOST:PORT prints it) or ca, or tls = \"insecure\"",
     6},
    {"verify_empty_pin_explicit", true,
     "[[server]]\nname = \"mbx02\"\naddress = \"10.0.0.2:443\"\npin = \"\"\n"
     "[[pool]]\nname = \"p2\"\nservers = [\"mbx02\"]\nca = \"\"\n",
     "pool \"p2\".servers", "has no pin", 7},
    {"pool_servers_empty", true, "[[pool]]\nname = \"p2\"\nservers = []\n", "pool \"p2\".servers",
     "at least one server", 3},
    {"pool_server_twice", true, "[[pool]]\nname = \"p2\"\nservers = [\"mbx01\", \"mbx01\"]\n", "servers[1]",
     "listed twice", 3},
    {"name_with_space", true, "[[pool]]\nname = \"my pool\"\nservers = [\"mbx01\"]\n", "pool \"my pool\".name",
     "not a usable name", 2},
    {"server_name_wildcard", true,
     "[[server]]\nname = \"mbx02\"\naddress = \"10.0.0.2:443\"\n"
     "server_name = \"*.contoso.com\"\n",
     "server_name", "not a host name", 4},

    // Required keys.
    {"missing_certificate_name", true, "[[certificate]]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
     "certificate[1].name", "required key is missing; add name = ", 1},
    {"missing_certificate_cert", true, "[[certificate]]\nname = \"c2\"\nkey = \"key.pem\"\n", "certificate \"c2\".cert",
     "required key is missing", 1},
    {"missing_certificate_key", true, "[[certificate]]\nname = \"c2\"\ncert = \"cert.pem\"\n", "certificate \"c2\".key",
     "required key is missing", 1},
    {"missing_listener_name", true, "[[listener]]\nbind = \"127.0.0.1:0\"\n", "listener[1].name",
     "required key is missing", 1},
    {"missing_listener_bind", true, "[[listener]]\nname = \"b\"\n[[route]]\nlistener = \"b\"\npool = \"owa\"\n",
     "listener \"b\".bind", "add bind = \"0.0.0.0:443\"", 1},
    {"missing_server_name", true, "[[server]]\naddress = \"10.0.0.2:443\"\npin = \"" + pin_a + "\"\n", "server[2].name",
     "required key is missing", 1},
    {"missing_server_address", true, "[[server]]\nname = \"mbx02\"\n", "server \"mbx02\".address",
     "required key is missing", 1},
    {"missing_pool_name", true, "[[pool]]\nservers = [\"mbx01\"]\n", "pool[2].name", "required key is missing", 1},
    {"missing_pool_servers", true, "[[pool]]\nname = \"p2\"\n", "pool \"p2\".servers", "required key is missing", 1},
    {"missing_route_listener", true, "[[route]]\npool = \"owa\"\n", "route[1].listener", "required key is missing", 1},
    {"missing_route_pool", true, "[[route]]\nlistener = \"https\"\n", "route[1].pool", "required key is missing", 1},
};

INSTANTIATE_TEST_SUITE_P(Table, ConfigError, ::testing::ValuesIn(error_cases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Load, CollectsEveryErrorSortedByLine) {
  auto result = load_string(base +
                                "[global]\nworkers = -2\nadmin = \"nowhere\"\n[[route]]\nlistener = \"x\"\n"
                                "pool = \"y\"\n",
                            files().config());
  ASSERT_FALSE(result.config);
  ASSERT_EQ(result.errors.size(), 4u) << dump(result);
  EXPECT_TRUE(
      std::is_sorted(result.errors.begin(), result.errors.end(), [](auto& a, auto& b) { return a.line < b.line; }));
}

TEST(Load, NeverThrowsOnGarbage) {
  const std::string inputs[] = {"",    std::string("\0\xff\xfe[[", 5),     "[[[", "a = \"\\u\"",
                                "= 1", "[server]\n[server.admin]\nx = 1\n"};
  for (auto& text : inputs) {
    LoadResult result;
    EXPECT_NO_THROW(result = load_string(text, "garbage.toml"));
    EXPECT_FALSE(result.ok());
  }
}

TEST(Load, FileThatCannotBeRead) {
  auto result = load_file(files().dir() / "absent.toml");
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].line, 0);
  EXPECT_THAT(result.errors[0].to_string(), ::testing::HasSubstr("absent.toml: cannot read the config file"));
  EXPECT_EQ(load_file(files().dir()).errors.size(), 1u);
}

TEST(Load, FromFileResolvesPathsAgainstItsDirectory) {
  std::ofstream(files().config()) << base;
  auto result = load_file(files().config());
  ASSERT_TRUE(result.ok()) << dump(result);
  EXPECT_EQ(result.config->file, files().config());
  EXPECT_EQ(result.config->certificates[0].cert, files().dir() / "cert.pem");
  EXPECT_TRUE(result.config->certificates[0].key.is_absolute());
}

TEST(Load, InsecurePoolIsAWarningNotAnError) {
  auto result = load_string(base +
                                "[[server]]\nname = \"mbx02\"\naddress = \"10.0.0.2:443\"\n"
                                "[[pool]]\nname = \"p2\"\nservers = [\"mbx02\"]\ntls = \"insecure\"\n",
                            files().config());
  ASSERT_TRUE(result.ok()) << dump(result);
  ASSERT_EQ(result.warnings.size(), 1u) << dump(result);
  EXPECT_EQ(result.warnings[0].key, "pool \"p2\".tls");
  EXPECT_EQ(result.warnings[0].line, base_lines + 7);
  EXPECT_THAT(result.warnings[0].message, ::testing::HasSubstr("not verified"));
}

TEST(Load, OldServerTableStillLoadsBesideServerArrayWithAWarning) {
  // TOML forbids [server] and [[server]] in one document; files written
  // before [global] have both.
  auto result = load_string("[server]  # settings\nworkers = 2\n" + base +
                                "[[route]]\nlistener = \"https\"\npool = \"owa\"\nhosts = [\"\"\"\n[server]\n\"\"\"]\n",
                            files().config());
  ASSERT_FALSE(result.ok());
  ASSERT_EQ(result.errors.size(), 1u) << dump(result);
  EXPECT_EQ(result.errors[0].key, "route[1].hosts[0]");  // "[server]" inside a string stays a string
  result = load_string(base + "\n[server]\nworkers = 3\n", files().config());
  ASSERT_TRUE(result.ok()) << dump(result);
  EXPECT_EQ(result.config->server.workers, 3);
  EXPECT_EQ(result.config->servers.size(), 2u);
  ASSERT_EQ(result.warnings.size(), 1u) << dump(result);
  const Diagnostic& warning = result.warnings[0];
  EXPECT_EQ(warning.file, files().config().string());
  EXPECT_EQ(warning.line, base_lines + 2);
  EXPECT_EQ(warning.key, "server");
  EXPECT_THAT(warning.message, ::testing::HasSubstr("write [global] instead"));
  EXPECT_THAT(warning.to_string(), ::testing::HasSubstr(files().config().string() + ":" +
                                                        std::to_string(base_lines + 2) + ": server: [server] is"));
}

TEST(Load, GlobalIsTheSettingsTableServerTheOlderName) {
  auto result = load_string("[global]\nworkers = 3\n" + base, files().config());
  ASSERT_TRUE(result.ok()) << dump(result);
  EXPECT_EQ(result.config->server.workers, 3);
  EXPECT_TRUE(result.warnings.empty()) << dump(result);
  result = load_string("[global]\nworkers = -1\n" + base, files().config());
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.errors[0].key, "global.workers");
  result = load_string("[global]\nworkers = 1\n[server]\nworkers = 2\n" + base, files().config());
  ASSERT_FALSE(result.ok());
  EXPECT_NE(dump(result).find("given twice"), std::string::npos) << dump(result);
}

TEST(Load, DefaultsAreResolved) {
  auto result = load_string(base +
                                "[[certificate]]\nname = \"second\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
                                "[[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\nmode = \"l4\"\n"
                                "pool = \"owa\"\n[[listener]]\nname = \"pass\"\nbind = \"127.0.0.1:0\"\n"
                                "mode = \"passthrough\"\npool = \"relay\"\n",
                            files().config());
  ASSERT_TRUE(result.ok()) << dump(result);
  const Config& config = *result.config;
  EXPECT_EQ(config.server.workers, 0);
  EXPECT_EQ(config.server.admin, (Address{"127.0.0.1", 9901}));
  EXPECT_EQ(config.server.access_log, "-");
  EXPECT_TRUE(config.server.ticket_keys.empty());
  EXPECT_EQ(config.server.drain_timeout, seconds(30));
  EXPECT_EQ(config.server.max_connections, 100000u);

  const Listener* https = config.find_listener("https");
  ASSERT_NE(https, nullptr);
  EXPECT_EQ(https->mode, ListenerMode::l7);
  EXPECT_THAT(https->certificates, ::testing::ElementsAre("main", "second"));
  EXPECT_EQ(https->default_certificate, "main");
  EXPECT_FALSE(https->strict_sni);
  EXPECT_EQ(https->tls, TlsPolicy::modern);
  EXPECT_THAT(https->alpn, ::testing::ElementsAre("h2", "http/1.1"));
  EXPECT_EQ(https->client_certificates, ClientCertificates::none);
  EXPECT_EQ(https->proxy_protocol, ProxyProtocol::none);
  EXPECT_EQ(https->handshake_timeout, seconds(10));
  EXPECT_EQ(https->idle_timeout, minutes(5));
  EXPECT_EQ(https->line, 24);

  const Listener* tcp = config.find_listener("tcp");
  ASSERT_NE(tcp, nullptr);
  EXPECT_THAT(tcp->certificates, ::testing::ElementsAre("main", "second"));
  EXPECT_TRUE(tcp->alpn.empty());
  const Listener* pass = config.find_listener("pass");
  ASSERT_NE(pass, nullptr);
  EXPECT_TRUE(pass->certificates.empty());  // passthrough serves no certificate
  EXPECT_TRUE(pass->default_certificate.empty());

  const Route& route = config.routes.at(0);
  EXPECT_TRUE(route.hosts.empty());
  EXPECT_THAT(route.paths, ::testing::ElementsAre("/"));
  EXPECT_EQ(route.affinity, Affinity::none);
  EXPECT_FALSE(route.idle_timeout);

  const Server* server = config.find_server("mbx01");
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->server_name, "10.0.1.11");
  EXPECT_EQ(server->weight, 1);
  EXPECT_TRUE(server->site.empty());

  const Pool* pool = config.find_pool("owa");
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->balance, Balance::round_robin);
  EXPECT_EQ(pool->hash_key, "source_ip");
  EXPECT_EQ(pool->tls, BackendTls::verify);
  EXPECT_EQ(pool->health.kind, HealthKind::none);
  EXPECT_EQ(pool->health.path, "/");
  EXPECT_EQ(pool->health.expect, 200);
  EXPECT_EQ(pool->health.interval, seconds(5));
  EXPECT_EQ(pool->health.timeout, seconds(2));
  EXPECT_EQ(pool->connect_timeout, seconds(5));
  EXPECT_EQ(pool->health.rise, 2);
  EXPECT_EQ(pool->health.fall, 3);

  EXPECT_EQ(config.find_pool("nope"), nullptr);
  EXPECT_EQ(config.find_certificate("second"), &config.certificates[1]);
}

TEST(Load, AdminCanBeDisabled) {
  auto result = load_string(base + "[global]\nadmin = \"\"\n", files().config());
  ASSERT_TRUE(result.ok()) << dump(result);
  EXPECT_FALSE(result.config->server.admin);
}

TEST(Load, AcceptedPinAndHostForms) {
  auto result = load_string(base +
                                "[[server]]\nname = \"hex\"\naddress = \"10.0.0.2:443\"\n"
                                "pin = \"1F 2E 3D 4C 5B 6A 79 88 97 A6 b5 c4 d3 e2 f1 00 11 22 33 44\"\n"
                                "[[server]]\nname = \"colons\"\naddress = \"10.0.0.3:443\"\n"
                                "pin = \"1F:2E:3D:4C:5B:6A:79:88:97:A6:B5:C4:D3:E2:F1:00:11:22:33:44\"\n"
                                "[[route]]\nlistener = \"https\"\npool = \"owa\"\n"
                                "hosts = [\"MAIL.Contoso.COM.\", \"*.Contoso.com\", \"autodiscover.contoso.com\"]\n",
                            files().config());
  ASSERT_TRUE(result.ok()) << dump(result);
  EXPECT_THAT(result.config->routes[1].hosts,
              ::testing::ElementsAre("mail.contoso.com", "*.contoso.com", "autodiscover.contoso.com"));
  EXPECT_EQ(result.config->find_server("hex")->pin,
            "1F 2E 3D 4C 5B 6A 79 88 97 A6 b5 c4 d3 e2 f1 00 11 22 33 44");  // kept as written
}

TEST(Load, OcspModes) {
  std::ofstream(files().dir() / "mail.ocsp") << "x";
  const std::string text = base +
                           "[[certificate]]\nname = \"auto\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
                           "ocsp = \"auto\"\n[[certificate]]\nname = \"file\"\ncert = \"cert.pem\"\n"
                           "key = \"key.pem\"\nocsp = \"mail.ocsp\"\n[[certificate]]\nname = \"none\"\n"
                           "cert = \"cert.pem\"\nkey = \"key.pem\"\nocsp = \"\"\n";
  auto result = load_string(text, files().config());
  ASSERT_TRUE(result.ok()) << dump(result);
  const Config& c = *result.config;
  EXPECT_EQ(c.find_certificate("main")->ocsp, OcspMode::none);
  EXPECT_EQ(c.find_certificate("auto")->ocsp, OcspMode::automatic);
  EXPECT_EQ(c.find_certificate("file")->ocsp, OcspMode::file);
  EXPECT_EQ(c.find_certificate("file")->ocsp_file, files().dir() / "mail.ocsp");
  EXPECT_EQ(c.find_certificate("none")->ocsp, OcspMode::none);
}

// Every key of the schema (conf/README.md), checked field by field.
TEST(Load, FullConfig) {
  std::string text = R"(# every key the schema defines
[global]
workers = 4
admin = "[::1]:9901"
access_log = "/var/log/gatehouse/access.log"
ticket_keys = "tickets.bin"
drain_timeout = "45s"
max_connections = 5000

[[certificate]]
name = "contoso-san"
cert = "certs/mail.crt"
key  = "certs/mail.key"

[[certificate]]
name = "contoso-ecdsa"
cert = "@DIR@/ecdsa.crt"
key = "ecdsa.key"

[[listener]]
name = "https"
bind = "0.0.0.0:443"
mode = "l7"
certificates = ["contoso-ecdsa", "contoso-san"]
default_certificate = "contoso-san"
strict_sni = true
tls = "tls13"
alpn = ["http/1.1"]
client_certificates = "optional"
client_ca = "clients.pem"
client_crl = "clients.crl"
client_verify_depth = 2
pool = ""
proxy_protocol = ""
handshake_timeout = "5s"
idle_timeout = "2m"

[[listener]]
name = "imaps"
bind = "[::]:993"
mode = "l4"
pool = "imap"
proxy_protocol = "v2"
alpn = ["imap"]

[[listener]]
name = "sni-pass"
bind = "10.0.0.1:8443"
mode = "passthrough"
pool = "owa-dr"
proxy_protocol = "v1"

[[listener]]
name = "submission"
bind = "0.0.0.0:587"
mode = "l4"
starttls = "smtp"
greeting_name = "Mail.Contoso.com"
pool = "submission"

[[route]]
listener = "https"
hosts = ["Mail.Contoso.com.", "*.contoso.com"]
paths = ["/OWA", "/ecp"]
pool = "owa"
affinity = "cookie"
idle_timeout = "65m"

[[route]]
listener = "sni-pass"
hosts = ["legacy.contoso.com"]
pool = "owa-dr"
affinity = "source_ip"

[[server]]
name = "mbx01"
address = "10.0.1.11:443"
site = "dc1"
weight = 3
server_name = "MBX01.contoso.com"
pin = "@PIN@"

[[server]]
name = "mbx02"
address = "[fd00::12]:443"
site = "dc2"
weight = 0
server_name = ""
pin = ""

[[server]]
name = "imap01"
address = "imap01.contoso.com:993"

[[pool]]
name = "owa"
servers = ["mbx01", "mbx02"]
balance = "maglev"
hash_key = "header:X-User"
local_site = "dc1"
fallback = "owa-dr"
tls = "verify"
ca = "backend-ca.pem"
connect_timeout = "750ms"
health = { kind = "http", path = "/owa/healthcheck.htm", expect = 204, interval = "3s", timeout = "1500ms", rise = 4, fall = 5 }

[[pool]]
name = "owa-dr"
servers = ["mbx02"]
balance = "least_conn"
hash_key = "cookie"
tls = "plain"
health = { kind = "tcp" }

[[pool]]
name = "imap"
servers = ["imap01"]
balance = "random_two"
tls = "insecure"
health = { kind = "tls", interval = "10s" }

[[pool]]
name = "submission"
servers = ["imap01"]
tls = "verify"
starttls = true
ca = "backend-ca.pem"
health = { kind = "tcp" }
)";
  text.replace(text.find("@DIR@"), 5, files().dir().string());
  text.replace(text.find("@PIN@"), 5, pin_a);
  auto result = load_string(text, files().config());
  ASSERT_TRUE(result.ok()) << dump(result);
  ASSERT_EQ(result.warnings.size(), 1u) << dump(result);
  EXPECT_EQ(result.warnings[0].key, "pool \"imap\".tls");
  const Config& c = *result.config;
  const fs::path& dir = files().dir();

  EXPECT_EQ(c.server.workers, 4);
  EXPECT_EQ(c.server.admin, (Address{"::1", 9901}));
  EXPECT_EQ(c.server.access_log, "/var/log/gatehouse/access.log");
  EXPECT_EQ(c.server.ticket_keys, dir / "tickets.bin");
  EXPECT_EQ(c.server.drain_timeout, seconds(45));
  EXPECT_EQ(c.server.max_connections, 5000u);

  ASSERT_EQ(c.certificates.size(), 2u);
  EXPECT_EQ(c.certificates[0].name, "contoso-san");
  EXPECT_EQ(c.certificates[0].cert, dir / "certs/mail.crt");
  EXPECT_EQ(c.certificates[0].key, dir / "certs/mail.key");
  EXPECT_EQ(c.certificates[0].line, 10);
  EXPECT_EQ(c.certificates[1].cert, dir / "ecdsa.crt");
  EXPECT_EQ(c.certificates[1].key, dir / "ecdsa.key");

  ASSERT_EQ(c.listeners.size(), 4u);
  const Listener& https = c.listeners[0];
  EXPECT_EQ(https.name, "https");
  EXPECT_EQ(https.bind, (Address{"0.0.0.0", 443}));
  EXPECT_EQ(https.mode, ListenerMode::l7);
  EXPECT_THAT(https.certificates, ::testing::ElementsAre("contoso-ecdsa", "contoso-san"));
  EXPECT_EQ(https.default_certificate, "contoso-san");
  EXPECT_TRUE(https.strict_sni);
  EXPECT_EQ(https.tls, TlsPolicy::tls13);
  EXPECT_THAT(https.alpn, ::testing::ElementsAre("http/1.1"));
  EXPECT_EQ(https.client_certificates, ClientCertificates::optional);
  EXPECT_EQ(https.client_ca, dir / "clients.pem");
  EXPECT_EQ(https.client_crl, dir / "clients.crl");
  EXPECT_EQ(https.client_verify_depth, 2);
  EXPECT_EQ(https.pool, "");
  EXPECT_EQ(https.proxy_protocol, ProxyProtocol::none);
  EXPECT_EQ(https.handshake_timeout, seconds(5));
  EXPECT_EQ(https.idle_timeout, minutes(2));
  EXPECT_EQ(https.line, 20);

  const Listener& imaps = c.listeners[1];
  EXPECT_EQ(imaps.bind, (Address{"::", 993}));
  EXPECT_EQ(imaps.mode, ListenerMode::l4);
  EXPECT_EQ(imaps.pool, "imap");
  EXPECT_EQ(imaps.proxy_protocol, ProxyProtocol::v2);
  EXPECT_THAT(imaps.alpn, ::testing::ElementsAre("imap"));
  EXPECT_THAT(imaps.certificates, ::testing::ElementsAre("contoso-san", "contoso-ecdsa"));
  EXPECT_EQ(imaps.default_certificate, "contoso-san");

  const Listener& pass = c.listeners[2];
  EXPECT_EQ(pass.mode, ListenerMode::passthrough);
  EXPECT_EQ(pass.proxy_protocol, ProxyProtocol::v1);
  EXPECT_TRUE(pass.certificates.empty());

  ASSERT_EQ(c.routes.size(), 2u);
  const Route& owa = c.routes[0];
  EXPECT_EQ(owa.listener, "https");
  EXPECT_THAT(owa.hosts, ::testing::ElementsAre("mail.contoso.com", "*.contoso.com"));
  EXPECT_THAT(owa.paths, ::testing::ElementsAre("/owa", "/ecp"));
  EXPECT_EQ(owa.pool, "owa");
  EXPECT_EQ(owa.affinity, Affinity::cookie);
  EXPECT_EQ(owa.idle_timeout, minutes(65));
  EXPECT_EQ(c.routes[1].affinity, Affinity::source_ip);
  EXPECT_THAT(c.routes[1].paths, ::testing::ElementsAre("/"));

  ASSERT_EQ(c.servers.size(), 3u);
  const Server& mbx01 = c.servers[0];
  EXPECT_EQ(mbx01.address, (Address{"10.0.1.11", 443}));
  EXPECT_EQ(mbx01.site, "dc1");
  EXPECT_EQ(mbx01.weight, 3);
  EXPECT_EQ(mbx01.server_name, "mbx01.contoso.com");
  EXPECT_EQ(mbx01.pin, pin_a);
  const Server& mbx02 = c.servers[1];
  EXPECT_EQ(mbx02.address, (Address{"fd00::12", 443}));
  EXPECT_EQ(mbx02.weight, 0);
  EXPECT_EQ(mbx02.server_name, "fd00::12");
  EXPECT_EQ(mbx02.pin, "");
  EXPECT_EQ(c.servers[2].server_name, "imap01.contoso.com");

  ASSERT_EQ(c.pools.size(), 4u);
  const Pool& pool = c.pools[0];
  EXPECT_THAT(pool.servers, ::testing::ElementsAre("mbx01", "mbx02"));
  EXPECT_EQ(pool.balance, Balance::maglev);
  EXPECT_EQ(pool.hash_key, "header:X-User");
  EXPECT_EQ(pool.local_site, "dc1");
  EXPECT_EQ(pool.fallback, "owa-dr");
  EXPECT_EQ(pool.tls, BackendTls::verify);
  EXPECT_EQ(pool.ca, dir / "backend-ca.pem");
  EXPECT_EQ(pool.health.kind, HealthKind::http);
  EXPECT_EQ(pool.health.path, "/owa/healthcheck.htm");
  EXPECT_EQ(pool.health.expect, 204);
  EXPECT_EQ(pool.health.interval, seconds(3));
  EXPECT_EQ(pool.health.timeout, std::chrono::milliseconds(1500));
  EXPECT_EQ(pool.connect_timeout, std::chrono::milliseconds(750));
  EXPECT_EQ(pool.health.rise, 4);
  EXPECT_EQ(pool.health.fall, 5);
  EXPECT_EQ(c.pools[1].balance, Balance::least_conn);
  EXPECT_EQ(c.pools[1].hash_key, "cookie");
  EXPECT_EQ(c.pools[1].tls, BackendTls::plain);
  EXPECT_EQ(c.pools[1].health.kind, HealthKind::tcp);
  EXPECT_EQ(c.pools[2].balance, Balance::random_two);
  EXPECT_EQ(c.pools[2].tls, BackendTls::insecure);
  EXPECT_EQ(c.pools[2].health.kind, HealthKind::tls);
  EXPECT_EQ(c.pools[2].health.interval, seconds(10));
  EXPECT_FALSE(c.pools[2].starttls);
  EXPECT_TRUE(c.pools[3].starttls);
  EXPECT_EQ(c.listeners[3].starttls, StartTls::smtp);
  EXPECT_EQ(c.listeners[3].greeting_name, "mail.contoso.com");
  EXPECT_EQ(c.listeners[0].starttls, StartTls::none);
}

}  // namespace
}  // namespace gatehouse::conf
