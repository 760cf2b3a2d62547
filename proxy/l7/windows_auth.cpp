#include "proxy/l7/windows_auth.h"

#include <openssl/base64.h>

#include <boost/beast/core/string.hpp>

#include <cstdint>

namespace gatehouse::proxy::l7 {

namespace {

using boost::beast::iequals;

constexpr std::string_view kNtlmSignature{"NTLMSSP\0", 8};
constexpr std::uint32_t kNtlmUnicode = 0x00000001;  // NTLMSSP_NEGOTIATE_UNICODE
constexpr std::size_t kMaxNameBytes = 512;          // per name: longer is not a real Type 3

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_connection_scheme(std::string_view scheme) {
  return iequals(scheme, "NTLM") || iequals(scheme, "Negotiate") || iequals(scheme, "Kerberos");
}

std::uint32_t le32(std::string_view m, std::size_t at) {
  return static_cast<std::uint32_t>(static_cast<unsigned char>(m[at])) |
         static_cast<std::uint32_t>(static_cast<unsigned char>(m[at + 1])) << 8 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(m[at + 2])) << 16 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(m[at + 3])) << 24;
}

std::uint16_t le16(std::string_view m, std::size_t at) {
  return static_cast<std::uint16_t>(static_cast<unsigned char>(m[at]) | static_cast<unsigned char>(m[at + 1]) << 8);
}

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// NTLM names are UTF-16LE (with the Unicode flag) or an OEM code page, read
// here as Latin-1; a lone surrogate becomes U+FFFD.
std::string decode_name(std::string_view bytes, bool unicode) {
  std::string out;
  if (!unicode) {
    for (unsigned char c : bytes) append_utf8(out, c);
    return out;
  }
  for (std::size_t i = 0; i + 1 < bytes.size(); i += 2) {
    std::uint32_t unit = le16(bytes, i);
    if (unit >= 0xD800 && unit <= 0xDBFF && i + 3 < bytes.size()) {
      const std::uint32_t low = le16(bytes, i + 2);
      if (low >= 0xDC00 && low <= 0xDFFF) {
        append_utf8(out, 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00));
        i += 2;
        continue;
      }
    }
    if (unit >= 0xD800 && unit <= 0xDFFF) unit = 0xFFFD;
    append_utf8(out, unit);
  }
  return out;
}

// A security buffer (length, allocated, offset) at `at` of a message; nullopt
// when it points outside the message or is implausibly long.
std::optional<std::string_view> security_buffer(std::string_view m, std::size_t at) {
  const std::size_t length = le16(m, at);
  const std::size_t offset = le32(m, at + 4);
  if (length > kMaxNameBytes || offset > m.size() || length > m.size() - offset) return std::nullopt;
  return m.substr(offset, length);
}

}  // namespace

std::optional<std::string> decode_base64(std::string_view text) {
  std::string padded(trim(text));
  while (padded.size() % 4 != 0) padded += '=';
  std::size_t max = 0;
  if (!EVP_DecodedLength(&max, padded.size())) return std::nullopt;
  std::string out(max, '\0');
  std::size_t n = 0;
  if (!EVP_DecodeBase64(reinterpret_cast<std::uint8_t*>(out.data()), &n, out.size(),
                        reinterpret_cast<const std::uint8_t*>(padded.data()), padded.size()))
    return std::nullopt;
  out.resize(n);
  return out;
}

std::optional<std::string> ntlm_user(std::string_view message) {
  const auto start = message.find(kNtlmSignature);
  if (start == std::string_view::npos) return std::nullopt;
  const std::string_view m = message.substr(start);
  // Signature, type, six security buffers (LM, NT, domain, user,
  // workstation, session key) and the flags: 64 bytes.
  if (m.size() < 64 || le32(m, 8) != 3) return std::nullopt;
  const auto domain = security_buffer(m, 28);
  const auto user = security_buffer(m, 36);
  if (!domain || !user) return std::nullopt;
  const bool unicode = (le32(m, 60) & kNtlmUnicode) != 0;
  std::string name = decode_name(*user, unicode);
  if (!domain->empty()) name = decode_name(*domain, unicode) + "\\" + name;
  return name;
}

RequestAuth parse_authorization(std::string_view value) {
  RequestAuth out;
  value = trim(value);
  const auto space = value.find_first_of(" \t");
  out.scheme = std::string(value.substr(0, space));
  const std::string_view credentials = space == std::string_view::npos ? std::string_view{} : trim(value.substr(space));
  out.connection_bound = is_connection_scheme(out.scheme);
  if (out.connection_bound) {
    const auto token = decode_base64(credentials);
    if (token && token->find(kNtlmSignature) != std::string::npos) {
      if (auto user = ntlm_user(*token)) {
        out.user = std::move(*user);
        out.final_leg = true;
      }
    }
  } else if (iequals(out.scheme, "Basic")) {
    if (const auto pair = decode_base64(credentials)) {
      // Never the password: only what comes before the first colon.
      out.user = pair->substr(0, std::min(pair->find(':'), kMaxNameBytes));
    }
  }
  return out;
}

std::optional<RequestAuth> request_auth(const Fields& fields) {
  std::optional<RequestAuth> found;
  for (const auto& f : fields) {
    if (!iequals(f.name, "authorization") && !iequals(f.name, "proxy-authorization")) continue;
    RequestAuth auth = parse_authorization(f.value);
    // A connection-bound scheme anywhere wins: it decides the binding.
    if (!found || (auth.connection_bound && !found->connection_bound)) found = std::move(auth);
  }
  return found;
}

bool response_binds(int status, const Fields& fields) {
  for (const auto& f : fields) {
    if (iequals(f.name, "persistent-auth")) return true;
    if (status != 401 && status != 407) continue;
    if (!iequals(f.name, "www-authenticate") && !iequals(f.name, "proxy-authenticate")) continue;
    // Challenges are comma-separated; each starts with its scheme. A
    // parameter that looks like one only makes the rule stricter.
    std::string_view rest = f.value;
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      std::string_view item = trim(rest.substr(0, comma));
      item = item.substr(0, item.find_first_of(" \t"));
      if (is_connection_scheme(item)) return true;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return false;
}

}  // namespace gatehouse::proxy::l7
