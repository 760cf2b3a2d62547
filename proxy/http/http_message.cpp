#include "proxy/http/http_message.h"

#include <boost/asio/buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>

#include <algorithm>
#include <array>
#include <charconv>

namespace gatehouse::proxy::http {

namespace beast_http = boost::beast::http;
using boost::beast::iequals;

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Names listed in Connection: also hop-by-hop for this message. Tokens that
// are hop-by-hop anyway ("close", "keep-alive", as most messages send) are
// left out, so that usually nothing is left to look up.
std::vector<std::string_view> connection_tokens(const Fields& raw) {
  std::vector<std::string_view> tokens;
  for (const auto& f : raw) {
    if (!iequals(f.name, "connection")) continue;
    std::string_view rest = f.value;
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      const auto token = trim(rest.substr(0, comma));
      if (!token.empty() && !iequals(token, "close") && !is_hop_by_hop(token)) tokens.push_back(token);
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return tokens;
}

std::string describe(const error_code& ec) {
  if (ec == beast_http::error::header_limit) return "request line or header block over 64 KiB";
  if (ec == beast_http::error::bad_content_length)
    return "invalid Content-Length, or Content-Length with Transfer-Encoding";
  if (ec == beast_http::error::multiple_content_length) return "several differing Content-Length fields";
  if (ec == beast_http::error::bad_transfer_encoding) return "Transfer-Encoding with Content-Length, or repeated";
  if (ec == beast_http::error::bad_field) return "invalid character in a header field name";
  if (ec == beast_http::error::bad_value) return "invalid character in a header field value";
  if (ec == beast_http::error::bad_method) return "malformed method";
  if (ec == beast_http::error::bad_target) return "malformed request target";
  if (ec == beast_http::error::bad_version) return "malformed HTTP version";
  if (ec == beast_http::error::bad_line_ending) return "malformed line ending";
  if (ec == beast_http::error::bad_status || ec == beast_http::error::bad_reason) return "malformed status line";
  if (ec == beast_http::error::bad_chunk || ec == beast_http::error::bad_chunk_extension)
    return "malformed chunked body";
  if (ec == beast_http::error::body_limit) return "body too large";
  if (ec == beast_http::error::partial_message) return "message ended early";
  return ec.message();
}

// Appended as is when it is a token, else quoted (RFC 7239 section 4).
void append_forwarded_value(std::string& out, std::string_view value) {
  const bool token = !value.empty() && std::all_of(value.begin(), value.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
  });
  if (token) {
    out += value;
    return;
  }
  out += '"';
  for (char c : value) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += '"';
}

// The bytes append_fields() writes.
std::size_t fields_size(const Fields& fields) {
  std::size_t n = 0;
  for (const auto& f : fields) n += f.name.size() + f.value.size() + 4;
  return n;
}

void append_fields(std::string& out, const Fields& fields) {
  for (const auto& f : fields) {
    out += f.name;
    out += ": ";
    out += f.value;
    out += "\r\n";
  }
}

void append_content_length(std::string& out, std::uint64_t length) {
  char digits[24];
  const auto end = std::to_chars(digits, digits + sizeof digits, length).ptr;
  out += "Content-Length: ";
  out.append(digits, end);
  out += "\r\n";
}

}  // namespace

const std::string* find_field(const Fields& fields, std::string_view name) {
  for (const auto& f : fields)
    if (iequals(f.name, name)) return &f.value;
  return nullptr;
}

bool is_forwarding_field(std::string_view name) {
  // A client-sent X-Forwarded-Client-Cert would claim a certificate identity
  // the client never proved.
  return iequals(name, "host") || iequals(name, "x-forwarded-for") || iequals(name, "x-forwarded-proto") ||
         iequals(name, "x-forwarded-host") || iequals(name, "forwarded") || iequals(name, "x-forwarded-client-cert");
}

bool forwards_request_field(std::string_view name, std::span<const std::string_view> connection_listed) {
  if (is_hop_by_hop(name) || is_forwarding_field(name)) return false;
  return std::none_of(connection_listed.begin(), connection_listed.end(),
                      [&](std::string_view token) { return iequals(token, name); });
}

bool is_hop_by_hop(std::string_view name) {
  static constexpr std::array<std::string_view, 7> names{"connection",        "keep-alive", "proxy-connection", "te",
                                                         "transfer-encoding", "upgrade",    "content-length"};
  for (auto n : names)
    if (iequals(n, name)) return true;
  return false;
}

template <bool isRequest>
Parser<isRequest>::Parser() {
  this->header_limit(kMaxHeaderBytes);
  this->body_limit(boost::none);
  // Not eager until the head is done, so that feed() returns exactly at the
  // end of the head and the caller can count its size.
  this->eager(false);
}

template <bool isRequest>
void Parser<isRequest>::fail(error_code& ec, std::string why) {
  violation_ = std::move(why);
  ec = beast_http::error::bad_field;
}

template <bool isRequest>
std::size_t Parser<isRequest>::feed(std::string_view data, error_code& ec) {
  if (!this->is_header_done() && !checked_fold_) {
    // Beast unfolds obs-fold silently; a proxy must refuse it (RFC 9112
    // section 5.2) so that it and the backend cannot read different fields.
    const auto end = data.find("\r\n\r\n");
    const auto scan = data.substr(0, end == std::string_view::npos ? data.size() : end + 2);
    if (scan.find("\n ") != std::string_view::npos || scan.find("\n\t") != std::string_view::npos) {
      fail(ec, "obs-fold (a header line continued on the next line)");
      return 0;
    }
    if (end != std::string_view::npos) checked_fold_ = true;
  }
  std::size_t used = this->put(boost::asio::buffer(data.data(), data.size()), ec);
  if (ec == beast_http::error::need_more) ec = {};
  if (!ec && this->is_header_done() && !this->eager()) this->eager(true);
  if (ec && violation_.empty()) violation_ = describe(ec);
  return used;
}

template <bool isRequest>
void Parser<isRequest>::feed_eof(error_code& ec) {
  this->put_eof(ec);
  if (ec && violation_.empty()) violation_ = describe(ec);
}

template <bool isRequest>
void Parser<isRequest>::on_request_impl(beast_http::verb, boost::beast::string_view method,
                                        boost::beast::string_view target, int version, error_code&) {
  if constexpr (isRequest) {
    head_.method.assign(method.data(), method.size());
    head_.target.assign(target.data(), target.size());
    head_.version = version;
  }
}

template <bool isRequest>
void Parser<isRequest>::on_response_impl(int status, boost::beast::string_view reason, int version, error_code& ec) {
  if constexpr (!isRequest) {
    // Beast takes any three digits; "020" would go out as "HTTP/1.1 20",
    // which no client reads, and 600-999 mean nothing (RFC 9110 15).
    if (status < 100 || status > 599) return fail(ec, "status code " + std::to_string(status) + " outside 100-599");
    head_.status = status;
    head_.reason.assign(reason.data(), reason.size());
    head_.version = version;
  }
}

template <bool isRequest>
void Parser<isRequest>::on_field_impl(beast_http::field, boost::beast::string_view name,
                                      boost::beast::string_view value, error_code& ec) {
  if (++field_count_ > kMaxHeaderFields) return fail(ec, "more than 100 header fields");
  // The name as written: it goes on to HTTP/1.1 peers in that case (older
  // Outlook builds read X-OWA-Version, Persistent-Auth... in no other), and
  // only the HTTP/2 codec lower-cases it. Compare with iequals, never
  // normalise.
  Field f{std::string(name.data(), name.size()), std::string(value.data(), value.size())};
  if (in_trailers_) {
    if (forwards_request_field(f.name)) trailers_.push_back(std::move(f));
    return;
  }
  if (raw_.empty()) raw_.reserve(16);  // one allocation for a typical head, not five
  if constexpr (isRequest) {
    if (iequals(f.name, "host")) {
      if (find_field(raw_, "host") != nullptr) return fail(ec, "more than one Host field");
      head_.host = f.value;
    }
  }
  raw_.push_back(std::move(f));
}

template <bool isRequest>
void Parser<isRequest>::on_header_impl(error_code& ec) {
  const std::string* te = find_field(raw_, "transfer-encoding");
  if constexpr (isRequest) {
    // A request body whose length the proxy cannot tell is refused, never
    // guessed (RFC 9112 section 6.3 rule 4).
    if (te != nullptr && !this->chunked()) return fail(ec, "Transfer-Encoding whose final coding is not chunked");
    if (te != nullptr && find_field(raw_, "content-length") != nullptr)
      return fail(ec, "Content-Length with Transfer-Encoding");
    if (head_.version >= 11 && find_field(raw_, "host") == nullptr) return fail(ec, "HTTP/1.1 request without Host");
    if (const std::string* expect = find_field(raw_, "expect"))
      head_.expect_continue = iequals(trim(*expect), "100-continue");
  } else {
    head_.close_delimited = this->need_eof() && !this->chunked() && !this->content_length();
  }
  const auto listed = connection_tokens(raw_);
  head_.fields.reserve(head_.fields.size() + raw_.size());
  for (auto& f : raw_) {
    if constexpr (isRequest) {
      if (!forwards_request_field(f.name, listed)) continue;
    } else {
      if (is_hop_by_hop(f.name) ||
          std::any_of(listed.begin(), listed.end(), [&](std::string_view t) { return iequals(t, f.name); }))
        continue;
    }
    head_.fields.push_back(std::move(f));
  }
  raw_.clear();
  if (auto length = this->content_length()) head_.content_length = *length;
  head_.chunked = this->chunked();
  head_.keep_alive = this->keep_alive();
}

template <bool isRequest>
std::size_t Parser<isRequest>::on_body_impl(boost::beast::string_view body, error_code&) {
  body_.append(body.data(), body.size());
  return body.size();
}

template <bool isRequest>
void Parser<isRequest>::on_chunk_header_impl(std::uint64_t size, boost::beast::string_view, error_code&) {
  if (size == 0) in_trailers_ = true;
}

template <bool isRequest>
std::size_t Parser<isRequest>::on_chunk_body_impl(std::uint64_t, boost::beast::string_view body, error_code&) {
  body_.append(body.data(), body.size());
  return body.size();
}

template class Parser<true>;
template class Parser<false>;

std::string serialize_request(const RequestHead& head, const ForwardedFor& forwarded, bool has_body) {
  std::string out;
  out.reserve(256 + head.target.size() + head.host.size() + fields_size(head.fields) + forwarded.host.size() * 2 +
              forwarded.client_address.size() * 2 + forwarded.client_cert.size());
  out += head.method;
  out += ' ';
  out += head.target;
  out += " HTTP/1.1\r\n";
  // Always: the line says HTTP/1.1, and a backend answers an HTTP/1.1
  // request without Host with 400 (RFC 9112 3.2). An HTTP/1.0 client that
  // sent none gets the empty one RFC 9110 7.2 prescribes.
  out += "Host: ";
  out += head.host;
  out += "\r\n";
  append_fields(out, head.fields);
  // Appended piece by piece: no temporary strings per request.
  out += "X-Forwarded-For: ";
  out += forwarded.client_address;
  out += "\r\nX-Forwarded-Proto: ";
  out += forwarded.proto;
  out += "\r\n";
  if (!forwarded.host.empty()) {
    out += "X-Forwarded-Host: ";
    out += forwarded.host;
    out += "\r\n";
  }
  const bool v6 = forwarded.client_address.find(':') != std::string_view::npos;
  out += v6 ? "Forwarded: for=\"[" : "Forwarded: for=";
  out += forwarded.client_address;
  out += v6 ? "]\";proto=" : ";proto=";
  out += forwarded.proto;
  if (!forwarded.host.empty()) append_forwarded_value(out.append(";host="), forwarded.host);
  out += "\r\n";
  if (!forwarded.client_cert.empty()) {
    out += "X-Forwarded-Client-Cert: ";
    out += forwarded.client_cert;
    out += "\r\n";
  }
  if (head.content_length) {
    append_content_length(out, *head.content_length);
  } else if (has_body) {
    out += "Transfer-Encoding: chunked\r\n";
  }
  out += "\r\n";
  return out;
}

std::string serialize_response(const ResponseHead& head, bool chunked, bool close) {
  std::string out;
  out.reserve(128 + head.reason.size() + fields_size(head.fields));
  out += "HTTP/1.1 ";
  out += std::to_string(head.status);
  out += ' ';
  if (head.reason.empty()) out += reason_phrase(head.status);
  else out += head.reason;
  out += "\r\n";
  append_fields(out, head.fields);
  if (head.content_length) append_content_length(out, *head.content_length);
  else if (chunked) out += "Transfer-Encoding: chunked\r\n";
  if (close) out += "Connection: close\r\n";
  out += "\r\n";
  return out;
}

std::string_view reason_phrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 421: return "Misdirected Request";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
  }
}

ErrorResponse make_error(int status, std::string_view detail) {
  ErrorResponse out;
  out.body = std::to_string(status) + " " + std::string(reason_phrase(status));
  if (!detail.empty()) out.body += ": " + std::string(detail);
  out.body += "\n";
  out.head.status = status;
  out.head.fields.push_back({"Content-Type", "text/plain; charset=utf-8"});
  out.head.fields.push_back({"Cache-Control", "no-store"});
  out.head.content_length = out.body.size();
  return out;
}

ErrorResponse make_redirect(int status, std::string_view location) {
  ErrorResponse out = make_error(status, location);
  out.head.fields.push_back({"Location", std::string(location)});
  return out;
}

std::string error_response(int status, std::string_view detail, bool close, bool head_only) {
  const ErrorResponse error = make_error(status, detail);
  std::string out = serialize_response(error.head, false, close);
  if (!head_only) out += error.body;
  return out;
}

void append_chunk(std::string& out, std::string_view data) {
  if (data.empty()) return;
  char size[20];
  const auto end = std::to_chars(size, size + sizeof size, data.size(), 16).ptr;
  out.append(size, end);
  out += "\r\n";
  out += data;
  out += "\r\n";
}

void append_last_chunk(std::string& out, const Fields& trailers) {
  out += "0\r\n";
  append_fields(out, trailers);
  out += "\r\n";
}

}  // namespace gatehouse::proxy::http
