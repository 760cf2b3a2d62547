#include "proxy/l4/l4_session.h"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>

#include "balancer/balancer.h"
#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"
#include "proxy/runtime/metrics.h"

namespace gatehouse::proxy {

using namespace asio::experimental::awaitable_operators;

asio::awaitable<void> pump(TlsStream& from, TlsStream& to, Clock::time_point& last_activity, std::uint64_t& bytes) {
  int reads_since_yield = 0;
  for (;;) {
    if (++reads_since_yield == 16) {
      // A busy stream must not starve the worker's other connections.
      reads_since_yield = 0;
      co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    }
    std::size_t n = 0;
    error_code ec;
    {
      IoBuffer buffer;
      std::tie(ec, n) = from.try_read_some(buffer.data(), IoBuffer::size);
      if (ec == asio::error::would_block) {
        // Idle: hand the buffer back before waiting.
      } else if (ec == asio::error::in_progress) {
        std::tie(ec, n) = co_await from.read_some(buffer.data(), IoBuffer::size);
      }
      if (!ec) {
        last_activity = Clock::now();
        bytes += n;
        if (co_await to.write_all(buffer.data(), n)) break;
        continue;
      }
    }
    if (ec == asio::error::would_block) {
      // (No reset of reads_since_yield: a stream that keeps coming is read
      // ahead without suspending, so this is not a sign of a wait.)
      if (co_await from.wait_readable()) break;
      continue;
    }
    if (ec == asio::error::eof) {
      co_await to.shutdown_send();
      co_return;
    }
    break;
  }
  from.abort();
  to.abort();
}

namespace {

// Ends both directions of an l4 stream.
struct StreamExpiry final : IdleExpiry {
  StreamExpiry(TlsStream& front, TlsStream& back) : front(front), back(back) {}
  void expire(bool) override {
    front.abort();
    back.abort();
  }
  TlsStream& front;
  TlsStream& back;
};

}  // namespace

asio::awaitable<void> serve_l4(Worker& worker, std::shared_ptr<Generation> generation, const ListenerRuntime& listener,
                               tcp::socket socket) {
  const auto started = Clock::now();
  const conf::Listener& config = *listener.config;
  auto executor = co_await asio::this_coro::executor;
  asio::steady_timer watchdog_timer(executor);
  TrackedConnection tracked(worker, generation.get(), &watchdog_timer);
  ConnectionHandle& handle = tracked.handle();

  error_code ignored;
  const tcp::endpoint client_endpoint = socket.remote_endpoint(ignored);
  const tcp::endpoint local_endpoint = socket.local_endpoint(ignored);
  const std::string client = to_string(client_endpoint);

  HandshakeInfo info;
  TlsStream front(std::move(socket), listener.tls->new_connection(&info));
  if (!co_await accept_handshake(worker.metrics(), front, info, config, client)) co_return;
  const bool resumed = SSL_session_reused(front.ssl()) == 1;

  boost::json::object access{{"client", client},
                             {"listener", config.name},
                             {"mode", "l4"},
                             {"sni", info.sni},
                             {"certificate", info.certificate ? info.certificate->name : ""},
                             {"tls_version", SSL_get_version(front.ssl())},
                             {"resumed", resumed},
                             {"client_subject", info.client_subject},
                             {"client_verify", info.client_verify}};

  const auto [route, pool] = generation->route_by_sni(listener, info.sni);
  if (pool == nullptr) {
    log::warning("no_route", {{"listener", config.name}, {"client", client}, {"sni", info.sni}});
    access["error"] = "no route";
    log::access(std::move(access));
    co_return;
  }
  access["pool"] = pool->config->name;

  ConnectTarget target;
  target.pool = pool;
  const auto address_bytes = client_endpoint.address().to_string();
  target.hash_key = balancer::hash_key(address_bytes);
  target.affinity = route != nullptr && route->affinity == conf::Affinity::source_ip;
  target.timeout = config.handshake_timeout;
  target.proxy_protocol = config.proxy_protocol;
  target.client = client_endpoint;
  target.local = local_endpoint;
  target.tls_info = &info;
  target.tls_version = SSL_get_version(front.ssl());
  auto backend = co_await connect_backend(*generation, worker.index(), target);
  if (!backend) {
    log::warning("no_backend", {{"listener", config.name}, {"client", client}, {"pool", pool->config->name}});
    access["error"] = "no server reachable";
    access["duration_ms"] = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
    log::access(std::move(access));
    co_return;
  }
  access["server"] = backend->server->config->name;
  access["backend_resumed"] = backend->stream->is_tls() && SSL_session_reused(backend->stream->ssl()) == 1;

  const Clock::duration idle_timeout = route != nullptr && route->idle_timeout ? Clock::duration(*route->idle_timeout)
                                                                               : Clock::duration(config.idle_timeout);
  Clock::time_point last_activity = Clock::now();
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  // Idle for idle_timeout, or force-closed at drain_timeout: both
  // directions end. A reload lets the stream finish.
  StreamExpiry expiry{front, *backend->stream};
  IdleGuard guard(watchdog_timer, handle);
  guard.arm(&last_activity, idle_timeout, OnDrain::finish, &expiry);
  co_await ((pump(front, *backend->stream, last_activity, bytes_in) &&
             pump(*backend->stream, front, last_activity, bytes_out)) ||
            guard.watch());
  release_backend(*generation, worker.index(), *backend, pool);

  access["bytes_in"] = bytes_in;
  access["bytes_out"] = bytes_out;
  access["duration_ms"] = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
  log::access(std::move(access));
}

}  // namespace gatehouse::proxy
