// Cookie affinity without a socket: the cookie read from a request's Cookie
// fields, its signed value made and checked by the generation, the
// Set-Cookie a response gets, and the server a request with a cookie goes
// to. A cookie that cannot be trusted or names a server that cannot take
// the request is ignored: the request is balanced as if it had none.

#include "proxy/l7/affinity_cookie.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <string>

#include "proxy/runtime/connection.h"
#include "tests/proxy/test_support.h"

namespace gatehouse::proxy::l7 {
namespace {

using test::TempDir;

// ---- reading the cookie

struct ValueCase {
  const char* name;
  http::Fields fields;
  const char* value;
};

void PrintTo(const ValueCase& c, std::ostream* out) { *out << c.name; }

class CookieValue : public ::testing::TestWithParam<ValueCase> {};

TEST_P(CookieValue, FindsTheNamedCookie) {
  const ValueCase& c = GetParam();
  EXPECT_EQ(cookie_value(c.fields, kAffinityCookie), c.value);
}

const ValueCase value_cases[] = {
    {"alone", {{"Cookie", "GatehouseAffinity=mbx01.abc"}}, "mbx01.abc"},
    {"among_others", {{"Cookie", "a=1; GatehouseAffinity=mbx01.abc; z=2"}}, "mbx01.abc"},
    {"last", {{"Cookie", "a=1; b=2; GatehouseAffinity=mbx01.abc"}}, "mbx01.abc"},
    {"no_space_after_semicolon", {{"Cookie", "a=1;GatehouseAffinity=mbx01.abc;z=2"}}, "mbx01.abc"},
    {"several_spaces", {{"Cookie", "a=1;   GatehouseAffinity=mbx01.abc"}}, "mbx01.abc"},
    {"value_with_equals", {{"Cookie", "GatehouseAffinity=a=b"}}, "a=b"},
    {"second_cookie_field", {{"Cookie", "a=1"}, {"Cookie", "GatehouseAffinity=mbx02.def"}}, "mbx02.def"},
    {"field_name_any_case", {{"COOKIE", "GatehouseAffinity=mbx01.abc"}}, "mbx01.abc"},
    {"first_of_two", {{"Cookie", "GatehouseAffinity=first; GatehouseAffinity=second"}}, "first"},
    {"among_other_fields", {{"Host", "mail.contoso.com"}, {"Cookie", "x=y; GatehouseAffinity=v"}}, "v"},
    // Not it.
    {"absent", {{"Cookie", "a=1; b=2"}}, ""},
    {"no_cookie_field", {{"Host", "mail.contoso.com"}}, ""},
    {"name_is_case_sensitive", {{"Cookie", "gatehouseaffinity=mbx01.abc"}}, ""},
    {"longer_name", {{"Cookie", "GatehouseAffinityX=mbx01.abc"}}, ""},
    {"name_as_suffix", {{"Cookie", "XGatehouseAffinity=mbx01.abc"}}, ""},
    {"name_as_value", {{"Cookie", "a=GatehouseAffinity=mbx01.abc"}}, ""},
    {"without_equals", {{"Cookie", "GatehouseAffinity"}}, ""},
    {"empty_value", {{"Cookie", "GatehouseAffinity="}}, ""},
    {"set_cookie_is_not_a_request_cookie", {{"Set-Cookie", "GatehouseAffinity=mbx01.abc"}}, ""},
    {"other_field_with_cookie_in_name", {{"X-Cookie", "GatehouseAffinity=mbx01.abc"}}, ""},
};

INSTANTIATE_TEST_SUITE_P(Cases, CookieValue, ::testing::ValuesIn(value_cases),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- the signed value, Set-Cookie, and where the request goes

std::string config_text(const TempDir& dir) {
  const auto mail = test::make_certificate(dir, "mail", "mail.contoso.com");
  std::string text = R"(
[[certificate]]
name = "mail"
cert = ")" + mail.cert.string() +
                     R"("
key = ")" + mail.key.string() +
                     R"("

[[listener]]
name = "https"
bind = "127.0.0.1:0"

[[route]]
listener = "https"
paths = ["/owa"]
pool = "owa"
affinity = "cookie"

[[route]]
listener = "https"
paths = ["/ecp"]
pool = "ecp"
affinity = "cookie"

[[pool]]
name = "owa"
servers = ["mbx01", "mbx02", "mbx03"]
fallback = "archive"
tls = "plain"

[[pool]]
name = "ecp"
servers = ["mbx02", "mbx01"]
tls = "plain"

[[pool]]
name = "archive"
servers = ["arc01", "arc02"]
tls = "plain"
)";
  for (const char* server : {"mbx01", "mbx02", "mbx03", "arc01", "arc02"})
    text += "\n[[server]]\nname = \"" + std::string(server) + "\"\naddress = \"127.0.0.1:9\"\n";
  return text;
}

class Affinity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    text_ = config_text(*dir_);
    generation_ = test::build_generation(*dir_, text_);
  }
  static void TearDownTestSuite() {
    generation_.reset();
    delete dir_;
    dir_ = nullptr;
  }
  void TearDown() override {
    for (const auto& pool : generation_->pools())
      for (const auto& member : pool.members) {
        member->drained = false;
        member->healthy = true;
      }
  }

  static const PoolRuntime& pool(std::string_view name) {
    const PoolRuntime* p = generation_->pool(name);
    if (p == nullptr) throw std::runtime_error("no pool " + std::string(name));
    return *p;
  }
  static http::Fields with_cookie(const std::string& value) {
    return {{"Cookie", "a=1; " + std::string(kAffinityCookie) + "=" + value + "; z=2"}};
  }
  // The server of `pool` a request carrying `fields` goes to, as forward()
  // and connect_backend() decide it: one pick, nothing tried yet.
  static std::optional<std::size_t> pick(const PoolRuntime& pool, const http::Fields& fields) {
    ConnectTarget target;
    target.pool = &pool;
    target.preferred = affinity_cookie_server(*generation_, pool, fields);
    const PoolRuntime& effective = *generation_->effective_pool(&pool);
    return pick_server(target, effective, generation_->worker_pool(0, &effective), balancer::Tried{});
  }

  static inline TempDir* dir_ = nullptr;
  static inline std::string text_;
  static inline std::shared_ptr<Generation> generation_;
};

TEST_F(Affinity, CookieNamesTheServerAndRoundTrips) {
  const PoolRuntime& owa = pool("owa");
  std::set<std::string> macs;
  for (std::size_t i = 0; i < owa.servers.size(); ++i) {
    const std::string value = generation_->affinity_cookie(owa, i);
    const std::string name = owa.servers[i]->config->name;
    EXPECT_THAT(value, ::testing::MatchesRegex(name + "\\.[0-9a-f]{24}"));
    macs.insert(value.substr(name.size() + 1));
    EXPECT_EQ(generation_->affinity_server(owa, value), i);
    EXPECT_EQ(affinity_cookie_server(*generation_, owa, with_cookie(value)), i);
  }
  EXPECT_EQ(macs.size(), owa.servers.size()) << "each server has its own MAC";
}

TEST_F(Affinity, UntrustedValuesAreIgnored) {
  const PoolRuntime& owa = pool("owa");
  const std::string good = generation_->affinity_cookie(owa, 1);  // mbx02
  const std::string mac = good.substr(good.find('.') + 1);
  std::string flipped = good;
  flipped.back() = flipped.back() == '0' ? '1' : '0';
  std::string upper = good;
  for (auto& c : upper)
    if (c >= 'a' && c <= 'f') c = static_cast<char>(c - 'a' + 'A');

  const std::string other_key = [] {
    // The same config under another key (another instance without a
    // shared ticket_keys file).
    auto other = test::build_generation(*dir_, text_);
    return other->affinity_cookie(*other->pool("owa"), 1);
  }();
  ASSERT_NE(other_key, good);

  const std::pair<const char*, std::string> cases[] = {
      {"mac_changed", flipped},
      {"mac_cut", good.substr(0, good.size() - 1)},
      {"mac_longer", good + "0"},
      {"mac_upper_case", upper},
      {"mac_of_another_server", "mbx01." + mac},
      {"unknown_server", "mbx09." + mac},
      {"server_not_in_pool", generation_->affinity_cookie(pool("archive"), 0)},
      {"another_key", other_key},
      {"no_mac", "mbx02"},
      {"empty_mac", "mbx02."},
      {"only_dot", "."},
      {"empty", ""},
  };
  for (const auto& [name, value] : cases) {
    EXPECT_EQ(generation_->affinity_server(owa, value), std::nullopt) << name << ": " << value;
    EXPECT_EQ(affinity_cookie_server(*generation_, owa, with_cookie(value)), std::nullopt) << name;
  }
  EXPECT_EQ(affinity_cookie_server(*generation_, owa, {}), std::nullopt);
  EXPECT_EQ(affinity_cookie_server(*generation_, owa, {{"Cookie", "gatehouseaffinity=" + good}}), std::nullopt);
}

TEST_F(Affinity, InstancesSharingTicketKeysAgree) {
  const auto keys = dir_->write("tickets.bin", std::string(80, 'k'));
  const auto a = test::build_generation(*dir_, text_, {}, TicketKeys::from_file(keys));
  const auto b = test::build_generation(*dir_, text_, {}, TicketKeys::from_file(keys));
  const auto value = a->affinity_cookie(*a->pool("owa"), 2);
  EXPECT_EQ(b->affinity_cookie(*b->pool("owa"), 2), value);
  EXPECT_EQ(b->affinity_server(*b->pool("owa"), value), 2u);
  // And a reload (a new generation on the same keys) keeps every cookie.
  EXPECT_EQ(affinity_cookie_server(*b, *b->pool("owa"), with_cookie(value)), 2u);

  const auto other = dir_->write("other-tickets.bin", std::string(80, 'x'));
  const auto c = test::build_generation(*dir_, text_, {}, TicketKeys::from_file(other));
  EXPECT_EQ(c->affinity_server(*c->pool("owa"), value), std::nullopt);
}

TEST_F(Affinity, OneCookieHoldsInEveryPoolOfItsServer) {
  // Every route with affinity = "cookie" sets the same cookie (one name,
  // Path=/): a client going between /owa and /ecp, pools of the same
  // servers, must stay on its server rather than be balanced anew, and be
  // sent a new cookie, at every switch.
  const PoolRuntime& owa = pool("owa");
  const PoolRuntime& ecp = pool("ecp");  // mbx02, mbx01: other indexes
  const http::Fields from_owa = with_cookie(generation_->affinity_cookie(owa, 0));
  const auto in_ecp = affinity_cookie_server(*generation_, ecp, from_owa);
  ASSERT_EQ(in_ecp, 1u) << "mbx01's cookie from /owa names mbx01 in ecp";
  EXPECT_EQ(affinity_set_cookie(*generation_, ecp, &ecp, 1, in_ecp), "");
  EXPECT_EQ(affinity_cookie_server(*generation_, owa, with_cookie(generation_->affinity_cookie(ecp, 1))), 0u);
  // A server the pool does not have is balanced as without a cookie.
  EXPECT_EQ(affinity_cookie_server(*generation_, ecp, with_cookie(generation_->affinity_cookie(owa, 2))), std::nullopt);
}

TEST_F(Affinity, SetCookieOnlyWhenTheServerChanges) {
  const PoolRuntime& owa = pool("owa");
  const std::string expected =
      "GatehouseAffinity=" + generation_->affinity_cookie(owa, 1) + "; Path=/; Secure; HttpOnly";
  // No cookie, or one for a server that could not take the request.
  EXPECT_EQ(affinity_set_cookie(*generation_, owa, &owa, 1, std::nullopt), expected);
  EXPECT_EQ(affinity_set_cookie(*generation_, owa, &owa, 1, 0), expected);
  // The cookie already names the server that answered.
  EXPECT_EQ(affinity_set_cookie(*generation_, owa, &owa, 1, 1), "");
  // Served by the fallback pool: the route's pool's cookie stays as it was.
  EXPECT_EQ(affinity_set_cookie(*generation_, owa, &pool("archive"), 1, std::nullopt), "");
  EXPECT_EQ(affinity_set_cookie(*generation_, owa, &pool("archive"), 0, 0), "");
  // The value it sets is the one the next request is recognised by.
  const std::string set = affinity_set_cookie(*generation_, owa, &owa, 2, std::nullopt);
  const std::string value = set.substr(kAffinityCookie.size() + 1, set.find(';') - kAffinityCookie.size() - 1);
  EXPECT_EQ(affinity_cookie_server(*generation_, owa, with_cookie(value)), 2u);
}

TEST_F(Affinity, SetCookieAttributes) {
  const PoolRuntime& owa = pool("owa");
  const std::string set = affinity_set_cookie(*generation_, owa, &owa, 0, std::nullopt);
  // For every path of the site (routes of one host share it), over TLS
  // only, out of scripts' reach; a session cookie: no Domain, no expiry.
  EXPECT_THAT(set, ::testing::StartsWith("GatehouseAffinity=mbx01."));
  EXPECT_THAT(set, ::testing::EndsWith("; Path=/; Secure; HttpOnly"));
  EXPECT_THAT(set, ::testing::Not(::testing::HasSubstr("Domain")));
  EXPECT_THAT(set, ::testing::Not(::testing::HasSubstr("Expires")));
  EXPECT_THAT(set, ::testing::Not(::testing::HasSubstr("Max-Age")));
}

TEST_F(Affinity, ValidCookieKeepsTheRequestOnItsServer) {
  const PoolRuntime& owa = pool("owa");
  for (std::size_t i = 0; i < owa.servers.size(); ++i) {
    const http::Fields fields = with_cookie(generation_->affinity_cookie(owa, i));
    for (int n = 0; n < 6; ++n) EXPECT_EQ(pick(owa, fields), i) << "request " << n;
  }
}

TEST_F(Affinity, WithoutAUsableCookieTheRequestIsBalanced) {
  const PoolRuntime& owa = pool("owa");
  std::string tampered = generation_->affinity_cookie(owa, 0);
  tampered.back() = tampered.back() == '0' ? '1' : '0';
  for (const http::Fields& fields :
       {http::Fields{}, with_cookie(tampered), with_cookie("mbx09.0123456789abcdef01234567")}) {
    std::set<std::size_t> picked;
    for (int n = 0; n < 6; ++n) {
      const auto server = pick(owa, fields);
      ASSERT_TRUE(server.has_value());
      picked.insert(*server);
    }
    EXPECT_EQ(picked.size(), owa.servers.size()) << "round robin over every server";
  }
}

TEST_F(Affinity, DrainedOrDownServerNamedByTheCookieIsAvoided) {
  const PoolRuntime& owa = pool("owa");
  const http::Fields fields = with_cookie(generation_->affinity_cookie(owa, 1));
  owa.members[1]->drained = true;
  std::set<std::size_t> picked;
  for (int n = 0; n < 6; ++n) {
    const auto server = pick(owa, fields);
    ASSERT_TRUE(server.has_value()) << "a drained server's cookie must not fail the request";
    picked.insert(*server);
  }
  EXPECT_EQ(picked, (std::set<std::size_t>{0, 2}));

  owa.members[1]->drained = false;
  owa.members[1]->healthy = false;
  for (int n = 0; n < 6; ++n) EXPECT_NE(pick(owa, fields), 1u);

  // Back: the same cookie brings the client back to it.
  owa.members[1]->healthy = true;
  EXPECT_EQ(pick(owa, fields), 1u);
}

TEST_F(Affinity, TriedServerIsNotPickedAgain) {
  // A retry after the cookie's server failed goes elsewhere.
  const PoolRuntime& owa = pool("owa");
  ConnectTarget target;
  target.pool = &owa;
  target.preferred = 2;
  balancer::Tried tried;
  tried.add(2);
  for (int n = 0; n < 6; ++n) EXPECT_NE(pick_server(target, owa, generation_->worker_pool(0, &owa), tried), 2u);
  target.preferred = 99;  // out of range: balanced, no crash
  EXPECT_TRUE(pick_server(target, owa, generation_->worker_pool(0, &owa), balancer::Tried{}).has_value());
}

TEST_F(Affinity, FallbackPoolIgnoresTheCookie) {
  // The cookie's index is the route's pool's; once every server of it is
  // gone the fallback pool is balanced as if there were no cookie.
  const PoolRuntime& owa = pool("owa");
  const http::Fields fields = with_cookie(generation_->affinity_cookie(owa, 1));
  for (const auto& member : owa.members) member->drained = true;
  ASSERT_EQ(generation_->effective_pool(&owa), &pool("archive"));
  std::set<std::size_t> picked;
  for (int n = 0; n < 4; ++n) {
    const auto server = pick(owa, fields);
    ASSERT_TRUE(server.has_value());
    picked.insert(*server);
  }
  EXPECT_EQ(picked, (std::set<std::size_t>{0, 1}));
}

}  // namespace
}  // namespace gatehouse::proxy::l7
