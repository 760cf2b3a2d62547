#include "proxy/tls/backend_tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pool.h>

#include <stdexcept>

#include "sni/certificate.h"

namespace gatehouse::proxy {

namespace {

int check_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}
int pool_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// Process-wide and never freed: cached sessions and idle connections may
// outlive the pool (and its context) they came from, and a buffer must not
// outlive its CRYPTO_BUFFER_POOL.
CRYPTO_BUFFER_POOL* certificate_buffers() {
  static CRYPTO_BUFFER_POOL* const pool = CRYPTO_BUFFER_POOL_new();
  return pool;
}

bssl::UniquePtr<X509> parse(const CRYPTO_BUFFER* buffer) {
  return bssl::UniquePtr<X509>(X509_parse_from_buffer(const_cast<CRYPTO_BUFFER*>(buffer)));
}

}  // namespace

PoolTls::PoolTls(const conf::Pool& pool) : pool_name_(pool.name), mode_(pool.tls) {
  if (mode_ == conf::BackendTls::plain) return;
  // Certificates stay CRYPTO_BUFFERs (verify() parses what it checks), so a
  // connection keeps no parsed X509 copies of the server's chain, and all
  // connections share one buffer per distinct certificate.
  ctx_.reset(SSL_CTX_new(TLS_with_buffers_method()));
  if (!ctx_) throw std::runtime_error("pool \"" + pool.name + "\": cannot create a TLS context");
  SSL_CTX_set0_buffer_pool(ctx_.get(), certificate_buffers());
  SSL_CTX_set_min_proto_version(ctx_.get(), TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx_.get(), TLS1_3_VERSION);
  SSL_CTX_set_ex_data(ctx_.get(), pool_index(), this);
  SSL_CTX_set_session_cache_mode(ctx_.get(), SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
  SSL_CTX_sess_set_new_cb(ctx_.get(), &PoolTls::new_session);
  if (mode_ == conf::BackendTls::insecure) {
    // Any certificate. (With certificates kept as buffers there is no
    // built-in verifier to switch off: a callback accepts them.)
    SSL_CTX_set_custom_verify(ctx_.get(), SSL_VERIFY_PEER,
                              [](SSL*, uint8_t*) -> ssl_verify_result_t { return ssl_verify_ok; });
  } else {
    SSL_CTX_set_custom_verify(ctx_.get(), SSL_VERIFY_PEER, &PoolTls::verify);
  }
  if (!pool.ca.empty()) {
    store_.reset(X509_STORE_new());
    const auto certs = sni::read_certificates(pool.ca);  // throws naming the file
    for (const auto& cert : certs) X509_STORE_add_cert(store_.get(), cert.get());
  }
}

PoolTls::~PoolTls() = default;

bssl::UniquePtr<SSL> PoolTls::new_connection(BackendCheck* check) const {
  if (!ctx_) return nullptr;
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx_.get()));
  if (!ssl) return ssl;
  SSL_set_ex_data(ssl.get(), check_index(), check);
  SSL_set_connect_state(ssl.get());
  SSL_set_shed_handshake_config(ssl.get(), 1);  // as for client connections: not needed after the handshake
  const std::string& name = check->server->server_name;
  // SNI only for DNS names: RFC 6066 forbids IP literals in server_name.
  if (!name.empty() && name.find_first_not_of("0123456789.:") != std::string::npos)
    SSL_set_tlsext_host_name(ssl.get(), name.c_str());
  if (check->slot && check->slot->session) SSL_set_session(ssl.get(), check->slot->session.get());
  return ssl;
}

ssl_verify_result_t PoolTls::verify(SSL* ssl, uint8_t* alert) {
  auto* check = static_cast<BackendCheck*>(SSL_get_ex_data(ssl, check_index()));
  auto* self = static_cast<PoolTls*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), pool_index()));
  const STACK_OF(CRYPTO_BUFFER)* chain = SSL_get0_peer_certificates(ssl);
  *alert = SSL_AD_BAD_CERTIFICATE;
  if (check == nullptr || self == nullptr || chain == nullptr || sk_CRYPTO_BUFFER_num(chain) == 0) {
    if (check) check->failure = "no certificate presented";
    return ssl_verify_invalid;
  }
  auto leaf = parse(sk_CRYPTO_BUFFER_value(chain, 0));
  if (!leaf) {
    check->failure = "unparsable certificate";
    return ssl_verify_invalid;
  }
  check->presented_thumbprint = sni::thumbprint(leaf.get());
  check->presented_subject = sni::describe(leaf.get()).subject;

  if (check->pin != nullptr) {
    if (check->pin->matches(leaf.get())) return ssl_verify_ok;
    check->failure = "certificate does not match the pin of server \"" + check->server->name + "\"";
    return ssl_verify_invalid;
  }
  if (!self->store_) {
    check->failure =
        "server \"" + check->server->name + "\" has no pin and pool \"" + self->pool_name_ + "\" has no ca";
    return ssl_verify_invalid;
  }
  bssl::UniquePtr<STACK_OF(X509)> intermediates(sk_X509_new_null());
  for (size_t i = 1; i < sk_CRYPTO_BUFFER_num(chain); ++i)
    if (auto cert = parse(sk_CRYPTO_BUFFER_value(chain, i))) sk_X509_push(intermediates.get(), cert.release());
  bssl::UniquePtr<X509_STORE_CTX> store_ctx(X509_STORE_CTX_new());
  if (!X509_STORE_CTX_init(store_ctx.get(), self->store_.get(), leaf.get(), intermediates.get())) {
    check->failure = "cannot set up certificate verification";
    return ssl_verify_invalid;
  }
  X509_STORE_CTX_set_default(store_ctx.get(), "ssl_server");
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(store_ctx.get());
  // A self-signed backend certificate listed in `ca` is its own trust anchor
  // (BoringSSL otherwise insists on a self-issued CA root above it).
  X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_PARTIAL_CHAIN);
  const std::string& name = check->server->server_name;
  if (name.find_first_not_of("0123456789.") == std::string::npos) X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
  else X509_VERIFY_PARAM_set1_host(param, name.data(), name.size());
  if (X509_verify_cert(store_ctx.get()) == 1) return ssl_verify_ok;
  check->failure = std::string("certificate verification against ca failed: ") +
                   X509_verify_cert_error_string(X509_STORE_CTX_get_error(store_ctx.get())) + " (server_name \"" +
                   name + "\")";
  return ssl_verify_invalid;
}

int PoolTls::new_session(SSL* ssl, SSL_SESSION* session) {
  auto* check = static_cast<BackendCheck*>(SSL_get_ex_data(ssl, check_index()));
  if (check == nullptr || check->slot == nullptr) return 0;
  check->slot->session.reset(session);  // takes the reference
  return 1;
}

}  // namespace gatehouse::proxy
