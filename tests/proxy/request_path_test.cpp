// The path a route sees: request targets as IIS reads them, and the
// spellings that could be read two ways, refused.

#include "proxy/http/request_path.h"

#include <gtest/gtest.h>

namespace gatehouse::proxy::http {
namespace {

TEST(RequestPath, NormalisesAsIisReads) {
  const std::pair<const char*, const char*> cases[] = {
      {"/", "/"},
      {"*", "/"},
      {"/owa", "/owa"},
      {"/owa/", "/owa/"},
      {"/OWA/Default.aspx?a=B", "/owa/default.aspx"},
      {"/%6Fwa/%7Euser", "/owa/~user"},
      {"/owa/user%40contoso.com/", "/owa/user@contoso.com/"},
      {"//owa///x", "/owa/x"},
      {"/owa/./x/.", "/owa/x/"},
      {"/a/b/../../owa", "/owa"},
      {"/owa/%2e%2e/ecp/", "/ecp/"},
      {"/owa/%2E/x", "/owa/x"},
      {"/ecp;x/", "/ecp/"},
      {"/owa/auth.aspx;jsessionid=1", "/owa/auth.aspx"},
      {"/%C3%A9t%C3%A9/", "/\xc3\xa9t\xc3\xa9/"},
      {"/a/..", "/"},
      {"/a/../", "/"},
      {"/?x=/../../", "/"},
  };
  for (auto [target, path] : cases) {
    const NormalizedPath n = normalize_path(target);
    EXPECT_EQ(n.error, "") << target;
    EXPECT_EQ(n.path, path) << target;
  }
}

TEST(RequestPath, RefusesWhatCouldBeReadTwoWays) {
  const std::pair<const char*, const char*> cases[] = {
      {"/ecp%2f", "encoded"},
      {"/ecp%2F", "encoded"},
      {"/a%5cb", "encoded"},
      {"/a%5Cb", "encoded"},
      {"/a%00b", "NUL"},
      {"/a\\b", "backslash"},
      {"/a%", "broken"},
      {"/a%4", "broken"},
      {"/a%zz", "broken"},
      {"/%252e%252e/", "double"},
      {"/%25%32%65", "double"},
      {"/%c0%af", "UTF-8"},
      {"/%e0%80%af", "UTF-8"},
      {"/%ed%a0%80", "UTF-8"},
      {"/%f4%90%80%80", "UTF-8"},
      {"/%ff", "UTF-8"},
      {"/%c3", "UTF-8"},
      {"/../x", "above the root"},
      {"/a/../../x", "above the root"},
      {"owa/", "does not start"},
      {"", "does not start"},
  };
  for (auto [target, why] : cases) {
    const NormalizedPath n = normalize_path(target);
    EXPECT_NE(n.error.find(why), std::string::npos) << target << ": " << n.error;
    EXPECT_EQ(n.path, "") << target;
  }
}

// The fast path for plain paths gives exactly what the general rules give,
// for every target, plain or not.
TEST(RequestPath, FastPathAgreesWithTheGeneralOne) {
  const char* targets[] = {"/",
                           "/owa",
                           "/owa/",
                           "/OWA/Default.aspx?a=B",
                           "/.well-known/x",
                           "/a/..b/",
                           "/a/b..",
                           "/a/.b",
                           "/a/.",
                           "/a/./",
                           "/a/..",
                           "/a/../",
                           "//",
                           "/a//b",
                           "/a/",
                           "/a?x=//../",
                           "/a;b",
                           "/a%41",
                           "/a\\b",
                           "*",
                           "",
                           "owa",
                           "/a b",
                           "/\x7f",
                           "/\xc3\xa9",
                           "/..",
                           "/.",
                           "/?",
                           "/a/b/c/d/",
                           "/~user/",
                           "/Ecp/?x=%2f"};
  for (const char* target : targets) {
    const NormalizedPath fast = normalize_path(target);
    const NormalizedPath general = normalize_path_general(target);
    EXPECT_EQ(fast.path, general.path) << target;
    EXPECT_EQ(fast.error, general.error) << target;
  }
  // And every short target over the characters that matter.
  const std::string alphabet = "/aZ.;%2f?\\\xc3";
  std::string target;
  for (int n = 0; n < 200000; ++n) {
    target.clear();
    for (int k = n; k > 0; k /= static_cast<int>(alphabet.size() + 1)) {
      const auto digit = static_cast<std::size_t>(k % static_cast<int>(alphabet.size() + 1));
      if (digit > 0) target += alphabet[digit - 1];
    }
    target.insert(0, "/");
    const NormalizedPath fast = normalize_path(target);
    const NormalizedPath general = normalize_path_general(target);
    ASSERT_EQ(fast.path, general.path) << target;
    ASSERT_EQ(fast.error, general.error) << target;
  }
}

}  // namespace
}  // namespace gatehouse::proxy::http
