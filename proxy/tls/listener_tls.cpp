#include "proxy/tls/listener_tls.h"

#include <cstring>

#include <openssl/bytestring.h>
#include <openssl/err.h>

#include <stdexcept>

#include "proxy/tls/ticket_keys.h"

namespace gatehouse::proxy {

namespace {

int listener_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

int info_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

std::string ssl_errors() {
  std::string out;
  while (uint32_t e = ERR_get_error()) {
    if (!out.empty()) out += "; ";
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    out += buf;
  }
  return out;
}

bool list_contains_u16(CBS list, auto&& predicate) {
  while (CBS_len(&list) >= 2) {
    uint16_t value = 0;
    if (!CBS_get_u16(&list, &value)) return false;
    if (predicate(value)) return true;
  }
  return false;
}

bool is_ecdsa_sigalg(uint16_t alg) {
  // ecdsa_secp256r1_sha256, ecdsa_secp384r1_sha384, ecdsa_secp521r1_sha512, ecdsa_sha1
  return alg == 0x0403 || alg == 0x0503 || alg == 0x0603 || alg == 0x0203;
}

bool is_ecdhe_ecdsa_cipher(uint16_t suite) {
  switch (suite) {
    case 0xC02B: case 0xC02C: case 0xCCA9: case 0xC009: case 0xC00A: case 0xC023: case 0xC024:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool client_offers_ecdsa(const SSL_CLIENT_HELLO* hello) {
  const uint8_t* data = nullptr;
  size_t len = 0;
  if (!SSL_early_callback_ctx_extension_get(hello, TLSEXT_TYPE_signature_algorithms, &data, &len)) return false;
  CBS ext, algs;
  CBS_init(&ext, data, len);
  if (!CBS_get_u16_length_prefixed(&ext, &algs) || !list_contains_u16(algs, is_ecdsa_sigalg)) return false;

  if (SSL_early_callback_ctx_extension_get(hello, TLSEXT_TYPE_supported_versions, &data, &len)) {
    CBS versions_ext, versions;
    CBS_init(&versions_ext, data, len);
    if (CBS_get_u8_length_prefixed(&versions_ext, &versions) &&
        list_contains_u16(versions, [](uint16_t v) { return v == TLS1_3_VERSION; }))
      return true;
  }
  CBS suites;
  CBS_init(&suites, hello->cipher_suites, hello->cipher_suites_len);
  return list_contains_u16(suites, is_ecdhe_ecdsa_cipher);
}

void apply_tls_policy(SSL_CTX* ctx, conf::TlsPolicy policy) {
  SSL_CTX_set_min_proto_version(ctx, policy == conf::TlsPolicy::tls13 ? TLS1_3_VERSION : TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  // TLS 1.2: ECDHE key exchange with AEAD ciphers only (no CBC, RC4, 3DES,
  // static RSA). TLS 1.3 suites are all AEAD with (EC)DHE.
  SSL_CTX_set_strict_cipher_list(ctx,
                                 "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305");
  SSL_CTX_set1_curves_list(ctx, "X25519:P-256:P-384");
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
}

ListenerTls::ListenerTls(const conf::Listener& listener,
                         std::vector<std::shared_ptr<const sni::LoadedCertificate>> certificates,
                         TicketKeys& ticket_keys)
    : index_(certificates, listener.default_certificate, listener.strict_sni) {
  for (const auto& protocol : listener.alpn) alpn_.push_back(protocol);
  auto new_ctx = [&]() {
    bssl::UniquePtr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()));
    if (!ctx) throw std::runtime_error("listener \"" + listener.name + "\": cannot create a TLS context");
    apply_tls_policy(ctx.get(), listener.tls);
    // Stateless tickets only: no server-side session-ID cache to share or
    // lock, and every instance with the same ticket_keys resumes the others'.
    SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
    SSL_CTX_set_timeout(ctx.get(), 2 * 3600);
    SSL_CTX_set_session_psk_dhe_timeout(ctx.get(), 2 * 3600);
    ticket_keys.install(ctx.get());
    if (!alpn_.empty()) SSL_CTX_set_alpn_select_cb(ctx.get(), &ListenerTls::select_alpn, this);
    return ctx;
  };

  front_ = new_ctx();
  SSL_CTX_set_ex_data(front_.get(), listener_index(), this);
  SSL_CTX_set_select_certificate_cb(front_.get(), &ListenerTls::select_certificate);
  SSL_CTX_set_tlsext_servername_callback(front_.get(), &ListenerTls::check_server_name);

  for (const auto& cert : certificates) {
    auto ctx = new_ctx();
    std::vector<CRYPTO_BUFFER*> chain;
    ERR_clear_error();
    bool ok = SSL_CTX_use_certificate(ctx.get(), cert->leaf()) == 1 &&
              SSL_CTX_use_PrivateKey(ctx.get(), cert->key.get()) == 1;
    for (std::size_t i = 1; ok && i < cert->chain.size(); ++i)
      ok = SSL_CTX_add1_chain_cert(ctx.get(), cert->chain[i].get()) == 1;
    ok = ok && SSL_CTX_check_private_key(ctx.get()) == 1;
    if (!ok)
      throw std::runtime_error("listener \"" + listener.name + "\": certificate \"" + cert->name + "\" (" +
                               cert->cert_file.string() + ") refused by TLS: " + ssl_errors());
    // Sessions resume only under the certificate that created them.
    const std::string sid = listener.name + "/" + cert->name;
    SSL_CTX_set_session_id_context(ctx.get(), reinterpret_cast<const uint8_t*>(sid.data()),
                                   std::min<std::size_t>(sid.size(), SSL_MAX_SID_CTX_LENGTH));
    contexts_.emplace(cert.get(), std::move(ctx));
  }
}

ListenerTls::~ListenerTls() = default;

int ListenerTls::select_alpn(SSL*, const uint8_t** out, uint8_t* out_len, const uint8_t* in, unsigned in_len,
                             void* arg) {
  // The listener's order wins (h2 before http/1.1 by default), as servers
  // usually prefer.
  const auto* self = static_cast<const ListenerTls*>(arg);
  for (const auto& mine : self->alpn_) {
    for (unsigned i = 0; i < in_len;) {
      const unsigned len = in[i];
      if (i + 1 + len > in_len) break;
      if (len == mine.size() && std::memcmp(in + i + 1, mine.data(), len) == 0) {
        *out = in + i + 1;
        *out_len = static_cast<uint8_t>(len);
        return SSL_TLSEXT_ERR_OK;
      }
      i += 1 + len;
    }
  }
  return SSL_TLSEXT_ERR_NOACK;
}

bssl::UniquePtr<SSL> ListenerTls::new_connection(HandshakeInfo* info) const {
  bssl::UniquePtr<SSL> ssl(SSL_new(front_.get()));
  if (!ssl) return ssl;
  SSL_set_ex_data(ssl.get(), info_index(), info);
  SSL_set_accept_state(ssl.get());
  return ssl;
}

ssl_select_cert_result_t ListenerTls::select_certificate(const SSL_CLIENT_HELLO* hello) {
  SSL* ssl = hello->ssl;
  auto* self = static_cast<ListenerTls*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), listener_index()));
  auto* info = static_cast<HandshakeInfo*>(SSL_get_ex_data(ssl, info_index()));
  if (self == nullptr || info == nullptr) return ssl_select_cert_error;
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  info->sni = name ? name : "";
  const sni::Selection selection = self->index_.select(info->sni, client_offers_ecdsa(hello));
  info->match = selection.kind;
  if (selection.certificate == nullptr) {
    // Answered with unrecognized_name by check_server_name, which runs next.
    info->rejected = true;
    return ssl_select_cert_success;
  }
  info->certificate = selection.certificate;
  auto it = self->contexts_.find(selection.certificate);
  if (it == self->contexts_.end()) return ssl_select_cert_error;
  SSL_set_SSL_CTX(ssl, it->second.get());
  return ssl_select_cert_success;
}

int ListenerTls::check_server_name(SSL* ssl, int* alert, void*) {
  auto* info = static_cast<HandshakeInfo*>(SSL_get_ex_data(ssl, info_index()));
  if (info != nullptr && info->rejected) {
    *alert = SSL_AD_UNRECOGNIZED_NAME;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace gatehouse::proxy
