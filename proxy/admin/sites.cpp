#include "proxy/admin/sites.h"

#include <boost/json/object.hpp>

#include <map>

#include "proxy/runtime/log.h"

namespace gatehouse::proxy {

std::vector<SiteMember> site_members(const Generation& g, std::string_view site) {
  std::vector<SiteMember> out;
  if (site.empty()) return out;
  for (const auto& pool : g.pools())
    for (std::size_t i = 0; i < pool.servers.size(); ++i)
      if (pool.servers[i]->config->site == site) out.push_back({&pool, i});
  return out;
}

std::vector<std::string> site_names(const Generation& g) {
  SiteSet names;
  for (const auto& pool : g.pools())
    for (const ServerRuntime* server : pool.servers)
      if (!server->config->site.empty()) names.insert(server->config->site);
  return {names.begin(), names.end()};
}

std::vector<SiteMember> set_site_drained(const Generation& g, std::string_view site, bool drained) {
  std::vector<SiteMember> changed;
  for (const SiteMember& m : site_members(g, site))
    if (m.member().drained.exchange(drained) != drained) changed.push_back(m);
  return changed;
}

std::string_view site_state(const std::vector<SiteMember>& members) {
  std::size_t drained = 0;
  for (const SiteMember& m : members)
    if (m.member().drained.load()) ++drained;
  if (drained == members.size()) return "drained";
  return drained == 0 ? "active" : "partly drained";
}

std::size_t apply_site_drains(const Generation& next, const Generation& previous, const SiteSet& drained) {
  std::map<std::string, std::size_t> counts;  // by site
  for (const auto& pool : next.pools()) {
    const PoolRuntime* old = previous.pool(pool.config->name);
    for (std::size_t i = 0; i < pool.servers.size(); ++i) {
      const conf::Server& server = *pool.servers[i]->config;
      if (!drained.contains(server.site)) continue;
      const std::size_t j = old == nullptr ? 0 : old->index_of(server.name);
      const bool was_there = old != nullptr && j < old->servers.size() && old->servers[j]->config->site == server.site;
      if (was_there || pool.members[i]->drained.exchange(true)) continue;
      ++counts[server.site];
    }
  }
  std::size_t total = 0;
  for (const auto& [site, n] : counts) {
    log::info("site_drained", {{"site", site}, {"count", n}, {"by", "reload"}, {"generation", next.number()}});
    total += n;
  }
  return total;
}

boost::json::array sites_json(const Generation& g, const SiteSet& drained) {
  SiteSet names(drained);
  for (auto& name : site_names(g)) names.insert(std::move(name));
  boost::json::array out;
  for (const std::string& name : names) {
    const std::vector<SiteMember> members = site_members(g, name);
    boost::json::array servers;
    for (const SiteMember& m : members)
      servers.push_back(boost::json::object{{"pool", m.pool_name()},
                                            {"server", m.server_name()},
                                            {"healthy", m.member().healthy.load()},
                                            {"drained", m.member().drained.load()}});
    out.push_back(boost::json::object{{"name", name},
                                      {"state", site_state(members)},
                                      {"drained_as_site", drained.contains(name)},
                                      {"servers", std::move(servers)}});
  }
  return out;
}

}  // namespace gatehouse::proxy
