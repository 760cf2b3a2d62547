#pragma once
// Internal to conf/: syntax checks for single values, kept apart from the TOML
// walk so they can be read (and tested through load_string) on their own.

#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace gatehouse::conf::detail {

// A route host: lower-cased, one trailing dot removed, a wildcard only as the
// whole left-most label over a parent of at least two labels. On failure
// `error` says why and `host` is empty.
struct HostResult {
  std::string host;
  std::string error;
};
HostResult normalize_route_host(std::string_view text);

// nullopt when `pin` is "sha256/" + base64 of 32 bytes, or 40 hex digits once
// spaces and colons are removed; otherwise what is wrong.
std::optional<std::string> pin_error(std::string_view pin);

// Names end up in admin URLs (/pools/{pool}/servers/{server}/drain), metrics
// labels and logs, so they are kept to characters that need no escaping.
bool is_valid_name(std::string_view name);

// An HTTP header name (RFC 9110 token), for hash_key = "header:NAME".
bool is_token(std::string_view text);

// nullopt when `pattern` compiles as an RE2 regular expression; otherwise
// RE2's reason, ready for a message.
std::optional<std::string> regex_error(std::string_view pattern);

// The candidate closest to `word` when it is plausibly a typo of it, else "".
std::string_view closest_match(std::string_view word, std::span<const std::string_view> candidates);

}  // namespace gatehouse::conf::detail
