#pragma once
// Sites ([[server]] site = "dc1") as the admin endpoint acts on them: every
// server of a site, in every pool of a generation, drained or enabled at
// once (POST /sites/{site}/drain|enable), the site's state for /status, and
// the drain of whole sites carried over a reload to servers the new config
// adds to them. Called on the control thread.

#include <boost/json/array.hpp>

#include <cstddef>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/runtime/generation.h"

namespace gatehouse::proxy {

// Sites drained as a whole, by name; the running server keeps it across
// generations.
using SiteSet = std::set<std::string, std::less<>>;

// One server as a member of one pool.
struct SiteMember {
  const PoolRuntime* pool = nullptr;
  std::size_t index = 0;  // in pool->servers and pool->members
  const std::string& pool_name() const { return pool->config->name; }
  const std::string& server_name() const { return pool->servers[index]->config->name; }
  PoolMember& member() const { return *pool->members[index]; }
};

// Every (pool, server) pair whose server is at `site`, pools in file order.
// Servers without a site belong to none ("" matches nothing).
std::vector<SiteMember> site_members(const Generation& g, std::string_view site);

// The sites of the servers of g's pools, sorted.
std::vector<std::string> site_names(const Generation& g);

// Drains (or enables) every member of `site`; returns those whose drain
// changed. Enabling also clears servers drained one by one.
std::vector<SiteMember> set_site_drained(const Generation& g, std::string_view site, bool drained);

// "active" (no member drained), "drained" (every member; also a site
// without members) or "partly drained".
std::string_view site_state(const std::vector<SiteMember>& members);

// For a new generation after next.inherit_state(previous): drains every
// member of a site in `drained` that `previous` did not have at that site
// (a server new to the pool, or moved there from another site). Members
// that were there keep the state they inherited, so a server enabled one
// by one stays enabled. Returns how many members it drained.
std::size_t apply_site_drains(const Generation& next, const Generation& previous, const SiteSet& drained);

// /status.json "sites": every site of g and every site in `drained`, sorted,
// each {"name", "state", "drained_as_site", "servers": [{"pool", "server",
// "healthy", "drained"}]}.
boost::json::array sites_json(const Generation& g, const SiteSet& drained);

}  // namespace gatehouse::proxy
