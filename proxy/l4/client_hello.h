#pragma once
// The ClientHello peek of a passthrough listener: reassembles the client's
// ClientHello from the bytes it sends, however they are split into TCP
// segments and TLS records, and reads its SNI (and ALPN) without terminating
// TLS. Every byte fed is kept exactly as received, to be relayed unchanged to
// the backend the SNI picks.
//
// What is accepted (anything else makes the peek invalid, with a reason for
// the log):
// - records of content type 22 (handshake), record version 3.x, length
//   1..16384 (RFC 8446 5.1: no zero-length handshake fragment, at most 2^14);
//   the first byte of the stream decides at once (a "GET /" or an SSLv2
//   header is refused on its first byte);
// - their payloads, concatenated, start with one handshake message of type 1
//   (client_hello) whose body is at most kMaxBytes, and end exactly where
//   that message ends: a record that carries handshake bytes past the
//   ClientHello is refused (a client sends nothing else before the server's
//   reply, and a server would refuse it as excess handshake data);
// - the records carrying the ClientHello total at most kMaxRawBytes, record
//   headers included: the largest ClientHello fits in up to 64 records, a
//   smaller one in more, finer ones. bytes() therefore holds at most
//   kMaxRawBytes while the peek needs more;
// - the body as RFC 8446 4.1.2 lays it out, checked with BoringSSL's CBS:
//   session_id of at most 32 bytes, a non-empty even cipher_suites, a
//   non-empty compression_methods, an optional extensions block that ends
//   the body exactly, no extension type twice; server_name and ALPN are
//   parsed in full, other extensions only framed.
//
// Bytes after the ClientHello's last record (a ChangeCipherSpec, 0-RTT
// data) are kept in bytes() and not looked at: the backend reads them.

#include <openssl/base.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace gatehouse::proxy {

class ClientHelloPeek {
 public:
  // The largest ClientHello body accepted (the handshake length field).
  static constexpr std::size_t kMaxBytes = 64 * 1024;
  // The most bytes the records of a ClientHello may take: the body, its
  // 4-byte handshake header and 64 record headers of 5 bytes.
  static constexpr std::size_t kMaxRawBytes = kMaxBytes + 4 + 64 * 5;
  static constexpr std::size_t kMaxRecord = 16 * 1024;

  enum class State { need_more, done, invalid };

  // Takes the next bytes from the client, in any split. Once done, further
  // bytes are only kept (the caller normally stops feeding and relays
  // bytes()); once invalid, they are ignored.
  State feed(std::span<const std::uint8_t> bytes);

  State state() const { return state_; }
  // The host_name of the server_name extension, lower-cased, one trailing
  // dot removed (only one: "a.." reads "a."); "" when the ClientHello has no
  // host_name. Set once done.
  const std::string& sni() const { return sni_; }
  // The protocols of the ALPN extension, in the client's order; empty
  // without one. Views into the peek, valid while it lives. Set once done.
  std::vector<std::string_view> alpn() const;
  // Why the peek is invalid, for the log; "" otherwise.
  const std::string& error() const { return error_; }
  // Everything fed so far, exactly as received; after invalid, what was fed
  // up to and including the feed that made it so.
  std::span<const std::uint8_t> bytes() const { return raw_; }
  // How many of bytes() are the records carrying the ClientHello (0 until
  // done); the rest came after them.
  std::size_t hello_size() const { return state_ == State::done ? next_ : 0; }

 private:
  State advance();
  bool read_record_header();
  bool take_handshake_header(std::span<const std::uint8_t> payload);
  State finish();
  bool parse_body(std::span<const std::uint8_t> body);
  bool parse_extensions(CBS extensions);
  bool parse_server_name(CBS data);
  bool parse_alpn(CBS data);
  bool too_many_raw_bytes();
  bool malformed(std::string_view what);
  State fail(std::string why);

  State state_ = State::need_more;
  std::vector<std::uint8_t> raw_;
  std::size_t next_ = 0;               // first byte of raw_ not yet walked over
  std::size_t record_left_ = 0;        // payload bytes of the current record still to come
  std::size_t records_ = 0;            // records walked over (header read)
  std::size_t payload_announced_ = 0;  // payload bytes the records read so far announce
  std::array<std::uint8_t, 4> handshake_header_{};
  std::size_t header_have_ = 0;   // bytes of handshake_header_ filled
  std::size_t message_size_ = 0;  // 4 + body length, once the header is in
  std::string sni_;
  std::string alpn_;  // the ALPN extension's ProtocolNameList, validated
  std::string error_;
};

}  // namespace gatehouse::proxy
