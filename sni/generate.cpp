// `cert new`: a self-signed certificate shaped like Exchange's default one
// (CN subject = issuer, SAN = the names, 5 years, digitalSignature +
// keyEncipherment, serverAuth), or a PKCS#10 request carrying the same names.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/digest.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "sni/boringssl_util.h"
#include "sni/hostname.h"
#include "sni/tooling.h"

namespace gatehouse::sni {
namespace {

constexpr int max_days = 100 * 366;          // keeps not_after within GeneralizedTime and time_t
constexpr std::size_t max_common_name = 64;  // ub-common-name, RFC 5280

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("cert new: " + what + (ERR_peek_error() ? ": " + detail::take_error() : std::string()));
}

struct KeySpec {
  int type;   // EVP_PKEY_RSA or EVP_PKEY_EC
  int param;  // RSA bits or curve NID
};

KeySpec key_spec(const std::string& key) {
  if (key == "rsa2048") return {EVP_PKEY_RSA, 2048};
  if (key == "rsa3072") return {EVP_PKEY_RSA, 3072};
  if (key == "ec256") return {EVP_PKEY_EC, NID_X9_62_prime256v1};
  if (key == "ec384") return {EVP_PKEY_EC, NID_secp384r1};
  throw std::invalid_argument("--key: unknown key type \"" + key + "\": use rsa2048, rsa3072, ec256 or ec384");
}

bssl::UniquePtr<EVP_PKEY> generate_key(const KeySpec& spec) {
  bssl::UniquePtr<EVP_PKEY> key(EVP_PKEY_new());
  if (!key) fail("out of memory");
  if (spec.type == EVP_PKEY_RSA) {
    bssl::UniquePtr<RSA> rsa(RSA_new());
    bssl::UniquePtr<BIGNUM> exponent(BN_new());
    if (!rsa || !exponent || !BN_set_word(exponent.get(), RSA_F4) ||
        !RSA_generate_key_ex(rsa.get(), spec.param, exponent.get(), nullptr) ||
        !EVP_PKEY_assign_RSA(key.get(), rsa.release())) {
      fail("RSA key generation failed");
    }
  } else {
    bssl::UniquePtr<EC_KEY> ec(EC_KEY_new_by_curve_name(spec.param));
    if (!ec || !EC_KEY_generate_key(ec.get()) || !EVP_PKEY_assign_EC_KEY(key.get(), ec.release())) {
      fail("ECDSA key generation failed");
    }
  }
  return key;
}

// The SAN names, normalised and de-duplicated; the CN alone when none given.
std::vector<std::string> checked_names(const NewCertificateOptions& options) {
  if (options.common_name.empty()) throw std::invalid_argument("--cn: the common name must not be empty");
  if (options.common_name.size() > max_common_name) {
    throw std::invalid_argument("--cn: \"" + options.common_name +
                                "\" is longer than 64 characters, the X.509 limit; "
                                "put long names in --san");
  }
  std::vector<std::string> names;
  if (options.sans.empty()) {
    const Pattern pattern = normalize_pattern(options.common_name);
    if (pattern.error != PatternError::none) {
      throw std::invalid_argument("--cn: \"" + options.common_name +
                                  "\" is used as the only host name (no --san) but " +
                                  std::string(describe(pattern.error)));
    }
    names.push_back(pattern.text);
    return names;
  }
  for (const auto& san : options.sans) {
    const Pattern pattern = normalize_pattern(san);
    if (pattern.error != PatternError::none) {
      throw std::invalid_argument("--san: \"" + san + "\": " + std::string(describe(pattern.error)));
    }
    if (std::find(names.begin(), names.end(), pattern.text) == names.end()) names.push_back(pattern.text);
  }
  return names;
}

bssl::UniquePtr<X509_NAME> subject_name(const std::string& common_name) {
  bssl::UniquePtr<X509_NAME> name(X509_NAME_new());
  if (!name || !X509_NAME_add_entry_by_NID(name.get(), NID_commonName, MBSTRING_UTF8,
                                           reinterpret_cast<const std::uint8_t*>(common_name.data()),
                                           static_cast<int>(common_name.size()), -1, 0)) {
    throw std::invalid_argument("--cn: \"" + common_name + "\" cannot be encoded as a common name (" +
                                detail::take_error() + ")");
  }
  return name;
}

bssl::UniquePtr<GENERAL_NAMES> dns_names(const std::vector<std::string>& names) {
  bssl::UniquePtr<GENERAL_NAMES> sans(sk_GENERAL_NAME_new_null());
  if (!sans) fail("out of memory");
  for (const auto& name : names) {
    bssl::UniquePtr<GENERAL_NAME> entry(GENERAL_NAME_new());
    bssl::UniquePtr<ASN1_IA5STRING> dns(ASN1_IA5STRING_new());
    if (!entry || !dns || !ASN1_STRING_set(dns.get(), name.data(), static_cast<int>(name.size()))) {
      fail("out of memory");
    }
    GENERAL_NAME_set0_value(entry.get(), GEN_DNS, dns.release());
    if (!bssl::PushToStack(sans.get(), std::move(entry))) fail("out of memory");
  }
  return sans;
}

// The extensions both the certificate and the request carry.
void add_common_extensions(STACK_OF(X509_EXTENSION) * *extensions, const std::vector<std::string>& names, bool rsa) {
  bssl::UniquePtr<GENERAL_NAMES> sans = dns_names(names);
  // Exchange's self-signed certificate: Digital Signature, Key Encipherment
  // (a0). ECDSA keys cannot encipher, so they get Digital Signature alone.
  bssl::UniquePtr<ASN1_BIT_STRING> usage(ASN1_BIT_STRING_new());
  bssl::UniquePtr<EXTENDED_KEY_USAGE> eku(sk_ASN1_OBJECT_new_null());
  if (!usage || !eku || !ASN1_BIT_STRING_set_bit(usage.get(), 0, 1) ||
      (rsa && !ASN1_BIT_STRING_set_bit(usage.get(), 2, 1)) ||
      !sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(NID_server_auth))) {
    fail("out of memory");
  }
  if (X509V3_add1_i2d(extensions, NID_subject_alt_name, sans.get(), 0, X509V3_ADD_APPEND) != 1 ||
      X509V3_add1_i2d(extensions, NID_key_usage, usage.get(), 1, X509V3_ADD_APPEND) != 1 ||
      X509V3_add1_i2d(extensions, NID_ext_key_usage, eku.get(), 0, X509V3_ADD_APPEND) != 1) {
    fail("cannot encode extensions");
  }
}

std::string pem_private_key(EVP_PKEY* key) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (!bio || !PEM_write_bio_PKCS8PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr)) {
    fail("cannot encode the private key");
  }
  return detail::bio_contents(bio.get());
}

std::string make_request(const NewCertificateOptions& options, const std::vector<std::string>& names, EVP_PKEY* key,
                         const EVP_MD* digest, bool rsa) {
  bssl::UniquePtr<X509_REQ> request(X509_REQ_new());
  bssl::UniquePtr<X509_NAME> subject = subject_name(options.common_name);
  STACK_OF(X509_EXTENSION)* raw = nullptr;
  add_common_extensions(&raw, names, rsa);
  bssl::UniquePtr<STACK_OF(X509_EXTENSION)> extensions(raw);
  if (!request || !X509_REQ_set_version(request.get(), X509_REQ_VERSION_1) ||
      !X509_REQ_set_subject_name(request.get(), subject.get()) || !X509_REQ_set_pubkey(request.get(), key) ||
      !X509_REQ_add_extensions(request.get(), extensions.get()) || !X509_REQ_sign(request.get(), key, digest)) {
    fail("cannot build the certificate request");
  }
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (!bio || !PEM_write_bio_X509_REQ(bio.get(), request.get())) fail("cannot encode the certificate request");
  return detail::bio_contents(bio.get());
}

void set_serial(X509* cert) {
  // 16 random bytes with the top bit clear: positive, unpredictable (CA/B
  // Forum asks for 64 bits of entropy at least).
  std::uint8_t bytes[16];
  RAND_bytes(bytes, sizeof bytes);
  bytes[0] &= 0x7f;
  bytes[0] |= 0x01;  // keeps the encoding 16 bytes long
  bssl::UniquePtr<BIGNUM> number(BN_bin2bn(bytes, sizeof bytes, nullptr));
  bssl::UniquePtr<ASN1_INTEGER> serial(number ? BN_to_ASN1_INTEGER(number.get(), nullptr) : nullptr);
  if (!serial || !X509_set_serialNumber(cert, serial.get())) fail("cannot set the serial number");
}

void set_subject_key_identifier(X509* cert) {
  // RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits.
  const ASN1_BIT_STRING* key_bits = X509_get0_pubkey_bitstr(cert);
  std::uint8_t digest[SHA_DIGEST_LENGTH];
  SHA1(ASN1_STRING_get0_data(key_bits), static_cast<std::size_t>(ASN1_STRING_length(key_bits)), digest);
  bssl::UniquePtr<ASN1_OCTET_STRING> identifier(ASN1_OCTET_STRING_new());
  if (!identifier || !ASN1_OCTET_STRING_set(identifier.get(), digest, sizeof digest) ||
      X509_add1_ext_i2d(cert, NID_subject_key_identifier, identifier.get(), 0, X509V3_ADD_APPEND) != 1) {
    fail("cannot add the subject key identifier");
  }
}

std::string make_certificate(const NewCertificateOptions& options, const std::vector<std::string>& names, EVP_PKEY* key,
                             const EVP_MD* digest, bool rsa) {
  bssl::UniquePtr<X509> cert(X509_new());
  bssl::UniquePtr<X509_NAME> subject = subject_name(options.common_name);
  if (!cert || !X509_set_version(cert.get(), X509_VERSION_3) || !X509_set_subject_name(cert.get(), subject.get()) ||
      !X509_set_issuer_name(cert.get(), subject.get()) || !X509_set_pubkey(cert.get(), key)) {
    fail("cannot build the certificate");
  }
  set_serial(cert.get());

  const Clock::time_point not_before = options.not_before.value_or(Clock::now() - std::chrono::minutes(1));
  const Clock::time_point not_after = not_before + std::chrono::days(options.days);
  const auto seconds = [](Clock::time_point t) {
    return static_cast<time_t>(std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count());
  };
  if (!ASN1_TIME_set(X509_getm_notBefore(cert.get()), seconds(not_before)) ||
      !ASN1_TIME_set(X509_getm_notAfter(cert.get()), seconds(not_after))) {
    fail("cannot set the validity period");
  }

  bssl::UniquePtr<BASIC_CONSTRAINTS> constraints(BASIC_CONSTRAINTS_new());
  if (!constraints ||
      X509_add1_ext_i2d(cert.get(), NID_basic_constraints, constraints.get(), 1, X509V3_ADD_APPEND) != 1) {
    fail("cannot add basic constraints");
  }
  STACK_OF(X509_EXTENSION)* raw = nullptr;
  add_common_extensions(&raw, names, rsa);
  bssl::UniquePtr<STACK_OF(X509_EXTENSION)> extensions(raw);
  for (const X509_EXTENSION* extension : extensions.get()) {
    if (!X509_add_ext(cert.get(), const_cast<X509_EXTENSION*>(extension), -1)) fail("cannot add extensions");
  }
  set_subject_key_identifier(cert.get());

  if (!X509_sign(cert.get(), key, digest)) fail("cannot sign the certificate");
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (!bio || !PEM_write_bio_X509(bio.get(), cert.get())) fail("cannot encode the certificate");
  return detail::bio_contents(bio.get());
}

void write_file(const std::filesystem::path& file, const std::string& contents, mode_t mode) {
  const int fd = ::open(file.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, mode);
  auto error = [&file](const char* what) {
    return std::runtime_error(file.string() + ": cannot " + what + ": " + std::strerror(errno) +
                              ": check that the directory exists and is writable");
  };
  if (fd < 0) throw error("create");
  // O_CREAT's mode does not apply to a file that already exists (an old key
  // left world-readable stays so): set it explicitly.
  if (::fchmod(fd, mode) != 0) {
    const auto failure = error("set the mode of");
    ::close(fd);
    throw failure;
  }
  std::size_t written = 0;
  while (written < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + written, contents.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const auto failure = error("write");
      ::close(fd);
      throw failure;
    }
    written += static_cast<std::size_t>(n);
  }
  if (::close(fd) != 0) throw error("write");
}

}  // namespace

GeneratedCertificate generate_certificate(const NewCertificateOptions& options) {
  const KeySpec spec = key_spec(options.key);
  if (options.days < 1 || options.days > max_days) {
    throw std::invalid_argument("--days: " + std::to_string(options.days) + " is out of range: use 1 to " +
                                std::to_string(max_days) + " (Exchange's self-signed default is 1825, 5 years)");
  }
  const std::vector<std::string> names = checked_names(options);
  ERR_clear_error();

  bssl::UniquePtr<EVP_PKEY> key = generate_key(spec);
  const bool rsa = spec.type == EVP_PKEY_RSA;
  // The hash follows the key's strength, as the CA/Browser Forum pairs them.
  const EVP_MD* digest = spec.param == NID_secp384r1 ? EVP_sha384() : EVP_sha256();
  GeneratedCertificate generated;
  generated.cert_pem = options.csr ? make_request(options, names, key.get(), digest, rsa)
                                   : make_certificate(options, names, key.get(), digest, rsa);
  generated.key_pem = pem_private_key(key.get());
  return generated;
}

std::vector<std::filesystem::path> write_certificate(const NewCertificateOptions& options,
                                                     const std::filesystem::path& prefix) {
  if (prefix.empty() || !prefix.has_filename()) {
    throw std::invalid_argument("--out: \"" + prefix.string() + "\" must name a file prefix, e.g. certs/mail");
  }
  // "--out certs/mail.crt" means the prefix certs/mail, not certs/mail.crt.crt.
  std::filesystem::path base = prefix;
  const auto extension = base.extension();
  if (extension == ".crt" || extension == ".csr" || extension == ".key" || extension == ".pem") {
    base.replace_extension();
  }
  const GeneratedCertificate generated = generate_certificate(options);
  std::filesystem::path cert_file = base;
  cert_file += options.csr ? ".csr" : ".crt";
  std::filesystem::path key_file = base;
  key_file += ".key";
  // The key first: a certificate without its key is useless, the reverse can be reissued.
  write_file(key_file, generated.key_pem, 0600);
  write_file(cert_file, generated.cert_pem, 0644);
  return {cert_file, key_file};
}

}  // namespace gatehouse::sni
