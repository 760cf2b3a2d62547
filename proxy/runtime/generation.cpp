#include "proxy/runtime/generation.h"

#include <malloc.h>
#include <openssl/crypto.h>
#include <openssl/hmac.h>

#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <stdexcept>

#include "proxy/runtime/log.h"
#include "proxy/runtime/metrics.h"
#include "proxy/tls/ticket_keys.h"
#include "sni/certificate.h"
#include "sni/extended_protection.h"
#include "sni/hostname.h"
#include "sni/ocsp.h"

namespace gatehouse::proxy {

namespace {

std::vector<boost::asio::ip::tcp::endpoint> resolve(const conf::Server& server) {
  boost::asio::io_context io;
  boost::asio::ip::tcp::resolver resolver(io);
  boost::system::error_code ec;
  auto results = resolver.resolve(server.address.host, std::to_string(server.address.port),
                                  boost::asio::ip::tcp::resolver::numeric_service, ec);
  if (ec)
    throw std::runtime_error("server \"" + server.name + "\": cannot resolve address " + server.address.to_string() +
                             ": " + ec.message());
  std::vector<boost::asio::ip::tcp::endpoint> out;
  for (const auto& r : results) out.push_back(r.endpoint());
  return out;
}

// Every [[certificate]], loaded and checked, by name.
Generation::Certificates load_certificates(const conf::Config& cfg) {
  Generation::Certificates certificates;
  for (const auto& c : cfg.certificates) {
    try {
      certificates[c.name] = sni::load_certificate(c.name, c.cert, c.key);
    } catch (const std::exception& e) {
      throw std::runtime_error(cfg.file.string() + ":" + std::to_string(c.line) + ": certificate \"" + c.name +
                               "\": " + e.what());
    }
  }
  return certificates;
}

// What the OCSP fetcher needs for a certificate with ocsp = "auto"; `where`
// starts every error message.
OcspAuto ocsp_auto_task(const conf::Certificate& c, std::shared_ptr<const sni::LoadedCertificate> certificate,
                        const std::string& where) {
  const sni::LoadedCertificate& cert = *certificate;
  OcspAuto task{c.name, std::move(certificate), sni::ocsp_issuer(cert), {}, std::make_shared<StapleSlot>()};
  if (task.issuer == nullptr)
    throw std::runtime_error(where + cert.cert_file.string() +
                             " has no issuer certificate after the leaf, so "
                             "no OCSP request can be made nor response checked; append the issuing CA's "
                             "certificate to the file");
  for (const auto& url : sni::ocsp_responders(cert.leaf()))
    if (url.starts_with("http://")) {
      task.url = url;
      break;
    }
  if (task.url.empty())
    throw std::runtime_error(where +
                             "the certificate names no http:// OCSP responder (Authority Information "
                             "Access), so there is nothing to fetch from; use ocsp = \"FILE\" or remove ocsp");
  return task;
}

// The staple slot of a certificate with ocsp = "FILE": the file is read
// again at every reload; one that is not for the certificate, not signed by
// its issuer, not current or not "good" is not stapled, and the log says why.
std::shared_ptr<StapleSlot> staple_from_file(const conf::Certificate& c, const sni::LoadedCertificate& cert,
                                             const std::string& where) {
  std::ifstream in(c.ocsp_file, std::ios::binary);
  if (!in) throw std::runtime_error(where + "cannot read " + c.ocsp_file.string());
  std::string der((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto verdict = sni::check_ocsp_response(der, cert.leaf(), sni::ocsp_issuer(cert), sni::Clock::now());
  auto slot = std::make_shared<StapleSlot>();
  if (verdict.stapleable) {
    slot->set(std::make_shared<const Staple>(Staple{std::move(der), verdict.next_update}));
    log::info("ocsp_staple",
              {{"certificate", c.name}, {"file", c.ocsp_file.string()}, {"state", sni::describe(verdict)}});
  } else {
    log::warning("ocsp_not_stapled",
                 {{"certificate", c.name}, {"file", c.ocsp_file.string()}, {"reason", verdict.problem}});
  }
  return slot;
}

}  // namespace

std::shared_ptr<Generation> Generation::build(conf::Config config, std::size_t workers,
                                              std::shared_ptr<TicketKeys> ticket_keys, std::uint64_t number) {
  // Freed with its last connection. Give its pages back to the system then:
  // a process that reloads often must not keep every generation's heap.
  std::shared_ptr<Generation> gen(new Generation(), [](Generation* g) {
    delete g;
    ::malloc_trim(0);
  });
  gen->number_ = number;
  gen->config_ = std::move(config);
  gen->ticket_keys_ = std::move(ticket_keys);

  const Certificates certificates = load_certificates(gen->config_);
  gen->load_staples(certificates);
  gen->build_pools(gen->build_servers());
  gen->build_listeners(certificates);
  gen->build_deny_rules();
  gen->collect_front_thumbprints();
  gen->build_worker_state(workers);
  gen->assign_metric_ids(metrics().ids());
  return gen;
}

void Generation::load_staples(const Certificates& certificates) {
  const conf::Config& cfg = config_;
  for (const auto& c : cfg.certificates) {
    if (c.ocsp == conf::OcspMode::none) continue;
    const std::string where = cfg.file.string() + ":" +
                              std::to_string(cfg.line_of("certificate \"" + c.name + "\".ocsp", c.line)) +
                              ": certificate \"" + c.name + "\".ocsp: ";
    if (c.ocsp == conf::OcspMode::automatic) {
      OcspAuto task = ocsp_auto_task(c, certificates.at(c.name), where);
      staples_[c.name] = task.slot;
      ocsp_auto_.push_back(std::move(task));
    } else {
      staples_[c.name] = staple_from_file(c, *certificates.at(c.name), where);
    }
  }
}

std::map<std::string, ServerRuntime*, std::less<>> Generation::build_servers() {
  const conf::Config& cfg = config_;
  std::map<std::string, ServerRuntime*, std::less<>> servers;
  for (const auto& s : cfg.servers) {
    auto rt = std::make_unique<ServerRuntime>();
    rt->config = &s;
    if (!s.pin.empty()) {
      rt->pin = sni::parse_pin(s.pin);
      if (!rt->pin)
        throw std::runtime_error(cfg.file.string() + ":" + std::to_string(s.line) + ": server \"" + s.name +
                                 "\".pin: not a sha256/BASE64 pin nor a SHA-1 thumbprint");
    }
    rt->endpoints = resolve(s);
    servers[s.name] = rt.get();
    servers_.push_back(std::move(rt));
  }
  return servers;
}

void Generation::build_pools(const std::map<std::string, ServerRuntime*, std::less<>>& servers) {
  const conf::Config& cfg = config_;
  pools_.reserve(cfg.pools.size());
  for (const auto& p : cfg.pools) {
    PoolRuntime rt;
    rt.config = &p;
    for (const auto& name : p.servers) {
      rt.servers.push_back(servers.at(name));
      rt.members.push_back(std::make_unique<PoolMember>(p.health.rise, p.health.fall));
    }
    try {
      rt.tls = std::make_unique<PoolTls>(p);
    } catch (const std::exception& e) {
      throw std::runtime_error(cfg.file.string() + ":" + std::to_string(p.line) + ": pool \"" + p.name +
                               "\": " + e.what());
    }
    pools_.push_back(std::move(rt));
  }
  for (auto& p : pools_)
    if (!p.config->fallback.empty()) p.fallback = pool(p.config->fallback);
}

namespace {

// A starttls listener greets with its default certificate's first host name
// (a wildcard's parent when it has only wildcards).
std::string greeting_name(const sni::LoadedCertificate& certificate) {
  for (const auto& name : certificate.names)
    if (!name.starts_with("*.")) return name;
  if (!certificate.names.empty()) return certificate.names.front().substr(2);
  return "localhost";
}

}  // namespace

void Generation::build_listeners(const Certificates& certificates) {
  const conf::Config& cfg = config_;
  for (const auto& l : cfg.listeners) {
    ListenerRuntime rt;
    rt.config = &l;
    if (l.mode == conf::ListenerMode::l7 || l.mode == conf::ListenerMode::l4) {
      std::vector<std::shared_ptr<const sni::LoadedCertificate>> certs;
      ListenerTls::Staples listener_staples;
      for (const auto& name : l.certificates) {
        certs.push_back(certificates.at(name));
        if (auto it = staples_.find(name); it != staples_.end())
          listener_staples.emplace(certs.back().get(), it->second);
      }
      try {
        rt.tls = std::make_unique<ListenerTls>(l, std::move(certs), *ticket_keys_, std::move(listener_staples));
      } catch (const std::exception& e) {
        throw std::runtime_error(cfg.file.string() + ":" + std::to_string(l.line) + ": " + e.what());
      }
    }
    for (const auto& r : cfg.routes)
      if (r.listener == l.name) rt.routes.push_back(&r);
    if (!l.pool.empty()) rt.default_pool = pool(l.pool);
    if (l.starttls != conf::StartTls::none)
      rt.greeting_name =
          !l.greeting_name.empty() ? l.greeting_name : greeting_name(*certificates.at(l.default_certificate));
    listeners_.push_back(std::move(rt));
  }
}

void Generation::build_deny_rules() {
  RE2::Options options;
  options.set_log_errors(false);
  for (const auto& rule : config_.deny_rules) {
    auto rt = std::make_unique<DenyRuntime>();
    rt->config = &rule;
    rt->number = deny_rules_.size() + 1;
    // The loader checked both patterns compile.
    if (!rule.url.empty()) rt->url = std::make_unique<RE2>(rule.url, options);
    if (!rule.header_match.empty()) rt->header = std::make_unique<RE2>(rule.header_match, options);
    deny_rules_.push_back(std::move(rt));
  }
}

void Generation::collect_front_thumbprints() {
  // What Extended Protection needs of each pool's servers.
  for (const auto& l : listeners_) {
    if (!l.tls || l.config->mode != conf::ListenerMode::l7) continue;
    for (const conf::Route* r : l.routes) {
      if (r->pool.empty() || !sni::carries_windows_auth(r->paths)) continue;
      const auto fronts = sni::front_certificates(l.tls->index(), r->hosts);
      const PoolRuntime* p = pool(r->pool);
      // Validation refuses fallback cycles, so every chain ends.
      for (; p != nullptr; p = p->fallback) {
        auto& thumbprints = const_cast<PoolRuntime*>(p)->front_thumbprints;
        for (const sni::LoadedCertificate* c : fronts)
          if (std::find(thumbprints.begin(), thumbprints.end(), c->info.thumbprint) == thumbprints.end())
            thumbprints.push_back(c->info.thumbprint);
      }
    }
  }
}

void Generation::build_worker_state(std::size_t workers) {
  per_worker_.resize(workers);
  for (auto& worker : per_worker_) {
    worker.resize(pools_.size());
    for (std::size_t i = 0; i < pools_.size(); ++i) {
      const PoolRuntime& pool = pools_[i];
      WorkerPool& wp = worker[i];
      for (const ServerRuntime* s : pool.servers)
        wp.views.push_back(balancer::ServerView{s->config->name, s->config->site, s->config->weight, true, 0});
      wp.selector = balancer::make_selector(pool.config->balance, wp.views, pool.config->local_site);
      wp.affinity = pool.config->balance == conf::Balance::maglev
                        ? nullptr
                        : balancer::make_selector(conf::Balance::maglev, wp.views, pool.config->local_site);
      wp.sessions.resize(pool.servers.size());
      wp.idle.resize(pool.servers.size());
    }
  }
}

void Generation::assign_metric_ids(MetricIds& ids) {
  // By name, so that what a previous generation counted carries on. Every
  // (listener, pool) pair gets a series, as any route may end in any pool
  // through fallbacks; a worker makes room for a series only once it counts.
  for (auto& p : pools_) p.metric_id = ids.pool(p.config->name);
  for (auto& l : listeners_) {
    l.metric_id = ids.listener(l.config->name);
    l.request_series.reserve(1 + pools_.size());
    l.request_series.push_back(ids.series(l.config->name, ""));
    for (const auto& p : pools_) l.request_series.push_back(ids.series(l.config->name, p.config->name));
  }
}

namespace {

// Length of `prefix` when it matches the start of `path` at a segment
// boundary (case-insensitive), else -1.
long path_match(std::string_view pattern, std::string_view path) {
  // "=/x" matches only "/x", and beats every prefix.
  if (pattern.starts_with('=')) return path == pattern.substr(1) ? std::numeric_limits<long>::max() : -1;
  if (!path.starts_with(pattern)) return -1;
  if (pattern.back() == '/' || path.size() == pattern.size() || path[pattern.size()] == '/')
    return static_cast<long>(pattern.size());
  return -1;
}

}  // namespace

bool admits(const conf::Route& route, const asio::ip::address& client) {
  if (route.allow.empty() && route.deny.empty()) return true;
  if (client.is_v4()) {
    const auto bytes = client.to_v4().to_bytes();
    return route.admits(bytes);
  }
  const auto bytes = client.to_v6().to_bytes();
  return route.admits(bytes);
}

Generation::RouteChoice Generation::route_http(const ListenerRuntime& listener, std::string_view host,
                                               std::string_view path) const {
  const conf::Route* best = nullptr;
  int best_host = 0;  // 3 exact, 2 wildcard, 1 any host
  long best_path = -1;
  for (const conf::Route* r : listener.routes) {
    int host_score = r->hosts.empty() ? 1 : 0;
    for (const auto& pattern : r->hosts) {
      if (pattern == host) host_score = std::max(host_score, 3);
      else if (sni::host_matches(pattern, host)) host_score = std::max(host_score, 2);
    }
    if (host_score == 0 || host_score < best_host) continue;
    long path_score = -1;
    for (const auto& prefix : r->paths) path_score = std::max(path_score, path_match(prefix, path));
    if (path_score < 0) continue;
    if (host_score > best_host || path_score > best_path) {
      best = r;
      best_host = host_score;
      best_path = path_score;
    }
  }
  if (best == nullptr) return {};
  return {best, pool(best->pool)};
}

void Generation::inherit_state(const Generation& previous) {
  for (auto& listener : listeners_)
    if (const ListenerRuntime* old = previous.listener(listener.config->name)) listener.open = old->open;
  for (auto& task : ocsp_auto_)
    for (const auto& old : previous.ocsp_auto_)
      if (old.name == task.name && X509_cmp(old.certificate->leaf(), task.certificate->leaf()) == 0)
        task.slot->set(old.slot->get());
  for (auto& pool : pools_) {
    const PoolRuntime* old = previous.pool(pool.config->name);
    if (old == nullptr) continue;
    for (std::size_t i = 0; i < pool.servers.size(); ++i) {
      const std::size_t j = old->index_of(pool.servers[i]->config->name);
      if (j == old->servers.size()) continue;
      pool.members[i]->healthy = old->members[j]->healthy.load();
      pool.members[i]->drained = old->members[j]->drained.load();
      std::scoped_lock lock(pool.members[i]->mutex, old->members[j]->mutex);
      pool.members[i]->health =
          balancer::HealthState(pool.config->health.rise, pool.config->health.fall, old->members[j]->health.up());
      pool.members[i]->last_check = old->members[j]->last_check;
      pool.members[i]->presented_thumbprint = old->members[j]->presented_thumbprint;
    }
  }
}

const PoolRuntime* Generation::effective_pool(const PoolRuntime* pool) const {
  // Validation refuses fallback cycles, so every chain ends.
  for (const PoolRuntime* p = pool; p != nullptr; p = p->fallback)
    if (p->any_available()) return p;
  return pool;
}

namespace {

// Of the server alone, not of the pool: every route with cookie affinity
// sets the same cookie, which must hold in every pool of its server.
std::string cookie_mac(const std::array<uint8_t, 32>& key, std::string_view server) {
  uint8_t mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), key.size(), reinterpret_cast<const uint8_t*>(server.data()), server.size(), mac, &len);
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < 12; ++i) {  // 96 bits
    out += hex[mac[i] >> 4];
    out += hex[mac[i] & 15];
  }
  return out;
}

}  // namespace

std::string Generation::affinity_cookie(const PoolRuntime& pool, std::size_t server) const {
  const std::string& name = pool.servers[server]->config->name;
  return name + "." + cookie_mac(ticket_keys_->cookie_key(), name);
}

std::optional<std::size_t> Generation::affinity_server(const PoolRuntime& pool, std::string_view value) const {
  const auto dot = value.rfind('.');
  if (dot == std::string_view::npos) return std::nullopt;
  const std::string_view name = value.substr(0, dot);
  const std::size_t i = pool.index_of(name);
  if (i == pool.servers.size()) return std::nullopt;
  const std::string expected = cookie_mac(ticket_keys_->cookie_key(), name);
  if (expected.size() != value.size() - dot - 1 ||
      CRYPTO_memcmp(expected.data(), value.data() + dot + 1, expected.size()) != 0)
    return std::nullopt;
  return i;
}

void Generation::close_idle(std::size_t worker) const {
  for (auto& wp : per_worker_[worker]) wp.idle.clear();
}

const ListenerRuntime* Generation::listener(std::string_view name) const {
  for (const auto& l : listeners_)
    if (l.config->name == name) return &l;
  return nullptr;
}

const PoolRuntime* Generation::pool(std::string_view name) const {
  for (const auto& p : pools_)
    if (p.config->name == name) return &p;
  return nullptr;
}

Generation::RouteChoice Generation::route_by_sni(const ListenerRuntime& listener, std::string_view sni_name) const {
  const auto host = sni::normalize_host(sni_name);
  const conf::Route* best = nullptr;
  int best_score = 0;  // 3 exact, 2 wildcard, 1 any host
  for (const conf::Route* r : listener.routes) {
    int score = r->hosts.empty() ? 1 : 0;
    if (host) {
      for (const auto& pattern : r->hosts) {
        if (pattern == *host) score = std::max(score, 3);
        else if (sni::host_matches(pattern, *host)) score = std::max(score, 2);
      }
    }
    if (score > best_score) {
      best = r;
      best_score = score;
    }
  }
  if (best != nullptr) return {best, pool(best->pool)};
  return {nullptr, listener.default_pool};
}

}  // namespace gatehouse::proxy
