#pragma once
// Front-side TLS of one listener: one SSL_CTX per certificate, and a front
// SSL_CTX whose early callback (before any key is used) asks the listener's
// SniIndex which certificate to serve and switches the connection to it.

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "conf/config.h"
#include "proxy/tls/ocsp_staple.h"
#include "sni/certificate.h"
#include "sni/client_trust.h"
#include "sni/index.h"

namespace gatehouse::proxy {

class TicketKeys;

// What the handshake decided, for logs and metrics. Owned by the connection;
// attached to its SSL for the callbacks.
struct HandshakeInfo {
  std::string sni;  // as sent, "" when absent
  const sni::LoadedCertificate* certificate = nullptr;
  sni::MatchKind match = sni::MatchKind::rejected;
  bool rejected = false;

  // The client certificate (mutual TLS), filled during the handshake and,
  // once it is done, from the session, so a resumed session carries the
  // identity of the certificate it was made with.
  std::string client_verify = "NONE";        // "SUCCESS", "NONE" (no certificate), or why it was refused
  std::string client_subject;                // RFC 2253 subject of the presented leaf, verified or not
  std::string client_cn;                     // first CN of a verified leaf
  std::string client_xfcc;                   // X-Forwarded-Client-Cert value; "" unless verified
  bool client_cert_this_connection = false;  // sent in this handshake, not only in the resumed session
  bool client_verified() const { return client_verify == "SUCCESS"; }
};

// Why a client handshake failed, for the handshake_failed event: the client
// certificate's verdict when that was the cause, else the TLS error.
std::string handshake_failure_reason(const HandshakeInfo& info, const std::string& tls_error);

class ListenerTls {
 public:
  // Throws std::runtime_error naming the listener when BoringSSL refuses the
  // certificate or the policy.
  // `staples`: the OCSP response slot of each certificate that has one.
  using Staples = std::unordered_map<const sni::LoadedCertificate*, std::shared_ptr<const StapleSlot>>;
  ListenerTls(const conf::Listener& listener, std::vector<std::shared_ptr<const sni::LoadedCertificate>> certificates,
              TicketKeys& ticket_keys, Staples staples = {});
  ~ListenerTls();
  ListenerTls(const ListenerTls&) = delete;
  ListenerTls& operator=(const ListenerTls&) = delete;

  // A server-side SSL for one accepted connection; `info` must outlive it.
  bssl::UniquePtr<SSL> new_connection(HandshakeInfo* info) const;
  const sni::SniIndex& index() const { return index_; }

 private:
  static ssl_select_cert_result_t select_certificate(const SSL_CLIENT_HELLO* hello);
  static int check_server_name(SSL* ssl, int* alert, void* arg);
  static int select_alpn(SSL* ssl, const uint8_t** out, uint8_t* out_len, const uint8_t* in, unsigned in_len,
                         void* arg);
  static ssl_verify_result_t verify_client(SSL* ssl, uint8_t* out_alert);
  static void on_info(const SSL* ssl, int type, int value);
  void require_client_certificates(SSL* ssl) const;

  sni::SniIndex index_;
  conf::ClientCertificates client_mode_ = conf::ClientCertificates::none;
  std::unique_ptr<sni::ClientTrust> client_trust_;  // null when client_mode_ is none
  std::vector<std::string> alpn_;                   // the listener's `alpn`, in preference order
  bssl::UniquePtr<SSL_CTX> front_;
  std::unordered_map<const sni::LoadedCertificate*, bssl::UniquePtr<SSL_CTX>> contexts_;
  Staples staples_;
};

// Applies a listener's `tls` policy: "modern" = TLS 1.2 + 1.3 with ECDHE and
// AEAD only; "tls13" = TLS 1.3 only. BoringSSL never renegotiates as a server.
void apply_tls_policy(SSL_CTX* ctx, conf::TlsPolicy policy);

// True when the ClientHello allows an ECDSA certificate: an ECDSA signature
// algorithm, and (for a client without TLS 1.3) an ECDHE-ECDSA cipher suite.
bool client_offers_ecdsa(const SSL_CLIENT_HELLO* hello);

}  // namespace gatehouse::proxy
