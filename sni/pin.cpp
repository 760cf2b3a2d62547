#include "sni/pin.h"

#include <openssl/base64.h>
#include <openssl/mem.h>
#include <openssl/sha.h>

#include <algorithm>

namespace gatehouse::sni {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

std::optional<Pin> parse_spki(std::string_view encoded) {
  std::vector<std::uint8_t> digest(encoded.size());
  std::size_t length = 0;
  if (!EVP_DecodeBase64(digest.data(), &length, digest.size(), reinterpret_cast<const std::uint8_t*>(encoded.data()),
                        encoded.size()) ||
      length != SHA256_DIGEST_LENGTH) {
    return std::nullopt;
  }
  digest.resize(length);
  return Pin{Pin::Kind::spki_sha256, std::move(digest)};
}

std::optional<Pin> parse_thumbprint(std::string_view text) {
  // Copying a thumbprint from the Windows certificate dialog brings an
  // invisible U+200E LEFT-TO-RIGHT MARK along; it is dropped like the spaces.
  static constexpr std::string_view lrm = "\xE2\x80\x8E";
  std::vector<std::uint8_t> digest;
  int high = -1;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ' ' || c == ':' || c == '\t') continue;
    if (text.substr(i, lrm.size()) == lrm) {
      i += lrm.size() - 1;
      continue;
    }
    const int value = hex_value(c);
    if (value < 0) return std::nullopt;
    if (high < 0) {
      high = value;
    } else {
      digest.push_back(static_cast<std::uint8_t>(high << 4 | value));
      high = -1;
    }
  }
  if (high >= 0 || digest.size() != SHA_DIGEST_LENGTH) return std::nullopt;
  return Pin{Pin::Kind::thumbprint_sha1, std::move(digest)};
}

}  // namespace

std::optional<Pin> parse_pin(std::string_view text) {
  text = trim(text);
  static constexpr std::string_view prefix = "sha256/";
  if (text.size() > prefix.size() && std::equal(prefix.begin(), prefix.end(), text.begin(), [](char a, char b) {
        return a == (b >= 'A' && b <= 'Z' ? static_cast<char>(b + 32) : b);
      })) {
    return parse_spki(text.substr(prefix.size()));
  }
  return parse_thumbprint(text);
}

bool Pin::matches(X509* cert) const {
  if (!cert) return false;
  std::uint8_t* der = nullptr;
  const int length =
      kind == Kind::spki_sha256 ? i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der) : i2d_X509(cert, &der);
  if (length <= 0) return false;
  std::vector<std::uint8_t> actual(kind == Kind::spki_sha256 ? SHA256_DIGEST_LENGTH : SHA_DIGEST_LENGTH);
  if (kind == Kind::spki_sha256) {
    SHA256(der, static_cast<std::size_t>(length), actual.data());
  } else {
    SHA1(der, static_cast<std::size_t>(length), actual.data());
  }
  OPENSSL_free(der);
  return actual == digest;
}

}  // namespace gatehouse::sni
