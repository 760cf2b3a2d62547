#include "proxy/l7/routing.h"

#include <boost/asio/ip/address.hpp>

#include <algorithm>
#include <cctype>
#include <optional>

#include "proxy/http/request_path.h"
#include "sni/hostname.h"
#include "sni/index.h"

namespace gatehouse::proxy::l7 {

namespace {

bool digits(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
}

// A Host field or authority (not empty) as the host it names: "Mail.Contoso.com.:443"
// -> "mail.contoso.com", "[2001:DB8::1]:8443" -> "2001:db8::1". nullopt
// when it names none (RFC 9112 3.2: 400): an IPv6 address without its
// brackets, anything but an IPv6 address in them, or after them but a
// port, an empty host before a port.
std::optional<std::string> host_of(std::string_view field) {
  if (field.front() == '[') {
    const auto close = field.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    const std::string_view after = field.substr(close + 1);
    if (!after.empty() && (after.front() != ':' || !digits(after.substr(1)))) return std::nullopt;
    boost::system::error_code ec;
    const auto address = boost::asio::ip::make_address_v6(field.substr(1, close - 1), ec);
    if (ec || address.scope_id() != 0) return std::nullopt;
    return address.to_string();
  }
  const auto colon = field.find(':');
  if (colon != std::string_view::npos && !digits(field.substr(colon + 1))) return std::nullopt;
  return sni::normalize_host(field.substr(0, colon));
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

std::string origin_form(std::string_view target) {
  const auto rest = after_scheme(target);
  if (!rest) return std::string(target);
  const auto slash = rest->find_first_of("/?");
  if (slash == std::string_view::npos) return "/";
  // An empty path is "/" even before a query: "GET ?q" is no request line.
  if ((*rest)[slash] == '?') return "/" + std::string(rest->substr(slash));
  return std::string(rest->substr(slash));
}

std::string_view authority_of(std::string_view target) {
  const auto rest = after_scheme(target);
  if (!rest) return {};
  return rest->substr(0, rest->find_first_of("/?"));
}

Routed route_request(const Generation& generation, const ListenerRuntime& listener, const HandshakeInfo& tls,
                     std::string_view host_field, std::string_view target, const asio::ip::address& client) {
  Routed out;
  if (!host_field.empty()) {
    auto host = host_of(host_field);
    if (!host) {
      out.status = 400;
      out.detail = "invalid Host \"" + shorten(host_field) + "\"";
      return out;
    }
    out.host = std::move(*host);
  } else if (auto sni_host = sni::normalize_host(tls.sni)) {
    out.host = *sni_host;  // HTTP/1.0 without Host
  }

  // A client may reuse a connection for another name its certificate
  // covers (HTTP/2 coalescing), never for one it does not.
  if (!tls.sni.empty() && tls.certificate != nullptr) {
    const auto sni_host = sni::normalize_host(tls.sni);
    if ((!sni_host || *sni_host != out.host) && !sni::covers(*tls.certificate, out.host)) {
      out.status = 421;
      out.detail =
          "host \"" + shorten(out.host) + "\" is not served by the certificate for \"" + shorten(tls.sni) + "\"";
      return out;
    }
  }

  // Only an absolute-form target needs a new string; "*" (OPTIONS) routes as "/".
  if (after_scheme(target)) out.origin_target = origin_form(target);
  const http::NormalizedPath path =
      http::normalize_path(!out.origin_target.empty() ? std::string_view(out.origin_target) : target);
  if (!path.error.empty()) {
    out.status = 400;
    out.detail = path.error + ": \"" + shorten(target, 100) + "\"";
    return out;
  }
  out.path = path.path;
  const auto choice = generation.route_http(listener, out.host, path.path);
  if (choice.route == nullptr) {
    out.status = 404;
    out.detail = "no route for " + shorten(out.host) + shorten(path.path, 100);
    return out;
  }
  if (!admits(*choice.route, client)) {
    out.status = 403;
    out.detail = "client " + client.to_string() + " is not allowed on the route for " + shorten(out.host) +
                 shorten(path.path, 100);
    return out;
  }
  out.route = choice.route;
  out.pool = choice.pool;
  if (out.pool == nullptr && out.route->redirect.empty()) {
    out.status = 503;
    out.detail = "route has no pool";
  }
  return out;
}

}  // namespace gatehouse::proxy::l7
