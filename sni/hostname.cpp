#include "sni/hostname.h"

#include <algorithm>

namespace gatehouse::sni {
namespace {

constexpr std::size_t max_name = 253;
constexpr std::size_t max_label = 63;

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

// Underscores are allowed because real namespaces carry them (SRV-style and
// some internal AD names); SNI clients send them unchanged.
bool host_char(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'; }

std::string lowered_without_dot(std::string_view text) {
  if (!text.empty() && text.back() == '.') text.remove_suffix(1);
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), lower);
  return out;
}

// Labels of an already lower-cased name: all non-empty, <= 63 octets, host
// characters only; the whole <= 253 octets.
bool valid_labels(std::string_view name) {
  if (name.empty() || name.size() > max_name) return false;
  std::size_t label = 0;
  for (char c : name) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    if (!host_char(c) || ++label > max_label) return false;
  }
  return label != 0;
}

}  // namespace

std::optional<std::string> normalize_host(std::string_view host) {
  std::string name = lowered_without_dot(host);
  if (!valid_labels(name)) return std::nullopt;
  return name;
}

std::string_view describe(PatternError error) {
  switch (error) {
    case PatternError::none: return "valid";
    case PatternError::bad_name:
      return "not a DNS name (letters, digits, '-' and '_' in dot-separated labels of 1 to 63 characters, "
             "253 in all)";
    case PatternError::wildcard_not_leftmost: return "a wildcard may only be the left-most label, as in *.contoso.com";
    case PatternError::wildcard_partial:
      return "a wildcard must be the whole left-most label (*.contoso.com), not part of it (m*.contoso.com)";
    case PatternError::wildcard_tld:
      return "a wildcard must leave at least two labels (*.contoso.com), never cover a top-level domain "
             "(*.com)";
  }
  return "unknown";
}

Pattern normalize_pattern(std::string_view pattern) {
  Pattern result{lowered_without_dot(pattern)};
  const std::string& name = result.text;
  if (name.find('*') == std::string::npos) {
    if (!valid_labels(name)) result.error = PatternError::bad_name;
    return result;
  }
  const auto first_dot = name.find('.');
  const std::string_view first = std::string_view(name).substr(0, first_dot);
  const std::string_view rest =
      first_dot == std::string::npos ? std::string_view{} : std::string_view(name).substr(first_dot + 1);
  if (rest.find('*') != std::string_view::npos) {
    result.error = PatternError::wildcard_not_leftmost;
  } else if (first != "*") {
    result.error = PatternError::wildcard_partial;
  } else if (rest.find('.') == std::string_view::npos) {
    // "*", "*.com": a wildcard over a single-label parent would cover a whole TLD.
    result.error = rest.empty() || valid_labels(rest) ? PatternError::wildcard_tld : PatternError::bad_name;
  } else if (!valid_labels(rest) || name.size() > max_name) {
    result.error = PatternError::bad_name;
  }
  return result;
}

bool is_wildcard(std::string_view normalised_pattern) { return normalised_pattern.starts_with("*."); }

bool host_matches(std::string_view pattern, std::string_view host) {
  if (!is_wildcard(pattern)) return pattern == host;
  const std::string_view parent = wildcard_parent(host);
  return !parent.empty() && parent == pattern.substr(2);
}

std::string_view wildcard_parent(std::string_view normalised_host) {
  const auto dot = normalised_host.find('.');
  if (dot == std::string_view::npos || dot == 0) return {};
  const std::string_view parent = normalised_host.substr(dot + 1);
  if (parent.find('.') == std::string_view::npos) return {};
  return parent;
}

}  // namespace gatehouse::sni
