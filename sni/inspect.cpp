// `cert inspect`: the properties Get-ExchangeCertificate | Format-List shows,
// so an operator can compare a file with what Exchange lists on a server.

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/mem.h>

#include <boost/json.hpp>

#include <algorithm>
#include <string_view>
#include <utility>

#include "sni/boringssl_util.h"
#include "sni/tooling.h"

namespace gatehouse::sni {
namespace {

namespace json = boost::json;

using Properties = std::vector<std::pair<std::string, json::value>>;

struct KnownUsage {
  std::string_view short_name;
  std::string_view friendly;
  std::string_view oid;
};

// Exchange's EnhancedKeyUsageList spelling: "Server Authentication (1.3.6.1.5.5.7.3.1)".
constexpr KnownUsage known_usages[] = {
    {"serverAuth", "Server Authentication", "1.3.6.1.5.5.7.3.1"},
    {"clientAuth", "Client Authentication", "1.3.6.1.5.5.7.3.2"},
    {"codeSigning", "Code Signing", "1.3.6.1.5.5.7.3.3"},
    {"emailProtection", "Secure Email", "1.3.6.1.5.5.7.3.4"},
    {"timeStamping", "Time Stamping", "1.3.6.1.5.5.7.3.8"},
    {"OCSPSigning", "OCSP Signing", "1.3.6.1.5.5.7.3.9"},
};

std::string usage_text(const std::string& usage) {
  for (const auto& known : known_usages) {
    if (usage == known.short_name) return std::string(known.friendly) + " (" + std::string(known.oid) + ")";
  }
  return usage;
}

std::string key_type_text(const CertificateInfo& info) {
  switch (info.key_type) {
    case KeyType::rsa: return "RSA";
    case KeyType::ecdsa: return "ECDSA " + info.curve;
    case KeyType::other: break;
  }
  return "other";
}

std::string serial_number(X509* cert) {
  bssl::UniquePtr<BIGNUM> number(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
  char* hex = number ? BN_bn2hex(number.get()) : nullptr;
  ERR_clear_error();
  if (!hex) return {};
  std::string out(hex);
  OPENSSL_free(hex);
  if (out.size() % 2 != 0) out.insert(out.begin(), '0');
  // Upper case, as Get-ExchangeCertificate shows serial numbers and thumbprints.
  std::transform(out.begin(), out.end(), out.begin(), [](char c) { return c >= 'a' && c <= 'f' ? c - 32 : c; });
  return out;
}

json::array strings(const std::vector<std::string>& values) {
  json::array out;
  for (const auto& value : values) out.emplace_back(value);
  return out;
}

// The key beside the certificate (mail.crt -> mail.key), or one inside the
// certificate file itself (combined PEM), whichever matches the leaf.
bool has_private_key(const std::filesystem::path& file, X509* leaf) {
  std::vector<std::filesystem::path> candidates;
  std::filesystem::path beside = file;
  beside.replace_extension(".key");
  if (beside != file) candidates.push_back(beside);
  candidates.push_back(file);
  for (const auto& candidate : candidates) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(candidate, ec)) continue;
    try {
      const bssl::UniquePtr<EVP_PKEY> key = read_private_key(candidate);
      const bool matches = X509_check_private_key(leaf, key.get()) == 1;
      ERR_clear_error();
      if (matches) return true;
    } catch (const CertificateError&) {
      // Not a usable key file: the certificate simply has no key here.
    }
  }
  return false;
}

Properties properties(X509* cert, bool has_key) {
  const CertificateInfo info = describe(cert);
  json::array usages;
  for (const auto& usage : info.extended_key_usage) usages.emplace_back(usage_text(usage));
  Properties p;
  p.emplace_back("Subject", info.subject);
  p.emplace_back("Issuer", info.issuer);
  p.emplace_back("CertificateDomains", strings(info.dns_names));
  p.emplace_back("Thumbprint", info.thumbprint);
  p.emplace_back("Sha256Pin", info.sha256_pin);
  p.emplace_back("SerialNumber", serial_number(cert));
  p.emplace_back("NotBefore", detail::iso8601(info.not_before));
  p.emplace_back("NotAfter", detail::iso8601(info.not_after));
  p.emplace_back("PublicKeySize", info.key_bits);
  p.emplace_back("KeyType", key_type_text(info));
  p.emplace_back("SignatureAlgorithm", info.signature_algorithm);
  p.emplace_back("EnhancedKeyUsage", std::move(usages));
  p.emplace_back("IsSelfSigned", info.self_signed);
  p.emplace_back("HasPrivateKey", has_key);
  return p;
}

std::vector<Properties> all_properties(const std::filesystem::path& file) {
  const auto chain = read_certificates(file);
  const bool leaf_has_key = has_private_key(file, chain.front().get());
  std::vector<Properties> out;
  for (std::size_t i = 0; i < chain.size(); ++i) out.push_back(properties(chain[i].get(), i == 0 && leaf_has_key));
  return out;
}

// PowerShell's Format-List rendering: {a, b} for lists, True/False.
std::string list_value(const json::value& value) {
  if (value.is_string()) return std::string(value.get_string());
  if (value.is_bool()) return value.get_bool() ? "True" : "False";
  if (value.is_array()) {
    std::string out = "{";
    for (const auto& item : value.get_array()) {
      if (out.size() > 1) out += ", ";
      out += list_value(item);
    }
    return out + "}";
  }
  return json::serialize(value);
}

}  // namespace

boost::json::object inspect_json(const std::filesystem::path& file) {
  json::array certificates;
  for (auto& props : all_properties(file)) {
    json::object object;
    for (auto& [name, value] : props) object[name] = std::move(value);
    certificates.emplace_back(std::move(object));
  }
  json::object out;
  out["file"] = file.string();
  out["certificates"] = std::move(certificates);
  return out;
}

void inspect_text(const std::filesystem::path& file, std::ostream& out) {
  const auto all = all_properties(file);
  std::size_t width = std::string_view("File").size();
  for (const auto& props : all) {
    for (const auto& property : props) width = std::max(width, property.first.size());
  }
  auto line = [&out, width](std::string_view name, std::string_view value) {
    out << name << std::string(width - name.size(), ' ') << " : " << value << '\n';
  };
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (i > 0) out << '\n';
    line("File", file.string() + (all.size() > 1 ? " (certificate " + std::to_string(i + 1) + " of " +
                                                       std::to_string(all.size()) + ")"
                                                 : std::string()));
    for (const auto& [name, value] : all[i]) line(name, list_value(value));
  }
}

}  // namespace gatehouse::sni
