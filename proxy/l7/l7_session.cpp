#include "proxy/l7/l7_session.h"

#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"
#include "proxy/runtime/metrics.h"

namespace gatehouse::proxy {

namespace l7 {

void finish_request(const ClientConnection& connection, std::string_view protocol, const RequestHead& head,
                    const ExchangeResult& result, const Routed& routed, std::chrono::steady_clock::time_point started) {
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  connection.worker.metrics().request(connection.generation.request_series(connection.listener, routed.pool),
                                      result.status, seconds);
  if (!log::access_enabled()) return;
  boost::json::object fields{{"client", connection.client_text},
                             {"listener", connection.listener.config->name},
                             {"mode", "l7"},
                             {"protocol", protocol},
                             {"sni", connection.info.sni},
                             {"certificate", connection.info.certificate ? connection.info.certificate->name : ""},
                             {"tls_version", SSL_get_version(connection.stream.ssl())},
                             {"resumed", connection.resumed},
                             {"client_subject", connection.info.client_subject},
                             {"client_verify", connection.info.client_verify},
                             {"host", head.host},
                             {"method", head.method},
                             {"path", head.target}};
  fields["status"] = result.status;
  fields["bytes_in"] = result.bytes_in;
  fields["bytes_out"] = result.bytes_out;
  fields["duration_ms"] = seconds * 1000;
  if (routed.pool != nullptr) fields["pool"] = routed.pool->config->name;
  if (!result.server.empty()) {
    fields["server"] = result.server;
    fields["backend_reused"] = result.backend_reused;
  }
  if (!result.auth_scheme.empty()) {
    // The scheme and the user as the client stated it; never a secret.
    boost::json::object auth{{"scheme", result.auth_scheme}};
    if (!result.auth_user.empty()) auth["user"] = result.auth_user;
    fields["auth"] = std::move(auth);
  }
  if (result.bound) fields["bound"] = true;
  if (!result.error.empty()) fields["error"] = result.error;
  else if (!routed.detail.empty()) fields["error"] = routed.detail;
  log::access(std::move(fields));
}

}  // namespace l7

asio::awaitable<void> serve_l7(Worker& worker, std::shared_ptr<Generation> generation, const ListenerRuntime& listener,
                               tcp::socket socket) {
  const conf::Listener& config = *listener.config;
  auto executor = co_await asio::this_coro::executor;
  asio::steady_timer watchdog(executor);
  TrackedConnection tracked(worker, generation.get(), &watchdog);
  ConnectionHandle& handle = tracked.handle();

  error_code ignored;
  const tcp::endpoint client = socket.remote_endpoint(ignored);
  HandshakeInfo info;
  TlsStream front(std::move(socket), listener.tls->new_connection(&info));
  l7::ClientConnection connection{worker, *generation, listener,          front,
                                  info,   client,      to_string(client), client.address().to_string(),
                                  false,  handle,      watchdog};
  if (!co_await accept_handshake(worker.metrics(), front, info, config, connection.client_text)) co_return;
  connection.resumed = SSL_session_reused(front.ssl()) == 1;

  const uint8_t* alpn = nullptr;
  unsigned alpn_len = 0;
  SSL_get0_alpn_selected(front.ssl(), &alpn, &alpn_len);
  if (std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) == "h2") {
    co_await l7::serve_http2(connection);
  } else {
    co_await l7::serve_http1(connection);
  }
}

}  // namespace gatehouse::proxy
