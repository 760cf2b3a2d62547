// Checks that need the whole file -- unique names, references between tables,
// keys that only make sense in some modes -- and the defaults that depend on
// other tables (a listener's certificates, its ALPN).

#include <algorithm>
#include <map>

#include "conf/assert.h"
#include "conf/checks.h"
#include "conf/loader.h"

namespace gatehouse::conf::detail {
namespace {

template <class T>
std::string reference_problem(std::string_view kind, std::string_view name, const std::vector<T>& items) {
  std::string message = "no [[" + std::string(kind) + "]] named \"" + std::string(name) + "\"";
  std::vector<std::string_view> names;
  for (auto& item : items)
    if (!item.name.empty()) names.push_back(item.name);
  if (auto close = closest_match(name, names); !close.empty())
    return message + "; did you mean \"" + std::string(close) + "\"?";
  if (names.empty()) return message + "; there is none in this file";
  std::string defined;
  for (auto known : names) defined += (defined.empty() ? "\"" : ", \"") + std::string(known) + "\"";
  return message + "; defined: " + defined;
}

template <class T>
std::size_t index_of(const std::vector<T>& items, const T* item) {
  return static_cast<std::size_t>(item - items.data());
}

}  // namespace

void Loader::validate() {
  check_names();
  for (std::size_t i = 0; i < config_.listeners.size(); ++i) check_listener(config_.listeners[i], listener_origins_[i]);
  for (std::size_t i = 0; i < config_.routes.size(); ++i) check_route(config_.routes[i], route_origins_[i]);
  for (std::size_t i = 0; i < config_.pools.size(); ++i) check_pool(config_.pools[i], pool_origins_[i]);
  for (std::size_t i = 0; i < config_.listeners.size(); ++i) check_pool_users(i);
  for (std::size_t i = 0; i < config_.deny_rules.size(); ++i) check_deny_rule(config_.deny_rules[i], deny_origins_[i]);

  if (config_.listeners.empty() && result_.errors.empty())
    error(Origin{}, "listener", "the file has no [[listener]], so there is nothing to serve; add one");
  for (std::size_t i = 0; i < config_.listeners.size(); ++i) {
    const Listener& listener = config_.listeners[i];
    const Origin& origin = listener_origins_[i];
    bool routed = std::any_of(config_.routes.begin(), config_.routes.end(),
                              [&](const Route& route) { return route.listener == listener.name; });
    if (routed || listener.name.empty() || origin.invalid.contains("mode") || listener.mode == ListenerMode::redirect)
      continue;
    if (listener.mode == ListenerMode::l7)
      warning(origin, "", "no [[route]] names this listener, so every request gets 404");
    else if (listener.pool.empty())
      error(origin, "pool",
            "this " + std::string(to_string(listener.mode)) + " listener forwards nowhere: set pool = \"NAME\" " +
                "or add a [[route]] with listener = \"" + listener.name + "\"");
  }
}

void Loader::check_names() {
  auto unique = [this](auto& items, const std::vector<Origin>& origins, std::string_view kind) {
    std::map<std::string_view, std::size_t> first;
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (items[i].name.empty()) continue;
      auto [it, inserted] = first.emplace(items[i].name, i);
      if (!inserted)
        error(origins[i], "name",
              "duplicate name: " + origins[it->second].label + " is already defined at line " +
                  std::to_string(items[it->second].line) + "; give each [[" + std::string(kind) + "]] its own name");
    }
  };
  unique(config_.certificates, certificate_origins_, "certificate");
  unique(config_.listeners, listener_origins_, "listener");
  unique(config_.servers, server_origins_, "server");
  unique(config_.pools, pool_origins_, "pool");

  // Port 0 asks the kernel for a fresh port each time, so it never collides.
  std::map<std::string, std::size_t> binds;
  for (std::size_t i = 0; i < config_.listeners.size(); ++i) {
    const Listener& listener = config_.listeners[i];
    if (!listener_origins_[i].valid("bind") || listener.bind.port == 0) continue;
    auto [it, inserted] = binds.emplace(listener.bind.to_string(), i);
    if (!inserted)
      error(listener_origins_[i], "bind",
            listener.bind.to_string() + " is already bound by " + listener_origins_[it->second].label + " (line " +
                std::to_string(config_.listeners[it->second].line) + "); use another address or port");
  }
}

void Loader::check_listener(Listener& listener, const Origin& origin) {
  if (!listener.pool.empty() && !config_.find_pool(listener.pool))
    error(origin, "pool", reference_problem("pool", listener.pool, config_.pools));
  if (origin.invalid.contains("mode")) return;  // mode-specific checks would only guess

  check_starttls(listener, origin);
  if (listener.mode == ListenerMode::redirect) {
    if (!listener.pool.empty()) error(origin, "pool", "a redirect listener forwards nothing; remove pool");
    if (listener.proxy_protocol != ProxyProtocol::none)
      error(origin, "proxy_protocol", "a redirect listener connects to no backend; remove proxy_protocol");
  }
  if (listener.mode == ListenerMode::passthrough || listener.mode == ListenerMode::tcp ||
      listener.mode == ListenerMode::redirect) {
    check_unterminated_listener(listener, origin);
    return;
  }
  if (listener.mode == ListenerMode::l7) check_l7_listener(listener, origin);
  check_listener_certificates(listener, origin);
  check_client_certificates(listener, origin);
  check_alpn(listener, origin);
}

void Loader::check_starttls(const Listener& listener, const Origin& origin) {
  if (listener.starttls != StartTls::none && listener.mode != ListenerMode::l4)
    error(origin, "starttls",
          "starttls is for l4 listeners, which terminate TLS after the protocol's STARTTLS; this one is " +
              std::string(to_string(listener.mode)) + ": use mode = \"l4\", or remove starttls");
  if (listener.starttls == StartTls::none && !listener.greeting_name.empty())
    error(origin, "greeting_name",
          "greeting_name is the name a starttls listener greets with; set starttls = \"smtp\", \"imap\" or "
          "\"pop3\", or remove it");
}

// passthrough and tcp listeners relay the client's bytes as they came.
void Loader::check_unterminated_listener(Listener& listener, const Origin& origin) {
  const std::pair<std::string_view, bool> tls_keys[] = {
      {"certificates", !listener.certificates.empty()},
      {"default_certificate", !listener.default_certificate.empty()},
      {"strict_sni", listener.strict_sni},
      {"tls", origin.has("tls")},  // no "off" value: any tls key is a misunderstanding here
      {"alpn", !listener.alpn.empty()},
      {"client_certificates", listener.client_certificates != ClientCertificates::none},
      {"client_ca", !listener.client_ca.empty()},
      {"client_crl", !listener.client_crl.empty()},
      {"client_verify_depth", origin.has("client_verify_depth")},
  };
  const std::string mode(to_string(listener.mode));
  for (auto [key, set] : tls_keys)
    if (set && origin.valid(key))
      error(origin, key,
            "a " + mode + " listener does not terminate TLS, so " + std::string(key) +
                " has no effect; remove it, or use mode = " +
                (listener.mode == ListenerMode::redirect ? "\"l7\" to serve HTTPS" : "\"l4\" to terminate TLS") +
                " here");
  // It serves no certificate: these stay empty.
  listener.certificates.clear();
  listener.default_certificate.clear();
  listener.alpn.clear();
}

void Loader::check_l7_listener(const Listener& listener, const Origin& origin) {
  if (!listener.pool.empty())
    error(origin, "pool",
          "pool is only for l4, passthrough and tcp listeners; an l7 listener sends requests to "
          "pools through [[route]] tables, so move it to a route");
  if (listener.proxy_protocol != ProxyProtocol::none)
    error(origin, "proxy_protocol",
          "proxy_protocol is only for l4, passthrough and tcp listeners; an l7 listener "
          "passes the client address in X-Forwarded-For and Forwarded");
}

// A listener that terminates TLS serves every certificate of the file unless
// it names some, and the first of its certificates unless it names a default.
void Loader::check_listener_certificates(Listener& listener, const Origin& origin) {
  if (config_.certificates.empty()) {
    error(origin, "mode",
          "an " + std::string(to_string(listener.mode)) +
              " listener terminates TLS, but the file has no [[certificate]]; add one "
              "(gatehouse cert new makes a self-signed one) or use mode = \"passthrough\"");
    return;
  }
  if (origin.invalid.contains("certificates")) return;
  for (std::size_t i = 0; i < listener.certificates.size(); ++i)
    if (!config_.find_certificate(listener.certificates[i]))
      error(origin, "certificates[" + std::to_string(i) + "]",
            reference_problem("certificate", listener.certificates[i], config_.certificates));
  if (listener.certificates.empty())
    for (auto& certificate : config_.certificates) listener.certificates.push_back(certificate.name);
  auto& names = listener.certificates;
  // Given, or every certificate of the file, of which there is at least one.
  GH_ASSERT(!names.empty());
  if (listener.default_certificate.empty()) listener.default_certificate = names.front();
  else if (std::find(names.begin(), names.end(), listener.default_certificate) == names.end())
    error(origin, "default_certificate",
          "\"" + listener.default_certificate +
              "\" is not one of this listener's certificates; add it to "
              "certificates or name one of them");
}

void Loader::check_client_certificates(const Listener& listener, const Origin& origin) {
  if (listener.client_certificates != ClientCertificates::none && listener.client_ca.empty() &&
      !origin.invalid.contains("client_ca"))
    error(origin, "client_certificates",
          "client certificates need client_ca = \"PEM bundle of the CAs that issue "
          "them\"; add it, or set client_certificates = \"none\"");
  if (listener.client_certificates == ClientCertificates::none) {
    if (!listener.client_ca.empty())
      warning(origin, "client_ca", "client_ca is unused because client_certificates = \"none\"");
    if (!listener.client_crl.empty())
      warning(origin, "client_crl", "client_crl is unused because client_certificates = \"none\"");
    if (origin.has("client_verify_depth"))
      warning(origin, "client_verify_depth", "client_verify_depth is unused because client_certificates = \"none\"");
  }
}

void Loader::check_alpn(Listener& listener, const Origin& origin) {
  if (!origin.has("alpn") && listener.mode == ListenerMode::l7) listener.alpn = {"h2", "http/1.1"};
  if (listener.mode == ListenerMode::l7 && origin.valid("alpn"))
    for (std::size_t i = 0; i < listener.alpn.size(); ++i)
      if (listener.alpn[i] != "h2" && listener.alpn[i] != "http/1.1")
        error(origin, "alpn[" + std::to_string(i) + "]",
              "an l7 listener speaks only \"h2\" and \"http/1.1\"; use mode = \"l4\" to offer \"" + listener.alpn[i] +
                  "\"");
}

void Loader::check_route(Route& route, const Origin& origin) {
  if (!route.pool.empty() && !config_.find_pool(route.pool))
    error(origin, "pool", reference_problem("pool", route.pool, config_.pools));
  if (route.listener.empty()) return;
  const Listener* listener = config_.find_listener(route.listener);
  if (!listener) {
    error(origin, "listener", reference_problem("listener", route.listener, config_.listeners));
    return;
  }
  const Origin& listener_origin = listener_origins_[index_of(config_.listeners, listener)];
  if (listener_origin.invalid.contains("mode")) return;
  if (!route.redirect.empty() && listener->mode != ListenerMode::l7 && listener->mode != ListenerMode::redirect)
    error(origin, "redirect",
          "redirect answers HTTP requests, so it is for routes on l7 and redirect listeners; " + listener_origin.label +
              " is " + std::string(to_string(listener->mode)));
  if (listener->mode == ListenerMode::redirect) {
    if (!route.pool.empty() && origin.valid("pool"))
      error(origin, "pool",
            "a redirect listener speaks plain HTTP and forwards nothing; give this route redirect = \"https://...\" "
            "or move it to an l7 listener");
    if (route.affinity != Affinity::none)
      error(origin, "affinity", "a redirect route picks no server, so affinity has no effect; remove it");
    return;
  }
  if (listener->mode == ListenerMode::l7) return;
  std::string why = " only applies to routes on l7 listeners; " + listener_origin.label + " is " +
                    std::string(to_string(listener->mode)) + ", which routes by SNI (hosts) only";
  if (origin.valid("paths")) error(origin, "paths", "paths" + why + "; remove it");
  if (route.affinity == Affinity::cookie)
    error(origin, "affinity", "affinity = \"cookie\"" + why + "; use \"source_ip\"");
  if (listener->mode == ListenerMode::tcp && !route.hosts.empty() && origin.valid("hosts"))
    error(origin, "hosts",
          "a tcp listener sees no TLS, so it has no SNI to route by; remove hosts (a route without hosts "
          "carries affinity and idle_timeout for every connection), or use mode = \"passthrough\"");
}

// The pools a listener can send a connection to: its pool, its routes'
// pools, and down their fallback chains.
std::vector<const Pool*> Loader::reached_pools(const Listener& listener) const {
  std::vector<const Pool*> reached;
  auto reach = [&](const std::string& name) {
    for (const Pool* p = config_.find_pool(name);
         p != nullptr && std::find(reached.begin(), reached.end(), p) == reached.end();
         p = config_.find_pool(p->fallback))
      reached.push_back(p);
  };
  reach(listener.pool);
  for (const Route& route : config_.routes)
    if (route.listener == listener.name) reach(route.pool);
  return reached;
}

// A pool's TLS must fit how each listener that reaches it relays: a
// passthrough listener adds no TLS, and only a starttls listener knows the
// protocol whose STARTTLS a starttls pool speaks.
void Loader::check_pool_users(std::size_t index) {
  const Listener& listener = config_.listeners[index];
  const Origin& origin = listener_origins_[index];
  if (listener.name.empty() || origin.invalid.contains("mode") || origin.invalid.contains("starttls")) return;
  const std::string who = origin.label + " (mode = \"" + std::string(to_string(listener.mode)) + "\")";
  for (const Pool* pool : reached_pools(listener)) {
    const Origin& pool_origin = pool_origins_[index_of(config_.pools, pool)];
    auto once = [&](std::string_view key, std::string message) {
      if (pool_reports_.insert(pool->name + "." + std::string(key)).second) error(pool_origin, key, std::move(message));
    };
    if (pool_origin.invalid.contains("tls")) continue;
    if (listener.mode == ListenerMode::passthrough && pool->tls != BackendTls::plain)
      once("tls", "this pool is used by " + who +
                      ", which relays the client's own TLS unchanged; set tls = \"plain\" (Gatehouse adds no TLS "
                      "of its own there)");
    if (pool->starttls && listener.starttls == StartTls::none)
      once("starttls", "starttls = true is for pools of l4 listeners with starttls; " + who +
                           " sends connections here; remove starttls or use another pool");
    if (!pool->starttls || listener.starttls == StartTls::none) continue;
    auto [it, first] = pool_protocols_.emplace(pool->name, listener.starttls);
    if (!first && it->second != listener.starttls)
      once("starttls", "starttls listeners of different protocols (" + std::string(to_string(it->second)) + " and " +
                           std::string(to_string(listener.starttls)) +
                           ") use this pool, but its servers speak one; give each protocol its own pool");
  }
  mail_warnings(listener, origin);
}

// What `check` tells an operator of a mail listener.
void Loader::mail_warnings(const Listener& listener, const Origin& origin) {
  if (listener.starttls == StartTls::smtp)
    for (const Pool* pool : reached_pools(listener))
      if (pool->tls != BackendTls::verify)
        warning(origin, "pool",
                "SMTP STARTTLS listener sends mail to pool \"" + pool->name + "\", whose servers are not verified " +
                    "(tls = \"" + std::string(to_string(pool->tls)) +
                    "\"): mail and credentials can be read or changed on that path; set tls = \"verify\" with " +
                    "pins (gatehouse cert pin) or ca");
  if (listener.bind.port == 25 && (listener.mode == ListenerMode::l4 || listener.mode == ListenerMode::l7))
    warning(origin, "bind",
            "information: terminating TLS on port 25 hides the Exchange server's certificate from sending "
            "servers, which breaks Domain Security (mutual TLS) and hybrid mail flow's certificate matching; "
            "use mode = \"tcp\" (or \"passthrough\") to keep SMTP TLS end to end");
}

void Loader::check_deny_rule(const DenyRule& rule, const Origin& origin) {
  if (!rule.listener.empty()) {
    const Listener* listener = config_.find_listener(rule.listener);
    if (listener == nullptr) error(origin, "listener", reference_problem("listener", rule.listener, config_.listeners));
    else if (listener->mode != ListenerMode::l7 && listener->mode != ListenerMode::redirect)
      error(origin, "listener",
            "deny rules look at HTTP requests, so they apply to l7 and redirect listeners; \"" + rule.listener +
                "\" is " + std::string(to_string(listener->mode)) + " (use allow/deny on its routes)");
  }
  const bool condition = !rule.hosts.empty() || !rule.paths.empty() || !rule.url.empty() || !rule.header_name.empty();
  if (!condition && origin.invalid.empty())
    error(origin, "", "a deny rule without hosts, paths, url or header would refuse every request; add a condition");
}

std::string Loader::fallback_cycle(const Pool& pool) const {
  // Reported once per cycle: at the pool of the cycle that comes first in
  // the file (a pool that only leads into a cycle is fixed with it).
  std::vector<const Pool*> chain{&pool};
  for (const Pool* p = config_.find_pool(pool.fallback); p != nullptr; p = config_.find_pool(p->fallback)) {
    const auto seen = std::find(chain.begin(), chain.end(), p);
    if (seen == chain.end()) {
      chain.push_back(p);
      continue;
    }
    if (*seen != &pool) return {};
    for (const Pool* member : chain)
      if (index_of(config_.pools, member) < index_of(config_.pools, &pool)) return {};
    std::string text;
    for (const Pool* member : chain) text += member->name + " -> ";
    return text + pool.name;
  }
  return {};
}

void Loader::check_pool(const Pool& pool, const Origin& origin) {
  std::vector<const Server*> servers;
  for (std::size_t i = 0; i < pool.servers.size(); ++i) {
    const auto& name = pool.servers[i];
    std::string key = "servers[" + std::to_string(i) + "]";
    if (std::find(pool.servers.begin(), pool.servers.begin() + static_cast<std::ptrdiff_t>(i), name) !=
        pool.servers.begin() + static_cast<std::ptrdiff_t>(i))
      error(origin, key, "server \"" + name + "\" is listed twice; list it once (use weight to send it more)");
    else if (const Server* server = config_.find_server(name)) servers.push_back(server);
    else error(origin, key, reference_problem("server", name, config_.servers));
  }

  if (!pool.fallback.empty()) {
    if (pool.fallback == pool.name)
      error(origin, "fallback", "a pool cannot fall back to itself; name another [[pool]] or remove fallback");
    else if (!config_.find_pool(pool.fallback))
      error(origin, "fallback", reference_problem("pool", pool.fallback, config_.pools));
    else if (const std::string cycle = fallback_cycle(pool); !cycle.empty())
      error(origin, "fallback",
            "the fallback chain " + cycle + " comes back to a pool it left; end the chain at a pool without fallback");
  }

  if (origin.invalid.contains("tls")) return;
  if (pool.starttls && pool.tls == BackendTls::plain)
    error(origin, "starttls",
          "starttls = true upgrades the server connection to TLS, but tls = \"plain\" says no TLS; set tls = "
          "\"verify\" (with pins or ca), or starttls = false to talk to the server in plain text");
  if (pool.starttls && (pool.health.kind == HealthKind::tls || pool.health.kind == HealthKind::http))
    error(origin, "health.kind",
          "the servers of a starttls pool speak plain text first, so a \"" +
              std::string(pool.health.kind == HealthKind::tls ? "tls" : "http") +
              "\" probe cannot succeed; use kind = \"tcp\"");
  if (pool.tls == BackendTls::verify && pool.ca.empty() && !origin.invalid.contains("ca")) {
    for (const Server* server : servers) {
      if (!server->pin.empty() || server_origins_[index_of(config_.servers, server)].invalid.contains("pin")) continue;
      error(origin, "servers",
            "server \"" + server->name + "\" has no pin and pool \"" + pool.name +
                "\" has no ca, so its certificate cannot be verified; set pin (gatehouse cert pin HOST:PORT prints "
                "it) or ca, or tls = \"insecure\"");
    }
  }
  if (pool.tls == BackendTls::insecure)
    warning(origin, "tls",
            "tls = \"insecure\": backend certificates are not verified, so anyone on the path can "
            "impersonate the servers; set pin on each server or ca, and tls = \"verify\"");
  if (pool.tls != BackendTls::verify && !pool.ca.empty())
    warning(origin, "ca", "ca is unused with tls = \"" + std::string(to_string(pool.tls)) + "\"");
  if (!pool.local_site.empty() &&
      std::none_of(servers.begin(), servers.end(), [&](const Server* s) { return s->site == pool.local_site; }))
    warning(origin, "local_site",
            "no server of this pool has site = \"" + pool.local_site + "\", so local preference never applies");
}

}  // namespace gatehouse::conf::detail
