#include "proxy/http/request_path.h"

#include <cstdint>
#include <vector>

namespace gatehouse::proxy::http {

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string percent_decoded(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const int high = text[i] == '%' && i + 2 < text.size() ? hex_digit(text[i + 1]) : -1;
    const int low = high >= 0 ? hex_digit(text[i + 2]) : -1;
    if (low < 0) {
      out += text[i];
      continue;
    }
    out += static_cast<char>(high * 16 + low);
    i += 2;
  }
  return out;
}

namespace {

// Whether `bytes` is well-formed UTF-8 (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF).
bool valid_utf8(std::string_view bytes) {
  std::size_t i = 0;
  while (i < bytes.size()) {
    const auto c = static_cast<std::uint8_t>(bytes[i]);
    std::size_t length = 0;
    std::uint32_t code = 0;
    if (c < 0x80) length = 1, code = c;
    else if (c >= 0xc2 && c <= 0xdf) length = 2, code = c & 0x1fu;
    else if (c >= 0xe0 && c <= 0xef) length = 3, code = c & 0x0fu;
    else if (c >= 0xf0 && c <= 0xf4) length = 4, code = c & 0x07u;
    else return false;
    if (i + length > bytes.size()) return false;
    for (std::size_t k = 1; k < length; ++k) {
      const auto next = static_cast<std::uint8_t>(bytes[i + k]);
      if ((next & 0xc0) != 0x80) return false;
      code = (code << 6) | (next & 0x3fu);
    }
    if ((length == 3 && (code < 0x800 || (code >= 0xd800 && code <= 0xdfff))) ||
        (length == 4 && (code < 0x10000 || code > 0x10ffff)))
      return false;
    i += length;
  }
  return true;
}

// Percent-decodes `path` once; "" in `error` unless it refuses.
std::string decode(std::string_view path, std::string& error) {
  std::string out;
  out.reserve(path.size());
  for (std::size_t i = 0; i < path.size(); ++i) {
    const char c = path[i];
    if (c == '\\') {
      error = "a backslash in the path";
      return {};
    }
    if (c != '%') {
      out += c;
      continue;
    }
    const int high = i + 2 < path.size() ? hex_digit(path[i + 1]) : -1;
    const int low = high >= 0 ? hex_digit(path[i + 2]) : -1;
    if (low < 0) {
      error = "a broken percent-encoding in the path";
      return {};
    }
    const char decoded = static_cast<char>(high * 16 + low);
    if (decoded == '/' || decoded == '\\' || decoded == '\0') {
      error = "an encoded \"/\", \"\\\" or NUL in the path";
      return {};
    }
    out += decoded;
    i += 2;
  }
  // What would decode again: IIS refuses double escaping, and so do we.
  for (std::size_t i = 0; i + 2 < out.size(); ++i)
    if (out[i] == '%' && hex_digit(out[i + 1]) >= 0 && hex_digit(out[i + 2]) >= 0) {
      error = "a double percent-encoding in the path";
      return {};
    }
  return out;
}

}  // namespace

namespace {

// Whether `raw` (a path, no query) reads the same whatever the general
// rules do but lower-casing: printable ASCII without "%", "\\", ";",
// "//" or a "." or ".." segment. Most requests' paths are.
bool plain_path(std::string_view raw) {
  if (raw.empty() || raw.front() != '/') return false;
  for (std::size_t i = 0; i < raw.size(); ++i) {
    const char c = raw[i];
    if (c <= ' ' || c >= 0x7f || c == '%' || c == '\\' || c == ';') return false;
    if (c != '/') continue;
    // The segment after this "/": not empty unless it ends the path ("/a/"),
    // and not "." or "..".
    const std::string_view next = raw.substr(i + 1, 3);
    if (next.starts_with('/')) return false;
    if (next == "." || next.starts_with("./") || next == ".." || next.starts_with("../")) return false;
  }
  return true;
}

}  // namespace

NormalizedPath normalize_path(std::string_view target) {
  const std::string_view raw = target.substr(0, target.find('?'));
  if (!plain_path(raw)) return normalize_path_general(target);
  NormalizedPath out;
  out.path.resize(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    const char c = raw[i];
    out.path[i] = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  return out;
}

NormalizedPath normalize_path_general(std::string_view target) {
  NormalizedPath out;
  if (target == "*") {
    out.path = "/";
    return out;
  }
  const std::string_view raw = target.substr(0, target.find('?'));
  if (!raw.starts_with('/')) {
    out.error = "the path does not start with \"/\"";
    return out;
  }
  const std::string decoded = decode(raw, out.error);
  if (!out.error.empty()) return out;
  if (!valid_utf8(decoded)) {
    out.error = "the path is not valid UTF-8";
    return out;
  }
  // Segments without their ";" parameters; empty ones (repeated slashes)
  // and "." dropped, ".." taking the one before it.
  std::vector<std::string_view> segments;
  std::string_view rest = std::string_view(decoded).substr(1);
  bool trailing_slash = false;
  for (;;) {
    const auto slash = rest.find('/');
    std::string_view segment = rest.substr(0, slash);
    segment = segment.substr(0, segment.find(';'));
    const bool last = slash == std::string_view::npos;
    trailing_slash = last && (segment.empty() || segment == "." || segment == "..");
    if (segment == "..") {
      if (segments.empty()) {
        out.error = "the path climbs above the root";
        return out;
      }
      segments.pop_back();
    } else if (!segment.empty() && segment != ".") {
      segments.push_back(segment);
    }
    if (last) break;
    rest.remove_prefix(slash + 1);
  }
  out.path = "/";
  for (std::size_t i = 0; i < segments.size(); ++i) {
    if (i > 0) out.path += '/';
    for (char c : segments[i]) out.path += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  if (trailing_slash && !segments.empty()) out.path += '/';
  return out;
}

}  // namespace gatehouse::proxy::http
