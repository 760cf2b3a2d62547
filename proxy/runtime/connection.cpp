#include "proxy/runtime/connection.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/write.hpp>

#include <utility>
#include <vector>

#include "conf/assert.h"
#include "proxy/runtime/log.h"
#include "proxy/runtime/metrics.h"
#include "proxy/runtime/proxy_protocol.h"

namespace gatehouse::proxy {

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// Keep-alive connections older than this are closed rather than reused: a
// backend (IIS 120 s, nginx 75 s) may be closing them just then.
constexpr auto kIdleReuseLimit = std::chrono::seconds(30);
// HTTP/2 clients multiplex many streams onto HTTP/1.1 backend connections, so
// keep enough for a few hundred concurrent requests per worker.
constexpr std::size_t kMaxIdlePerServer = 512;

// The most recently used idle connection to `server` that is still open and
// quiet, or nullopt. Stale ones are dropped on the way.
std::optional<BackendConnection> take_idle(WorkerPool& wp, std::size_t server) {
  if (wp.idle.size() <= server) return std::nullopt;
  auto& list = wp.idle[server];
  const auto now = Clock::now();
  while (!list.empty()) {
    IdleBackend entry = std::move(list.back());
    list.pop_back();
    if (now - entry.since > kIdleReuseLimit) continue;
    // Alive means nothing to read: a byte or an end here is a closed or
    // confused connection (a 408, an alert, a FIN).
    if (!entry.connection.stream->quiet()) continue;
    entry.connection.reused = true;
    return std::optional<BackendConnection>(std::move(entry.connection));
  }
  return std::nullopt;
}

// Real traffic that cannot connect counts against the server in this pool;
// with health probes configured, `fall` such failures in a row take it
// down before the next probe (only probes bring it back).
void passive_failure(const PoolRuntime& pool, std::size_t index, const std::string& error) {
  PoolMember& member = *pool.members[index];
  ++member.failures;
  std::lock_guard lock(member.mutex);
  member.last_error = log::now_rfc3339() + " " + error;
  if (pool.config->health.kind == conf::HealthKind::none) return;
  if (member.health.record_connect_failure()) {
    member.healthy = false;
    log::warning("server_down", {{"pool", pool.config->name},
                                 {"server", pool.servers[index]->config->name},
                                 {"reason", "passive: " + std::to_string(pool.config->health.fall) +
                                                " failed connects in a row: " + error}});
  }
}

}  // namespace

std::string to_string(const tcp::endpoint& endpoint) {
  if (endpoint.address().is_v6()) return "[" + endpoint.address().to_string() + "]:" + std::to_string(endpoint.port());
  return endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
}

void IdleGuard::arm(const Clock::time_point* last_activity, Clock::duration idle, OnDrain on_drain,
                    IdleExpiry* expiry) {
  last_ = last_activity;
  idle_ = idle;
  on_drain_ = on_drain;
  expiry_ = expiry;
  // The watcher sleeps until the deadline it last saw; wake it only when
  // this one is earlier (a later one is found when that sleep ends).
  const bool drain_due =
      handle_.draining && ((on_drain == OnDrain::when_quiet && *last_ + kDrainQuiet < timer_.expiry()) ||
                           (on_drain == OnDrain::notify && !drain_told_));
  if (*last_ + idle_ < timer_.expiry() || drain_due) timer_.cancel();
}

asio::awaitable<void> IdleGuard::watch() {
  while (!stopped_) {
    auto deadline = Clock::time_point::max();
    if (expiry_ != nullptr) {
      const auto now = Clock::now();
      const bool quiet_drain = on_drain_ == OnDrain::when_quiet && handle_.draining;
      const bool drained = handle_.force_close || (quiet_drain && now >= *last_ + kDrainQuiet);
      const bool drain_news = on_drain_ == OnDrain::notify && handle_.draining && !drain_told_;
      if (drained || drain_news || now >= *last_ + idle_) {
        if (drain_news) drain_told_ = true;
        IdleExpiry* expiry = std::exchange(expiry_, nullptr);
        expiry->expire(drained);
        continue;
      }
      deadline = *last_ + idle_;
      if (quiet_drain) deadline = std::min(deadline, *last_ + kDrainQuiet);
    }
    timer_.expires_at(deadline);
    auto [ec] = co_await timer_.async_wait(use_tuple);
    if (ec) {
      // Either the surrounding || finished (then stop), or arm() or a drain
      // poked us.
      auto state = co_await asio::this_coro::cancellation_state;
      if (state.cancelled() != asio::cancellation_type::none) co_return;
    }
  }
}

asio::awaitable<void> both_with_guard(asio::awaitable<void> first, asio::awaitable<void> second, IdleGuard& guard) {
  auto executor = co_await asio::this_coro::executor;
  bool ended = false;
  std::exception_ptr first_error, second_error;
  // The two run as one group; the watcher runs here, in this coroutine, and
  // the group's end stops it.
  asio::experimental::make_parallel_group(asio::co_spawn(executor, std::move(first), asio::deferred),
                                          asio::co_spawn(executor, std::move(second), asio::deferred))
      .async_wait(asio::experimental::wait_for_all(),
                  [&](std::array<std::size_t, 2>, std::exception_ptr e1, std::exception_ptr e2) {
                    first_error = e1;
                    second_error = e2;
                    ended = true;
                    guard.stop();
                  });
  // The watcher returns at stop() (or if this coroutine were cancelled,
  // which nothing does: then it waits again, for the group's end).
  while (!ended) co_await guard.watch();
  if (first_error) std::rethrow_exception(first_error);
  if (second_error) std::rethrow_exception(second_error);
}

asio::awaitable<bool> accept_handshake(WorkerMetrics& counts, TlsStream& front, const HandshakeInfo& info,
                                       const conf::Listener& config, const std::string& client) {
  auto handshake = co_await with_timeout(front.handshake(), config.handshake_timeout);
  if (!handshake || *handshake) {
    const std::string reason = handshake ? handshake->message() : "handshake timed out";
    metrics().handshake_failed(info.rejected ? "unrecognized_name" : reason);
    if (info.rejected) counts.sni(sni::MatchKind::rejected);
    boost::json::object fields{{"listener", config.name},
                               {"client", client},
                               {"sni", info.sni},
                               {"error", reason},
                               {"reason", handshake_failure_reason(info, reason)}};
    if (!info.client_subject.empty()) fields["client_subject"] = info.client_subject;
    log::info("handshake_failed", std::move(fields));
    co_return false;
  }
  // Belt and braces: the session context already keeps sessions made
  // without a certificate off a "require" listener.
  if (config.client_certificates == conf::ClientCertificates::require && !info.client_verified()) {
    metrics().handshake_failed("no client certificate");
    log::info("handshake_failed", {{"listener", config.name},
                                   {"client", client},
                                   {"sni", info.sni},
                                   {"reason", "no client certificate (resumed session without one)"}});
    co_return false;
  }
  // TLS 1.3 tickets go out now, not with the first response byte.
  if (auto ec = co_await front.flush()) {
    log::info("handshake_failed",
              {{"listener", config.name}, {"client", client}, {"sni", info.sni}, {"error", ec.message()}});
    co_return false;
  }
  counts.handshake_done(SSL_session_reused(front.ssl()) == 1);
  counts.sni(info.match);
  co_return true;
}

std::optional<std::size_t> pick_server(const ConnectTarget& target, const PoolRuntime& pool, WorkerPool& wp,
                                       const balancer::Tried& tried) {
  for (std::size_t i = 0; i < pool.servers.size(); ++i) wp.views[i].available = pool.members[i]->available();
  if (target.preferred && &pool == target.pool && *target.preferred < pool.servers.size() &&
      !tried.contains(*target.preferred) && wp.views[*target.preferred].available)
    return target.preferred;
  balancer::Selector& selector = target.affinity && wp.affinity ? *wp.affinity : *wp.selector;
  return selector.pick(wp.views, tried, target.hash_key);
}

namespace {

// A failed connect step: counted against the server and logged with it.
void connect_step_failed(const PoolRuntime& pool, std::size_t index, const char* event, const std::string& error) {
  const ServerRuntime& server = *pool.servers[index];
  passive_failure(pool, index, error);
  log::warning(event, {{"pool", pool.config->name},
                       {"server", server.config->name},
                       {"address", server.config->address.to_string()},
                       {"error", error}});
}

// TCP to the server, then the PROXY header if the target asks for one;
// nullopt (logged, and counted against the server) when that fails.
asio::awaitable<std::optional<tcp::socket>> open_socket(const PoolRuntime& pool, std::size_t index,
                                                        const ConnectTarget& target, Clock::time_point deadline) {
  const ServerRuntime& server = *pool.servers[index];
  tcp::socket socket(co_await asio::this_coro::executor);
  auto connected = co_await with_deadline(asio::async_connect(socket, server.endpoints, use_tuple), deadline);
  if (!connected || std::get<0>(*connected)) {
    connect_step_failed(pool, index, "backend_connect_failed",
                        connected ? std::get<0>(*connected).message() : "connect timed out");
    co_return std::nullopt;
  }
  error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  if (target.proxy_protocol != conf::ProxyProtocol::none) {
    const std::string header =
        target.proxy_protocol == conf::ProxyProtocol::v1
            ? proxy_header_v1(target.client, target.local)
            : proxy_header_v2(target.client, target.local,
                              target.tls_info ? proxy_ssl_tlv(*target.tls_info, target.tls_version) : std::string());
    // Not raced against the deadline: a header of at most a few hundred bytes
    // goes into the empty send buffer of a new connection at once.
    auto [ec, n] = co_await asio::async_write(socket, asio::buffer(header), use_tuple);
    if (ec) {
      log::warning("backend_connect_failed",
                   {{"pool", pool.config->name}, {"server", server.config->name}, {"error", ec.message()}});
      co_return std::nullopt;
    }
  }
  co_return std::optional<tcp::socket>(std::move(socket));
}

// A starttls listener's plaintext opening with the server, before
// `deadline`; false (logged and counted) when it failed.
asio::awaitable<bool> open_mail(const PoolRuntime& pool, std::size_t index, const BackendOpening& opening,
                                TlsStream& stream, bool before_tls, Clock::time_point deadline) {
  // (Two statements: GCC 12 destroys a coroutine temporary of a ?: twice.)
  std::optional<std::string> done;
  if (before_tls) done = co_await with_deadline(opening.before_tls(stream), deadline);
  else done = co_await with_deadline(opening.after_tls(stream), deadline);
  const std::string error = !done ? std::string("the server's greeting or STARTTLS reply timed out") : *done;
  if (error.empty()) co_return true;
  connect_step_failed(pool, index, before_tls ? "backend_starttls_failed" : "backend_greeting_failed", error);
  co_return false;
}

// The server's TLS (or none, for tls = "plain") on a connected socket,
// verified as the pool says, with a starttls listener's opening before or
// after it, before `deadline`; nullopt (logged, with what the server
// presented when it was refused) when that fails.
asio::awaitable<std::optional<BackendConnection>> secure(const PoolRuntime& pool, WorkerPool& wp, std::size_t index,
                                                         tcp::socket socket, const ConnectTarget& target,
                                                         Clock::time_point deadline) {
  const ServerRuntime& server = *pool.servers[index];
  BackendConnection backend;
  backend.server_index = index;
  backend.server = &server;
  backend.check = std::make_unique<BackendCheck>();
  backend.check->server = server.config;
  backend.check->pin = server.pin ? &*server.pin : nullptr;
  backend.check->slot = &wp.sessions[index];
  auto ssl = pool.tls->new_connection(backend.check.get());
  const bool starttls = target.opening != nullptr && pool.config->starttls;
  if (starttls) {
    backend.stream.emplace(std::move(socket), nullptr);
    if (!co_await open_mail(pool, index, *target.opening, *backend.stream, true, deadline)) co_return std::nullopt;
    backend.stream->start_tls(std::move(ssl));
  } else {
    backend.stream.emplace(std::move(socket), std::move(ssl));
  }
  auto handshake = co_await with_deadline(backend.stream->handshake(), deadline);
  if (handshake && !*handshake) {
    if (target.opening != nullptr && !starttls &&
        !co_await open_mail(pool, index, *target.opening, *backend.stream, false, deadline))
      co_return std::nullopt;
    // What the server presented was only needed to explain a refusal.
    std::string().swap(backend.check->presented_thumbprint);
    std::string().swap(backend.check->presented_subject);
    co_return std::optional<BackendConnection>(std::move(backend));
  }
  const std::string error = handshake ? handshake->message() : "TLS handshake timed out";
  if (backend.check->failure.empty()) {
    connect_step_failed(pool, index, "backend_tls_failed", error);
    co_return std::nullopt;
  }
  passive_failure(pool, index, error);
  boost::json::object fields{{"pool", pool.config->name},
                             {"server", server.config->name},
                             {"address", server.config->address.to_string()},
                             {"error", error},
                             {"reason", backend.check->failure},
                             {"presented_thumbprint", backend.check->presented_thumbprint},
                             {"presented_subject", backend.check->presented_subject}};
  if (server.pin) fields["expected_pin"] = server.config->pin;
  log::error("backend_certificate_rejected", std::move(fields));
  co_return std::nullopt;
}

}  // namespace

asio::awaitable<std::optional<BackendConnection>> connect_backend(const Generation& generation, std::size_t worker,
                                                                  const ConnectTarget& target) {
  // A pool with no server left sends its traffic to its fallback pool.
  const PoolRuntime& pool = *generation.effective_pool(target.pool);
  WorkerPool& wp = generation.worker_pool(worker, &pool);
  balancer::Tried tried;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const std::optional<std::size_t> picked = pick_server(target, pool, wp, tried);
    if (!picked) break;
    tried.add(*picked);
    PoolMember& member = *pool.members[*picked];
    std::optional<BackendConnection> backend;
    if (target.reuse) backend = take_idle(wp, *picked);
    if (!backend) {
      const Clock::time_point deadline = Clock::now() + pool.config->connect_timeout;
      auto socket = co_await open_socket(pool, *picked, target, deadline);
      if (!socket) continue;
      backend = co_await secure(pool, wp, *picked, std::move(*socket), target, deadline);
      if (!backend) continue;
      backend->pool = &pool;
      ++member.connections;
      std::lock_guard lock(member.mutex);
      member.health.record_connect_success();
    }
    // Held until release_backend().
    ++wp.views[*picked].active;
    ++member.active;
    co_return backend;
  }
  co_return std::nullopt;
}

void release_backend(const Generation& generation, std::size_t worker, const BackendConnection& backend,
                     const PoolRuntime* pool) {
  if (backend.pool != nullptr) pool = backend.pool;
  auto& views = generation.worker_pool(worker, pool).views;
  GH_ASSERT(views[backend.server_index].active > 0);  // each connect_backend() is released once
  --views[backend.server_index].active;
  --pool->members[backend.server_index]->active;
}

void keep_backend(const Generation& generation, std::size_t worker, BackendConnection backend, const PoolRuntime* pool,
                  bool current) {
  release_backend(generation, worker, backend, pool);
  if (backend.pool != nullptr) pool = backend.pool;
  if (!current || !backend.stream || backend.stream->aborted()) return;
  // Bytes past the response would be read as the next one's start.
  if (!backend.stream->release_read_ahead()) return;
  WorkerPool& wp = generation.worker_pool(worker, pool);
  if (wp.idle.size() < pool->servers.size()) wp.idle.resize(pool->servers.size());
  auto& list = wp.idle[backend.server_index];
  if (list.size() >= kMaxIdlePerServer) list.erase(list.begin());
  backend.reused = false;
  list.push_back(IdleBackend{std::move(backend), Clock::now()});
}

}  // namespace gatehouse::proxy
