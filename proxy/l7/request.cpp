#include "proxy/l7/request.h"

#include <boost/json/object.hpp>

#include <optional>

#include "proxy/l7/deny.h"
#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"
#include "proxy/runtime/metrics.h"

namespace gatehouse::proxy::l7 {

namespace {

// The head the backend gets, when it is not the one the client sent:
// origin-form target, and the Host the request was routed by (an
// absolute-form target's authority overrides Host, RFC 9112 3.2.2; HTTP/1.0
// without Host gets the SNI's name). Most requests need neither, and are
// forwarded without a copy.
std::optional<RequestHead> rewritten_head(const RequestHead& head, std::string_view authority, const Routed& routed) {
  if (routed.origin_target.empty() && authority.empty() && !head.host.empty()) return std::nullopt;
  std::optional<RequestHead> out(head);
  if (!routed.origin_target.empty()) out->target = routed.origin_target;
  if (!authority.empty()) out->host = authority;
  else if (head.host.empty()) out->host = routed.host;
  return out;
}

}  // namespace

namespace {

// A [[deny]] rule that matches wins over whatever routing decided; a
// refusal by a route's allow/deny ranges is logged.
void refuse_denied(const ClientConnection& connection, const RequestHead& head, Routed& routed) {
  if (routed.path.empty()) return;  // refused already as malformed (400, 421)
  if (const DenyRuntime* rule = refuse_by_deny_rule(connection.generation, connection.listener, connection.client_text,
                                                    routed.host, routed.path, head.target, head.fields)) {
    routed.status = rule->config->status;
    routed.detail = "refused by deny rule " + std::to_string(rule->number);
    routed.route = nullptr;
    routed.pool = nullptr;
    return;
  }
  if (routed.status == 403)
    log::warning("access_denied", {{"listener", connection.listener.config->name},
                                   {"client", connection.client_text},
                                   {"host", routed.host},
                                   {"path", head.target},
                                   {"reason", routed.detail}});
}

}  // namespace

asio::awaitable<ExchangeResult> handle_request(ClientConnection& connection, const RequestHead& head, RequestIo io) {
  const auto started = Clock::now();
  const std::string_view authority = authority_of(head.target);
  Routed routed = route_request(connection.generation, connection.listener, connection.info,
                                authority.empty() ? std::string_view(head.host) : authority, head.target,
                                connection.client.address());
  ExchangeResult result;
  refuse_denied(connection, head, routed);
  if (routed.status != 0) {
    result.status = routed.status;
    result.request_body_done = !head.has_body();
    send_error(io.down, routed.status, routed.detail, head.method == "HEAD");
  } else if (!routed.route->redirect.empty()) {
    result.status = 302;
    result.request_body_done = !head.has_body();
    send_redirect(io.down, 302, routed.route->redirect, head.method == "HEAD");
  } else {
    RequestContext context{.worker = connection.worker,
                           .generation = connection.generation,
                           .listener = connection.listener,
                           .client = connection.client,
                           .client_address = connection.client_address,
                           .handle = connection.handle,
                           .executor = io.executor,
                           .guard = io.guard,
                           .client_cert = connection.info.client_xfcc};
    const std::optional<RequestHead> rewritten = rewritten_head(head, authority, routed);
    const RequestHead& forwarded = rewritten ? *rewritten : head;
    result = co_await forward(context, forwarded, *routed.route, *routed.pool, io.down, connection.binding);
  }
  if (auto ec = co_await io.down.flush()) result.client_failed = true;
  finish_request(connection, head, result, routed, started);
  co_return result;
}

void finish_request(const ClientConnection& connection, const RequestHead& head, const ExchangeResult& result,
                    const Routed& routed, Clock::time_point started) {
  const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
  const std::string_view protocol = head.version == 20 ? "HTTP/2" : "HTTP/1.1";
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

}  // namespace gatehouse::proxy::l7
