#include "sni/certificate.h"

#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/obj.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "sni/boringssl_util.h"
#include "sni/hostname.h"

namespace gatehouse::sni {
namespace {

std::string asn1_utf8(const ASN1_STRING* value) {
  unsigned char* utf8 = nullptr;
  const int length = ASN1_STRING_to_UTF8(&utf8, value);
  if (length < 0) {
    ERR_clear_error();
    return {};
  }
  std::string out(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(length));
  OPENSSL_free(utf8);
  return out;
}

std::string object_text(const ASN1_OBJECT* object, bool numeric) {
  char buffer[128];
  const int length = OBJ_obj2txt(buffer, sizeof buffer, object, numeric ? 1 : 0);
  if (length <= 0) return {};
  return std::string(buffer, std::min<std::size_t>(static_cast<std::size_t>(length), sizeof buffer - 1));
}

// The attribute labels Windows (and so Get-ExchangeCertificate) prints.
std::string attribute_label(const ASN1_OBJECT* object) {
  switch (OBJ_obj2nid(object)) {
    case NID_commonName: return "CN";
    case NID_organizationalUnitName: return "OU";
    case NID_organizationName: return "O";
    case NID_localityName: return "L";
    case NID_stateOrProvinceName: return "S";
    case NID_countryName: return "C";
    case NID_pkcs9_emailAddress: return "E";
    case NID_streetAddress: return "STREET";
    case NID_domainComponent: return "DC";
    case NID_serialNumber: return "SERIALNUMBER";
    case NID_givenName: return "G";
    case NID_surname: return "SN";
    case NID_title: return "T";
    case NID_undef: return "OID." + object_text(object, true);
    default: {
      const char* short_name = OBJ_nid2sn(OBJ_obj2nid(object));
      return short_name ? short_name : "OID." + object_text(object, true);
    }
  }
}

// Windows quotes a value that would otherwise be ambiguous in the
// comma-separated form, doubling embedded quotes.
std::string quote_value(const std::string& value) {
  const bool needs_quotes = value.empty() || value.front() == ' ' || value.back() == ' ' ||
                            value.find_first_of(",+=\"\n<>#;") != std::string::npos;
  if (!needs_quotes) return value;
  std::string out = "\"";
  for (char c : value) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

// "CN=mail.contoso.com, OU=IT, O=Contoso, C=US": most specific first, as
// Windows shows it (the reverse of the DER order).
std::string format_name(const X509_NAME* name) {
  std::string out;
  for (int i = X509_NAME_entry_count(name) - 1; i >= 0; --i) {
    const X509_NAME_ENTRY* entry = X509_NAME_get_entry(name, i);
    if (!out.empty()) out += ", ";
    out += attribute_label(X509_NAME_ENTRY_get_object(entry));
    out += '=';
    out += quote_value(asn1_utf8(X509_NAME_ENTRY_get_data(entry)));
  }
  return out;
}

// The last CN is the most specific one (the order OpenSSL's host check uses).
std::string common_name(const X509_NAME* name) {
  int index = -1;
  int last = -1;
  while ((index = X509_NAME_get_index_by_NID(name, NID_commonName, index)) >= 0) last = index;
  if (last < 0) return {};
  return asn1_utf8(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, last)));
}

std::vector<std::string> san_dns_names(X509* cert) {
  std::vector<std::string> names;
  bssl::UniquePtr<GENERAL_NAMES> sans(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  ERR_clear_error();
  if (!sans) return names;
  for (const GENERAL_NAME* name : sans.get()) {
    if (name->type != GEN_DNS) continue;
    const ASN1_STRING* dns = name->d.dNSName;
    names.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(dns)),
                       static_cast<std::size_t>(ASN1_STRING_length(dns)));
  }
  return names;
}

void describe_key(X509* cert, CertificateInfo& info) {
  bssl::UniquePtr<EVP_PKEY> key(X509_get_pubkey(cert));
  ERR_clear_error();
  if (!key) return;
  info.key_bits = EVP_PKEY_bits(key.get());
  switch (EVP_PKEY_id(key.get())) {
    case EVP_PKEY_RSA: info.key_type = KeyType::rsa; break;
    case EVP_PKEY_EC: {
      info.key_type = KeyType::ecdsa;
      const EC_KEY* ec = EVP_PKEY_get0_EC_KEY(key.get());
      const int curve = ec ? EC_GROUP_get_curve_name(EC_KEY_get0_group(ec)) : NID_undef;
      switch (curve) {
        case NID_X9_62_prime256v1: info.curve = "P-256"; break;
        case NID_secp384r1: info.curve = "P-384"; break;
        case NID_secp521r1: info.curve = "P-521"; break;
        case NID_secp224r1: info.curve = "P-224"; break;
        default: info.curve = curve == NID_undef ? "unknown" : OBJ_nid2sn(curve); break;
      }
      break;
    }
    default: info.key_type = KeyType::other; break;
  }
}

void describe_eku(X509* cert, CertificateInfo& info) {
  info.has_eku_extension = X509_get_ext_by_NID(cert, NID_ext_key_usage, -1) >= 0;
  if (!info.has_eku_extension) return;
  bssl::UniquePtr<EXTENDED_KEY_USAGE> usages(
      static_cast<EXTENDED_KEY_USAGE*>(X509_get_ext_d2i(cert, NID_ext_key_usage, nullptr, nullptr)));
  ERR_clear_error();
  if (!usages) return;
  for (const ASN1_OBJECT* usage : usages.get()) {
    const int nid = OBJ_obj2nid(usage);
    info.extended_key_usage.push_back(nid == NID_undef ? object_text(usage, true) : OBJ_nid2sn(nid));
  }
}

std::string signature_algorithm(X509* cert) {
  const int nid = X509_get_signature_nid(cert);
  if (nid != NID_undef) return OBJ_nid2ln(nid);
  const X509_ALGOR* algorithm = nullptr;
  X509_get0_signature(nullptr, &algorithm, cert);
  const ASN1_OBJECT* object = nullptr;
  if (algorithm) X509_ALGOR_get0(&object, nullptr, nullptr, algorithm);
  return object ? object_text(object, true) : "unknown";
}

// Self-signed as Exchange's IsSelfSigned means it: issued by itself and
// verifiable with its own key. X509_check_issued is not used because it also
// demands keyCertSign, which Exchange's self-signed certificates lack.
bool is_self_signed(X509* cert) {
  if (X509_NAME_cmp(X509_get_subject_name(cert), X509_get_issuer_name(cert)) != 0) return false;
  bssl::UniquePtr<EVP_PKEY> key(X509_get_pubkey(cert));
  const bool verified = key && X509_verify(cert, key.get()) == 1;
  ERR_clear_error();
  return verified;
}

std::string read_file(const std::filesystem::path& file, std::string_view what) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    std::error_code ec;
    const bool exists = std::filesystem::exists(file, ec);
    throw CertificateError(file.string() + ": cannot read " + std::string(what) + ": " +
                           (exists ? "permission denied or not a regular file: check its permissions"
                                   : "no such file: check the path (relative paths are resolved against the "
                                     "config file's directory)"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw CertificateError(file.string() + ": read error: check the file and the disk");
  return std::move(text).str();
}

std::string key_summary(X509* cert) {
  std::string summary = "thumbprint " + thumbprint(cert);
  const std::string subject = format_name(X509_get_subject_name(cert));
  if (!subject.empty()) summary += ", " + subject;
  return summary;
}

}  // namespace

std::vector<std::string> CertificateInfo::host_names() const {
  std::vector<std::string> names;
  auto add = [&names](std::string_view candidate) {
    Pattern pattern = normalize_pattern(candidate);
    if (pattern.error != PatternError::none) return;
    if (std::find(names.begin(), names.end(), pattern.text) == names.end()) names.push_back(std::move(pattern.text));
  };
  if (!dns_names.empty()) {
    for (const auto& name : dns_names) add(name);
  } else if (!common_name.empty()) {
    add(common_name);
  }
  return names;
}

CertificateInfo describe(X509* cert) {
  CertificateInfo info;
  info.subject = format_name(X509_get_subject_name(cert));
  info.issuer = format_name(X509_get_issuer_name(cert));
  info.common_name = common_name(X509_get_subject_name(cert));
  info.dns_names = san_dns_names(cert);
  info.thumbprint = thumbprint(cert);
  info.sha256_pin = spki_pin(cert);
  info.not_before = detail::to_time_point(X509_get0_notBefore(cert));
  info.not_after = detail::to_time_point(X509_get0_notAfter(cert));
  describe_key(cert, info);
  info.signature_algorithm = signature_algorithm(cert);
  describe_eku(cert, info);
  info.self_signed = is_self_signed(cert);
  return info;
}

std::vector<bssl::UniquePtr<X509>> read_certificates(const std::filesystem::path& file) {
  const std::string text = read_file(file, "certificate");
  std::vector<bssl::UniquePtr<X509>> certificates;
  bssl::UniquePtr<BIO> bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  ERR_clear_error();
  while (true) {
    bssl::UniquePtr<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) break;
    certificates.push_back(std::move(cert));
  }
  const std::uint32_t error = ERR_peek_last_error();
  const bool clean_end =
      error == 0 || (ERR_GET_LIB(error) == ERR_LIB_PEM && ERR_GET_REASON(error) == PEM_R_NO_START_LINE);
  if (!clean_end) {
    const std::string reason = detail::take_error();
    throw CertificateError(file.string() + ": certificate " + std::to_string(certificates.size() + 1) +
                           " is not valid PEM (" + reason +
                           "): export it again as Base-64 encoded X.509 (PEM), leaf first then chain");
  }
  ERR_clear_error();
  if (certificates.empty()) {
    // Windows exports .cer files as DER by default; accept one DER certificate.
    const auto* der = reinterpret_cast<const std::uint8_t*>(text.data());
    const std::uint8_t* end = der;
    bssl::UniquePtr<X509> cert(d2i_X509(nullptr, &end, static_cast<long>(text.size())));
    ERR_clear_error();
    if (cert && end == der + text.size()) {
      certificates.push_back(std::move(cert));
      return certificates;
    }
    const bool holds_key = text.find("PRIVATE KEY-----") != std::string::npos;
    throw CertificateError(
        file.string() + ": no certificate found" +
        (holds_key ? std::string(" (the file holds a private key: are cert and key swapped?)") : std::string()) +
        ": expected PEM blocks \"-----BEGIN CERTIFICATE-----\", leaf first then chain");
  }
  return certificates;
}

bssl::UniquePtr<EVP_PKEY> read_private_key(const std::filesystem::path& file) {
  const std::string text = read_file(file, "private key");
  if (text.find("-----BEGIN ENCRYPTED PRIVATE KEY-----") != std::string::npos ||
      text.find("Proc-Type: 4,ENCRYPTED") != std::string::npos) {
    throw CertificateError(file.string() +
                           ": the private key is encrypted: a proxy must start unattended, so store it decrypted "
                           "(openssl pkey -in KEY -out KEY.plain) with mode 0600");
  }
  bssl::UniquePtr<BIO> bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  ERR_clear_error();
  // A null password callback would prompt on the terminal; refuse instead.
  auto no_password = [](char*, int, int, void*) -> int { return 0; };
  bssl::UniquePtr<EVP_PKEY> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_password, nullptr));
  if (!key) {
    const std::string reason = detail::take_error();
    if (text.find("PRIVATE KEY-----") == std::string::npos) {
      const bool holds_cert = text.find("-----BEGIN CERTIFICATE-----") != std::string::npos;
      throw CertificateError(
          file.string() + ": no private key found" +
          (holds_cert ? std::string(" (the file holds a certificate: are cert and key swapped?)") : std::string()) +
          ": expected a PEM block \"-----BEGIN PRIVATE KEY-----\" (PKCS#8, RSA or EC)");
    }
    throw CertificateError(file.string() + ": the private key cannot be parsed (" + reason +
                           "): export it again as unencrypted PEM (PKCS#8, RSA or EC)");
  }
  const int type = EVP_PKEY_id(key.get());
  if (type != EVP_PKEY_RSA && type != EVP_PKEY_EC) {
    throw CertificateError(file.string() +
                           ": only RSA and ECDSA private keys are supported: reissue the certificate "
                           "with an RSA (>= 2048 bits) or ECDSA P-256/P-384 key");
  }
  return key;
}

std::shared_ptr<const LoadedCertificate> load_certificate(std::string name, const std::filesystem::path& cert_file,
                                                          const std::filesystem::path& key_file) {
  auto loaded = std::make_shared<LoadedCertificate>();
  loaded->name = std::move(name);
  loaded->cert_file = cert_file;
  loaded->key_file = key_file;
  loaded->chain = read_certificates(cert_file);
  loaded->key = read_private_key(key_file);

  X509* leaf = loaded->leaf();
  const bool matches = X509_check_private_key(leaf, loaded->key.get()) == 1;
  ERR_clear_error();
  if (!matches) {
    for (std::size_t i = 1; i < loaded->chain.size(); ++i) {
      const bool later = X509_check_private_key(loaded->chain[i].get(), loaded->key.get()) == 1;
      ERR_clear_error();
      if (later) {
        throw CertificateError(cert_file.string() + ": the key " + key_file.string() + " belongs to certificate " +
                               std::to_string(i + 1) + " of the file (" + key_summary(loaded->chain[i].get()) +
                               "): put the leaf certificate first, then its chain");
      }
    }
    throw CertificateError(key_file.string() + ": private key does not match certificate " + cert_file.string() + " (" +
                           key_summary(leaf) + "): use the key generated with this certificate");
  }

  loaded->info = describe(leaf);
  const CertificateInfo& info = loaded->info;
  if (info.key_type == KeyType::rsa && info.key_bits < 2048) {
    throw CertificateError(cert_file.string() + ": RSA key of " + std::to_string(info.key_bits) +
                           " bits is too weak (at least 2048 required): reissue the certificate with a larger key "
                           "(gatehouse cert new --key rsa2048)");
  }
  if (info.key_type == KeyType::ecdsa && info.curve != "P-256" && info.curve != "P-384") {
    throw CertificateError(cert_file.string() + ": ECDSA key on curve " + info.curve +
                           " is not supported: reissue the certificate on P-256 or P-384 (gatehouse cert new --key "
                           "ec256)");
  }

  for (const auto& dns : info.dns_names) {
    const Pattern pattern = normalize_pattern(dns);
    if (pattern.error != PatternError::none) {
      throw CertificateError(cert_file.string() + ": SAN DNS name \"" + dns + "\" is refused: " +
                             std::string(describe(pattern.error)) + "; reissue the certificate without it");
    }
  }
  if (info.dns_names.empty()) {
    const Pattern pattern = normalize_pattern(info.common_name);
    if (info.common_name.empty() || pattern.error != PatternError::none) {
      throw CertificateError(cert_file.string() + ": the certificate names no host: it has no SAN DNS name and its " +
                             (info.common_name.empty() ? std::string("subject has no CN")
                                                       : "CN \"" + info.common_name +
                                                             "\" is refused: " + std::string(describe(pattern.error))) +
                             "; reissue it with the host names as SAN DNS entries (gatehouse cert new --san NAME)");
    }
  }
  loaded->names = info.host_names();
  return loaded;
}

std::string thumbprint(X509* cert) {
  std::uint8_t* der = nullptr;
  const int length = i2d_X509(cert, &der);
  if (length <= 0) {
    ERR_clear_error();
    return {};
  }
  std::uint8_t digest[SHA_DIGEST_LENGTH];
  SHA1(der, static_cast<std::size_t>(length), digest);
  OPENSSL_free(der);
  return detail::hex_upper(digest);
}

std::string spki_pin(X509* cert) {
  std::uint8_t* der = nullptr;
  const int length = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
  if (length <= 0) {
    ERR_clear_error();
    return {};
  }
  std::uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256(der, static_cast<std::size_t>(length), digest);
  OPENSSL_free(der);
  return "sha256/" + detail::base64(digest);
}

}  // namespace gatehouse::sni
