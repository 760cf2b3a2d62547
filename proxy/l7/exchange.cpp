#include "proxy/l7/exchange.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

#include "balancer/balancer.h"
#include "proxy/l7/affinity_cookie.h"
#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"
#include "proxy/runtime/metrics.h"

namespace gatehouse::proxy::l7 {

using namespace asio::experimental::awaitable_operators;

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

std::string describe_duration(Clock::duration d) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + " s";
  return std::to_string(ms) + " ms";
}

// What an exchange may do besides answering.
struct ExchangeOptions {
  // Not a byte of answer yet when the backend ends the connection: say
  // retry instead of failing (see forward() for when).
  bool may_retry = false;
  // The client connection can own a backend connection (HTTP/1.1).
  bool can_bind = false;
  // The connection is (or becomes, by the request's credentials) private.
  bool binds = false;
};

// One exchange on one backend connection. Its coroutines are members so
// that they never outlive what they refer to.
class Exchange final : IdleExpiry {
 public:
  Exchange(RequestContext& context, const RequestHead& head, Downstream& down, BackendConnection& backend,
           ExchangeResult& result, Clock::duration idle)
      : context_(context),
        head_(head),
        down_(down),
        backend_(*backend.stream),
        result_(result),
        idle_(idle),
        body_cancel_(context.executor) {}

  enum class Outcome { done, failed_before_response, failed_after_head, timed_out, retry, http11_required };

  asio::awaitable<Outcome> run(ExchangeOptions options) {
    options_ = options;
    last_activity_ = Clock::now();
    body_cancel_.expires_at(Clock::time_point::max());
    if (!head_.has_body()) body_sent_ = true;
    try {
      // The connection's (HTTP/1.1) or stream's (HTTP/2) guard interrupts
      // the exchange when it goes idle (expire()).
      GuardScope scope(context_.guard, *this);
      if (head_.has_body()) co_await (send_body_or_cancel() && receive_response());
      else co_await receive_response();
    } catch (const boost::system::system_error&) {
      // Cancelled from outside (the HTTP/2 stream was closed): Asio reports
      // that by throwing from the next wait.
      backend_.abort();
      result_.error = "cancelled";
      co_return failed();
    }
    co_return outcome();
  }

  // Added to the response head (cookie affinity).
  void set_cookie(std::string cookie) { set_cookie_ = std::move(cookie); }
  // The connection must stay with its client from now on.
  bool binds() const { return options_.binds; }

  bool reusable() const {
    return result_.response_done && !result_.backend_closes && !close_delimited_ && body_sent_ && !extra_bytes_ &&
           !backend_.aborted();
  }

 private:
  // How the response ended, when not by completing.
  enum class Ending { none, failed, retry, http11_required };

  // Arms the connection's guard for this exchange, and gives it back disarmed.
  struct GuardScope {
    GuardScope(IdleGuard& guard, Exchange& exchange) : guard(guard) {
      guard.arm(&exchange.last_activity_, exchange.idle_, OnDrain::finish, &exchange);
    }
    ~GuardScope() { guard.disarm(); }
    IdleGuard& guard;
  };

  Outcome failed() const { return head_delivered_ ? Outcome::failed_after_head : Outcome::failed_before_response; }

  Outcome outcome() {
    if (expired_) {
      backend_.abort();
      if (context_.handle.force_close) {
        result_.error = "closed by drain";
        return failed();
      }
      result_.error = "backend sent nothing for " + describe_duration(idle_);
      return head_delivered_ ? Outcome::failed_after_head : Outcome::timed_out;
    }
    switch (ending_) {
      case Ending::retry: return Outcome::retry;
      case Ending::http11_required: return Outcome::http11_required;
      case Ending::failed: return failed();
      case Ending::none: break;
    }
    return Outcome::done;
  }

  // Idle for idle_, or force-closed by a drain: whatever waits returns.
  void expire(bool) override {
    expired_ = true;
    backend_.abort();
    body_cancel_.cancel();               // stops forwarding the request body
    if (head_delivered_) down_.abort();  // a client write that waits returns too
    else down_.cancel();                 // as does a body read or a 1xx write
  }

  asio::awaitable<void> send_body_or_cancel() { co_await (send_body() || wait_cancel()); }

  asio::awaitable<void> wait_cancel() { co_await body_cancel_.async_wait(use_tuple); }

  asio::awaitable<void> send_body() {
    std::string piece;
    std::string framed;
    for (;;) {
      piece.clear();
      bool done = false;
      if (auto ec = co_await down_.read_body(piece, done)) {
        result_.client_failed = true;
        result_.error = "client: " + ec.message();
        ending_ = Ending::failed;
        backend_.abort();
        co_return;
      }
      last_activity_ = Clock::now();
      result_.bytes_in += piece.size();
      std::string_view out = piece;
      if (head_.chunked) {
        framed.clear();
        append_chunk(framed, piece);
        if (done) append_last_chunk(framed, down_.request_trailers());
        out = framed;
      }
      if (!out.empty()) {
        if (auto ec = co_await backend_.write_all(out.data(), out.size())) {
          // The backend stopped reading (it may have answered early, as IIS
          // does with 401 to a POST): its response, if any, still counts.
          result_.request_body_done = done;
          co_return;
        }
        last_activity_ = Clock::now();
      }
      if (done) {
        result_.request_body_done = true;
        body_sent_ = true;
        co_return;
      }
    }
  }

  void end_as(Ending ending, std::string why) {
    if (ending_ == Ending::none) {
      ending_ = ending;
      if (result_.error.empty()) result_.error = std::move(why);
    }
    backend_.abort();
    body_cancel_.cancel();
  }
  void fail_response(std::string why) { end_as(Ending::failed, std::move(why)); }

  // Sends what is queued for the client; false (the exchange failed) when
  // the client went away.
  asio::awaitable<bool> flush_client() {
    if (auto ec = co_await down_.flush()) {
      result_.client_failed = true;
      fail_response("client: " + ec.message());
      co_return false;
    }
    co_return true;
  }

  asio::awaitable<void> receive_response() {
    parser_.emplace();
    if (head_.method == "HEAD") parser_->skip(true);
    std::string carry;
    bool any_byte = false;
    for (;;) {
      IoBuffer buffer;
      auto [ec, n] = co_await backend_.read_some(buffer.data(), IoBuffer::size);
      if (ec == asio::error::eof && parser_->is_header_done() && parser_->need_eof()) {
        // A close-delimited body ends here.
        error_code eof_ec;
        parser_->feed_eof(eof_ec);
        down_.end({});
        result_.response_done = true;
        co_await flush_client();
        co_return;
      }
      if (ec) {
        on_read_error(ec, any_byte);
        co_return;
      }
      any_byte = true;
      last_activity_ = Clock::now();
      std::string_view data(buffer.data(), n);
      if (!carry.empty()) {
        carry.append(data);
        data = carry;
      }
      const Fed fed = feed(data);
      if (fed == Fed::failed) co_return;
      carry = std::string(data);
      if (!co_await flush_client()) co_return;
      if (fed == Fed::done) {
        result_.response_done = true;
        // Answered before the request body ended (a 401 or 413 to an upload,
        // or a final status to an Expect: 100-continue the client is still
        // waiting on): stop forwarding; the client connection is not reused.
        if (!body_sent_) body_cancel_.cancel();
        co_return;
      }
      if (carry.size() > kMaxHeaderBytes + IoBuffer::size) {
        fail_response("backend response head over 64 KiB");
        co_return;
      }
    }
  }

  void on_read_error(error_code ec, bool any_byte) {
    if (!any_byte && options_.may_retry && ec != asio::error::operation_aborted) {
      // Not a byte of answer: see forward() for when that may be sent again.
      end_as(Ending::retry, {});
      return;
    }
    if (result_.client_failed) return;
    fail_response(ec == asio::error::eof ? "backend closed the connection before the response ended"
                                         : "backend: " + ec.message());
  }

  enum class Fed { more, done, failed };

  // Parses what the backend sent and queues it for the client; `data` keeps
  // what the parser could not take yet.
  Fed feed(std::string_view& data) {
    while (!data.empty()) {
      error_code perr;
      const std::size_t used = parser_->feed(data, perr);
      if (perr) {
        fail_response("backend sent a malformed response: " + parser_->violation());
        return Fed::failed;
      }
      data.remove_prefix(used);
      if (parser_->is_header_done() && !head_delivered_) {
        const HeadSeen seen = on_head(parser_->head());
        if (seen == HeadSeen::failed) return Fed::failed;
        if (seen == HeadSeen::interim) {
          parser_.emplace();
          if (head_.method == "HEAD") parser_->skip(true);
          continue;
        }
      }
      if (!parser_->body().empty()) {
        result_.bytes_out += parser_->body().size();
        down_.body(parser_->body());
        parser_->body().clear();
      }
      if (parser_->is_done()) {
        down_.end(parser_->trailers());
        extra_bytes_ = !data.empty();
        return Fed::done;
      }
      if (used == 0) break;
    }
    return Fed::more;
  }

  enum class HeadSeen { interim, final, failed };

  HeadSeen on_head(ResponseHead& rh) {
    if (rh.status / 100 == 1) {
      if (rh.status == 101) {
        fail_response("backend switched protocols, which is not proxied");
        return HeadSeen::failed;
      }
      down_.interim(rh);
      return HeadSeen::interim;
    }
    if (response_binds(rh.status, rh.fields)) options_.binds = true;
    if (options_.binds && !options_.can_bind) {
      // Nothing of it reaches the client, and the connection that offered
      // the handshake is never reused.
      end_as(Ending::http11_required, "the response offers Windows authentication, which needs HTTP/1.1");
      return HeadSeen::failed;
    }
    if (options_.binds && !rh.keep_alive) down_.close_after();
    const bool has_body = head_.method != "HEAD" && rh.status != 204 && rh.status != 304;
    if (!set_cookie_.empty()) rh.fields.push_back({"Set-Cookie", set_cookie_});
    close_delimited_ = rh.close_delimited;
    result_.backend_closes = !rh.keep_alive;
    result_.status = rh.status;
    down_.head(rh, has_body);
    head_delivered_ = true;
    return HeadSeen::final;
  }

  RequestContext& context_;
  const RequestHead& head_;
  Downstream& down_;
  TlsStream& backend_;
  ExchangeResult& result_;
  Clock::duration idle_;
  asio::steady_timer body_cancel_;
  Clock::time_point last_activity_;
  ExchangeOptions options_;
  std::optional<ResponseParser> parser_;
  Ending ending_ = Ending::none;
  bool head_delivered_ = false;   // the final response head went to the client
  bool close_delimited_ = false;  // the response body ends with the connection
  bool body_sent_ = false;        // the whole request body went to the backend
  bool extra_bytes_ = false;      // the backend sent more than the response
  bool expired_ = false;          // the guard ended the exchange (idle or drain)
  std::string set_cookie_;
};

// Methods a proxy may send twice (RFC 9110 9.2.2).
bool idempotent(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "OPTIONS" || method == "PUT" || method == "DELETE" ||
         method == "TRACE";
}

// The bytes a maglev pool hashes: its hash_key's header or cookie when the
// request has it, else the client address.
std::string_view hash_source(const conf::Pool& pool, const RequestHead& head, std::string_view client) {
  if (pool.hash_key.starts_with("header:")) {
    if (const std::string* v = find_field(head.fields, pool.hash_key.substr(7))) return *v;
  } else if (pool.hash_key == "cookie") {
    if (const std::string* v = find_field(head.fields, "cookie")) return *v;
  }
  return client;
}

}  // namespace

namespace {

void send_whole(Downstream& down, const http::ErrorResponse& response, bool head_request) {
  down.head(response.head, !head_request);
  if (!head_request) down.body(response.body);
  down.end({});
}

}  // namespace

void send_error(Downstream& down, int status, std::string_view detail, bool head_request) {
  send_whole(down, http::make_error(status, detail), head_request);
}

void send_redirect(Downstream& down, int status, std::string_view location, bool head_request) {
  send_whole(down, http::make_redirect(status, location), head_request);
}

void BackendBinding::bind(BackendConnection connection, const PoolRuntime* routed_pool, WorkerMetrics& metrics) {
  release();
  connection_.emplace(std::move(connection));
  routed_pool_ = routed_pool;
  metrics_ = &metrics;
  metrics_->bound_connections(connection_->pool->metric_id, 1);
}

void BackendBinding::lose() {
  release();
  close_client = true;
}

void BackendBinding::release() {
  if (!connection_) return;
  metrics_->bound_connections(connection_->pool->metric_id, -1);
  if (connection_->stream) connection_->stream->abort();
  release_backend(generation_, worker_, *connection_, connection_->pool);
  connection_.reset();
}

asio::awaitable<void> BackendBinding::watch() {
  TlsStream& stream = *connection_->stream;
  for (;;) {
    const error_code ec = co_await stream.wait_readable();
    if (ec) break;  // cancelled
    // Readable while no request is out: a close, an alert, or bytes nobody
    // asked for; only a late TLS 1.3 ticket leaves it quiet.
    if (!stream.quiet()) break;
  }
}

namespace {

// Gives the server's active count back however a pooled exchange ends.
struct Lease {
  const Generation& generation;
  std::size_t worker;
  const PoolRuntime* pool;
  std::optional<BackendConnection> backend;
  ~Lease() { release(); }
  void release() {
    if (backend) release_backend(generation, worker, *backend, pool);
    backend.reset();
  }
};

// One request forwarded: on the client's bound connection, or on a server
// of the route's pool (sent once more elsewhere when that is safe).
class Forwarder {
 public:
  Forwarder(RequestContext& context, const RequestHead& head, const conf::Route& route, const PoolRuntime& pool,
            Downstream& down, BackendBinding* binding)
      : context_(context),
        head_(head),
        route_(route),
        pool_(pool),
        down_(down),
        binding_(binding),
        auth_(request_auth(head.fields)),
        idle_(route.idle_timeout ? Clock::duration(*route.idle_timeout)
                                 : Clock::duration(context.listener.config->idle_timeout)) {}

  // Before anything is sent: false when the request cannot be forwarded
  // at all (the result says why).
  bool prepare() {
    start_result();
    if (auth_binds() && binding_ == nullptr) {
      result_.http11_required = true;
      result_.error = auth_->scheme + " authentication is per connection and needs HTTP/1.1";
      return false;
    }
    request_head_ = serialize_request(
        head_, ForwardedFor{context_.client_address, head_.host, "https", context_.client_cert}, head_.has_body());
    return true;
  }
  bool bound() const { return binding_ != nullptr && binding_->bound(); }
  ExchangeResult take_result() { return std::move(result_); }

 private:
  bool auth_binds() const { return auth_ && auth_->connection_bound; }

  void start_result() {
    result_ = ExchangeResult{};
    result_.request_body_done = !head_.has_body();
    if (auth_) {
      result_.auth_scheme = auth_->scheme;
      result_.auth_user = auth_->user;
    }
  }

  void fail(int status, std::string detail) {
    result_.error = detail;
    result_.status = status;
    send_error(down_, status, detail, head_.method == "HEAD");
  }

  // What the client gets when the exchange did not complete.
  asio::awaitable<void> report(Exchange::Outcome outcome) {
    // The client gets the status and a short reason; the log keeps the
    // exchange's own error.
    switch (outcome) {
      case Exchange::Outcome::failed_before_response:
        if (!result_.client_failed) {
          std::string why = std::move(result_.error);
          fail(502, "backend \"" + result_.server + "\" failed before answering");
          result_.error = std::move(why);
          co_await down_.flush();
        }
        break;
      case Exchange::Outcome::timed_out: {
        std::string why = std::move(result_.error);
        fail(504, "backend \"" + result_.server + "\" did not answer in time");
        result_.error = std::move(why);
        co_await down_.flush();
        break;
      }
      case Exchange::Outcome::failed_after_head: down_.abort(); break;
      default: break;
    }
    if (!result_.error.empty() && !result_.http11_required)
      log::warning("request_failed", {{"listener", context_.listener.config->name},
                                      {"client", context_.client_address},
                                      {"pool", pool_.config->name},
                                      {"server", result_.server},
                                      {"status", result_.status},
                                      {"error", result_.error}});
  }

  // Who the bound connection is authenticated as, for this request's log
  // line and the next ones.
  void remember_auth() {
    if (binding_ == nullptr || !binding_->bound()) return;
    if (auth_binds()) {
      binding_->scheme = auth_->scheme;
      if (auth_->final_leg && result_.status != 401 && result_.status != 407) binding_->user = auth_->user;
    } else if (!auth_) {
      result_.auth_scheme = binding_->scheme;
      result_.auth_user = binding_->user;
    }
  }

 public:
  // Every request of a bound client goes on its connection, wherever it
  // routes: another connection would carry another identity (or none).
  asio::awaitable<void> on_bound_connection() {
    BackendConnection& backend = binding_->connection();
    result_.server = backend.server->config->name;
    result_.backend_reused = true;
    result_.bound = true;
    if (binding_->pool() != &pool_)
      log::info("bound_route_mismatch", {{"listener", context_.listener.config->name},
                                         {"client", context_.client_address},
                                         {"bound_pool", binding_->pool()->config->name},
                                         {"pool", pool_.config->name},
                                         {"server", result_.server}});
    if (!backend.stream->quiet()) {
      // The backend closed it while the client was between requests. No
      // other connection may answer for it: the client connection closes
      // unanswered, as at any keep-alive race, and the client starts over.
      binding_->lose();
      result_.client_failed = true;
      result_.error = "the bound backend connection was closed by the server";
      co_return;
    }
    if (auto ec = co_await backend.stream->write_all(request_head_.data(), request_head_.size())) {
      binding_->lose();
      fail(502, "backend \"" + result_.server + "\": " + ec.message());
      co_return;
    }
    Exchange exchange(context_, head_, down_, backend, result_, idle_);
    const auto outcome = co_await exchange.run({.may_retry = false, .can_bind = true, .binds = true});
    const bool kept = outcome == Exchange::Outcome::done && exchange.reusable();
    co_await report(outcome);
    remember_auth();
    if (!kept) binding_->lose();
  }

  ConnectTarget connect_target() {
    ConnectTarget target;
    target.pool = &pool_;
    target.hash_key = balancer::hash_key(hash_source(*pool_.config, head_, context_.client_address));
    if (route_.affinity == conf::Affinity::cookie) {
      // A tampered or stale cookie is ignored: the request is balanced anew.
      cookie_server_ = affinity_cookie_server(context_.generation, pool_, head_.fields);
      target.preferred = cookie_server_;
    }
    target.affinity = route_.affinity == conf::Affinity::source_ip;
    target.reuse = true;
    return target;
  }

  // A server of the pool, and once more on a fresh connection (another
  // server, when the first one died) when the backend ends the connection
  // before a byte of answer: a kept-alive connection it closed just then
  // (nothing was processed), or a server that died under an idempotent
  // request without a body (RFC 9110 9.2.2). Never a request that carries
  // Windows credentials: its connection is its own.
  asio::awaitable<void> on_pool() {
    ConnectTarget target = connect_target();
    for (int attempt = 0; attempt < 2; ++attempt, start_result(), target.reuse = false) {
      // (Not co_await inside the braces: GCC 12 mis-handles co_await in
      // aggregate initialisers.)
      auto connected = co_await connect_backend(context_.generation, context_.worker.index(), target);
      Lease lease{context_.generation, context_.worker.index(), &pool_, std::move(connected)};
      if (!lease.backend) {
        if (context_.generation.effective_pool(&pool_)->any_available())
          fail(502, "no server of pool \"" + pool_.config->name + "\" could be reached");
        else fail(503, "no server of pool \"" + pool_.config->name + "\" is available");
        co_return;
      }
      BackendConnection& backend = *lease.backend;
      result_.server = backend.server->config->name;
      result_.backend_reused = backend.reused;
      const bool may_retry =
          attempt == 0 && !head_.has_body() && !auth_binds() && (backend.reused || idempotent(head_.method));
      if (auto ec = co_await backend.stream->write_all(request_head_.data(), request_head_.size())) {
        lease.release();
        if (may_retry) continue;
        fail(502, "backend \"" + result_.server + "\": " + ec.message());
        co_return;
      }
      Exchange exchange(context_, head_, down_, backend, result_, idle_);
      if (route_.affinity == conf::Affinity::cookie)
        exchange.set_cookie(
            affinity_set_cookie(context_.generation, pool_, backend.pool, backend.server_index, cookie_server_));
      const auto outcome =
          co_await exchange.run({.may_retry = may_retry, .can_bind = binding_ != nullptr, .binds = auth_binds()});
      if (outcome == Exchange::Outcome::retry) continue;  // the lease closes this connection
      if (outcome == Exchange::Outcome::http11_required) {
        result_.http11_required = true;
        co_return;  // the lease closes the connection that offered it
      }
      settle(lease, exchange, outcome);
      co_await report(outcome);
      remember_auth();
      co_return;
    }
    fail(502, "no server of pool \"" + pool_.config->name + "\" answered");
  }

 private:
  // The backend connection after a final answer: bound to the client, kept
  // for the next request, or closed.
  void settle(Lease& lease, const Exchange& exchange, Exchange::Outcome outcome) {
    if (outcome != Exchange::Outcome::done || !exchange.reusable()) {
      lease.release();
      // The client believes its connection is (becoming) authenticated;
      // without the backend connection that holds it, it must start over.
      if (exchange.binds() && binding_ != nullptr) binding_->close_client = true;
      return;
    }
    if (exchange.binds()) {
      // From now on this connection is the client's alone.
      binding_->bind(std::move(*lease.backend), &pool_, context_.worker.metrics());
      result_.bound = true;
    } else {
      const bool current = context_.worker.generation().get() == &context_.generation;
      keep_backend(context_.generation, context_.worker.index(), std::move(*lease.backend), &pool_, current);
    }
    lease.backend.reset();
  }

  RequestContext& context_;
  const RequestHead& head_;
  const conf::Route& route_;
  const PoolRuntime& pool_;
  Downstream& down_;
  BackendBinding* binding_;
  const std::optional<RequestAuth> auth_;
  const Clock::duration idle_;
  std::string request_head_;
  std::optional<std::size_t> cookie_server_;
  ExchangeResult result_;
};

}  // namespace

asio::awaitable<ExchangeResult> forward(RequestContext& context, const RequestHead& head, const conf::Route& route,
                                        const PoolRuntime& pool, Downstream& down, BackendBinding* binding) {
  Forwarder forwarder(context, head, route, pool, down, binding);
  if (forwarder.prepare()) {
    if (forwarder.bound()) co_await forwarder.on_bound_connection();
    else co_await forwarder.on_pool();
  }
  co_return forwarder.take_result();
}

}  // namespace gatehouse::proxy::l7
