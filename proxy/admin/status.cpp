// What the admin endpoint shows: one JSON document (pools by site with
// health and load, certificates with days to expiry, listeners, recent
// problems), an HTML rendering of it, and the Prometheus text exposition.

#include <boost/json.hpp>

#include <chrono>
#include <map>
#include <set>
#include <sstream>

#include "proxy/admin/admin.h"
#include "proxy/runtime/connection.h"
#include "proxy/runtime/metrics.h"
#include "proxy/runtime/worker.h"

namespace gatehouse::proxy {

namespace json = boost::json;

namespace {

double days_left(sni::Clock::time_point not_after) {
  return std::chrono::duration<double>(not_after - sni::Clock::now()).count() / 86400.0;
}

std::string iso_date(sni::Clock::time_point t) {
  const std::time_t tt = sni::Clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
  return buf;
}

// A certificate's OCSP staple as /status shows it: "" when it has no `ocsp`.
std::string ocsp_state(const Generation& g, const std::string& certificate) {
  const StapleSlot* slot = g.staple_slot(certificate);
  if (slot == nullptr) return {};
  const auto staple = slot->get();
  if (!staple) return "no response";
  if (sni::Clock::now() >= staple->next_update) return "expired, not stapled";
  const std::time_t tt = sni::Clock::to_time_t(staple->next_update);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return std::string("good until ") + buf;
}

std::string html_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string label(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string str(const json::value& v) {
  if (v.is_string()) return std::string(v.as_string());
  return json::serialize(v);
}

}  // namespace

namespace {

// The [[deny]] rules in force, with their hits in this generation.
json::array deny_rules_json(const Generation& g) {
  json::array rules;
  for (const auto& rule : g.deny_rules()) {
    const conf::DenyRule& c = *rule->config;
    json::array hosts, paths;
    for (const auto& host : c.hosts) hosts.push_back(json::string(host));
    for (const auto& path : c.paths) paths.push_back(json::string(path));
    json::object o{{"rule", rule->number},      {"line", c.line},
                   {"listener", c.listener},    {"hosts", std::move(hosts)},
                   {"paths", std::move(paths)}, {"url", c.url},
                   {"header", c.header_name},   {"match", c.header_match},
                   {"status", c.status},        {"hits", rule->hits.load(std::memory_order_relaxed)}};
    rules.push_back(std::move(o));
  }
  return rules;
}

// The listeners, and (into `certificates`) every certificate one serves.
json::array listeners_json(const AdminControl& server, const Generation& g,
                           std::map<std::string, const sni::LoadedCertificate*>& certificates) {
  json::array listeners;
  for (const auto& l : g.listeners()) {
    json::object o{{"name", l.config->name},
                   {"mode", std::string(conf::to_string(l.config->mode))},
                   {"starttls", std::string(conf::to_string(l.config->starttls))},
                   {"pool", l.config->pool},
                   {"open_connections", l.open->load(std::memory_order_relaxed)},
                   {"address", to_string(server.bound(l.config->name))}};
    if (l.config->starttls != conf::StartTls::none) o["greeting_name"] = l.greeting_name;
    json::array certs;
    if (l.tls)
      for (const auto& c : l.tls->index().certificates()) {
        certs.push_back(json::string(c->name));
        certificates[c->name] = c.get();
      }
    o["certificates"] = std::move(certs);
    listeners.push_back(std::move(o));
  }
  return listeners;
}

json::array certificates_json(const Generation& g,
                              const std::map<std::string, const sni::LoadedCertificate*>& certificates) {
  json::array certs;
  for (const auto& [name, c] : certificates) {
    json::array names;
    for (const auto& n : c->names) names.push_back(json::string(n));
    certs.push_back(json::object{{"name", name},
                                 {"subject", c->info.subject},
                                 {"names", std::move(names)},
                                 {"thumbprint", c->info.thumbprint},
                                 {"not_after", iso_date(c->info.not_after)},
                                 {"days_left", static_cast<std::int64_t>(days_left(c->info.not_after))},
                                 {"ocsp", ocsp_state(g, name)}});
  }
  return certs;
}

// Server `i` of pool `p`, with its health and load.
json::object member_json(const PoolRuntime& p, std::size_t i) {
  const ServerRuntime& s = *p.servers[i];
  PoolMember& m = *p.members[i];
  std::string last_check, last_error, presented;
  {
    std::lock_guard lock(m.mutex);
    last_check = m.last_check;
    last_error = m.last_error;
    presented = m.presented_thumbprint;
  }
  const bool healthy = m.healthy.load();
  const bool drained = m.drained.load();
  json::object so{{"name", s.config->name},
                  {"site", s.config->site},
                  {"address", s.config->address.to_string()},
                  {"weight", s.config->weight},
                  {"healthy", healthy},
                  {"drained", drained},
                  {"state", drained   ? "drained"
                            : healthy ? "up"
                                      : "down"},
                  {"active", m.active.load()},
                  {"connections", m.connections.load()},
                  {"failures", m.failures.load()},
                  {"last_check", last_check},
                  {"last_error", last_error}};
  if (!presented.empty()) so["presented_thumbprint"] = presented;
  if (!p.front_thumbprints.empty()) {
    // Whether Windows logins with Extended Protection can pass: the
    // server must present what clients see on the front end.
    const bool same = !presented.empty() && p.front_thumbprints.size() == 1 && p.front_thumbprints[0] == presented;
    so["extended_protection"] = presented.empty() ? "unknown" : same ? "same certificate" : "different certificate";
  }
  return so;
}

json::object pool_json(const Generation& g, const PoolRuntime& p) {
  json::array servers;
  for (std::size_t i = 0; i < p.servers.size(); ++i) servers.push_back(member_json(p, i));
  const conf::Health& health = p.config->health;
  json::object h{{"kind", health.kind == conf::HealthKind::none  ? "none"
                          : health.kind == conf::HealthKind::tcp ? "tcp"
                          : health.kind == conf::HealthKind::tls ? "tls"
                                                                 : "http"}};
  if (health.kind == conf::HealthKind::http) h["path"] = health.path;
  return json::object{{"name", p.config->name},
                      {"balance", std::string(conf::to_string(p.config->balance))},
                      {"local_site", p.config->local_site},
                      {"fallback", p.config->fallback},
                      {"tls", std::string(conf::to_string(p.config->tls))},
                      {"health", std::move(h)},
                      {"available", p.any_available()},
                      {"serving", g.effective_pool(&p)->config->name},
                      {"servers", std::move(servers)}};
}

}  // namespace

json::value status_json(const AdminControl& server) {
  const Generation& g = *server.current();
  json::object out;
  out["generation"] = g.number();
  out["config"] = g.config().file.string();
  out["workers"] = server.worker_count();
  out["active_connections"] = server.active_connections();

  std::map<std::string, const sni::LoadedCertificate*> certificates;
  out["listeners"] = listeners_json(server, g, certificates);
  out["deny_rules"] = deny_rules_json(g);
  out["certificates"] = certificates_json(g, certificates);
  json::array pools;
  for (const auto& p : g.pools()) pools.push_back(pool_json(g, p));
  out["pools"] = std::move(pools);
  out["sites"] = sites_json(g, server.drained_sites());

  const MetricTotals totals = server.metric_totals();
  out["handshakes"] = json::object{{"full", totals.handshakes_full}, {"resumed", totals.handshakes_resumed}};
  json::array problems;
  for (auto& line : metrics().recent_problems()) problems.push_back(json::string(line));
  out["recent_problems"] = std::move(problems);
  return out;
}

namespace {

constexpr const char* kHtmlHead =
    "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">"
    "<title>Gatehouse status</title><style>"
    "body{font-family:'DejaVu Sans',sans-serif;margin:1.5em;color:#222}"
    "h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.4em}h3{font-size:1em;margin:.8em 0 .3em}"
    "table{border-collapse:collapse;margin-bottom:.8em}td,th{border:1px solid #ccc;padding:.25em "
    ".6em;text-align:left}"
    "th{background:#f0f0f0}.up{background:#d9f2d9}.down{background:#f8d0d0;font-weight:bold}.drained{background:#"
    "f4e6b8}"
    ".site-active{background:#d9f2d9}.site-drained{background:#f4e6b8}.muted{color:#777}.pool{border:1px solid "
    "#bbb;padding:.4em .8em;margin:.6em 0;border-radius:4px}"
    "</style></head><body>";

// The heading of a pool's box: balance, site, health check, and where its
// traffic goes when none of its servers is available.
void pool_heading_html(std::ostream& h, const json::object& p) {
  h << "<div class=\"pool\" id=\"pool-" << html_escape(str(p.at("name"))) << "\"><h3>Pool "
    << html_escape(str(p.at("name"))) << " <span class=\"muted\">(" << html_escape(str(p.at("balance")));
  if (!str(p.at("local_site")).empty()) h << ", local site " << html_escape(str(p.at("local_site")));
  const auto& health = p.at("health").as_object();
  h << ", health " << html_escape(str(health.at("kind")));
  if (health.contains("path")) h << " " << html_escape(str(health.at("path")));
  h << ")</span>";
  if (!p.at("available").as_bool()) h << " <span class=\"down\">NO SERVER AVAILABLE</span>";
  if (str(p.at("serving")) != str(p.at("name")))
    h << " &rarr; traffic goes to fallback <b>" << html_escape(str(p.at("serving"))) << "</b>";
  h << "</h3>";
}

void member_row_html(std::ostream& h, const std::string& site, const json::object& sv) {
  const std::string state = str(sv.at("state"));
  h << "<tr class=\"" << state << "\"><td>" << html_escape(site.empty() ? "-" : site) << "</td><td>"
    << html_escape(str(sv.at("name"))) << "</td><td>" << html_escape(str(sv.at("address"))) << "</td><td>"
    << (state == "up"     ? "UP"
        : state == "down" ? "DOWN"
                          : "DRAINED")
    << "</td><td>" << str(sv.at("active")) << "</td><td>" << str(sv.at("connections")) << "</td><td>"
    << str(sv.at("failures")) << "</td><td>" << html_escape(str(sv.at("last_check"))) << "</td><td>"
    << html_escape(str(sv.at("last_error"))) << "</td><td>"
    << html_escape(sv.contains("extended_protection") ? str(sv.at("extended_protection")) : "-") << "</td></tr>";
}

void pool_html(std::ostream& h, const json::object& p) {
  pool_heading_html(h, p);
  std::map<std::string, std::vector<const json::object*>> by_site;
  for (const auto& sv : p.at("servers").as_array()) by_site[str(sv.as_object().at("site"))].push_back(&sv.as_object());
  h << "<table><tr><th>site</th><th>server</th><th>address</th><th>state</th><th>active</th><th>connections</th>"
       "<th>failures</th><th>last check</th><th>last error</th><th>Extended Protection</th></tr>";
  for (const auto& [site, servers] : by_site)
    for (const json::object* sv : servers) member_row_html(h, site, *sv);
  h << "</table></div>";
}

// A site's row: its state, whether it was drained as a whole, and how many
// of its (pool, server) pairs are drained and healthy.
void sites_html(std::ostream& h, const json::array& sites) {
  if (sites.empty()) return;
  h << "<h2>Sites</h2><table><tr><th>site</th><th>state</th><th>drained as a site</th><th>drained</th>"
       "<th>healthy</th></tr>";
  for (const auto& sv : sites) {
    const auto& site = sv.as_object();
    const auto& servers = site.at("servers").as_array();
    std::size_t drained = 0, healthy = 0;
    for (const auto& m : servers) {
      drained += m.as_object().at("drained").as_bool() ? 1 : 0;
      healthy += m.as_object().at("healthy").as_bool() ? 1 : 0;
    }
    const std::string state = str(site.at("state"));
    h << "<tr class=\"" << (state == "active" ? "site-active" : "site-drained") << "\"><td>"
      << html_escape(str(site.at("name"))) << "</td><td>" << html_escape(state) << "</td><td>"
      << (site.at("drained_as_site").as_bool() ? "yes" : "no") << "</td><td>" << drained << " of " << servers.size()
      << "</td><td>" << healthy << " of " << servers.size() << "</td></tr>";
  }
  h << "</table>";
}

void certificates_html(std::ostream& h, const json::array& certificates) {
  h << "<h2>Certificates</h2><table><tr><th>name</th><th>names</th><th>thumbprint</th><th>expires</th>"
       "<th>days left</th><th>OCSP staple</th></tr>";
  for (const auto& cv : certificates) {
    const auto& c = cv.as_object();
    std::string names;
    for (const auto& n : c.at("names").as_array()) names += (names.empty() ? "" : ", ") + str(n);
    const auto days = c.at("days_left").to_number<std::int64_t>();
    h << "<tr" << (days < 30 ? " class=\"down\"" : "") << "><td>" << html_escape(str(c.at("name"))) << "</td><td>"
      << html_escape(names) << "</td><td>" << html_escape(str(c.at("thumbprint"))) << "</td><td>"
      << html_escape(str(c.at("not_after"))) << "</td><td>" << days << "</td><td>" << html_escape(str(c.at("ocsp")))
      << "</td></tr>";
  }
  h << "</table>";
}

void listeners_html(std::ostream& h, const json::array& listeners) {
  h << "<h2>Listeners</h2><table><tr><th>name</th><th>mode</th><th>address</th><th>open</th><th>pool</th>"
       "<th>certificates</th></tr>";
  for (const auto& lv : listeners) {
    const auto& l = lv.as_object();
    std::string certs;
    for (const auto& c : l.at("certificates").as_array()) certs += (certs.empty() ? "" : ", ") + str(c);
    std::string mode = str(l.at("mode"));
    if (!str(l.at("starttls")).empty()) mode += " + STARTTLS " + str(l.at("starttls"));
    h << "<tr><td>" << html_escape(str(l.at("name"))) << "</td><td>" << html_escape(mode) << "</td><td>"
      << html_escape(str(l.at("address"))) << "</td><td>" << l.at("open_connections").as_uint64() << "</td><td>"
      << html_escape(str(l.at("pool"))) << "</td><td>" << html_escape(certs) << "</td></tr>";
  }
  h << "</table>";
}

void deny_rules_html(std::ostream& h, const json::array& rules) {
  if (rules.empty()) return;
  h << "<h2>Deny rules</h2><table><tr><th>rule</th><th>line</th><th>listener</th><th>hosts</th><th>paths</th>"
       "<th>url</th><th>header</th><th>status</th><th>hits</th></tr>";
  for (const auto& rv : rules) {
    const auto& r = rv.as_object();
    auto joined = [&](const char* key) {
      std::string text;
      for (const auto& v : r.at(key).as_array()) text += (text.empty() ? "" : ", ") + str(v);
      return text;
    };
    const std::string header = str(r.at("header")).empty() ? "" : str(r.at("header")) + " ~ " + str(r.at("match"));
    h << "<tr><td>" << r.at("rule").as_uint64() << "</td><td>" << r.at("line").as_int64() << "</td><td>"
      << html_escape(str(r.at("listener"))) << "</td><td>" << html_escape(joined("hosts")) << "</td><td>"
      << html_escape(joined("paths")) << "</td><td>" << html_escape(str(r.at("url"))) << "</td><td>"
      << html_escape(header) << "</td><td>" << r.at("status").as_int64() << "</td><td>" << r.at("hits").as_uint64()
      << "</td></tr>";
  }
  h << "</table>";
}

void problems_html(std::ostream& h, const json::array& problems) {
  h << "<h2>Recent problems</h2>";
  if (problems.empty()) {
    h << "<p class=\"muted\">none</p>";
    return;
  }
  h << "<table>";
  for (auto it = problems.rbegin(); it != problems.rend(); ++it)
    h << "<tr><td><code>" << html_escape(str(*it)) << "</code></td></tr>";
  h << "</table>";
}

}  // namespace

std::string status_html(const json::value& status) {
  const json::object& s = status.as_object();
  std::ostringstream h;
  h << kHtmlHead;
  h << "<h1>Gatehouse</h1><p>Generation " << str(s.at("generation")) << " &middot; config "
    << html_escape(str(s.at("config"))) << " &middot; " << str(s.at("workers")) << " workers &middot; "
    << str(s.at("active_connections")) << " open connections</p>";
  sites_html(h, s.at("sites").as_array());
  h << "<h2>Pools</h2>";
  for (const auto& pv : s.at("pools").as_array()) pool_html(h, pv.as_object());
  certificates_html(h, s.at("certificates").as_array());
  listeners_html(h, s.at("listeners").as_array());
  deny_rules_html(h, s.at("deny_rules").as_array());
  problems_html(h, s.at("recent_problems").as_array());
  h << "</body></html>\n";
  return h.str();
}

namespace {

// The Prometheus text exposition, one family at a time.
class Exposition {
 public:
  void family(const char* name, const char* type, const char* help) {
    o_ << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
  }
  std::ostream& out() { return o_; }
  std::string text() const { return o_.str(); }

 private:
  std::ostringstream o_;
};

void connection_families(Exposition& e, const AdminControl& server, const MetricTotals& m) {
  std::ostream& o = e.out();
  e.family("gatehouse_connections_total", "counter", "Client connections accepted.");
  o << "gatehouse_connections_total " << m.connections_total << "\n";
  e.family("gatehouse_connections_active", "gauge", "Client connections open now.");
  o << "gatehouse_connections_active " << server.active_connections() << "\n";
  e.family("gatehouse_connections_refused_total", "counter",
           "Client connections closed at accept, by listener and reason (max_connections: the [global] limit; "
           "listener_max_connections: the listener's).");
  for (const auto& [key, n] : m.refusals)
    o << "gatehouse_connections_refused_total{listener=\"" << label(key.first) << "\",reason=\"" << label(key.second)
      << "\"} " << n << "\n";
}

void handshake_families(Exposition& e, const MetricTotals& m) {
  std::ostream& o = e.out();
  const auto failures = metrics().failures();
  e.family("gatehouse_handshakes_total", "counter", "Client TLS handshakes by result.");
  o << "gatehouse_handshakes_total{result=\"full\"} " << m.handshakes_full << "\n";
  o << "gatehouse_handshakes_total{result=\"resumed\"} " << m.handshakes_resumed << "\n";
  std::uint64_t failed = 0;
  for (const auto& [reason, n] : failures) failed += n;
  o << "gatehouse_handshakes_total{result=\"failed\"} " << failed << "\n";
  e.family("gatehouse_handshake_failures_total", "counter", "Failed client TLS handshakes by reason.");
  for (const auto& [reason, n] : failures)
    o << "gatehouse_handshake_failures_total{reason=\"" << label(reason) << "\"} " << n << "\n";
  e.family("gatehouse_sni_total", "counter", "Certificate choices by how the SNI matched.");
  const char* kinds[] = {"exact", "wildcard", "default", "rejected"};
  for (int i = 0; i < 4; ++i) o << "gatehouse_sni_total{match=\"" << kinds[i] << "\"} " << m.sni_hits[i] << "\n";
}

void request_families(Exposition& e, const MetricTotals& m) {
  std::ostream& o = e.out();
  e.family("gatehouse_requests_total", "counter", "HTTP requests by listener, pool and status (0: client went away).");
  for (const auto& [key, n] : m.requests)
    o << "gatehouse_requests_total{listener=\"" << label(std::get<0>(key)) << "\",pool=\"" << label(std::get<1>(key))
      << "\",code=\"" << std::get<2>(key) << "\"} " << n << "\n";
  e.family("gatehouse_request_duration_seconds", "histogram", "HTTP request duration by listener and pool.");
  for (const auto& [key, l] : m.latencies) {
    const std::string labels = "listener=\"" + label(key.first) + "\",pool=\"" + label(key.second) + "\"";
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < kLatencyBuckets.size(); ++i) {
      cumulative += l.buckets[i];
      o << "gatehouse_request_duration_seconds_bucket{" << labels << ",le=\"" << kLatencyBuckets[i] << "\"} "
        << cumulative << "\n";
    }
    o << "gatehouse_request_duration_seconds_bucket{" << labels << ",le=\"+Inf\"} " << l.count << "\n";
    o << "gatehouse_request_duration_seconds_sum{" << labels << "} " << l.sum << "\n";
    o << "gatehouse_request_duration_seconds_count{" << labels << "} " << l.count << "\n";
  }
}

void server_families(Exposition& e, const Generation& g) {
  std::ostream& o = e.out();
  e.family("gatehouse_server_up", "gauge", "1 when the server passes its pool's health checks.");
  for (const auto& p : g.pools())
    for (std::size_t i = 0; i < p.servers.size(); ++i)
      o << "gatehouse_server_up{pool=\"" << label(p.config->name) << "\",server=\"" << label(p.servers[i]->config->name)
        << "\",site=\"" << label(p.servers[i]->config->site) << "\"} " << (p.members[i]->healthy.load() ? 1 : 0)
        << "\n";
  // One series per pool member for each of these.
  auto per_member = [&](const char* name, const char* type, const char* help, auto value) {
    e.family(name, type, help);
    for (const auto& p : g.pools())
      for (std::size_t i = 0; i < p.servers.size(); ++i)
        o << name << "{pool=\"" << label(p.config->name) << "\",server=\"" << label(p.servers[i]->config->name)
          << "\"} " << value(*p.members[i]) << "\n";
  };
  per_member("gatehouse_server_drained", "gauge", "1 when the server is drained by the admin endpoint.",
             [](const PoolMember& m) { return m.drained.load() ? 1 : 0; });
  per_member("gatehouse_server_active", "gauge", "Backend connections in use now.",
             [](const PoolMember& m) { return m.active.load(); });
  per_member("gatehouse_backend_connections_total", "counter", "Backend connections made (this config generation).",
             [](const PoolMember& m) { return m.connections.load(); });
  per_member("gatehouse_backend_failures_total", "counter",
             "Failed backend connects and handshakes (this config generation).",
             [](const PoolMember& m) { return m.failures.load(); });
}

void bound_family(Exposition& e, const Generation& g, const MetricTotals& m) {
  e.family("gatehouse_bound_backend_connections", "gauge",
           "Backend connections private to one client connection (Windows authentication), by pool.");
  // Every pool of this generation, and pools of older generations too while
  // they hold any.
  for (const auto& [pool, n] : m.bound)
    if (n != 0 || g.pool(pool) != nullptr)
      e.out() << "gatehouse_bound_backend_connections{pool=\"" << label(pool) << "\"} " << n << "\n";
}

void certificate_families(Exposition& e, const Generation& g) {
  std::ostream& o = e.out();
  e.family("gatehouse_certificate_expiry_days", "gauge", "Days until each certificate expires.");
  std::set<std::string> seen;
  for (const auto& l : g.listeners()) {
    if (!l.tls) continue;
    for (const auto& c : l.tls->index().certificates())
      if (seen.insert(c->name).second)
        o << "gatehouse_certificate_expiry_days{certificate=\"" << label(c->name) << "\"} "
          << days_left(c->info.not_after) << "\n";
  }
  e.family("gatehouse_ocsp_staple_expiry_seconds", "gauge",
           "Seconds until the stapled OCSP response's nextUpdate (0: nothing is stapled).");
  for (const auto& c : g.config().certificates) {
    const StapleSlot* slot = g.staple_slot(c.name);
    if (slot == nullptr) continue;
    const auto staple = slot->get();
    const double left = staple ? std::chrono::duration<double>(staple->next_update - sni::Clock::now()).count() : 0;
    o << "gatehouse_ocsp_staple_expiry_seconds{certificate=\"" << label(c.name) << "\"} "
      << static_cast<std::int64_t>(std::max(0.0, left)) << "\n";
  }
}

void deny_family(Exposition& e, const Generation& g) {
  if (g.deny_rules().empty()) return;
  e.family("gatehouse_deny_rule_hits_total", "counter",
           "Requests refused by each [[deny]] rule (numbered in file order) since the last reload.");
  for (const auto& rule : g.deny_rules())
    e.out() << "gatehouse_deny_rule_hits_total{rule=\"" << rule->number << "\",line=\"" << rule->config->line << "\"} "
            << rule->hits.load(std::memory_order_relaxed) << "\n";
}

}  // namespace

std::string prometheus_text(const AdminControl& server) {
  const Generation& g = *server.current();
  const MetricTotals totals = server.metric_totals();
  Exposition e;
  e.family("gatehouse_config_generation", "gauge", "Number of the config generation being served.");
  e.out() << "gatehouse_config_generation " << g.number() << "\n";
  connection_families(e, server, totals);
  handshake_families(e, totals);
  request_families(e, totals);
  server_families(e, g);
  bound_family(e, g, totals);
  certificate_families(e, g);
  deny_family(e, g);
  return e.text();
}

}  // namespace gatehouse::proxy
