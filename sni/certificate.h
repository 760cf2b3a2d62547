#pragma once
// X.509 knowledge: reading PEM certificates and keys, the Exchange-style
// properties `cert inspect` shows, and the checks a certificate must pass
// before a listener may serve it.

#include <openssl/base.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace gatehouse::sni {

using Clock = std::chrono::system_clock;

enum class KeyType { rsa, ecdsa, other };

struct CertificateInfo {
  std::string subject;  // "CN=mail.contoso.com, O=Contoso"
  std::string issuer;
  std::string common_name;             // "" when the subject has no CN
  std::vector<std::string> dns_names;  // SAN DNS entries, as written in the certificate
  std::string thumbprint;              // SHA-1 of the DER, 40 upper-case hex digits (Get-ExchangeCertificate)
  std::string sha256_pin;              // "sha256/" + base64(SHA-256(SubjectPublicKeyInfo))
  Clock::time_point not_before;
  Clock::time_point not_after;
  KeyType key_type = KeyType::other;
  int key_bits = 0;                             // 2048, 256, ...
  std::string curve;                            // "P-256", "P-384" for ECDSA, else ""
  std::string signature_algorithm;              // "sha256WithRSAEncryption", "ecdsa-with-SHA256", ...
  std::vector<std::string> extended_key_usage;  // "serverAuth", "clientAuth", or dotted OIDs
  bool has_eku_extension = false;
  bool self_signed = false;

  // Names the certificate serves, normalised: SAN DNS names, or the CN only
  // when there is no DNS SAN.
  std::vector<std::string> host_names() const;
  bool expired(Clock::time_point now) const { return now > not_after || now < not_before; }
};

CertificateInfo describe(X509* cert);

// Every error names the file and says what to do.
class CertificateError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// All certificates of a PEM file, in order. Throws CertificateError when the
// file cannot be read or holds no certificate.
std::vector<bssl::UniquePtr<X509>> read_certificates(const std::filesystem::path& file);
// The private key of a PEM file (PKCS#8, RSA or EC). Throws CertificateError.
bssl::UniquePtr<EVP_PKEY> read_private_key(const std::filesystem::path& file);

// A certificate ready to serve: leaf first, then chain, with its key.
struct LoadedCertificate {
  std::string name;  // the [[certificate]] name
  std::filesystem::path cert_file;
  std::filesystem::path key_file;
  std::vector<bssl::UniquePtr<X509>> chain;  // chain[0] is the leaf
  bssl::UniquePtr<EVP_PKEY> key;
  CertificateInfo info;            // of the leaf
  std::vector<std::string> names;  // info.host_names()
  X509* leaf() const { return chain.front().get(); }
};

// Reads and checks: the key matches the leaf, RSA keys have >= 2048 bits, EC
// keys are P-256 or P-384, no name is a wildcard over a single label ("*.com")
// or otherwise malformed. Throws CertificateError naming the file.
std::shared_ptr<const LoadedCertificate> load_certificate(std::string name, const std::filesystem::path& cert_file,
                                                          const std::filesystem::path& key_file);

// Upper-case hex SHA-1 of the DER encoding.
std::string thumbprint(X509* cert);
// "sha256/BASE64" of the SubjectPublicKeyInfo.
std::string spki_pin(X509* cert);

}  // namespace gatehouse::sni
