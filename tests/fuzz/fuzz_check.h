#pragma once
// Invariants the fuzz targets assert besides "no crash": a broken one aborts,
// which libFuzzer reports (and keeps the input) like any crash.

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace gatehouse::fuzz {

inline void expect(bool holds, std::string_view what) {
  if (holds) return;
  std::fprintf(stderr, "fuzz invariant broken: %.*s\n", static_cast<int>(what.size()), what.data());
  std::abort();
}

}  // namespace gatehouse::fuzz
