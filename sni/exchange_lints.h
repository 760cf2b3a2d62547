#pragma once
// `gatehouse check --exchange`: what is valid Gatehouse configuration but
// wrong for the Exchange protocols behind it. Each lint is a warning with the
// file, line and key to change and what to write there.

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "conf/config.h"
#include "sni/certificate.h"

namespace gatehouse::sni {

// The certificates that loaded, by their [[certificate]] name.
using LoadedCertificates = std::map<std::string, std::shared_ptr<const LoadedCertificate>, std::less<>>;

// The Exchange lints, in this order:
// - routes carrying ActiveSync, RPC or MAPI over HTTP (long polls of up to an
//   hour) with an effective idle_timeout under 15 minutes;
// - routes carrying /ecp or /powershell with an empty `allow`;
// - autodiscover.DOMAIN route hosts no certificate of the listener covers;
// - pools whose HTTP health probe asks for "/" instead of /VDIR/healthcheck.htm;
// - l7 listeners offering h2 by default while their routes carry Windows logins.
// A route reaches a virtual directory when one of its paths is that directory
// or below it, or when a shorter prefix ("/") of it wins the routing of that
// directory for one of the route's hosts (as the l7 router picks routes).
std::vector<conf::Diagnostic> exchange_lints(const conf::Config& config, const LoadedCertificates& loaded,
                                             Clock::time_point now);

}  // namespace gatehouse::sni
