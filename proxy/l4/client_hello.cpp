#include "proxy/l4/client_hello.h"

#include <openssl/bytestring.h>

#include <algorithm>
#include <bitset>
#include <utility>

namespace gatehouse::proxy {
namespace {

constexpr std::uint8_t kHandshakeRecord = 22;
constexpr std::uint8_t kClientHello = 1;
constexpr std::uint16_t kServerName = 0;
constexpr std::uint16_t kAlpn = 16;
constexpr std::size_t kRecordHeader = 5;
constexpr std::size_t kHandshakeHeader = 4;

std::string hex(std::uint8_t byte) {
  static constexpr char digits[] = "0123456789abcdef";
  return {'0', 'x', digits[byte >> 4], digits[byte & 15]};
}

std::size_t record_length(const std::uint8_t* header) { return static_cast<std::size_t>(header[3] << 8 | header[4]); }

}  // namespace

ClientHelloPeek::State ClientHelloPeek::feed(std::span<const std::uint8_t> bytes) {
  if (state_ == State::invalid) return state_;
  raw_.insert(raw_.end(), bytes.begin(), bytes.end());
  if (state_ == State::done) return state_;
  state_ = advance();
  return state_;
}

std::vector<std::string_view> ClientHelloPeek::alpn() const {
  std::vector<std::string_view> out;
  std::string_view rest = alpn_;  // validated: u8-prefixed, non-empty names
  while (!rest.empty()) {
    const auto n = static_cast<std::uint8_t>(rest.front());
    out.push_back(rest.substr(1, n));
    rest.remove_prefix(1 + n);
  }
  return out;
}

// Walks the records over what has arrived, as far as it goes.
ClientHelloPeek::State ClientHelloPeek::advance() {
  for (;;) {
    if (record_left_ == 0) {
      if (message_size_ != 0 && payload_announced_ == message_size_) return finish();
      if (!read_record_header()) return state_ == State::invalid ? State::invalid : State::need_more;
    }
    const std::size_t n = std::min(record_left_, raw_.size() - next_);
    if (n == 0) return State::need_more;
    if (header_have_ < kHandshakeHeader && !take_handshake_header({raw_.data() + next_, n})) return State::invalid;
    next_ += n;
    record_left_ -= n;
  }
}

// False when the header is not all there yet, or is refused (then invalid).
bool ClientHelloPeek::read_record_header() {
  const std::size_t have = raw_.size() - next_;
  if (have == 0) return false;
  const std::uint8_t* header = raw_.data() + next_;
  if (header[0] != kHandshakeRecord) {
    // The first byte alone tells a TLS client from anything else.
    if (records_ > 0) fail("record of content type " + std::to_string(header[0]) + " inside the ClientHello");
    else if (header[0] & 0x80) fail("SSLv2-format ClientHello (first byte " + hex(header[0]) + ")");
    else fail("not a TLS handshake record (first byte " + hex(header[0]) + ")");
    return false;
  }
  // Even a one-byte record must fit: so the bytes held stay under the limit.
  if (next_ + kRecordHeader + 1 > kMaxRawBytes) return too_many_raw_bytes();
  if (have < kRecordHeader) return false;
  const std::size_t length = record_length(header);
  if (header[1] != 3) fail("record version " + hex(header[1]) + hex(header[2]).substr(2) + " is not TLS");
  else if (length == 0) fail("zero-length handshake record");
  else if (length > kMaxRecord) fail("record of " + std::to_string(length) + " bytes exceeds 16384");
  else if (next_ + kRecordHeader + length > kMaxRawBytes) return too_many_raw_bytes();
  if (state_ == State::invalid) return false;
  payload_announced_ += length;
  if (message_size_ != 0 && payload_announced_ > message_size_) {
    fail("handshake record continues past the ClientHello");
    return false;
  }
  ++records_;
  next_ += kRecordHeader;
  record_left_ = length;
  return true;
}

// Collects the 4-byte handshake header, which may span records.
bool ClientHelloPeek::take_handshake_header(std::span<const std::uint8_t> payload) {
  const std::size_t n = std::min(kHandshakeHeader - header_have_, payload.size());
  std::copy_n(payload.begin(), n, handshake_header_.begin() + static_cast<std::ptrdiff_t>(header_have_));
  header_have_ += n;
  if (handshake_header_[0] != kClientHello) {
    fail("handshake message type " + std::to_string(handshake_header_[0]) + " is not a ClientHello");
    return false;
  }
  if (header_have_ < kHandshakeHeader) return true;
  const std::size_t body = static_cast<std::size_t>(handshake_header_[1]) << 16 |
                           static_cast<std::size_t>(handshake_header_[2]) << 8 | handshake_header_[3];
  if (body > kMaxBytes) {
    fail("ClientHello over " + std::to_string(kMaxBytes) + " bytes (" + std::to_string(body) + ")");
    return false;
  }
  message_size_ = kHandshakeHeader + body;
  if (payload_announced_ > message_size_) {
    fail("handshake record continues past the ClientHello");
    return false;
  }
  return true;
}

// The whole ClientHello is in: join its record payloads (only when there
// are several) and parse it.
ClientHelloPeek::State ClientHelloPeek::finish() {
  std::vector<std::uint8_t> joined;
  std::span<const std::uint8_t> message;
  if (records_ == 1) {
    message = {raw_.data() + kRecordHeader, message_size_};
  } else {
    joined.reserve(message_size_);
    for (std::size_t at = 0; at < next_;) {
      const std::size_t length = record_length(raw_.data() + at);
      joined.insert(joined.end(), raw_.begin() + static_cast<std::ptrdiff_t>(at + kRecordHeader),
                    raw_.begin() + static_cast<std::ptrdiff_t>(at + kRecordHeader + length));
      at += kRecordHeader + length;
    }
    message = joined;
  }
  return parse_body(message.subspan(kHandshakeHeader)) ? State::done : State::invalid;
}

// RFC 8446 4.1.2; the fields a TLS 1.0-1.2 ClientHello has as well.
bool ClientHelloPeek::parse_body(std::span<const std::uint8_t> body) {
  CBS cbs, random, session_id, cipher_suites, compression_methods, extensions;
  CBS_init(&cbs, body.data(), body.size());
  std::uint16_t legacy_version = 0;
  if (!CBS_get_u16(&cbs, &legacy_version)) return malformed("legacy_version");
  if (!CBS_get_bytes(&cbs, &random, 32)) return malformed("random");
  if (!CBS_get_u8_length_prefixed(&cbs, &session_id) || CBS_len(&session_id) > 32) return malformed("session_id");
  if (!CBS_get_u16_length_prefixed(&cbs, &cipher_suites) || CBS_len(&cipher_suites) == 0 ||
      CBS_len(&cipher_suites) % 2 != 0)
    return malformed("cipher_suites");
  if (!CBS_get_u8_length_prefixed(&cbs, &compression_methods) || CBS_len(&compression_methods) == 0)
    return malformed("compression_methods");
  if (CBS_len(&cbs) == 0) return true;  // no extensions at all: allowed before TLS 1.3
  if (!CBS_get_u16_length_prefixed(&cbs, &extensions) || CBS_len(&cbs) != 0) return malformed("extensions block");
  return parse_extensions(extensions);
}

bool ClientHelloPeek::parse_extensions(CBS extensions) {
  std::bitset<65536> seen;  // 8 KiB on the stack, no allocation
  while (CBS_len(&extensions) != 0) {
    std::uint16_t type = 0;
    CBS data;
    if (!CBS_get_u16(&extensions, &type) || !CBS_get_u16_length_prefixed(&extensions, &data))
      return malformed("extensions block");
    if (seen[type]) {
      fail("malformed ClientHello: extension " + std::to_string(type) + " sent twice");
      return false;
    }
    seen[type] = true;
    if (type == kServerName && !parse_server_name(data)) return false;
    if (type == kAlpn && !parse_alpn(data)) return false;
  }
  return true;
}

// RFC 6066 3: a non-empty ServerNameList; entries of other name types are
// framed and skipped, a second host_name is refused.
bool ClientHelloPeek::parse_server_name(CBS data) {
  CBS list, host;
  if (!CBS_get_u16_length_prefixed(&data, &list) || CBS_len(&data) != 0 || CBS_len(&list) == 0)
    return malformed("server_name extension");
  bool found = false;
  while (CBS_len(&list) != 0) {
    std::uint8_t name_type = 0;
    CBS name;
    if (!CBS_get_u8(&list, &name_type) || !CBS_get_u16_length_prefixed(&list, &name))
      return malformed("server_name extension");
    if (name_type != 0) continue;
    if (found) return malformed("server_name extension (two host names)");
    found = true;
    host = name;
  }
  if (!found) return true;
  const std::size_t size = CBS_len(&host);
  if (size == 0 || size > 255) return malformed("server name of " + std::to_string(size) + " bytes");
  const std::uint8_t* name = CBS_data(&host);
  for (std::size_t i = 0; i < size; ++i)
    if (name[i] < 0x21 || name[i] > 0x7e) return malformed("server name (byte " + hex(name[i]) + ")");
  sni_.assign(reinterpret_cast<const char*>(name), size);
  for (char& c : sni_)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  if (sni_.back() == '.') sni_.pop_back();
  // "." would otherwise read as "no server name" and take the default route.
  if (sni_.empty()) return malformed("server name \".\"");
  return true;
}

// RFC 7301 3.1: a non-empty list of non-empty names.
bool ClientHelloPeek::parse_alpn(CBS data) {
  CBS list;
  if (!CBS_get_u16_length_prefixed(&data, &list) || CBS_len(&data) != 0 || CBS_len(&list) == 0)
    return malformed("ALPN extension");
  CBS rest = list;
  while (CBS_len(&rest) != 0) {
    CBS protocol;
    if (!CBS_get_u8_length_prefixed(&rest, &protocol) || CBS_len(&protocol) == 0) return malformed("ALPN extension");
  }
  alpn_.assign(reinterpret_cast<const char*>(CBS_data(&list)), CBS_len(&list));
  return true;
}

bool ClientHelloPeek::too_many_raw_bytes() {
  fail("ClientHello records over " + std::to_string(kMaxRawBytes) + " bytes (record headers included)");
  return false;
}

bool ClientHelloPeek::malformed(std::string_view what) {
  fail("malformed ClientHello: bad " + std::string(what));
  return false;
}

ClientHelloPeek::State ClientHelloPeek::fail(std::string why) {
  state_ = State::invalid;
  error_ = std::move(why);
  sni_.clear();
  alpn_.clear();
  return state_;
}

}  // namespace gatehouse::proxy
