#pragma once
// Host-name rules (RFC 6125 as SPEC.md "Certificate choice" states them):
// case-insensitive, one trailing dot ignored, a wildcard only as the whole
// left-most label covering exactly one label, never over a single-label parent.

#include <optional>
#include <string>
#include <string_view>

namespace gatehouse::sni {

// Lower-cased, one trailing dot removed. nullopt when not a DNS name: empty,
// a label empty or over 63 octets, the name over 253, characters outside
// [a-z0-9-_], or a '*' anywhere (patterns go through normalize_pattern).
std::optional<std::string> normalize_host(std::string_view host);

enum class PatternError {
  none,
  bad_name,               // not a DNS name
  wildcard_not_leftmost,  // "mail.*.contoso.com"
  wildcard_partial,       // "m*.contoso.com", "*mail.contoso.com"
  wildcard_tld,           // "*.com": parent of a single label
};
std::string_view describe(PatternError);

// A certificate or route name: an exact host or "*.parent". On success the
// normalised form; otherwise the reason.
struct Pattern {
  std::string text;  // normalised
  PatternError error = PatternError::none;
};
Pattern normalize_pattern(std::string_view pattern);

bool is_wildcard(std::string_view normalised_pattern);

// Both arguments normalised. "*.contoso.com" matches "a.contoso.com" only.
bool host_matches(std::string_view pattern, std::string_view host);

// The parent a wildcard would need to cover `host`: "contoso.com" for
// "mail.contoso.com"; empty when host has fewer than three labels (no valid
// wildcard can cover it).
std::string_view wildcard_parent(std::string_view normalised_host);

}  // namespace gatehouse::sni
