#include "proxy/l7/l7_session.h"

#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"

namespace gatehouse::proxy {

asio::awaitable<void> serve_l7(Worker& worker, std::shared_ptr<Generation> generation, const ListenerRuntime& listener,
                               tcp::socket socket, tcp::endpoint client) {
  const conf::Listener& config = *listener.config;
  auto executor = co_await asio::this_coro::executor;
  asio::steady_timer watchdog(executor);
  TrackedConnection tracked(worker, generation.get(), &watchdog);
  ConnectionHandle& handle = tracked.handle();

  HandshakeInfo info;
  TlsStream front(std::move(socket), listener.tls->new_connection(&info));
  l7::ClientConnection connection{.worker = worker,
                                  .generation = *generation,
                                  .listener = listener,
                                  .stream = front,
                                  .info = info,
                                  .client = client,
                                  .client_text = to_string(client),
                                  .client_address = client.address().to_string(),
                                  .handle = handle,
                                  .watchdog = watchdog};
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
