// HTTP/1.1 front end: one request at a time per connection (a pipelined
// request waits, unread, until the previous response is out), keep-alive,
// and 400 + close on any framing the proxy and a backend might read two ways.

#include <boost/asio/experimental/awaitable_operators.hpp>

#include "proxy/l7/l7_session.h"
#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"

namespace gatehouse::proxy::l7 {

using namespace asio::experimental::awaitable_operators;

namespace {

// Reads once from the client and appends to `in`.
asio::awaitable<error_code> read_more(TlsStream& stream, std::string& in) {
  IoBuffer buffer;
  auto [ec, n] = stream.try_read_some(buffer.data(), IoBuffer::size);
  if (ec == asio::error::would_block || ec == asio::error::in_progress)
    std::tie(ec, n) = co_await stream.read_some(buffer.data(), IoBuffer::size);
  if (!ec) in.append(buffer.data(), n);
  co_return ec;
}

class Http1Downstream final : public Downstream {
 public:
  Http1Downstream(TlsStream& stream, RequestParser& parser, std::string& in, const RequestHead& request,
                  const ConnectionHandle& handle, const BackendBinding& binding)
      : stream_(stream), parser_(parser), in_(in), request_(request), handle_(handle), binding_(binding) {
    close_ = !request.keep_alive;
  }

  asio::awaitable<error_code> read_body(std::string& out, bool& done) override {
    for (;;) {
      if (!parser_.body().empty()) {
        out.append(parser_.body());
        parser_.body().clear();
        done = parser_.is_done();
        co_return error_code{};
      }
      if (parser_.is_done()) {
        done = true;
        co_return error_code{};
      }
      if (!in_.empty()) {
        error_code ec;
        const std::size_t used = parser_.feed(in_, ec);
        in_.erase(0, used);
        if (ec) {
          body_error_ = parser_.violation();
          co_return asio::error::invalid_argument;
        }
        if (used > 0) continue;
      }
      if (auto ec = co_await read_more(stream_, in_)) {
        co_return ec == asio::error::eof ? error_code(asio::error::connection_reset) : ec;
      }
    }
  }

  const Fields& request_trailers() const override { return parser_.trailers(); }

  void interim(const ResponseHead& head) override {
    if (request_.version < 11) return;
    out_ += "HTTP/1.1 " + std::to_string(head.status) + " " + std::string(reason_phrase(head.status)) + "\r\n";
    for (const auto& f : head.fields) out_ += f.name + ": " + f.value + "\r\n";
    out_ += "\r\n";
  }

  void head(const ResponseHead& head, bool has_body) override {
    // A draining connection says Connection: close, so that the client sends
    // its next request on a new connection rather than into the close. A
    // bound one finishes like an l4 stream: its client would have to
    // authenticate again on a new connection.
    if (handle_.draining && !binding_.bound()) close_ = true;
    chunked_ = has_body && !head.content_length && request_.version >= 11;
    if (has_body && !head.content_length && !chunked_) close_ = true;  // HTTP/1.0: the end is the close
    out_ += serialize_response(head, chunked_, close_, request_.version);
  }

  void body(std::string_view data) override {
    if (chunked_) append_chunk(out_, data);
    else out_ += data;
  }

  void end(const Fields& trailers) override {
    if (chunked_) append_last_chunk(out_, trailers);
  }

  asio::awaitable<error_code> flush() override {
    if (out_.empty()) co_return error_code{};
    auto ec = co_await stream_.write_all(out_.data(), out_.size());
    out_.clear();
    if (out_.capacity() > 64 * 1024) out_.shrink_to_fit();
    co_return ec;
  }

  void abort() override {
    aborted_ = true;
    stream_.abort();
  }

  void cancel() override { stream_.cancel(); }
  void close_after() override { close_ = true; }

  bool close() const { return close_ || aborted_; }
  const std::string& body_error() const { return body_error_; }

 private:
  TlsStream& stream_;
  RequestParser& parser_;
  std::string& in_;
  const RequestHead& request_;
  const ConnectionHandle& handle_;
  const BackendBinding& binding_;
  std::string out_;
  std::string body_error_;
  bool chunked_ = false;
  bool close_ = false;
  bool aborted_ = false;
};

// Between requests, an idle (or draining) connection is closed: its read is
// cancelled, and the loop ends as for a client that went away.
struct WaitExpiry final : IdleExpiry {
  explicit WaitExpiry(TlsStream& stream) : stream(stream) {}
  void expire(bool) override {
    fired = true;
    stream.cancel();
  }
  TlsStream& stream;
  bool fired = false;
};

asio::awaitable<void> serve_requests(ClientConnection& connection, IdleGuard& guard) {
  TlsStream& stream = connection.stream;
  const conf::Listener& config = *connection.listener.config;
  std::string in;
  Clock::time_point last_activity = Clock::now();
  WaitExpiry wait_expiry(stream);
  // Declared after `in` and before anything of a request: it outlives every
  // exchange on it, and closes its backend connection with the client's.
  BackendBinding binding(connection.generation, connection.worker.index());

  for (;;) {
    // The head of the next request, within the listener's idle_timeout.
    std::optional<RequestParser> parser;
    parser.emplace();
    error_code parse_error;
    bool closed = false;
    std::size_t head_bytes = 0;  // of this head already parsed (Beast takes whole fields as they come)
    while (!parser->is_header_done()) {
      if (!in.empty()) {
        const std::size_t used = parser->feed(in, parse_error);
        in.erase(0, used);
        head_bytes += used;
        if (parse_error || parser->is_header_done()) break;
      }
      if (head_bytes + in.size() > kMaxHeaderBytes) {
        parse_error = boost::beast::http::error::header_limit;
        break;
      }
      // A bound connection is not closed when a drain begins: like an l4
      // stream, it may finish until drain_timeout (its client would have to
      // authenticate again on a new one).
      guard.arm(&last_activity, config.idle_timeout, in.empty() && !parser->got_some() && !binding.bound(),
                &wait_expiry);
      error_code read_ec;
      if (binding.bound()) {
        // The backend may end its (authenticated) connection while the
        // client is quiet: then the client's connection ends too.
        auto first = co_await (read_more(stream, in) || binding.watch());
        if (first.index() == 0) {
          read_ec = std::get<0>(first);
        } else {
          log::info("bound_backend_closed", {{"listener", config.name},
                                             {"client", connection.client_text},
                                             {"server", binding.connection().server->config->name}});
          binding.lose();
          read_ec = asio::error::connection_reset;
        }
      } else {
        read_ec = co_await read_more(stream, in);
      }
      guard.disarm();
      if (read_ec || wait_expiry.fired) {
        closed = true;
        break;
      }
      last_activity = Clock::now();
    }
    if (!parse_error && head_bytes > kMaxHeaderBytes) parse_error = boost::beast::http::error::header_limit;
    if (closed) {
      if (!in.empty() || parser->got_some())
        log::info("request_incomplete", {{"listener", config.name}, {"client", connection.client_text}});
      break;
    }
    const auto started = Clock::now();
    if (parse_error) {
      std::string why = parser->violation().empty() ? parse_error.message() : parser->violation();
      if (parse_error == boost::beast::http::error::header_limit) why = "request line or header block over 64 KiB";
      log::warning("bad_request", {{"listener", config.name}, {"client", connection.client_text}, {"reason", why}});
      const std::string response = error_response(400, why, true);
      co_await stream.write_all(response.data(), response.size());
      RequestHead partial = parser->head();
      ExchangeResult result;
      result.status = 400;
      result.error = why;
      finish_request(connection, "HTTP/1.1", partial, result, Routed{}, started);
      break;
    }

    const RequestHead& head = parser->head();
    const bool has_body = head.chunked || (head.content_length && *head.content_length > 0);
    const std::string_view target_authority = authority_of(head.target);
    const Routed routed =
        route_request(connection.generation, connection.listener, connection.info,
                      target_authority.empty() ? std::string_view(head.host) : target_authority, head.target);
    Http1Downstream down(stream, *parser, in, head, connection.handle, binding);
    ExchangeResult result;
    if (routed.status != 0) {
      result.status = routed.status;
      result.request_body_done = !has_body;
      send_error(down, routed.status, routed.detail, head.method == "HEAD");
    } else {
      RequestHead forwarded = head;
      forwarded.target = origin_form(head.target);
      forwarded.host = !target_authority.empty() ? std::string(target_authority)
                       : head.host.empty()       ? routed.host
                                                 : head.host;
      RequestContext context{connection.worker,
                             connection.generation,
                             connection.listener,
                             connection.client,
                             connection.client_address,
                             connection.handle,
                             connection.watchdog.get_executor(),
                             guard};
      context.client_cert = connection.info.client_xfcc;
      result = co_await forward(context, forwarded, *routed.route, *routed.pool, down, &binding);
      if (!down.body_error().empty()) {
        log::warning("bad_request",
                     {{"listener", config.name}, {"client", connection.client_text}, {"reason", down.body_error()}});
      }
    }
    const bool flushed = !co_await down.flush();
    finish_request(connection, "HTTP/1.1", head, result, routed, started);
    last_activity = Clock::now();
    // The next request can be read only where this one's body ended.
    // A drain that began after this response's head went out closes the
    // connection at the next request (answered with Connection: close) or
    // once the client has been quiet for kDrainQuiet.
    if (!flushed || down.close() || result.client_failed || !result.request_body_done || !parser->is_done() ||
        binding.close_client || connection.handle.force_close)
      break;
    parser.reset();
  }
  co_await stream.shutdown_send();
}

}  // namespace

asio::awaitable<void> serve_http1(ClientConnection& connection) {
  // One idle watcher for the connection's whole life, not one per read.
  IdleGuard guard(connection.watchdog, connection.handle);
  co_await (serve_requests(connection, guard) || guard.watch());
}

}  // namespace gatehouse::proxy::l7
