#pragma once
// `gatehouse demo`: the embedded default. Generates self-signed certificates
// in a temporary directory, starts two built-in "mailbox" backends on
// loopback presenting self-signed certificates (as Exchange Mailbox servers
// do), writes a config that pins them, and serves it.

#include <cstdint>

namespace gatehouse::proxy {

struct DemoOptions {
  std::uint16_t port = 8443;  // 0 = any free ports (tests)
};

int run_demo(const DemoOptions& options);

}  // namespace gatehouse::proxy
