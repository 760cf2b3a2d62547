#include "sni/ocsp.h"

#include <openssl/bytestring.h>
#include <openssl/digest.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/x509v3.h>

#include <ctime>

#include "sni/boringssl_util.h"

namespace gatehouse::sni {

namespace {

using Bytes = std::basic_string_view<uint8_t>;

Bytes bytes(const CBS& cbs) { return Bytes(CBS_data(&cbs), CBS_len(&cbs)); }

constexpr uint8_t kSha1[] = {0x2b, 0x0e, 0x03, 0x02, 0x1a};
constexpr uint8_t kSha256[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01};
constexpr uint8_t kSha384[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02};
constexpr uint8_t kSha512[] = {0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03};
constexpr uint8_t kOcspBasic[] = {0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01};

struct SignatureAlgorithm {
  Bytes oid;
  const EVP_MD* (*md)();
};

constexpr uint8_t kRsaSha1[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05};
constexpr uint8_t kRsaSha256[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b};
constexpr uint8_t kRsaSha384[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c};
constexpr uint8_t kRsaSha512[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d};
constexpr uint8_t kEcdsaSha1[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01};
constexpr uint8_t kEcdsaSha256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
constexpr uint8_t kEcdsaSha384[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03};
constexpr uint8_t kEcdsaSha512[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04};

const EVP_MD* signature_digest(Bytes oid) {
  static const SignatureAlgorithm algorithms[] = {
      {Bytes(kRsaSha1, sizeof kRsaSha1), EVP_sha1},           {Bytes(kRsaSha256, sizeof kRsaSha256), EVP_sha256},
      {Bytes(kRsaSha384, sizeof kRsaSha384), EVP_sha384},     {Bytes(kRsaSha512, sizeof kRsaSha512), EVP_sha512},
      {Bytes(kEcdsaSha1, sizeof kEcdsaSha1), EVP_sha1},       {Bytes(kEcdsaSha256, sizeof kEcdsaSha256), EVP_sha256},
      {Bytes(kEcdsaSha384, sizeof kEcdsaSha384), EVP_sha384}, {Bytes(kEcdsaSha512, sizeof kEcdsaSha512), EVP_sha512},
  };
  for (const auto& a : algorithms)
    if (a.oid == oid) return a.md();
  return nullptr;
}

const EVP_MD* certid_digest(Bytes oid) {
  if (oid == Bytes(kSha1, sizeof kSha1)) return EVP_sha1();
  if (oid == Bytes(kSha256, sizeof kSha256)) return EVP_sha256();
  if (oid == Bytes(kSha384, sizeof kSha384)) return EVP_sha384();
  if (oid == Bytes(kSha512, sizeof kSha512)) return EVP_sha512();
  return nullptr;
}

std::string digest(const EVP_MD* md, Bytes data) {
  uint8_t out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!EVP_Digest(data.data(), data.size(), out, &len, md, nullptr)) return {};
  return std::string(reinterpret_cast<const char*>(out), len);
}

// "YYYYMMDDHHMMSS[.fff]Z" (RFC 5280 4.1.2.5.2 allows no other form).
std::optional<Clock::time_point> generalized_time(const CBS& value) {
  const std::string_view text(reinterpret_cast<const char*>(CBS_data(&value)), CBS_len(&value));
  if (text.size() < 15 || text.back() != 'Z') return std::nullopt;
  for (std::size_t i = 0; i < 14; ++i)
    if (text[i] < '0' || text[i] > '9') return std::nullopt;
  auto number = [&](std::size_t at, std::size_t n) {
    int v = 0;
    for (std::size_t i = at; i < at + n; ++i) v = v * 10 + (text[i] - '0');
    return v;
  };
  std::tm tm{};
  tm.tm_year = number(0, 4) - 1900;
  tm.tm_mon = number(4, 2) - 1;
  tm.tm_mday = number(6, 2);
  tm.tm_hour = number(8, 2);
  tm.tm_min = number(10, 2);
  tm.tm_sec = number(12, 2);
  if (tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 ||
      tm.tm_sec > 60)
    return std::nullopt;
  return Clock::from_time_t(::timegm(&tm));
}

// DER of a public key's BIT STRING contents, as CertID's issuerKeyHash hashes
// it.
Bytes key_bits(X509* cert) {
  const ASN1_BIT_STRING* bits = X509_get0_pubkey_bitstr(cert);
  if (bits == nullptr) return {};
  return Bytes(ASN1_STRING_get0_data(bits), static_cast<std::size_t>(ASN1_STRING_length(bits)));
}

std::string der_of(X509_NAME* name) {
  uint8_t* out = nullptr;
  const int len = i2d_X509_NAME(name, &out);
  if (len <= 0) return {};
  std::string der(reinterpret_cast<const char*>(out), static_cast<std::size_t>(len));
  OPENSSL_free(out);
  return der;
}

std::string serial_der(X509* cert) {
  uint8_t* out = nullptr;
  const int len = i2d_ASN1_INTEGER(X509_get_serialNumber(cert), &out);
  if (len <= 0) return {};
  std::string der(reinterpret_cast<const char*>(out), static_cast<std::size_t>(len));
  OPENSSL_free(out);
  return der;
}

std::string_view as_chars(Bytes b) { return std::string_view(reinterpret_cast<const char*>(b.data()), b.size()); }

bool signature_ok(EVP_PKEY* key, const EVP_MD* md, Bytes signed_data, Bytes signature) {
  bssl::ScopedEVP_MD_CTX ctx;
  const bool ok =
      key != nullptr && EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, key) == 1 &&
      EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), signed_data.data(), signed_data.size()) == 1;
  ERR_clear_error();
  return ok;
}

bool valid_at(X509* cert, Clock::time_point now) {
  return detail::to_time_point(X509_get0_notBefore(cert)) <= now &&
         now <= detail::to_time_point(X509_get0_notAfter(cert));
}

OcspVerdict fail(std::string problem) {
  OcspVerdict v;
  v.problem = std::move(problem);
  return v;
}

// The steps below return nullopt when their part of the response reads
// well, else the problem to report.

// The ResponseBytes of a successful OCSPResponse (RFC 6960 4.2.1), when they
// hold a basic response.
std::optional<std::string> unwrap_response(std::string_view der, CBS& octets) {
  CBS in, response, status, bytes_wrapper, response_bytes, type;
  CBS_init(&in, reinterpret_cast<const uint8_t*>(der.data()), der.size());
  if (!CBS_get_asn1(&in, &response, CBS_ASN1_SEQUENCE) || CBS_len(&in) != 0 ||
      !CBS_get_asn1(&response, &status, CBS_ASN1_ENUMERATED) || CBS_len(&status) != 1)
    return "not a DER OCSP response";
  const uint64_t status_value = CBS_data(&status)[0];
  if (status_value != 0)
    return "the responder answered with status " + std::to_string(status_value) +
           " (1 malformed request, 2 internal error, 3 try later, 5 signature "
           "required, 6 unauthorized), "
           "not a response";
  if (!CBS_get_asn1(&response, &bytes_wrapper, CBS_ASN1_CONTEXT_SPECIFIC | CBS_ASN1_CONSTRUCTED | 0) ||
      !CBS_get_asn1(&bytes_wrapper, &response_bytes, CBS_ASN1_SEQUENCE) ||
      !CBS_get_asn1(&response_bytes, &type, CBS_ASN1_OBJECT) ||
      !CBS_get_asn1(&response_bytes, &octets, CBS_ASN1_OCTETSTRING))
    return "not a DER OCSP response (no response bytes)";
  if (bytes(type) != Bytes(kOcspBasic, sizeof kOcspBasic)) return "not a basic OCSP response";
  return std::nullopt;
}

// A BasicOCSPResponse, pointing into the DER it was read from.
struct BasicResponse {
  CBS tbs_element{};  // ResponseData with its header: what the signature covers
  CBS algorithm_oid{};
  CBS signature{};                           // the BIT STRING's bits
  std::vector<bssl::UniquePtr<X509>> certs;  // those that parse: a delegated responder may be among them
};

std::optional<std::string> read_basic(CBS octets, BasicResponse& basic) {
  CBS body, algorithm;
  if (!CBS_get_asn1(&octets, &body, CBS_ASN1_SEQUENCE) ||
      !CBS_get_asn1_element(&body, &basic.tbs_element, CBS_ASN1_SEQUENCE) ||
      !CBS_get_asn1(&body, &algorithm, CBS_ASN1_SEQUENCE) ||
      !CBS_get_asn1(&algorithm, &basic.algorithm_oid, CBS_ASN1_OBJECT) ||
      !CBS_get_asn1(&body, &basic.signature, CBS_ASN1_BITSTRING) || CBS_len(&basic.signature) < 1 ||
      CBS_data(&basic.signature)[0] != 0)
    return "malformed basic OCSP response";
  CBS_skip(&basic.signature, 1);  // no unused bits
  CBS certs_wrapper, certs;
  if (CBS_get_asn1(&body, &certs_wrapper, CBS_ASN1_CONTEXT_SPECIFIC | CBS_ASN1_CONSTRUCTED | 0) &&
      CBS_get_asn1(&certs_wrapper, &certs, CBS_ASN1_SEQUENCE)) {
    while (CBS_len(&certs) > 0) {
      CBS cert;
      if (!CBS_get_asn1_element(&certs, &cert, CBS_ASN1_SEQUENCE)) return "malformed certificate in response";
      const uint8_t* p = CBS_data(&cert);
      bssl::UniquePtr<X509> x(d2i_X509(nullptr, &p, static_cast<long>(CBS_len(&cert))));
      ERR_clear_error();
      if (x) basic.certs.push_back(std::move(x));
    }
  }
  return std::nullopt;
}

// Signed by the issuer, or by a responder the issuer delegated to.
bool signed_by_issuer(const BasicResponse& basic, const EVP_MD* md, X509* issuer, Clock::time_point now) {
  bssl::UniquePtr<EVP_PKEY> issuer_key(X509_get_pubkey(issuer));
  bool signed_ok = signature_ok(issuer_key.get(), md, bytes(basic.tbs_element), bytes(basic.signature));
  for (std::size_t i = 0; !signed_ok && i < basic.certs.size(); ++i) {
    X509* responder = basic.certs[i].get();
    const bool delegated = X509_verify(responder, issuer_key.get()) == 1 &&
                           (X509_get_extension_flags(responder) & EXFLAG_XKUSAGE) != 0 &&
                           (X509_get_extended_key_usage(responder) & XKU_OCSP_SIGN) != 0 && valid_at(responder, now);
    ERR_clear_error();
    if (!delegated) continue;
    bssl::UniquePtr<EVP_PKEY> key(X509_get_pubkey(responder));
    signed_ok = signature_ok(key.get(), md, bytes(basic.tbs_element), bytes(basic.signature));
  }
  return signed_ok;
}

// The SingleResponses of a ResponseData.
std::optional<std::string> read_responses(CBS tbs_element, CBS& responses) {
  CBS tbs, responder_id, produced_at;
  CBS_get_asn1(&tbs_element, &tbs, CBS_ASN1_SEQUENCE);
  if (CBS_peek_asn1_tag(&tbs, CBS_ASN1_CONTEXT_SPECIFIC | CBS_ASN1_CONSTRUCTED | 0)) {
    CBS version;
    CBS_get_asn1(&tbs, &version, CBS_ASN1_CONTEXT_SPECIFIC | CBS_ASN1_CONSTRUCTED | 0);
  }
  if (!CBS_get_any_asn1_element(&tbs, &responder_id, nullptr, nullptr) ||
      !CBS_get_asn1(&tbs, &produced_at, CBS_ASN1_GENERALIZEDTIME) || !CBS_get_asn1(&tbs, &responses, CBS_ASN1_SEQUENCE))
    return "malformed OCSP response data";
  return std::nullopt;
}

// What a CertID holds when it names the leaf: hashes of the leaf's issuer
// name and of the issuer's key, and the leaf's serial number.
struct LeafId {
  std::string issuer_name_der;
  std::string serial_der;
  X509* issuer = nullptr;
};

enum class CertIdMatch { malformed, other_certificate, leaf };

// Reads the CertID that starts a SingleResponse.
CertIdMatch read_cert_id(CBS& single, const LeafId& leaf) {
  CBS cert_id, hash_algorithm, hash_oid, name_hash, key_hash, serial_element;
  if (!CBS_get_asn1(&single, &cert_id, CBS_ASN1_SEQUENCE) ||
      !CBS_get_asn1(&cert_id, &hash_algorithm, CBS_ASN1_SEQUENCE) ||
      !CBS_get_asn1(&hash_algorithm, &hash_oid, CBS_ASN1_OBJECT) ||
      !CBS_get_asn1(&cert_id, &name_hash, CBS_ASN1_OCTETSTRING) ||
      !CBS_get_asn1(&cert_id, &key_hash, CBS_ASN1_OCTETSTRING) ||
      !CBS_get_asn1_element(&cert_id, &serial_element, CBS_ASN1_INTEGER))
    return CertIdMatch::malformed;
  const EVP_MD* id_md = certid_digest(bytes(hash_oid));
  const std::string& name_der = leaf.issuer_name_der;
  if (id_md == nullptr || as_chars(bytes(serial_element)) != leaf.serial_der ||
      as_chars(bytes(name_hash)) !=
          digest(id_md, Bytes(reinterpret_cast<const uint8_t*>(name_der.data()), name_der.size())) ||
      as_chars(bytes(key_hash)) != digest(id_md, key_bits(leaf.issuer)))
    return CertIdMatch::other_certificate;
  return CertIdMatch::leaf;
}

// The rest of the leaf's SingleResponse, after its CertID: status and validity.
OcspVerdict single_verdict(CBS single, Clock::time_point now) {
  OcspVerdict v;
  if (CBS_peek_asn1_tag(&single, CBS_ASN1_CONTEXT_SPECIFIC | 0)) {
    v.status = OcspCertStatus::good;
  } else if (CBS_peek_asn1_tag(&single, CBS_ASN1_CONTEXT_SPECIFIC | CBS_ASN1_CONSTRUCTED | 1)) {
    v.status = OcspCertStatus::revoked;
  } else {
    v.status = OcspCertStatus::unknown;
  }
  CBS status_element, this_update;
  if (!CBS_get_any_asn1_element(&single, &status_element, nullptr, nullptr) ||
      !CBS_get_asn1(&single, &this_update, CBS_ASN1_GENERALIZEDTIME))
    return fail("malformed single response");
  const auto this_time = generalized_time(this_update);
  if (!this_time) return fail("malformed thisUpdate");
  v.this_update = *this_time;
  CBS next_wrapper, next_update;
  if (!CBS_get_asn1(&single, &next_wrapper, CBS_ASN1_CONTEXT_SPECIFIC | CBS_ASN1_CONSTRUCTED | 0) ||
      !CBS_get_asn1(&next_wrapper, &next_update, CBS_ASN1_GENERALIZEDTIME))
    return fail(
        "the response has no nextUpdate, so nothing says when it stops "
        "being current; not stapled");
  const auto next_time = generalized_time(next_update);
  if (!next_time) return fail("malformed nextUpdate");
  v.next_update = *next_time;

  // A few minutes of clock skew between the responder and this machine.
  constexpr auto skew = std::chrono::minutes(5);
  if (v.this_update > now + skew)
    v.problem = "the response is not valid before " + detail::iso8601(v.this_update) + "; check the clocks";
  else if (now >= v.next_update)
    v.problem = "the response expired at " + detail::iso8601(v.next_update) + " (its nextUpdate); fetch a new one";
  else if (v.status == OcspCertStatus::revoked)
    v.problem =
        "the responder says the certificate is REVOKED: replace the "
        "certificate";
  else if (v.status == OcspCertStatus::unknown)
    v.problem = "the responder does not know the certificate (status unknown)";
  v.stapleable = v.problem.empty();
  return v;
}

}  // namespace

X509* ocsp_issuer(const LoadedCertificate& cert) {
  X509* leaf = cert.leaf();
  for (std::size_t i = 1; i < cert.chain.size(); ++i) {
    X509* candidate = cert.chain[i].get();
    if (X509_check_issued(candidate, leaf) != X509_V_OK) continue;
    bssl::UniquePtr<EVP_PKEY> key(X509_get_pubkey(candidate));
    const bool signed_by = key && X509_verify(leaf, key.get()) == 1;
    ERR_clear_error();
    if (signed_by) return candidate;
  }
  return nullptr;
}

OcspVerdict check_ocsp_response(std::string_view der, X509* leaf, X509* issuer, Clock::time_point now) {
  if (issuer == nullptr)
    return fail(
        "the certificate file has no issuer certificate after the "
        "leaf, so an OCSP response cannot be "
        "checked; append the issuing CA's certificate to the file");
  CBS octets;
  if (auto problem = unwrap_response(der, octets)) return fail(std::move(*problem));
  BasicResponse basic;
  if (auto problem = read_basic(octets, basic)) return fail(std::move(*problem));
  const EVP_MD* md = signature_digest(bytes(basic.algorithm_oid));
  if (md == nullptr)
    return fail(
        "signed with an algorithm Gatehouse does not check (RSA-PSS or "
        "unknown)");
  if (!signed_by_issuer(basic, md, issuer, now))
    return fail(
        "the signature does not verify with the issuer's key nor with "
        "a responder certificate the issuer "
        "authorised for OCSP signing");
  CBS responses;
  if (auto problem = read_responses(basic.tbs_element, responses)) return fail(std::move(*problem));

  const LeafId leaf_id{
      .issuer_name_der = der_of(X509_get_issuer_name(leaf)), .serial_der = serial_der(leaf), .issuer = issuer};
  while (CBS_len(&responses) > 0) {
    CBS single;
    if (!CBS_get_asn1(&responses, &single, CBS_ASN1_SEQUENCE)) return fail("malformed single response");
    const CertIdMatch match = read_cert_id(single, leaf_id);
    if (match == CertIdMatch::malformed) return fail("malformed single response");
    if (match == CertIdMatch::leaf) return single_verdict(single, now);
  }
  return fail(
      "the response is for another certificate (no response matches "
      "its issuer and serial number)");
}

std::string describe(const OcspVerdict& verdict) {
  if (!verdict.stapleable) return verdict.problem;
  return "good until " + detail::iso8601(verdict.next_update);
}

std::vector<std::string> ocsp_responders(X509* leaf) {
  std::vector<std::string> out;
  bssl::UniquePtr<AUTHORITY_INFO_ACCESS> aia(
      static_cast<AUTHORITY_INFO_ACCESS*>(X509_get_ext_d2i(leaf, NID_info_access, nullptr, nullptr)));
  ERR_clear_error();
  for (std::size_t i = 0; aia && i < sk_ACCESS_DESCRIPTION_num(aia.get()); ++i) {
    const ACCESS_DESCRIPTION* ad = sk_ACCESS_DESCRIPTION_value(aia.get(), i);
    if (OBJ_obj2nid(ad->method) != NID_ad_OCSP || ad->location->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = ad->location->d.uniformResourceIdentifier;
    out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                     static_cast<std::size_t>(ASN1_STRING_length(uri)));
  }
  return out;
}

std::string ocsp_request(X509* leaf, X509* issuer) {
  const std::string name_der = der_of(X509_get_issuer_name(leaf));
  const std::string name_hash =
      digest(EVP_sha1(), Bytes(reinterpret_cast<const uint8_t*>(name_der.data()), name_der.size()));
  const std::string key_hash = digest(EVP_sha1(), key_bits(issuer));
  const std::string serial = serial_der(leaf);
  bssl::ScopedCBB cbb;
  CBB request, tbs, list, single, cert_id, algorithm, oid, null, name, key;
  if (!CBB_init(cbb.get(), 128) || !CBB_add_asn1(cbb.get(), &request, CBS_ASN1_SEQUENCE) ||
      !CBB_add_asn1(&request, &tbs, CBS_ASN1_SEQUENCE) || !CBB_add_asn1(&tbs, &list, CBS_ASN1_SEQUENCE) ||
      !CBB_add_asn1(&list, &single, CBS_ASN1_SEQUENCE) || !CBB_add_asn1(&single, &cert_id, CBS_ASN1_SEQUENCE) ||
      !CBB_add_asn1(&cert_id, &algorithm, CBS_ASN1_SEQUENCE) || !CBB_add_asn1(&algorithm, &oid, CBS_ASN1_OBJECT) ||
      !CBB_add_bytes(&oid, kSha1, sizeof kSha1) || !CBB_add_asn1(&algorithm, &null, CBS_ASN1_NULL) ||
      !CBB_add_asn1(&cert_id, &name, CBS_ASN1_OCTETSTRING) ||
      !CBB_add_bytes(&name, reinterpret_cast<const uint8_t*>(name_hash.data()), name_hash.size()) ||
      !CBB_add_asn1(&cert_id, &key, CBS_ASN1_OCTETSTRING) ||
      !CBB_add_bytes(&key, reinterpret_cast<const uint8_t*>(key_hash.data()), key_hash.size()) ||
      !CBB_add_bytes(&cert_id, reinterpret_cast<const uint8_t*>(serial.data()), serial.size()))
    return {};
  uint8_t* out = nullptr;
  std::size_t len = 0;
  if (!CBB_finish(cbb.get(), &out, &len)) return {};
  std::string der(reinterpret_cast<const char*>(out), len);
  OPENSSL_free(out);
  return der;
}

}  // namespace gatehouse::sni
