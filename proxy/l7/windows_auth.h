#pragma once
// Windows authentication as a proxy must see it. IIS authenticates NTLM, and
// Negotiate (Kerberos) with authPersistNonNTLM on, per TCP connection: once a
// connection has carried a successful handshake, later requests on it are
// served as that user without any header. So a backend connection that took
// part in such a handshake belongs to one client connection for good.
//
// These functions only read header values; they decide nothing about
// connections. They never return a password, hash or ticket: only the scheme
// and the user name a client stated in clear (NTLM Type 3, Basic).

#include <optional>
#include <string>
#include <string_view>

#include "proxy/http/http_message.h"

namespace gatehouse::proxy::l7 {

// The HTTP message layer (proxy/http) as l7 speaks it.
using http::append_chunk;
using http::append_last_chunk;
using http::error_code;
using http::error_response;
using http::Field;
using http::Fields;
using http::find_field;
using http::ForwardedFor;
using http::is_forwarding_field;
using http::is_hop_by_hop;
using http::kMaxHeaderBytes;
using http::kMaxHeaderFields;
using http::reason_phrase;
using http::RequestHead;
using http::RequestParser;
using http::ResponseHead;
using http::ResponseParser;
using http::serialize_request;
using http::serialize_response;

// What a request's Authorization (or Proxy-Authorization) says, for the
// access log and for binding.
struct RequestAuth {
  std::string scheme;  // as the client spelled it: "NTLM", "Negotiate", "Basic", "Bearer", ...
  std::string user;    // "DOMAIN\\user", "user" or "" when the message does not name one
  // NTLM, Negotiate or Kerberos: authenticates the connection, not the request.
  bool connection_bound = false;
  // An NTLM Type 3 message (the last leg): the user is then the one the
  // connection will be authenticated as if the backend accepts it.
  bool final_leg = false;
};

// nullopt when the request carries no credentials.
std::optional<RequestAuth> request_auth(const Fields& fields);
// The same for one field value ("NTLM TlRMTVNTUAAD...").
RequestAuth parse_authorization(std::string_view value);

// Whether a response turns its connection into an authenticated one or
// starts a handshake on it: a 401/407 whose WWW-Authenticate or
// Proxy-Authenticate offers NTLM or Negotiate, or any response carrying
// Persistent-Auth (IIS's sign that it keeps the authentication).
bool response_binds(int status, const Fields& fields);

// "DOMAIN\\user" (or "user") from an NTLMSSP message; nullopt unless it is a
// well-formed Type 3. `message` is the decoded binary token; a message
// wrapped in SPNEGO is found by its signature.
std::optional<std::string> ntlm_user(std::string_view message);

// Standard base64 (RFC 4648, padding optional); nullopt when malformed.
std::optional<std::string> decode_base64(std::string_view text);

}  // namespace gatehouse::proxy::l7
