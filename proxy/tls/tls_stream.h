#pragma once
// A TCP connection with optional TLS, driven directly by BoringSSL on the
// socket's file descriptor: no memory BIOs, no extra copies, and one read and
// one write may be outstanding at once (the L4 pump's two directions). Errors
// are error codes, never exceptions.

#include <openssl/ssl.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <cstddef>
#include <string>
#include <utility>

namespace gatehouse::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

// Error codes for TLS failures carry BoringSSL's packed error; message() gives
// its reason string ("CERTIFICATE_VERIFY_FAILED", "UNRECOGNIZED_NAME" ...).
const boost::system::error_category& tls_category();

class TlsStream {
 public:
  // `ssl` null = plain TCP. The stream binds `ssl` to the socket's descriptor.
  TlsStream(tcp::socket socket, bssl::UniquePtr<SSL> ssl);
  TlsStream(TlsStream&&) = default;
  TlsStream& operator=(TlsStream&&) = default;

  tcp::socket& socket() { return socket_; }
  SSL* ssl() const { return ssl_.get(); }
  bool is_tls() const { return ssl_ != nullptr; }

  // Completes the handshake (server or client per how `ssl` was set up).
  asio::awaitable<error_code> handshake();
  // At least one byte, or asio::error::eof at an orderly end (close_notify or FIN).
  asio::awaitable<std::pair<error_code, std::size_t>> read_some(void* data, std::size_t size);
  // All of it.
  asio::awaitable<error_code> write_all(const void* data, std::size_t size);
  // One non-blocking attempt: asio::error::would_block when nothing is there
  // yet. Lets a caller hold no buffer while idle: call wait_readable() next,
  // and only after would_block (readiness is edge-triggered).
  std::pair<error_code, std::size_t> try_read_some(void* data, std::size_t size);
  asio::awaitable<error_code> wait_readable();
  // Sends what BoringSSL holds back until the first write: a TLS 1.3 server
  // sends its NewSessionTickets then, so a client that only handshakes (or
  // speaks first, as IMAP/SMTP clients do not) would otherwise never get one.
  asio::awaitable<error_code> flush();
  // Half-close: close_notify (TLS) then FIN; the other direction stays open.
  asio::awaitable<void> shutdown_send();
  // Wakes any pending operation with operation_aborted and refuses new ones;
  // the descriptor stays owned until destruction, so it cannot be reused
  // under a still-live SSL object.
  void abort();
  bool aborted() const { return aborted_; }

 private:
  asio::awaitable<error_code> wait_for(int ssl_error);
  error_code ssl_failure(int ret, int err);

  tcp::socket socket_;
  bssl::UniquePtr<SSL> ssl_;
  bool aborted_ = false;
};

std::string describe_ssl_error(const error_code& ec);

}  // namespace gatehouse::proxy
