#pragma once
// The path of a request target as IIS reads it, so that a route (and the
// access rules on it) sees the same path the Exchange server will serve:
// percent-decoded, dot segments resolved, repeated slashes collapsed, `;`
// parameters taken off each segment. Spellings a server might read two ways
// are refused instead (400): an encoded "/", "\" or NUL, a backslash, a
// broken or double percent-encoding, invalid or overlong UTF-8, a path that
// climbs above the root. Matching is case-insensitive, so the result is
// lower-cased ASCII. Pure: no I/O.

#include <string>
#include <string_view>

namespace gatehouse::proxy::http {

struct NormalizedPath {
  std::string path;   // "/owa/", lower case; "" when refused
  std::string error;  // why the target was refused, for the 400 and the log
};

// `target` is an origin-form target ("/owa/x?y=1"; the query is left off) or
// "*" (read as "/").
NormalizedPath normalize_path(std::string_view target);
// The same without the fast path for plain paths (ASCII, nothing to decode
// or resolve), which must give exactly what this gives; for tests.
NormalizedPath normalize_path_general(std::string_view target);

// The value of a hex digit, or -1.
int hex_digit(char c);
// "%XX" decoded once, leniently: a broken escape stays as it is ("+" too).
std::string percent_decoded(std::string_view text);

}  // namespace gatehouse::proxy::http
