#include "proxy/l7/l7_session.h"

#include <boost/asio/ip/address.hpp>

#include <algorithm>
#include <cctype>
#include <optional>

#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"
#include "proxy/runtime/metrics.h"
#include "sni/hostname.h"
#include "sni/index.h"

namespace gatehouse::proxy {

namespace l7 {

namespace {

// "mail.contoso.com:443" -> "mail.contoso.com"; "[::1]:8443" -> "::1".
std::string_view strip_port(std::string_view host) {
  if (!host.empty() && host.front() == '[') {
    const auto close = host.find(']');
    return close == std::string_view::npos ? host : host.substr(1, close - 1);
  }
  const auto colon = host.rfind(':');
  if (colon == std::string_view::npos || host.find(':') != colon) return host;
  const auto port = host.substr(colon + 1);
  if (!std::all_of(port.begin(), port.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }))
    return host;
  return host.substr(0, colon);
}

std::string_view path_of(std::string_view target) {
  if (target == "*") return "/";
  return origin_form(target);
}

std::string shorten(std::string_view s, std::size_t max = 200) {
  return s.size() <= max ? std::string(s) : std::string(s.substr(0, max)) + "...";
}

}  // namespace

namespace {

// The "authority/path" rest of an absolute-form target, or nullopt.
std::optional<std::string_view> after_scheme(std::string_view target) {
  for (std::string_view scheme : {"https://", "http://"}) {
    if (target.size() >= scheme.size() && std::equal(scheme.begin(), scheme.end(), target.begin(), [](char a, char b) {
          return a == std::tolower(static_cast<unsigned char>(b));
        }))
      return target.substr(scheme.size());
  }
  return std::nullopt;
}

}  // namespace

std::string_view origin_form(std::string_view target) {
  const auto rest = after_scheme(target);
  if (!rest) return target;
  const auto slash = rest->find_first_of("/?");
  return slash == std::string_view::npos ? std::string_view("/") : rest->substr(slash);
}

std::string_view authority_of(std::string_view target) {
  const auto rest = after_scheme(target);
  if (!rest) return {};
  return rest->substr(0, rest->find_first_of("/?"));
}

Routed route_request(const ClientConnection& connection, std::string_view host_field, std::string_view target) {
  Routed out;
  const std::string_view name = strip_port(host_field);
  if (!name.empty()) {
    if (auto normalised = sni::normalize_host(name)) {
      out.host = *normalised;
    } else {
      boost::system::error_code ec;
      const auto address = boost::asio::ip::make_address(name, ec);
      if (ec) {
        out.status = 400;
        out.detail = "invalid Host \"" + shorten(host_field) + "\"";
        return out;
      }
      out.host = address.to_string();
    }
  } else if (auto sni_host = sni::normalize_host(connection.info.sni)) {
    out.host = *sni_host;  // HTTP/1.0 without Host
  }

  // A client may reuse a connection for another name its certificate
  // covers (HTTP/2 coalescing), never for one it does not.
  if (!connection.info.sni.empty() && connection.info.certificate != nullptr) {
    const auto sni_host = sni::normalize_host(connection.info.sni);
    if ((!sni_host || *sni_host != out.host) && !sni::covers(*connection.info.certificate, out.host)) {
      out.status = 421;
      out.detail = "host \"" + shorten(out.host) + "\" is not served by the certificate for \"" +
                   shorten(connection.info.sni) + "\"";
      return out;
    }
  }

  const std::string_view path = path_of(target);
  const auto choice = connection.generation.route_http(connection.listener, out.host, path);
  if (choice.route == nullptr) {
    out.status = 404;
    out.detail = "no route for " + shorten(out.host) + shorten(path, 100);
    return out;
  }
  out.route = choice.route;
  out.pool = choice.pool;
  if (out.pool == nullptr) {
    out.status = 503;
    out.detail = "route has no pool";
  }
  return out;
}

void finish_request(const ClientConnection& connection, std::string_view protocol, const RequestHead& head,
                    const ExchangeResult& result, const Routed& routed, std::chrono::steady_clock::time_point started) {
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  metrics().request(connection.listener.config->name, routed.pool ? routed.pool->config->name : std::string(),
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
  if (!co_await accept_handshake(front, info, config, connection.client_text)) co_return;
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
