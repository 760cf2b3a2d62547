#include "proxy/l4/l4_session.h"

#include <boost/asio/post.hpp>

#include "balancer/balancer.h"
#include "proxy/l4/client_hello.h"
#include "proxy/l4/mail.h"
#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"
#include "proxy/runtime/metrics.h"

namespace gatehouse::proxy {

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

// What every connection of the stream family (l4, passthrough, tcp) has,
// and its one access line.
class StreamConnection {
 public:
  StreamConnection(Worker& worker, std::shared_ptr<Generation> generation, const ListenerRuntime& listener,
                   const tcp::socket& socket, tcp::endpoint client_endpoint, asio::steady_timer& watchdog)
      : worker(worker),
        generation(std::move(generation)),
        listener(listener),
        config(*listener.config),
        tracked(worker, this->generation.get(), &watchdog),
        watchdog(watchdog),
        client_endpoint(client_endpoint),
        client(to_string(client_endpoint)) {
    // Only a PROXY header needs the address the client connected to.
    if (config.proxy_protocol != conf::ProxyProtocol::none) {
      error_code ignored;
      local_endpoint = socket.local_endpoint(ignored);
    }
  }

  // The access line's fields beyond the connection's own, kept as views of
  // what the connection holds anyway and written out once, at finish(): a
  // JSON object built at the start would be carried through the whole relay.
  struct Access {
    std::optional<conf::StartTls> protocol;  // starttls listeners
    bool starttls = false;
    std::optional<std::string_view> sni;
    const HandshakeInfo* tls = nullptr;  // terminated TLS
    const char* tls_version = nullptr;
    bool resumed = false;
    const std::string* pool = nullptr;
    const std::string* server = nullptr;
    std::optional<bool> backend_resumed;
    std::optional<std::uint64_t> bytes_in, bytes_out;
  };

  // Writes the access line (with `error` when the connection failed).
  void finish(std::string_view error = {}) {
    boost::json::object line{{"client", client}, {"listener", config.name}, {"mode", conf::to_string(config.mode)}};
    if (access.protocol) {
      line["protocol"] = conf::to_string(*access.protocol);
      line["starttls"] = access.starttls;
    }
    if (access.sni) line["sni"] = *access.sni;
    if (const HandshakeInfo* tls = access.tls) {
      line["certificate"] = tls->certificate ? tls->certificate->name : "";
      line["tls_version"] = access.tls_version;
      line["resumed"] = access.resumed;
      line["client_subject"] = tls->client_subject;
      line["client_verify"] = tls->client_verify;
    }
    if (access.pool) line["pool"] = *access.pool;
    if (access.server) line["server"] = *access.server;
    if (access.backend_resumed) line["backend_resumed"] = *access.backend_resumed;
    if (access.bytes_in) line["bytes_in"] = *access.bytes_in;
    if (access.bytes_out) line["bytes_out"] = *access.bytes_out;
    if (!error.empty()) line["error"] = error;
    line["duration_ms"] = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
    log::access(std::move(line));
  }

  Worker& worker;
  std::shared_ptr<Generation> generation;
  const ListenerRuntime& listener;
  const conf::Listener& config;
  TrackedConnection tracked;
  asio::steady_timer& watchdog;
  const Clock::time_point started = Clock::now();
  tcp::endpoint client_endpoint;
  tcp::endpoint local_endpoint;
  std::string client;
  Access access;
};

// Where a relay goes and what the backend gets before the client's bytes.
struct RelayPlan {
  std::string_view sni;  // routes by it ("" for tcp)
  const HandshakeInfo* tls_info = nullptr;
  const char* tls_version = nullptr;
  const BackendOpening* opening = nullptr;    // starttls listeners
  std::span<const std::uint8_t> first_bytes;  // passthrough: the ClientHello, as it came
};

// The server connection for a relay (the connect target lives only while
// connecting, not in the relay's frame for the stream's whole life).
asio::awaitable<std::optional<BackendConnection>> connect_for(StreamConnection& c, const RelayPlan& plan,
                                                              const conf::Route* route, const PoolRuntime* pool) {
  ConnectTarget target;
  target.pool = pool;
  target.hash_key = balancer::hash_key(c.client_endpoint.address().to_string());
  target.affinity = route != nullptr && route->affinity == conf::Affinity::source_ip;
  target.proxy_protocol = c.config.proxy_protocol;
  target.client = c.client_endpoint;
  target.local = c.local_endpoint;
  target.tls_info = plan.tls_info;
  target.tls_version = plan.tls_version;
  target.opening = plan.opening;
  co_return co_await connect_backend(*c.generation, c.worker.index(), target);
}

// Routes, connects and copies both ways until both directions end, an
// error, or the idle timeout; then writes the access line.
asio::awaitable<void> relay(StreamConnection& c, TlsStream& front, const RelayPlan& plan) {
  const auto [route, pool] = c.generation->route_by_sni(c.listener, plan.sni);
  if (pool == nullptr) {
    log::warning("no_route", {{"listener", c.config.name}, {"client", c.client}, {"sni", plan.sni}});
    c.finish("no route");
    co_return;
  }
  c.access.pool = &pool->config->name;
  if (route != nullptr && !admits(*route, c.client_endpoint.address())) {
    log::warning("access_denied", {{"listener", c.config.name},
                                   {"client", c.client},
                                   {"sni", plan.sni},
                                   {"reason", "the client is not allowed on the route"}});
    c.finish("access denied");
    co_return;
  }

  auto backend = co_await connect_for(c, plan, route, pool);
  if (!backend) {
    log::warning("no_backend", {{"listener", c.config.name}, {"client", c.client}, {"pool", pool->config->name}});
    c.finish("no server reachable");
    co_return;
  }
  c.access.server = &backend->server->config->name;
  if (backend->stream->is_tls()) c.access.backend_resumed = SSL_session_reused(backend->stream->ssl()) == 1;

  const Clock::duration idle_timeout = route != nullptr && route->idle_timeout ? Clock::duration(*route->idle_timeout)
                                                                               : Clock::duration(c.config.idle_timeout);
  Clock::time_point last_activity = Clock::now();
  std::uint64_t bytes_in = plan.first_bytes.size();
  std::uint64_t bytes_out = 0;
  const error_code replayed = co_await backend->stream->write_all(plan.first_bytes.data(), plan.first_bytes.size());
  if (!replayed) {
    // Idle for idle_timeout, or force-closed at drain_timeout: both
    // directions end. A reload lets the stream finish.
    StreamExpiry expiry{front, *backend->stream};
    IdleGuard guard(c.watchdog, c.tracked.handle());
    guard.arm(&last_activity, idle_timeout, OnDrain::finish, &expiry);
    co_await both_with_guard(pump(front, *backend->stream, last_activity, bytes_in),
                             pump(*backend->stream, front, last_activity, bytes_out), guard);
  }
  release_backend(*c.generation, c.worker.index(), *backend, pool);
  c.access.bytes_in = bytes_in;
  c.access.bytes_out = bytes_out;
  c.finish(replayed ? "the server closed before the ClientHello was relayed: " + replayed.message() : "");
}

// A starttls listener's plaintext opening; false (with the access line
// written) when the client did not get to TLS.
asio::awaitable<bool> open_starttls(StreamConnection& c, TlsStream& front, HandshakeInfo& info) {
  const conf::StartTls protocol = c.config.starttls;
  c.access.protocol = protocol;
  const mail::ClientOpening opened =
      co_await mail::open_client(front, protocol, c.listener.greeting_name, c.started + c.config.handshake_timeout);
  if (!opened.start_tls) {
    c.finish(opened.ended);
    co_return false;
  }
  const std::size_t dropped = opened.pipelined + front.start_tls(c.listener.tls->new_connection(&info));
  if (dropped > 0)
    log::warning("starttls_pipelined",
                 {{"listener", c.config.name},
                  {"client", c.client},
                  {"protocol", conf::to_string(protocol)},
                  {"bytes", dropped},
                  {"action", "discarded: bytes sent after STARTTLS before TLS are never relayed"}});
  co_return true;
}

// Reads the client's bytes into `peek` until it has the whole ClientHello
// or knows it is not one; an error when the client ended or failed first.
asio::awaitable<error_code> read_client_hello(TlsStream& front, ClientHelloPeek& peek) {
  std::array<std::uint8_t, 4096> chunk;
  while (peek.state() == ClientHelloPeek::State::need_more) {
    auto [ec, n] = co_await front.read_some(chunk.data(), chunk.size());
    if (ec) co_return ec;
    peek.feed(std::span<const std::uint8_t>(chunk.data(), n));
  }
  co_return error_code{};
}

}  // namespace

asio::awaitable<void> serve_passthrough(Worker& worker, std::shared_ptr<Generation> generation,
                                        const ListenerRuntime& listener, tcp::socket socket, tcp::endpoint client) {
  asio::steady_timer watchdog_timer(co_await asio::this_coro::executor);
  StreamConnection c(worker, std::move(generation), listener, socket, client, watchdog_timer);
  TlsStream front(std::move(socket), nullptr);
  ClientHelloPeek peek;
  const auto read = co_await with_timeout(read_client_hello(front, peek), c.config.handshake_timeout);
  std::string error;
  if (!read) error = "no complete ClientHello within handshake_timeout";
  else if (peek.state() == ClientHelloPeek::State::invalid) error = peek.error();
  else if (*read) error = "the client closed before its ClientHello was complete: " + read->message();
  if (!error.empty()) {
    log::info("client_hello_failed", {{"listener", c.config.name}, {"client", c.client}, {"error", error}});
    c.finish(error);
    co_return;
  }
  c.access.sni = peek.sni();
  const RelayPlan plan{.sni = peek.sni(), .first_bytes = peek.bytes()};
  co_await relay(c, front, plan);
}

asio::awaitable<void> serve_l4(Worker& worker, std::shared_ptr<Generation> generation, const ListenerRuntime& listener,
                               tcp::socket socket, tcp::endpoint client) {
  asio::steady_timer watchdog_timer(co_await asio::this_coro::executor);
  StreamConnection c(worker, std::move(generation), listener, socket, client, watchdog_timer);
  const conf::Listener& config = c.config;
  const bool starttls = config.starttls != conf::StartTls::none;

  HandshakeInfo info;
  TlsStream front(std::move(socket), starttls ? nullptr : listener.tls->new_connection(&info));
  if (starttls) {
    const bool opened = co_await open_starttls(c, front, info);
    if (!opened) co_return;
  }
  if (!co_await accept_handshake(worker.metrics(), front, info, config, c.client)) {
    if (starttls) c.finish("TLS handshake failed after STARTTLS");
    co_return;
  }
  c.access.starttls = starttls;
  c.access.sni = info.sni;
  c.access.tls = &info;
  c.access.tls_version = SSL_get_version(front.ssl());
  c.access.resumed = SSL_session_reused(front.ssl()) == 1;

  std::optional<mail::ServerOpening> opening;
  if (starttls) opening.emplace(config.starttls, listener.greeting_name);
  const RelayPlan plan{.sni = info.sni,
                       .tls_info = &info,
                       .tls_version = SSL_get_version(front.ssl()),
                       .opening = opening ? &*opening : nullptr};
  co_await relay(c, front, plan);
}

asio::awaitable<void> serve_tcp(Worker& worker, std::shared_ptr<Generation> generation, const ListenerRuntime& listener,
                                tcp::socket socket, tcp::endpoint client) {
  asio::steady_timer watchdog_timer(co_await asio::this_coro::executor);
  StreamConnection c(worker, std::move(generation), listener, socket, client, watchdog_timer);
  TlsStream front(std::move(socket), nullptr);
  const RelayPlan plan;
  co_await relay(c, front, plan);
}

}  // namespace gatehouse::proxy
