// The lints of `gatehouse check --exchange`: Exchange's long polls, its admin
// surfaces, Autodiscover names, health pages and Windows logins over HTTP/2.

#include "sni/exchange_lints.h"

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <set>
#include <string_view>

#include "sni/extended_protection.h"
#include "sni/hostname.h"
#include "sni/index.h"

namespace gatehouse::sni {
namespace {

// An Exchange virtual directory: as routes store it (lower case) and as
// Exchange spells it.
struct Vdir {
  std::string_view path;
  std::string_view name;
};

// Directories whose requests clients hold open for up to an hour:
// ActiveSync Direct Push (Ping), RPC over HTTP, MAPI over HTTP NotificationWait.
constexpr std::array<Vdir, 3> long_poll_vdirs{
    {{"/microsoft-server-activesync", "/Microsoft-Server-ActiveSync"}, {"/rpc", "/rpc"}, {"/mapi", "/mapi"}}};
constexpr auto long_poll_minimum = std::chrono::minutes(15);

// The Exchange admin center and remote PowerShell.
constexpr std::array<Vdir, 2> admin_vdirs{
    {{"/ecp", "/ecp (the Exchange admin center)"}, {"/powershell", "/powershell (remote PowerShell)"}}};

// The directories with a healthcheck.htm (Managed Availability's probe page).
constexpr std::array<Vdir, 8> health_vdirs{{{"/owa", "/owa"},
                                            {"/ews", "/EWS"},
                                            {"/mapi", "/mapi"},
                                            {"/microsoft-server-activesync", "/Microsoft-Server-ActiveSync"},
                                            {"/oab", "/OAB"},
                                            {"/rpc", "/rpc"},
                                            {"/autodiscover", "/Autodiscover"},
                                            {"/ecp", "/ecp"}}};

constexpr std::string_view autodiscover_label = "autodiscover.";

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

std::string quoted_list(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "\"" : ", \"") + item + "\"";
  return "[" + out + "]";
}

std::string duration_text(conf::Duration d) {
  const auto ms = d.count();
  if (ms % 60000 == 0) return std::to_string(ms / 60000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

// The diagnostic for `key` of a table, or of the table itself (at `line`)
// when the key was not written.
conf::Diagnostic at(const conf::Config& config, const std::string& table, std::string_view key, int line,
                    std::string message) {
  const std::string path = table + "." + std::string(key);
  if (config.key_lines.contains(path)) return {config.file.string(), config.line_of(path), path, std::move(message)};
  return {config.file.string(), line, table, std::move(message)};
}

std::string route_table(std::size_t r) { return "route[" + std::to_string(r) + "]"; }

// The l7 router's path score (Generation::route_http): "=/x" only /x and
// beats every prefix; a prefix matches on a segment boundary.
long path_score(std::string_view pattern, std::string_view path) {
  if (pattern.starts_with('=')) return path == pattern.substr(1) ? std::numeric_limits<long>::max() : -1;
  if (!path.starts_with(pattern)) return -1;
  if (pattern.back() == '/' || path.size() == pattern.size() || path[pattern.size()] == '/')
    return static_cast<long>(pattern.size());
  return -1;
}

// The route a request for `host` and `path` on `listener` goes to, as the l7
// router picks it: best host (exact, wildcard, any), then longest path.
const conf::Route* route_for(const conf::Config& config, std::string_view listener, std::string_view host,
                             std::string_view path) {
  const conf::Route* best = nullptr;
  int best_host = 0;
  long best_path = -1;
  for (const auto& route : config.routes) {
    if (route.listener != listener) continue;
    int host_score = route.hosts.empty() ? 1 : 0;
    for (const auto& pattern : route.hosts) {
      if (pattern == host) host_score = std::max(host_score, 3);
      else if (host_matches(pattern, host)) host_score = std::max(host_score, 2);
    }
    if (host_score == 0 || host_score < best_host) continue;
    long score = -1;
    for (const auto& prefix : route.paths) score = std::max(score, path_score(prefix, path));
    if (score < 0) continue;
    if (host_score > best_host || score > best_path) {
      best = &route;
      best_host = host_score;
      best_path = score;
    }
  }
  return best;
}

enum class Reach { none, explicit_path, through_prefix };

// Whether `route` serves requests for `vdir`: by a path at or below it, or
// by a shorter prefix that wins the routing of the directory on one of its
// hosts (a route without hosts: on a host no route names).
Reach reaches(const conf::Config& config, const conf::Route& route, std::string_view vdir) {
  for (const auto& path : route.paths) {
    const std::string_view bare = std::string_view(path).substr(path.starts_with('=') ? 1 : 0);
    if (bare == vdir || (bare.starts_with(vdir) && bare[vdir.size()] == '/')) return Reach::explicit_path;
  }
  const std::string probe = std::string(vdir) + "/";
  const std::vector<std::string> hosts = route.hosts.empty() ? std::vector<std::string>{""} : route.hosts;
  for (const auto& host : hosts)
    if (route_for(config, route.listener, host, probe) == &route) return Reach::through_prefix;
  return Reach::none;
}

template <std::size_t N>
std::vector<std::string> reached(const conf::Config& config, const conf::Route& route, const std::array<Vdir, N>& vdirs,
                                 bool& through_prefix) {
  std::vector<std::string> names;
  for (const auto& vdir : vdirs) {
    const Reach reach = reaches(config, route, vdir.path);
    if (reach == Reach::none) continue;
    names.emplace_back(vdir.name);
    through_prefix = through_prefix || reach == Reach::through_prefix;
  }
  return names;
}

bool is_l7(const conf::Config& config, const conf::Route& route) {
  const conf::Listener* listener = config.find_listener(route.listener);
  return listener != nullptr && listener->mode == conf::ListenerMode::l7;
}

void long_poll_lints(const conf::Config& config, std::vector<conf::Diagnostic>& out) {
  for (std::size_t r = 0; r < config.routes.size(); ++r) {
    const conf::Route& route = config.routes[r];
    if (!is_l7(config, route)) continue;
    const conf::Listener& listener = *config.find_listener(route.listener);
    const conf::Duration timeout = route.idle_timeout.value_or(listener.idle_timeout);
    if (timeout >= long_poll_minimum) continue;
    bool through = false;
    const std::vector<std::string> held = reached(config, route, long_poll_vdirs, through);
    if (held.empty()) continue;
    std::string message = "route" + (through ? " (paths = " + quoted_list(route.paths) + ")" : std::string()) +
                          " carries " + join(held) + " with an idle_timeout of " + duration_text(timeout);
    if (!route.idle_timeout) message += " (listener " + listener.name + "'s)";
    message +=
        ": ActiveSync Direct Push and RPC/MAPI over HTTP hold requests open for up to an hour, so connections "
        "are cut under them; set idle_timeout = \"65m\" on the route";
    if (through) message += ", or give these directories routes of their own with it";
    out.push_back(route.idle_timeout ? at(config, route_table(r), "idle_timeout", route.line, std::move(message))
                                     : at(config, route_table(r), "paths", route.line, std::move(message)));
  }
}

void admin_lints(const conf::Config& config, std::vector<conf::Diagnostic>& out) {
  for (std::size_t r = 0; r < config.routes.size(); ++r) {
    const conf::Route& route = config.routes[r];
    if (!is_l7(config, route) || !route.allow.empty()) continue;
    bool through = false;
    const std::vector<std::string> open = reached(config, route, admin_vdirs, through);
    if (open.empty()) continue;
    std::string message = "route" + (through ? " (paths = " + quoted_list(route.paths) + ")" : std::string()) +
                          " lets every client address reach " + join(open);
    message +=
        ": add allow = [\"internal ranges\"] to the route (e.g. allow = [\"10.0.0.0/8\"]), giving these "
        "directories a route of their own if other paths share it; allow = [\"0.0.0.0/0\", \"::/0\"] says "
        "every address on purpose";
    out.push_back(at(config, route_table(r), "paths", route.line, std::move(message)));
  }
}

// The certificate an Autodiscover name belongs on: the one serving another
// host of the same mail domain on the listener, else the default.
std::string certificate_for_domain(const conf::Config& config, const conf::Listener& listener, const SniIndex& index,
                                   std::string_view domain, Clock::time_point now) {
  for (const auto& route : config.routes) {
    if (route.listener != listener.name) continue;
    for (const auto& host : route.hosts) {
      if (host != domain && !(host.ends_with(domain) && host[host.size() - domain.size() - 1] == '.')) continue;
      if (const Selection s = index.covering(host, true, now); s.certificate) return s.certificate->name;
    }
  }
  if (index.default_certificate()) return index.default_certificate()->name;
  return listener.certificates.empty() ? std::string() : listener.certificates.front();
}

void autodiscover_listener_lints(const conf::Config& config, const conf::Listener& listener,
                                 const LoadedCertificates& loaded, Clock::time_point now,
                                 std::vector<conf::Diagnostic>& out) {
  std::vector<std::shared_ptr<const LoadedCertificate>> certs;
  for (const auto& name : listener.certificates)
    if (const auto it = loaded.find(name); it != loaded.end()) certs.push_back(it->second);
  const bool default_loaded = loaded.contains(listener.default_certificate);
  const SniIndex index(certs, default_loaded ? listener.default_certificate : std::string(), false);
  for (std::size_t r = 0; r < config.routes.size(); ++r) {
    const conf::Route& route = config.routes[r];
    if (route.listener != listener.name) continue;
    for (const auto& host : route.hosts) {
      if (!host.starts_with(autodiscover_label) || index.covering(host, true, now).certificate) continue;
      const std::string domain = host.substr(autodiscover_label.size());
      const std::string target = certificate_for_domain(config, listener, index, domain, now);
      out.push_back(
          at(config, route_table(r), "hosts", route.line,
             "Outlook and mobile clients look up " + host + " for the mail domain " + domain +
                 ", but no certificate of listener " + listener.name + " covers it: add " + host + " as a SAN to " +
                 (target.empty() ? std::string("a certificate of the listener") : "certificate \"" + target + "\"") +
                 ", or drop the host and publish Autodiscover by the HTTP redirect method or an _autodiscover._tcp." +
                 domain + " SRV record"));
    }
  }
}

void autodiscover_lints(const conf::Config& config, const LoadedCertificates& loaded, Clock::time_point now,
                        std::vector<conf::Diagnostic>& out) {
  for (const auto& listener : config.listeners)
    if (listener.mode == conf::ListenerMode::l7) autodiscover_listener_lints(config, listener, loaded, now, out);
}

void add_once(std::vector<std::string>& list, std::string item) {
  if (std::find(list.begin(), list.end(), item) == list.end()) list.push_back(std::move(item));
}

// What the routes that send to a pool serve: their paths, and the
// healthcheck.htm directories those paths lie in.
struct Served {
  std::vector<std::string> paths;
  std::vector<std::string> vdirs;
};

Served pool_served(const conf::Config& config, const conf::Pool& pool) {
  Served served;
  for (const auto& route : config.routes) {
    if (route.pool != pool.name) continue;
    for (const auto& path : route.paths) {
      add_once(served.paths, path);
      const std::string_view bare = std::string_view(path).substr(path.starts_with('=') ? 1 : 0);
      for (const auto& vdir : health_vdirs)
        if (bare == vdir.path || (bare.starts_with(vdir.path) && bare[vdir.path.size()] == '/'))
          add_once(served.vdirs, std::string(vdir.name));
    }
  }
  return served;
}

void health_lints(const conf::Config& config, std::vector<conf::Diagnostic>& out) {
  for (const auto& pool : config.pools) {
    if (pool.health.kind != conf::HealthKind::http || pool.health.path != "/") continue;
    const Served served = pool_served(config, pool);
    std::string message =
        "health probes \"/\", which IIS answers while an Exchange protocol's application pool is down: probe ";
    if (served.vdirs.empty()) {
      message +=
          "/<vdir>/healthcheck.htm of the protocol the pool serves (/owa/healthcheck.htm, /EWS/healthcheck.htm, "
          "/mapi/healthcheck.htm, ...)";
    } else {
      message += served.vdirs.front() + "/healthcheck.htm";
    }
    if (served.vdirs.size() > 1 || served.paths.size() > served.vdirs.size())
      message += "; the pool serves " + join(served.paths) +
                 ": a pool per protocol, each probing its own directory, lets a server be out for one protocol "
                 "and in for the others";
    const std::string table = "pool \"" + pool.name + "\"";
    const std::string health = table + ".health";
    if (config.key_lines.contains(health + ".path")) {
      out.push_back(at(config, health, "path", pool.line, std::move(message)));
    } else {
      out.push_back(at(config, table, "health", pool.line, std::move(message)));
    }
  }
}

void h2_lints(const conf::Config& config, std::vector<conf::Diagnostic>& out) {
  for (const auto& listener : config.listeners) {
    const std::string table = "listener \"" + listener.name + "\"";
    // A written alpn is the operator's choice; only the default is pointed out.
    if (listener.mode != conf::ListenerMode::l7 || config.key_lines.contains(table + ".alpn")) continue;
    if (std::find(listener.alpn.begin(), listener.alpn.end(), "h2") == listener.alpn.end()) continue;
    std::vector<std::string> paths;
    for (const auto& route : config.routes) {
      if (route.listener != listener.name || !carries_windows_auth(route.paths)) continue;
      for (const auto& path : route.paths)
        if (carries_windows_auth({path}) && std::find(paths.begin(), paths.end(), path) == paths.end())
          paths.push_back(path);
    }
    if (paths.empty()) continue;
    out.push_back(
        {config.file.string(), listener.line, table,
         "offers h2 (the l7 default) and its routes (" + join(paths) +
             ") carry Windows logins: a request with NTLM or Negotiate over h2 is answered HTTP_1_1_REQUIRED "
             "and the client retries it over HTTP/1.1; set alpn = [\"http/1.1\"] if old clients mishandle that, "
             "or write alpn = [\"h2\", \"http/1.1\"] to keep h2"});
  }
}

}  // namespace

std::vector<conf::Diagnostic> exchange_lints(const conf::Config& config, const LoadedCertificates& loaded,
                                             Clock::time_point now) {
  std::vector<conf::Diagnostic> out;
  long_poll_lints(config, out);
  admin_lints(config, out);
  autodiscover_lints(config, loaded, now, out);
  health_lints(config, out);
  h2_lints(config, out);
  return out;
}

}  // namespace gatehouse::sni
