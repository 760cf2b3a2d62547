#include "sni/client_trust.h"

#include <openssl/bio.h>
#include <openssl/digest.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include <fstream>
#include <sstream>

#include "sni/boringssl_util.h"
#include "sni/certificate.h"

namespace gatehouse::sni {

namespace {

std::string read_bytes(const std::filesystem::path& file, std::string_view what) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw CertificateError(file.string() + ": cannot read the " + std::string(what) + "; check the path");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<bssl::UniquePtr<X509_CRL>> read_crls(const std::filesystem::path& file, const std::string& text) {
  std::vector<bssl::UniquePtr<X509_CRL>> crls;
  bssl::UniquePtr<BIO> bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  ERR_clear_error();
  while (true) {
    bssl::UniquePtr<X509_CRL> crl(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
    if (!crl) break;
    crls.push_back(std::move(crl));
  }
  const std::uint32_t error = ERR_peek_last_error();
  const bool clean_end =
      error == 0 || (ERR_GET_LIB(error) == ERR_LIB_PEM && ERR_GET_REASON(error) == PEM_R_NO_START_LINE);
  if (!clean_end) {
    const std::string reason = detail::take_error();
    throw CertificateError(file.string() + ": CRL " + std::to_string(crls.size() + 1) + " is not valid PEM (" + reason +
                           "): write it as PEM (openssl crl -in FILE -outform PEM)");
  }
  ERR_clear_error();
  if (crls.empty())
    throw CertificateError(file.string() +
                           ": no CRL found (no \"-----BEGIN X509 CRL-----\" block); client_crl "
                           "takes PEM CRLs, e.g. from openssl ca -gencrl or openssl crl -outform PEM");
  return crls;
}

std::string name_rfc2253(const X509_NAME* name) {
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) {
    ERR_clear_error();
    return {};
  }
  return detail::bio_contents(bio.get());
}

std::string first_cn(const X509_NAME* name) {
  const int index = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (index < 0) return {};
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index));
  uint8_t* utf8 = nullptr;
  const int len = ASN1_STRING_to_UTF8(&utf8, data);
  if (len < 0) {
    ERR_clear_error();
    return {};
  }
  std::string out(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(len));
  OPENSSL_free(utf8);
  return out;
}

// A SAN value as it may appear in an XFCC element: bytes a header cannot
// carry (controls, DEL, non-ASCII) are percent-encoded, and the value is
// quoted when it holds a separator.
std::string xfcc_value(std::string_view value, bool always_quote) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string clean;
  bool quote = always_quote;
  for (unsigned char c : value) {
    if (c < 0x20 || c >= 0x7f) {
      clean += '%';
      clean += hex[c >> 4];
      clean += hex[c & 15];
      continue;
    }
    if (c == ',' || c == ';' || c == '=' || c == '"' || c == ' ') quote = true;
    if (c == '"' || c == '\\') clean += '\\';
    clean += static_cast<char>(c);
  }
  return quote ? "\"" + clean + "\"" : clean;
}

}  // namespace

std::string ClientIdentity::xfcc() const {
  std::string out = "Hash=" + sha256_hex;
  out += ";Subject=" + xfcc_value(subject, true);
  for (const auto& uri : uris) out += ";URI=" + xfcc_value(uri, false);
  for (const auto& dns : dns_names) out += ";DNS=" + xfcc_value(dns, false);
  return out;
}

ClientIdentity identify_client(X509* leaf) {
  ClientIdentity id;
  if (leaf == nullptr) return id;
  id.subject = name_rfc2253(X509_get_subject_name(leaf));
  id.common_name = first_cn(X509_get_subject_name(leaf));
  uint8_t digest[SHA256_DIGEST_LENGTH];
  unsigned int len = 0;
  if (X509_digest(leaf, EVP_sha256(), digest, &len)) {
    static constexpr char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < len; ++i) {
      id.sha256_hex += hex[digest[i] >> 4];
      id.sha256_hex += hex[digest[i] & 15];
    }
  }
  bssl::UniquePtr<GENERAL_NAMES> names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(leaf, NID_subject_alt_name, nullptr, nullptr)));
  for (std::size_t i = 0; names && i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type != GEN_DNS && name->type != GEN_URI) continue;
    const ASN1_IA5STRING* text = name->type == GEN_DNS ? name->d.dNSName : name->d.uniformResourceIdentifier;
    std::string value(reinterpret_cast<const char*>(ASN1_STRING_get0_data(text)),
                      static_cast<std::size_t>(ASN1_STRING_length(text)));
    (name->type == GEN_DNS ? id.dns_names : id.uris).push_back(std::move(value));
  }
  ERR_clear_error();
  return id;
}

ClientTrust::ClientTrust(const std::filesystem::path& ca_file, const std::filesystem::path& crl_file, int depth)
    : store_(X509_STORE_new()), depth_(depth) {
  if (!store_) throw CertificateError("cannot create a certificate store (out of memory)");
  const std::string ca_bytes = read_bytes(ca_file, "client CA bundle");
  for (auto& ca : read_certificates(ca_file)) {
    if (!X509_STORE_add_cert(store_.get(), ca.get())) {
      const std::string reason = detail::take_error();
      // The same CA twice in a bundle is harmless.
      if (reason.find("CERT_ALREADY_IN_HASH_TABLE") == std::string::npos &&
          reason.find("cert already in hash table") == std::string::npos)
        throw CertificateError(ca_file.string() + ": cannot use CA " + describe(ca.get()).subject + " (" + reason +
                               ")");
    }
    ca_names_.emplace_back(X509_NAME_dup(X509_get_subject_name(ca.get())));
  }
  std::string crl_bytes;
  if (!crl_file.empty()) {
    crl_bytes = read_bytes(crl_file, "client CRL file");
    for (auto& crl : read_crls(crl_file, crl_bytes)) {
      if (!X509_STORE_add_crl(store_.get(), crl.get()))
        throw CertificateError(crl_file.string() + ": cannot use a CRL (" + detail::take_error() + ")");
      ++crl_count_;
    }
    // The leaf only, as nginx's ssl_crl: an intermediate's revocation needs
    // its issuer's CRL too, which operators rarely have at hand.
    X509_STORE_set_flags(store_.get(), X509_V_FLAG_CRL_CHECK);
  }

  SHA256_CTX sha;
  SHA256_Init(&sha);
  auto add = [&](std::string_view label, std::string_view bytes) {
    const std::uint64_t size = bytes.size();
    SHA256_Update(&sha, label.data(), label.size());
    SHA256_Update(&sha, &size, sizeof size);
    SHA256_Update(&sha, bytes.data(), bytes.size());
  };
  add("client_ca", ca_bytes);
  add("client_crl", crl_bytes);
  add("client_verify_depth", std::to_string(depth));
  SHA256_Final(fingerprint_.data(), &sha);
}

ClientTrust::~ClientTrust() = default;

ClientVerdict ClientTrust::verify(const std::vector<X509*>& chain) const {
  ClientVerdict verdict;
  if (chain.empty() || chain.front() == nullptr) {
    verdict.error = X509_V_ERR_APPLICATION_VERIFICATION;
    verdict.reason = "no client certificate";
    return verdict;
  }
  bssl::UniquePtr<STACK_OF(X509)> untrusted(sk_X509_new_null());
  for (std::size_t i = 1; untrusted && i < chain.size(); ++i) {
    X509_up_ref(chain[i]);
    if (!sk_X509_push(untrusted.get(), chain[i])) X509_free(chain[i]);
  }
  bssl::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  if (!untrusted || !ctx || !X509_STORE_CTX_init(ctx.get(), store_.get(), chain.front(), untrusted.get())) {
    ERR_clear_error();
    verdict.error = X509_V_ERR_OUT_OF_MEM;
    verdict.reason = "internal error (out of memory)";
    return verdict;
  }
  // Client authentication: the clientAuth EKU when the leaf has any EKU.
  X509_STORE_CTX_set_default(ctx.get(), "ssl_client");
  X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
  // BoringSSL's depth counts the trust anchor too (OpenSSL 1.0 semantics);
  // client_verify_depth counts intermediate CAs, as OpenSSL 1.1+ and nginx do.
  X509_VERIFY_PARAM_set_depth(X509_STORE_CTX_get0_param(ctx.get()), depth_ + 1);
  const int ok = X509_verify_cert(ctx.get());
  const int error = X509_STORE_CTX_get_error(ctx.get());
  ERR_clear_error();
  if (ok == 1 && error == X509_V_OK) {
    verdict.ok = true;
    return verdict;
  }
  verdict.error = error == X509_V_OK ? X509_V_ERR_UNSPECIFIED : error;
  const int at = X509_STORE_CTX_get_error_depth(ctx.get());
  // Past the depth BoringSSL stops looking for issuers, so an over-long chain
  // reads as an unknown issuer: say which it is.
  if ((verdict.error == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
       verdict.error == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT) &&
      chain.size() > static_cast<std::size_t>(depth_) + 1)
    verdict.error = X509_V_ERR_CERT_CHAIN_TOO_LONG;
  const std::string where = at > 0 ? " (chain certificate " + std::to_string(at + 1) + ")" : "";
  switch (verdict.error) {
    case X509_V_ERR_CERT_HAS_EXPIRED: verdict.reason = "client certificate expired" + where; break;
    case X509_V_ERR_CERT_NOT_YET_VALID: verdict.reason = "client certificate not yet valid" + where; break;
    case X509_V_ERR_CERT_REVOKED: verdict.reason = "revoked"; break;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED: verdict.reason = "unknown CA"; break;
    case X509_V_ERR_CERT_CHAIN_TOO_LONG:
      verdict.reason = "chain longer than client_verify_depth (" + std::to_string(depth_) + ")";
      break;
    case X509_V_ERR_INVALID_PURPOSE:
      verdict.reason = "certificate not for client authentication (no clientAuth EKU)" + where;
      break;
    case X509_V_ERR_UNABLE_TO_GET_CRL: verdict.reason = "no CRL for the issuer in client_crl"; break;
    case X509_V_ERR_CRL_HAS_EXPIRED: verdict.reason = "client_crl has expired (past its nextUpdate)"; break;
    case X509_V_ERR_CRL_NOT_YET_VALID: verdict.reason = "client_crl not yet valid"; break;
    default:
      verdict.reason =
          std::string("invalid client certificate: ") + X509_verify_cert_error_string(verdict.error) + where;
      break;
  }
  return verdict;
}

}  // namespace gatehouse::sni
