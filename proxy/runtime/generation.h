#pragma once
// One config generation: everything a connection needs, built off the hot path
// (parse, validate, load certificates, build SNI indexes, TLS contexts and
// pools), then published to the workers. A connection keeps the generation it
// was accepted under, so a reload never changes what it is using.

#include <re2/re2.h>

#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "balancer/balancer.h"
#include "balancer/health.h"
#include "conf/config.h"
#include "proxy/tls/backend_tls.h"
#include "proxy/tls/listener_tls.h"
#include "proxy/tls/tls_stream.h"
#include "sni/pin.h"

namespace gatehouse::proxy {

class TicketKeys;
class MetricIds;

struct ServerRuntime {
  const conf::Server* config = nullptr;
  std::optional<sni::Pin> pin;
  std::vector<boost::asio::ip::tcp::endpoint> endpoints;  // resolved once per generation
};

// One server as a member of one pool: health is per pool, so a server can
// be down for /owa (its /owa/healthcheck.htm fails) and up for /mapi.
// Written by the health checker (one thread) and by passive checks and the
// admin endpoint; read lock-free by every worker.
struct PoolMember {
  PoolMember(int rise, int fall) : health(rise, fall) {}
  bool available() const { return healthy.load(std::memory_order_relaxed) && !drained.load(std::memory_order_relaxed); }

  std::atomic<bool> healthy{true};
  std::atomic<bool> drained{false};           // admin: no new traffic
  std::atomic<std::int64_t> active{0};        // open connections/requests, all workers
  std::atomic<std::uint64_t> connections{0};  // backend connections made
  std::atomic<std::uint64_t> failures{0};     // failed connects and handshakes

  std::mutex mutex;  // guards what follows
  balancer::HealthState health;
  std::string last_check;            // outcome of the last probe, for /status
  std::string last_error;            // of real traffic
  std::string presented_thumbprint;  // of the certificate the last TLS/HTTP probe saw ("" = none yet)
};

struct PoolRuntime {
  const conf::Pool* config = nullptr;
  std::uint32_t metric_id = 0;                       // MetricIds::pool
  std::vector<ServerRuntime*> servers;               // in pool order
  std::vector<std::unique_ptr<PoolMember>> members;  // parallel to servers
  std::unique_ptr<PoolTls> tls;
  const PoolRuntime* fallback = nullptr;
  // SHA-1 thumbprints of the certificates clients see on the l7 routes that
  // send Windows logins (/EWS, /mapi, ...) to this pool: Extended Protection
  // works only where a server presents the same. Empty: no such route.
  std::vector<std::string> front_thumbprints;
  bool any_available() const {
    for (const auto& m : members)
      if (m->available()) return true;
    return false;
  }
  std::size_t index_of(std::string_view server) const {
    for (std::size_t i = 0; i < servers.size(); ++i)
      if (servers[i]->config->name == server) return i;
    return servers.size();
  }
};

struct ListenerRuntime {
  const conf::Listener* config = nullptr;
  std::uint32_t metric_id = 0;  // MetricIds::listener
  // MetricIds::series of this listener with each pool: [0] no pool,
  // [1 + i] the generation's pools()[i]. See Generation::request_series.
  std::vector<std::uint32_t> request_series;
  // Connections open on this listener, all workers and generations: shared
  // with the previous generation's listener of the same name.
  std::shared_ptr<std::atomic<std::uint64_t>> open = std::make_shared<std::atomic<std::uint64_t>>(0);
  std::unique_ptr<ListenerTls> tls;        // null for passthrough and tcp
  std::string greeting_name;               // starttls: the name in the greeting and EHLO reply
  std::vector<const conf::Route*> routes;  // routes of this listener, in file order
  const PoolRuntime* default_pool = nullptr;
};

// A [[deny]] rule with its regular expressions compiled (l7/deny.h
// matches requests against it).
struct DenyRuntime {
  const conf::DenyRule* config = nullptr;
  std::size_t number = 0;  // 1-based, in file order: how /metrics and /status name it
  std::unique_ptr<re2::RE2> url;
  std::unique_ptr<re2::RE2> header;
  mutable std::atomic<std::uint64_t> hits{0};  // requests it refused in this generation
};

// A connected, verified backend.
struct BackendConnection {
  std::optional<TlsStream> stream;
  const PoolRuntime* pool = nullptr;  // the pool it was taken from (a fallback pool, maybe)
  std::size_t server_index = 0;       // in the pool
  const ServerRuntime* server = nullptr;
  std::unique_ptr<BackendCheck> check;  // must outlive stream's SSL
  bool reused = false;                  // taken from the keep-alive pool
};

// A keep-alive backend connection waiting for its next request.
struct IdleBackend {
  BackendConnection connection;
  std::chrono::steady_clock::time_point since;
};

// State one worker keeps per pool: touched only by that worker's thread.
struct WorkerPool {
  std::vector<balancer::ServerView> views;
  std::unique_ptr<balancer::Selector> selector;
  // Maglev over the same servers, for routes with affinity = "source_ip" on a
  // pool balanced otherwise: every worker and instance maps an address alike.
  std::unique_ptr<balancer::Selector> affinity;
  std::vector<SessionSlot> sessions;  // per server, for backend TLS resumption
  // Idle keep-alive HTTP/1.1 backend connections, per server (l7).
  std::vector<std::vector<IdleBackend>> idle;
};

// A certificate with ocsp = "auto": what the fetcher needs to keep its slot
// filled.
struct OcspAuto {
  std::string name;  // the [[certificate]]
  std::shared_ptr<const sni::LoadedCertificate> certificate;
  X509* issuer = nullptr;  // in certificate->chain
  std::string url;         // the http:// responder of its Authority Information Access
  std::shared_ptr<StapleSlot> slot;
};

// Whether a route's allow/deny ranges let `client` use it.
bool admits(const conf::Route& route, const asio::ip::address& client);

class Generation {
 public:
  // Loaded [[certificate]]s by name.
  using Certificates = std::map<std::string, std::shared_ptr<const sni::LoadedCertificate>, std::less<>>;

  // Throws std::runtime_error with every message naming the file, key or peer.
  static std::shared_ptr<Generation> build(conf::Config config, std::size_t workers,
                                           std::shared_ptr<TicketKeys> ticket_keys, std::uint64_t number);

  std::uint64_t number() const { return number_; }
  const conf::Config& config() const { return config_; }
  const ListenerRuntime* listener(std::string_view name) const;
  const PoolRuntime* pool(std::string_view name) const;
  std::size_t pool_index(const PoolRuntime* pool) const { return static_cast<std::size_t>(pool - pools_.data()); }
  const std::vector<ListenerRuntime>& listeners() const { return listeners_; }
  const std::vector<PoolRuntime>& pools() const { return pools_; }
  const std::vector<OcspAuto>& ocsp_auto() const { return ocsp_auto_; }
  const std::vector<std::unique_ptr<DenyRuntime>>& deny_rules() const { return deny_rules_; }
  // Where a worker counts a request of `listener` that `pool` (a pool of
  // this generation, or null: none) answered.
  std::uint32_t request_series(const ListenerRuntime& listener, const PoolRuntime* pool) const {
    return listener.request_series[pool == nullptr ? 0 : 1 + pool_index(pool)];
  }
  // The OCSP staple slot of a certificate with `ocsp` set, else nullptr.
  const StapleSlot* staple_slot(std::string_view certificate) const {
    auto it = staples_.find(certificate);
    return it == staples_.end() ? nullptr : it->second.get();
  }

  // Where a connection on an l4/passthrough listener goes, by SNI: the most
  // specific route host (exact beats wildcard beats any), else the listener's
  // pool (route == nullptr). pool == nullptr when neither exists.
  struct RouteChoice {
    const conf::Route* route = nullptr;
    const PoolRuntime* pool = nullptr;
  };
  RouteChoice route_by_sni(const ListenerRuntime& listener, std::string_view sni) const;
  // Where a request on an l7 listener goes: the route whose host matches
  // best (exact beats wildcard beats a route without hosts), then an exact
  // path ("=/") or the longest path prefix ("/owa" matches "/owa" and
  // "/owa/...", not "/owax"). `host` is normalised (lower case, no port, no
  // trailing dot), `path` too (http::normalize_path: decoded, dot segments
  // resolved, lower case, no query). route == nullptr when none matches.
  RouteChoice route_http(const ListenerRuntime& listener, std::string_view host, std::string_view path) const;

  // Drops this worker's idle keep-alive backend connections (on its thread).
  void close_idle(std::size_t worker) const;
  // Carries health and drain state over from the generation being replaced,
  // for every (pool, server) pair both have, and the fetched OCSP response
  // of every ocsp = "auto" certificate whose leaf did not change.
  void inherit_state(const Generation& previous);
  // The pool to use for `pool`: itself while any server is available, else
  // its fallback chain's first pool with one (datacenter switchover).
  const PoolRuntime* effective_pool(const PoolRuntime* pool) const;

  // "server.mac" for an affinity cookie naming `server` of `pool`, and the
  // check of one (nullopt: tampered, stale or not a server of `pool`). The
  // MAC is of the server's name: one cookie holds in every pool it is in.
  std::string affinity_cookie(const PoolRuntime& pool, std::size_t server) const;
  std::optional<std::size_t> affinity_server(const PoolRuntime& pool, std::string_view value) const;

  WorkerPool& worker_pool(std::size_t worker, const PoolRuntime* pool) const {
    return per_worker_[worker][pool_index(pool)];
  }

 private:
  Generation() = default;
  // The steps of build(), in order; each throws std::runtime_error naming
  // the file and key.
  void load_staples(const Certificates& certificates);
  std::map<std::string, ServerRuntime*, std::less<>> build_servers();
  void build_pools(const std::map<std::string, ServerRuntime*, std::less<>>& servers);
  void build_listeners(const Certificates& certificates);
  void build_deny_rules();
  void collect_front_thumbprints();
  void build_worker_state(std::size_t workers);
  void assign_metric_ids(MetricIds& ids);

  std::uint64_t number_ = 0;
  conf::Config config_;
  std::shared_ptr<TicketKeys> ticket_keys_;
  std::vector<std::unique_ptr<ServerRuntime>> servers_;
  std::vector<PoolRuntime> pools_;
  std::vector<ListenerRuntime> listeners_;
  std::vector<OcspAuto> ocsp_auto_;
  std::vector<std::unique_ptr<DenyRuntime>> deny_rules_;
  std::map<std::string, std::shared_ptr<StapleSlot>, std::less<>> staples_;  // by certificate name
  mutable std::vector<std::vector<WorkerPool>> per_worker_;                  // [worker][pool]
};

}  // namespace gatehouse::proxy
