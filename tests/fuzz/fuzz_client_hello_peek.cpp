// The ClientHello peek of passthrough listeners, fed a client's first bytes
// in pieces whose sizes the input's first bytes choose. Checked besides "no
// crash": the outcome does not depend on the split; bytes() is exactly what
// was fed while the peek is not invalid; the state never goes back to
// need_more; sni and error are set only when done and invalid; a done peek
// needs exactly hello_size() bytes. And against BoringSSL's own server
// parser, given the same bytes: when its early callback sees the
// ClientHello, the peek has read it too (unless it refused it for one of
// its stricter rules), with the same server name and ALPN.

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "proxy/l4/client_hello.h"
#include "tests/fuzz/fuzz_check.h"

using gatehouse::fuzz::expect;
using gatehouse::proxy::ClientHelloPeek;
using State = ClientHelloPeek::State;

namespace {

// What BoringSSL's server saw in its early callback.
struct Seen {
  bool called = false;
  std::optional<std::string> server_name;
  std::optional<std::string> alpn;  // the ProtocolNameList, as sent
};

Seen* seen = nullptr;

ssl_select_cert_result_t early_callback(const SSL_CLIENT_HELLO* hello) {
  seen->called = true;
  if (const char* name = SSL_get_servername(hello->ssl, TLSEXT_NAMETYPE_host_name)) seen->server_name = name;
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  if (SSL_early_callback_ctx_extension_get(hello, TLSEXT_TYPE_application_layer_protocol_negotiation, &data, &size) &&
      size >= 2)
    seen->alpn.emplace(reinterpret_cast<const char*>(data) + 2, size - 2);
  return ssl_select_cert_error;  // seen enough: stop the handshake here
}

Seen boringssl_reads(std::span<const std::uint8_t> stream) {
  static SSL_CTX* ctx = [] {
    SSL_CTX* c = SSL_CTX_new(TLS_method());
    SSL_CTX_set_select_certificate_cb(c, early_callback);
    // Asking for client certificates lifts BoringSSL's ClientHello limit
    // from 16 KiB to max_cert_list (100 KiB), past the peek's.
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
    return c;
  }();
  Seen result;
  seen = &result;
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx));
  BIO* in = BIO_new_mem_buf(stream.data(), static_cast<long>(stream.size()));
  BIO_set_mem_eof_return(in, -1);
  SSL_set_bio(ssl.get(), in, BIO_new(BIO_s_mem()));
  SSL_set_accept_state(ssl.get());
  (void)SSL_do_handshake(ssl.get());
  seen = nullptr;
  return result;
}

std::string normalized(std::string name) {
  for (char& c : name) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  if (!name.empty() && name.back() == '.') name.pop_back();
  return name;
}

std::string alpn_wire(const ClientHelloPeek& peek) {
  std::string out;
  for (std::string_view p : peek.alpn()) out.append(1, static_cast<char>(p.size())).append(p);
  return out;
}

void check_state(const ClientHelloPeek& peek, std::span<const std::uint8_t> fed) {
  const State s = peek.state();
  expect(s == State::invalid || std::ranges::equal(peek.bytes(), fed), "bytes() is what was fed");
  expect((s == State::invalid) == !peek.error().empty(), "an error exactly when invalid");
  expect(s == State::done || peek.sni().empty(), "an SNI only when done");
  expect(s == State::done || peek.alpn().empty(), "ALPN only when done");
  expect(s != State::need_more || peek.bytes().size() <= ClientHelloPeek::kMaxRawBytes,
         "at most kMaxRawBytes held while waiting");
  if (s != State::done) {
    expect(peek.hello_size() == 0, "no hello size before done");
    return;
  }
  expect(peek.hello_size() > 0 && peek.hello_size() <= peek.bytes().size(), "the hello is within bytes()");
  expect(peek.hello_size() <= ClientHelloPeek::kMaxRawBytes, "the hello's records fit kMaxRawBytes");
  const std::string& sni = peek.sni();
  expect(sni.size() <= 255, "an SNI of at most 255 bytes");
  for (char c : sni) expect(c >= 0x21 && c <= 0x7e && !(c >= 'A' && c <= 'Z'), "an SNI is lower-case printable");
}

// The peek fed in pieces: sizes from `sizes` in turn (empty: all at once).
ClientHelloPeek feed_in_pieces(std::span<const std::uint8_t> stream, std::span<const std::uint8_t> sizes) {
  ClientHelloPeek peek;
  State before = State::need_more;
  for (std::size_t at = 0, turn = 0; at < stream.size(); ++turn) {
    const std::size_t n =
        sizes.empty() ? stream.size() : std::min<std::size_t>(sizes[turn % sizes.size()] + 1u, stream.size() - at);
    const State s = peek.feed(stream.subspan(at, n));
    at += n;
    expect(s == peek.state(), "feed returns the state");
    expect(before == State::need_more || s == before, "done and invalid are final");
    before = s;
    check_state(peek, stream.first(at));
  }
  return peek;
}

}  // namespace

// Byte 0: k = byte % 8 piece sizes follow (k = 0: all at once), each byte b
// a piece of b + 1 bytes, used in turn; then the client's bytes.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t k = std::min<std::size_t>(data[0] % 8, size - 1);
  const std::span<const std::uint8_t> sizes(data + 1, k);
  const std::span<const std::uint8_t> stream(data + 1 + k, size - 1 - k);

  const ClientHelloPeek split = feed_in_pieces(stream, sizes);
  const ClientHelloPeek whole = feed_in_pieces(stream, {});
  expect(split.state() == whole.state() && split.error() == whole.error() && split.sni() == whole.sni() &&
             split.hello_size() == whole.hello_size() && alpn_wire(split) == alpn_wire(whole),
         "the outcome does not depend on the split");

  if (whole.state() == State::done) {
    ClientHelloPeek shorter;
    shorter.feed(stream.first(whole.hello_size() - 1));
    expect(shorter.state() == State::need_more, "a byte less of the hello's records is not enough");
  }

  const Seen boringssl = boringssl_reads(stream);
  if (!boringssl.called) return 0;
  // BoringSSL read a ClientHello it accepts: so does the peek, unless a
  // rule of its own that BoringSSL does not have refused it (BoringSSL
  // reads ALPN only after its early callback).
  if (whole.state() == State::invalid) {
    const std::string& e = whole.error();
    expect(e.starts_with("malformed ClientHello: bad server name") ||
               e == "malformed ClientHello: bad ALPN extension" || e == "zero-length handshake record" ||
               e.starts_with("ClientHello over") || e.starts_with("ClientHello records over") ||
               e.starts_with("SSLv2-format"),
           "the peek refuses a ClientHello BoringSSL accepts only by its own stricter rules");
    return 0;
  }
  expect(whole.state() == State::done, "the peek has read a ClientHello that BoringSSL read");
  expect(whole.sni() == normalized(boringssl.server_name.value_or("")), "the peek reads BoringSSL's server name");
  expect(alpn_wire(whole) == boringssl.alpn.value_or(""), "the peek reads BoringSSL's ALPN list");
  return 0;
}
