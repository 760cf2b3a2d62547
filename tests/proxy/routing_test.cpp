// Where an L7 request goes, and which requests are refused before any
// backend is asked: route_request over a generation built from a config,
// with the certificates the SNI index picks, and no socket. The tables say
// what a user writing [[route]] tables relies on: exact host before
// wildcard before any host, then the longest path prefix (case-insensitive,
// at a segment boundary); 400 for a Host that is not one, 421 for a name the
// connection's certificate does not cover, 404 without a route.

#include "proxy/l7/routing.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "tests/proxy/test_support.h"

namespace gatehouse::proxy::l7 {
namespace {

using test::TempDir;

// Every route has a pool of its own, so the pool's name says which route won.
std::string config_text(const TempDir& dir) {
  const auto mail =
      test::make_certificate(dir, "mail", "mail.contoso.com", {"mail.contoso.com", "autodiscover.contoso.com"});
  const auto wild = test::make_certificate(dir, "wild", "*.fabrikam.com", {"*.fabrikam.com"});
  std::string text = R"(
[[certificate]]
name = "mail"
cert = ")" + mail.cert.string() +
                     R"("
key = ")" + mail.key.string() +
                     R"("

[[certificate]]
name = "wild"
cert = ")" + wild.cert.string() +
                     R"("
key = ")" + wild.key.string() +
                     R"("

[[server]]
name = "mbx01"
address = "127.0.0.1:9"

[[listener]]
name = "https"
bind = "127.0.0.1:0"

[[listener]]
name = "narrow"
bind = "127.0.0.1:0"

[[listener]]
name = "nopool"
bind = "127.0.0.1:0"

[[route]]
listener = "https"
hosts = ["mail.contoso.com"]
paths = ["/owa", "/ECP/"]
pool = "exact_owa"

[[route]]
listener = "https"
hosts = ["mail.contoso.com", "Legacy.Contoso.COM."]
pool = "exact_root"

[[route]]
listener = "https"
hosts = ["*.contoso.com"]
paths = ["/owa/auth"]
pool = "wild_owa_auth"

[[route]]
listener = "https"
hosts = ["*.contoso.com"]
pool = "wild_root"

[[route]]
listener = "https"
paths = ["/mapi"]
pool = "any_mapi"

[[route]]
listener = "https"
pool = "any_root"

[[route]]
listener = "https"
hosts = ["mail.contoso.com"]
paths = ["/owa"]
pool = "exact_owa_later"

[[route]]
listener = "https"
hosts = ["10.0.0.5"]
pool = "by_ip"

[[route]]
listener = "narrow"
hosts = ["mail.contoso.com"]
paths = ["/owa"]
pool = "exact_owa"

[[route]]
listener = "nopool"
pool = "any_root"

[[route]]
listener = "https"
hosts = ["ecp.contoso.com"]
paths = ["/ecp", "/PowerShell"]
allow = ["127.0.0.2/32", "2001:db8::/32"]
deny = ["2001:db8::bad/128"]
pool = "ecp"

[[route]]
listener = "https"
hosts = ["www.contoso.com"]
paths = ["=/"]
pool = "exact_slash"
)";
  for (const char* pool : {"exact_owa", "exact_root", "wild_owa_auth", "wild_root", "any_mapi", "any_root",
                           "exact_owa_later", "by_ip", "ecp", "exact_slash"})
    text += "\n[[pool]]\nname = \"" + std::string(pool) + "\"\nservers = [\"mbx01\"]\ntls = \"plain\"\n";
  return text;
}

class Routing : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    generation_ = test::build_generation(*dir_, config_text(*dir_), [](conf::Config& config) {
      // The loader requires a pool on every route; the runtime still
      // answers 503 rather than crash if one has none.
      for (auto& route : config.routes)
        if (route.listener == "nopool") route.pool.clear();
    });
  }
  static void TearDownTestSuite() {
    generation_.reset();
    delete dir_;
    dir_ = nullptr;
  }

  static const ListenerRuntime& listener(std::string_view name) {
    const ListenerRuntime* l = generation_->listener(name);
    if (l == nullptr) throw std::runtime_error("no listener " + std::string(name));
    return *l;
  }

  // What the handshake would have recorded for a ClientHello with `sni`
  // ("" = none) on listener "https": the certificate its SNI index picks.
  static HandshakeInfo handshake(std::string_view sni) {
    HandshakeInfo info;
    info.sni = std::string(sni);
    const auto selection = listener("https").tls->index().select(sni, true);
    info.certificate = selection.certificate;
    info.match = selection.kind;
    return info;
  }

  static Routed route(std::string_view host, std::string_view target, std::string_view sni = "",
                      std::string_view on = "https", std::string_view client = "127.0.0.1") {
    return route_request(*generation_, listener(on), handshake(sni), host, target, asio::ip::make_address(client));
  }

  static std::string pool_of(const Routed& routed) {
    if (routed.status != 0) return "status " + std::to_string(routed.status) + " (" + routed.detail + ")";
    return routed.pool == nullptr ? "no pool" : routed.pool->config->name;
  }

  static inline TempDir* dir_ = nullptr;
  static inline std::shared_ptr<Generation> generation_;
};

// ---- host and path precedence

struct RouteCase {
  const char* name;
  const char* host;    // as the client sent it
  const char* target;  // request target
  const char* pool;    // the route that must win
  const char* normalised_host;
};

void PrintTo(const RouteCase& c, std::ostream* out) { *out << c.name; }

class RouteChoice : public Routing, public ::testing::WithParamInterface<RouteCase> {};

TEST_P(RouteChoice, PicksTheMostSpecificRoute) {
  const RouteCase& c = GetParam();
  const Routed routed = route(c.host, c.target);
  EXPECT_EQ(pool_of(routed), c.pool) << "Host " << c.host << ", target " << c.target;
  EXPECT_EQ(routed.host, c.normalised_host);
  if (routed.status == 0) {
    ASSERT_NE(routed.route, nullptr);
    EXPECT_EQ(routed.route->pool, c.pool);
  }
}

const RouteCase route_cases[] = {
    // Longest path prefix, case-insensitive, at a segment boundary.
    {"prefix_exact_path", "mail.contoso.com", "/owa", "exact_owa", "mail.contoso.com"},
    {"prefix_below", "mail.contoso.com", "/owa/default.aspx", "exact_owa", "mail.contoso.com"},
    {"prefix_query", "mail.contoso.com", "/owa?realm=contoso.com", "exact_owa", "mail.contoso.com"},
    {"prefix_parameter", "mail.contoso.com", "/owa;jsessionid=1", "exact_owa", "mail.contoso.com"},
    {"prefix_case_of_request", "mail.contoso.com", "/OWA/Default.aspx", "exact_owa", "mail.contoso.com"},
    {"prefix_case_of_config", "mail.contoso.com", "/ecp/default.aspx", "exact_owa", "mail.contoso.com"},
    {"prefix_not_inside_a_segment", "mail.contoso.com", "/owax", "exact_root", "mail.contoso.com"},
    {"prefix_with_slash_needs_it", "mail.contoso.com", "/ecp", "exact_root", "mail.contoso.com"},
    // Equal host and path: the first route in the file wins.
    {"tie_first_in_file", "mail.contoso.com", "/owa/", "exact_owa", "mail.contoso.com"},
    // The host match decides before the path: an exact host with "/" beats
    // a wildcard or any host with a longer prefix.
    {"exact_beats_longer_wildcard_path", "mail.contoso.com", "/owa/auth/logon.aspx", "exact_owa", "mail.contoso.com"},
    {"exact_beats_longer_any_path", "mail.contoso.com", "/mapi/emsmdb", "exact_root", "mail.contoso.com"},
    {"wildcard_longest_path", "autodiscover.contoso.com", "/owa/auth/logon.aspx", "wild_owa_auth",
     "autodiscover.contoso.com"},
    {"wildcard_shorter_path", "autodiscover.contoso.com", "/owa/", "wild_root", "autodiscover.contoso.com"},
    {"wildcard_beats_longer_any_path", "autodiscover.contoso.com", "/mapi", "wild_root", "autodiscover.contoso.com"},
    // A wildcard covers exactly one label.
    {"wildcard_not_two_labels", "a.b.contoso.com", "/mapi", "any_mapi", "a.b.contoso.com"},
    {"wildcard_not_the_parent", "contoso.com", "/owa/auth", "any_root", "contoso.com"},
    {"any_host_longest_path", "www.fabrikam.com", "/mapi/emsmdb", "any_mapi", "www.fabrikam.com"},
    {"any_host_root", "www.fabrikam.com", "/", "any_root", "www.fabrikam.com"},
    // Host spellings that name the same host.
    {"host_upper_case", "MAIL.Contoso.COM", "/owa", "exact_owa", "mail.contoso.com"},
    {"host_trailing_dot", "mail.contoso.com.", "/owa", "exact_owa", "mail.contoso.com"},
    {"host_with_port", "mail.contoso.com:443", "/owa", "exact_owa", "mail.contoso.com"},
    {"host_with_other_port", "Mail.Contoso.com.:8443", "/owa", "exact_owa", "mail.contoso.com"},
    {"host_with_empty_port", "mail.contoso.com:", "/owa", "exact_owa", "mail.contoso.com"},
    {"route_host_normalised_by_config", "legacy.contoso.com", "/anything", "exact_root", "legacy.contoso.com"},
    {"wildcard_upper_case", "AutoDiscover.CONTOSO.com", "/", "wild_root", "autodiscover.contoso.com"},
    // Address literals.
    {"ipv4_literal", "10.0.0.5", "/", "by_ip", "10.0.0.5"},
    {"ipv4_literal_port", "10.0.0.5:8443", "/owa", "by_ip", "10.0.0.5"},
    {"ipv6_literal", "[2001:db8::1]", "/mapi", "any_mapi", "2001:db8::1"},
    {"ipv6_literal_port", "[2001:db8::1]:8443", "/", "any_root", "2001:db8::1"},
    {"ipv6_literal_canonical", "[2001:DB8:0:0::1]:443", "/", "any_root", "2001:db8::1"},
    // Targets other than origin-form.
    {"asterisk_is_root", "mail.contoso.com", "*", "exact_root", "mail.contoso.com"},
    {"absolute_form_path", "mail.contoso.com", "https://mail.contoso.com/owa/", "exact_owa", "mail.contoso.com"},
    {"absolute_form_scheme_case", "mail.contoso.com", "HTTPS://mail.contoso.com:443/OWA", "exact_owa",
     "mail.contoso.com"},
    {"absolute_form_no_path", "mail.contoso.com", "http://mail.contoso.com", "exact_root", "mail.contoso.com"},
    {"absolute_form_query_no_path", "mail.contoso.com", "https://mail.contoso.com?cmd=ping", "exact_root",
     "mail.contoso.com"},
    // "=/" matches "/" only (the query aside), and beats every prefix.
    {"exact_path", "www.contoso.com", "/", "exact_slash", "www.contoso.com"},
    {"exact_path_query", "www.contoso.com", "/?a=b", "exact_slash", "www.contoso.com"},
    {"exact_path_normalised", "www.contoso.com", "//./", "exact_slash", "www.contoso.com"},
    {"exact_path_not_below", "www.contoso.com", "/owa/", "wild_root", "www.contoso.com"},
    // The path as IIS reads it picks the route.
    {"normalised_dot_segments", "mail.contoso.com", "/x/../OWA/", "exact_owa", "mail.contoso.com"},
    {"normalised_encoded", "mail.contoso.com", "/%6Fwa", "exact_owa", "mail.contoso.com"},
    {"normalised_slashes", "mail.contoso.com", "//owa//x", "exact_owa", "mail.contoso.com"},
    // No Host (HTTP/1.0) and no SNI: only routes for any host apply.
    {"no_host_no_sni", "", "/owa", "any_root", ""},
    {"no_host_no_sni_path", "", "/mapi/nspi", "any_mapi", ""},
};

INSTANTIATE_TEST_SUITE_P(Cases, RouteChoice, ::testing::ValuesIn(route_cases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST_F(Routing, AllowedClientsReachTheRoute) {
  EXPECT_EQ(pool_of(route("ecp.contoso.com", "/ecp/", "", "https", "127.0.0.2")), "ecp");
  EXPECT_EQ(pool_of(route("ecp.contoso.com", "/%65cp/", "", "https", "::ffff:127.0.0.2")), "ecp");
  EXPECT_EQ(pool_of(route("ecp.contoso.com", "/ecp/", "", "https", "2001:db8::1")), "ecp");
  // Denied inside an allowed range; next door to the allowed address.
  EXPECT_EQ(route("ecp.contoso.com", "/ecp/", "", "https", "2001:db8::bad").status, 403);
  EXPECT_EQ(route("ecp.contoso.com", "/ecp/", "", "https", "127.0.0.3").status, 403);
  EXPECT_EQ(route("ecp.contoso.com", "/ecp/", "", "https", "::ffff:127.0.0.3").status, 403);
}

// ---- absolute-form targets

struct FormCase {
  const char* target;
  const char* origin;
  const char* authority;
};

TEST(TargetForms, OriginFormAndAuthority) {
  const FormCase cases[] = {
      {"/owa/", "/owa/", ""},
      {"/owa/?a=b", "/owa/?a=b", ""},
      {"*", "*", ""},
      {"mail.contoso.com:443", "mail.contoso.com:443", ""},  // authority-form (CONNECT)
      {"ftp://mail.contoso.com/x", "ftp://mail.contoso.com/x", ""},
      {"https://mail.contoso.com/owa/?a=b", "/owa/?a=b", "mail.contoso.com"},
      {"http://mail.contoso.com/", "/", "mail.contoso.com"},
      {"HTTPS://MAIL.contoso.com:8443/x", "/x", "MAIL.contoso.com:8443"},
      {"Http://mail.contoso.com", "/", "mail.contoso.com"},
      {"https://[2001:db8::1]:8443/owa", "/owa", "[2001:db8::1]:8443"},
      // RFC 9112 3.2.1: an empty path is sent as "/", also before a query.
      {"https://mail.contoso.com?cmd=ping", "/?cmd=ping", "mail.contoso.com"},
      {"https://", "/", ""},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(origin_form(c.target), c.origin) << c.target;
    EXPECT_EQ(authority_of(c.target), c.authority) << c.target;
  }
}

// ---- 400, 421, 404, 503

struct StatusCase {
  const char* name;
  const char* sni;  // "" = the client sent none
  const char* host;
  const char* target;
  int status;                // 0 = forwarded
  const char* pool_or_text;  // the pool when forwarded, else a part of the detail
};

void PrintTo(const StatusCase& c, std::ostream* out) { *out << c.name; }

class Decision : public Routing, public ::testing::WithParamInterface<StatusCase> {};

TEST_P(Decision, StatusAndWhy) {
  const StatusCase& c = GetParam();
  const Routed routed = route(c.host, c.target, c.sni);
  EXPECT_EQ(routed.status, c.status) << routed.detail;
  if (c.status == 0) {
    EXPECT_EQ(pool_of(routed), c.pool_or_text);
  } else {
    EXPECT_NE(routed.detail.find(c.pool_or_text), std::string::npos) << routed.detail;
    EXPECT_EQ(routed.pool, nullptr);
  }
}

const StatusCase status_cases[] = {
    // A route with allow ranges: a client outside them gets 403 for every
    // spelling of its paths; spellings that could be read two ways get 400.
    {"ecp_plain", "", "ecp.contoso.com", "/ecp/", 403, "client 127.0.0.1 is not allowed"},
    {"ecp_upper", "", "ecp.contoso.com", "/ECP/", 403, "not allowed"},
    {"ecp_encoded_letter", "", "ecp.contoso.com", "/%65cp/", 403, "not allowed"},
    {"ecp_double_slash", "", "ecp.contoso.com", "//ecp/", 403, "not allowed"},
    {"ecp_dot_dot", "", "ecp.contoso.com", "/owa/../ecp/", 403, "not allowed"},
    {"ecp_encoded_dot_dot", "", "ecp.contoso.com", "/owa/%2e%2e/ecp/", 403, "not allowed"},
    {"ecp_parameter", "", "ecp.contoso.com", "/ecp;x/", 403, "not allowed"},
    {"ecp_no_slash", "", "ecp.contoso.com", "/ecp", 403, "not allowed"},
    {"ecp_query", "", "ecp.contoso.com", "/ecp?x=/owa", 403, "not allowed"},
    {"powershell_case", "", "ecp.contoso.com", "/powershell?serializationLevel=Full", 403, "not allowed"},
    {"ecp_absolute_form", "", "ecp.contoso.com", "https://ecp.contoso.com/%45CP/", 403, "not allowed"},
    {"ecp_encoded_slash", "", "ecp.contoso.com", "/ecp%2f", 400, "encoded \"/\""},
    {"ecp_encoded_slash_upper", "", "ecp.contoso.com", "/x%2F..%2Fecp/", 400, "encoded"},
    {"ecp_encoded_backslash", "", "ecp.contoso.com", "/owa%5c..%5cecp/", 400, "encoded"},
    {"ecp_backslash", "", "ecp.contoso.com", "/owa\\..\\ecp/", 400, "backslash"},
    {"ecp_nul", "", "ecp.contoso.com", "/ecp%00.js", 400, "NUL"},
    {"ecp_overlong_utf8", "", "ecp.contoso.com", "/%c0%afecp/", 400, "UTF-8"},
    {"ecp_invalid_utf8", "", "ecp.contoso.com", "/%e9cp/", 400, "UTF-8"},
    {"ecp_double_encoding", "", "ecp.contoso.com", "/%252e%252e/ecp/", 400, "double"},
    {"ecp_broken_encoding", "", "ecp.contoso.com", "/ecp%g1/", 400, "broken"},
    {"ecp_above_root", "", "ecp.contoso.com", "/../ecp/", 400, "above the root"},
    {"other_path_same_host", "", "ecp.contoso.com", "/owa/", 0, "wild_root"},

    // A Host that is not a host: 400, whatever the SNI.
    {"bad_host_space", "", "mail contoso.com", "/", 400, "invalid Host \"mail contoso.com\""},
    {"bad_host_userinfo", "mail.contoso.com", "user@mail.contoso.com", "/", 400, "invalid Host"},
    {"bad_host_port_letters", "", "mail.contoso.com:https", "/", 400, "invalid Host"},
    {"bad_host_two_ports", "", "mail.contoso.com:443:443", "/", 400, "invalid Host"},
    {"bad_host_empty_label", "", "mail..contoso.com", "/", 400, "invalid Host"},
    {"bad_host_wildcard", "", "*.contoso.com", "/", 400, "invalid Host"},
    {"bad_host_unclosed_bracket", "", "[2001:db8::1", "/", 400, "invalid Host"},
    {"bad_host_ipv6_unbracketed", "", "2001:db8::1", "/", 400, "invalid Host"},
    {"bad_host_after_bracket", "", "[2001:db8::1]mail.contoso.com", "/", 400, "invalid Host"},
    {"bad_host_name_in_brackets", "", "[mail.contoso.com]", "/", 400, "invalid Host"},
    {"bad_host_ipv4_in_brackets", "", "[10.0.0.5]", "/", 400, "invalid Host"},
    {"bad_host_ipv6_zone", "", "[fe80::1%25eth0]", "/", 400, "invalid Host"},
    {"bad_host_only_port", "mail.contoso.com", ":443", "/", 400, "invalid Host"},
    {"bad_host_long_label", "", "a123456789012345678901234567890123456789012345678901234567890123.contoso.com", "/",
     400, "invalid Host"},
    {"bad_host_userinfo_of_absolute_form", "", "mail.contoso.com@evil.example",
     "https://mail.contoso.com@evil.example/", 400, "invalid Host"},

    // The certificate the SNI chose covers the Host: forwarded, including
    // another name it covers (HTTP/2 connection coalescing).
    {"same_as_sni", "mail.contoso.com", "mail.contoso.com", "/owa", 0, "exact_owa"},
    {"same_as_sni_other_spelling", "MAIL.contoso.com.", "mail.contoso.com:443", "/owa", 0, "exact_owa"},
    {"coalesced_san", "mail.contoso.com", "autodiscover.contoso.com", "/owa/auth", 0, "wild_owa_auth"},
    {"coalesced_wildcard", "www.fabrikam.com", "owa.fabrikam.com", "/", 0, "any_root"},
    {"coalesced_wildcard_case", "www.fabrikam.com", "OWA.Fabrikam.com:443", "/mapi", 0, "any_mapi"},
    // Not covered: 421, the client opens a connection for that name.
    {"not_covered", "mail.contoso.com", "owa.contoso.com", "/owa", 421,
     "host \"owa.contoso.com\" is not served by the certificate for \"mail.contoso.com\""},
    {"not_covered_other_domain", "mail.contoso.com", "www.fabrikam.com", "/", 421, "www.fabrikam.com"},
    {"wildcard_not_two_labels", "www.fabrikam.com", "a.b.fabrikam.com", "/", 421, "a.b.fabrikam.com"},
    {"wildcard_not_the_parent", "www.fabrikam.com", "fabrikam.com", "/", 421, "fabrikam.com"},
    {"not_covered_ipv4", "mail.contoso.com", "10.0.0.5", "/", 421, "10.0.0.5"},
    {"not_covered_ipv6", "mail.contoso.com", "[2001:db8::1]:443", "/", 421, "2001:db8::1"},
    {"not_covered_absolute_form", "mail.contoso.com", "owa.contoso.com", "https://owa.contoso.com/owa", 421,
     "owa.contoso.com"},
    // An unknown SNI got the default certificate (mail): its own name
    // passes (the client took that certificate for it), others only when
    // the certificate covers them.
    {"default_cert_own_sni", "unknown.example.com", "unknown.example.com", "/", 0, "any_root"},
    {"default_cert_covered", "unknown.example.com", "mail.contoso.com", "/", 0, "exact_root"},
    {"default_cert_not_covered", "unknown.example.com", "other.example.com", "/", 421, "other.example.com"},
    // No SNI: nothing to be misdirected from.
    {"no_sni_any_host", "", "www.tailspin.com", "/", 0, "any_root"},
    // HTTP/1.0 without Host: the SNI names the host.
    {"no_host_uses_sni", "mail.contoso.com", "", "/owa", 0, "exact_owa"},
    {"no_host_uses_sni_normalised", "AutoDiscover.Contoso.com.", "", "/", 0, "wild_root"},
};

INSTANTIATE_TEST_SUITE_P(Cases, Decision, ::testing::ValuesIn(status_cases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST_F(Routing, AbsoluteFormAuthorityOverridesHost) {
  // As the HTTP/1.1 session calls it (RFC 9112 3.2.2): the target's
  // authority, when it has one, is the host, and it is checked against the
  // certificate like a Host field.
  auto as_h1 = [](std::string_view host_field, std::string_view target) {
    const std::string_view authority = authority_of(target);
    return route(authority.empty() ? host_field : authority, target, "mail.contoso.com");
  };
  Routed routed = as_h1("www.fabrikam.com", "https://MAIL.contoso.com/owa/");
  EXPECT_EQ(pool_of(routed), "exact_owa");
  EXPECT_EQ(routed.host, "mail.contoso.com");
  routed = as_h1("mail.contoso.com", "https://www.fabrikam.com/owa/");
  EXPECT_EQ(routed.status, 421) << routed.detail;
  routed = as_h1("mail.contoso.com", "https://mail.contoso.com:443@evil.example/owa/");
  EXPECT_EQ(routed.status, 400) << routed.detail;
}

TEST_F(Routing, NoHostTakesTheSniAsHost) {
  const Routed routed = route("", "/", "Mail.Contoso.com");
  EXPECT_EQ(routed.status, 0) << routed.detail;
  EXPECT_EQ(routed.host, "mail.contoso.com");
}

TEST_F(Routing, NoRouteIs404) {
  Routed routed = route("mail.contoso.com", "/ecp/", "mail.contoso.com", "narrow");
  EXPECT_EQ(routed.status, 404);
  EXPECT_EQ(routed.detail, "no route for mail.contoso.com/ecp/");
  EXPECT_EQ(routed.route, nullptr);

  routed = route("autodiscover.contoso.com", "/owa", "mail.contoso.com", "narrow");
  EXPECT_EQ(routed.status, 404) << routed.detail;

  routed = route("mail.contoso.com", "/OWA/", "mail.contoso.com", "narrow");
  EXPECT_EQ(routed.status, 0) << routed.detail;
}

TEST_F(Routing, RefusalsComeInOrder) {
  // An invalid Host is refused before the certificate is asked about it,
  // and a misdirected request before routing: a client is told to go
  // elsewhere rather than that nothing is here.
  EXPECT_EQ(route("bad host", "/nothing", "mail.contoso.com", "narrow").status, 400);
  EXPECT_EQ(route("www.fabrikam.com", "/nothing", "mail.contoso.com", "narrow").status, 421);
  EXPECT_EQ(route("autodiscover.contoso.com", "/nothing", "mail.contoso.com", "narrow").status, 404);
}

TEST_F(Routing, RouteWithoutPoolIs503) {
  const Routed routed = route("mail.contoso.com", "/", "mail.contoso.com", "nopool");
  EXPECT_EQ(routed.status, 503);
  EXPECT_EQ(routed.detail, "route has no pool");
  EXPECT_NE(routed.route, nullptr);
  EXPECT_EQ(routed.pool, nullptr);
}

TEST_F(Routing, LongValuesAreShortenedInTheDetail) {
  const std::string host(300, '!');
  const Routed routed = route(host, "/");
  EXPECT_EQ(routed.status, 400);
  EXPECT_LT(routed.detail.size(), 250u);
  EXPECT_NE(routed.detail.find("..."), std::string::npos);
}

}  // namespace
}  // namespace gatehouse::proxy::l7
