#include "conf/checks.h"

#include <re2/re2.h>

#include <algorithm>
#include <vector>

namespace gatehouse::conf::detail {

namespace {

bool is_lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
bool is_base64(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

std::vector<std::string_view> split_labels(std::string_view host) {
  std::vector<std::string_view> labels;
  for (std::size_t start = 0;;) {
    auto dot = host.find('.', start);
    labels.push_back(host.substr(start, dot == std::string_view::npos ? dot : dot - start));
    if (dot == std::string_view::npos) return labels;
    start = dot + 1;
  }
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

HostResult normalize_route_host(std::string_view text) {
  std::string host(text);
  std::transform(host.begin(), host.end(), host.begin(),
                 [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; });
  if (host.ends_with('.')) host.pop_back();
  auto fail = [](std::string why) { return HostResult{{}, std::move(why)}; };
  if (host.empty()) return fail("empty host name; omit hosts to match every name");
  if (host == "*") return fail("\"*\" is not a host pattern; omit hosts to match every name");
  if (host.find(':') != std::string::npos)
    return fail("host names carry no port or IPv6 literal; write just the name, e.g. \"mail.contoso.com\"");
  if (host.size() > 253) return fail("host name longer than 253 characters");
  auto labels = split_labels(host);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    auto label = labels[i];
    if (label.empty()) return fail("empty label (two dots in a row, or a leading dot)");
    if (label.size() > 63) return fail("label \"" + std::string(label) + "\" is longer than 63 characters");
    if (label.find('*') != std::string_view::npos) {
      if (label != "*") return fail("a wildcard must be a whole label, as in \"*.contoso.com\"");
      if (i != 0) return fail("a wildcard is only allowed as the left-most label, as in \"*.contoso.com\"");
      if (labels.size() < 3)
        return fail("a wildcard needs a parent of at least two labels (\"*.contoso.com\", never \"*.com\")");
      continue;
    }
    for (char c : label)
      if (!is_lower_alnum(c) && c != '-' && c != '_')
        return fail("character '" + std::string(1, c) + "' is not allowed in a host name");
  }
  return HostResult{std::move(host), {}};
}

std::optional<std::string> pin_error(std::string_view pin) {
  if (std::any_of(pin.begin(), pin.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; }))
    return "contains a non-ASCII (possibly invisible) character, often copied along from the Windows "
           "certificate dialog; retype the pin";
  if (pin.starts_with("sha256/")) {
    auto b64 = pin.substr(7);
    // 32 bytes are 43 base64 characters and one '='; the last character
    // carries two unused bits that must be zero.
    constexpr std::string_view last_chars = "AEIMQUYcgkosw048";
    bool ok = b64.size() == 44 && b64[43] == '=' && std::all_of(b64.begin(), b64.begin() + 43, is_base64) &&
              last_chars.find(b64[42]) != std::string_view::npos;
    if (!ok) return "\"sha256/\" must be followed by the base64 of a 32-byte SHA-256 digest (44 characters)";
    return std::nullopt;
  }
  std::string hex;
  for (char c : pin)
    if (c != ' ' && c != ':') hex += c;
  if (hex.size() == 40 && std::all_of(hex.begin(), hex.end(), is_hex)) return std::nullopt;
  return "expected \"sha256/BASE64\" (SPKI pin) or a SHA-1 thumbprint of 40 hex digits";
}

bool is_valid_name(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z') || c == '-' || c == '_' || c == '.';
  });
}

bool is_token(std::string_view text) {
  constexpr std::string_view specials = "!#$%&'*+-.^_`|~";
  return !text.empty() && std::all_of(text.begin(), text.end(), [&](char c) {
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z') || specials.find(c) != std::string_view::npos;
  });
}

std::optional<std::string> regex_error(std::string_view pattern) {
  if (pattern.empty()) return "an empty regular expression matches everything; give a pattern";
  RE2::Options options;
  options.set_log_errors(false);
  const RE2 re(re2::StringPiece(pattern.data(), pattern.size()), options);
  if (re.ok()) return std::nullopt;
  return "not an RE2 regular expression: " + re.error() +
         " (RE2 syntax: no backreferences or lookaround; (?i) for case-insensitive)";
}

std::string_view closest_match(std::string_view word, std::span<const std::string_view> candidates) {
  std::string_view best;
  std::size_t best_distance = std::max<std::size_t>(2, word.size() / 3) + 1;
  for (auto candidate : candidates) {
    auto distance = edit_distance(word, candidate);
    if (distance < best_distance && distance < std::max(word.size(), candidate.size())) {
      best = candidate;
      best_distance = distance;
    }
  }
  return best;
}

}  // namespace gatehouse::conf::detail
