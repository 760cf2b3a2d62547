// Sites as the admin endpoint acts on them, without a socket: which
// (pool, server) pairs a site has, what draining and enabling it changes,
// the state /status shows, and what a reload does to the drain of a whole
// site: servers it adds to the site come up drained, servers that were there
// keep what they had (one enabled by hand stays enabled).

#include "proxy/admin/sites.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tests/proxy/test_support.h"

namespace gatehouse::proxy {
namespace {

using test::TempDir;

struct Server {
  std::string name;
  std::string site;
};

// Two pools over `servers` (the second without the last server), all on a
// port nobody answers; the servers are never connected here.
std::string config_text(const std::vector<Server>& servers) {
  std::string text = R"(
[[listener]]
name = "tcp"
bind = "127.0.0.1:0"
mode = "tcp"
pool = "owa"
)";
  std::string all, some;
  for (std::size_t i = 0; i < servers.size(); ++i) {
    const Server& s = servers[i];
    text += "\n[[server]]\nname = \"" + s.name + "\"\naddress = \"127.0.0.1:9\"\n";
    if (!s.site.empty()) text += "site = \"" + s.site + "\"\n";
    all += (all.empty() ? "\"" : ", \"") + s.name + "\"";
    if (i + 1 < servers.size()) some += (some.empty() ? "\"" : ", \"") + s.name + "\"";
  }
  text += "\n[[pool]]\nname = \"owa\"\nservers = [" + all + "]\ntls = \"plain\"\n";
  text += "\n[[pool]]\nname = \"mapi\"\nservers = [" + some + "]\ntls = \"plain\"\n";
  return text;
}

std::vector<std::pair<std::string, std::string>> pairs(const std::vector<SiteMember>& members) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const SiteMember& m : members) out.emplace_back(m.pool_name(), m.server_name());
  return out;
}

using Pairs = std::vector<std::pair<std::string, std::string>>;

bool drained(const Generation& g, std::string_view pool, std::string_view server) {
  const PoolRuntime* p = g.pool(pool);
  return p->members[p->index_of(server)]->drained.load();
}

const std::vector<Server> kTwoSites = {{"mbx01", "dc1"}, {"mbx03", "dc2"}, {"lone", ""}, {"mbx02", "dc1"}};

TEST(AdminSites, MembersAreEveryPoolsServersAtTheSite) {
  TempDir dir;
  const auto g = test::build_generation(dir, config_text(kTwoSites));
  EXPECT_EQ(site_names(*g), (std::vector<std::string>{"dc1", "dc2"}));
  EXPECT_EQ(pairs(site_members(*g, "dc1")), (Pairs{{"owa", "mbx01"}, {"owa", "mbx02"}, {"mapi", "mbx01"}}));
  EXPECT_EQ(pairs(site_members(*g, "dc2")), (Pairs{{"owa", "mbx03"}, {"mapi", "mbx03"}}));
  EXPECT_TRUE(site_members(*g, "dc3").empty());
  EXPECT_TRUE(site_members(*g, "").empty()) << "servers without a site are no site";
  EXPECT_TRUE(site_members(*g, "DC1").empty()) << "site names are compared as written";
}

TEST(AdminSites, DrainAndEnableReportWhatChanged) {
  TempDir dir;
  const auto g = test::build_generation(dir, config_text(kTwoSites));
  EXPECT_EQ(site_state(site_members(*g, "dc1")), "active");

  g->pool("mapi")->members[0]->drained = true;  // mbx01 in mapi, by hand
  EXPECT_EQ(site_state(site_members(*g, "dc1")), "partly drained");
  EXPECT_EQ(pairs(set_site_drained(*g, "dc1", true)), (Pairs{{"owa", "mbx01"}, {"owa", "mbx02"}}));
  EXPECT_EQ(site_state(site_members(*g, "dc1")), "drained");
  EXPECT_TRUE(set_site_drained(*g, "dc1", true).empty()) << "draining twice changes nothing";
  EXPECT_FALSE(drained(*g, "owa", "mbx03"));
  EXPECT_FALSE(drained(*g, "owa", "lone"));
  EXPECT_EQ(site_state(site_members(*g, "dc2")), "active");

  // Enabling clears every drain of the site's servers, also one made by hand.
  EXPECT_EQ(pairs(set_site_drained(*g, "dc1", false)), (Pairs{{"owa", "mbx01"}, {"owa", "mbx02"}, {"mapi", "mbx01"}}));
  EXPECT_EQ(site_state(site_members(*g, "dc1")), "active");
}

TEST(AdminSites, ReloadDrainsServersAddedToADrainedSiteOnly) {
  TempDir dir;
  const auto before = test::build_generation(
      dir, config_text({{"mbx01", "dc1"}, {"mbx02", "dc1"}, {"mbx03", "dc2"}, {"mbx04", "dc2"}, {"mbx05", "dc1"}}));
  set_site_drained(*before, "dc1", true);
  before->pool("owa")->members[before->pool("owa")->index_of("mbx02")]->drained = false;  // enabled by hand
  const SiteSet sites{"dc1"};

  // mbx05 now joins mapi too; mbx04 moves from dc2 to dc1; mbx06 is new in dc1.
  const auto after = test::build_generation(dir, config_text({{"mbx01", "dc1"},
                                                              {"mbx02", "dc1"},
                                                              {"mbx03", "dc2"},
                                                              {"mbx04", "dc1"},
                                                              {"mbx05", "dc1"},
                                                              {"mbx06", "dc1"}}));
  after->inherit_state(*before);
  EXPECT_EQ(apply_site_drains(*after, *before, sites), 4u);
  EXPECT_TRUE(drained(*after, "owa", "mbx01"));
  EXPECT_FALSE(drained(*after, "owa", "mbx02")) << "a server enabled by hand stays enabled";
  EXPECT_TRUE(drained(*after, "owa", "mbx04")) << "moved into the drained site";
  EXPECT_TRUE(drained(*after, "mapi", "mbx04"));
  EXPECT_TRUE(drained(*after, "mapi", "mbx05")) << "new to the pool";
  EXPECT_TRUE(drained(*after, "owa", "mbx06")) << "new server";
  EXPECT_FALSE(drained(*after, "owa", "mbx03"));
  EXPECT_EQ(site_state(site_members(*after, "dc1")), "partly drained");

  // Nothing drained as a site: a reload changes nothing.
  const auto again = test::build_generation(dir, config_text({{"mbx07", "dc1"}, {"mbx08", "dc1"}}));
  again->inherit_state(*after);
  EXPECT_EQ(apply_site_drains(*again, *after, {}), 0u);
  EXPECT_FALSE(drained(*again, "owa", "mbx07"));
}

TEST(AdminSites, StatusJsonListsSitesWithTheirServers) {
  TempDir dir;
  const auto g = test::build_generation(dir, config_text(kTwoSites));
  set_site_drained(*g, "dc2", true);
  const SiteSet sites{"dc2", "gone"};  // "gone": drained, then its servers left the config
  const boost::json::array json = sites_json(*g, sites);
  ASSERT_EQ(json.size(), 3u);
  EXPECT_EQ(json[0].at("name").as_string(), "dc1");
  EXPECT_EQ(json[0].at("state").as_string(), "active");
  EXPECT_FALSE(json[0].at("drained_as_site").as_bool());
  EXPECT_EQ(json[0].at("servers").as_array().size(), 3u);
  EXPECT_EQ(json[1].at("name").as_string(), "dc2");
  EXPECT_EQ(json[1].at("state").as_string(), "drained");
  EXPECT_TRUE(json[1].at("drained_as_site").as_bool());
  EXPECT_EQ(json[1].at("servers").at(0).as_object(),
            (boost::json::object{{"pool", "owa"}, {"server", "mbx03"}, {"healthy", true}, {"drained", true}}));
  EXPECT_EQ(json[2].at("name").as_string(), "gone");
  EXPECT_EQ(json[2].at("state").as_string(), "drained");
  EXPECT_TRUE(json[2].at("servers").as_array().empty());
}

}  // namespace
}  // namespace gatehouse::proxy
