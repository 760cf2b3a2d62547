#include "proxy/l7/exchange.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/string.hpp>

#include <algorithm>

#include "balancer/balancer.h"
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

  // `can_bind`: the client connection can own a backend connection (HTTP/1.1).
  // `binds`: this exchange's connection is (or becomes) private already.
  asio::awaitable<Outcome> run(bool may_retry, bool can_bind, bool binds) {
    may_retry_ = may_retry;
    can_bind_ = can_bind;
    binds_ = binds;
    last_activity_ = Clock::now();
    body_cancel_.expires_at(Clock::time_point::max());
    const bool has_body = head_.chunked || (head_.content_length && *head_.content_length > 0);
    if (!has_body) body_sent_ = true;
    bool idle = false;
    try {
      // The connection's (HTTP/1.1) or stream's (HTTP/2) guard interrupts
      // the exchange when it goes idle (expire()).
      GuardScope scope(context_.guard, *this);
      if (has_body) co_await (send_body_or_cancel() && receive_response());
      else co_await receive_response();
      idle = expired_;
    } catch (const boost::system::system_error&) {
      // Cancelled from outside (the HTTP/2 stream was closed): Asio reports
      // that by throwing from the next wait.
      backend_.abort();
      result_.error = "cancelled";
      co_return head_delivered_ ? Outcome::failed_after_head : Outcome::failed_before_response;
    }
    if (idle) {
      backend_.abort();
      if (context_.handle.force_close) {
        result_.error = "closed by drain";
        co_return head_delivered_ ? Outcome::failed_after_head : Outcome::failed_before_response;
      }
      result_.error = "backend sent nothing for " + describe_duration(idle_);
      co_return head_delivered_ ? Outcome::failed_after_head : Outcome::timed_out;
    }
    if (retry_) co_return Outcome::retry;
    if (http11_required_) co_return Outcome::http11_required;
    if (response_failed_) co_return head_delivered_ ? Outcome::failed_after_head : Outcome::failed_before_response;
    co_return Outcome::done;
  }

  // Added to the response head (cookie affinity).
  void set_cookie(std::string cookie) { set_cookie_ = std::move(cookie); }
  // The connection must stay with its client from now on.
  bool binds() const { return binds_; }

  bool reusable() const {
    return result_.response_done && !result_.backend_closes && !close_delimited_ && body_sent_ && !extra_bytes_ &&
           !backend_.aborted();
  }

 private:
  // Arms the connection's guard for this exchange, and gives it back disarmed.
  struct GuardScope {
    GuardScope(IdleGuard& guard, Exchange& exchange) : guard(guard) {
      guard.arm(&exchange.last_activity_, exchange.idle_, false, &exchange);
    }
    ~GuardScope() { guard.disarm(); }
    IdleGuard& guard;
  };

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
    const bool has_body = head_.chunked || (head_.content_length && *head_.content_length > 0);
    if (!has_body) {
      body_sent_ = true;
      co_return;
    }
    std::string piece;
    std::string framed;
    for (;;) {
      piece.clear();
      bool done = false;
      if (auto ec = co_await down_.read_body(piece, done)) {
        result_.client_failed = true;
        result_.error = "client: " + ec.message();
        response_failed_ = true;
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

  void fail_response(std::string why) {
    if (!response_failed_) {
      response_failed_ = true;
      if (result_.error.empty()) result_.error = std::move(why);
    }
    backend_.abort();
    body_cancel_.cancel();
  }

  asio::awaitable<void> receive_response() {
    const bool head_request = head_.method == "HEAD";
    std::optional<ResponseParser> parser;
    parser.emplace();
    if (head_request) parser->skip(true);
    std::string carry;
    bool any_byte = false;
    for (;;) {
      IoBuffer buffer;
      auto [ec, n] = backend_.try_read_some(buffer.data(), IoBuffer::size);
      if (ec == asio::error::would_block || ec == asio::error::in_progress)
        std::tie(ec, n) = co_await backend_.read_some(buffer.data(), IoBuffer::size);
      if (ec == asio::error::eof && parser->is_header_done() && parser->need_eof()) {
        error_code eof_ec;
        parser->feed_eof(eof_ec);
        down_.end({});
        result_.response_done = true;
        if (auto fec = co_await down_.flush()) {
          result_.client_failed = true;
          fail_response("client: " + fec.message());
        }
        co_return;
      }
      if (ec) {
        if (!any_byte && may_retry_ && ec != asio::error::operation_aborted) {
          // Not a byte of answer: see forward() for when that may be sent
          // again.
          retry_ = true;
          backend_.abort();
          body_cancel_.cancel();
          co_return;
        }
        if (result_.client_failed) co_return;
        fail_response(ec == asio::error::eof ? "backend closed the connection before the response ended"
                                             : "backend: " + ec.message());
        co_return;
      }
      any_byte = true;
      last_activity_ = Clock::now();
      std::string_view data(buffer.data(), n);
      if (!carry.empty()) {
        carry.append(data);
        data = carry;
      }
      bool done = false;
      while (!data.empty()) {
        error_code perr;
        const std::size_t used = parser->feed(data, perr);
        if (perr) {
          fail_response("backend sent a malformed response: " + parser->violation());
          co_return;
        }
        data.remove_prefix(used);
        if (parser->is_header_done() && !head_delivered_) {
          ResponseHead& rh = parser->head();
          if (rh.status / 100 == 1) {
            if (rh.status == 101) {
              fail_response("backend switched protocols, which is not proxied");
              co_return;
            }
            down_.interim(rh);
            parser.emplace();
            if (head_request) parser->skip(true);
            continue;
          }
          if (response_binds(rh.status, rh.fields)) binds_ = true;
          if (binds_ && !can_bind_) {
            // Nothing of it reaches the client, and the connection that
            // offered the handshake is never reused.
            http11_required_ = true;
            fail_response("the response offers Windows authentication, which needs HTTP/1.1");
            co_return;
          }
          if (binds_ && !rh.keep_alive) down_.close_after();
          const bool has_body = !head_request && rh.status != 204 && rh.status != 304;
          if (!set_cookie_.empty()) rh.fields.push_back({"Set-Cookie", set_cookie_});
          close_delimited_ = rh.close_delimited;
          result_.backend_closes = !rh.keep_alive;
          result_.status = rh.status;
          down_.head(rh, has_body);
          head_delivered_ = true;
        }
        if (!parser->body().empty()) {
          result_.bytes_out += parser->body().size();
          down_.body(parser->body());
          parser->body().clear();
        }
        if (parser->is_done()) {
          down_.end(parser->trailers());
          done = true;
          extra_bytes_ = !data.empty();
          break;
        }
        if (used == 0) break;
      }
      carry = std::string(data);
      if (auto fec = co_await down_.flush()) {
        result_.client_failed = true;
        fail_response("client: " + fec.message());
        co_return;
      }
      if (done) {
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

  RequestContext& context_;
  const RequestHead& head_;
  Downstream& down_;
  TlsStream& backend_;
  ExchangeResult& result_;
  Clock::duration idle_;
  asio::steady_timer body_cancel_;
  Clock::time_point last_activity_;
  bool may_retry_ = false;
  bool retry_ = false;
  bool response_failed_ = false;
  bool head_delivered_ = false;
  bool close_delimited_ = false;
  bool body_sent_ = false;
  bool extra_bytes_ = false;
  bool expired_ = false;
  bool can_bind_ = false;
  bool binds_ = false;
  bool http11_required_ = false;
  std::string set_cookie_;
};

// Methods a proxy may send twice (RFC 9110 9.2.2).
bool idempotent(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "OPTIONS" || method == "PUT" || method == "DELETE" ||
         method == "TRACE";
}

constexpr std::string_view kAffinityCookie = "GatehouseAffinity";

// The value of cookie `name` in the request's Cookie field(s), or "".
std::string_view cookie_value(const Fields& fields, std::string_view name) {
  for (const auto& f : fields) {
    if (!boost::beast::iequals(f.name, "cookie")) continue;
    std::string_view rest = f.value;
    while (!rest.empty()) {
      const auto semi = rest.find(';');
      std::string_view pair = rest.substr(0, semi);
      while (!pair.empty() && pair.front() == ' ') pair.remove_prefix(1);
      if (pair.size() > name.size() && pair.substr(0, name.size()) == name && pair[name.size()] == '=')
        return pair.substr(name.size() + 1);
      if (semi == std::string_view::npos) break;
      rest.remove_prefix(semi + 1);
    }
  }
  return {};
}

// The bytes a maglev pool hashes: its hash_key's header or cookie when the
// request has it, else the client address.
std::string_view hash_source(const conf::Pool& pool, const RequestHead& head, const std::string& client) {
  if (pool.hash_key.starts_with("header:")) {
    if (const std::string* v = find_field(head.fields, pool.hash_key.substr(7))) return *v;
  } else if (pool.hash_key == "cookie") {
    if (const std::string* v = find_field(head.fields, "cookie")) return *v;
  }
  return client;
}

}  // namespace

void send_error(Downstream& down, int status, std::string_view detail, bool head_request) {
  std::string body = std::to_string(status) + " " + std::string(reason_phrase(status));
  if (!detail.empty()) body += ": " + std::string(detail);
  body += "\n";
  ResponseHead head;
  head.status = status;
  head.fields.push_back({"Content-Type", "text/plain; charset=utf-8"});
  head.fields.push_back({"Cache-Control", "no-store"});
  head.content_length = body.size();
  down.head(head, !head_request);
  if (!head_request) down.body(body);
  down.end({});
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

asio::awaitable<ExchangeResult> forward(RequestContext& context, const RequestHead& head, const conf::Route& route,
                                        const PoolRuntime& pool, Downstream& down, BackendBinding* binding) {
  ExchangeResult result;
  const bool has_body = head.chunked || (head.content_length && *head.content_length > 0);
  result.request_body_done = !has_body;
  const bool head_request = head.method == "HEAD";
  const auto auth = request_auth(head.fields);
  if (auth) {
    result.auth_scheme = auth->scheme;
    result.auth_user = auth->user;
  }
  const bool auth_binds = auth && auth->connection_bound;
  if (auth_binds && binding == nullptr) {
    result.http11_required = true;
    result.error = auth->scheme + " authentication is per connection and needs HTTP/1.1";
    co_return result;
  }
  const std::string request_head =
      serialize_request(head, ForwardedFor{context.client_address, head.host, "https", context.client_cert}, has_body);
  const Clock::duration idle = route.idle_timeout ? Clock::duration(*route.idle_timeout)
                                                  : Clock::duration(context.listener.config->idle_timeout);

  auto finish_with_error = [&](int status, std::string detail) {
    result.error = detail;
    result.status = status;
    send_error(down, status, detail, head_request);
  };
  // What the client gets when the exchange did not complete.
  auto report = [&](Exchange::Outcome outcome) -> asio::awaitable<void> {
    switch (outcome) {
      case Exchange::Outcome::failed_before_response:
        if (!result.client_failed) {
          const std::string why = result.error;
          finish_with_error(502, "backend \"" + result.server + "\" failed before answering");
          result.error = why;
          co_await down.flush();
        }
        break;
      case Exchange::Outcome::timed_out: {
        const std::string why = result.error;
        finish_with_error(504, "backend \"" + result.server + "\" did not answer in time");
        result.error = why;
        co_await down.flush();
        break;
      }
      case Exchange::Outcome::failed_after_head: down.abort(); break;
      default: break;
    }
    if (!result.error.empty() && !result.http11_required)
      log::warning("request_failed", {{"listener", context.listener.config->name},
                                      {"client", context.client_address},
                                      {"pool", pool.config->name},
                                      {"server", result.server},
                                      {"status", result.status},
                                      {"error", result.error}});
  };
  // Who the bound connection is authenticated as, for this request's log
  // line and the next ones.
  auto remember_auth = [&] {
    if (binding == nullptr || !binding->bound()) return;
    if (auth_binds) {
      binding->scheme = auth->scheme;
      if (auth->final_leg && result.status != 401 && result.status != 407) binding->user = auth->user;
    } else if (!auth) {
      result.auth_scheme = binding->scheme;
      result.auth_user = binding->user;
    }
  };

  if (binding != nullptr && binding->bound()) {
    // Every request of a bound client goes on its connection, wherever it
    // routes: another connection would carry another identity (or none).
    BackendConnection& backend = binding->connection();
    result.server = backend.server->config->name;
    result.backend_reused = true;
    result.bound = true;
    if (binding->pool() != &pool)
      log::info("bound_route_mismatch", {{"listener", context.listener.config->name},
                                         {"client", context.client_address},
                                         {"bound_pool", binding->pool()->config->name},
                                         {"pool", pool.config->name},
                                         {"server", result.server}});
    if (!backend.stream->quiet()) {
      // The backend closed it while the client was between requests. No
      // other connection may answer for it: the client connection closes
      // unanswered, as at any keep-alive race, and the client starts over.
      binding->lose();
      result.client_failed = true;
      result.error = "the bound backend connection was closed by the server";
      co_return result;
    }
    if (auto ec = co_await backend.stream->write_all(request_head.data(), request_head.size())) {
      binding->lose();
      finish_with_error(502, "backend \"" + result.server + "\": " + ec.message());
      co_return result;
    }
    {
      Exchange exchange(context, head, down, backend, result, idle);
      const auto outcome = co_await exchange.run(false, true, true);
      const bool kept = outcome == Exchange::Outcome::done && exchange.reusable();
      co_await report(outcome);
      remember_auth();
      if (!kept) binding->lose();
    }
    co_return result;
  }

  ConnectTarget target;
  target.pool = &pool;
  target.hash_key = balancer::hash_key(hash_source(*pool.config, head, context.client_address));
  std::optional<std::size_t> cookie_server;
  if (route.affinity == conf::Affinity::cookie) {
    // A tampered or stale cookie is ignored: the request is balanced anew.
    cookie_server = context.generation.affinity_server(pool, cookie_value(head.fields, kAffinityCookie));
    target.preferred = cookie_server;
  }
  target.affinity = route.affinity == conf::Affinity::source_ip;
  target.timeout = context.listener.config->handshake_timeout;
  target.reuse = true;

  // Gives the server's active count back however this ends.
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

  for (int attempt = 0; attempt < 2; ++attempt) {
    // (Not co_await inside the braces: GCC 12 mis-handles co_await in
    // aggregate initialisers.)
    auto connected = co_await connect_backend(context.generation, context.worker.index(), target);
    Lease lease{context.generation, context.worker.index(), &pool, std::move(connected)};
    auto& backend = lease.backend;
    if (!backend) {
      if (context.generation.effective_pool(&pool)->any_available())
        finish_with_error(502, "no server of pool \"" + pool.config->name + "\" could be reached");
      else finish_with_error(503, "no server of pool \"" + pool.config->name + "\" is available");
      co_return result;
    }
    result.server = backend->server->config->name;
    result.backend_reused = backend->reused;
    // Sent again, once, when the backend ends the connection before a byte
    // of answer: a kept-alive connection it closed just then (nothing was
    // processed), or a server that died under an idempotent request without
    // a body (RFC 9110 9.2.2), which another server may answer instead. Never
    // a request that carries Windows credentials: its connection is its own.
    const bool may_retry = attempt == 0 && !has_body && !auth_binds && (backend->reused || idempotent(head.method));

    if (auto ec = co_await backend->stream->write_all(request_head.data(), request_head.size())) {
      lease.release();
      if (may_retry) {
        target.reuse = false;
        continue;
      }
      finish_with_error(502, "backend \"" + result.server + "\": " + ec.message());
      co_return result;
    }

    Exchange exchange(context, head, down, *backend, result, idle);
    if (route.affinity == conf::Affinity::cookie && backend->pool == &pool && cookie_server != backend->server_index)
      exchange.set_cookie(std::string(kAffinityCookie) + "=" +
                          context.generation.affinity_cookie(pool, backend->server_index) +
                          "; Path=/; Secure; HttpOnly");
    const auto outcome = co_await exchange.run(may_retry, binding != nullptr, auth_binds);
    if (outcome == Exchange::Outcome::retry) {
      lease.release();
      result = ExchangeResult{};
      result.request_body_done = !has_body;
      if (auth) {
        result.auth_scheme = auth->scheme;
        result.auth_user = auth->user;
      }
      target.reuse = false;
      continue;
    }
    if (outcome == Exchange::Outcome::http11_required) {
      result.http11_required = true;
      co_return result;  // the lease closes the connection that offered it
    }
    if (outcome == Exchange::Outcome::done && exchange.reusable()) {
      if (exchange.binds()) {
        // From now on this connection is the client's alone.
        binding->bind(std::move(*backend), &pool, context.worker.metrics());
        backend.reset();
        result.bound = true;
      } else {
        const bool current = context.worker.generation().get() == &context.generation;
        keep_backend(context.generation, context.worker.index(), std::move(*backend), &pool, current);
        backend.reset();
      }
    } else {
      lease.release();
      // The client believes its connection is (becoming) authenticated;
      // without the backend connection that holds it, it must start over.
      if (exchange.binds() && binding != nullptr) binding->close_client = true;
    }
    co_await report(outcome);
    remember_auth();
    co_return result;
  }
  finish_with_error(502, "no server of pool \"" + pool.config->name + "\" answered");
  co_return result;
}

}  // namespace gatehouse::proxy::l7
