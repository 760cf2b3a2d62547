#pragma once
// One request forwarded to an HTTP/1.1 backend: pick a server of the route's
// pool (a kept-alive connection when one is idle, else connect, verify and
// resume TLS), send the head, then stream the request body and the response
// at once, each with back-pressure, so neither body is ever held whole. The
// HTTP/1.1 and HTTP/2 front ends differ only in their Downstream.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "proxy/http/http_message.h"
#include "proxy/l7/windows_auth.h"
#include "proxy/runtime/connection.h"
#include "proxy/runtime/generation.h"
#include "proxy/runtime/worker.h"

namespace gatehouse::proxy::l7 {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// The client side of one request.
class Downstream {
 public:
  virtual ~Downstream() = default;
  // Appends the next piece of request body payload to `out`; sets `done`
  // at its end (request_trailers() then holds any trailers).
  virtual asio::awaitable<error_code> read_body(std::string& out, bool& done) = 0;
  virtual const Fields& request_trailers() const = 0;
  // Queue response parts; flush() sends them and waits while the client is
  // slower than the backend.
  virtual void interim(const ResponseHead& head) = 0;  // 1xx
  virtual void head(const ResponseHead& head, bool has_body) = 0;
  virtual void body(std::string_view data) = 0;
  virtual void end(const Fields& trailers) = 0;
  virtual asio::awaitable<error_code> flush() = 0;
  // The response broke after its head went out: the client must not take
  // it for complete (HTTP/1.1: close; HTTP/2: RST_STREAM).
  virtual void abort() = 0;
  // Wakes a pending read_body() or flush() with an error and nothing more
  // (an exchange that timed out before its response head, which then sends
  // 504); the client connection or stream stays usable for that answer.
  virtual void cancel() {}
  // The client connection ends after this response (its bound backend
  // connection does): HTTP/1.1 says so in the head (Connection: close).
  virtual void close_after() {}
};

// A backend connection that belongs to one client connection, because it
// carried Windows authentication (NTLM, Negotiate) or was offered it: IIS
// serves every later request on it as the user who authenticated. It is
// never pooled or lent; every later request of its client goes on it; it
// closes with the client connection, and when the backend ends it, the
// client connection ends too. HTTP/1.1 front end only.
class BackendBinding {
 public:
  BackendBinding(const Generation& generation, std::size_t worker) : generation_(generation), worker_(worker) {}
  ~BackendBinding() { release(); }
  BackendBinding(const BackendBinding&) = delete;
  BackendBinding& operator=(const BackendBinding&) = delete;

  bool bound() const { return connection_.has_value(); }
  BackendConnection& connection() { return *connection_; }
  // The pool whose route bound it (later requests may route elsewhere).
  const PoolRuntime* pool() const { return routed_pool_; }
  // Takes a connection whose server's active count connect_backend took;
  // it counts as bound in `metrics` (its worker's) until it closes.
  void bind(BackendConnection connection, const PoolRuntime* routed_pool, WorkerMetrics& metrics);
  // The backend ended it (or it broke): closes it, and the client
  // connection must end after the response in flight.
  void lose();
  // Until the bound connection is closed by the backend (or confused by
  // bytes nobody asked for); cancelled otherwise by the || it runs in.
  asio::awaitable<void> watch();

  bool close_client = false;  // the client connection ends after this response
  std::string scheme;         // of the authentication the connection carries
  std::string user;           // as the client stated it (NTLM Type 3); "" when unknown

 private:
  void release();
  const Generation& generation_;
  std::size_t worker_;
  std::optional<BackendConnection> connection_;
  const PoolRuntime* routed_pool_ = nullptr;
  WorkerMetrics* metrics_ = nullptr;  // set with connection_
};

struct RequestContext {
  Worker& worker;
  const Generation& generation;
  const ListenerRuntime& listener;
  tcp::endpoint client;
  std::string_view client_address;  // IP only, for X-Forwarded-For
  const ConnectionHandle& handle;
  asio::any_io_executor executor;
  // The connection's (HTTP/1.1) or the stream's (HTTP/2) idle guard, which
  // the exchange arms with its route's idle_timeout.
  IdleGuard& guard;
  // X-Forwarded-Client-Cert for the backend, made once per client connection
  // (HandshakeInfo::client_xfcc); "" without a verified client certificate.
  std::string_view client_cert = {};
};

struct ExchangeResult {
  int status = 0;               // what the client was sent (0 when nothing)
  std::uint64_t bytes_in = 0;   // request body bytes
  std::uint64_t bytes_out = 0;  // response body bytes
  std::string server;
  bool backend_reused = false;
  std::string error;              // "" when the exchange completed
  bool request_body_done = true;  // the whole request body was read from the client
  bool response_done = false;     // the whole response reached the downstream
  bool client_failed = false;     // the client went away or broke; do not reuse its connection
  bool backend_closes = false;    // the response asked to close (HTTP/1.1 clients get the same)
  bool bound = false;             // went on (or bound) a connection private to this client
  // The request or its response needs a connection-bound backend, which an
  // HTTP/2 front end does not give: the stream gets HTTP_1_1_REQUIRED.
  bool http11_required = false;
  std::string auth_scheme;  // from Authorization, or the bound connection's
  std::string auth_user;
};

// Sends a short text/plain error through `down` (nothing must have been sent yet).
void send_error(Downstream& down, int status, std::string_view detail, bool head_request);
// A complete 301/302 response to `location`.
void send_redirect(Downstream& down, int status, std::string_view location, bool head_request);

// `head` has Host, method and target; `route` is the l7 route it matched.
// `binding` is the client connection's (HTTP/1.1); null where connections
// cannot be bound (HTTP/2), and Windows authentication is then refused
// with http11_required before anything of it reaches the client.
asio::awaitable<ExchangeResult> forward(RequestContext& context, const RequestHead& head, const conf::Route& route,
                                        const PoolRuntime& pool, Downstream& down, BackendBinding* binding);

}  // namespace gatehouse::proxy::l7
