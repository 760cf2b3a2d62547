#pragma once
// Active health checks of one config generation: one probe loop per server
// of every pool whose `health.kind` is not "none", run once per process (not
// per worker) on the control thread. A probe is a TCP connect, a TLS
// handshake verified as the pool verifies (pin, or CA + server_name, with
// server_name as SNI), or an HTTP GET of `health.path` over the pool's TLS
// with Host = server_name, expecting `health.expect` (Exchange answers 200 on
// /<vdir>/healthcheck.htm). Rise/fall counting is balancer::HealthState's;
// state changes are logged as server_up / server_down with the reason.

#include <boost/asio/io_context.hpp>

#include <memory>
#include <string>

#include "proxy/runtime/generation.h"

namespace gatehouse::proxy {

class HealthChecker {
 public:
  HealthChecker(boost::asio::io_context& io, std::shared_ptr<Generation> generation);
  ~HealthChecker();
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Ends every probe loop (they stop at their next wake-up).
  void stop();

  struct State;  // shared with the probe loops, which may outlive this object

 private:
  std::shared_ptr<State> state_;
};

// One probe of `server` as `pool` checks it: "" when it passed, else why not.
// `presented` gets the SHA-1 thumbprint of the certificate the server
// presented (TLS and HTTP probes), for Extended Protection's check.
boost::asio::awaitable<std::string> probe_server(const PoolRuntime& pool, const ServerRuntime& server,
                                                 std::string* presented = nullptr);

}  // namespace gatehouse::proxy
