#pragma once
// OCSP responses for stapling (RFC 6960), as X.509 knowledge: whether a DER
// OCSPResponse may be stapled for a certificate. This BoringSSL has no OCSP
// library, so the response is read with CBS and its signature checked with
// EVP: by the issuer itself, or by a responder certificate the issuer signed
// for OCSP signing (id-kp-OCSPSigning) that the response carries.

#include <openssl/base.h>
#include <openssl/x509.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sni/certificate.h"

namespace gatehouse::sni {

enum class OcspCertStatus { good, revoked, unknown };

struct OcspVerdict {
  bool stapleable = false;  // for this certificate, signed correctly, current, and "good"
  std::string problem;      // why not, for logs and check ("" when stapleable)
  OcspCertStatus status = OcspCertStatus::unknown;
  Clock::time_point this_update{};
  Clock::time_point next_update{};  // the response must not be stapled from then on
};

// `leaf` is the served certificate and `issuer` the CA that issued it (the
// next certificate of its PEM file); nullptr issuer gives a problem saying so.
OcspVerdict check_ocsp_response(std::string_view der, X509* leaf, X509* issuer, Clock::time_point now);

// "good until 2026-12-07T10:00:00Z" for a stapleable verdict, else its problem.
std::string describe(const OcspVerdict& verdict);

// The issuer of `cert`'s leaf in its chain, or nullptr (self-signed, or the
// file has no chain).
X509* ocsp_issuer(const LoadedCertificate& cert);

// "http://..." OCSP responder URLs of the leaf's Authority Information Access.
std::vector<std::string> ocsp_responders(X509* leaf);

// A DER OCSPRequest for the leaf (CertID with SHA-1, as responders expect).
std::string ocsp_request(X509* leaf, X509* issuer);

}  // namespace gatehouse::sni
