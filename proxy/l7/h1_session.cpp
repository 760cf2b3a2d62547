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
  auto [ec, n] = co_await stream.read_some(buffer.data(), IoBuffer::size);
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
    out_ += serialize_response(head, chunked_, close_);
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

// How reading the next request head ended.
enum class HeadRead { complete, malformed, closed };

// One client connection's requests, one at a time.
class Http1Connection {
 public:
  Http1Connection(ClientConnection& connection, IdleGuard& guard)
      : connection_(connection),
        config_(*connection.listener.config),
        guard_(guard),
        wait_expiry_(connection.stream),
        binding_(connection.generation, connection.worker.index()) {
    connection_.binding = &binding_;
  }
  ~Http1Connection() { connection_.binding = nullptr; }

  asio::awaitable<void> run() {
    for (;;) {
      parser_.emplace();
      const HeadRead read = co_await read_head();
      if (read == HeadRead::closed) {
        if (!in_.empty() || parser_->got_some())
          log::info("request_incomplete", {{"listener", config_.name}, {"client", connection_.client_text}});
        break;
      }
      if (read == HeadRead::malformed) {
        co_await refuse_malformed();
        break;
      }
      if (!co_await serve_one()) break;
    }
    // A client that closed (or broke) its side gets nothing more: a
    // close_notify would only meet a closed socket.
    if (!client_gone_) co_await connection_.stream.shutdown_send();
  }

 private:
  // Reads until the parser has a whole head, within the listener's
  // idle_timeout (a drain ends a connection that is between requests).
  asio::awaitable<HeadRead> read_head() {
    std::size_t head_bytes = 0;  // of this head already parsed (Beast takes whole fields as they come)
    parse_error_ = {};
    while (!parser_->is_header_done()) {
      if (!in_.empty()) {
        const std::size_t used = parser_->feed(in_, parse_error_);
        in_.erase(0, used);
        head_bytes += used;
        if (parse_error_ || parser_->is_header_done()) break;
      }
      if (head_bytes + in_.size() > kMaxHeaderBytes) {
        parse_error_ = boost::beast::http::error::header_limit;
        break;
      }
      // A bound connection is not closed when a drain begins: like an l4
      // stream, it may finish until drain_timeout (its client would have to
      // authenticate again on a new one).
      const bool between_requests = in_.empty() && !parser_->got_some() && !binding_.bound();
      guard_.arm(&last_activity_, config_.idle_timeout, between_requests ? OnDrain::when_quiet : OnDrain::finish,
                 &wait_expiry_);
      const error_code read_ec = co_await read_or_lose_binding();
      guard_.disarm();
      if (read_ec && read_ec != asio::error::shut_down && !wait_expiry_.fired) client_gone_ = true;
      if (read_ec || wait_expiry_.fired) co_return HeadRead::closed;
      last_activity_ = Clock::now();
    }
    if (!parse_error_ && head_bytes > kMaxHeaderBytes) parse_error_ = boost::beast::http::error::header_limit;
    co_return parse_error_ ? HeadRead::malformed : HeadRead::complete;
  }

  // Reads more of the client's bytes. While the connection is bound, the
  // backend may end its (authenticated) connection while the client is
  // quiet: then the client's connection ends too.
  asio::awaitable<error_code> read_or_lose_binding() {
    if (!binding_.bound()) co_return co_await read_more(connection_.stream, in_);
    auto first = co_await (read_more(connection_.stream, in_) || binding_.watch());
    if (first.index() == 0) co_return std::get<0>(first);
    log::info("bound_backend_closed", {{"listener", config_.name},
                                       {"client", connection_.client_text},
                                       {"server", binding_.connection().server->config->name}});
    binding_.lose();
    co_return asio::error::shut_down;  // ours, not the client's: see client_gone_
  }

  // 400 and close: the proxy and a backend might read the bytes two ways.
  asio::awaitable<void> refuse_malformed() {
    const auto started = Clock::now();
    std::string why = parser_->violation().empty() ? parse_error_.message() : parser_->violation();
    if (parse_error_ == boost::beast::http::error::header_limit) why = "request line or header block over 64 KiB";
    log::warning("bad_request", {{"listener", config_.name}, {"client", connection_.client_text}, {"reason", why}});
    const std::string response = error_response(400, why, true);
    co_await connection_.stream.write_all(response.data(), response.size());
    ExchangeResult result;
    result.status = 400;
    result.error = why;
    finish_request(connection_, parser_->head(), result, Routed{}, started);
  }

  // Serves the parsed request; false when the connection must end after it.
  asio::awaitable<bool> serve_one() {
    const RequestHead& head = parser_->head();
    Http1Downstream down(connection_.stream, *parser_, in_, head, connection_.handle, binding_);
    const RequestIo io{.down = down, .guard = guard_, .executor = connection_.watchdog.get_executor()};
    const ExchangeResult result = co_await handle_request(connection_, head, io);
    if (!down.body_error().empty())
      log::warning("bad_request",
                   {{"listener", config_.name}, {"client", connection_.client_text}, {"reason", down.body_error()}});
    last_activity_ = Clock::now();
    // The next request can be read only where this one's body ended.
    // A drain that began after this response's head went out closes the
    // connection at the next request (answered with Connection: close) or
    // once the client has been quiet for kDrainQuiet.
    co_return !(down.close() || result.client_failed || !result.request_body_done || !parser_->is_done() ||
                binding_.close_client || connection_.handle.force_close);
  }

  ClientConnection& connection_;
  const conf::Listener& config_;
  IdleGuard& guard_;
  std::string in_;
  Clock::time_point last_activity_ = Clock::now();
  WaitExpiry wait_expiry_;
  std::optional<RequestParser> parser_;
  error_code parse_error_;
  bool client_gone_ = false;  // the client's side ended or failed while a head was awaited
  // Declared after `in_` and before anything of a request: it outlives every
  // exchange on it, and closes its backend connection with the client's.
  BackendBinding binding_;
};

}  // namespace

asio::awaitable<void> serve_http1(ClientConnection& connection) {
  // One idle watcher for the connection's whole life, not one per read.
  IdleGuard guard(connection.watchdog, connection.handle);
  Http1Connection http1(connection, guard);
  co_await (http1.run() || guard.watch());
}

}  // namespace gatehouse::proxy::l7
