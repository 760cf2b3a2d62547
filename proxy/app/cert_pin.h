#pragma once
// `gatehouse cert pin HOST:PORT [--sni NAME]`: connects, and prints what the
// server presented, ready to paste into a [[server]] table.

#include <ostream>
#include <string>

namespace gatehouse::proxy {

// Returns the exit code; errors name the peer.
int cert_pin(const std::string& target, const std::string& sni, std::ostream& out, std::ostream& err);

}  // namespace gatehouse::proxy
