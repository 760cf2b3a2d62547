#pragma once
// The plaintext openings of the mail protocols a starttls listener speaks --
// SMTP (RFC 3207 STARTTLS), IMAP (RFC 3501 STARTTLS) and POP3 (RFC 2595
// STLS) -- with the client until it asks for TLS, and with the server before
// (or, with implicit TLS, after) the pool's TLS. After both TLS sessions are
// up the client's first command (EHLO, CAPABILITY, CAPA) is the server's
// first command after its own TLS, so the relay needs no rewriting.

#include <boost/asio/awaitable.hpp>

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include "conf/config.h"
#include "proxy/runtime/connection.h"
#include "proxy/tls/tls_stream.h"

namespace gatehouse::proxy::mail {

// Reads lines (CRLF or bare LF) from a stream, plain or TLS.
class LineReader {
 public:
  // The next line without its line end. An error at the end of the stream,
  // on a read error, or (boost::asio::error::message_size) when a line runs
  // past `max` bytes.
  asio::awaitable<std::pair<error_code, std::string>> read_line(TlsStream& stream, std::size_t max);
  // Bytes read past the last line returned.
  std::size_t buffered() const { return buffer_.size() - start_; }

 private:
  std::string buffer_;
  std::size_t start_ = 0;
};

// What the client-facing side says to one command line.
struct Answer {
  enum class Next { more, start_tls, close };
  std::string reply;  // with its CRLFs
  Next next = Next::more;
};

// The client-facing side of a starttls listener before TLS: it greets,
// answers the few commands the protocol allows before TLS, accepts
// STARTTLS/STLS and refuses everything else. Pure: no I/O.
class ClientDialogue {
 public:
  static constexpr std::size_t kMaxLine = 1024;  // longer lines end the connection
  static constexpr unsigned kMaxCommands = 16;   // before STARTTLS; then the connection ends

  ClientDialogue(conf::StartTls protocol, std::string name) : protocol_(protocol), name_(std::move(name)) {}
  std::string greeting() const;
  Answer answer(std::string_view line) const;
  // Last words before closing: a line too long, the handshake_timeout
  // passed waiting for a line, too many commands.
  std::string too_long() const;
  std::string timed_out() const;
  std::string too_many() const;

 private:
  Answer answer_smtp(std::string_view verb, std::string_view rest, bool bare) const;
  Answer answer_imap(std::string_view line) const;
  Answer answer_pop3(std::string_view verb, bool bare) const;

  conf::StartTls protocol_;
  std::string name_;
};

// How a client's plaintext opening ended.
struct ClientOpening {
  bool start_tls = false;     // the client asked for TLS and was told to go ahead
  std::size_t pipelined = 0;  // bytes it sent after STARTTLS before TLS: dropped, never relayed
  unsigned commands = 0;
  std::string ended;  // without start_tls: why ("client quit", "timed out before STARTTLS", ...)
};

// Speaks the client-facing side on `plain` until STARTTLS, which must come
// before `deadline` (the listener's handshake_timeout bounds the plaintext
// phase as it bounds a TLS handshake). The caller then starts TLS on the
// same stream, which drops what the client pipelined.
asio::awaitable<ClientOpening> open_client(TlsStream& plain, conf::StartTls protocol, const std::string& name,
                                           Clock::time_point deadline);

// The server-facing side, for connect_backend: with a starttls pool, the
// server's greeting, EHLO (SMTP) and STARTTLS/STLS before TLS; otherwise
// only the greeting (on the implicit-TLS or plain connection), which the
// client already had from Gatehouse.
class ServerOpening final : public BackendOpening {
 public:
  ServerOpening(conf::StartTls protocol, std::string ehlo_name) : protocol_(protocol), name_(std::move(ehlo_name)) {}
  asio::awaitable<std::string> before_tls(TlsStream& plain) const override;
  asio::awaitable<std::string> after_tls(TlsStream& stream) const override;

 private:
  conf::StartTls protocol_;
  std::string name_;
};

}  // namespace gatehouse::proxy::mail
