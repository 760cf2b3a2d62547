#include "proxy/l7/redirect.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/object.hpp>

#include "proxy/l7/deny.h"
#include "proxy/l7/routing.h"
#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"
#include "proxy/runtime/metrics.h"

namespace gatehouse::proxy::l7 {

namespace {

namespace beast = boost::beast;
using namespace asio::experimental::awaitable_operators;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
constexpr int kMaxRequestsPerConnection = 100;

using Request = beast::http::request<beast::http::string_body>;
using Response = beast::http::response<beast::http::string_body>;

// Closes the connection when it has been idle too long or a drain ends it.
struct CloseOnExpiry final : IdleExpiry {
  explicit CloseOnExpiry(beast::tcp_stream& stream) : stream(stream) {}
  void expire(bool) override {
    error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream.socket().cancel(ignored);
  }
  beast::tcp_stream& stream;
};

// What one request gets: status, Location (redirects) and why (errors).
struct Decision {
  int status = 0;
  std::string location;
  std::string detail;
};

class RedirectSession {
 public:
  RedirectSession(Worker& worker, std::shared_ptr<Generation> generation, const ListenerRuntime& listener,
                  tcp::socket socket, tcp::endpoint client, asio::steady_timer& watchdog)
      : worker_(worker),
        generation_(std::move(generation)),
        listener_(listener),
        tracked_(worker, generation_.get(), &watchdog),
        guard_(watchdog, tracked_.handle()),
        client_(client),
        stream_(std::move(socket)),
        expiry_(stream_) {}

  asio::awaitable<void> run() {
    guard_.arm(&last_activity_, listener_.config->idle_timeout, OnDrain::when_quiet, &expiry_);
    co_await (serve() || guard_.watch());
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored_);
  }

 private:
  asio::awaitable<void> serve() {
    beast::flat_buffer buffer;
    for (int served = 0; served < kMaxRequestsPerConnection; ++served) {
      beast::http::request_parser<beast::http::string_body> parser;
      parser.body_limit(64 * 1024);
      auto [ec, n] = co_await beast::http::async_read(stream_, buffer, parser, use_tuple);
      if (ec == beast::http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::operation_aborted ||
          ec == asio::error::connection_reset)
        co_return;
      const auto started = Clock::now();
      last_activity_ = started;
      Request request = ec ? Request{} : parser.release();
      const Decision decision = ec ? Decision{400, "", "malformed request: " + ec.message()} : decide(request);
      const bool keep =
          !ec && request.keep_alive() && !tracked_.handle().draining && served + 1 < kMaxRequestsPerConnection;
      Response response = make_response(request, decision, keep);
      auto [write_ec, written] = co_await beast::http::async_write(stream_, response, use_tuple);
      last_activity_ = Clock::now();
      record(request, decision, started);
      if (write_ec || !keep) co_return;
    }
  }

  Decision decide(const Request& request) const {
    const std::string target(request.target());
    const std::string host(request[beast::http::field::host]);
    const Routed routed = route_request(*generation_, listener_, HandshakeInfo{}, host, target, client_.address());
    if (!routed.path.empty() && !generation_->deny_rules().empty()) {
      http::Fields fields;
      for (const auto& field : request)
        fields.push_back({std::string(field.name_string()), std::string(field.value())});
      if (const DenyRuntime* rule = refuse_by_deny_rule(*generation_, listener_, to_string(client_), routed.host,
                                                        routed.path, target, fields))
        return {rule->config->status, "", "refused by deny rule " + std::to_string(rule->number)};
    }
    if (routed.status == 0 && routed.route != nullptr && !routed.route->redirect.empty())
      return {302, routed.route->redirect, ""};
    if (routed.status != 0 && routed.status != 404) return {routed.status, "", routed.detail};
    if (routed.host.empty()) return {400, "", "a redirect to https needs the Host the client asked for"};
    const std::string authority = routed.host.find(':') != std::string::npos ? "[" + routed.host + "]" : routed.host;
    const std::string origin = origin_form(target);
    return {301, "https://" + authority + (origin == "*" ? "/" : origin), ""};
  }

  static Response make_response(const Request& request, const Decision& decision, bool keep) {
    const http::ErrorResponse made = decision.location.empty()
                                         ? http::make_error(decision.status, decision.detail)
                                         : http::make_redirect(decision.status, decision.location);
    Response response(static_cast<beast::http::status>(decision.status), 11);
    for (const auto& field : made.head.fields) response.set(field.name, field.value);
    if (request.method() != beast::http::verb::head) response.body() = made.body;
    response.content_length(made.body.size());
    response.keep_alive(keep);
    return response;
  }

  void record(const Request& request, const Decision& decision, Clock::time_point started) {
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    worker_.metrics().request(generation_->request_series(listener_, nullptr), decision.status, seconds);
    if (!log::access_enabled()) return;
    boost::json::object fields{{"client", to_string(client_)},
                               {"listener", listener_.config->name},
                               {"mode", "redirect"},
                               {"host", std::string(request[beast::http::field::host])},
                               {"method", std::string(request.method_string())},
                               {"path", std::string(request.target())},
                               {"status", decision.status},
                               {"duration_ms", seconds * 1000}};
    if (!decision.location.empty()) fields["location"] = decision.location;
    if (!decision.detail.empty()) fields["error"] = decision.detail;
    log::access(std::move(fields));
  }

  Worker& worker_;
  std::shared_ptr<Generation> generation_;
  const ListenerRuntime& listener_;
  TrackedConnection tracked_;
  IdleGuard guard_;
  error_code ignored_;
  tcp::endpoint client_;
  beast::tcp_stream stream_;
  CloseOnExpiry expiry_;
  Clock::time_point last_activity_ = Clock::now();
};

}  // namespace

asio::awaitable<void> serve_redirect(Worker& worker, std::shared_ptr<Generation> generation,
                                     const ListenerRuntime& listener, tcp::socket socket, tcp::endpoint client) {
  asio::steady_timer watchdog(co_await asio::this_coro::executor);
  RedirectSession session(worker, std::move(generation), listener, std::move(socket), client, watchdog);
  co_await session.run();
}

}  // namespace gatehouse::proxy::l7
