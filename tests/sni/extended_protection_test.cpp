#include "sni/extended_protection.h"

#include <gtest/gtest.h>

namespace gatehouse::sni {
namespace {

TEST(ExtendedProtection, RoutesThatCarryWindowsLogins) {
  EXPECT_TRUE(carries_windows_auth({"/"}));
  EXPECT_TRUE(carries_windows_auth({"/mapi"}));
  EXPECT_TRUE(carries_windows_auth({"/owa", "/ews"}));
  EXPECT_TRUE(carries_windows_auth({"/ews/exchange.asmx"}));
  EXPECT_TRUE(carries_windows_auth({"/microsoft-server-activesync"}));
  EXPECT_TRUE(carries_windows_auth({"/autodiscover/autodiscover.xml"}));
  EXPECT_TRUE(carries_windows_auth({"/rpc/rpcproxy.dll"}));
  EXPECT_TRUE(carries_windows_auth({"/OAB"}));
  EXPECT_TRUE(carries_windows_auth({"=/powershell"}));
  EXPECT_FALSE(carries_windows_auth({"/owa"}));
  EXPECT_FALSE(carries_windows_auth({"/ecp", "/owa"}));
  EXPECT_FALSE(carries_windows_auth({"/ewsx"}));
  EXPECT_FALSE(carries_windows_auth({"/mapix/"}));
  // An exact path carries only itself: "=/" is the root page, not every directory.
  EXPECT_FALSE(carries_windows_auth({"=/"}));
  EXPECT_TRUE(carries_windows_auth({"=/mapi/emsmdb"}));
}

}  // namespace
}  // namespace gatehouse::sni
