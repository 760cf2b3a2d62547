#pragma once
// Where an HTTP request goes: its Host (or the authority of an absolute-form
// target, or the SNI for HTTP/1.0 without Host) checked against the client's
// certificate, then the listener's routes by host and path. Pure: no socket,
// no I/O, so every decision is unit-tested.

#include <string>
#include <string_view>

#include "proxy/runtime/generation.h"
#include "proxy/tls/listener_tls.h"

namespace gatehouse::proxy::l7 {

// Where a request goes, or the error status it gets instead.
struct Routed {
  int status = 0;      // 0 = forward; else 400, 403, 421, 404 or 503
  std::string detail;  // for the error body and the log
  std::string host;    // normalised Host (no port)
  std::string path;    // the normalised path routes and deny rules match ("" when refused before)
  // The origin-form target the backend gets for an absolute-form one; ""
  // when the target goes as sent.
  std::string origin_target;
  const conf::Route* route = nullptr;
  const PoolRuntime* pool = nullptr;
};

// `host` as the client sent it (port included); `tls` is the client
// connection's handshake (SNI and the certificate it was served): a host
// the certificate does not cover gets 421, an invalid one 400, a path that
// could be read two ways 400 (http::normalize_path), no route 404, a route
// whose allow/deny ranges refuse `client` 403, a route without a pool or a
// redirect 503.
// The route is chosen by the normalised path; the target the backend gets
// is the one the client sent.
Routed route_request(const Generation& generation, const ListenerRuntime& listener, const HandshakeInfo& tls,
                     std::string_view host, std::string_view target, const asio::ip::address& client);

// An absolute-form target ("https://mail.contoso.com/owa/") as origin-form
// ("/owa/"; "/?q" for "https://mail.contoso.com?q", RFC 9112 3.2.1), and
// its authority ("mail.contoso.com", "" for other forms): RFC 9112 3.2.2
// says the authority then overrides Host. Other targets are unchanged.
std::string origin_form(std::string_view target);
std::string_view authority_of(std::string_view target);

}  // namespace gatehouse::proxy::l7
