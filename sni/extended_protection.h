#pragma once
// Extended Protection for Authentication: NTLM and Kerberos logins to IIS
// carry a channel binding computed from the TLS certificate the client saw
// (RFC 5929 tls-server-end-point). Behind a TLS-bridging proxy that binding
// only matches when the backend presents the same certificate as the proxy's
// front end for that host, the one topology Microsoft supports. These are the
// pure pieces `check`, the generation and /status share.

#include <string>
#include <string_view>
#include <vector>

#include "sni/index.h"

namespace gatehouse::sni {

// Exchange virtual directories that accept Windows logins from clients:
// /EWS, /mapi, /rpc, /Autodiscover, /OAB, /Microsoft-Server-ActiveSync and
// /PowerShell.
const std::vector<std::string_view>& windows_auth_paths();

// Whether a route with these path prefixes (lower case, as conf stores
// them) carries any of those protocols: "/" and "/mapi" do, "/owa" does not.
bool carries_windows_auth(const std::vector<std::string>& route_paths);

// The distinct certificates a listener serves for a route's hosts: for each
// host the ECDSA and the RSA choice; for a route without hosts, the default.
std::vector<const LoadedCertificate*> front_certificates(const SniIndex& index, const std::vector<std::string>& hosts,
                                                         Clock::time_point now = Clock::now());

}  // namespace gatehouse::sni
