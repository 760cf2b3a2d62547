#pragma once
// Test helpers for sni/: temporary directories, certificates from the
// project's own tooling, and hand-built certificates for the shapes the
// tooling refuses to make (RSA 1024, "*.com", CN only, SHA-1, clientAuth only).

#include <openssl/bn.h>
#include <openssl/digest.h>
#include <openssl/ec_key.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "sni/tooling.h"

namespace gatehouse::sni::testing {

class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "gatehouse-sni-XXXXXX").string();
    if (!::mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_text(const std::filesystem::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + file.string());
}

inline std::string read_text(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

struct CertFiles {
  std::filesystem::path cert;
  std::filesystem::path key;
};

// A certificate from the project's own `cert new` code, written as STEM.crt/.key.
inline CertFiles make_cert(const std::filesystem::path& dir, const std::string& stem, const std::string& cn,
                           std::vector<std::string> sans = {}, const std::string& key = "ec256", bool expired = false) {
  NewCertificateOptions options;
  options.common_name = cn;
  options.sans = std::move(sans);
  options.key = key;
  if (expired) {
    options.not_before = Clock::now() - std::chrono::days(400);
    options.days = 1;
  }
  const auto written = write_certificate(options, dir / stem);
  return {written.at(0), written.at(1)};
}

inline std::shared_ptr<const LoadedCertificate> load(const std::string& name, const CertFiles& files) {
  return load_certificate(name, files.cert, files.key);
}

// --- hand-built certificates -------------------------------------------

struct RawOptions {
  std::optional<std::string> common_name = "raw.contoso.com";
  std::vector<std::string> dns_sans;  // written verbatim, unchecked
  int rsa_bits = 0;                   // 0: EC
  int curve = NID_X9_62_prime256v1;
  const EVP_MD* digest = nullptr;  // default SHA-256
  std::vector<int> eku;            // NIDs; empty: no EKU extension
  std::chrono::days valid_for{365};
  std::chrono::days starts_ago{1};
};

inline bssl::UniquePtr<EVP_PKEY> raw_key(const RawOptions& o) {
  bssl::UniquePtr<EVP_PKEY> key(EVP_PKEY_new());
  if (o.rsa_bits > 0) {
    bssl::UniquePtr<RSA> rsa(RSA_new());
    bssl::UniquePtr<BIGNUM> e(BN_new());
    BN_set_word(e.get(), RSA_F4);
    if (!RSA_generate_key_ex(rsa.get(), o.rsa_bits, e.get(), nullptr)) throw std::runtime_error("RSA keygen");
    EVP_PKEY_assign_RSA(key.get(), rsa.release());
  } else {
    bssl::UniquePtr<EC_KEY> ec(EC_KEY_new_by_curve_name(o.curve));
    if (!ec || !EC_KEY_generate_key(ec.get())) throw std::runtime_error("EC keygen");
    EVP_PKEY_assign_EC_KEY(key.get(), ec.release());
  }
  return key;
}

// Self-signed, written as STEM.crt/.key (the key as PKCS#8 PEM).
inline CertFiles make_raw_cert(const std::filesystem::path& dir, const std::string& stem, const RawOptions& o,
                               EVP_PKEY* reuse_key = nullptr) {
  bssl::UniquePtr<EVP_PKEY> owned = reuse_key ? nullptr : raw_key(o);
  EVP_PKEY* key = reuse_key ? reuse_key : owned.get();
  bssl::UniquePtr<X509> cert(X509_new());
  X509_set_version(cert.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1234);
  bssl::UniquePtr<X509_NAME> name(X509_NAME_new());
  if (o.common_name) {
    X509_NAME_add_entry_by_txt(name.get(), "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("Contoso"), -1,
                               -1, 0);
    X509_NAME_add_entry_by_NID(name.get(), NID_commonName, MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(o.common_name->c_str()), -1, -1, 0);
  }
  X509_set_subject_name(cert.get(), name.get());
  X509_set_issuer_name(cert.get(), name.get());
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  ASN1_TIME_set(X509_getm_notBefore(cert.get()), now - std::chrono::seconds(o.starts_ago).count());
  ASN1_TIME_set(X509_getm_notAfter(cert.get()),
                now - std::chrono::seconds(o.starts_ago).count() + std::chrono::seconds(o.valid_for).count());
  X509_set_pubkey(cert.get(), key);
  if (!o.dns_sans.empty()) {
    bssl::UniquePtr<GENERAL_NAMES> sans(sk_GENERAL_NAME_new_null());
    for (const auto& dns : o.dns_sans) {
      GENERAL_NAME* entry = GENERAL_NAME_new();
      ASN1_IA5STRING* value = ASN1_IA5STRING_new();
      ASN1_STRING_set(value, dns.data(), static_cast<int>(dns.size()));
      GENERAL_NAME_set0_value(entry, GEN_DNS, value);
      sk_GENERAL_NAME_push(sans.get(), entry);
    }
    X509_add1_ext_i2d(cert.get(), NID_subject_alt_name, sans.get(), 0, X509V3_ADD_APPEND);
  }
  if (!o.eku.empty()) {
    bssl::UniquePtr<EXTENDED_KEY_USAGE> eku(sk_ASN1_OBJECT_new_null());
    for (int nid : o.eku) sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(nid));
    X509_add1_ext_i2d(cert.get(), NID_ext_key_usage, eku.get(), 0, X509V3_ADD_APPEND);
  }
  if (!X509_sign(cert.get(), key, o.digest ? o.digest : EVP_sha256())) throw std::runtime_error("sign");

  CertFiles files{dir / (stem + ".crt"), dir / (stem + ".key")};
  bssl::UniquePtr<BIO> cert_bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(cert_bio.get(), cert.get());
  bssl::UniquePtr<BIO> key_bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PKCS8PrivateKey(key_bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  auto contents = [](BIO* bio) {
    const uint8_t* data = nullptr;
    size_t length = 0;
    BIO_mem_contents(bio, &data, &length);
    return std::string(reinterpret_cast<const char*>(data), length);
  };
  write_text(files.cert, contents(cert_bio.get()));
  write_text(files.key, contents(key_bio.get()));
  return files;
}

}  // namespace gatehouse::sni::testing
