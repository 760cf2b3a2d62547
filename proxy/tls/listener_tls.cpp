#include "proxy/tls/listener_tls.h"

#include <cstring>

#include <openssl/bytestring.h>
#include <openssl/digest.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <array>
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

// The alert that tells a client why its certificate was refused (RFC 8446
// 6.2), as OpenSSL's servers answer.
uint8_t alert_for(int x509_error) {
  switch (x509_error) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID: return SSL_AD_CERTIFICATE_EXPIRED;
    case X509_V_ERR_CERT_REVOKED: return SSL_AD_CERTIFICATE_REVOKED;
    case X509_V_ERR_INVALID_PURPOSE: return SSL_AD_UNSUPPORTED_CERTIFICATE;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_CHAIN_TOO_LONG:
    case X509_V_ERR_PATH_LENGTH_EXCEEDED:
    case X509_V_ERR_INVALID_CA: return SSL_AD_UNKNOWN_CA;
    case X509_V_ERR_OUT_OF_MEM: return SSL_AD_INTERNAL_ERROR;
    case X509_V_ERR_UNABLE_TO_GET_CRL:
    case X509_V_ERR_CRL_HAS_EXPIRED:
    case X509_V_ERR_CRL_NOT_YET_VALID: return SSL_AD_CERTIFICATE_UNKNOWN;
    default: return SSL_AD_BAD_CERTIFICATE;
  }
}

// Binds resumption to everything that decided whether a client was let in:
// the listener, the certificate served, and the client-certificate policy
// with its CA bundle, CRLs and depth. A session or ticket made under another
// policy (client_certificates = "none", another CA) never resumes here, even
// with ticket keys shared across listeners and instances (CVE-2025-23419).
std::array<uint8_t, SSL_MAX_SID_CTX_LENGTH> session_context(const conf::Listener& listener,
                                                            const sni::LoadedCertificate& cert,
                                                            const sni::ClientTrust* trust) {
  static_assert(SSL_MAX_SID_CTX_LENGTH == SHA256_DIGEST_LENGTH);
  SHA256_CTX sha;
  SHA256_Init(&sha);
  auto add = [&](std::string_view bytes) {
    const uint64_t size = bytes.size();
    SHA256_Update(&sha, &size, sizeof size);
    SHA256_Update(&sha, bytes.data(), bytes.size());
  };
  add("gatehouse session context 1");
  add(listener.name);
  add(cert.name);
  uint8_t leaf[SHA256_DIGEST_LENGTH];
  unsigned int leaf_len = 0;
  X509_digest(cert.leaf(), EVP_sha256(), leaf, &leaf_len);
  add(std::string_view(reinterpret_cast<const char*>(leaf), leaf_len));
  add(listener.client_certificates == conf::ClientCertificates::require    ? "require"
      : listener.client_certificates == conf::ClientCertificates::optional ? "optional"
                                                                           : "none");
  if (trust != nullptr)
    add(std::string_view(reinterpret_cast<const char*>(trust->fingerprint().data()), trust->fingerprint().size()));
  std::array<uint8_t, SSL_MAX_SID_CTX_LENGTH> out{};
  SHA256_Final(out.data(), &sha);
  return out;
}

int verify_mode(conf::ClientCertificates mode) {
  switch (mode) {
    case conf::ClientCertificates::require: return SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    case conf::ClientCertificates::optional: return SSL_VERIFY_PEER;
    default: return SSL_VERIFY_NONE;
  }
}

bool is_ecdsa_sigalg(uint16_t alg) {
  // ecdsa_secp256r1_sha256, ecdsa_secp384r1_sha384, ecdsa_secp521r1_sha512, ecdsa_sha1
  return alg == 0x0403 || alg == 0x0503 || alg == 0x0603 || alg == 0x0203;
}

bool is_ecdhe_ecdsa_cipher(uint16_t suite) {
  switch (suite) {
    case 0xC02B:
    case 0xC02C:
    case 0xCCA9:
    case 0xC009:
    case 0xC00A:
    case 0xC023:
    case 0xC024: return true;
    default: return false;
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
                         TicketKeys& ticket_keys, Staples staples)
    : index_(certificates, listener.default_certificate, listener.strict_sni),
      client_mode_(listener.client_certificates),
      staples_(std::move(staples)) {
  for (const auto& protocol : listener.alpn) alpn_.push_back(protocol);
  if (client_mode_ != conf::ClientCertificates::none) {
    try {
      client_trust_ =
          std::make_unique<sni::ClientTrust>(listener.client_ca, listener.client_crl, listener.client_verify_depth);
    } catch (const sni::CertificateError& e) {
      throw std::runtime_error("listener \"" + listener.name + "\".client_ca/client_crl: " + e.what());
    }
  }
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
    SSL_CTX_set_ex_data(ctx.get(), listener_index(), this);
    if (client_trust_) {
      // On every context: the connection starts on the front one and the
      // CertificateRequest is built from the one SNI switched to.
      SSL_CTX_set_custom_verify(ctx.get(), verify_mode(client_mode_), &ListenerTls::verify_client);
      bssl::UniquePtr<STACK_OF(X509_NAME)> names(sk_X509_NAME_new_null());
      for (const auto& name : client_trust_->ca_names())
        if (X509_NAME* copy = X509_NAME_dup(name.get()); copy && !sk_X509_NAME_push(names.get(), copy))
          X509_NAME_free(copy);
      SSL_CTX_set_client_CA_list(ctx.get(), names.release());
    }
    return ctx;
  };

  front_ = new_ctx();
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
    // Sessions resume only under the certificate and client-certificate
    // policy that created them.
    const auto sid = session_context(listener, *cert, client_trust_.get());
    SSL_CTX_set_session_id_context(ctx.get(), sid.data(), sid.size());
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
  SSL_set_info_callback(ssl.get(), &ListenerTls::on_info);
  require_client_certificates(ssl.get());
  SSL_set_accept_state(ssl.get());
  // The certificate, key, cipher and ALPN settings a connection copies are
  // not needed once the handshake is done: freed then (Gatehouse never
  // renegotiates), which keeps an idle connection small.
  SSL_set_shed_handshake_config(ssl.get(), 1);
  return ssl;
}

void ListenerTls::require_client_certificates(SSL* ssl) const {
  // The verify mode lives on the SSL, copied from the front context at
  // SSL_new; SSL_set_SSL_CTX does not copy it. Set it on the connection
  // itself so that no context switch can leave it behind.
  if (client_trust_) SSL_set_custom_verify(ssl, verify_mode(client_mode_), &ListenerTls::verify_client);
}

ssl_verify_result_t ListenerTls::verify_client(SSL* ssl, uint8_t* out_alert) {
  auto* self = static_cast<ListenerTls*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), listener_index()));
  auto* info = static_cast<HandshakeInfo*>(SSL_get_ex_data(ssl, info_index()));
  if (self == nullptr || info == nullptr || !self->client_trust_) {
    *out_alert = SSL_AD_INTERNAL_ERROR;
    return ssl_verify_invalid;
  }
  std::vector<bssl::UniquePtr<X509>> owned;
  if (const STACK_OF(CRYPTO_BUFFER)* buffers = SSL_get0_peer_certificates(ssl)) {
    for (std::size_t i = 0; i < sk_CRYPTO_BUFFER_num(buffers); ++i) {
      bssl::UniquePtr<X509> cert(X509_parse_from_buffer(sk_CRYPTO_BUFFER_value(buffers, i)));
      if (!cert) {
        ERR_clear_error();
        info->client_verify = "unparsable client certificate";
        *out_alert = SSL_AD_BAD_CERTIFICATE;
        return ssl_verify_invalid;
      }
      owned.push_back(std::move(cert));
    }
  }
  if (owned.empty()) return ssl_verify_ok;  // "optional" without a certificate; "require" fails before this
  std::vector<X509*> chain;
  for (const auto& cert : owned) chain.push_back(cert.get());
  info->client_subject = sni::identify_client(chain.front()).subject;
  const sni::ClientVerdict verdict = self->client_trust_->verify(chain);
  if (!verdict.ok) {
    // Refused in both modes: "optional" means no certificate is fine, never
    // that a bad one is ignored.
    info->client_verify = verdict.reason;
    *out_alert = alert_for(verdict.error);
    return ssl_verify_invalid;
  }
  info->client_verify = "SUCCESS";
  info->client_cert_this_connection = true;
  return ssl_verify_ok;
}

void ListenerTls::on_info(const SSL* ssl, int type, int) {
  if ((type & SSL_CB_HANDSHAKE_DONE) == 0) return;
  auto* info = static_cast<HandshakeInfo*>(SSL_get_ex_data(ssl, info_index()));
  if (info == nullptr) return;
  // From the session, full or resumed: a resumed one holds the certificate
  // verified when it was made (sessions of another policy never resume, see
  // session_context). Only verified certificates are ever stored: a failed
  // verification ends the handshake.
  const STACK_OF(CRYPTO_BUFFER)* buffers = SSL_get0_peer_certificates(ssl);
  if (buffers == nullptr || sk_CRYPTO_BUFFER_num(buffers) == 0 || SSL_get_verify_result(ssl) != X509_V_OK) return;
  bssl::UniquePtr<X509> leaf(X509_parse_from_buffer(sk_CRYPTO_BUFFER_value(buffers, 0)));
  ERR_clear_error();
  if (!leaf) return;
  const sni::ClientIdentity id = sni::identify_client(leaf.get());
  info->client_verify = "SUCCESS";
  info->client_subject = id.subject;
  info->client_cn = id.common_name;
  info->client_xfcc = id.xfcc();
}

std::string handshake_failure_reason(const HandshakeInfo& info, const std::string& tls_error) {
  if (info.client_verify != "NONE" && info.client_verify != "SUCCESS") return info.client_verify;
  if (tls_error == "PEER_DID_NOT_RETURN_A_CERTIFICATE") return "no client certificate";
  return tls_error;
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
  self->require_client_certificates(ssl);
  // Per connection, so that a response is never stapled past its
  // nextUpdate; only for clients that ask (status_request), since BoringSSL
  // copies it into each connection.
  const uint8_t* status_request = nullptr;
  size_t status_request_len = 0;
  if (auto staple = self->staples_.find(selection.certificate);
      staple != self->staples_.end() &&
      SSL_early_callback_ctx_extension_get(hello, TLSEXT_TYPE_status_request, &status_request, &status_request_len))
    if (auto current = staple->second->current(sni::Clock::now()))
      SSL_set_ocsp_response(ssl, reinterpret_cast<const uint8_t*>(current->der.data()), current->der.size());
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
