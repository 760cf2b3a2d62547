#include "sni/extended_protection.h"

#include <algorithm>
#include <cctype>

namespace gatehouse::sni {

const std::vector<std::string_view>& windows_auth_paths() {
  static const std::vector<std::string_view> paths{
      "/ews", "/mapi", "/rpc", "/autodiscover", "/oab", "/microsoft-server-activesync", "/powershell"};
  return paths;
}

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// "/ews/exchange.asmx" is under "/ews"; "/ewsx" is not.
bool under(std::string_view path, std::string_view dir) {
  if (!path.starts_with(dir)) return false;
  return path.size() == dir.size() || path[dir.size()] == '/' || path[dir.size()] == '?' || path[dir.size()] == ';';
}

}  // namespace

bool carries_windows_auth(const std::vector<std::string>& route_paths) {
  for (const auto& raw : route_paths) {
    std::string prefix = lower(raw);
    if (prefix.starts_with("=")) {
      // An exact-match route carries only its one path.
      prefix.erase(0, 1);
      for (std::string_view dir : windows_auth_paths())
        if (under(prefix, dir)) return true;
      continue;
    }
    for (std::string_view dir : windows_auth_paths()) {
      // The route covers the directory ("/", "/ews") or lies inside it
      // ("/ews/exchange.asmx").
      if (under(dir, prefix) || prefix == "/" || under(prefix, dir)) return true;
      if (!prefix.empty() && prefix.back() == '/' && dir.starts_with(prefix)) return true;
    }
  }
  return false;
}

std::vector<const LoadedCertificate*> front_certificates(const SniIndex& index, const std::vector<std::string>& hosts,
                                                         Clock::time_point now) {
  std::vector<const LoadedCertificate*> out;
  auto add = [&](const LoadedCertificate* c) {
    if (c != nullptr && std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
  };
  if (hosts.empty()) add(index.default_certificate());
  for (const auto& host : hosts) {
    add(index.covering(host, true, now).certificate);
    add(index.covering(host, false, now).certificate);
  }
  return out;
}

}  // namespace gatehouse::sni
