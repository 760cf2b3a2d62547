#pragma once
// The one request path. The HTTP/1.1 and HTTP/2 codecs each turn what the
// client sent into an http::RequestHead and a Downstream (where the answer
// goes), and hand both to handle_request(), which routes, refuses (400, 404,
// 421, 503), forwards, and finishes (metrics and the access-log line). The
// request path never sees which protocol it serves; the codecs never route,
// forward or log a request.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <string>
#include <string_view>

#include "proxy/l7/exchange.h"
#include "proxy/l7/routing.h"
#include "proxy/runtime/generation.h"
#include "proxy/runtime/worker.h"
#include "proxy/tls/tls_stream.h"

namespace gatehouse::proxy::l7 {

// What every request of one client connection shares.
struct ClientConnection {
  Worker& worker;
  const Generation& generation;
  const ListenerRuntime& listener;
  TlsStream& stream;
  const HandshakeInfo& info;
  tcp::endpoint client;
  std::string client_text;     // "ip:port", for logs
  std::string client_address;  // "ip", for X-Forwarded-For
  bool resumed = false;        // the TLS session was resumed
  ConnectionHandle& handle;
  asio::steady_timer& watchdog;
  // The backend connection this client connection owns once it carried
  // Windows authentication; null where a connection cannot be owned
  // (HTTP/2: such requests get HTTP_1_1_REQUIRED).
  BackendBinding* binding = nullptr;
};

// Where one request's answer goes, and what watches it.
struct RequestIo {
  Downstream& down;
  // The connection's (HTTP/1.1) or the stream's (HTTP/2) idle guard, armed
  // with the route's idle_timeout while the exchange runs.
  IdleGuard& guard;
  asio::any_io_executor executor;
};

// Routes `head` (as the client sent it), answers an error itself or
// forwards it, sends what is queued, and counts and logs it. The result
// says what the codec must do next (close, reset the stream...).
asio::awaitable<ExchangeResult> handle_request(ClientConnection& connection, const RequestHead& head, RequestIo io);

// Counts one answered request (metrics) and writes its access-log line;
// for requests that never reached handle_request (a malformed head).
void finish_request(const ClientConnection& connection, const RequestHead& head, const ExchangeResult& result,
                    const Routed& routed, Clock::time_point started);

}  // namespace gatehouse::proxy::l7
