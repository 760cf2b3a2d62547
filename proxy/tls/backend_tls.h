#pragma once
// Backend-side TLS of one pool: a client SSL_CTX with the pool's
// verification (per-server pin, else CA chain + server_name; or none for
// "insecure"), SNI = the server's server_name, and session resumption from a
// per-worker, per-server slot.

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <optional>
#include <string>

#include "conf/config.h"
#include "sni/pin.h"

namespace gatehouse::proxy {

// The last session a backend gave this worker; offered on the next connection.
struct SessionSlot {
  bssl::UniquePtr<SSL_SESSION> session;
};

// What a backend handshake is checked against, and what the backend showed.
// Owned by the connection; must outlive its SSL.
struct BackendCheck {
  const conf::Server* server = nullptr;
  const sni::Pin* pin = nullptr;  // verify with this pin when set
  SessionSlot* slot = nullptr;
  std::string presented_thumbprint;  // SHA-1 of the certificate the backend presented
  std::string presented_subject;
  std::string failure;  // why verification failed, "" when it did not
};

class PoolTls {
 public:
  // Throws std::runtime_error naming the pool and the CA file.
  explicit PoolTls(const conf::Pool& pool);
  ~PoolTls();
  PoolTls(const PoolTls&) = delete;
  PoolTls& operator=(const PoolTls&) = delete;

  bool plain() const { return mode_ == conf::BackendTls::plain; }
  // A client-side SSL for one backend connection (null for plain pools).
  bssl::UniquePtr<SSL> new_connection(BackendCheck* check) const;

 private:
  static ssl_verify_result_t verify(SSL* ssl, uint8_t* alert);
  static int new_session(SSL* ssl, SSL_SESSION* session);

  std::string pool_name_;
  conf::BackendTls mode_;
  bssl::UniquePtr<SSL_CTX> ctx_;
  bssl::UniquePtr<X509_STORE> store_;  // trust anchors from `ca`, when set
};

}  // namespace gatehouse::proxy
