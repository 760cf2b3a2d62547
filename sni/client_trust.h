#pragma once
// Client certificates (mutual TLS) as X.509 knowledge: a listener's
// client_ca bundle, client_crl and client_verify_depth as one trust store;
// the verdict on a chain a client presented; and the identity of its leaf in
// the forms backends read (Envoy's X-Forwarded-Client-Cert, the CN of a
// PROXY v2 SSL TLV). No TLS here: the listener turns verdicts into alerts.

#include <openssl/base.h>
#include <openssl/x509.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace gatehouse::sni {

// Who a client certificate names.
struct ClientIdentity {
  std::string subject;                 // RFC 2253: "CN=alice,O=Contoso"
  std::string common_name;             // first CN of the subject, "" when none
  std::string sha256_hex;              // SHA-256 of the DER leaf, lower-case hex
  std::vector<std::string> dns_names;  // SAN DNS entries
  std::vector<std::string> uris;       // SAN URI entries

  // One X-Forwarded-Client-Cert element as Envoy writes it:
  // Hash=<hex>;Subject="<subject>";URI=<uri>;DNS=<name> (URI= and DNS= once
  // per SAN). Quotes and backslashes are escaped; bytes a header may not
  // carry are percent-encoded, so a certificate cannot inject a field.
  std::string xfcc() const;
};

ClientIdentity identify_client(X509* leaf);

struct ClientVerdict {
  bool ok = false;
  int error = 0;       // X509_V_* when !ok
  std::string reason;  // for logs: "client certificate expired", "unknown CA", "revoked", ...
};

class ClientTrust {
 public:
  // Reads the CA bundle (PEM; at least one certificate) and the CRL file (PEM
  // CRLs; may be empty = no revocation check). Throws CertificateError naming
  // the file and what to do.
  ClientTrust(const std::filesystem::path& ca_file, const std::filesystem::path& crl_file, int depth);
  ~ClientTrust();
  ClientTrust(const ClientTrust&) = delete;
  ClientTrust& operator=(const ClientTrust&) = delete;

  // Verifies `chain` (leaf first, then what the client sent with it) for
  // client authentication at the current time: issued under a CA of the
  // bundle within the depth, valid now, with the clientAuth EKU when it has
  // an EKU extension at all, and not revoked by the CRLs (leaf only).
  ClientVerdict verify(const std::vector<X509*>& chain) const;

  // SHA-256 over the bundle's and the CRL file's bytes and the depth: what a
  // session's resumption must be bound to.
  const std::array<std::uint8_t, 32>& fingerprint() const { return fingerprint_; }
  // Subjects of the bundle's certificates, for the CertificateRequest.
  const std::vector<bssl::UniquePtr<X509_NAME>>& ca_names() const { return ca_names_; }
  std::size_t crl_count() const { return crl_count_; }

 private:
  bssl::UniquePtr<X509_STORE> store_;
  std::vector<bssl::UniquePtr<X509_NAME>> ca_names_;
  std::array<std::uint8_t, 32> fingerprint_{};
  std::size_t crl_count_ = 0;
  int depth_ = 4;
};

}  // namespace gatehouse::sni
