#pragma once
// Backend certificate pins as [[server]].pin accepts them: "sha256/BASE64" of
// the SubjectPublicKeyInfo (as HPKP and Envoy spell it), or a SHA-1 thumbprint
// in hex as Exchange's Get-ExchangeCertificate shows it (case, spaces and
// colons ignored).

#include <openssl/x509.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace gatehouse::sni {

struct Pin {
  enum class Kind { spki_sha256, thumbprint_sha1 };
  Kind kind = Kind::spki_sha256;
  std::vector<std::uint8_t> digest;  // 32 or 20 bytes
  bool matches(X509* cert) const;
};

// nullopt when `text` is neither form.
std::optional<Pin> parse_pin(std::string_view text);

}  // namespace gatehouse::sni
