#pragma once
// A TCP connection with optional TLS. BoringSSL reads through a read-ahead
// buffer, so incoming TLS records cost one recv() for as many as have
// arrived (BoringSSL on a socket reads each 5-byte header and body
// separately). The buffer is record-sized, taken from a per-thread free list
// for a read and handed back as soon as its bytes are taken: a stream that
// waits holds no buffer. Writes go straight to the socket. One read and one write may be
// outstanding at once (the L4 pump's two directions). Errors are error codes,
// never exceptions.

#include <openssl/ssl.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <cstddef>
#include <memory>
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
  TlsStream(TlsStream&&) noexcept;
  TlsStream& operator=(TlsStream&&) noexcept;
  ~TlsStream();

  tcp::socket& socket() { return socket_; }
  SSL* ssl() const { return ssl_.get(); }
  bool is_tls() const { return ssl_ != nullptr; }

  // Turns a plain stream into a TLS one (STARTTLS): `ssl` reads the socket
  // from here on. Bytes read ahead and not yet taken are discarded, never
  // read as TLS nor returned: bytes a peer pipelined after its STARTTLS are
  // plaintext an attacker may have injected. Returns how many were dropped.
  std::size_t start_tls(bssl::UniquePtr<SSL> ssl);
  // Completes the handshake (server or client per how `ssl` was set up).
  asio::awaitable<error_code> handshake();
  // At least one byte, or asio::error::eof at an orderly end (close_notify or FIN).
  asio::awaitable<std::pair<error_code, std::size_t>> read_some(void* data, std::size_t size);
  // All of it.
  asio::awaitable<error_code> write_all(const void* data, std::size_t size);
  // What is already read ahead, without a system call: asio::error::would_block
  // when the socket must be read first. Lets a caller hold no buffer while
  // idle: call wait_readable() next.
  std::pair<error_code, std::size_t> try_read_some(void* data, std::size_t size);
  // Until something (bytes, an end, an error) has been read ahead for the
  // next try_read_some(). Idle, a stream holds no buffer.
  asio::awaitable<error_code> wait_readable();
  // Nothing read ahead and nothing on the socket (one non-blocking read,
  // kept if it finds something). A kept-alive backend connection that is not
  // quiet was closed or is confused.
  bool quiet();
  // Before the stream goes idle in a pool: true when no read-ahead bytes are
  // untaken (the stream then holds no receive buffer).
  bool release_read_ahead();
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
  // Wakes a pending operation with operation_aborted, and every read from
  // now on fails so: the stream stays usable for writing (an error, then
  // close_notify).
  void cancel();

  // What the socket has delivered that nobody has taken yet (tls_stream.cpp).
  struct ReadAhead;

 private:
  asio::awaitable<error_code> wait_for(int ssl_error);
  error_code ssl_failure(int ret, int err);

  tcp::socket socket_;
  // Declared before ssl_ so that it outlives the BIO that reads from it.
  std::unique_ptr<ReadAhead> read_;
  bssl::UniquePtr<SSL> ssl_;
  bool aborted_ = false;
  bool reads_cancelled_ = false;
};

}  // namespace gatehouse::proxy
